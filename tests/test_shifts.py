"""Shift analysis: exactness of the flow however the work is split, axes, stored bases and tables, the
math piece by piece, bad input (the study's recipe itself: tests/test_shifts_study.py)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pytest
from scipy.stats import entropy

from flows.bench.shifts import synthetic_filters
from flows.bench.timing import PeakMemory
from flows.shifts import ShiftInputError, load_basis, print_shift_matrix, run_shift_axes, run_shifts
from ops import shifts
from ops.store import FILTERS_SCHEMA, META_COLUMNS, model_key

# model_id, family, task, width (a column that only models.lance has)
MODELS = [
    ("m0", "resnet", "classification", "narrow"),
    ("m1", "resnet", "segmentation", "wide"),
    ("m2", "vgg", "classification", "wide"),
    ("m3", "vgg", "gan", "narrow"),
    ("m4", "unet", "segmentation", "wide"),
    ("m5", "unet", "gan", "narrow"),
]
LAYERS = 11


def filters_table(n_per_model: int, seed: int = 0) -> pa.Table:
    """Filters of MODELS, LAYERS layers each, model-specific mixtures of structured kernels; every
    model's last layer is marked transposed (and made conspicuous, so including it would show)."""
    rng = np.random.default_rng(seed)
    parts = []
    for m, (model_id, family, task, _) in enumerate(MODELS):
        layer = np.repeat(np.arange(LAYERS), -(-n_per_model // LAYERS))[:n_per_model].astype(np.int32)
        depth = layer / (LAYERS - 1)
        weights = synthetic_filters(rng, n_per_model, np.full(n_per_model, (m - 2.5) / 2.5), depth)
        kind = np.where(layer == LAYERS - 1, "transposed", np.where(layer % 4 == 3, "depthwise", "conv"))
        weights[kind == "transposed"] += 5.0
        meta = {"family": family, "task": task, "train_dataset": f"data{m % 3}", "pretrain_dataset": None, "visual_category": "natural"}
        parts.append(
            pa.table(
                {
                    "model_id": [model_id] * n_per_model,
                    "model_key": [model_key(model_id)] * n_per_model,
                    "layer_index": layer,
                    "out_index": np.arange(n_per_model, dtype=np.int32) // 16,
                    "in_index": np.arange(n_per_model, dtype=np.int32) % 16,
                    "conv_depth": layer,
                    "conv_depth_norm": depth,
                    "kind": kind,
                    "weights": pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1)), 9),
                    **{name: pa.array([meta[name]] * n_per_model, pa.string()) for name in META_COLUMNS},
                },
                schema=FILTERS_SCHEMA,
            )
        )
    return pa.concat_tables(parts)


def make_db(path, n_per_model: int, rows_per_file: int = 7000, fragment_order=None):
    """A DB of MODELS' filters in fragments of `rows_per_file` rows; `fragment_order` (a permutation of
    the fragments' numbers) stores the same fragments in another order."""
    path.mkdir(parents=True, exist_ok=True)
    table = filters_table(n_per_model)
    if fragment_order is None:
        lance.write_dataset(table, str(path / "filters.lance"), max_rows_per_file=rows_per_file)
    else:
        for i, fragment in enumerate(fragment_order):
            lance.write_dataset(table.slice(fragment * rows_per_file, rows_per_file), str(path / "filters.lance"), mode="append" if i else "create")
    models = pa.table(
        {
            "model_id": [m[0] for m in MODELS] + ["broken"],
            "status": ["ok"] * len(MODELS) + ["failed"],
            "family": [m[1] for m in MODELS] + [None],
            "task": [m[2] for m in MODELS] + [None],
            "width": [m[3] for m in MODELS] + ["wide"],
            # what readers check the stored rows against (ops.db: only complete models are visible)
            "n_filters_3x3": pa.array([n_per_model] * len(MODELS) + [None], pa.int64()),
            "n_conv_layers": pa.array([LAYERS] * len(MODELS) + [None], pa.int64()),
        }
    )
    lance.write_dataset(models, str(path / "models.lance"))
    return path


def selected(db, predicate="kind != 'transposed'", columns=("weights", "task")) -> pa.Table:
    return lance.dataset(str(db / "filters.lance")).to_table(columns=list(columns), filter=predicate)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("shifts") / "db", n_per_model=6000)


@pytest.fixture(scope="module")
def by_task(db, ray_session):
    return run_shifts(db, "task", progress=False)


# --- exactness: the same numbers however the work is split ---------------------------------------------
# (the flow against the study's recipe, written out literally: tests/test_shifts_study.py)


def assert_identical(result, expected, name=""):
    """Bit for bit: basis, range, histograms and KL."""
    assert result.groups == expected.groups, name
    for field in ("mean", "components", "explained_variance_ratio"):
        np.testing.assert_array_equal(getattr(result.basis, field), getattr(expected.basis, field), err_msg=f"{name}: basis.{field}")
    np.testing.assert_array_equal(result.value_range.lo, expected.value_range.lo, err_msg=f"{name}: range lo")
    np.testing.assert_array_equal(result.value_range.hi, expected.value_range.hi, err_msg=f"{name}: range hi")
    for group in expected.groups:
        np.testing.assert_array_equal(result.histograms.counts[group], expected.histograms.counts[group], err_msg=f"{name}: counts of {group}")
    np.testing.assert_array_equal(result.kl, expected.kl, err_msg=f"{name}: kl")
    np.testing.assert_array_equal(result.kl_weighted, expected.kl_weighted, err_msg=f"{name}: kl_weighted")


def test_results_do_not_depend_on_blocks_or_workers(db, by_task, ray_session):
    runs = {
        "one worker, batches of 1000": run_shifts(db, "task", concurrency=1, batch_rows=1000, write=False, reuse=False, progress=False),
        "read once per step": run_shifts(db, "task", cache=False, write=False, reuse=False, progress=False),
        "read once per step, one worker, batches of 777": run_shifts(db, "task", cache=False, concurrency=1, batch_rows=777, write=False, reuse=False, progress=False),
    }
    table = selected(db)
    weights, (codes, labels) = shifts.weights_array(table.column("weights")), shifts.group_codes(table.column("task"))
    for block_rows in (1000, 12345, len(weights)):
        runs[f"in memory, blocks of {block_rows}"] = shifts.analyse(weights, codes, labels, block_rows=block_rows)

    for name, result in runs.items():
        assert_identical(result, by_task, name)


