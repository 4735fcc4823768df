"""`filterdb quality`: per-model degeneracy of the stored 3x3 layers, and the back-fill of metrics.

Selection is SQL (DuckDB) over `layers` joined with the `ok` rows of `models`, so `--where` can
name any layer or model column (`family = 'resnet' AND conv_depth_norm > 0.5`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from rich.console import Console
from rich.table import Table

from ops.errors import UsageError
from ops.metrics import DegeneracyThresholds, classify_layer, quality_of_layers
from ops.predicates import predicate_error
from ops.db import FilterDB, open_db
from ops.query_sql import connect
from ops.store import QUALITY_COLUMNS, sql_list

LABELS = ("sparse", "low_diversity", "random_looking")
RANKING = {"sparse": ("sparsity", False), "low_diversity": ("variance_entropy_norm", True),
           "random_looking": ("variance_entropy_norm", False)}
"""label -> (metric, ascending): most sparse, lowest entropy and most random-looking layers first."""
TITLES = {"sparse": "most sparse layers", "low_diversity": "lowest-diversity layers",
          "random_looking": "most random-looking layers"}


def select_layers(db: FilterDB, where: str | None = None) -> pd.DataFrame:
    """3x3 layers of complete models, with the models' columns, filtered by a SQL predicate (DuckDB
    over the DB's tables, the predicate pushed into the scans where it names their columns)."""
    layer_columns = db.require("layers").schema.names
    model_columns = [c for c in db.columns("models") if c not in layer_columns]
    con, _ = connect(db)
    query = (f"SELECT * FROM layers JOIN (SELECT model_id, {', '.join(map(_quoted, model_columns))} FROM models "
             f"WHERE status = 'ok') USING (model_id) WHERE kernel_h = 3 AND kernel_w = 3")
    if where:
        query += f" AND ({where})"
    try:
        return con.sql(query).df()
    except duckdb.Error as error:
        raise predicate_error(where, error, [*layer_columns, *model_columns]) from None
    finally:
        con.close()


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


@dataclass
class QualityReport:
    """Per-model shares of degenerated layers (worst first) and every selected 3x3 layer with its labels."""

    per_model: pd.DataFrame
    layers: pd.DataFrame
    thresholds: DegeneracyThresholds

    def ranked(self, label: str) -> pd.DataFrame:
        """The layers carrying `label`, in that label's own direction (RANKING)."""
        metric, ascending = RANKING[label]
        flagged = self.layers[self.layers[label]]
        return flagged.sort_values([metric, "model_id", "layer_index"], ascending=[ascending, True, True]).reset_index(drop=True)


def quality_report(db_path: str, where: str | None = None,
                   thresholds: DegeneracyThresholds = DegeneracyThresholds()) -> QualityReport:
    """Degeneracy of the selected 3x3 layers of the `ok` models; raises UsageError when none is selected."""
    layers = select_layers(open_db(db_path), where)
    if layers.empty:
        raise UsageError(f"no 3x3 layers of stored models match {where!r} in {db_path}: relax --where"
                         if where else f"{db_path}: no 3x3 layers of stored models (run `filterdb extract` first)")
    labels = [classify_layer(row, thresholds) for row in layers[list(QUALITY_COLUMNS)].to_dict("records")]
    for label in LABELS:
        layers[label] = [label in labelled for labelled in labels]
    layers["degenerated"] = layers[list(LABELS)].any(axis=1)
    per_model = (
        layers.groupby("model_id")
        .agg(n_3x3_layers=("layer_index", "size"), share_sparse=("sparse", "mean"),
             share_low_diversity=("low_diversity", "mean"), share_random_looking=("random_looking", "mean"),
             share_degenerated=("degenerated", "mean"), mean_sparsity=("sparsity", "mean"),
             mean_variance_entropy_norm=("variance_entropy_norm", "mean"))
        .reset_index()
        .sort_values(["share_degenerated", "share_sparse", "model_id"], ascending=[False, False, True])
    )
    columns = ["model_id", "layer_index", "layer_name", "kind", "conv_depth_norm", "n_filters", *QUALITY_COLUMNS, *LABELS]
    return QualityReport(per_model.reset_index(drop=True), layers[columns], thresholds)


def write_report(per_model: pd.DataFrame, out: str) -> str:
    """Per-model report as .lance, .parquet or .csv, by the file's suffix; returns what was written."""
    suffix = Path(out).suffix.lower()
    if suffix not in (".lance", ".parquet", ".csv"):
        raise UsageError(f"--out {out}: unknown format (use .lance, .parquet or .csv)")
    table = pa.Table.from_pandas(per_model, preserve_index=False)
    if suffix == ".lance":
        import lance

        lance.write_dataset(table, out, mode="overwrite")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    else:
        per_model.to_csv(out, index=False)
    return f"wrote the per-model table ({len(per_model)} models) to {out}"


