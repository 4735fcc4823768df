"""The shift flow against the study's recipe, written out literally from its description (design.md,
"Distribution shift"), with numpy, scikit-learn and SciPy only: on synthetic filters and on the
trained demo zoo, for the default (one range for all components) and for `--range per-component`."""

from __future__ import annotations

import lance
import numpy as np
import pytest
from scipy.stats import entropy
from sklearn.decomposition import PCA

from flows.shifts import run_shift_axes
from test_shifts import make_db

TRAINED = "task != 'untrained' AND model_id NOT LIKE '%@%'"
"""The demo's analysed selection: its trained models, each once."""


def study_shifts(weights: np.ndarray, groups: np.ndarray, bins: int = 70, per_component: bool = False) -> tuple[list, np.ndarray, np.ndarray]:
    """The study's recipe on every filter in memory: each filter divided by its own max |w| (float32,
    as stored; an all-zero filter by 1), scikit-learn's PCA with 9 components (in float64), the
    coefficients binned into `bins` bins over ONE (min, max) over all coefficients of all components
    (or, per_component, each component's own), `np.histogram(density=True)`, float64, zero bins set
    to float32 epsilon, renormalised, `scipy.stats.entropy` both ways, summed with the weights
    `explained_variance_ratio_`. Returns (group names, sizes, weighted KL matrix) in name order."""
    peak = np.abs(weights).max(axis=1)
    peak[peak == 0] = 1
    scaled = (weights / peak[:, None]).astype(np.float64)
    pca = PCA(n_components=9).fit(scaled)
    coefficients = pca.transform(scaled)
    whole_range = (coefficients.min(), coefficients.max())
    names = sorted(set(groups.tolist()))
    densities = {}
    for g in names:
        members = coefficients[groups == g]
        for k in range(9):
            value_range = (coefficients[:, k].min(), coefficients[:, k].max()) if per_component else whole_range
            density, _ = np.histogram(members[:, k], range=value_range, bins=bins, density=True)
            density = density.astype(np.float64)
            density[density == 0] = np.finfo(np.float32).eps
            densities[g, k] = density / density.sum()
    weighted = np.zeros((len(names), len(names)))
    for a, ga in enumerate(names):
        for b, gb in enumerate(names):
            kl = [entropy(densities[ga, k], densities[gb, k]) + entropy(densities[gb, k], densities[ga, k]) for k in range(9)]
            weighted[a, b] = np.dot(pca.explained_variance_ratio_, kl)
    sizes = np.array([(groups == g).sum() for g in names])
    return names, sizes, weighted


def depth_bin_labels(conv_depth_norm: np.ndarray) -> np.ndarray:
    """'[0.0, 0.1]', '(0.1, 0.2]', ..., '(0.9, 1.0]': bins closed on the right, 0 in the first."""
    labels = ["[0.0, 0.1]"] + [f"({k / 10:.1f}, {(k + 1) / 10:.1f}]" for k in range(1, 10)]
    return np.array(labels)[np.digitize(conv_depth_norm, np.arange(1, 10) / 10, right=True)]


def study_of_db(db, predicate: str, axis: str, per_component: bool = False):
    """The study's recipe on the filters of `db` matching `predicate`, read with Lance directly."""
    column = "conv_depth_norm" if axis == "depth" else axis
    table = lance.dataset(str(db / "filters.lance")).to_table(columns=["weights", column], filter=predicate)
    weights = table.column("weights").combine_chunks().flatten().to_numpy().reshape(-1, 9)
    values = table.column(column).to_numpy(zero_copy_only=False)
    groups = depth_bin_labels(values) if axis == "depth" else values.astype(str)
    return study_shifts(weights, groups, per_component=per_component)


def assert_matches_the_study(result, names, sizes, weighted):
    """Every pair within 1e-4 relative, group by group (the flow's order is its display order)."""
    assert sorted(result.groups) == names
    order = [result.groups.index(g) for g in names]
    np.testing.assert_array_equal(result.sizes[order], sizes)
    np.testing.assert_allclose(result.kl_weighted[np.ix_(order, order)], weighted, rtol=1e-4, atol=1e-12)
    assert weighted.max() > 0.01  # the groups do differ: the comparison is not between zeros


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory):
    return make_db(tmp_path_factory.mktemp("study") / "db", n_per_model=6000)


AXES = ("task", "family", "depth")


@pytest.fixture(scope="module")
def synthetic_results(synthetic_db, ray_session):
    return run_shift_axes(synthetic_db, ",".join(AXES), write=False, reuse=False, progress=False)


@pytest.mark.parametrize("axis", AXES)
def test_the_default_is_the_study_recipe_on_synthetic_filters(synthetic_db, synthetic_results, axis):
    assert_matches_the_study(synthetic_results[axis], *study_of_db(synthetic_db, "kind != 'transposed'", axis))


@pytest.mark.parametrize("axis", ["task", "model_id"])
def test_the_per_component_range_matches_its_literal_reference(synthetic_db, ray_session, axis):
    result = run_shift_axes(synthetic_db, axis, range_mode="per-component", write=False, reuse=False, progress=False)[axis]
    assert result.range_mode == "per-component"
    assert_matches_the_study(result, *study_of_db(synthetic_db, "kind != 'transposed'", axis, per_component=True))


@pytest.fixture(scope="module")
def demo_db(quick_demo):
    out, status = quick_demo
    assert status == 0, "the quick demo failed: no DB to analyse"
    return out / "db"


DEMO_AXES = ("task", "visual_category", "depth")


@pytest.fixture(scope="module")
def demo_results(demo_db, ray_session):
    return run_shift_axes(demo_db, list(DEMO_AXES), where=TRAINED, write=False, reuse=False, progress=False)


@pytest.mark.parametrize("axis", DEMO_AXES)
def test_the_default_is_the_study_recipe_on_the_trained_demo_zoo(demo_db, demo_results, axis):
    # The demo's denoisers hold transposed layers: the study's selection leaves them out.
    assert_matches_the_study(demo_results[axis], *study_of_db(demo_db, f"({TRAINED}) AND kind != 'transposed'", axis))


def test_groups_are_shown_like_the_study(synthetic_results):
    task = synthetic_results["task"]
    means = task.kl_weighted.mean(axis=0)
    assert task.sort == "mean" and np.all(np.diff(means) >= 0)
    depth = synthetic_results["depth"]
    assert depth.groups == sorted(depth.groups, key=lambda g: float(g.split(",")[0][1:]))  # bins in order


def test_the_per_component_range_matches_its_literal_reference_on_the_demo_zoo(demo_db, ray_session):
    results = run_shift_axes(demo_db, "visual_category,depth", where=TRAINED, range_mode="per-component", write=False, reuse=False, progress=False)
    for axis, result in results.items():
        assert_matches_the_study(result, *study_of_db(demo_db, f"({TRAINED}) AND kind != 'transposed'", axis, per_component=True))
