"""Layer quality metrics (ops.metrics): agreement with torchconvquality 0.3.0 and a numpy SVD,
the edge cases design.md defines, and the degeneracy classification."""

import math
import warnings

import numpy as np
import pytest
import torch

from ops.metrics import (
    DegeneracyThresholds,
    classify_layer,
    layer_quality,
    orthogonality,
    quality_of_layers,
    sparsity,
    variance_entropy,
    variance_entropy_clean,
    variance_entropy_clean_norm,
    variance_entropy_norm,
)
from ops.store import QUALITY_COLUMNS

with warnings.catch_warnings():  # it imports distutils
    warnings.simplefilter("ignore", DeprecationWarning)
    import torchconvquality as tcq  # a pinned dependency: the peer `filterdb bench quality` measures against

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")

PEER_TOLERANCE = {"sparsity": 0.0, "variance_entropy": 3e-7, "variance_entropy_norm": 3e-7,
                  "variance_entropy_clean": 3e-7, "variance_entropy_clean_norm": 3e-7, "orthogonality": 1e-7}
"""Largest |ours - torchconvquality| allowed on ordinary layers. Measured on the layers of the tests below
(torch 2.14.1, CPU): sparsity equal, entropies within 1.4e-7, orthogonality within 5.4e-8; torchconvquality's
float32 SVD is itself within about 1e-7 of a float64 SVD there."""

SPARSE_PEER_TOLERANCE = {**PEER_TOLERANCE, "variance_entropy": 2e-6, "variance_entropy_norm": 2e-6}
"""The same on layers whose sparse filters sit far from the others' mean, so that one direction
dominates the full spectrum: measured within 1.1e-6 on `sparse_layers` (both sides are about 1e-6 from a
float64 SVD there: float32 SVD, float32 products); the clean entropies agree as on ordinary layers."""


def conv3x3_weights(model):
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]


def assert_metrics_match(ours, reference, tol: float | dict = PEER_TOLERANCE):
    """Every metric equal within tol (one number, or one per metric); NaN only where the reference is NaN."""
    for key in QUALITY_COLUMNS:
        a, b = ours[key], float(reference[key])
        allowed = tol[key] if isinstance(tol, dict) else tol
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= allowed, (key, a, b)


def numpy_variance_entropy(W):
    """Brute force: float64 SVD of the centred n x 9 filters, 0 log 0 = 0."""
    F = W.detach().double().reshape(-1, 9).cpu().numpy()
    variances = np.linalg.svd(F - F.mean(0), compute_uv=False) ** 2
    if variances.sum() == 0:
        return 0.0
    p = variances / variances.sum()
    p = p[p > 0]
    return float(-(p * np.log10(p)).sum())


def h(n):
    return 1.2618047 / (1 + math.exp(-0.88767525 * (math.log2(n) - 2.30436435))) - 0.31050834


@pytest.fixture(scope="module")
def timm_layers():
    """3x3 layers of three randomly initialised timm models (plain, depthwise, grouped)."""
    import timm

    torch.manual_seed(0)
    names = ("resnet18", "mobilenetv3_small_100", "efficientnet_b0")
    return {name: conv3x3_weights(timm.create_model(name, pretrained=False)) for name in names}


@pytest.fixture(scope="module")
def timm_quality(timm_layers):
    return {name: quality_of_layers(weights) for name, weights in timm_layers.items()}


