"""Bad, hostile and unusual inputs: each gets one clear message, and no stored model is touched.

Every case runs `filterdb extract` on a DB that already holds one good model, then checks the
message (on stderr, or in the failed model's `error`) and that the good model's rows are exactly as
before. Refused catalogs (exit status 2) leave every table at its version.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from flows.cli import main
from ops.catalog import CatalogEntry

REPO = Path(__file__).resolve().parents[1]
TABLES = ("models", "layers", "filters")


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))


def write_catalog(folder: Path, rows: list[str], name: str = "catalog.csv") -> Path:
    path = folder / name
    path.write_text("model_id,source,uri\n" + "".join(f"{row}\n" for row in rows))
    return path


def extract(catalog: Path, db: Path, *options: str) -> int:
    return main(["extract", str(catalog), "--db", str(db), "--local", *options])


def versions(db: Path) -> dict:
    return {t: lance.dataset(str(db / f"{t}.lance")).version for t in TABLES}


def complete_models(db: Path) -> dict:
    """model_id -> its ok models row (without timing columns) and all its layers and filters rows."""
    tables = {t: lance.dataset(str(db / f"{t}.lance")).to_table() for t in TABLES}
    models = tables["models"].filter(pa.compute.equal(tables["models"]["status"], "ok")).to_pylist()
    result = {}
    for row in models:
        model_id = row["model_id"]
        rows = {t: tables[t].filter(pa.compute.equal(tables[t]["model_id"], model_id)).to_pylist() for t in ("layers", "filters")}
        result[model_id] = ({k: v for k, v in row.items() if k not in ("extracted_at", "load_seconds", "extract_seconds")}, rows)
    return result


def model_ids(db: Path, table: str) -> set:
    return set(lance.dataset(str(db / f"{table}.lance")).to_table(columns=["model_id"]).column("model_id").to_pylist())


def failed_error(db: Path, model_id: str) -> str:
    rows = lance.dataset(str(db / "models.lance")).to_table().to_pylist()
    (row,) = [r for r in rows if r["model_id"] == model_id]
    assert row["status"] == "failed"
    return row["error"]


@pytest.fixture
def stored(tmp_path):
    """A DB holding one good model `good`; yields (folder, db path, the good model's stored content)."""
    torch.save(small_model(0).state_dict(), tmp_path / "good.pt")
    db = tmp_path / "db"
    assert extract(write_catalog(tmp_path, ["good,checkpoint,good.pt"], "good.csv"), db) == 0
    return tmp_path, db, complete_models(db)


def run_bad(stored, rows: list[str], *options: str) -> int:
    folder, db, _ = stored
    return extract(write_catalog(folder, ["good,checkpoint,good.pt", *rows]), db, *options)


# --- files: empty, mislabelled, truncated, hostile, huge header --------------------------------


def test_empty_file_is_refused_before_any_work(stored, capsys):
    folder, db, before = stored
    (folder / "empty.pt").write_bytes(b"")
    old = versions(db)
    assert run_bad(stored, ["bad,checkpoint,empty.pt"]) == 2
    assert "row 2: column 'uri': file" in capsys.readouterr().err
    assert versions(db) == old and complete_models(db) == before


def test_empty_onnx_is_called_empty_not_a_model_without_convolutions(stored, capsys):
    folder, db, before = stored
    (folder / "empty.onnx").write_bytes(b"")
    assert run_bad(stored, ["bad,onnx,empty.onnx"]) == 2
    err = capsys.readouterr().err
    assert "empty.onnx is empty (0 bytes)" in err and "no 2-D convolution" not in err


@pytest.mark.parametrize("source", ["checkpoint", "safetensors", "torchscript"])
def test_onnx_file_under_another_source_is_named_and_the_source_to_use_given(stored, capsys, source):
    folder, db, before = stored
    torch.onnx.export(small_model(1), (torch.randn(1, 1, 8, 8),), folder / "model.pt", dynamo=False)
    old = versions(db)
    assert run_bad(stored, [f"bad,{source},model.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("filterdb extract: catalog")
    assert "model.pt looks like an ONNX model" in err and "use source 'onnx'" in err
    assert "--trust-pickles" not in err
    assert versions(db) == old and complete_models(db) == before


def test_torchscript_and_safetensors_files_under_checkpoint_are_named(stored, capsys):
    from safetensors.torch import save_file

    folder, db, before = stored
    model = small_model(2)
    torch.jit.trace(model, torch.randn(1, 1, 8, 8)).save(folder / "ts.pt")
    save_file(model.state_dict(), folder / "w.pt")
    assert run_bad(stored, ["ts,checkpoint,ts.pt", "st,checkpoint,w.pt"]) == 2
    err = capsys.readouterr().err
    assert "ts.pt looks like a TorchScript archive (torch.jit.save), not a torch.save checkpoint" in err
    assert "use source 'torchscript'" in err and "use source 'safetensors'" in err
    assert complete_models(db) == before


@pytest.mark.parametrize(
    "source, save, message",
    [
        ("checkpoint", lambda m, p: torch.save(m.state_dict(), p), "truncated or damaged"),
        ("checkpoint", lambda m, p: torch.save(m.state_dict(), p, _use_new_zipfile_serialization=False), "ends early or is damaged"),
        ("torchscript", lambda m, p: torch.jit.trace(m, torch.randn(1, 1, 8, 8)).save(p), "truncated or damaged"),
        ("onnx", lambda m, p: torch.onnx.export(m, (torch.randn(1, 1, 8, 8),), p, dynamo=False), "not a readable ONNX model"),
        ("safetensors", lambda m, p: __import__("safetensors.torch").torch.save_file(m.state_dict(), p), "truncated"),
    ],
)
def test_truncated_file_fails_that_model_saying_so(stored, source, save, message):
    folder, db, before = stored
    path = folder / f"whole.{source}"
    save(small_model(3), path)
    data = path.read_bytes()
    (folder / "cut").write_bytes(data[: len(data) // 2])
    assert run_bad(stored, [f"cut,{source},cut"]) == 1
    error = failed_error(db, "cut")
    assert message in error and "EOFError" not in error
    assert complete_models(db) == before
    assert model_ids(db, "filters") == model_ids(db, "layers") == {"good"}


def test_hostile_pickle_is_never_run(stored):
    folder, db, before = stored
    marker = folder / "pwned"

    class Hostile:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": small_model(4).state_dict(), "payload": Hostile()}, folder / "hostile.pt")
    assert run_bad(stored, ["hostile,checkpoint,hostile.pt"]) == 1
    assert not marker.exists()
    assert "--trust-pickles" in failed_error(db, "hostile")
    assert complete_models(db) == before


def test_safetensors_header_claiming_a_terabyte_fails_fast(stored):
    folder, db, before = stored
    (folder / "huge.safetensors").write_bytes((10**12).to_bytes(8, "little") + b'{"a": 1}')
    started = time.perf_counter()
    assert run_bad(stored, ["huge,safetensors,huge.safetensors"]) == 1
    assert time.perf_counter() - started < 30
    assert "its header claims 1000000000000 bytes but the file has 16" in failed_error(db, "huge")
    assert complete_models(db) == before


# --- catalogs ----------------------------------------------------------------------------------


def test_catalog_exported_from_a_db_with_colliding_columns_is_refused(stored, capsys):
    folder, db, before = stored
    catalog = folder / "exported.csv"
    catalog.write_text("model_id,source,uri,n_conv_layers,load_seconds,lab\n"
                       "good,checkpoint,good.pt,2,0.1,x\nother,checkpoint,good.pt,many,slow,y\n")
    old = versions(db)
    assert extract(catalog, db) == 2
    err = capsys.readouterr().err
    assert "column 'n_conv_layers': filterdb writes the column 'n_conv_layers' of models.lance itself" in err
    assert "column 'load_seconds'" in err
    assert versions(db) == old and complete_models(db) == before


def test_catalog_with_byte_order_mark_and_windows_line_ends_extracts(stored):
    folder, db, before = stored
    torch.save(small_model(5).state_dict(), folder / "other.pt")
    text = "model_id , source , uri\r\ngood,checkpoint,good.pt\r\nother,checkpoint,other.pt\r\n"
    (folder / "bom.csv").write_bytes(text.encode("utf-8-sig"))
    assert extract(folder / "bom.csv", db) == 0
    after = complete_models(db)
    assert set(after) == {"good", "other"} and after["good"] == before["good"]


HOSTILE_IDS = ["a'); DELETE FROM models; --", "../../outside", 'quo"te', "spa ce", "naïve-模型", "%_wild*"]


def test_hostile_model_ids_are_stored_and_found_as_given(stored):
    folder, db, before = stored
    catalog = folder / "ids.yaml"
    catalog.write_text("models:\n" + "".join(f"  - {{model_id: {m!r}, source: checkpoint, uri: good.pt}}\n"
                                              for m in ["good", *HOSTILE_IDS]).replace("\\'", "''"))
    assert extract(catalog, db) == 0
    after = complete_models(db)
    assert set(after) == {"good", *HOSTILE_IDS}
    assert after["good"] == before["good"]
    assert all(len(after[m][1]["filters"]) == len(before["good"][1]["filters"]) for m in HOSTILE_IDS)
    assert not (folder.parent / "outside").exists()
    written_at = lance.dataset(str(db / "models.lance")).to_table(columns=["model_id", "extracted_at"]).to_pylist()
    assert extract(catalog, db) == 0  # every id is found again as stored unchanged: nothing re-extracted
    assert complete_models(db) == after
    assert lance.dataset(str(db / "models.lance")).to_table(columns=["model_id", "extracted_at"]).to_pylist() == written_at


# --- models rows that do not fit the schema ----------------------------------------------------


def test_models_row_that_does_not_fit_the_schema_fails_that_model_before_anything_is_stored(tmp_path):
    from ops.extraction import extract_model
    from ops.store import MODELS_SCHEMA

    torch.save(small_model(6).state_dict(), tmp_path / "m.pt")
    entry = CatalogEntry("m", "checkpoint", str(tmp_path / "m.pt"), seed=2**70)  # not via a catalog: unchecked
    result = extract_model(entry)
    assert not result.ok and result.filters is None and result.layers is None
    assert "column 'seed': 1180591620717411303424 does not fit models.lance's type int64" in result.row["error"]
    assert result.row["seed"] is None
    pa.Table.from_pylist([{n: result.row.get(n) for n in MODELS_SCHEMA.names}], schema=MODELS_SCHEMA)  # the failed row stores


def test_extra_catalog_value_that_is_not_a_string_fails_that_model_with_a_storable_row(tmp_path):
    from ops.extraction import extract_model

    torch.save(small_model(6).state_dict(), tmp_path / "m.pt")
    entry = CatalogEntry("m", "checkpoint", str(tmp_path / "m.pt"), extra={"lab": 5})  # not via a catalog: unchecked
    result = extract_model(entry)
    assert not result.ok and result.filters is None
    assert "catalog column 'lab': 5 is not a string" in result.row["error"]
    assert result.row.extra == {"lab": None}


# --- quantized models --------------------------------------------------------------------------


def test_conv_integer_model_without_scale_is_stored_with_a_note(stored):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder, db, before = stored
    q = np.random.default_rng(1).integers(0, 256, (4, 2, 3, 3)).astype(np.uint8)
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4, 6, 6])
    node = helper.make_node("ConvInteger", ["x", "w_q", "", "w_zp"], ["y"], name="conv")
    inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(np.array(100, np.uint8), "w_zp")]
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, folder / "int.onnx")
    assert run_bad(stored, ["int,onnx,int.onnx"]) == 0
    after = complete_models(db)
    row, rows = after["int"]
    assert "ConvInteger without a weight scale" in row["notes"]
    stored_kernels = np.array([r["weights"] for r in sorted(rows["filters"], key=lambda r: (r["out_index"], r["in_index"]))])
    assert np.array_equal(stored_kernels, (q.astype(np.float32) - 100).reshape(-1, 9))
    assert after["good"] == before["good"]


# --- timm without a network --------------------------------------------------------------------


def test_pretrained_timm_without_network_fails_within_seconds_naming_weights_file(stored, monkeypatch):
    from huggingface_hub import constants

    from ops.sources import timm_models

    folder, db, before = stored
    monkeypatch.setattr(timm_models, "_hub_reachable", None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 sets it: no probe at all
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder / "empty_cache"))  # nothing cached
    monkeypatch.setattr(timm_models.socket, "create_connection", lambda *a, **k: pytest.fail("probed although offline"))
    catalog = folder / "timm.csv"
    catalog.write_text("model_id,source,uri,pretrained\ngood,checkpoint,good.pt,\n"
                       "t1,timm,test_resnet,true\nt2,timm,test_efficientnet,true\n")
    started = time.perf_counter()
    assert extract(catalog, db) == 1
    assert time.perf_counter() - started < 30
    for model_id in ("t1", "t2"):
        error = failed_error(db, model_id)
        assert "no network: the Hugging Face hub is not reachable" in error and "weights_file" in error
    assert complete_models(db) == before


