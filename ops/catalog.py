"""The catalog: one row per model (CSV or YAML), validated once, before any work starts."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ops.errors import UsageError
from ops.store import META_COLUMNS
from ops.sources import SOURCES

REQUIRED_COLUMNS = ("model_id", "source", "uri")
OPTIONAL_COLUMNS = ("arch", "input_size", "pretrained", "weights_file", "seed")
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
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text()) or []
        if isinstance(data, dict):
            data = data.get("models", [])
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise CatalogError(f"catalog {path}: expected a list of mappings (or {{models: [...]}})")
        return [{str(k): "" if v is None else str(v) for k, v in r.items()} for r in data]
    with open(path, newline="") as f:
        return [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(f)]


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
    weights_file = _existing_file(row["weights_file"], base, "weights_file") if row.get("weights_file") else None
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS) | set(META_COLUMNS)
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
        extra={k: v for k, v in row.items() if k not in known},
    )


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
        return int(value)
    except ValueError:
        raise ValueError(f"column {column!r}: {value!r} is not an integer") from None