@pytest.fixture(scope="module")
def digits_cnn():
    """A small CNN trained for about 2 s on sklearn's digits: (weights at init, weights trained)."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(digits.target)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )
    initial = [w.clone() for w in conv3x3_weights(model)]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is faster, and much faster on a busy machine
    try:
        for _ in range(4):
            for batch in torch.randperm(len(x)).split(64):
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.7, "the digits CNN did not train"
    return initial, conv3x3_weights(model)


@pytest.fixture(scope="module")
def sparse_layers(timm_layers, digits_cnn):
    """Layers with sparse and near-sparse filters, whose clean entropies differ from the plain ones."""
    generator = torch.Generator().manual_seed(13)

    def rescaled(W, share, low, high):
        """W with `share` of its filters (never the one holding the peak) rescaled so that their largest
        |w| is between low and high times the layer's peak."""
        flat = W.reshape(-1, 9).clone()
        peaks = flat.abs().amax(1)
        order = torch.randperm(len(flat), generator=generator)
        chosen = order[order != peaks.argmax()][: int(share * len(flat))]
        target = low + (high - low) * torch.rand(len(chosen), 1, generator=generator)
        flat[chosen] *= target * peaks.max() / peaks[chosen, None]
        return flat.view(W.shape)

    def pruned(W, share, factor):
        """W with its `share` of filters of smallest L1 norm multiplied by factor (0: magnitude pruning)."""
        flat = W.reshape(-1, 9).clone()
        smallest = flat.abs().sum(1).argsort()[: int(share * len(flat))]
        flat[smallest] *= factor
        return flat.view(W.shape)

    offset = torch.randn(9, generator=generator).view(3, 3)  # a mean pattern: sparse filters then sit far from the others
    plain = timm_layers["resnet18"][3] + 2 * timm_layers["resnet18"][3].std() * offset
    depthwise = timm_layers["mobilenetv3_small_100"][1] + timm_layers["mobilenetv3_small_100"][1].std() * offset
    trained = digits_cnn[1][2]
    return {
        "30% zeroed": rescaled(plain, 0.3, 0.0, 0.0),
        "sparse, not zero (0.1-0.9 eps)": rescaled(plain, 0.4, 0.001, 0.009),
        "near-sparse (1.1-3 eps) and sparse": rescaled(rescaled(plain, 0.3, 0.011, 0.03), 0.2, 0.002, 0.008),
        "depthwise, a third sparse": rescaled(depthwise, 0.33, 0.0005, 0.009),
        "trained, 60% pruned": pruned(trained, 0.6, 0.0),
        "trained, 40% shrunk to 1e-3": pruned(trained, 0.4, 1e-3),
    }


# Agreement with torchconvquality and with a numpy SVD


def test_matches_torchconvquality_on_random_timm_layers(timm_layers, timm_quality):
    for name, weights in timm_layers.items():
        for W, ours in zip(weights, timm_quality[name]):
            assert_metrics_match(ours, tcq.measure_conv_weight_quality(W))


def test_matches_torchconvquality_on_sparse_and_near_sparse_layers(sparse_layers):
    for name, W in sparse_layers.items():
        ours, reference = layer_quality(W), tcq.measure_conv_weight_quality(W)
        assert 0.15 < ours["sparsity"] < 0.65, name
        assert abs(ours["variance_entropy_clean"] - ours["variance_entropy"]) > 1e-4, f"{name}: the clean path is not tested"
        assert_metrics_match(ours, reference, SPARSE_PEER_TOLERANCE)


def test_timm_layers_include_depthwise_and_three_channel_input_layers(timm_layers):
    shapes = {tuple(W.shape[1:]) for weights in timm_layers.values() for W in weights}
    assert (1, 3, 3) in shapes and (3, 3, 3) in shapes


def test_matches_torchconvquality_on_cnn_trained_on_digits(digits_cnn):
    for W in digits_cnn[1]:
        assert_metrics_match(layer_quality(W), tcq.measure_conv_weight_quality(W))


def test_variance_entropy_matches_numpy_svd():
    torch.manual_seed(1)
    pattern = torch.randn(9)
    ordinary = [
        torch.randn(64, 32, 3, 3),
        torch.rand(7, 3, 3, 3),  # n = 21
        torch.randn(5000, 1, 3, 3),  # above one float32 block of the scatter matrix
        torch.randn(40, 40, 3, 3) * torch.tensor([3.0, 1, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0]).view(3, 3),
    ]
    one_direction_dominates = [
        (torch.randn(600, 8, 1) * pattern + 0.01 * torch.randn(600, 8, 9)).view(600, 8, 3, 3),  # nearly rank one
        # more than one chunk of the CPU pass, the first chunk far from the others
        torch.cat([0.1 * torch.randn(16384, 9) + 1, 0.1 * torch.randn(30000, 9) - 1]).view(-1, 1, 3, 3),
    ]
    # float32 products summed in float64. Measured (torch 2.14.1, these layers drawn with seeds 0-19): within
    # 3.3e-9 on the ordinary layers, up to 2.7e-6 on the others (median 7e-7); float64 weights within 4.3e-15.
    for layers, tolerance in ((ordinary, 6e-9), (one_direction_dominates, 5e-6)):
        for W in layers:
            n = W.shape[0] * W.shape[1]
            assert variance_entropy(W) == pytest.approx(numpy_variance_entropy(W), abs=tolerance)
            assert variance_entropy_norm(W) == pytest.approx(numpy_variance_entropy(W) / h(n), abs=tolerance)
            assert variance_entropy(W.double()) == pytest.approx(numpy_variance_entropy(W), abs=1e-14)


