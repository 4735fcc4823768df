"""Extract one catalog model into the rows of the three tables; a failure becomes a `failed` row."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow as pa

from ops.catalog import CatalogEntry
from ops.model_rows import check_weights, filters_table, layers_table, model_facts, models_row, weights_digest
from ops.sources import load_layers
from ops.store import ModelsRow


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
    """The models row of a model that could not be extracted, its error naming the model and its input."""
    return models_row(entry, status="failed", error=f"model {entry.model_id!r} ({entry.source} {entry.uri}): {reason}",
                      source_fingerprint=source_fingerprint(entry), **columns)


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
    return ExtractedModel(row, layers, filters)