N_FRAGMENTS = 36000 // 2000
"""Fragments of the 2000-row DBs below (6 models x 6000 filters)."""


@pytest.mark.parametrize("rows_per_file, fragment_order", [
    (36000, None),  # one fragment: one read task, one block
    (2000, None),  # 18 fragments
    (2000, list(reversed(range(N_FRAGMENTS)))),  # the same fragments stored in reverse
    (2000, list(np.random.default_rng(2).permutation(N_FRAGMENTS))),  # and shuffled
])
def test_results_do_not_depend_on_the_number_or_order_of_fragments(tmp_path, by_task, ray_session, rows_per_file, fragment_order):
    db = make_db(tmp_path / "db", n_per_model=6000, rows_per_file=rows_per_file, fragment_order=fragment_order)
    n_fragments = len(lance.dataset(str(db / "filters.lance")).get_fragments())
    assert n_fragments == 36000 // rows_per_file
    for cache in (True, False):
        assert_identical(run_shifts(db, "task", cache=cache, write=False, reuse=False, progress=False), by_task, f"{n_fragments} fragments, cache {cache}")


@pytest.mark.parametrize("seed", [0, 1])
def test_results_do_not_depend_on_the_order_partial_results_merge_in(db, by_task, ray_session, monkeypatch, seed):
    # Fragment groups are dealt out to the holders (steps 1 and 2) and the holders' partial results
    # folded (steps 3 and 4), each in a shuffled order; two holders (2 CPUs).
    import flows.shifts

    fold, read = flows.shifts._fold_blocks, flows.shifts._read_kept_blocks
    rng = np.random.default_rng(seed)
    orders = []

    def permutation(n):  # never the order as given
        order = rng.permutation(n)
        while n > 1 and (order == np.arange(n)).all():
            order = rng.permutation(n)
        orders.append(order.tolist())
        return order

    def shuffled(blocks, *args, **kwargs):
        return fold([blocks[i] for i in permutation(len(blocks))], *args, **kwargs)

    def read_shuffled(scan, groups, *args, **kwargs):
        return read(scan, [groups[i] for i in permutation(len(groups))], *args, **kwargs)

    monkeypatch.setattr(flows.shifts, "_fold_blocks", shuffled)
    monkeypatch.setattr(flows.shifts, "_read_kept_blocks", read_shuffled)
    result = run_shifts(db, "task", cache=True, write=False, reuse=False, progress=False)
    assert len(orders) == 3 and all(len(o) > 1 and o != sorted(o) for o in orders)  # three passes, each in another order
    assert_identical(result, by_task, f"merge order of seed {seed}")


def odd_parts(n: int, seed: int) -> list[slice]:
    """Consecutive slices of 0..n at odd offsets, from 1 row to more than a chunk."""
    rng = np.random.default_rng(seed)
    sizes = [1, 2, 7, shifts.CHUNK_ROWS - 1, shifts.CHUNK_ROWS + 3, 999]
    bounds = np.cumsum([0, *sizes, *rng.integers(1, 3000, 40)])
    bounds = [*bounds[bounds < n], n]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def test_a_holder_that_dies_between_steps_is_replaced_and_its_fragments_read_again(db, by_task, ray_session, monkeypatch):
    import ray

    import flows.shifts

    fold, killed = flows.shifts._fold_blocks, []

    def kill_first(blocks, *args, **kwargs):
        if not killed:  # before step 3: the blocks it kept are gone with it
            killed.append(blocks[0].holder)
            ray.kill(blocks[0].holder)
        return fold(blocks, *args, **kwargs)

    monkeypatch.setattr(flows.shifts, "_fold_blocks", kill_first)
    result = run_shifts(db, "task", cache=True, write=False, reuse=False, progress=False)
    assert killed and all(killed[0] not in pool for pool in flows.shifts._POOL.values())
    assert_identical(result, by_task, "a holder killed before step 3")
    flows.shifts.release_holders()  # a new pool, whose holders have no spare memory yet: the same numbers
    assert not flows.shifts._POOL
    assert_identical(run_shifts(db, "task", cache=True, write=False, reuse=False, progress=False), by_task, "new holders")


@pytest.mark.parametrize("cache", [True, False], ids=["kept", "read once per step"])
def test_a_holder_dead_before_its_reads_is_replaced_and_every_group_counted_once(db, by_task, ray_session, monkeypatch, cache):
    # Kept: its two reads both fail; the first failure moves all its groups to a new holder, the second
    # is ignored, and a group whose moments were counted is not counted again. Read once per step:
    # each of its groups is read by the one new holder, in every step.
    import ray

    import flows.shifts

    pool, killed = flows.shifts._holders, []

    def dead_first(concurrency=None):
        holders = pool(concurrency)
        if not killed:
            killed.append(holders[0])
            ray.kill(holders[0])
        return holders

    monkeypatch.setattr(flows.shifts, "_holders", dead_first)
    result = run_shifts(db, "task", cache=cache, write=False, reuse=False, progress=False)
    assert killed and all(killed[0] not in p for p in flows.shifts._POOL.values())
    assert result.basis.n == by_task.basis.n
    assert_identical(result, by_task, f"a holder dead before its reads, cache={cache}")


