"""The Ray Data extract flow: same DB as the local loop, and whole models only after kills."""

import os
import signal
import subprocess
import sys
import threading
import time

import lance
import numpy as np
import psutil
import pytest
import torch

from flows.extract import extract_catalog, extract_catalog_local
from ops.catalog import write_catalog
from ops.store import QUALITY_COLUMNS
from ops.db import FilterDB

ARCHS = ["resnet18", "mobilenetv3_small_100", "regnetx_002", "resnet10t", "efficientnet_b0", "resnet14t"]


@pytest.fixture(scope="module")
def timm_catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalog")
    rows = [{"model_id": f"{arch}-s{seed}", "source": "timm", "uri": arch, "pretrained": "false", "seed": str(seed),
             "input_size": "3x64x64", "family": arch, "task": "untrained"} for seed in (0, 1) for arch in ARCHS]
    write_catalog(rows, folder / "catalog.csv")
    return folder / "catalog.csv"


@pytest.fixture(scope="module")
def clean_db(timm_catalog, tmp_path_factory):
    db = tmp_path_factory.mktemp("clean") / "db"
    extract_catalog_local(str(timm_catalog), str(db), progress=False)
    return db


def fingerprint(db) -> dict:
    """Row counts, per-model filter counts and the number of distinct filter keys."""
    filters = lance.dataset(f"{db}/filters.lance").to_table(columns=["model_id", "layer_index", "out_index", "in_index"])
    keys = set(zip(*(filters.column(c).to_pylist() for c in filters.column_names)))
    per_model = filters.group_by("model_id").aggregate([("layer_index", "count")]).to_pylist()
    models = lance.dataset(f"{db}/models.lance").to_table(columns=["model_id", "status", "weights_digest"])
    return {
        "filters": filters.num_rows,
        "distinct_filters": len(keys),
        "layers": lance.dataset(f"{db}/layers.lance").count_rows(),
        "per_model": {r["model_id"]: r["layer_index_count"] for r in per_model},
        "models": sorted(zip(*(models.column(c).to_pylist() for c in models.column_names))),
    }


def test_ray_flow_builds_the_same_db_as_the_local_loop(ray_session, timm_catalog, clean_db, tmp_path):
    summary = extract_catalog(str(timm_catalog), str(tmp_path / "db"), actors=2, commit_every_s=1, progress=False)
    assert not summary.failed and len(summary.stored) == len(ARCHS) * 2
    assert fingerprint(tmp_path / "db") == fingerprint(clean_db)
    layers = FilterDB(tmp_path / "db").dataset("layers").to_table(filter="model_id = 'resnet18-s0'").sort_by("layer_index")
    clean = FilterDB(clean_db).dataset("layers").to_table(filter="model_id = 'resnet18-s0'").sort_by("layer_index")
    facts = [c for c in clean.column_names if c not in QUALITY_COLUMNS]
    assert layers.select(facts).equals(clean.select(facts))
    for column in QUALITY_COLUMNS:  # summation order differs with the thread count: float rounding only
        assert np.allclose(layers.column(column).to_numpy(), clean.column(column).to_numpy(), rtol=1e-6, equal_nan=True)


def extract_processes():
    return [p for p in psutil.process_iter(["cmdline"]) if "ExtractModels" in " ".join(p.info["cmdline"] or [])]


def test_killed_worker_then_rerun_stores_every_model_once(ray_session, timm_catalog, clean_db, tmp_path):
    db = tmp_path / "db"
    killed = []

    def kill_a_worker_once_models_are_stored():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            stored = FilterDB(db).dataset("models")
            workers = extract_processes()
            if stored is not None and stored.count_rows() >= 2 and workers:
                workers[0].send_signal(signal.SIGKILL)
                killed.append(workers[0].pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker_once_models_are_stored)
    killer.start()
    extract_catalog(str(timm_catalog), str(db), actors=2, commit_every_s=0, progress=False)
    killer.join()
    assert killed, "no worker was killed: the test did not exercise a crash"
    extract_catalog(str(timm_catalog), str(db), actors=2, commit_every_s=0, progress=False)
    assert fingerprint(db) == fingerprint(clean_db)


def test_killed_driver_then_rerun_stores_every_model_once(ray_session, timm_catalog, clean_db, tmp_path):
    db = tmp_path / "db"
    address = ray_session.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "flows.cli", "extract", str(timm_catalog), "--db", str(db),
               "--address", address, "--actors", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 180
    while time.time() < deadline and driver.poll() is None:
        stored = FilterDB(db).dataset("models")
        if stored is not None and stored.count_rows() >= 1:
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the driver finished before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    partial = FilterDB(db).dataset("models").count_rows()
    assert 1 <= partial < len(ARCHS) * 2
    summary = extract_catalog(str(timm_catalog), str(db), actors=2, progress=False)
    assert len(summary.skipped) == partial
    assert fingerprint(db) == fingerprint(clean_db)


class ExitsWhenUnpickled:
    """Unpickles to a call of os._exit: loading a checkpoint of it ends the process that loads it."""

    def __reduce__(self):
        return os._exit, (3,)


