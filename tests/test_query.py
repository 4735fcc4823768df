"""The DB object (`ops.db.open_db`): reading, visibility of complete models only, SQL with pushdown,
nearest filters against brute-force numpy, snapshots, vacuum, URIs, and the query commands."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lance
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from flows.cli import main
from ops.db import TableUnreadable, open_db
from ops.errors import UsageError
from ops.store import FILTERS_SCHEMA, LAYERS_SCHEMA, ModelsRow, model_key

ROOT = Path(__file__).resolve().parents[1]
LAYERS, PER_LAYER = 4, 2500
FAMILIES = {"m0": "resnet", "m1": "resnet", "m2": "vgg", "m3": "mobilenet"}


def model_tables(model_id: str, seed: int, family: str | None = None) -> tuple[pa.Table, pa.Table]:
    """A model's filters (LAYERS x PER_LAYER random kernels, one all-zero) and layers rows."""
    rng = np.random.default_rng(seed)
    n = LAYERS * PER_LAYER
    weights = rng.standard_normal((n, 9)).astype(np.float32) * rng.lognormal(-2, 1, (n, 1)).astype(np.float32)
    weights[3] = 0
    layer = np.repeat(np.arange(LAYERS, dtype=np.int32), PER_LAYER)
    filters = pa.table({
        "model_id": [model_id] * n, "model_key": [model_key(model_id)] * n, "layer_index": layer, "out_index": np.tile(np.arange(PER_LAYER, dtype=np.int32), LAYERS),
        "in_index": np.zeros(n, np.int32), "conv_depth": layer, "conv_depth_norm": layer / (LAYERS - 1),
        "kind": ["conv"] * n, "weights": pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1)), 9),
        "family": [family] * n, "task": ["classification"] * n, "train_dataset": [None] * n,
        "pretrain_dataset": [None] * n, "visual_category": ["natural"] * n,
    }, schema=FILTERS_SCHEMA)
    layers = pa.Table.from_pylist([
        {"model_id": model_id, "layer_index": i, "layer_name": f"conv{i}", "kind": "conv", "kernel_h": 3, "kernel_w": 3,
         "in_channels": 1, "out_channels": PER_LAYER, "groups": 1, "conv_depth": i, "conv_depth_norm": i / (LAYERS - 1),
         "depth_method": "graph", "n_filters": PER_LAYER, "sparsity": float(rng.random())} for i in range(LAYERS)],
        schema=LAYERS_SCHEMA)
    return filters, layers


def ok_row(model_id: str, filters: pa.Table, layers: pa.Table) -> ModelsRow:
    return ModelsRow({"model_id": model_id, "status": "ok", "family": FAMILIES.get(model_id),
                      "n_filters_3x3": filters.num_rows, "n_conv_layers": layers.num_rows})


def store_models(db, model_ids, seed0: int = 0) -> dict[str, pa.Table]:
    """Extract-like: write each model's files, commit them together, compact and snapshot."""
    written, inputs = [], {}
    for i, model_id in enumerate(model_ids):
        filters, layers = model_tables(model_id, seed0 + i, FAMILIES.get(model_id))
        inputs[model_id] = filters
        written.append(db.write_model_files(ok_row(model_id, filters, layers), filters, layers))
    db.commit_models(written)
    db.compact()
    db.snapshot("extract", models_added=len(model_ids))
    return inputs


