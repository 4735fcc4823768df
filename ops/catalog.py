"""The catalog: one row per model (CSV or YAML), validated once, before any work starts."""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ops.errors import UsageError
from ops.store import META_COLUMNS, MODELS_SCHEMA
from ops.sources import SOURCES, file_kind, file_problem

REQUIRED_COLUMNS = ("model_id", "source", "uri")
OPTIONAL_COLUMNS = ("arch", "input_size", "pretrained", "weights_file", "seed")
KNOWN_COLUMNS = frozenset({*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *META_COLUMNS})
RESERVED_COLUMNS = frozenset(MODELS_SCHEMA.names) - KNOWN_COLUMNS
"""Columns of models.lance that extraction fills (status, error, counts, timings): a catalog column of
the same name (as in a catalog exported from a DB) would collide with them, so it is refused."""
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "y"), ("0", "false", "no", "n")


class CatalogError(UsageError):
    """A catalog that cannot be used; the message lists every problem found, by row and column."""


@dataclass(frozen=True)
class CatalogEntry:
    model_id: str
    source: str
    uri: str
    arch: str | None = None
    input_size: tuple[int, ...] | None = None
    pretrained: bool = True
    weights_file: str | None = None
    seed: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


def read_catalog(path: str | Path) -> list[CatalogEntry]:
    """Parse and validate a catalog file; relative file paths are taken from the catalog's folder."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog {path}: no such file")
    rows = _read_rows(path)
    entries, problems = [], []
    seen: dict[str, int] = {}
    missing = [c for c in REQUIRED_COLUMNS if rows and not all(c in row for row in rows)]
    if not rows:
        problems.append("the catalog has no rows")
    for column in missing:
        problems.append(f"missing required column {column!r} (required: {', '.join(REQUIRED_COLUMNS)})")
    for column in sorted({c for row in rows for c in row}):
        problem = _column_name_problem(column)
        if problem:
            problems.append(f"column {column!r}: {problem}")
    if problems:
        raise CatalogError(f"catalog {path}:\n  " + "\n  ".join(problems))
    for number, row in enumerate(rows, start=1):
        try:
            entry = _entry(row, path.parent)
        except ValueError as error:
            problems.append(f"row {number}: {error}")
            continue
        if entry.model_id in seen:
            problems.append(f"row {number}, column 'model_id': {entry.model_id!r} duplicates row {seen[entry.model_id]}")
        seen.setdefault(entry.model_id, number)
        entries.append(entry)
    if problems:
        raise CatalogError(f"catalog {path}:\n  " + "\n  ".join(problems))
    return entries


def write_catalog(entries: list[dict], path: str | Path) -> None:
    """Write catalog rows (dicts) as CSV with the standard columns first."""
    columns = list(REQUIRED_COLUMNS) + [c for c in (*OPTIONAL_COLUMNS, *META_COLUMNS)
                                        if any(c in e for e in entries)]
    columns += sorted({k for e in entries for k in e} - set(columns))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(entries)


def _read_rows(path: Path) -> list[dict[str, str]]:
    """Rows as string dicts, header names and values stripped. A UTF-8 byte-order mark (as spreadsheet
    programs write it) and Windows line ends are accepted."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise CatalogError(f"catalog {path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                           f"save it as UTF-8") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text) or []
        except yaml.YAMLError as error:
            raise CatalogError(f"catalog {path}: not valid YAML ({' '.join(str(error).split())})") from None
        if isinstance(data, dict):
            data = data.get("models", [])
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise CatalogError(f"catalog {path}: expected a list of mappings (or {{models: [...]}})")
        return [{str(k).strip(): "" if v is None else str(v).strip() for k, v in r.items()} for r in data]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]


def _column_name_problem(column: str) -> str | None:
    """Why a catalog column cannot become a column of models.lance, or None. Names are compared
    without case, since SQL (DuckDB) over the tables does not tell `Status` from `status`."""
    if column in KNOWN_COLUMNS:
        return None
    taken = {name.lower(): name for name in (*MODELS_SCHEMA.names, *KNOWN_COLUMNS)}
    name = taken.get(column.lower())
    if name in RESERVED_COLUMNS:
        return (f"filterdb writes the column {name!r} of models.lance itself, so a catalog column cannot "
                f"have this name (as in a catalog exported from a DB); rename it (e.g. to 'catalog_{column}') or drop it")
    if name:
        return f"differs from the catalog column {name!r} only in case; rename it to {name!r}"
    if any(c in column for c in ".`") or not column.isprintable():
        return "a column name must not contain '.', '`' or control characters (Lance and SQL refuse them); rename it"
    return None


def _entry(row: dict[str, str], base: Path) -> CatalogEntry:
    for column in REQUIRED_COLUMNS:
        if not row.get(column):
            raise ValueError(f"column {column!r} is empty")
    source = row["source"]
    if source not in SOURCES:
        raise ValueError(f"column 'source': unknown source {source!r} (allowed: {', '.join(sorted(SOURCES))})")
    uri = row["uri"]
    if SOURCES[source].needs_file:
        uri = _existing_file(uri, base, "uri")
        problem = file_problem(source, uri)
        if problem:
            raise ValueError(f"column 'uri': {problem}")
    weights_file = _existing_file(row["weights_file"], base, "weights_file") if row.get("weights_file") else None
    problem = _weights_file_problem(weights_file) if weights_file else None
    if problem:
        raise ValueError(f"column 'weights_file': {problem}")
    return CatalogEntry(
        model_id=row["model_id"],
        source=source,
        uri=uri,
        arch=row.get("arch") or None,
        input_size=_input_size(row.get("input_size", "")),
        pretrained=_flag(row.get("pretrained", ""), default=True),
        weights_file=weights_file,
        seed=_integer(row.get("seed", ""), "seed", default=0),
        meta={c: row[c] for c in META_COLUMNS if row.get(c)},
        extra={k: v for k, v in row.items() if k not in KNOWN_COLUMNS},
    )


def _weights_file_problem(path: str) -> str | None:
    """Why a `weights_file` is not a state dict (torch.save or safetensors), judged from its content."""
    if not os.path.getsize(path):
        return file_problem("checkpoint", path)  # the message of an empty file
    kind = file_kind(path)
    if kind in (None, "checkpoint", "safetensors"):
        return None
    return (f"file {path} looks like {SOURCES[kind].description}; weights_file takes a state dict "
            f"(a torch.save or safetensors file)")


def _existing_file(value: str, base: Path, column: str) -> str:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise ValueError(f"column {column!r}: file {value!r} not found (looked at {path})")
    return str(path.resolve())


def _input_size(value: str) -> tuple[int, ...] | None:
    if not value:
        return None
    parts = re.split(r"[x,\s]+", value.strip("()[] "))
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"column 'input_size': {value!r} is not CxHxW (e.g. 3x224x224)")
    return tuple(int(p) for p in parts)


def _flag(value: str, default: bool) -> bool:
    if not value:
        return default
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise ValueError(f"column 'pretrained': {value!r} is not true/false")


def _integer(value: str, column: str, default: int) -> int:
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"column {column!r}: {value!r} is not an integer") from None
    if not -2**63 <= number < 2**63:
        raise ValueError(f"column {column!r}: {value!r} does not fit a 64-bit integer")
    return number