FREED_MEMORY_PROGRAM = """
import resource, threading
import numpy as np

def batches(seed):  # as a decoder's threads allocate: buffers of 256 KB - 12 MB, a few alive at a time
    rng, alive = np.random.default_rng(seed), []
    for _ in range(200):
        alive.append(np.ones(int(rng.integers(1 << 16, 3 << 20)), np.float32))
        del alive[:-4]

def page_faults():
    threads = [threading.Thread(target=batches, args=(seed,)) for seed in range(3)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

page_faults()
print(page_faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_holders_malloc_settings_keep_freed_memory_for_the_next_batches():
    # Measured with the real allocator in fresh processes: with the holders' settings, the pages a
    # decoder frees serve its next batches instead of new pages being faulted in.
    from flows.shifts import HOLDER_MALLOC

    def faults(env: dict) -> int:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROGRAM], env={**clean, **env}, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults({}), faults(HOLDER_MALLOC)
    assert kept * 4 < default, (kept, default)


def test_holders_run_with_the_malloc_settings(ray_session):
    import ray

    import flows.shifts

    for holder in flows.shifts._holders():
        environment = ray.get(holder.__ray_call__.remote(lambda self: dict(os.environ)))
        assert {name: environment.get(name) for name in flows.shifts.HOLDER_MALLOC} == flows.shifts.HOLDER_MALLOC


def test_aggregates_merged_in_any_order_equal_those_of_all_rows():
    rng = np.random.default_rng(7)
    n = 60000
    weights = synthetic_filters(rng, n, rng.uniform(-1, 1, n), rng.uniform(0, 1, n))
    codes, labels = rng.integers(0, 3, n), ["a", "b", "c"]
    whole = shifts.Moments.of(weights)
    basis = whole.basis()
    value_range = shifts.CoefficientRange.of(weights, basis)
    histograms = shifts.Histograms.of(weights, codes, labels, basis, value_range)

    parts = odd_parts(n, seed=1)
    for order in (rng.permutation(len(parts)), rng.permutation(len(parts))):
        moments, part_range, part_histograms = shifts.Moments(), shifts.CoefficientRange(), shifts.Histograms.empty(value_range)
        for i in order:
            rows = parts[i]
            moments = moments.merge(shifts.Moments.of(weights[rows]))
            part_range = part_range.merge(shifts.CoefficientRange.of(weights[rows], basis))
            part_histograms = part_histograms.merge(shifts.Histograms.of(weights[rows], codes[rows], labels, basis, value_range))
        assert moments.n == whole.n
        np.testing.assert_array_equal(moments.total, whole.total)  # exact integers
        np.testing.assert_array_equal(moments.outer, whole.outer)
        np.testing.assert_array_equal(moments.basis().components, basis.components)
        np.testing.assert_array_equal(part_range.lo, value_range.lo)
        np.testing.assert_array_equal(part_range.hi, value_range.hi)
        for label in labels:
            np.testing.assert_array_equal(part_histograms.counts[label], histograms.counts[label])


def test_a_filters_coefficients_do_not_depend_on_its_chunk():
    # The same filters at every offset 0..64 of a chunk, in chunks of every width from 1 row to a
    # whole chunk: BLAS kernels round remainder tiles otherwise than full ones.
    rng = np.random.default_rng(8)
    weights = synthetic_filters(rng, shifts.CHUNK_ROWS + 64, rng.uniform(-1, 1, shifts.CHUNK_ROWS + 64), rng.uniform(0, 1, shifts.CHUNK_ROWS + 64))
    basis = shifts.Moments.of(weights).basis()
    expected = basis.project(weights[64:80])
    for offset in range(65):
        for width in (offset + 16, offset + 17, offset + 100, shifts.CHUNK_ROWS):
            np.testing.assert_array_equal(basis.project(weights[64 - offset : 64 - offset + width])[offset : offset + 16], expected)
    for row in range(16):
        np.testing.assert_array_equal(basis.project(weights[64 + row : 65 + row]), expected[row : row + 1])


def test_transposed_filters_are_left_out_unless_the_predicate_names_kind(db, by_task, ray_session):
    assert by_task.basis.n == selected(db).num_rows
    everything = run_shifts(db, "kind", where="kind IS NOT NULL", write=False, progress=False)
    assert "transposed" in everything.groups
    assert everything.basis.n == lance.dataset(str(db / "filters.lance")).count_rows()


# --- axes ----------------------------------------------------------------------------------------------


def test_depth_bins_are_closed_on_the_right_with_zero_in_the_first():
    codes, labels = shifts.depth_codes(np.array([0.0, 0.05, 0.1, 0.1000001, 0.2, 0.3, 0.95, 1.0]))
    assert codes.tolist() == [0, 0, 0, 1, 1, 2, 9, 9]
    assert labels[0] == "[0.0, 0.1]" and labels[1] == "(0.1, 0.2]" and labels[-1] == "(0.9, 1.0]"


def test_depth_axis_groups_filters_by_depth_bin(db, ray_session):
    result = run_shifts(db, "depth", write=False, progress=False)
    depth = selected(db, columns=["conv_depth_norm"]).column("conv_depth_norm").to_numpy()
    expected = np.bincount(np.searchsorted(np.arange(1, 10) / 10, depth, side="left"), minlength=10)
    labels = shifts.depth_labels()
    assert result.groups == [labels[i] for i in np.flatnonzero(expected)]  # in depth order
    np.testing.assert_array_equal(result.sizes, expected[expected > 0])


def test_a_models_table_column_is_an_axis_through_model_id(db, ray_session):
    result = run_shifts(db, "width", write=False, progress=False)
    table = selected(db, columns=["weights", "model_id"])
    width = {m[0]: m[3] for m in MODELS}
    codes, labels = shifts.group_codes(table.column("model_id"), mapping=width)
    expected = shifts.analyse(shifts.weights_array(table.column("weights")), codes, labels)
    assert result.groups == ["narrow", "wide"]
    np.testing.assert_array_equal(result.sizes, expected.sizes)
    np.testing.assert_array_equal(result.kl_weighted, expected.kl_weighted)


def test_per_model_axes_read_the_integer_model_key(db):
    for name in ("task", "family", "model_id", "width"):
        axis = shifts.resolve_axis(db, name)
        assert axis.column == "model_key", name
    assert shifts.resolve_axis(db, "train_dataset").column == "train_dataset"  # models.lance of this DB lacks it
    assert shifts.resolve_axis(db, "kind").column == "kind"


def old_layout_copy(db, path):
    """The DB as filterdb before 0.2 wrote it: filters.lance without `model_key`."""
    path.mkdir()
    table = lance.dataset(str(db / "filters.lance")).to_table()
    lance.write_dataset(table.drop_columns(["model_key"]), str(path / "filters.lance"), max_rows_per_file=7000)
    lance.write_dataset(lance.dataset(str(db / "models.lance")).to_table(), str(path / "models.lance"))
    return path


def test_an_older_db_without_model_key_gives_the_same_numbers_and_upgrades_in_place(db, tmp_path, ray_session, capsys):
    from flows.cli import main
    from ops.db import open_db

    old = old_layout_copy(db, tmp_path / "old")
    assert open_db(old).missing_columns() == ["model_key"]
    assert main(["shifts", "--db", str(old), "--by", "task"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "has no model_key column" in printed and f"filterdb upgrade --db {old}" in printed
    assert shifts.resolve_axis(old, "task").column == "task"  # read as strings
    expected = run_shift_axes(db, "task,model_id,width", write=False, reuse=False, progress=False)
    before = run_shift_axes(old, "task,model_id,width", write=False, reuse=False, progress=False)
    added = open_db(old).upgrade()
    assert added == ["filters.model_key"] and open_db(old).missing_columns() == []
    upgraded = lance.dataset(str(old / "filters.lance"))
    original = lance.dataset(str(db / "filters.lance")).to_table(columns=["model_id", "model_key", "weights"])
    stored = upgraded.to_table(columns=["model_id", "model_key", "weights"])
    for name in original.column_names:  # same rows, the key of each id (the added column is nullable)
        assert stored.column(name).equals(original.column(name)), name
    assert open_db(old).snapshots().kind.tolist() == ["shifts", "upgrade"]  # the command above, then the upgrade
    after = run_shift_axes(old, "task,model_id,width", write=False, reuse=False, progress=False)
    for name in expected:
        assert_identical(before[name], expected[name], f"{name}, read as strings")
        assert_identical(after[name], expected[name], f"{name}, upgraded")
    assert open_db(old).upgrade() == []  # nothing left to do


def test_a_writer_appends_rows_of_the_stored_layout_to_an_older_db(db, tmp_path):
    from ops.db import open_db
    from ops.store import ModelsRow

    old = open_db(old_layout_copy(db, tmp_path / "old"))
    rows = filters_table(100).slice(0, 100)  # the current layout, with model_key
    written = old.write_model_files(ModelsRow({"model_id": "m0", "status": "ok"}), rows.set_column(0, "model_id", pa.array(["new"] * 100)), None)
    old.commit("filters", written.filters)
    table = lance.dataset(str(tmp_path / "old" / "filters.lance"))
    assert "model_key" not in table.schema.names and table.count_rows("model_id = 'new'") == 100


def test_several_axes_share_one_basis_one_range_and_one_pass(db, ray_session, monkeypatch):
    import flows.shifts

    steps = []
    for name in ("_fold_reads", "_fold_blocks"):
        fold = getattr(flows.shifts, name)
        monkeypatch.setattr(flows.shifts, name, lambda *args, fold=fold, **kwargs: steps.append(args[1].__name__) or fold(*args, **kwargs))
    read = flows.shifts._read_kept_blocks
    monkeypatch.setattr(flows.shifts, "_read_kept_blocks", lambda *args, **kwargs: steps.append("read and moments") or read(*args, **kwargs))
    together = run_shift_axes(db, "task,depth,width", write=False, reuse=False, progress=False)
    assert steps == ["read and moments", "_range_of_block", "_histograms_of_block"]
    assert list(together) == ["task", "depth", "width"]
    for axis, result in together.items():
        alone = run_shifts(db, axis, write=False, reuse=False, progress=False)
        assert result.axis == axis
        assert_identical(result, alone, axis)


@pytest.mark.parametrize("sort", ["mean", "name", "none"])
def test_groups_are_sorted_as_asked(db, by_task, ray_session, sort):
    result = run_shifts(db, "task", sort=sort, write=False, progress=False)
    if sort == "mean":
        assert np.all(np.diff(result.kl_weighted.mean(axis=0)) >= 0)
    else:
        assert result.groups == sorted(result.groups)
    order = [by_task.groups.index(g) for g in result.groups]
    np.testing.assert_array_equal(result.kl_weighted, by_task.kl_weighted[np.ix_(order, order)])
    np.testing.assert_array_equal(result.sizes, by_task.sizes[order])


def test_depth_bins_stay_in_order_unless_asked_otherwise(db, ray_session):
    result = run_shifts(db, "depth", write=False, progress=False)
    assert result.sort == "none" and result.groups == [g for g in shifts.depth_labels() if g in result.groups]
    by_mean = run_shifts(db, "depth", sort="mean", write=False, progress=False)
    assert by_mean.groups != result.groups and np.all(np.diff(by_mean.kl_weighted.mean(axis=0)) >= 0)


# --- stored basis and tables ----------------------------------------------------------------------------


def test_tables_are_written_under_analysis_tagged_with_the_db_version(db, by_task):
    version = lance.dataset(str(db / "filters.lance")).version
    basis = lance.dataset(str(db / "analysis" / "basis.lance")).to_table()
    histograms = lance.dataset(str(db / "analysis" / "histograms.lance")).to_table(filter="axis = 'task'")
    pairs = lance.dataset(str(db / "analysis" / "shifts.lance")).to_table(filter="axis = 'task'")

    assert basis.num_rows == 9 and set(basis.column("db_version").to_pylist()) == {version}
    histograms = histograms.filter(pa.compute.equal(histograms.column("range_mode"), "global"))
    pairs = pairs.filter(pa.compute.equal(pairs.column("range_mode"), "global"))
    assert histograms.num_rows == 9 * len(by_task.groups)
    assert pairs.num_rows == len(by_task.groups) * (len(by_task.groups) - 1) // 2
    assert set(pairs.column("db_version").to_pylist()) == {version}
    row = pairs.slice(0, 1).to_pylist()[0]
    a, b = by_task.groups.index(row["group_a"]), by_task.groups.index(row["group_b"])
    assert row["kl_weighted"] == pytest.approx(by_task.kl_weighted[a, b])
    assert row["n_a"] == by_task.sizes[a] and len(row["kl"]) == 9
    density = np.array(histograms.column("density")[0].as_py())
    width = (histograms.column("hi")[0].as_py() - histograms.column("lo")[0].as_py()) / 70
    assert density.sum() * width == pytest.approx(1, abs=0.05)


def test_a_stored_basis_is_reused_for_a_subset(db, by_task, ray_session):
    subset = run_shifts(db, "family", where="task = 'classification'", basis=db, write=False, progress=False)
    stored = load_basis(db)
    assert stored.selection == by_task.selection
    np.testing.assert_array_equal(subset.basis.components, by_task.basis.components)
    np.testing.assert_array_equal(subset.histograms.lo, by_task.histograms.lo)

    table = selected(db, "task = 'classification' AND kind != 'transposed'", columns=["weights", "family"])
    codes, labels = shifts.group_codes(table.column("family"))
    expected = shifts.analyse(shifts.weights_array(table.column("weights")), codes, labels, basis=stored.basis, value_range=stored.value_range)
    np.testing.assert_array_equal(subset.kl_weighted, expected.kl_weighted)
    assert subset.basis_selection == by_task.selection != subset.selection


def test_the_basis_stored_for_the_same_selection_and_version_saves_two_passes(db, by_task, ray_session, monkeypatch):
    import flows.shifts

    passes = []
    fold = flows.shifts._fold_reads
    monkeypatch.setattr(flows.shifts, "_fold_reads", lambda *args, **kwargs: passes.append(args[1].__name__) or fold(*args, **kwargs))
    again = run_shifts(db, "task", write=False, progress=False)
    assert passes == ["_histograms_of_block"]
    np.testing.assert_array_equal(again.kl_weighted, by_task.kl_weighted)


def test_tables_record_the_options_that_change_the_numbers(db, by_task, ray_session):
    per_component = run_shifts(db, "task", range_mode="per-component", bins=40, progress=False)
    pairs = lance.dataset(str(db / "analysis" / "shifts.lance")).to_table(filter="axis = 'task'").to_pandas()
    histograms = lance.dataset(str(db / "analysis" / "histograms.lance")).to_table(filter="axis = 'task'").to_pandas()
    # both runs' rows are kept side by side, each tagged with its range mode and bins
    assert set(zip(pairs.range_mode, pairs.bins)) >= {("global", 70), ("per-component", 40)}
    mine = pairs[(pairs.range_mode == "per-component") & (pairs.bins == 40)]
    for row in mine.itertuples():
        a, b = per_component.groups.index(row.group_a), per_component.groups.index(row.group_b)
        assert row.kl_weighted == pytest.approx(per_component.kl_weighted[a, b], rel=1e-12)
    global_rows = histograms[histograms.range_mode == "global"]
    assert global_rows.lo.nunique() == 1 and global_rows.hi.nunique() == 1  # one range for all components
    assert histograms[histograms.range_mode == "per-component"].lo.nunique() == 9
    assert all(len(c) == 40 for c in histograms[histograms.bins == 40].counts)


def test_a_stored_basis_gives_the_numbers_of_a_fresh_run_in_either_range_mode(db, by_task, ray_session):
    for range_mode in ("global", "per-component"):
        fresh = run_shifts(db, "family", range_mode=range_mode, write=False, reuse=False, progress=False)
        reused = run_shifts(db, "family", range_mode=range_mode, write=False, progress=False)
        assert reused.basis_selection == by_task.selection  # the stored one
        assert_identical(reused, fresh, range_mode)


def test_tables_of_an_older_version_keep_their_rows_and_gain_the_new_columns(tmp_path, ray_session):
    db = make_db(tmp_path / "db", n_per_model=2000)
    first = run_shifts(db, "task", progress=False)
    folder = db / "analysis"
    # As an older version wrote them: no range_mode / bins columns, the range in float32.
    for name in ("basis", "histograms", "shifts"):
        table = lance.dataset(str(folder / f"{name}.lance")).to_table()
        table = table.drop_columns([c for c in ("range_mode", "bins") if c in table.schema.names])
        for column in ("coefficient_min", "coefficient_max"):
            if column in table.schema.names:
                table = table.set_column(table.schema.get_field_index(column), column, table.column(column).cast(pa.float32()))
        old = table.set_column(table.schema.get_field_index("selection"), "selection", pa.array(["old"] * table.num_rows))
        lance.write_dataset(old, str(folder / f"{name}.lance"), mode="overwrite")

    again = run_shifts(db, "task", progress=False)
    np.testing.assert_array_equal(again.kl_weighted, first.kl_weighted)
    pairs = lance.dataset(str(folder / "shifts.lance")).to_table().to_pandas()
    assert sorted(pairs.selection.unique()) == sorted(["old", first.selection])
    assert pairs[pairs.selection == "old"].range_mode.isna().all() and (pairs[pairs.selection != "old"].range_mode == "global").all()
    basis = lance.dataset(str(folder / "basis.lance")).to_table()
    assert basis.schema.field("coefficient_min").type == pa.float64() and basis.num_rows == 18


def test_the_matrix_prints_with_group_sizes(by_task, capsys):
    from rich.console import Console

    print_shift_matrix(by_task, console=Console(width=200, force_terminal=False))
    out = capsys.readouterr().out
    assert "classification" in out and f"{by_task.sizes[0]:,}" in out


# --- selections that leave whole fragments out -----------------------------------------------------------

FEW_MODELS = "model_id IN ('m1', 'm5')"
"""Six of the fragmented DB's 18 fragments: most read tasks find no row."""
PATHS = ["read once", "read once per step", "stored basis", "reused basis"]