def test_clean_entropy_is_the_entropy_of_the_non_sparse_filters_alone():
    torch.manual_seed(2)
    W = 1 + 0.3 * torch.randn(32, 16, 3, 3)
    W[:, ::2] = 0  # half the filters sparse, far from the others: they dominate the full spectrum
    kept = W[:, 1::2]
    assert variance_entropy_clean(W) == pytest.approx(numpy_variance_entropy(kept), abs=1e-10)  # measured (seeds 0-29): 5.2e-11
    assert variance_entropy_clean_norm(W) == pytest.approx(numpy_variance_entropy(kept) / h(256), abs=1e-10)
    assert variance_entropy_clean(W) != pytest.approx(variance_entropy(W), abs=1e-3)


def test_sparsity_counts_filters_whose_weights_are_all_below_eps_times_the_peak():
    W = torch.full((4, 5, 3, 3), 0.5)
    W[0, 0, 1, 1] = 2.0  # peak: threshold 0.02
    W[1, :3] = 0.015  # sparse
    W[2, :2] = -0.019  # sparse
    W[3, :2] = 0.015
    W[3, 0, 0, 0] = 0.03  # one weight above the threshold: not sparse
    assert sparsity(W) == pytest.approx(6 / 20)
    assert sparsity(W, eps=0.001) == 0.0
    assert sparsity(W) == pytest.approx(tcq.sparsity(W)[0])


def test_orthogonality_is_one_minus_mean_absolute_cosine_between_rows():
    torch.manual_seed(3)
    W = torch.randn(6, 4, 3, 3)
    rows = W.reshape(6, -1).double().numpy()
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosines = np.abs(unit @ unit.T)[~np.eye(6, dtype=bool)]
    assert orthogonality(W) == pytest.approx(1 - cosines.mean(), abs=5e-8)  # float32 products; measured (seeds 0-29) 3.2e-8


# Edge cases of design.md, and where torchconvquality breaks


def test_all_zero_layer_is_fully_sparse_with_zero_entropy_and_nan_orthogonality():
    q = layer_quality(torch.zeros(8, 4, 3, 3))
    assert q["sparsity"] == 1.0
    assert q["variance_entropy"] == 0.0 and q["variance_entropy_norm"] == 0.0
    assert math.isnan(q["variance_entropy_clean"]) and math.isnan(q["variance_entropy_clean_norm"])
    assert math.isnan(q["orthogonality"])


def test_torchconvquality_gives_all_zero_layer_orthogonality_one_minus_inverse_count():
    # Its own test expects 0; its formula gives 1 - out / (out (out - 1)). We define NaN.
    assert tcq.orthogonality(torch.zeros(8, 4, 3, 3)) == pytest.approx(1 - 1 / 7)


def test_clean_entropy_is_nan_when_no_filter_is_non_sparse():
    W = torch.randn(8, 4, 3, 3)
    assert math.isnan(variance_entropy_clean(W, eps=2.0))  # eps > 1: every filter is sparse
    assert math.isnan(variance_entropy_clean_norm(W, eps=2.0))
    assert sparsity(W, eps=2.0) == 1.0


def test_one_output_channel_has_nan_orthogonality_where_torchconvquality_divides_by_zero():
    torch.manual_seed(15)
    W = torch.randn(1, 16, 3, 3)
    assert math.isnan(orthogonality(W))
    assert not math.isfinite(tcq.orthogonality(W))  # -inf or NaN, as the rounding of |w.w - 1| falls
    assert variance_entropy(W) == pytest.approx(numpy_variance_entropy(W), abs=5e-9)  # measured (seeds 0-29): 2.8e-9


