"""A DB on object storage, end to end, against a real S3 API (moto's server, started here on loopback):
extract, quality, shifts and queries on `s3://bucket/...` with the credentials and the endpoint
from the environment (the commands) or from storage options (`open_db`); a driver killed with
SIGKILL mid-extraction, then a re-run, leaves every model stored once and nothing half-written
visible at any point."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from ops.catalog import write_catalog
from ops.db import open_db
from ops.store import model_key

SMALL = ["mobilenetv3_small_050", "lcnet_050", "regnetx_002"]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with a bucket; the AWS variables for the commands and the
    equivalent storage options for open_db."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bucket")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))},
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true", "HF_HUB_OFFLINE": "1"}
    options = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1",
               "aws_endpoint": endpoint, "allow_http": "true"}
    yield {"env": env, "options": options}
    server.stop()


def catalog(folder, models: list[tuple[str, int]]) -> tuple[str, list[str]]:
    """A catalog of random-initialised timm models, one row per (architecture, seed)."""
    rows = [{"model_id": f"{arch}-s{seed}", "source": "timm", "uri": arch, "pretrained": "false", "seed": str(seed),
             "input_size": "3x32x32", "family": arch.split("_")[0].rstrip("0123456789"), "task": "untrained"}
            for arch, seed in models]
    write_catalog(rows, folder / "catalog.csv")
    return str(folder / "catalog.csv"), [r["model_id"] for r in rows]


def filterdb(args, s3, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=s3["env"], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def visible_models_are_whole(db) -> dict[str, int]:
    """Every visible filter row belongs to an ok model, and each ok model shows all its filters;
    returns model_id -> filters."""
    ok = db.models(where="status = 'ok'", columns=["model_id", "n_filters_3x3"], as_="arrow").to_pylist()
    expected = {r["model_id"]: r["n_filters_3x3"] for r in ok}
    visible = db.filters(columns=["model_id"], as_="arrow").group_by("model_id").aggregate([("model_id", "count")])
    assert dict(zip(visible.column("model_id").to_pylist(), visible.column("model_id_count").to_pylist())) == {
        m: n for m, n in expected.items() if n}
    return expected


@pytest.fixture(scope="module")
def s3_db(s3, tmp_path_factory):
    """A DB at s3://bucket/flows extracted by `filterdb extract --local` with the credentials and the
    endpoint from the environment: (its URI, model_id -> filters, the commands' working folder)."""
    folder = tmp_path_factory.mktemp("s3_flows")
    catalog_file, model_ids = catalog(folder, [(arch, seed) for seed in (0, 1) for arch in SMALL])
    db_uri = "s3://bucket/flows"
    extract = filterdb(["extract", catalog_file, "--db", db_uri, "--local"], s3, folder)
    assert extract.returncode == 0, extract.stderr[-2000:]
    db = open_db(db_uri, storage_options=s3["options"])  # credentials and endpoint as storage options
    assert sorted(db.models(columns=["model_id"], as_="arrow").column("model_id").to_pylist()) == sorted(model_ids)
    return db_uri, visible_models_are_whole(db), folder


def no_local_copy(folder) -> bool:
    """Nothing named like the URI was written to the working folder (`s3:/bucket/...` by pathlib)."""
    return not [p.name for p in folder.iterdir() if p.name.startswith("s3")]


def test_quality_and_sql_read_a_db_on_s3(s3, s3_db):
    db_uri, filters, folder = s3_db
    quality = filterdb(["quality", "--db", db_uri, "--format", "json"], s3, folder)
    assert quality.returncode == 0, quality.stderr[-2000:]
    assert all(m in quality.stdout for m in filters)
    sql = filterdb(["sql", "--db", db_uri, "SELECT count(*) AS n FROM filters"], s3, folder)
    assert sql.returncode == 0, sql.stderr[-2000:]
    assert f"{sum(filters.values())}" in sql.stdout.replace(",", "")
    assert no_local_copy(folder)


def test_shift_analysis_reads_and_writes_a_db_on_s3(s3, s3_db):
    """Ray's read_lance of filters.lance on S3, and the analysis tables written next to it."""
    db_uri, filters, folder = s3_db
    shifts = filterdb(["shifts", "--db", db_uri, "--by", "family"], s3, folder)
    assert shifts.returncode == 0, shifts.stderr[-2000:]
    db = open_db(db_uri, storage_options=s3["options"])
    assert db.dataset("analysis/shifts") is not None
    assert no_local_copy(folder)


def test_killed_driver_then_rerun_on_s3_stores_every_model_once(s3, tmp_path):
    """The killed run is the single-process loop (no Ray to clean up after the kill); the re-run is
    the Ray flow, whose actors write the data files to S3."""
    # small models first, then one of 1.2 M filters, still in flight when the first ones show
    catalog_file, model_ids = catalog(tmp_path, [*[(arch, seed) for seed in (0, 1) for arch in SMALL], ("resnet18", 0)])
    db_uri = "s3://bucket/killed"
    driver = subprocess.Popen([sys.executable, "-m", "flows.cli", "extract", catalog_file, "--db", db_uri, "--local"],
                              env=s3["env"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    db = open_db(db_uri, storage_options=s3["options"], must_exist=False)
    while time.monotonic() < deadline and driver.poll() is None:
        if db.refresh().exists() and db.count_models("ok") >= 2:
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the driver finished before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    partial = visible_models_are_whole(db.refresh())
    assert 2 <= len(partial) < len(model_ids)

    rerun = filterdb(["extract", catalog_file, "--db", db_uri, "--actors", "2"], s3, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    db = db.refresh()
    models = db.models(columns=["model_id", "status"], as_="arrow").to_pylist()
    assert sorted(r["model_id"] for r in models) == sorted(model_ids)  # each once
    assert {r["status"] for r in models} == {"ok"}
    complete = visible_models_are_whole(db)
    keys = db.filters(columns=["model_id", "layer_index", "out_index", "in_index"], as_="arrow")
    assert keys.num_rows == sum(complete.values()) == db.latest_dataset("filters").count_rows()
    assert len(set(zip(*(keys.column(c).to_pylist() for c in keys.column_names)))) == keys.num_rows


def test_upgrade_adds_model_key_to_an_older_db_on_s3(s3, s3_db):
    """`filterdb upgrade` on an object store: Lance's add_columns writes the new column's files there."""
    import lance

    db_uri, filters, folder = s3_db
    source = open_db(db_uri, storage_options=s3["options"])
    old_uri = "s3://bucket/old"
    lance.write_dataset(source.dataset("filters").to_table().drop_columns(["model_key"]), f"{old_uri}/filters.lance", storage_options=s3["options"])
    lance.write_dataset(source.dataset("models").to_table(), f"{old_uri}/models.lance", storage_options=s3["options"])
    assert open_db(old_uri, storage_options=s3["options"]).missing_columns() == ["model_key"]
    upgrade = filterdb(["upgrade", "--db", old_uri], s3, folder)
    assert upgrade.returncode == 0 and "added filters.model_key" in upgrade.stdout, upgrade.stderr[-2000:]
    upgraded = open_db(old_uri, storage_options=s3["options"]).dataset("filters").to_table(columns=["model_id", "model_key"])
    assert upgraded.column("model_key").to_pylist() == [model_key(m) for m in upgraded.column("model_id").to_pylist()]
    assert no_local_copy(folder)