@pytest.fixture(scope="module")
def fragmented_db(tmp_path_factory, ray_session):
    db = make_db(tmp_path_factory.mktemp("fragmented") / "db", n_per_model=3000, rows_per_file=1000)
    run_shifts(db, "family", progress=False)  # stores the basis of the default selection
    return db


STEPS = {
    "read once": [("_fold_blocks", "_range_of_block"), ("_fold_blocks", "_histograms_of_block")],  # moments in the read's tasks
    "read once per step": [("_fold_reads", "_moments_of_block"), ("_fold_reads", "_range_of_block"), ("_fold_reads", "_histograms_of_block")],
    "stored basis": [("_fold_reads", "_histograms_of_block")],
    "reused basis": [("_fold_reads", "_histograms_of_block")],
}
"""(fold, adapter) of every step that ran: kept blocks are folded by _fold_blocks, Lance reads by _fold_reads."""


def run_on_path(db, path: str, where: str, monkeypatch):
    """run_shifts of `where` along `path`, and the steps it ran."""
    import flows.shifts

    if path == "reused basis":
        run_shifts(db, "family", where=where, reuse=False, progress=False)  # stores the basis of `where`
    options = {"read once": {"cache": True, "reuse": False}, "read once per step": {"cache": False, "reuse": False}, "stored basis": {"basis": db}, "reused basis": {}}[path]
    steps = []
    with monkeypatch.context() as patch:
        for name in ("_fold_reads", "_fold_blocks"):
            fold = getattr(flows.shifts, name)
            patch.setattr(flows.shifts, name, lambda *args, fold=fold, name=name, **kwargs: steps.append((name, args[1].__name__)) or fold(*args, **kwargs))
        return run_shifts(db, "family", where=where, write=False, progress=False, **options), steps