def test_single_filter_has_zero_entropy_where_torchconvquality_gives_nan():
    W = torch.randn(1, 1, 3, 3)
    q = layer_quality(W)
    assert q["sparsity"] == 0.0
    assert q["variance_entropy"] == 0.0 and q["variance_entropy_clean"] == 0.0
    assert math.isnan(q["variance_entropy_norm"]) and math.isnan(q["orthogonality"])
    assert math.isnan(tcq.variance_entropy(W)[0])


def test_normalised_entropy_is_nan_for_two_filters_and_finite_for_three():
    assert math.isnan(variance_entropy_norm(torch.randn(2, 1, 3, 3)))
    assert math.isfinite(variance_entropy_norm(torch.randn(3, 1, 3, 3)))
    assert h(2) <= 0 < h(3)


def test_nine_or_fewer_filters_match_numpy_svd():
    torch.manual_seed(4)
    for n in range(2, 10):
        W = torch.randn(n, 1, 3, 3)
        assert variance_entropy(W) == pytest.approx(numpy_variance_entropy(W), abs=1.5e-8)  # measured (seeds 0-29): 7.7e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_filters_have_zero_entropy_where_torchconvquality_gives_nan_or_noise(dtype):
    torch.manual_seed(14)
    W = torch.randn(1, 1, 3, 3, dtype=dtype).expand(200, 100, 3, 3).contiguous()  # more than one CPU chunk
    q = layer_quality(W)
    assert q["variance_entropy"] == 0.0 and q["variance_entropy_norm"] == 0.0
    assert q["variance_entropy_clean"] == 0.0
    # cosines of identical rows round to 1 in the passes' dtype: measured up to 3.1e-7 (float32), 1.2e-14 (float64)
    assert q["orthogonality"] == pytest.approx(0.0, abs=1e-6 if dtype == torch.float32 else 1e-13)
    theirs = tcq.variance_entropy(W)[0]  # NaN in float32; in float64 NaN or rounding noise (1e-25), by seed
    assert math.isnan(theirs) or theirs != 0.0


@pytest.mark.parametrize("dtype, power", [(torch.float32, -90), (torch.float32, 100), (torch.float64, -900)])
def test_scaling_by_a_power_of_two_changes_no_metric(dtype, power):
    torch.manual_seed(5)
    W = torch.randn(32, 16, 3, 3, dtype=dtype)
    W[:, :3] *= 1e-3  # some sparse filters, so that the clean entropy differs
    assert layer_quality(W * 2.0**power) == layer_quality(W)


def test_tiny_weights_keep_their_metrics_where_torchconvquality_underflows():
    torch.manual_seed(6)
    W = torch.randn(16, 16, 3, 3)
    assert_metrics_match(layer_quality(W * 1e-30), layer_quality(W), tol=4e-8)  # measured (seeds 0-29): 2.0e-8
    assert tcq.variance_entropy(W * 1e-30)[0] == 0.0  # the squares underflow to zero in float32
    assert variance_entropy(W) > 0.9


def test_depthwise_layer_matches_torchconvquality():
    torch.manual_seed(7)
    W = torch.nn.Conv2d(96, 96, 3, groups=96).weight.detach()
    assert W.shape == (96, 1, 3, 3)
    assert_metrics_match(layer_quality(W), tcq.measure_conv_weight_quality(W))


def test_transposed_layer_is_measured_as_stored_with_dim0_rows():
    torch.manual_seed(8)
    W = torch.nn.ConvTranspose2d(8, 4, 3).weight.detach()  # (in, out, 3, 3)
    assert W.shape == (8, 4, 3, 3)
    rows = W.reshape(8, -1).double().numpy()
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert orthogonality(W) == pytest.approx(1 - np.abs(unit @ unit.T)[~np.eye(8, dtype=bool)].mean(), abs=6e-8)  # measured (seeds 0-29): 3.3e-8
    assert_metrics_match(layer_quality(W), tcq.measure_conv_weight_quality(W))


def test_torchconvquality_skips_conv2d_subclasses_that_we_measure():
    class StandardisedConv2d(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), StandardisedConv2d(8, 16, 3))
    assert list(tcq.measure_quality(model)) == ["0"]
    W = model[1].weight.detach()
    assert_metrics_match(layer_quality(W), tcq.measure_layer_quality(model[1]))


