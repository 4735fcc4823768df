"""Shift analysis (issue 5): the distributed flow against the study's recipe written out literally."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import entropy
from sklearn.decomposition import PCA

from flows.bench.shifts import synthetic_filters
from flows.bench.timing import PeakMemory
from flows.shifts import ShiftInputError, load_basis, print_shift_matrix, run_shifts
from ops import shifts
from ops.store import FILTERS_SCHEMA, META_COLUMNS

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


def make_db(path, n_per_model: int, rows_per_file: int = 7000):
    path.mkdir(parents=True, exist_ok=True)
    lance.write_dataset(filters_table(n_per_model), str(path / "filters.lance"), max_rows_per_file=rows_per_file)
    models = pa.table(
        {
            "model_id": [m[0] for m in MODELS] + ["broken"],
            "status": ["ok"] * len(MODELS) + ["failed"],
            "family": [m[1] for m in MODELS] + [None],
            "task": [m[2] for m in MODELS] + [None],
            "width": [m[3] for m in MODELS] + ["wide"],
        }
    )
    lance.write_dataset(models, str(path / "models.lance"))
    return path


def study_recipe(weights: np.ndarray, groups: np.ndarray, bins: int = 70):
    """The study's single-process recipe, literally: everything in memory, scikit-learn's PCA,
    numpy.histogram over the global range, float32-epsilon floor, scipy's entropy both ways.

    In float64: scikit-learn computes in its input's dtype, and float32 would put errors of ~2e-5 into
    the eigenvectors of close eigenvalues (the reference would be the less exact side)."""
    weights = weights.astype(np.float64)
    peak = np.abs(weights).max(axis=1)
    peak[peak == 0] = 1
    scaled = weights / peak[:, None]
    pca = PCA(n_components=9).fit(scaled)
    coefficients = pca.transform(scaled)
    names = sorted(set(groups))
    densities = {}
    for g in names:
        for k in range(9):
            counts, _ = np.histogram(coefficients[groups == g, k], bins=bins, range=(coefficients[:, k].min(), coefficients[:, k].max()))
            p = counts / counts.sum()
            p[p == 0] = np.finfo(np.float32).eps
            densities[g, k] = p / p.sum()
    weighted = np.zeros((len(names), len(names)))
    for a, ga in enumerate(names):
        for b, gb in enumerate(names):
            kl = [entropy(densities[ga, k], densities[gb, k]) + entropy(densities[gb, k], densities[ga, k]) for k in range(9)]
            weighted[a, b] = np.dot(pca.explained_variance_ratio_, kl)
    sizes = np.array([(groups == g).sum() for g in names])
    return pca, names, sizes, weighted


def selected(db, predicate="kind != 'transposed'", columns=("weights", "task")) -> pa.Table:
    return lance.dataset(str(db / "filters.lance")).to_table(columns=list(columns), filter=predicate)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("shifts") / "db", n_per_model=6000)


@pytest.fixture(scope="module")
def by_task(db, ray_session):
    return run_shifts(db, "task", progress=False)


# --- the flow against the study ----------------------------------------------------------------------


def test_flow_matches_the_study_recipe(db, by_task):
    table = selected(db)
    pca, names, sizes, weighted = study_recipe(shifts.weights_array(table.column("weights")), table.column("task").to_numpy(zero_copy_only=False))

    assert by_task.groups == names
    np.testing.assert_array_equal(by_task.sizes, sizes)
    cosine = np.abs((by_task.basis.components.astype(np.float64) * pca.components_).sum(axis=1))
    np.testing.assert_allclose(cosine, 1, atol=1e-6)  # components equal up to sign
    np.testing.assert_allclose(by_task.basis.explained_variance_ratio, pca.explained_variance_ratio_, atol=1e-5)
    np.testing.assert_allclose(by_task.kl_weighted, weighted, rtol=1e-4, atol=1e-12)
    assert weighted.max() > 0.01  # the groups do differ: the comparison is not between zeros


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


def odd_parts(n: int, seed: int) -> list[slice]:
    """Consecutive slices of 0..n at odd offsets, from 1 row to more than a chunk."""
    rng = np.random.default_rng(seed)
    sizes = [1, 2, 7, shifts.CHUNK_ROWS - 1, shifts.CHUNK_ROWS + 3, 999]
    bounds = np.cumsum([0, *sizes, *rng.integers(1, 3000, 40)])
    bounds = [*bounds[bounds < n], n]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


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


# --- stored basis and tables ----------------------------------------------------------------------------


def test_tables_are_written_under_analysis_tagged_with_the_db_version(db, by_task):
    version = lance.dataset(str(db / "filters.lance")).version
    basis = lance.dataset(str(db / "analysis" / "basis.lance")).to_table()
    histograms = lance.dataset(str(db / "analysis" / "histograms.lance")).to_table(filter="axis = 'task'")
    pairs = lance.dataset(str(db / "analysis" / "shifts.lance")).to_table(filter="axis = 'task'")

    assert basis.num_rows == 9 and set(basis.column("db_version").to_pylist()) == {version}
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
    fold = flows.shifts._fold
    monkeypatch.setattr(flows.shifts, "_fold", lambda *args, **kwargs: passes.append(args[1].__name__) or fold(*args, **kwargs))
    again = run_shifts(db, "task", write=False, progress=False)
    assert passes == ["_histograms_of_block"]
    np.testing.assert_array_equal(again.kl_weighted, by_task.kl_weighted)


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
    "read once": [("_fold_blocks", "_moments_of_block"), ("_fold_blocks", "_range_of_block"), ("_fold_blocks", "_histograms_of_block")],
    "read once per step": [("_fold", "_moments_of_block"), ("_fold", "_range_of_block"), ("_fold", "_histograms_of_block")],
    "stored basis": [("_fold", "_histograms_of_block")],
    "reused basis": [("_fold", "_histograms_of_block")],
}
"""(fold, adapter) of every step that ran: kept blocks are folded by _fold_blocks, Lance reads by _fold."""


def run_on_path(db, path: str, where: str, monkeypatch):
    """run_shifts of `where` along `path`, and the steps it ran."""
    import flows.shifts

    if path == "reused basis":
        run_shifts(db, "family", where=where, reuse=False, progress=False)  # stores the basis of `where`
    options = {"read once": {"cache": True, "reuse": False}, "read once per step": {"cache": False, "reuse": False}, "stored basis": {"basis": db}, "reused basis": {}}[path]
    steps = []
    with monkeypatch.context() as patch:
        for name in ("_fold", "_fold_blocks"):
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


def test_histograms_count_like_numpy_histogram():
    rng = np.random.default_rng(3)
    weights = synthetic_filters(rng, 50000, rng.uniform(-1, 1, 50000), rng.uniform(0, 1, 50000))
    basis = shifts.Moments.of(weights).basis()
    value_range = shifts.CoefficientRange.of(weights, basis)
    counts = shifts.Histograms.of(weights, np.zeros(50000, np.intp), ["all"], basis, value_range).counts["all"]
    coefficients = basis.project(weights)
    for k in range(9):
        expected, _ = np.histogram(coefficients[:, k], bins=70, range=(value_range.lo[k], value_range.hi[k]))
        assert np.abs(counts[k] - expected).sum() <= 4  # only float32 ties at bin edges may differ


def test_a_scaled_block_gives_the_aggregates_of_its_weights():
    # What the flow keeps in the object store: two batches whose group dictionaries differ.
    rng = np.random.default_rng(5)
    weights = synthetic_filters(rng, 30000, rng.uniform(-1, 1, 30000), rng.uniform(0, 1, 30000))
    labels = np.array(["b", "a", "c"])[rng.integers(0, 3, 30000)]
    first, second = slice(0, 12000), slice(12000, 30000)
    parts = [shifts.scaled_block(weights[s], *shifts.group_codes(pa.array(labels[s]))) for s in (first, second)]
    block = pa.concat_tables([parts[0], parts[1].slice(0, 0), parts[1]])

    codes, names = shifts.block_groups(block)
    np.testing.assert_array_equal(np.array(names)[codes], labels)
    moments = shifts.Moments.of_chunks(shifts.block_chunks(block))
    reference = shifts.Moments.of(weights)  # other chunks: the block's start at 0 and 12000
    assert moments.n == 30000
    np.testing.assert_array_equal(moments.total, reference.total)
    np.testing.assert_array_equal(moments.outer, reference.outer)
    basis = moments.basis()
    value_range = shifts.CoefficientRange.of_chunks(shifts.block_chunks(block), basis)
    np.testing.assert_array_equal(value_range.lo, shifts.CoefficientRange.of(weights, basis).lo)
    np.testing.assert_array_equal(value_range.hi, shifts.CoefficientRange.of(weights, basis).hi)
    histograms = shifts.Histograms.of_chunks(shifts.block_chunks(block), codes, names, basis, value_range)
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
    p = shifts.probabilities(counts)
    kl = shifts.symmetric_kl_matrix(p)
    for a in range(4):
        for b in range(4):
            expected = [entropy(p[a, k], p[b, k]) + entropy(p[b, k], p[a, k]) for k in range(9)]
            np.testing.assert_allclose(kl[a, b], expected, rtol=1e-9, atol=1e-12)


def test_binned_kde_bandwidth_follows_silverman():
    rng = np.random.default_rng(5)
    values = rng.standard_normal(200000)
    counts, edges = np.histogram(values, bins=70)
    density, bandwidth = shifts.binned_kde(counts, edges[0], edges[-1])
    assert bandwidth == pytest.approx(values.std(ddof=1) * (3 * len(values) / 4) ** (-1 / 5), rel=0.02)
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
    ("tsak = 'x'", "unknown column 'tsak'; the columns are: model_id, layer_index,"),
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