@pytest.mark.parametrize("path", PATHS)
def test_a_selection_that_leaves_whole_fragments_out_works_on_every_path(fragmented_db, path, monkeypatch):
    assert len(lance.dataset(str(fragmented_db / "filters.lance")).get_fragments()) == 18
    result, steps = run_on_path(fragmented_db, path, FEW_MODELS, monkeypatch)

    table = selected(fragmented_db, f"({FEW_MODELS}) AND kind != 'transposed'", columns=["weights", "family"])
    codes, labels = shifts.group_codes(table.column("family"))
    stored = load_basis(fragmented_db) if path == "stored basis" else None
    expected = shifts.analyse(shifts.weights_array(table.column("weights")), codes, labels, **({"basis": stored.basis, "value_range": stored.value_range} if stored else {}))
    assert steps == STEPS[path]
    assert result.groups == ["resnet", "unet"]
    np.testing.assert_array_equal(result.sizes, expected.sizes)
    assert_identical(result, expected, path)


@pytest.mark.parametrize("path", ["read once", "read once per step", "stored basis"])  # no basis is stored for nothing
def test_a_selection_of_nothing_is_an_input_error_of_one_line_on_every_path(fragmented_db, path, monkeypatch):
    with pytest.raises(ShiftInputError, match="no filters match") as error:
        run_on_path(fragmented_db, path, "model_id = 'nobody'", monkeypatch)
    assert "\n" not in str(error.value)


