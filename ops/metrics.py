"""Quality metrics of one convolution layer: sparsity, variance entropy and orthogonality.

Definitions: design.md, "Metrics of one layer". W is a weight tensor as stored, shape
(d0, d1, kh, kw) (for a transposed layer d0 is its `in`); F = W reshaped to n x (kh*kw), n = d0*d1.
The metrics are defined for 3x3 kernels (h(n) was fitted on 9-d filters); other sizes compute but
mean little. They match torchconvquality 0.3.0 on ordinary layers and define what it leaves open:

- 0 * log 0 = 0; an all-zero layer has sparsity 1 and variance entropy 0;
- variance entropy is 0 when the filters have no variance (one filter, identical filters);
- normalised entropies are NaN where h(n) <= 0, i.e. n <= 2 filters;
- clean entropies are NaN when every filter is sparse (an all-zero layer, or eps > 1);
- orthogonality is NaN for one row (dim 0 of size 1) or an all-zero layer.

Numerics. No metric changes when W is multiplied by a power of two, and that is how the filters are
brought to max|w| in [0.5, 1) before they are squared, so that tiny (1e-30) or huge weights
neither under- nor overflow. The spectrum comes from the 9 x 9 scatter matrix of the centred
filters (eigvalsh) instead of an SVD of the n x 9 matrix. On CPU the passes over the data run in
float32 (float64 for float64 weights), in chunks that stay in cache, with float32 products summed
in float64 per block of rows. The bounds tests/test_metrics.py holds (with the differences measured
there): VE within 6e-9 of a float64 SVD on ordinary layers (measured 3.3e-9); within 5e-6 when one
direction dominates the spectrum, as in nearly rank-one layers, a first FILTER_CHUNK of filters far
from the others, or sparse filters far from the others' mean (measured up to 2.7e-6; on such a
sparse layer ours was 1.8e-6 off and torchconvquality's float32 SVD 7e-7). On CUDA everything runs in float64, so
no TF32 matmul setting can degrade the results.
Inputs are trusted: a 4-d, finite floating tensor.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ops.store import QUALITY_COLUMNS

H_L, H_X0, H_K, H_B = 1.2618047, 2.30436435, 0.88767525, -0.31050834
"""Constants of h(n) = L / (1 + exp(-k (log2 n - x0))) + b, the lowest VE of n random filters."""

FILTER_CHUNK = 16384
"""Filters per chunk of a pass on CPU (about 0.6 MB of float32: stays in cache between ops)."""

GRAM_BLOCK = 4096
"""Rows per float32 block of the scatter matrix; the blocks are summed in float64."""

COSINE_BLOCK = 128
"""Rows per block of the cosine matrix in orthogonality."""

NO_VARIANCE = 2.0**-80
"""Scatter trace per filter (max|w| scaled to [0.5, 1)) below which the filters count as identical.

Identical float32 filters centre to exact zeros; identical float64 ones leave rounding noise of about
2^-106 per filter, which would otherwise read as a spread-out spectrum. Anything a float32 weight
can express is far above."""


def entropy_floor(n: torch.Tensor) -> torch.Tensor:
    """h(n) of design.md for a float tensor of filter counts; h(n) <= 0 for n <= 2 (and n = 0)."""
    return H_L / (1 + torch.exp(-H_K * (torch.log2(n) - H_X0))) + H_B


class _Summary(NamedTuple):
    """What one pass over a batch of B layers' filters gives, per layer."""

    count: torch.Tensor  # (B,) float64: filters per layer
    peak: torch.Tensor  # (B,) max |w|
    scatter: torch.Tensor  # (B, k, k) float64: X^T X of X = (F - mean) * scale
    sparse: torch.Tensor  # (B, n) bool: every |w| of the filter < eps * peak; all, if peak == 0


def _filters(W: torch.Tensor) -> torch.Tensor:
    """W as an n x (kh*kw) matrix in the dtype the passes run in (see module docstring)."""
    wide = W.dtype == torch.float64 or W.device.type == "cuda"
    return W.detach().reshape(W.shape[0] * W.shape[1], -1).to(torch.float64 if wide else torch.float32)


def _power_of_two_scale(peak: torch.Tensor) -> torch.Tensor:
    """The power of two that brings peak into [0.5, 1) (1 for peak 0), clamped to stay finite."""
    limit = math.frexp(torch.finfo(peak.dtype).max)[1] - 2
    return torch.ldexp(torch.ones_like(peak), (-torch.frexp(peak).exponent).clamp(-limit, limit))