def print_report(report: QualityReport, top: int = 15, as_json: bool = False, title: str = "") -> None:
    """The per-model table and, per label, its most extreme layers; each says how many it shows of how many."""
    if as_json:
        print(json.dumps({"thresholds": asdict(report.thresholds), "models": report.per_model.to_dict("records"),
                          "layers": {label: report.ranked(label).head(top).to_dict("records") for label in LABELS},
                          "layers_flagged": {label: int(report.layers[label].sum()) for label in LABELS}},
                         default=_json_default))
        return
    console = Console(width=160)
    per_model = report.per_model
    table = Table(title=f"{title}degenerated 3x3 layers per model, worst first ({_shown(top, len(per_model), 'models')}; "
                        f"thresholds: {asdict(report.thresholds)})")
    for column in ("model", "3x3 layers", "sparse", "low diversity", "random-looking", "degenerated"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for row in per_model.head(top).itertuples():
        table.add_row(row.model_id, str(row.n_3x3_layers), f"{row.share_sparse:.0%}", f"{row.share_low_diversity:.0%}",
                      f"{row.share_random_looking:.0%}", f"{row.share_degenerated:.0%}")
    console.print(table)
    for label in LABELS:
        ranked = report.ranked(label)
        if ranked.empty:
            console.print(f"{title}{TITLES[label]}: none of {len(report.layers)} layers")
            continue
        layers = Table(title=f"{title}{TITLES[label]} ({_shown(top, len(ranked), 'layers')}, of {len(report.layers)} selected)")
        for column in ("model", "layer", "kind", "filters", "sparsity", "VE norm", "labels"):
            layers.add_column(column)
        for row in ranked.head(top).itertuples():
            labels = ", ".join(name for name in LABELS if getattr(row, name))
            layers.add_row(row.model_id, f"{row.layer_index} {row.layer_name}", row.kind, str(row.n_filters),
                           f"{row.sparsity:.2f}", f"{row.variance_entropy_norm:.2f}", labels)
        console.print(layers)


def _shown(top: int, total: int, what: str) -> str:
    return f"all {total} {what}" if top >= total else f"{top} of {total} {what}"


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    return str(value)


def backfill_metrics(db_path: str, eps: float = 0.01, device: str = "cpu") -> int:
    """Recompute the metrics of every stored 3x3 layer from `filters` and rewrite `layers` in one commit."""
    db = open_db(db_path)
    table = db.layers(as_="arrow")
    metrics = {name: table.column(name).to_pylist() for name in QUALITY_COLUMNS}
    position = {key: i for i, key in enumerate(zip(table.column("model_id").to_pylist(),
                                                   table.column("layer_index").to_pylist()))}
    ok = db.models(columns=["model_id"], where="status = 'ok'", as_="arrow").column("model_id").to_pylist()
    for model_id in ok:
        rows = db.filters(where=f"model_id IN {sql_list([model_id])}", as_="arrow",
                          columns=["layer_index", "out_index", "in_index", "kind", "weights"])
        keys, weights = _layer_weights(rows)
        for key, quality in zip(keys, quality_of_layers(weights, eps=eps, device=device)):
            for name in QUALITY_COLUMNS:
                metrics[name][position[(model_id, key)]] = quality[name]
    for name in QUALITY_COLUMNS:
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(metrics[name], pa.float64()))
    db.update_rows("layers", table.select(["model_id", "layer_index", *QUALITY_COLUMNS]), keys=["model_id", "layer_index"])
    db.snapshot("quality", note="metrics recomputed (filterdb quality --backfill)")
    return len(ok)


def _layer_weights(rows: pa.Table) -> tuple[list[int], list[torch.Tensor]]:
    """Per layer, the (d0, d1, 3, 3) weight as stored, rebuilt from its filter rows."""
    frame = rows.to_pandas()
    keys, weights = [], []
    for layer_index, group in frame.groupby("layer_index", sort=True):
        transposed = group["kind"].iloc[0] == "transposed"
        dim0, dim1 = ("in_index", "out_index") if transposed else ("out_index", "in_index")
        group = group.sort_values([dim0, dim1])
        shape = (int(group[dim0].max()) + 1, int(group[dim1].max()) + 1, 3, 3)
        keys.append(int(layer_index))
        weights.append(torch.from_numpy(np.stack(group["weights"].to_numpy()).astype(np.float32).reshape(shape)))
    return keys, weights