def write_half_model(db, model_id: str = "half") -> None:
    """A run that died after committing a model's filters and layers, before its models row."""
    filters, layers = model_tables(model_id, 99, "vgg")
    db.commit("filters", db.write_fragments("filters", filters))
    db.commit("layers", db.write_fragments("layers", layers))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A DB of four ok models, one failed model and one half-written model; (root, input filters)."""
    root = tmp_path_factory.mktemp("query") / "db"
    db = open_db(root, must_exist=False)
    inputs = store_models(db, ["m0", "m1", "m2", "m3"])
    db.append_models([ModelsRow({"model_id": "broken", "status": "failed", "error": "model 'broken': no layers"})])
    write_half_model(db)
    return root, inputs


def visible_reference(inputs: dict[str, pa.Table]) -> pd.DataFrame:
    return pa.concat_tables(list(inputs.values())).to_pandas()


# --- opening ---------------------------------------------------------------------------------------


def test_a_missing_db_is_one_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"no DB at .*nowhere.*filterdb extract"):
        open_db(tmp_path / "nowhere")


def test_a_table_that_cannot_be_opened_raises_and_no_writer_replaces_it(tmp_path):
    db = open_db(tmp_path / "db", must_exist=False)
    store_models(db, ["m0"])
    for manifest in glob.glob(str(tmp_path / "db" / "models.lance" / "_versions" / "*.manifest")):
        Path(manifest).write_bytes(b"not a manifest")
    with pytest.raises(TableUnreadable, match=r"models\.lance cannot be opened .*not taken for an absent table"):
        open_db(tmp_path / "db")
    writer = open_db(tmp_path / "db", must_exist=False)
    with pytest.raises(TableUnreadable):
        writer.append_models([ModelsRow({"model_id": "x", "status": "failed"})])
    assert all(Path(m).read_bytes() == b"not a manifest"
               for m in glob.glob(str(tmp_path / "db" / "models.lance" / "_versions" / "*.manifest")))


def test_file_uris_work_like_folders(built):
    root, inputs = built
    by_uri = open_db(f"file://{root}")
    assert by_uri.table_uri("filters") == f"file://{root}/filters.lance"
    assert by_uri.count("filters") == open_db(root).count("filters") == sum(t.num_rows for t in inputs.values())


def test_table_uris_are_joined_as_strings():
    db = open_db("s3://bucket/some/db/", must_exist=False)
    assert db.table_uri("filters") == "s3://bucket/some/db/filters.lance"
    assert db.analysis_uri("shifts") == "s3://bucket/some/db/analysis/shifts.lance"


def test_a_db_on_s3_is_read_and_written_like_a_folder():
    """Against moto's S3 server on loopback: storage options reach every open and write."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint, keys = f"http://{host}:{port}", {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys).create_bucket(Bucket="filterdb-test")
        options = {"aws_endpoint": endpoint, "aws_region": "us-east-1", "allow_http": "true", **keys}
        writer = open_db("s3://filterdb-test/dbs/one", storage_options=options, must_exist=False)
        inputs = store_models(writer, ["m0", "m1"])
        write_half_model(writer)
        db = open_db("s3://filterdb-test/dbs/one", storage_options=options)
        assert db.count("filters") == sum(t.num_rows for t in inputs.values()) < db.dataset("filters").count_rows()
        assert open_db("s3://filterdb-test/dbs/one", version=1, storage_options=options).count("filters") == db.count("filters")
        assert list(db.sql("SELECT count(DISTINCT model_id) AS n FROM filters")["n"]) == [2]
        with pytest.raises(UsageError, match="no DB at s3://filterdb-test/dbs/two"):
            open_db("s3://filterdb-test/dbs/two", storage_options=options)
    finally:
        server.stop()


# --- visibility ------------------------------------------------------------------------------------


def test_readers_see_only_models_with_an_ok_row(built):
    root, inputs = built
    db = open_db(root)
    assert db.dataset("filters").count_rows() == 5 * LAYERS * PER_LAYER  # the half model is stored
    assert db.count("filters") == 4 * LAYERS * PER_LAYER
    assert set(db.filters(columns=["model_id"], as_="arrow").column("model_id").to_pylist()) == set(inputs)
    assert set(db.layers()["model_id"]) == set(inputs)
    assert set(db.sql("SELECT DISTINCT model_id FROM filters")["model_id"]) == set(inputs)
    assert set(db.sql("SELECT DISTINCT model_id FROM layers")["model_id"]) == set(inputs)
    assert "half" not in set(db.similar(np.ones(9), k=50, exact=True)["model_id"])
    assert sorted(db.models()["model_id"]) == ["broken", "m0", "m1", "m2", "m3"]  # failed rows are records


def test_a_reader_keeps_its_versions_while_a_commit_lands(tmp_path):
    db = open_db(tmp_path / "db", must_exist=False)
    store_models(db, ["m0"])
    reader = open_db(tmp_path / "db")
    before = reader.count("filters")
    filters, layers = model_tables("m9", 9)
    written = db.write_model_files(ok_row("m9", filters, layers), filters, layers)
    db.commit("filters", written.filters)  # mid-commit: filters in, models row not yet
    assert open_db(tmp_path / "db").count("filters") == before
    db.commit("layers", written.layers)
    db.append_models([written.row])
    assert reader.count("filters") == before
    assert reader.refresh().count("filters") == before + filters.num_rows


