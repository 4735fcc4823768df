"""`filterdb extract`: whole models stored bit-exactly, bad ones recorded as failed, re-runs idempotent."""

import os

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from flows.cli import main
from flows.extract import extract_catalog_local
from ops.catalog import write_catalog
from ops.model_rows import filters_table
from ops.layers import ConvLayer, ModelLayers
from ops.store import FILTERS_SCHEMA
from ops.store import MODELS_SCHEMA, FilterDB


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, groups=6), nn.Conv2d(6, 3, 1), nn.ConvTranspose2d(3, 2, 3))


def meta(i):
    return {"family": "small", "task": "classification", "train_dataset": f"set{i % 2}", "visual_category": "natural"}


@pytest.fixture
def catalog(tmp_path):
    """Three good models in three formats."""
    rows = []
    for i, (fmt, name) in enumerate([("checkpoint", "a.pt"), ("safetensors", "b.safetensors"), ("torchscript", "c_ts.pt")]):
        net = small_net(i)
        if fmt == "checkpoint":
            torch.save(net.state_dict(), tmp_path / name)
        elif fmt == "safetensors":
            save_file(net.state_dict(), tmp_path / name)
        else:
            torch.jit.trace(net, torch.randn(1, 1, 12, 12)).save(tmp_path / name)
        rows.append({"model_id": f"m{i}", "source": fmt, "uri": name, "input_size": "1x12x12", "lab": f"lab{i}", **meta(i)})
    write_catalog(rows, tmp_path / "catalog.csv")
    return tmp_path / "catalog.csv"


def table(db, name, **kwargs):
    return lance.dataset(f"{db}/{name}.lance").to_table(**kwargs)


def test_stored_weights_are_bit_exact_with_meta_on_every_row(catalog, tmp_path):
    summary = extract_catalog_local(str(catalog), str(tmp_path / "db"), progress=False)
    assert sorted(summary.stored) == ["m0", "m1", "m2"] and not summary.failed
    filters = table(tmp_path / "db", "filters", filter="model_id = 'm0'")
    assert filters.schema.field("weights").type == pa.list_(pa.float32(), 9)
    state = small_net(0).state_dict()
    convs = [k for k, v in state.items() if k.endswith("weight") and v.dim() == 4 and v.shape[2:] == (3, 3)]
    expected = np.concatenate([state[k].numpy().reshape(-1, 9) for k in convs])
    stored = np.stack(filters.column("weights").to_numpy(zero_copy_only=False))
    assert np.array_equal(stored.view(np.uint32), expected.view(np.uint32))
    assert set(filters.column("train_dataset").to_pylist()) == {"set0"}
    models = table(tmp_path / "db", "models").to_pylist()
    assert {m["model_id"]: m["lab"] for m in models} == {"m0": "lab0", "m1": "lab1", "m2": "lab2"}
    assert all(m["n_filters_3x3"] == sum(r["model_id"] == m["model_id"] for r in table(
        tmp_path / "db", "filters", columns=["model_id"]).to_pylist()) for m in models)


def test_torchscript_model_gets_graph_depth_and_kinds(catalog, tmp_path):
    extract_catalog_local(str(catalog), str(tmp_path / "db"), progress=False)
    layers = table(tmp_path / "db", "layers", filter="model_id = 'm2'").to_pylist()
    assert [l["kind"] for l in layers] == ["conv", "grouped", "depthwise", "conv", "transposed"]
    assert [l["conv_depth"] for l in layers] == [0, 1, 2, 3, 4]
    assert [l["conv_depth_norm"] for l in layers] == [0, 0.25, 0.5, 0.75, 1.0]
    assert {l["depth_method"] for l in layers} == {"graph"}
    assert layers[0]["sparsity"] is not None and layers[3]["sparsity"] is None  # metrics for 3x3 only


def test_transposed_filters_index_input_and_output_channels():
    weight = np.arange(3 * 2 * 9, dtype=np.float32).reshape(3, 2, 3, 3)  # (in, out, 3, 3)
    model = ModelLayers([ConvLayer("up", weight, 3, 2, 1, transposed=True)], "graph")
    rows = filters_table("t", model, {}).to_pylist()
    assert len(rows) == 6
    second = rows[1]
    assert (second["in_index"], second["out_index"]) == (0, 1)
    assert second["weights"] == weight[0, 1].reshape(-1).tolist()
    assert filters_table("t", model, {}).schema == FILTERS_SCHEMA