# --- memory ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
def test_driver_memory_does_not_grow_with_the_number_of_filters(tmp_path, ray_session, cache):
    # Resident memory of the driver, sampled: tracemalloc crashes Python 3.11 when Ray's threads
    # create thread states while it traces.
    growth = {}
    for n_per_model in (4000, 128000):
        db = make_db(tmp_path / f"db{n_per_model}", n_per_model, rows_per_file=n_per_model)
        run_shifts(db, "model_id", write=False, reuse=False, cache=cache, progress=False)  # warm: imports, Ray workers
        with PeakMemory() as memory:
            run_shifts(db, "model_id", write=False, reuse=False, cache=cache, progress=False)
        growth[n_per_model] = memory.peak - memory.baseline
    weights_bytes = 128000 * len(MODELS) * 36  # 27.6 MB of weights in the larger DB
    assert growth[128000] < weights_bytes / 4 and growth[128000] < growth[4000] + 8 * 2**20, growth


# --- the math, piece by piece ---------------------------------------------------------------------------


@pytest.mark.parametrize("range_mode", ["global", "per-component"])
def test_histograms_count_like_numpy_histogram(range_mode):
    rng = np.random.default_rng(3)
    weights = synthetic_filters(rng, 50000, rng.uniform(-1, 1, 50000), rng.uniform(0, 1, 50000))
    basis = shifts.Moments.of(weights).basis()
    value_range = shifts.CoefficientRange.of(weights, basis)
    counts = shifts.Histograms.of(weights, np.zeros(50000, np.intp), ["all"], basis, value_range, range_mode=range_mode).counts["all"]
    coefficients = basis.project(weights).astype(np.float64)
    for k in range(9):
        span = coefficients if range_mode == "global" else coefficients[:, k]
        expected, _ = np.histogram(coefficients[:, k], bins=70, range=(span.min(), span.max()))
        assert np.abs(counts[k] - expected).sum() <= 4  # only float32 ties at bin edges may differ


def test_probabilities_are_densities_floored_at_float32_epsilon_and_renormalised():
    # Two components of different bin widths: the floor is relative to the density, count / (n * width).
    counts = np.array([[[3, 0, 1, 0], [0, 4, 0, 0]]])
    widths = np.array([0.5, 0.01])
    p = shifts.probabilities(counts, widths)
    eps = np.finfo(np.float32).eps
    first = np.array([3 / (4 * 0.5), eps, 1 / (4 * 0.5), eps])
    second = np.array([eps, 4 / (4 * 0.01), eps, eps])
    np.testing.assert_allclose(p[0, 0], first / first.sum(), rtol=1e-15)
    np.testing.assert_allclose(p[0, 1], second / second.sum(), rtol=1e-15)


def test_moments_taken_while_scaling_are_the_exact_integer_sums_of_the_block():
    # Reference written from the contract: q = round(w / max|w| * 2^24), the division in float32;
    # sums of q and of q q^T in int64 (exact: 5000 * 2^48 < 2^63).
    rng = np.random.default_rng(8)
    weights = synthetic_filters(rng, 5000, rng.uniform(-1, 1, 5000), rng.uniform(0, 1, 5000))
    peak = np.abs(weights).max(axis=1, keepdims=True)
    peak[peak == 0] = 1
    q = np.rint((weights / peak).astype(np.float32).astype(np.float64) * 2**24).astype(np.int64)
    groups = [shifts.group_codes(pa.array(np.array(["x", "y"])[rng.integers(0, 2, 5000)]))]
    block, moments = shifts.scaled_block_and_moments(weights, groups)
    np.testing.assert_array_equal(block.q, shifts.ScaledBlock.of(weights, groups).q)
    np.testing.assert_array_equal(block.q.T, q)
    assert moments.n == 5000
    assert moments.total.tolist() == q.sum(axis=0).tolist()
    assert moments.outer.tolist() == (q.T @ q).tolist()