def _sparse_threshold(peak: torch.Tensor, eps: float) -> torch.Tensor:
    """eps * peak in float64, rounded up to peak's dtype: for w of that dtype, |w| < the result
    exactly when |w| < eps * peak."""
    exact = eps * peak.double()
    rounded = exact.to(peak.dtype)
    return torch.where(rounded < exact, torch.nextafter(rounded, torch.full_like(rounded, math.inf)), rounded)


def _gram(X: torch.Tensor) -> torch.Tensor:
    """X^T X of each (m, k) matrix of X (B, m, k), in float64: float32 products summed per
    GRAM_BLOCK rows, the blocks summed in float64. Float64 input, and the last m % GRAM_BLOCK
    rows, are multiplied in float64."""
    B, m, k = X.shape
    head = m - m % GRAM_BLOCK if X.dtype == torch.float32 else 0
    tail = X[:, head:].double()
    gram = tail.transpose(1, 2) @ tail
    if head:
        blocks = X[:, :head].reshape(-1, GRAM_BLOCK, k)
        gram += (blocks.transpose(1, 2) @ blocks).view(B, -1, k, k).sum(1, dtype=torch.float64)
    return gram


def _filter_peaks(part: torch.Tensor) -> torch.Tensor:
    """max |w| of each filter of part (B, m, k); max_pool1d over the flat rows is twice as fast
    as amax(dim=-1) on CPU."""
    B, m, k = part.shape
    return torch.nn.functional.max_pool1d(part.abs().view(B, 1, m * k), k).view(B, m)


def _summarise(F: torch.Tensor, eps: float) -> _Summary:
    """One read for max |w|, then one pass over the filters F (B, n, k), chunk by chunk of
    FILTER_CHUNK filters on CPU (one chunk on CUDA): each chunk is shifted by the first chunk's
    mean and scaled (X), its column sums and X^T X are added up, and its sparse filters found.
    scatter = sum X^T X - (sum X)(sum X)^T / n; the shift is near the mean, so little cancels.
    The first chunk's mean is summed in float64: identical float32 filters centre to exact zeros."""
    B, n, k = F.shape
    count = torch.full((B,), n, dtype=torch.float64, device=F.device)
    if n == 0:
        zero = torch.zeros(B, dtype=F.dtype, device=F.device)
        return _Summary(count, zero, torch.zeros(B, k, k, dtype=torch.float64, device=F.device), F[..., 0] != 0)
    if B == 1:  # one read of the data; aminmax(dim=1) is several times slower on CPU
        low, high = (x.view(1) for x in torch.aminmax(F))
    else:
        low, high = F.reshape(B, -1).amin(1), F.reshape(B, -1).amax(1)
    peak = torch.maximum(high, -low)
    scale = _power_of_two_scale(peak)[:, None, None]
    threshold = _sparse_threshold(peak, eps)[:, None]
    parts = F.split(FILTER_CHUNK if F.device.type == "cpu" else n, dim=1)
    shift = -(parts[0].sum(1, dtype=torch.float64) / parts[0].shape[1]).to(F.dtype)[:, None, :] * scale
    sums = torch.zeros(B, k, dtype=torch.float64, device=F.device)
    products = torch.zeros(B, k, k, dtype=torch.float64, device=F.device)
    sparse = []
    for part in parts:
        X = torch.addcmul(shift, part, scale)
        sums += X.sum(1)
        products += _gram(X)
        sparse.append(_filter_peaks(part) < threshold)
    scatter = products - sums[:, :, None] * sums[:, None, :] / n
    return _Summary(count, peak, scatter, torch.cat(sparse, dim=1) | (peak == 0)[:, None])


