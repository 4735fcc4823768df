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

from flows.extract import extract_catalog, extract_catalog_local
from ops.catalog import write_catalog
from ops.store import QUALITY_COLUMNS
from ops.store import FilterDB

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


def test_model_lost_with_its_worker_is_recorded_failed_and_retried(ray_session, timm_catalog, tmp_path, monkeypatch):
    """A block whose worker died on every retry never reports back: the driver records the model failed."""
    import flows.extract

    real_pipeline = flows.extract._pipeline

    def pipeline_losing_one_model(todo, *args):
        for written in real_pipeline(todo, *args):
            if written.row["model_id"] != "resnet18-s0":
                yield written

    monkeypatch.setattr(flows.extract, "_pipeline", pipeline_losing_one_model)
    summary = extract_catalog(str(timm_catalog), str(tmp_path / "db"), actors=2, progress=False)
    assert list(summary.failed) == ["resnet18-s0"]
    assert "worker process died" in summary.failed["resnet18-s0"]
    assert len(summary.stored) == len(ARCHS) * 2 - 1
    monkeypatch.setattr(flows.extract, "_pipeline", real_pipeline)
    again = extract_catalog(str(timm_catalog), str(tmp_path / "db"), actors=2, progress=False)
    assert again.stored == ["resnet18-s0"] and not again.failed
