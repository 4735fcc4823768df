"""`filterdb extract`: a catalog of models -> the Lance DB.

The Ray Data pipeline reads top to bottom: catalog rows -> an actor pool (`ExtractModels`, one
model per call, warm across calls, a GPU each when the cluster has GPUs) that extracts a model and
writes its `filters`/`layers` data files -> the driver, which commits what arrived every few
seconds. The write protocol (order, recovery) is ops/store.py's; this flow only batches, reports
progress and calls it. The driver holds fragment metadata and model rows only, never filter values.

`extract_catalog_local` is the same work in one process, with one commit per table per model: the
baseline of the benchmark and a fallback without Ray.
"""

from __future__ import annotations

import pickle
import time
from contextlib import contextmanager

from flows.progress import ExtractProgress, ExtractSummary
from flows.ray_runtime import ensure_ray
from ops.catalog import CatalogEntry, read_catalog
from ops.extraction import extract_model, failed_row, source_fingerprint, write_files
from ops.db import FilterDB, open_db
from ops.store import WrittenModel
from ops.sources.timm_models import assume_hub_reachable, hub_reachable, needs_hub
from ops.torch_graph import graph_pass_failure


def models_to_extract(entries: list[CatalogEntry], stored: dict[str, dict], force: bool) -> tuple[list[CatalogEntry], list[str]]:
    """Entries that need work, and ids skipped because they are stored (`stored`: the DB's
    `stored_models()`) unchanged (same input files)."""
    if force:
        return entries, []
    todo, skipped = [], []
    for entry in entries:
        row = stored.get(entry.model_id)
        if row and row["status"] == "ok" and row["source_fingerprint"] == source_fingerprint(entry):
            skipped.append(entry.model_id)
        else:
            todo.append(entry)
    return todo, skipped


def unchanged(row: dict, stored_row: dict | None, force: bool) -> bool:
    """An ok model whose weights_digest equals the stored ok one (the file was touched, not changed)."""
    return bool(stored_row and not force and row["status"] == "ok" and stored_row["status"] == "ok"
                and stored_row["weights_digest"] == row["weights_digest"])


@contextmanager
def extraction(catalog: str, db_path: str, force: bool, progress: bool, storage_options: dict | None = None):
    """Shared frame of both extractors: read the catalog, recover the DB, skip unchanged models,
    show progress; yields (db, entries to extract, stored rows, progress); at the end compacts,
    updates the indexes and records a snapshot of what the run added, removed and saw fail."""
    entries = read_catalog(catalog)
    db = open_db(db_path, storage_options=storage_options, must_exist=False)
    recovered = db.recover()
    stored = db.stored_models()
    todo, skipped = models_to_extract(entries, stored, force)
    with ExtractProgress(ExtractSummary(total=len(entries)), enabled=progress) as bar:
        for model_id in skipped:
            bar.skipped(model_id)
        yield db, todo, stored, bar
    summary = bar.summary
    if db.exists():
        db.compact()
        if summary.stored or summary.failed or recovered:
            db.snapshot("extract", models_added=len([m for m in summary.stored if m not in stored]),
                        models_removed=len(recovered), models_failed=len(summary.failed), note=str(catalog))
    if progress:
        bar.print_summary()


def extract_catalog_local(catalog: str, db_path: str, force: bool = False, trust_pickles: bool = False,
                          device: str = "cpu", progress: bool = True, storage_options: dict | None = None) -> ExtractSummary:
    """Extract every catalog model in this process, one model (three commits) at a time."""
    with extraction(catalog, db_path, force, progress, storage_options) as (db, todo, stored, bar):
        committer = Committer(db, stored, force, bar, every_s=0)
        for entry in todo:
            result = extract_model(entry, trust_pickles=trust_pickles, device=device)
            committer.add(write_files(db, entry, result))
    return bar.summary


# --- the Ray Data pipeline ----------------------------------------------------------------------


class ExtractModels:
    """Ray Data actor: extracts one model per call on its device and writes its data files."""

    def __init__(self, db_path: str, trust_pickles: bool, threads: int, storage_options: dict | None = None,
                 hub_reachable: bool | None = None):
        import ray
        import torch

        if hub_reachable is not None:  # the driver probed the hub once for the whole run
            assume_hub_reachable(hub_reachable)

        torch.set_num_threads(max(1, threads))
        self.db = open_db(db_path, storage_options=storage_options, must_exist=False)
        self.trust_pickles = trust_pickles
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        entries = [pickle.loads(payload) for payload in batch["entry"]]
        results = [extract_model(e, trust_pickles=self.trust_pickles, device=self.device) for e in entries]
        for result in results:  # which node extracted it: on a cluster, where to look when it went wrong
            result.row.update(node=self.node)
        return {"written": [pickle.dumps(write_files(self.db, e, r)) for e, r in zip(entries, results)]}


COMPACT_EVERY_MODELS = 500
"""The Committer compacts the DB after this many committed models: each model adds a fragment to
`layers` and `filters`, and without it reads and commits slow down with their number
(`filterdb bench commit`: reading `layers` of 10,000 models uncompacted took hundreds of times longer)."""