def test_moments_hold_sums_beyond_int64():
    # 2^16 filters whose every q is 2^24: each sum of q_j q_k is 2^64, which no int64 holds.
    weights = np.ones((1 << 16, 9), np.float32)
    moments = shifts.Moments.of(weights)
    assert moments.n == 1 << 16
    assert moments.total.tolist() == [2**40] * 9
    assert moments.outer.tolist() == [[2**64] * 9] * 9


def test_scaling_rounds_half_to_even_like_numpy():
    # q = w / peak * 2^24 with a fractional part of exactly one half (w / peak = k * 2^-25), and signs.
    halves = np.array([1, 3, 5, -1, -3, 7, 0, 2, -5], np.float32) * np.float32(2.0**-25)
    weights = np.stack([np.concatenate([[1.0], halves[:8]]), np.concatenate([[-1.0], halves[1:]])]).astype(np.float32)
    expected = np.rint(weights.astype(np.float64) / np.abs(weights).max(axis=1, keepdims=True) * 2**24)
    np.testing.assert_array_equal(shifts.scaled_q(weights).T, expected)
    assert {0.0, 2.0, -2.0} <= set(expected.ravel())  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -1.5 -> -2


@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 2047, 2048, 2049, 4111])
def test_scaling_equals_the_numpy_formula_at_every_size(n):
    # Rows are transposed 16 at a time, then the rest one by one, a chunk of 2048 at a time.
    rng = np.random.default_rng(n)
    weights = (rng.standard_normal((n, 9)) * rng.lognormal(-2, 1, (n, 1))).astype(np.float32)
    weights[::7] = 0
    peak = np.abs(weights).max(axis=1, keepdims=True)
    peak[peak == 0] = 1
    expected = np.rint((weights / peak).astype(np.float32) * np.float32(2**24))
    np.testing.assert_array_equal(shifts.scaled_q(weights).T, expected)
    block, moments = shifts.scaled_block_and_moments(weights, [])
    np.testing.assert_array_equal(block.q.T, expected)
    assert moments.total.tolist() == expected.astype(np.int64).sum(axis=0).tolist()


def test_bin_counting_equals_the_numpy_formula_bit_for_bit():
    # The compiled loop against the same formula in numpy: bin = clip((a @ q) * factor + shift, 0,
    # bins - 1) truncated, a multiply then an add; several axes with other group counts, odd sizes.
    rng = np.random.default_rng(11)
    n = 3 * shifts.CHUNK_ROWS + 17
    weights = synthetic_filters(rng, n, rng.uniform(-1, 1, n), rng.uniform(0, 1, n))
    basis = shifts.Moments.of(weights).basis()
    value_range = shifts.CoefficientRange.of(weights, basis)
    groupings = [(rng.integers(0, 3, n), ["a", "b", "c"]), (rng.integers(0, 40, n), [f"m{g:02d}" for g in range(40)])]
    for range_mode in ("global", "per-component"):
        histograms = shifts.AxesHistograms.of_block(shifts.ScaledBlock.of(weights, groupings), basis, value_range, 70, range_mode)
        lo, hi = value_range.edges(range_mode)
        a, scale, offset = basis.integer_projection()
        width = 70 / (hi - lo)
        t = (a @ shifts.scaled_q(weights).astype(np.float64)) * (scale * width)[:, None]
        t += (-(offset + lo) * width)[:, None]
        index = np.clip(t, 0, 69).astype(np.int64)
        for (codes, labels), axis in zip(groupings, histograms.axes):
            for g, label in enumerate(labels):
                expected = np.stack([np.bincount(index[k, codes == g], minlength=70) for k in range(9)])
                np.testing.assert_array_equal(axis.counts[label], expected)
        # the ends: the extreme coefficients fall in the first and last bins
        assert histograms.axes[0].counts["a"][:, 0].sum() + histograms.axes[0].counts["b"][:, 0].sum() + histograms.axes[0].counts["c"][:, 0].sum() > 0


def test_kept_parts_give_the_aggregates_of_all_their_weights():
    # What the flow keeps in the object store: parts whose group labels differ (and an empty one).
    rng = np.random.default_rng(5)
    weights = synthetic_filters(rng, 30000, rng.uniform(-1, 1, 30000), rng.uniform(0, 1, 30000))
    labels = np.array(["b", "a", "c"])[rng.integers(0, 3, 30000)]
    labels[:12000][labels[:12000] == "c"] = "a"  # the first part has no "c"
    parts = [shifts.ScaledBlock.of(weights[s], [shifts.group_codes(pa.array(labels[s]))]) for s in (slice(0, 12000), slice(12000, 12000), slice(12000, 30000))]
    assert parts[0].labels == [["a", "b"]] and len(parts[1]) == 0
    np.testing.assert_array_equal(np.array(parts[2].labels[0])[parts[2].codes[0]], labels[12000:])

    moments = functools.reduce(shifts.Moments.merge, map(shifts.Moments.of_block, parts))
    reference = shifts.Moments.of(weights)
    assert moments.n == 30000
    np.testing.assert_array_equal(moments.total, reference.total)
    np.testing.assert_array_equal(moments.outer, reference.outer)
    basis = moments.basis()
    value_range = functools.reduce(shifts.CoefficientRange.merge, (shifts.CoefficientRange.of_block(p, basis) for p in parts))
    np.testing.assert_array_equal(value_range.lo, shifts.CoefficientRange.of(weights, basis).lo)
    np.testing.assert_array_equal(value_range.hi, shifts.CoefficientRange.of(weights, basis).hi)
    histograms = functools.reduce(shifts.AxesHistograms.merge, (shifts.AxesHistograms.of_block(p, basis, value_range) for p in parts)).axes[0]
    reference = shifts.Histograms.of(weights, *shifts.group_codes(pa.array(labels)), basis, value_range)
    assert set(histograms.counts) == {"a", "b", "c"}
    for label, counts in reference.counts.items():
        np.testing.assert_array_equal(histograms.counts[label], counts)