# --- reading ---------------------------------------------------------------------------------------


def test_filters_come_back_bit_for_bit_as_n_3_3_float32(built):
    root, inputs = built
    db = open_db(root)
    weights = db.filters(where="model_id = 'm2' AND layer_index = 1")
    expected = inputs["m2"].filter(pa.compute.equal(inputs["m2"]["layer_index"], 1))
    reference = np.array(expected.column("weights").to_pylist(), np.float32).reshape(-1, 3, 3)
    assert weights.dtype == np.float32 and weights.shape == (PER_LAYER, 3, 3)
    assert np.array_equal(weights.view(np.uint32), reference.view(np.uint32))


def test_filters_with_id_columns_and_in_each_format(built):
    root, _ = built
    db = open_db(root)
    where = "model_id = 'm1' AND layer_index = 0"
    arrays = db.filters(where=where, columns=["model_id", "out_index", "weights"])
    assert arrays["weights"].shape == (PER_LAYER, 3, 3) and list(arrays["out_index"][:3]) == [0, 1, 2]
    tensors = db.filters(where=where, columns=["out_index", "weights"], as_="torch")
    assert tuple(tensors["weights"].shape) == (PER_LAYER, 3, 3) and np.array_equal(tensors["weights"].numpy(), arrays["weights"])
    frame = db.filters(where=where, as_="pandas")
    assert len(frame) == PER_LAYER and "weights" in frame.columns
    assert db.filters(where=where, as_="arrow").num_rows == PER_LAYER


def test_filters_as_batches_of_bounded_size_add_up_to_the_whole(built):
    root, _ = built
    db = open_db(root)
    batches = list(db.iter_filters(where="family = 'resnet'", batch_size=1000))
    assert all(len(b) <= 1000 for b in batches)
    assert np.array_equal(np.concatenate(batches), db.filters(where="family = 'resnet'"))


def test_bad_predicates_and_columns_are_one_line_naming_them(built):
    db = open_db(built[0])
    with pytest.raises(UsageError, match=r"unknown column 'familly'.*the columns are: model_id"):
        db.filters(where="familly = 'resnet'")
    with pytest.raises(UsageError, match=r"is not a SQL condition"):
        db.layers(where="model_id = ")
    with pytest.raises(UsageError, match=r"unknown column 'nope'"):
        db.filters(columns=["nope"])
    with pytest.raises(UsageError, match="choose one of"):
        db.filters(as_="xarray")


def test_the_writer_indexes_model_id_and_a_predicate_on_it_skips_the_weights(built):
    db = open_db(built[0])
    filters = db.dataset("filters")
    assert {"model_id", "conv_depth_norm", "family"} <= {n for i in filters.describe_indices() for n in i.field_names}
    count_query = "SELECT count(*) AS n FROM filters WHERE model_id = 'm1'"
    db.sql(count_query)  # loads the indexes (cached): what follows is the scan itself
    filters.io_stats_incremental()
    count = db.sql(count_query)["n"][0]
    count_bytes = filters.io_stats_incremental().read_bytes
    db.sql("SELECT sum(weights[1]) AS s FROM filters WHERE model_id = 'm1'")
    weights_bytes = filters.io_stats_incremental().read_bytes
    assert count == LAYERS * PER_LAYER
    assert weights_bytes > LAYERS * PER_LAYER * 9 * 4 * 0.9  # reading them costs their size
    assert count_bytes < weights_bytes / 4


# --- SQL -------------------------------------------------------------------------------------------


def test_sql_joins_layers_and_models_like_pandas(built):
    root, _ = built
    db = open_db(root)
    result = db.sql("SELECT family, avg(sparsity) AS s, count(*) AS n FROM layers JOIN models USING (model_id) "
                    "GROUP BY family ORDER BY family")
    layers, models = db.layers(), db.models()
    reference = (layers.merge(models[["model_id", "family"]], on="model_id").groupby("family")
                 .agg(s=("sparsity", "mean"), n=("sparsity", "size")).reset_index())
    assert list(result["family"]) == list(reference["family"])
    assert np.allclose(result["s"], reference["s"]) and list(result["n"]) == list(reference["n"])
    assert isinstance(db.sql("SELECT 1 AS one", as_="arrow"), pa.Table)


