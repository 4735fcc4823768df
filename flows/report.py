"""`filterdb report`: the static HTML report of a DB and its analyses."""

from __future__ import annotations


def add_commands(commands) -> None:
    """Adds this module's subcommands to the `filterdb` parser."""
