"""SQL predicates from the user (`--where`): the errors of the engines that run them, as one line.

Lance (DataFusion) and DuckDB word the same mistakes differently and append source locations of
their own build (`/home/runner/.../scanner.rs:839:33`); users need the column they mistyped and the
columns they may use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ops.errors import UsageError

EXAMPLE = "\"family = 'resnet' AND conv_depth_norm > 0.5\""

_UNKNOWN_COLUMN = (
    re.compile(r"No field named \"?'?([^\s.\"']+)"),  # Lance / DataFusion
    re.compile(r'Referenced column "([^"]+)" not found'),  # DuckDB
)
_SYNTAX = re.compile(r"(?:sql parser error: (.*?)\)?$|Parser Error: (.*))")
SOURCE_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+")
_PREFIXES = re.compile(r"^(?:(?:Invalid user input|Binder Error|Conversion Error|Catalog Error): )+")


class PredicateError(UsageError):
    """A `--where` predicate that cannot run against the table it selects from."""


def predicate_error(where: str, error: Exception, columns: Iterable[str], option: str = "--where") -> PredicateError:
    """The engine's `error` for `where` as one line naming the problem and what is allowed."""
    message = SOURCE_LOCATION.sub("", str(error)).strip()
    for pattern in _UNKNOWN_COLUMN:
        found = pattern.search(message)
        if found:
            return PredicateError(f"{option} {where!r}: unknown column {found.group(1)!r}; "
                                  f"the columns are: {', '.join(columns)} (a string value needs single quotes)")
    syntax = _SYNTAX.search(message)
    if syntax:
        detail = (syntax.group(1) or syntax.group(2)).splitlines()[0].strip()
        return PredicateError(f"{option} {where!r} is not a SQL condition ({detail}); write e.g. {EXAMPLE}")
    first = _PREFIXES.sub("", message.splitlines()[0] if message else type(error).__name__)
    return PredicateError(f"{option} {where!r}: {first}")