@pytest.mark.parametrize("query, message", [
    ("SELECT * FROM filterz", r"unknown table filterz; the tables are: models, layers, filters"),
    ("SELECT nope FROM models", r"unknown column nope"),
    ("SELEC 1", r"is not valid SQL"),
])
def test_bad_sql_is_one_line(built, query, message):
    with pytest.raises(UsageError, match=message) as error:
        open_db(built[0]).sql(query)
    assert "\n" not in str(error.value)


# --- nearest filters -------------------------------------------------------------------------------


def brute_force(weights: np.ndarray, query: np.ndarray, k: int, sign_invariant: bool = False):
    """Indices and cosine distances of the k nearest rows, all-zero rows left out (float64)."""
    w = weights.reshape(-1, 9).astype(np.float64)
    norms = np.linalg.norm(w, axis=1)
    cosine = (w @ query.astype(np.float64)) / np.where(norms > 0, norms, 1) / np.linalg.norm(query)
    distance = 1 - (np.abs(cosine) if sign_invariant else cosine)
    distance[norms == 0] = np.inf
    order = np.argsort(distance, kind="stable")[:k]
    return order, distance[order]


def keys(frame: pd.DataFrame) -> list[tuple]:
    return list(zip(frame["model_id"], frame["layer_index"], frame["out_index"]))


@pytest.mark.parametrize("sign_invariant", [False, True])
def test_exact_search_matches_brute_force_numpy(built, sign_invariant):
    root, inputs = built
    db = open_db(root)
    reference = visible_reference(inputs)
    weights = np.stack(reference["weights"].to_numpy())
    for query in (np.array([0, 1, 0, 1, -4, 1, 0, 1, 0], np.float32), weights[17] * 3.5):
        found = db.similar(query.reshape(3, 3), k=10, exact=True, sign_invariant=sign_invariant)
        order, distance = brute_force(weights, query, 10, sign_invariant)
        assert keys(found) == keys(reference.iloc[order])
        assert np.allclose(found["distance"], distance, atol=1e-5)


def test_shape_distance_ignores_a_positive_scale_and_optionally_the_sign(built):
    db = open_db(built[0])
    kernel = db.filters(where="model_id = 'm3' AND layer_index = 2 AND out_index = 5")[0]
    assert db.similar(kernel * 40.0, k=1, exact=True)["distance"][0] == pytest.approx(0, abs=1e-6)
    flipped = db.similar(-kernel, k=1, exact=True, sign_invariant=True)
    assert keys(flipped) == [("m3", 2, 5)] and flipped["distance"][0] == pytest.approx(0, abs=1e-6)


def test_filtered_search_matches_brute_force_on_the_selection(built):
    root, inputs = built
    reference = visible_reference(inputs)
    selection = reference[(reference["family"] == "resnet") & (reference["layer_index"] >= 2)].reset_index(drop=True)
    query = np.array([1, 2, 1, 0, 0, 0, -1, -2, -1], np.float32)
    found = open_db(root).similar(query, k=10, where="family = 'resnet' AND layer_index >= 2", exact=True)
    order, _ = brute_force(np.stack(selection["weights"].to_numpy()), query, 10)
    assert keys(found) == keys(selection.iloc[order])


def test_the_vector_index_finds_the_brute_force_neighbours_and_follows_appends(tmp_path):
    db = open_db(tmp_path / "db", must_exist=False)
    inputs = store_models(db, ["m0", "m1"])
    built = db.create_vector_index(num_partitions=4)
    assert built["partitions"] == 4 and db.has_vector_index()
    reference = visible_reference(inputs)
    weights = np.stack(reference["weights"].to_numpy())
    rng = np.random.default_rng(5)
    hits = 0
    for query in rng.standard_normal((10, 9)).astype(np.float32):
        order, _ = brute_force(weights, query, 10)
        found = db.similar(query, k=10, nprobes=4)  # every partition: the index must then be exact
        hits += len(set(keys(found)) & set(keys(reference.iloc[order])))
    assert hits == 100
    added = store_models(db, ["m2"], seed0=7)  # an extraction appends and compacts
    index = next(i for i in db.dataset("filters").describe_indices() if i.field_names == ["weights"])
    assert index.num_rows_indexed == db.count("filters")
    target = np.array(added["m2"].column("weights")[123].as_py(), np.float32)
    assert keys(db.similar(target, k=1))[0] == ("m2", 0, 123)


