"""Extract one catalog model into the rows of the three tables; a failure becomes a `failed` row."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow as pa

from ops.catalog import CatalogEntry
from ops.model_rows import check_weights, filters_table, layers_table, model_facts, models_row, weights_digest
from ops.sources import load_layers
from ops.store import MODELS_SCHEMA, ModelsRow, WrittenModel


@dataclass
class ExtractedModel:
    row: ModelsRow
    layers: pa.Table | None = None
    filters: pa.Table | None = None

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def source_fingerprint(entry: CatalogEntry) -> str:
    """What identifies the input without loading it: the entry's fields and its files' size/mtime."""
    parts = [entry.source, entry.uri, entry.arch or "", str(entry.pretrained), str(entry.seed),
             str(entry.input_size or ""), entry.weights_file or ""]
    for path in (entry.uri, entry.weights_file):
        if path and os.path.isfile(path):
            stat = os.stat(path)
            parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def failed_row(entry: CatalogEntry, reason: str, **columns) -> ModelsRow:
    """The models row of a model that could not be extracted, its error naming the model and its input.
    Values that do not fit the schema are left null and named in the error, so the row itself stores."""
    row = models_row(entry, status="failed", error=None, source_fingerprint=source_fingerprint(entry), **columns)
    misfits = schema_problems(row)
    for name in misfits:  # a schema column, or an extra catalog column (kept apart in row.extra)
        if name in row.extra:
            row.extra[name] = None
        else:
            row.update(**{name: None})
    reason += "".join(f"; {problem}" for problem in misfits.values() if problem not in reason)
    row.update(error=f"model {entry.model_id!r} ({entry.source} {entry.uri}): {reason}")
    return row


def schema_problems(row: ModelsRow) -> dict[str, str]:
    """column -> why its value does not fit models.lance (its type, or null in a required column).
    Checked before anything of a model is committed, so that a bad value fails that model alone."""
    problems = {}
    for field in MODELS_SCHEMA:
        value = row.get(field.name)
        if value is None:
            if not field.nullable:
                problems[field.name] = f"column {field.name!r} of models.lance must not be empty"
            continue
        try:
            pa.array([value], type=field.type)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
            problems[field.name] = (f"column {field.name!r}: {value!r} does not fit models.lance's type "
                                    f"{field.type} ({' '.join(str(error).split())})")
    for name, value in row.extra.items():
        if value is not None and not isinstance(value, str):
            problems[name] = f"catalog column {name!r}: {value!r} is not a string"
    return problems


def extract_model(entry: CatalogEntry, trust_pickles: bool = False, device: str = "cpu") -> ExtractedModel:
    """Load, check and tabulate one model. Never raises for a bad model: returns a failed row."""
    started = time.perf_counter()
    load_seconds = None
    try:
        model = load_layers(entry, trust_pickles=trust_pickles, device=device)
        load_seconds = time.perf_counter() - started
        check_weights(model)
        layers = layers_table(entry.model_id, model, device=device)
        filters = filters_table(entry.model_id, model, entry.meta)
    except Exception as error:  # any failure of one model is recorded, the run goes on
        return ExtractedModel(failed_row(entry, f"{type(error).__name__}: {error}", device=device,
                                         load_seconds=load_seconds, extract_seconds=time.perf_counter() - started))
    row = models_row(entry, status="ok", error=None, source_fingerprint=source_fingerprint(entry), device=device,
                     weights_digest=weights_digest(model), notes="; ".join(model.notes) or None,
                     load_seconds=load_seconds, extract_seconds=time.perf_counter() - started, **model_facts(model))
    misfits = schema_problems(row)
    if misfits:
        reason = "its models row does not fit the schema: " + "; ".join(misfits.values())
        return ExtractedModel(failed_row(entry, reason, device=device, load_seconds=load_seconds,
                                         extract_seconds=row["extract_seconds"]))
    return ExtractedModel(row, layers, filters)


def write_files(db, entry: CatalogEntry, result: ExtractedModel) -> WrittenModel:
    """The model's data files, written uncommitted by `db.write_model_files` (in whatever process
    extracted it). A failure to write them fails this model alone, recorded with the reason."""
    try:
        return db.write_model_files(result.row, result.filters, result.layers)
    except Exception as error:  # a full disk, a value Lance refuses: the model fails, the run goes on
        row = failed_row(entry, f"writing its data files failed: {type(error).__name__}: {error}")
        row.update(**{k: v for k, v in result.row.columns.items() if k in ("device", "node", "load_seconds")})
        return WrittenModel(row)