def _variance_entropy_of(scatter: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """VE = -sum p_i log10 p_i of the scatter's eigenvalue shares, batched over leading dimensions.

    0 * log 0 = 0; VE = 0 when the filters have no variance (trace below count * NO_VARIANCE);
    NaN when count is 0."""
    eigenvalues = torch.linalg.eigvalsh(scatter).clamp(min=0)
    total = eigenvalues.sum(-1, keepdim=True)
    shares = torch.where(total > count[..., None] * NO_VARIANCE, eigenvalues / total, 0.0)
    entropy = torch.special.entr(shares).sum(-1) / math.log(10)  # entr(p) = -p ln p, entr(0) = 0
    return torch.where(count > 0, entropy, math.nan)


def _normalised(entropy: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """VE / h(n); NaN where h(n) <= 0 (n <= 2)."""
    floor = entropy_floor(count)
    return torch.where(floor > 0, entropy / floor, math.nan)


def _orthogonality_of(F: torch.Tensor, rows: int, peak: torch.Tensor) -> torch.Tensor:
    """1 - mean |cosine| between distinct rows, for each layer of F (B, n, k) reshaped to
    (B, rows, n*k/rows); zero rows stay zero. NaN for one row or an all-zero layer.

    The cosine matrix is symmetric: it is summed in blocks of rows over the upper triangle only.
    Rows shorter than their number (depthwise layers) are normalised first, otherwise each block
    of dot products is divided by the two rows' norms."""
    B = F.shape[0]
    if rows < 2:
        return torch.full((B,), math.nan, dtype=torch.float64, device=F.device)
    W = F.reshape(B, rows, -1)
    if not ((2.0**-40 < peak) & (peak < 2.0**40)).all().item():  # squares would under-/overflow
        W = W * _power_of_two_scale(peak)[:, None, None]
    norms = torch.linalg.vector_norm(W, dim=2)
    norms = torch.where(norms > 0, norms, 1.0)
    if W.shape[2] < rows:
        W, norms = W / norms[:, :, None], torch.ones_like(norms)
    total = torch.zeros(B, dtype=torch.float64, device=F.device)
    for start in range(0, rows, COSINE_BLOCK):
        end = min(start + COSINE_BLOCK, rows)
        cosines = W[:, start:end] @ W[:, start:].transpose(1, 2)
        cosines.div_(norms[:, start:end, None]).div_(norms[:, None, start:])
        cosines[:, :, : end - start].diagonal(dim1=1, dim2=2).sub_(1)  # the square on the diagonal, minus I
        cosines.abs_()
        total += cosines[:, :, : end - start].sum((1, 2)) + 2 * cosines[:, :, end - start :].sum((1, 2))
    return torch.where(peak > 0, 1 - total / (rows * (rows - 1)), math.nan)


def _summary_of(W: torch.Tensor, eps: float) -> _Summary:
    return _summarise(_filters(W)[None], eps)


def _clean_summary_of(W: torch.Tensor, eps: float) -> _Summary:
    F = _filters(W)[None]
    return _summarise(F[:, ~_summarise(F, eps).sparse[0]], eps)


def sparsity(W: torch.Tensor, eps: float = 0.01) -> float:
    """Share of filters whose nine |w| are all < eps * max|W|. An all-zero layer: 1."""
    sparse = _summary_of(W, eps).sparse
    return (sparse.sum().double() / sparse.numel()).item()


def variance_entropy(W: torch.Tensor) -> float:
    """Entropy (log10) of the variance shares of the centred filters' principal directions.

    0 (one structure) .. log10(9) (all directions alike); 0 for one filter, identical filters or
    an all-zero layer."""
    s = _summary_of(W, 0.01)
    return _variance_entropy_of(s.scatter, s.count).item()


def variance_entropy_norm(W: torch.Tensor) -> float:
    """variance_entropy / h(n): about 1 or more for random filters; NaN for n <= 2 filters."""
    s = _summary_of(W, 0.01)
    return _normalised(_variance_entropy_of(s.scatter, s.count), s.count).item()


def variance_entropy_clean(W: torch.Tensor, eps: float = 0.01) -> float:
    """variance_entropy of the non-sparse filters; NaN when every filter is sparse."""
    s = _clean_summary_of(W, eps)
    return _variance_entropy_of(s.scatter, s.count).item()


def variance_entropy_clean_norm(W: torch.Tensor, eps: float = 0.01) -> float:
    """variance_entropy_norm of the non-sparse filters; NaN when 2 or fewer are left."""
    s = _clean_summary_of(W, eps)
    return _normalised(_variance_entropy_of(s.scatter, s.count), s.count).item()


def orthogonality(W: torch.Tensor) -> float:
    """1 - mean |cosine similarity| between the flattened rows W[i] (dim 0), i != j.

    1: mutually orthogonal rows; 0: all rows collinear. A zero row counts as orthogonal to the
    others and adds 1 through the diagonal (as torchconvquality does). NaN for one row or an
    all-zero layer."""
    F = _filters(W)[None]
    return _orthogonality_of(F, W.shape[0], F.abs().amax(dim=(1, 2))).item()


def quality_of_layers(weights: list[torch.Tensor], eps: float = 0.01, device=None) -> list[dict]:
    """The six metrics of every layer, as dicts keyed by QUALITY_COLUMNS, in input order.

    Runs on `device` (default: the first weight's). Small layers (up to FILTER_CHUNK filters) of
    the same shape are stacked and measured as one batch; the eigenvalue problems of all layers
    go to one batched eigvalsh and the results come back in one transfer. On CUDA each batch
    synchronises twice (which layers have sparse filters; whether peaks need rescaling)."""
    if not weights:
        return []
    device = torch.device(device) if device is not None else weights[0].device
    batches = {}
    for i, W in enumerate(weights):
        small = W.shape[0] * W.shape[1] <= FILTER_CHUNK
        batches.setdefault((tuple(W.shape), W.dtype) if small else i, []).append(i)
    rows = [None] * len(weights)
    for members in batches.values():
        layers = [_filters(weights[i].to(device)) for i in members]
        F = torch.stack(layers) if len(layers) > 1 else layers[0][None]  # one layer: a view, no copy
        full = _summarise(F, eps)
        orthogonalities = _orthogonality_of(F, weights[members[0]].shape[0], full.peak)
        for b, (i, has_sparse) in enumerate(zip(members, full.sparse.any(1).tolist())):
            clean = _summarise(F[b : b + 1, ~full.sparse[b]], eps) if has_sparse else None
            rows[i] = (
                full.sparse[b].sum().double() / full.count[b],
                orthogonalities[b],
                full.scatter[b],
                full.count[b],
                clean.scatter[0] if clean else full.scatter[b],
                clean.count[0] if clean else full.count[b],
            )
    sparsities, orthogonalities, scatter, count, clean_scatter, clean_count = (torch.stack(c) for c in zip(*rows))
    counts = torch.stack([count, clean_count])
    entropies = _variance_entropy_of(torch.stack([scatter, clean_scatter]), counts)  # (2, layers)
    normalised = _normalised(entropies, counts)
    table = torch.stack([sparsities, entropies[0], normalised[0], entropies[1], normalised[1], orthogonalities], 1)
    return [dict(zip(QUALITY_COLUMNS, row)) for row in table.tolist()]


def layer_quality(W: torch.Tensor, eps: float = 0.01) -> dict:
    """The six metrics of one layer, keyed by QUALITY_COLUMNS (same values as the single functions)."""
    return quality_of_layers([W], eps)[0]


DEGENERACY_LABELS = ("sparse", "low_diversity", "random_looking")


@dataclass(frozen=True)
class DegeneracyThresholds:
    """When a layer counts as degenerated (design.md: sparse, low diversity, random-looking).

    The defaults rest on measurements that `filterdb bench quality --thresholds` prints (timm 1.0.31,
    random init; the figures below are from its run with the default 3 seeds and 2000 draws; the
    checks that must keep holding are tests in tests/test_metrics.py):
    - random_looking = 0.95 (variance_entropy_norm above): the 879 randomly initialised 3x3 layers of
      15 timm architectures (3 seeds) read 0.995 or more, and 2000 Gaussian or uniform draws per size
      (n = 10 .. 4096 filters) 0.984 or more; the two deeper layers of a small CNN trained for about
      2 s on sklearn's digits fall from 1.002-1.004 to 0.63-0.88 (3 seeds). Caveat: h(n) is the lowest
      VE of random filters, so layers of few filters read high (median of the random draws 1.24 at
      n = 10, 1.05 at n = 32) and a trained layer of 16 filters can stay above 1: flags on layers
      with n < ~64 filters are weak evidence.
    - low_diversity = 0.5 (variance_entropy_norm below): those trained layers stay above 0.63; a
      layer of one pattern with random gains plus noise reads 0.02, 0.24, 0.55 at noise 10%, 50%,
      100% of the pattern: below 0.5 a single structure carries most of the variance.
    - sparse = 0.5 (sparsity above): every random and trained layer above has sparsity 0 (the odds
      that a Gaussian filter has all nine |w| < 1% of its layer's peak are about 8e-14 in a layer of
      4096 filters); above 0.5 most of the layer's filters carry nothing.
    """

    sparse: float = 0.5
    low_diversity: float = 0.5
    random_looking: float = 0.95


def classify_layer(metrics: dict, thresholds: DegeneracyThresholds = DegeneracyThresholds()) -> tuple[str, ...]:
    """Degeneracy labels of one layer's metrics (a layer_quality dict), in DEGENERACY_LABELS order.

    An empty tuple means healthy. A NaN metric gives no label (e.g. variance_entropy_norm of n <= 2)."""
    labels = []
    if metrics["sparsity"] > thresholds.sparse:
        labels.append("sparse")
    if metrics["variance_entropy_norm"] < thresholds.low_diversity:
        labels.append("low_diversity")
    if metrics["variance_entropy_norm"] > thresholds.random_looking:
        labels.append("random_looking")
    return tuple(labels)