def test_model_whose_worker_dies_twice_is_recorded_failed_and_the_run_goes_on(ray_session, tmp_path):
    """A real actor process exits while loading one model, on both tries: that model is recorded
    failed, the others are stored, and a re-run with a sound file stores it.

    The crashing file is the test's own pickle, loaded through `--trust-pickles` (the only path that
    runs a file's pickled code). Without `max_task_retries=1` Ray retries the model forever and the
    run hits the timeout; without `max_errored_blocks=-1` the lost block ends the whole run."""
    crashing = tmp_path / "crashing.pt"
    torch.save({"conv.weight": ExitsWhenUnpickled()}, crashing)
    rows = [{"model_id": "crashes", "source": "checkpoint", "uri": str(crashing)}]
    rows += [{"model_id": arch, "source": "timm", "uri": arch, "pretrained": "false", "input_size": "3x64x64"}
             for arch in ("resnet10t", "mobilenetv3_small_100")]
    write_catalog(rows, tmp_path / "catalog.csv")
    db = tmp_path / "db"
    command = [sys.executable, "-m", "flows.cli", "extract", str(tmp_path / "catalog.csv"), "--db", str(db),
               "--address", ray_session.get_runtime_context().gcs_address, "--actors", "2", "--trust-pickles"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=150,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1, run.stderr[-2000:]
    models = {r["model_id"]: r for r in FilterDB(db).dataset("models").to_table().to_pylist()}
    assert {m: r["status"] for m, r in models.items()} == {"crashes": "failed", "resnet10t": "ok",
                                                           "mobilenetv3_small_100": "ok"}
    assert "its worker process died while extracting it" in models["crashes"]["error"]

    torch.save({"conv.weight": torch.randn(8, 3, 3, 3)}, crashing)
    again = extract_catalog(str(tmp_path / "catalog.csv"), str(db), actors=2, progress=False)
    assert again.stored == ["crashes"] and sorted(again.skipped) == ["mobilenetv3_small_100", "resnet10t"]


def test_a_failed_graph_pass_is_recorded_on_the_models_row_and_counted_in_the_summary(tmp_path):
    rows = [{"model_id": "wrong-channels", "source": "timm", "uri": "resnet10t", "pretrained": "false",
             "input_size": "1x64x64"},  # resnet10t takes 3 channels: its dummy forward pass fails
            {"model_id": "sound", "source": "timm", "uri": "resnet10t", "pretrained": "false", "input_size": "3x64x64"}]
    write_catalog(rows, tmp_path / "catalog.csv")
    summary = extract_catalog_local(str(tmp_path / "catalog.csv"), str(tmp_path / "db"), progress=False)
    assert sorted(summary.stored) == ["sound", "wrong-channels"] and list(summary.graph_pass_failed) == ["wrong-channels"]
    models = {r["model_id"]: r for r in FilterDB(tmp_path / "db").dataset("models").to_table().to_pylist()}
    assert models["wrong-channels"]["depth_method"] == "declaration_order"
    assert "graph pass failed: forward pass on input (1, 64, 64) failed" in models["wrong-channels"]["notes"]
    assert summary.graph_pass_failed["wrong-channels"] == models["wrong-channels"]["notes"]
    assert models["sound"]["depth_method"] == "graph" and models["sound"]["notes"] is None


# The GPU paths: run only where a CUDA device is present.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")


@needs_cuda
def test_gpu_actors_build_the_db_of_the_cpu_loop(ray_session, timm_catalog, clean_db, tmp_path):
    assert ray_session.cluster_resources().get("GPU", 0) >= 1, "Ray sees no GPU although torch does"
    summary = extract_catalog(str(timm_catalog), str(tmp_path / "db"), actors=1, gpus_per_actor=1, progress=False)
    assert not summary.failed and not summary.graph_pass_failed
    assert fingerprint(tmp_path / "db") == fingerprint(clean_db)
    devices = set(FilterDB(tmp_path / "db").dataset("models").to_table(columns=["device"]).column("device").to_pylist())
    assert devices == {"cuda"}
    layers = FilterDB(tmp_path / "db").dataset("layers").to_table().sort_by([("model_id", "ascending"), ("layer_index", "ascending")])
    clean = FilterDB(clean_db).dataset("layers").to_table().sort_by([("model_id", "ascending"), ("layer_index", "ascending")])
    facts = [c for c in clean.column_names if c not in QUALITY_COLUMNS]
    assert layers.select(facts).equals(clean.select(facts))
    for column in QUALITY_COLUMNS:  # float64 on CUDA against float32 chunks summed in float64 on CPU
        assert np.allclose(layers.column(column).to_numpy(), clean.column(column).to_numpy(), rtol=0, atol=1e-6, equal_nan=True)


class FailsOnCuda(torch.nn.Module):
    """Two convolutions in a row whose forward pass raises on a CUDA input."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3)

    def forward(self, x):
        if x.is_cuda:
            raise RuntimeError("no CUDA kernel for this op")
        return self.second(self.first(x))


@needs_cuda
def test_a_graph_pass_failing_on_cuda_is_rerun_on_the_cpu_and_recorded():
    from ops.torch_graph import GRAPH_PASS_FAILED, graph_pass_failure, module_convolutions

    layers = module_convolutions(FailsOnCuda(), (1, 8, 8), device="cuda")
    assert layers.depth_method == "graph" and [l.conv_depth for l in layers.layers] == [0, 1]
    assert layers.notes[0].startswith(f"{GRAPH_PASS_FAILED} on cuda: forward pass on input (1, 8, 8) failed")
    assert graph_pass_failure("; ".join(layers.notes)) is not None