def test_the_hub_is_probed_at_most_once_per_process(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from ops.sources import load_layers, timm_models

    probes = []

    def unreachable(address, timeout):
        probes.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(timm_models, "_hub_reachable", None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(timm_models.socket, "create_connection", unreachable)
    for arch in ("test_resnet", "test_efficientnet"):
        with pytest.raises(ValueError, match="no network"):
            load_layers(CatalogEntry(arch, "timm", arch))
    assert len(probes) == 1 and probes[0][1] == 443


def test_a_ray_run_probes_the_hub_once_on_the_driver_and_its_actors_take_the_answer(ray_session, monkeypatch, tmp_path):
    import flows.extract
    from flows.extract import extract_catalog

    probes = []
    monkeypatch.setattr(flows.extract, "hub_reachable", lambda: probes.append(1) or False)
    catalog = tmp_path / "timm.csv"
    catalog.write_text("model_id,source,uri,pretrained\n" + "".join(f"t{i},timm,test_resnet,true\n" for i in range(3)))
    summary = extract_catalog(str(catalog), str(tmp_path / "db"), progress=False)
    assert probes == [1]
    assert sorted(summary.failed) == ["t0", "t1", "t2"]
    assert all("no network" in error for error in summary.failed.values())


# --- Ray addresses -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_ray_address_fails_within_seconds_naming_it(stored):
    folder, db, before = stored
    torch.save(small_model(7).state_dict(), folder / "other.pt")
    catalog = write_catalog(folder, ["good,checkpoint,good.pt", "other,checkpoint,other.pt"])
    address = f"127.0.0.1:{free_port()}"
    old = versions(db)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "extract", str(catalog), "--db", str(db), "--address", address],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert time.perf_counter() - started < 60
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"filterdb extract: no Ray cluster reachable at {address}" in done.stderr
    assert "Failed to connect to GCS" not in done.stderr
    assert versions(db) == old and complete_models(db) == before


def test_without_an_address_a_stale_ray_address_file_is_ignored():
    """Ray's own default (address=None) would join the cluster its address file names; filterdb
    starts a local Ray instead. The address file lives in a private RAY_TMPDIR, so no other Ray on
    this machine is touched."""
    with tempfile.TemporaryDirectory(prefix="fdb", dir="/tmp") as ray_tmp:  # short: Ray's socket paths
        stale = f"127.0.0.1:{free_port()}"
        os.makedirs(f"{ray_tmp}/ray")
        Path(f"{ray_tmp}/ray/ray_current_cluster").write_text(stale)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
        script = ("import ray; from flows.ray_runtime import ensure_ray; ensure_ray(num_cpus=1); "
                  "print('GCS', ray.get_runtime_context().gcs_address); ray.shutdown()")
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    gcs = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("GCS"))
    assert gcs.rsplit(":", 1)[1] != stale.rsplit(":", 1)[1]
