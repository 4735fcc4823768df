"""Extract one catalog model into the rows of the three tables; a failure becomes a `failed` row."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from ops.catalog import CatalogEntry
from ops.kernels import check_weights, filters_table, layers_table, model_facts, weights_digest
from ops.sources import load_layers


@dataclass
class ExtractedModel:
    row: dict
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


def model_row(entry: CatalogEntry) -> dict:
    """The catalog part of a models row."""
    return {
        "model_id": entry.model_id,
        "source": entry.source,
        "uri": entry.uri,
        "arch": entry.arch,
        "input_size": "x".join(map(str, entry.input_size)) if entry.input_size else None,
        "pretrained": entry.pretrained,
        "seed": entry.seed,
        **entry.meta,
        **entry.extra,
        "source_fingerprint": source_fingerprint(entry),
        "extracted_at": datetime.now(timezone.utc),
    }


def extract_model(entry: CatalogEntry, trust_pickles: bool = False, device: str = "cpu") -> ExtractedModel:
    """Load, check and tabulate one model. Never raises for a bad model: returns a failed row."""
    row = model_row(entry)
    row["device"] = device
    started = time.perf_counter()
    try:
        model = load_layers(entry, trust_pickles=trust_pickles, device=device)
        row["load_seconds"] = time.perf_counter() - started
        check_weights(model)
        layers = layers_table(entry.model_id, model, device=device)
        filters = filters_table(entry.model_id, model, entry.meta)
    except Exception as error:  # any failure of one model is recorded, the run goes on
        message = f"{type(error).__name__}: {error}"
        row.update(status="failed", error=f"model {entry.model_id!r} ({entry.source} {entry.uri}): {message}")
        row["extract_seconds"] = time.perf_counter() - started
        return ExtractedModel(row)
    row.update(model_facts(model), status="ok", error=None, weights_digest=weights_digest(model),
               notes="; ".join(model.notes) or None)
    row["extract_seconds"] = time.perf_counter() - started
    return ExtractedModel(row, layers, filters)