def test_an_all_zero_filter_keeps_divisor_one():
    weights = np.array([[0] * 9, [1, -4, 2, 0, 0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(shifts.peak_scaled(weights), [[0] * 9, [0.25, -1, 0.5, 0, 0, 0, 0, 0, 0]])


def test_kl_matrix_equals_scipy_entropy_both_ways():
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 50, (4, 9, 70))
    p = shifts.probabilities(counts, rng.uniform(0.01, 0.1, 9))
    kl = shifts.symmetric_kl_matrix(p)
    for a in range(4):
        for b in range(4):
            expected = [entropy(p[a, k], p[b, k]) + entropy(p[b, k], p[a, k]) for k in range(9)]
            np.testing.assert_allclose(kl[a, b], expected, rtol=1e-9, atol=1e-12)


def silverman(values: np.ndarray) -> float:
    """Silverman's rule as KDEpy writes it, from the raw values."""
    std = values.std(ddof=1)
    iqr = (np.percentile(values, 75) - np.percentile(values, 25)) / 1.349
    return min(std, iqr) * (3 * len(values) / 4) ** (-1 / 5)


@pytest.mark.parametrize("name, values", [
    # right-skewed: the tail inflates the standard deviation (1.28x IQR / 1.349), the IQR branch is
    # the smaller (a longer tail would make 70 bins too coarse for the quartiles)
    ("lognormal", np.random.default_rng(5).lognormal(0, 0.6, 200000)),
    # two far-apart modes: the IQR spans the gap, the standard deviation branch is the smaller
    ("bimodal", np.concatenate([np.random.default_rng(6).normal(-3, 0.5, 100000), np.random.default_rng(7).normal(3, 0.5, 100000)])),
])
def test_binned_kde_bandwidth_follows_silverman_on_either_branch(name, values):
    std, iqr = values.std(ddof=1), (np.percentile(values, 75) - np.percentile(values, 25)) / 1.349
    assert abs(std - iqr) > 0.2 * min(std, iqr), name  # the two branches differ here
    counts, edges = np.histogram(values, bins=70)
    density, bandwidth = shifts.binned_kde(counts, edges[0], edges[-1])
    assert bandwidth == pytest.approx(silverman(values), rel=0.02)
    assert bandwidth != pytest.approx(max(std, iqr) * (3 * len(values) / 4) ** (-1 / 5), rel=0.1)  # not the other branch
    assert density.sum() * (edges[1] - edges[0]) == pytest.approx(1, abs=0.02)


def test_binned_kde_of_normal_data_is_the_normal_density():
    values = np.random.default_rng(5).standard_normal(200000)
    counts, edges = np.histogram(values, bins=70)
    density, _ = shifts.binned_kde(counts, edges[0], edges[-1])
    centres = (edges[:-1] + edges[1:]) / 2
    np.testing.assert_allclose(density, np.exp(-(centres**2) / 2) / np.sqrt(2 * np.pi), atol=0.01)


# --- bad input --------------------------------------------------------------------------------------------


def test_unknown_axis_names_the_choices(db):
    with pytest.raises(ShiftInputError, match="unknown axis 'colour'.*depth.*task.*width"):
        run_shifts(db, "colour")


def test_empty_selection_says_so(db):
    with pytest.raises(ShiftInputError, match="no filters match"):
        run_shifts(db, "task", where="task = 'no such task'")


@pytest.mark.parametrize("where, message", [
    ("task = = 'x'", "is not a SQL condition"),
    ("tsak = 'x'", "unknown column 'tsak'; the columns are: model_id, model_key, layer_index,"),
])
def test_a_bad_predicate_is_one_line_naming_the_problem(db, capsys, where, message):
    from flows.cli import main

    assert main(["shifts", "--db", str(db), "--by", "task", "--where", where]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and ".rs:" not in err and "Traceback" not in err


def test_the_command_reports_bad_input_with_exit_status_2(db, capsys):
    from flows.cli import main

    assert main(["shifts", "--db", str(db), "--by", "colour"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("filterdb shifts: unknown axis 'colour'") and len(err.strip().splitlines()) == 1


def test_missing_db_and_missing_basis_say_what_to_do(tmp_path, db):
    with pytest.raises(ShiftInputError, match="no filters.lance"):
        run_shifts(tmp_path, "task")
    with pytest.raises(ShiftInputError, match="no stored basis"):
        run_shifts(db, "task", basis=tmp_path)


def test_an_axis_with_one_group_is_one_line_saying_so(db, capsys):
    from flows.cli import main

    with pytest.raises(ShiftInputError, match="axis 'visual_category' has one group \\('natural'\\)"):
        run_shifts(db, "visual_category", write=False)
    assert main(["shifts", "--db", str(db), "--by", "task,visual_category"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("filterdb shifts: axis 'visual_category' has one group") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option, value", [("--range", "per-filter"), ("--sort", "size")])
def test_an_unknown_range_or_sort_names_the_choices(db, capsys, option, value):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_status:
        main(["shifts", "--db", str(db), "--by", "task", option, value])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in err and "Traceback" not in err


@pytest.mark.parametrize("options, message", [
    ({"range_mode": "per-filter"}, "unknown range 'per-filter': choose one of global, per-component"),
    ({"sort": "size"}, "unknown sort 'size': choose one of mean, name, none"),
    ({"by": "task,task"}, "axis 'task' is given twice"),
])
def test_bad_options_from_python_are_one_line(db, options, message):
    options = {"by": "task", **options}
    with pytest.raises(ShiftInputError, match=message) as error:
        run_shift_axes(db, **options)
    assert "\n" not in str(error.value)


def test_the_benchmark_prints_and_writes_its_figures(tmp_path, capsys):
    # A small synthetic DB (two models of 50k filters): the figures the JSON must hold, measured.
    import json

    from flows.cli import main

    out = tmp_path / "figures.json"
    assert main(["bench", "shifts", "--filters", "100k", "--repeats", "1", "--workers", "all", "--cache", str(tmp_path / "cache"), "--json", str(out)]) == 0
    assert "study's recipe" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["filters"] == 100_000
    for key in ("flow_filters_per_s", "study_filters_per_s", "scan_filters_per_s", "scan_kept_memory_filters_per_s", "peak_rss_bytes", "driver_peak_rss_bytes",
                "largest_worker_private_bytes"):
        assert figures[key] > 0, key
