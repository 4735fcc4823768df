"""Benchmark of reading the DB from Python: `filterdb bench query --filters 10M`.

On one synthetic DB (the shift benchmark's generator, written through the DB object with its
indexes; generated once under the cache folder, then reused), side by side:
- selections: one model's filters, a depth range, a count over one model, a SQL aggregate over
  layers joined with models: `db.filters` / `db.sql` against a plain `lance` scan (with and without
  the scalar indexes) and numpy on arrays already in memory;
- nearest filters: latency p50/p99 and recall@10 of `db.similar` without an index (Lance's exact
  scan), with the vector index at several `nprobes`, and numpy brute force in memory (the
  reference of the recall).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from flows.bench.shifts import DEFAULT_CACHE, FILTERS_PER_MODEL, FRAGMENT_ROWS, _layers_table, _table, parse_count
from flows.bench.timing import Column, FigureTable, Ratio, best_of
from ops.db import open_db, weights_of
from ops.store import ModelsRow

HELP = "reading, SQL and nearest filters of the DB vs plain lance and numpy"
NPROBES = (8, 32, 64)
K = 10


# --- the synthetic DB --------------------------------------------------------------------------------


def synthetic_query_db(n_filters: int, cache: Path = DEFAULT_CACHE, seed: int = 0, partitions: int | None = None):
    """A DB of n_filters synthetic filters (models of ~50k, 12 layers) with its models and layers rows,
    the writer's scalar indexes and the vector index; built once through the DB object, then reused."""
    root = Path(cache) / f"query_{n_filters}"
    db = open_db(root, must_exist=False)
    if db.exists() and db.has_vector_index() and db.count("filters") == n_filters:
        return db, None
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    db = open_db(root, must_exist=False)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_models = max(1, n_filters // FILTERS_PER_MODEL)
    fragments, layers, meta = [], {}, {}
    for start in range(0, n_filters, FRAGMENT_ROWS):
        rows = min(FRAGMENT_ROWS, n_filters - start)
        first, last = start * n_models // n_filters, min(n_models - 1, (start + rows - 1) * n_models // n_filters)
        table = _table(rng, first, last - first + 1, rows)
        fragments += db.write_fragments("filters", table)
        keys = table.group_by(["model_id", "layer_index", "kind", "conv_depth", "conv_depth_norm"]).aggregate([("out_index", "count")])
        for row in keys.to_pylist():
            key = (row["model_id"], row["layer_index"])
            layers[key] = {**row, "n_filters": layers.get(key, {"n_filters": 0})["n_filters"] + row["out_index_count"]}
        for row in table.select(["model_id", "family", "task", "train_dataset", "pretrain_dataset", "visual_category"]).group_by(
                ["model_id", "family", "task", "train_dataset", "pretrain_dataset", "visual_category"]).aggregate([]).to_pylist():
            meta[row["model_id"]] = row
    db.commit("filters", fragments)
    db.commit("layers", db.write_fragments("layers", _layers_table(list(layers.values()))))
    per_model: dict[str, list[int]] = {}
    for (model_id, _), row in layers.items():
        per_model.setdefault(model_id, []).append(row["n_filters"])
    db.append_models([ModelsRow({**meta[m], "status": "ok", "source": "synthetic", "n_filters_3x3": sum(counts),
                                 "n_conv_layers": len(counts)}) for m, counts in sorted(per_model.items())])
    written = time.perf_counter() - started
    db.update_indexes()
    scalar = time.perf_counter() - started - written
    db.create_vector_index(partitions)
    vector = time.perf_counter() - started - written - scalar
    db.snapshot("bench", models_added=len(per_model), note="filterdb bench query")
    return db.refresh(), {"write_s": written, "scalar_indexes_s": scalar, "vector_index_s": vector}


# --- the contenders ----------------------------------------------------------------------------------


def in_memory(db) -> dict:
    """What numpy works on: the weights, model codes, depths and keys (model, layer, out, in) of every
    filter, read in one scan, and the layers and models as arrays."""
    keys = ["model_id", "layer_index", "out_index", "in_index"]
    table = db.dataset("filters").to_table(columns=[*keys, "conv_depth_norm", "weights"])
    models = table.column("model_id").combine_chunks().dictionary_encode()
    return {"weights": weights_of(table.column("weights")).reshape(-1, 9), "model": models.indices.to_numpy(),
            "model_names": models.dictionary.to_pylist(), "depth": table.column("conv_depth_norm").to_numpy(),
            "keys": [table.column(c).to_numpy(zero_copy_only=False) for c in keys],
            "layers": db.layers(columns=["model_id", "n_filters", "conv_depth_norm"]),
            "models": db.models(columns=["model_id", "family"])}


def selection_figures(db, memory: dict, repeats: int) -> FigureTable:
    """One model's weights, a depth range, a count over one model, a SQL aggregate: the DB object, plain
    lance (with and without the scalar indexes) and numpy in memory, best of `repeats`."""
    ds = db.dataset("filters")
    model = memory["model_names"][len(memory["model_names"]) // 2]
    code = memory["model_names"].index(model)
    one_model, depth = f"model_id = '{model}'", "conv_depth_norm >= 0.4 AND conv_depth_norm <= 0.5"
    aggregate = ("SELECT family, count(*) AS layers, sum(n_filters) AS filters, avg(conv_depth_norm) AS depth "
                 "FROM layers JOIN models USING (model_id) GROUP BY family ORDER BY family")
    layers, models = memory["layers"], memory["models"]
    cases = {
        "one model's filters (weights)": {
            "db.filters": lambda: len(db.filters(where=one_model)),
            "lance scan": lambda: ds.to_table(columns=["weights"], filter=one_model).num_rows,
            "lance scan, no index": lambda: ds.to_table(columns=["weights"], filter=one_model, use_scalar_index=False).num_rows,
            "numpy in memory": lambda: len(memory["weights"][memory["model"] == code]),
        },
        "depth 0.4-0.5 (weights)": {
            "db.filters": lambda: len(db.filters(where=depth)),
            "lance scan": lambda: ds.to_table(columns=["weights"], filter=depth).num_rows,
            "lance scan, no index": lambda: ds.to_table(columns=["weights"], filter=depth, use_scalar_index=False).num_rows,
            "numpy in memory": lambda: len(memory["weights"][(memory["depth"] >= 0.4) & (memory["depth"] <= 0.5)]),
        },
        "count(*) of one model (SQL)": {
            "db.sql": lambda: int(db.sql(f"SELECT count(*) AS n FROM filters WHERE {one_model}")["n"][0]),
            "lance scan": lambda: ds.count_rows(filter=one_model),
            "lance scan, no index": lambda: ds.scanner(columns=["model_id"], filter=one_model, use_scalar_index=False).count_rows(),
            "numpy in memory": lambda: int((memory["model"] == code).sum()),
        },
        "SQL aggregate over layers x models": {
            "db.sql": lambda: len(db.sql(aggregate)),
            "lance scan": lambda: len(db.layers(columns=["model_id", "n_filters", "conv_depth_norm"])
                                      .merge(db.models(columns=["model_id", "family"]), on="model_id")
                                      .groupby("family").agg(n=("n_filters", "size"))),
            "numpy in memory": lambda: len(layers.merge(models, on="model_id").groupby("family")
                                           .agg(n=("n_filters", "size"), f=("n_filters", "sum"), d=("conv_depth_norm", "mean"))),
        },
    }
    table = FigureTable(f"selections on {ds.count_rows():,} filters (best of {repeats})",
                        [Column("rows", "rows", "{:,}".format), Column("ms", "ms", "{:.1f}".format),
                         Ratio("vs lance scan", "ms", to="lance_ms", format="{:.2f}x".format)], name_header="query / contender")
    for case, contenders in cases.items():
        lance_ms = None
        results = {}
        for name, fn in contenders.items():
            fn()  # warm: indexes and metadata cached, as in a session
            timing = best_of(fn, repeats)
            results[name] = (timing.result, timing.seconds * 1e3)
            if name == "lance scan":
                lance_ms = timing.seconds * 1e3
        rows = {r for r, _ in results.values()}
        for name, (rows_found, ms) in results.items():
            table.add(f"{case}: {name}", {"rows": rows_found, "ms": ms, "lance_ms": lance_ms})
        if len(rows) > 1 and case != "SQL aggregate over layers x models":
            table.notes.append(f"{case}: contenders disagree on the rows: {sorted(rows)}")
    table.notes.append(f"one model: {model}; the plain scans read the weights column only (no visibility predicate: every model is ok)")
    return table


def brute_force(weights: np.ndarray, unit_norms: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the k nearest filters by cosine distance (all-zero filters never), nearest first."""
    cosine = weights @ (query / np.linalg.norm(query)) / unit_norms
    top = np.argpartition(-cosine, k)[:k]
    return top[np.argsort(-cosine[top])]


def nearest_figures(db, memory: dict, n_queries: int, n_exact: int, seed: int = 1) -> FigureTable:
    """Latency p50/p99 and recall@K of each search against numpy brute force on the same queries:
    stored filters with noise (the typical "what is like this one" query) and random kernels."""
    weights = memory["weights"]
    norms = np.linalg.norm(weights, axis=1)
    norms[norms == 0] = np.inf  # all-zero filters: cosine 0/inf = 0, never the nearest of a shape
    rng = np.random.default_rng(seed)
    picks = weights[rng.integers(len(weights), size=n_queries)]
    queries = np.where(rng.random((n_queries, 1)) < 0.5, picks + rng.normal(0, 0.3, picks.shape) * np.abs(picks).max(1, keepdims=True),
                       rng.standard_normal(picks.shape)).astype(np.float32)
    queries[~np.any(queries, axis=1)] = 1
    truth, truth_ms = [], []
    for q in queries:
        started = time.perf_counter()
        truth.append(brute_force(weights, norms, q, K))
        truth_ms.append((time.perf_counter() - started) * 1e3)
    key_columns = memory["keys"]
    truth_keys = [{tuple(col[i] for col in key_columns) for i in rows} for rows in truth]

    table = FigureTable(f"nearest {K} filters by shape, {len(weights):,} filters ({n_queries} queries; exact scans {n_exact})",
                        [Column("p50 ms", "p50", "{:.1f}".format), Column("p99 ms", "p99", "{:.1f}".format),
                         Column(f"recall@{K}", "recall", "{:.3f}".format), Ratio("p50 vs numpy", "p50")],
                        baseline="numpy brute force (in memory)", name_header="search")
    table.add("numpy brute force (in memory)", {"p50": np.percentile(truth_ms, 50), "p99": np.percentile(truth_ms, 99), "recall": 1.0})
    runs = [("db.similar, no index (lance exact scan)", dict(exact=True), n_exact)]
    runs += [(f"db.similar, IVF index, nprobes {p}", dict(nprobes=p), n_queries) for p in NPROBES]
    for name, options, count in runs:
        db.similar(queries[0], k=K, **options)  # warm: the index in cache
        latencies, hits = [], 0
        for q, expected in zip(queries[:count], truth_keys[:count]):
            started = time.perf_counter()
            found = db.similar(q, k=K, **options)
            latencies.append((time.perf_counter() - started) * 1e3)
            hits += len(expected & set(zip(found["model_id"], found["layer_index"], found["out_index"], found["in_index"])))
        table.add(name, {"p50": np.percentile(latencies, 50), "p99": np.percentile(latencies, 99), "recall": hits / (K * count)})
    index = next(i for i in db.dataset("filters").describe_indices() if i.field_names == ["weights"])
    table.notes.append(f"vector index: IVF_FLAT, cosine, {index.num_rows_indexed:,} rows indexed; default nprobes "
                       f"(ops.similarity.NPROBES) is used without --nprobes")
    return table


def run_query_benchmark(n_filters: int, cache: Path = DEFAULT_CACHE, repeats: int = 5, n_queries: int = 200,
                        n_exact: int = 20) -> list[FigureTable]:
    db, build = synthetic_query_db(n_filters, cache)
    memory = in_memory(db)
    tables = [selection_figures(db, memory, repeats), nearest_figures(db, memory, n_queries, n_exact)]
    if build:
        tables[0].notes.append("DB built in this run: " + ", ".join(f"{k} {v:.1f}" for k, v in build.items()))
    return tables


def add_arguments(parser) -> None:
    parser.add_argument("--filters", default="10M", help="number of synthetic filters, e.g. 1M, 10M (default 10M)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"folder of the synthetic DBs (default {DEFAULT_CACHE})")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each selection, best kept (default 5)")
    parser.add_argument("--queries", type=int, default=200, help="nearest-filter queries per indexed search (default 200)")
    parser.add_argument("--exact-queries", type=int, default=20, help="queries of the exact scan (default 20)")


def run(args) -> int:
    tables = run_query_benchmark(parse_count(args.filters), args.cache, args.repeats, args.queries, args.exact_queries)
    from rich.console import Console

    console = Console(width=120)
    for table in tables:
        table.print(console)
    if args.json:
        import json

        from flows.bench.timing import _finite

        with open(args.json, "w") as file:
            json.dump(_finite({"tables": [t.as_json() for t in tables]}), file, indent=2, default=str)
    return 0