@pytest.mark.parametrize("kernel, message", [
    ("1,2,3", "is not 3x3"), ("1,2,x;1,2,3;1,2,3", "is not numeric"), (np.zeros((3, 3)), "all zeros"),
    (np.ones((2, 2)), "is not 3x3"), ([np.nan] * 9, "NaN"), ("", "is not 3x3"),
])
def test_a_bad_kernel_is_one_clear_error(built, kernel, message):
    with pytest.raises(UsageError, match=message):
        open_db(built[0]).similar(kernel)


def test_analysis_tables_replace_their_own_rows_and_join_sql_and_snapshots(tmp_path):
    db = open_db(tmp_path / "db", must_exist=False)
    store_models(db, ["m0"])
    first = pa.table({"axis": ["task", "task", "family"], "kl": [0.5, 0.7, 0.1]})
    db.write_analysis("shifts", first)
    db.write_analysis("shifts", pa.table({"axis": ["task"], "kl": [0.9], "n": [3]}), replace={"axis": "task"})
    stored = db.read_analysis("shifts").sort_by("axis")
    assert stored.column("axis").to_pylist() == ["family", "task"] and stored.column("kl").to_pylist() == [0.1, 0.9]
    assert stored.column("n").to_pylist() == [None, 3]  # the older row takes the new column as null
    number = db.snapshot("shifts", note="task")
    assert db.sql("SELECT kl FROM shifts WHERE axis = 'task'")["kl"].tolist() == [0.9]
    db.write_analysis("shifts", pa.table({"axis": ["task"], "kl": [0.2], "n": [4]}), replace={"axis": "task"})
    assert open_db(tmp_path / "db", version=number).sql("SELECT kl FROM shifts WHERE axis = 'task'")["kl"].tolist() == [0.9]
    assert open_db(tmp_path / "db").sql("SELECT kl FROM analysis_shifts WHERE axis = 'task'")["kl"].tolist() == [0.2]


# --- snapshots and vacuum --------------------------------------------------------------------------


def test_a_snapshot_reads_the_versions_that_belong_together(tmp_path):
    root = tmp_path / "db"
    db = open_db(root, must_exist=False)
    store_models(db, ["m0", "m1"])
    store_models(db, ["m2"], seed0=2)
    write_half_model(db)
    snapshots = db.snapshots()
    assert list(snapshots["snapshot"]) == [1, 2] and list(snapshots["models_ok"]) == [2, 3]
    assert list(snapshots["rows_filters"]) == [2 * LAYERS * PER_LAYER, 3 * LAYERS * PER_LAYER]
    first = open_db(root, version=1)
    assert first.count("filters") == first.dataset("filters").count_rows() == 2 * LAYERS * PER_LAYER
    assert sorted(first.sql("SELECT model_id FROM models")["model_id"]) == ["m0", "m1"]
    with pytest.raises(UsageError, match="reads snapshot 1: open the DB without version= to write"):
        first.append_models([ModelsRow({"model_id": "x", "status": "failed"})])
    with pytest.raises(UsageError, match=r"no snapshot 9 .* it has snapshots 1, 2"):
        open_db(root, version=9)


def test_vacuum_keeps_the_newest_snapshots_and_removes_unreferenced_files(tmp_path):
    root = tmp_path / "db"
    db = open_db(root, must_exist=False)
    store_models(db, ["m0"])
    store_models(db, ["m1"], seed0=1)
    data_files = lambda: set(glob.glob(str(root / "filters.lance" / "data" / "*")))  # noqa: E731
    committed = data_files()
    filters, _ = model_tables("lost", 3)
    db.write_fragments("filters", filters)  # a worker's files whose commit never came
    lost = data_files() - committed
    done = db.vacuum(keep=1)
    assert lost and not lost & data_files()
    assert done["snapshots_removed"] == [1] and done["versions_removed"] > 0
    assert list(db.snapshots()["snapshot"]) == [2]
    assert open_db(root, version=2).count("filters") == 2 * LAYERS * PER_LAYER
    assert open_db(root).count("filters") == 2 * LAYERS * PER_LAYER


# --- commands --------------------------------------------------------------------------------------


