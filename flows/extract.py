"""`filterdb extract`: a catalog of models -> the Lance DB (one commit per table per model)."""

from __future__ import annotations

from ops.catalog import CatalogEntry, read_catalog
from ops.extraction import ExtractedModel, extract_model, source_fingerprint
from ops.store import FilterDB
from flows.progress import ExtractProgress, ExtractSummary


def models_to_extract(entries: list[CatalogEntry], db: FilterDB, force: bool) -> tuple[list[CatalogEntry], list[str]]:
    """Entries that need work, and ids skipped because they are stored unchanged (same input files)."""
    if force:
        return entries, []
    stored = db.stored_models()
    todo, skipped = [], []
    for entry in entries:
        row = stored.get(entry.model_id)
        if row and row["status"] == "ok" and row["source_fingerprint"] == source_fingerprint(entry):
            skipped.append(entry.model_id)
        else:
            todo.append(entry)
    return todo, skipped


def store_model(db: FilterDB, result: ExtractedModel, stored_row: dict | None, force: bool) -> bool:
    """Write one extracted model (replacing older rows); False when it is stored unchanged already."""
    model_id = result.row["model_id"]
    if (stored_row and not force and result.ok and stored_row["status"] == "ok"
            and stored_row["weights_digest"] == result.row["weights_digest"]):
        return False
    if stored_row:
        db.remove_models([model_id])
    if result.ok:
        db.append("filters", result.filters)
        db.append("layers", result.layers)
    db.append_models([result.row])
    return True


def extract_catalog(catalog: str, db_path: str, force: bool = False, trust_pickles: bool = False,
                    device: str = "cpu", progress: bool = True) -> ExtractSummary:
    """Extract every catalog model into the DB at `db_path`, one model at a time in this process."""
    entries = read_catalog(catalog)
    db = FilterDB(db_path)
    db.recover()
    todo, skipped = models_to_extract(entries, db, force)
    stored = db.stored_models()
    summary = ExtractSummary(total=len(entries))
    with ExtractProgress(summary, enabled=progress) as bar:
        for model_id in skipped:
            bar.skipped(model_id)
        for entry in todo:
            result = extract_model(entry, trust_pickles=trust_pickles, device=device)
            written = store_model(db, result, stored.get(entry.model_id), force)
            if not result.ok:
                bar.failed(entry.model_id, result.row["error"])
            elif written:
                bar.stored(entry.model_id, result.filters.num_rows)
            else:
                bar.skipped(entry.model_id)
    db.compact()
    if progress:
        bar.print_summary()
    return summary
