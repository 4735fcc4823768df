"""`filterdb submit` and `filterdb jobs`: the flows as Ray jobs on a cluster."""

from __future__ import annotations


def add_commands(commands) -> None:
    """Adds this module's subcommands to the `filterdb` parser."""
