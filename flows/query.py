"""`filterdb sql`, `similar`, `index`, `info` and `vacuum`: the DB's query commands."""

from __future__ import annotations


def add_commands(commands) -> None:
    """Adds this module's subcommands to the `filterdb` parser."""