def test_half_and_double_weights_give_the_metrics_of_their_values():
    torch.manual_seed(9)
    W = torch.randn(24, 12, 3, 3)
    assert_metrics_match(layer_quality(W.double()), layer_quality(W), tol=3e-8)  # float32 products; measured (seeds 0-29): 1.6e-8
    assert_metrics_match(layer_quality(W.half()), layer_quality(W.half().float()), tol=0)  # the same values


def test_parameters_that_require_grad_are_accepted():
    conv = torch.nn.Conv2d(4, 8, 3)
    assert_metrics_match(layer_quality(conv.weight), layer_quality(conv.weight.detach()), tol=0)


# The API


def test_layer_quality_is_keyed_by_the_quality_columns():
    assert tuple(layer_quality(torch.randn(4, 4, 3, 3))) == QUALITY_COLUMNS


def test_single_metric_functions_equal_layer_quality():
    torch.manual_seed(10)
    W = torch.randn(16, 8, 3, 3)
    W[:4] = 0
    functions = {
        "sparsity": sparsity,
        "variance_entropy": variance_entropy,
        "variance_entropy_norm": variance_entropy_norm,
        "variance_entropy_clean": variance_entropy_clean,
        "variance_entropy_clean_norm": variance_entropy_clean_norm,
        "orthogonality": orthogonality,
    }
    assert_metrics_match({key: f(W) for key, f in functions.items()}, layer_quality(W), tol=1e-12)


def test_quality_of_layers_equals_layer_quality_of_each_layer(timm_layers):
    weights = timm_layers["mobilenetv3_small_100"] + [torch.zeros(4, 4, 3, 3), torch.randn(1, 1, 3, 3)]
    for W, q in zip(weights, quality_of_layers(weights)):
        assert_metrics_match(q, layer_quality(W), tol=1e-12)
    assert quality_of_layers([]) == []


@needs_cuda
def test_cuda_weights_give_the_cpu_results(timm_layers):
    weights = timm_layers["mobilenetv3_small_100"] + timm_layers["resnet18"][:4]
    on_gpu = quality_of_layers([W.cuda() for W in weights])
    for q, W in zip(on_gpu, weights):  # float64 on CUDA; the CPU path is within 5e-8 of float64 references (above)
        assert_metrics_match(q, layer_quality(W), tol=1e-7)
    assert_metrics_match(layer_quality(weights[0].cuda()), quality_of_layers(weights[:1], device="cuda")[0], tol=1e-12)


@needs_cuda
def test_torchconvquality_orthogonality_fails_on_cuda():
    with pytest.raises(RuntimeError):
        tcq.orthogonality(torch.randn(8, 4, 3, 3, device="cuda"))


# Degeneracy classification


def test_randomly_initialised_layers_are_random_looking(timm_quality):
    for qualities in timm_quality.values():
        for q in qualities:
            assert classify_layer(q) == ("random_looking",)


def test_trained_layers_are_not_random_looking(digits_cnn):
    initial, trained = digits_cnn
    for W0, W in zip(initial[1:], trained[1:]):  # the first layer has only 16 filters: see DegeneracyThresholds
        assert classify_layer(layer_quality(W0)) == ("random_looking",)
        assert classify_layer(layer_quality(W)) == ()


def test_layer_with_most_filters_zeroed_is_sparse():
    torch.manual_seed(11)
    W = torch.randn(64, 64, 3, 3)
    W[:, :48] = 0
    assert layer_quality(W)["sparsity"] == 0.75
    assert "sparse" in classify_layer(layer_quality(W))


def test_layer_of_one_repeated_pattern_is_low_diversity():
    torch.manual_seed(12)
    pattern = torch.randn(9)
    W = (torch.randn(64, 64, 1) * pattern + 0.1 * torch.randn(64, 64, 9)).view(64, 64, 3, 3)
    assert classify_layer(layer_quality(W)) == ("low_diversity",)


def test_thresholds_decide_the_labels():
    q = {"sparsity": 0.3, "variance_entropy_norm": 0.7}
    assert classify_layer(q) == ()
    assert classify_layer(q, DegeneracyThresholds(sparse=0.2, low_diversity=0.8)) == ("sparse", "low_diversity")
    assert classify_layer(q, DegeneracyThresholds(random_looking=0.6)) == ("random_looking",)
    assert classify_layer({"sparsity": 0.0, "variance_entropy_norm": math.nan}) == ()