def test_sql_command_prints_a_table_and_writes_parquet(built, tmp_path, capsys):
    out = tmp_path / "families.parquet"
    status = main(["sql", "--db", str(built[0]), "SELECT family, count(*) AS n FROM models GROUP BY family ORDER BY family",
                   "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0 and "resnet" in printed and "wrote 4 rows" in printed
    assert pd.read_parquet(out)["n"].sum() == 5


@pytest.mark.parametrize("argv, message", [
    (["sql", "SELECT * FROM nope"], "filterdb sql: unknown table nope"),
    (["similar", "--kernel", "1,2;3,4"], "filterdb similar: kernel '1,2;3,4' is not 3x3"),
    (["info", "--version", "42"], "filterdb info: no snapshot 42"),
])
def test_bad_queries_exit_2_with_one_line(built, capsys, argv, message):
    assert main([argv[0], "--db", str(built[0]), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_upgrade_adds_model_key_to_an_older_db_and_says_when_there_is_nothing_to_do(built, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(built[0], old)
    expected = open_db(old).filters(columns=["model_id", "model_key"], as_="arrow")  # the rows of complete models
    lance.dataset(str(old / "filters.lance")).drop_columns(["model_key"])  # the layout filterdb 0.1 wrote
    assert open_db(old).missing_columns() == ["model_key"]
    assert main(["upgrade", "--db", str(old)]) == 0
    assert "added filters.model_key" in capsys.readouterr().out
    stored = lance.dataset(str(old / "filters.lance")).to_table(columns=["model_id", "model_key"])
    # every row the recovery before a write keeps (a half-written model's are removed), the key of its id
    assert sorted(zip(*stored.to_pydict().values())) == sorted(zip(*expected.to_pydict().values()))
    assert main(["upgrade", "--db", str(old)]) == 0
    assert "has the current layout: nothing to do" in capsys.readouterr().out
    assert main(["upgrade", "--db", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("filterdb upgrade: no DB at") and err.count("\n") == 1


def test_info_and_similar_commands(built, capsys):
    assert main(["info", "--db", str(built[0])]) == 0
    printed = capsys.readouterr().out
    assert "4 models ok, 1 failed" in printed and "model_id (BTree)" in printed and "snapshots" in printed
    assert main(["similar", "--db", str(built[0]), "--kernel", "0,1,0;1,-4,1;0,1,0", "-k", "3", "--exact"]) == 0
    assert "3 nearest filters by shape (exact" in capsys.readouterr().out


def test_commands_are_quiet_unless_verbose(tmp_path):
    """The CLI's quiet mode hides Lance's "No existing dataset" warning (printed without it: the check
    can fail), Ray's start-up lines and its token-authentication notice."""
    script = ("import sys; from flows.cli import quiet_libraries\n"
              "quiet = sys.argv[1] == 'quiet'\n"
              "if quiet: quiet_libraries()\n"
              "import lance, pyarrow as pa; lance.write_dataset(pa.table({'a': [1]}), sys.argv[2], mode='overwrite')\n"
              "if quiet: import ray; ray.init(address='local', num_cpus=1, include_dashboard=False); ray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LANCE_LOG", "RAY_LOGGER_LEVEL", "RAY_DATA_LOG_LEVEL")}
    env["PYTHONPATH"] = str(ROOT)
    runs = {mode: subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / f"{mode}.lance")], env=env,
                                 capture_output=True, text=True, timeout=120) for mode in ("quiet", "verbose")}
    assert runs["quiet"].returncode == 0, runs["quiet"].stderr
    assert "No existing dataset" in runs["verbose"].stderr
    assert runs["quiet"].stderr.strip() == "" and runs["quiet"].stdout.strip() == ""


def test_ray_dataset_reads_the_visible_rows(built, ray_session):
    root, inputs = built
    db = open_db(root)
    dataset = db.ray_dataset("filters", where="layer_index = 0", columns=["model_id", "weights"])
    rows = dataset.to_pandas()
    assert len(rows) == 4 * PER_LAYER and set(rows["model_id"]) == set(inputs)
    with pytest.raises(UsageError, match="unknown column 'nope'"):
        db.ray_dataset("filters", where="nope = 1")


def test_removing_a_db_folder_makes_it_absent_not_broken(tmp_path):
    db = open_db(tmp_path / "db", must_exist=False)
    store_models(db, ["m0"])
    shutil.rmtree(tmp_path / "db" / "models.lance")
    with pytest.raises(UsageError, match="no DB at"):
        open_db(tmp_path / "db")