def bad_files(tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"this is not a checkpoint")
    torch.save({"fc.weight": torch.randn(3, 4)}, tmp_path / "noconv.pt")
    nan_state = small_net(5).state_dict()
    nan_state["2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan_state, tmp_path / "nan.pt")
    torch.save({"model": small_net(6)}, tmp_path / "pickled.pt")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    return [
        {"model_id": "corrupt", "source": "checkpoint", "uri": "corrupt.pt"},
        {"model_id": "noconv", "source": "checkpoint", "uri": "noconv.pt"},
        {"model_id": "nan", "source": "checkpoint", "uri": "nan.pt"},
        {"model_id": "pickled", "source": "checkpoint", "uri": "pickled.pt"},
        {"model_id": "broken", "source": "onnx", "uri": "broken.onnx"},
    ]


def test_bad_models_are_recorded_failed_and_earlier_models_stay_intact(catalog, tmp_path):
    db = str(tmp_path / "db")
    extract_catalog_local(str(catalog), db, progress=False)
    before = table(db, "filters").sort_by([("model_id", "ascending"), ("layer_index", "ascending")])
    write_catalog(bad_files(tmp_path), tmp_path / "bad.csv")
    summary = extract_catalog_local(str(tmp_path / "bad.csv"), db, progress=False)
    assert set(summary.failed) == {"corrupt", "noconv", "nan", "pickled", "broken"}
    errors = {m["model_id"]: m["error"] for m in table(db, "models").to_pylist() if m["status"] == "failed"}
    assert "no 2-D convolution layers" in errors["noconv"]
    assert "layer 1 (2): 1 NaN/Inf weight values" in errors["nan"]
    assert "--trust-pickles" in errors["pickled"]
    assert "not a readable ONNX model" in errors["broken"]
    assert all(e.startswith(f"model {m!r}") for m, e in errors.items())
    after = table(db, "filters").sort_by([("model_id", "ascending"), ("layer_index", "ascending")])
    assert after.equals(before)
    assert set(table(db, "layers", columns=["model_id"]).column("model_id").to_pylist()) == {"m0", "m1", "m2"}


def test_cli_exits_non_zero_with_failures_and_retries_them(catalog, tmp_path, capsys, ray_session):
    write_catalog(bad_files(tmp_path)[:1], tmp_path / "bad.csv")
    db = str(tmp_path / "db")
    assert main(["extract", str(tmp_path / "bad.csv"), "--db", db]) == 1
    assert "corrupt" in capsys.readouterr().err
    torch.save(small_net(1).state_dict(), tmp_path / "corrupt.pt")  # fixed file: the re-run retries it
    assert main(["extract", str(tmp_path / "bad.csv"), "--db", db]) == 0
    assert table(db, "models").to_pylist()[0]["status"] == "ok"
    assert table(db, "models").num_rows == 1


def test_rerun_skips_unchanged_and_force_replaces_without_duplicates(catalog, tmp_path):
    db = str(tmp_path / "db")
    extract_catalog_local(str(catalog), db, progress=False)
    counts = {name: table(db, name).num_rows for name in ("models", "layers", "filters")}
    assert extract_catalog_local(str(catalog), db, progress=False).skipped == ["m0", "m1", "m2"]
    os.utime(tmp_path / "a.pt")  # touched, same weights: loaded, digest equal, not rewritten
    again = extract_catalog_local(str(catalog), db, progress=False)
    assert sorted(again.skipped) == ["m0", "m1", "m2"] and not again.stored
    forced = extract_catalog_local(str(catalog), db, force=True, progress=False)
    assert sorted(forced.stored) == ["m0", "m1", "m2"]
    assert {name: table(db, name).num_rows for name in counts} == counts


def test_changed_weights_replace_the_old_rows(catalog, tmp_path):
    db = str(tmp_path / "db")
    extract_catalog_local(str(catalog), db, progress=False)
    old = table(db, "models", filter="model_id = 'm0'").to_pylist()[0]["weights_digest"]
    torch.save(small_net(9).state_dict(), tmp_path / "a.pt")
    assert extract_catalog_local(str(catalog), db, progress=False).stored == ["m0"]
    rows = table(db, "models", filter="model_id = 'm0'").to_pylist()
    assert len(rows) == 1 and rows[0]["weights_digest"] != old
    first = table(db, "filters", filter="model_id = 'm0' AND layer_index = 0").column("weights").to_pylist()[0]
    assert first == small_net(9).state_dict()["0.weight"][0, 0].reshape(-1).tolist()


def test_recover_removes_rows_of_models_without_a_models_row(catalog, tmp_path):
    db = FilterDB(tmp_path / "db")
    extract_catalog_local(str(catalog), db.path, progress=False)
    model = ModelLayers([ConvLayer("x", np.ones((2, 2, 3, 3), np.float32), 2, 2, 1)], "graph")
    db.append("filters", filters_table("half", model, {}))  # a run that died before its models row
    assert db.recover() == ["half"]
    assert "half" not in set(table(db.path, "filters", columns=["model_id"]).column("model_id").to_pylist())
    assert db.recover() == []


def test_depth_fallback_is_explained_on_the_models_row(tmp_path):
    torch.jit.trace(small_net(0), torch.randn(1, 1, 12, 12)).save(tmp_path / "ts.pt")
    rows = [{"model_id": "ts", "source": "torchscript", "uri": "ts.pt", "input_size": "3x12x12"}]  # wrong channels
    write_catalog(rows, tmp_path / "c.csv")
    extract_catalog_local(str(tmp_path / "c.csv"), str(tmp_path / "db"), progress=False)
    row = table(tmp_path / "db", "models").to_pylist()[0]
    assert row["status"] == "ok" and row["depth_method"] == "declaration_order"
    assert "forward pass on input (3, 12, 12) failed" in row["notes"]


def test_models_table_of_an_older_db_gains_new_columns(catalog, tmp_path):
    db = FilterDB(tmp_path / "db")
    old_schema = pa.schema([f for f in MODELS_SCHEMA if f.name != "notes"])
    old_row = {"model_id": "old", "status": "ok", "n_filters_3x3": 0, "n_conv_layers": 0}
    lance.write_dataset(pa.Table.from_pylist([old_row], schema=old_schema), db.uri("models"))
    extract_catalog_local(str(catalog), db.path, progress=False)
    models = table(db.path, "models")
    assert "notes" in models.column_names and "lab" in models.column_names
    assert models.num_rows == 4


def test_a_models_row_refuses_a_name_that_is_no_column_and_keeps_catalog_extras_apart():
    from ops.catalog import CatalogEntry
    from ops.model_rows import models_row

    entry = CatalogEntry("m", "timm", "resnet18", extra={"licence": "mit", "n_conv_layers": "many"})
    with pytest.raises(KeyError, match="not columns of models.lance: n_conv_layer"):
        models_row(entry, status="ok", n_conv_layer=3)
    row = models_row(entry, status="ok", n_conv_layers=3)
    assert (row["licence"], row["n_conv_layers"]) == ("mit", 3)  # a catalog value never overrides a schema column