class Committer:
    """Commits written models in groups (`FilterDB.commit_models`), every `every_s` seconds (0: each at
    once), reports each on the progress bar, and compacts every `compact_every` models (0: never)."""

    def __init__(self, db: FilterDB, stored: dict, force: bool, bar: ExtractProgress, every_s: float,
                 compact_every: int = COMPACT_EVERY_MODELS):
        self.db, self.stored, self.force, self.bar, self.every_s = db, stored, force, bar, every_s
        self.compact_every, self.since_compaction = compact_every, 0
        self.pending: list[WrittenModel] = []
        self.last = time.perf_counter()

    def add(self, model: WrittenModel) -> None:
        if unchanged(model.row, self.stored.get(model.row["model_id"]), self.force):
            self.bar.skipped(model.row["model_id"])  # its data files stay unreferenced, never visible
            return
        self.pending.append(model)
        if time.perf_counter() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            self.db.commit_models(self.pending, replacing=set(self.stored))
        except Exception:  # one model's rows may be what failed: undo the group's commits, commit each alone
            self.db.recover()
            self.pending = [self._commit_alone(model) for model in self.pending]
        for model in self.pending:
            if model.row["status"] == "ok":
                self.bar.stored(model.row["model_id"], model.row["n_filters_3x3"],
                                graph_pass_failure=graph_pass_failure(model.row["notes"]))
            else:
                self.bar.failed(model.row["model_id"], model.row["error"])
        self.since_compaction += len(self.pending)
        if self.compact_every and self.since_compaction >= self.compact_every:
            self.db.compact()
            self.since_compaction = 0
        self.pending, self.last = [], time.perf_counter()

    def _commit_alone(self, model: WrittenModel) -> WrittenModel:
        """Commit one model; if that fails too, remove what it left and record it failed with the reason."""
        try:
            self.db.commit_models([model], replacing=set(self.stored))
            return model
        except Exception as error:  # the model fails, the other models of the run are stored as they would be
            self.db.recover()
            model.row.update(status="failed", error=f"model {model.row['model_id']!r}: committing its rows failed: "
                                                    f"{type(error).__name__}: {error}")
            failed = WrittenModel(model.row)
            self.db.commit_models([failed], replacing=set(self.stored))
            return failed


def extract_catalog(catalog: str, db_path: str, force: bool = False, trust_pickles: bool = False,
                    address: str | None = None, actors: int | None = None, gpus_per_actor: float | None = None,
                    commit_every_s: float = 5.0, progress: bool = True, storage_options: dict | None = None) -> ExtractSummary:
    """Extract every catalog model with a Ray Data actor pool; resumable and idempotent."""
    with extraction(catalog, db_path, force, progress, storage_options) as (db, todo, stored, bar):
        if todo:
            ensure_ray(address)
            committer = Committer(db, stored, force, bar, commit_every_s)
            for written in _pipeline(todo, db_path, trust_pickles, actors, gpus_per_actor, storage_options):
                committer.add(written)
            committer.flush()
            _record_lost_models(todo, bar.summary, committer)
    return bar.summary


def _pipeline(todo: list[CatalogEntry], db_path: str, trust_pickles: bool, actors: int | None,
              gpus_per_actor: float | None, storage_options: dict | None = None):
    """catalog rows -> actor pool -> finished models, streamed to the driver as they complete."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    resources = ray.cluster_resources()
    cluster_gpus = resources.get("GPU", 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1 if cluster_gpus else 0
    if actors is None:
        actors = int(cluster_gpus // gpus_per_actor) if gpus_per_actor else int(resources.get("CPU", 1))
    actors = max(1, min(actors, len(todo)))
    cpus_per_actor = max(1, int(resources.get("CPU", 1) // actors))  # torch threads of each actor
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.max_errored_blocks = -1  # a model that crashes its worker loses its block, not the run
    items = [{"entry": pickle.dumps(entry)} for entry in todo]
    results = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(
            ExtractModels,
            batch_size=1,
            # one model in flight per actor: a crash loses only the model that caused it
            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs=dict(db_path=db_path, trust_pickles=trust_pickles, threads=cpus_per_actor,
                                       storage_options=storage_options,
                                       hub_reachable=hub_reachable() if any(map(needs_hub, todo)) else None),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
            max_task_retries=1,  # Ray Data retries forever by default: a model that kills its worker would hang the run
        )
    )
    for row in results.iter_rows():
        yield pickle.loads(row["written"])


def _record_lost_models(todo: list[CatalogEntry], summary: ExtractSummary, committer: Committer):
    """Models whose worker died (twice) never reported back: record them as failed."""
    done = set(summary.stored) | set(summary.skipped) | set(summary.failed)
    for entry in todo:
        if entry.model_id not in done:
            committer.add(WrittenModel(failed_row(entry, "its worker process died while extracting it")))
    committer.flush()
