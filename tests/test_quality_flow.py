"""`filterdb quality`: degeneracy per model from the stored metrics, and their back-fill."""

import json

import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from flows.cli import main
from flows.extract import extract_catalog_local
from flows.quality import backfill_metrics, print_report, quality_report
from ops.catalog import write_catalog
from ops.metrics import DegeneracyThresholds
from ops.store import QUALITY_COLUMNS


def trained_cnn() -> nn.Module:
    """A small CNN trained for a few seconds on sklearn's digits."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    optimiser = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    net = trained_cnn()
    torch.save(net.state_dict(), folder / "trained.pt")
    sparse = {k: v.clone() for k, v in net.state_dict().items()}
    sparse["2.weight"][:, :28] = 0  # 28 of 32 input channels of every output: 87.5% zero filters
    torch.save(sparse, folder / "sparse.pt")
    rows = [
        {"model_id": "trained", "source": "checkpoint", "uri": "trained.pt", "family": "cnn"},
        {"model_id": "sparse", "source": "checkpoint", "uri": "sparse.pt", "family": "cnn"},
        {"model_id": "random", "source": "timm", "uri": "resnet18", "pretrained": "false", "family": "resnet"},
    ]
    write_catalog(rows, folder / "catalog.csv")
    extract_catalog_local(str(folder / "catalog.csv"), str(folder / "db"), progress=False)
    return str(folder / "db")


def test_random_model_is_random_looking_and_trained_is_not(db):
    shares = quality_report(db).per_model.set_index("model_id")
    assert shares.loc["random", "share_random_looking"] == 1.0
    assert shares.loc["trained", "share_random_looking"] < 1.0
    assert shares.loc["trained", "share_sparse"] == 0.0


def test_zeroed_layer_is_reported_sparse_and_ranked_first(db):
    report = quality_report(db)
    assert report.per_model.set_index("model_id").loc["sparse", "share_sparse"] == pytest.approx(1 / 3)
    top = report.ranked("sparse").iloc[0]
    assert (top["model_id"], top["layer_index"], bool(top["sparse"])) == ("sparse", 1, True)
    assert top["sparsity"] == pytest.approx(28 / 32)


def test_each_label_is_ranked_in_its_own_direction(db):
    report = quality_report(db, thresholds=DegeneracyThresholds(sparse=0.0, low_diversity=2.0, random_looking=0.0))
    layers = report.layers
    assert report.ranked("sparse").sparsity.tolist() == sorted(layers[layers["sparse"]].sparsity, reverse=True)
    assert report.ranked("low_diversity").variance_entropy_norm.tolist() == sorted(layers.variance_entropy_norm)
    most_random = report.ranked("random_looking").variance_entropy_norm.tolist()
    assert most_random == sorted(layers.variance_entropy_norm, reverse=True) and most_random[0] > 1.0


def test_the_printed_report_says_how_many_rows_it_shows_of_how_many(db, capsys):
    report = quality_report(db, thresholds=DegeneracyThresholds(sparse=0.0, low_diversity=2.0, random_looking=0.0))
    print_report(report, top=2)
    out = capsys.readouterr().out
    assert "2 of 3 models" in out
    assert f"2 of {len(report.layers)} layers" in out


def test_where_selects_on_model_and_layer_columns(db):
    per_model = quality_report(db, "family = 'cnn' AND layer_index > 0").per_model
    assert set(per_model["model_id"]) == {"trained", "sparse"}
    assert set(per_model["n_3x3_layers"]) == {2}


@pytest.mark.parametrize("where, message", [
    ("famly = 'cnn'", "unknown column 'famly'; the columns are: model_id, layer_index,"),
    ("family = = 'cnn'", "is not a SQL condition"),
    ("family = 'nothing'", "no 3x3 layers of stored models match"),
])
def test_a_bad_or_empty_selection_is_one_line_and_exit_status_2(db, capsys, where, message):
    assert main(["quality", "--db", db, "--where", where]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err and ".rs:" not in err


def test_a_missing_db_is_one_line_and_exit_status_2(tmp_path, capsys):
    assert main(["quality", "--db", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert "no DB at" in err and "filterdb extract" in err and len(err.strip().splitlines()) == 1


def test_backfill_recomputes_the_stored_metrics(db, tmp_path):
    stored = lance.dataset(f"{db}/layers.lance").to_table().to_pandas()
    table = lance.dataset(f"{db}/layers.lance").to_table()
    for name in QUALITY_COLUMNS:  # wipe the metrics, as in a DB extracted before they existed
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pa.nulls(table.num_rows, pa.float64()))
    lance.write_dataset(table, f"{db}/layers.lance", mode="overwrite")
    assert backfill_metrics(db) == 3
    again = lance.dataset(f"{db}/layers.lance").to_table().to_pandas()
    key = ["model_id", "layer_index"]
    stored, again = stored.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    for name in QUALITY_COLUMNS:
        assert np.allclose(again[name], stored[name], rtol=1e-6, equal_nan=True), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")
def test_backfill_on_cuda_gives_the_cpu_metrics(db):
    cpu = lance.dataset(f"{db}/layers.lance").to_table().to_pandas()
    assert backfill_metrics(db, device="cuda") == 3
    cuda = lance.dataset(f"{db}/layers.lance").to_table().to_pandas()
    key = ["model_id", "layer_index"]
    cpu, cuda = cpu.sort_values(key).reset_index(drop=True), cuda.sort_values(key).reset_index(drop=True)
    for name in QUALITY_COLUMNS:
        assert np.allclose(cuda[name], cpu[name], rtol=1e-5, atol=1e-6, equal_nan=True), name


def test_cli_json_and_file_outputs(db, tmp_path, capsys):
    assert main(["quality", "--db", db, "--format", "json", "--out", str(tmp_path / "q.parquet")]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert {m["model_id"] for m in report["models"]} == {"trained", "sparse", "random"}
    assert report["layers"]["sparse"][0]["model_id"] == "sparse"
    assert pd.read_parquet(tmp_path / "q.parquet").shape[0] == 3
    assert f"to {tmp_path / 'q.parquet'}" in captured.err
