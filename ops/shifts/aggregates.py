"""The mergeable aggregates of the shift analysis (steps 1-4 of `ops.shifts`): small values with a
`merge`, computed per block and folded in any order on any number of workers.

    step 1  peak scaling  `ScaledBlock`: the peak-scaled filters of a block and the group of each along
                          every axis (`ScaledBlock.of`; `scaled_block_and_moments`: with step 2)
    step 2  Moments          count, sum and sum of outer products of the scaled filters -> Basis
    step 3  CoefficientRange min / max of every component's coefficient over the selection; the bins
                             span one range for all components (the study's) or each one's own
    step 4  Histograms       per group x component counts, `bins` bins over that range;
            AxesHistograms   those of several axes, counted in the same pass

The same classes serve the single-process path (`ops.shifts.analyse`) and the Ray flow
(flows/shifts.py), which keeps `ScaledBlock`s in Ray's object store between the steps, or makes one of
every batch it reads when it reads once per step.

Exactness: results are identical, bit for bit, however the rows are split into blocks, batches and
chunks and in whatever order partials merge, because every sum taken is of integers held exactly: a
peak-scaled value x is held as q = round(x * 2^24) (at most 3e-8 from x, and nothing for |x| >= 1/2,
where float32's own step is 2^-24); the moments are int64 sums of q and of q_j q_k (below 2^62 a chunk,
then split in two int64 parts, then joined as Python integers); a coefficient is q times the components
rounded to integers over 2^25, an integer below 2^53 whatever order float64 sums it in. Counts and
min / max merge exactly, and the rest (covariance, basis, bin edges, KL) is computed once on the driver
from these exact values.

Hot path: compiled loops (`ops.shifts.kernels`, numba), one pass over a block's rows each: scaling,
moments, range, bin counting. `filterdb bench shifts --steps` prints the CPU nanoseconds per filter of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ops.shifts import kernels

N_COMPONENTS = 9
DEFAULT_BINS = 70
GLOBAL_RANGE = "global"
"""The study's bins: one range for all nine components, the min and max over all their coefficients."""
PER_COMPONENT_RANGE = "per-component"
"""Each component binned over its own min and max (finer bins for the low-variance components)."""
RANGE_MODES = (GLOBAL_RANGE, PER_COMPONENT_RANGE)
CHUNK_ROWS = kernels.CHUNK
"""Rows the kernels take at a time (moments' int64 sums, bin indices in cache)."""
SCALE_BITS = 24
SCALE = float(2**SCALE_BITS)
"""Peak-scaled values are held as integers q = x * 2^24 (|q| <= 2^24): a sum of their products is exact."""
QUANTUM = 1 / SCALE
COMPONENT_SCALE = float(2**25)
"""The projection multiplies q by the components as integers round(c * 2^25), |c| <= 1."""


# --- step 1: peak scaling ----------------------------------------------------------------------------


def weights_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The `weights` column (fixed_size_list<float32, 9>) as an (n, 9) float32 array, zero-copy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, N_COMPONENTS)


def scaled_q(weights: np.ndarray) -> np.ndarray:
    """(9, n) float32: the integers q = round(w / max |w| * 2^24) of the (n, 9) weights, the division in
    float32, an all-zero filter divided by 1. Weights are finite (extraction refuses others)."""
    return _scaled_rows(weights)[:, : len(weights)]


def _scaled_rows(weights: np.ndarray) -> np.ndarray:
    """The q of the (n, 9) weights in the first n columns of a `_block_buffer`."""
    rows = _block_buffer(len(weights))
    kernels.scale_into(np.ascontiguousarray(weights, np.float32), rows, 0)
    return rows


def peak_scaled(weights: np.ndarray) -> np.ndarray:
    """Every filter divided by its own absolute peak max |w| (step 1), as the aggregates see it:
    rounded to a multiple of 2^-24, (n, 9) float32 (exact)."""
    return (scaled_q(weights) * np.float32(QUANTUM)).T.copy()


def _block_buffer(n: int) -> np.ndarray:
    """(9, padded_length(n)) float32 for n filters (rows padded: kernels.PADDED_CHUNK says why): a spare
    one of that size (`spare_blocks`), else from Arrow's pool."""
    length = kernels.padded_length(n)
    spare = _SPARE_ROWS.get(length)
    if spare:
        return spare.pop()
    return np.frombuffer(pa.allocate_buffer(length * N_COMPONENTS * 4), np.float32).reshape(N_COMPONENTS, length)


_SPARE_ROWS: dict[int, list[np.ndarray]] = {}


def spare_blocks(blocks: list[ScaledBlock]) -> None:
    """Keep the arrays of blocks nobody uses any more for the next blocks of this process. Memory written
    for the first time costs a page fault a page, about as much as the scaling itself on the 2-CPU
    development machine (a VM): a process that scales block after block (the flow's holders, run after
    run) keeps its last blocks' memory and writes into it again."""
    for block in blocks:
        if block.rows.flags.writeable and block.rows.flags.c_contiguous:
            _SPARE_ROWS.setdefault(block.rows.shape[1], []).append(block.rows)


def drop_spare_blocks() -> None:
    """Free the memory `spare_blocks` kept (nothing to do when none is kept)."""
    if _SPARE_ROWS:
        _SPARE_ROWS.clear()
        pa.default_memory_pool().release_unused()


@dataclass
class ScaledBlock:
    """Filters read and peak-scaled once: `rows` (9, at least n) float32, whose first n columns are the
    integers q of `scaled_q` (padded rows, see `_block_buffer`); `codes` (axes, n) int32, the group of
    every row along every axis, an index into that axis' `labels` (no label twice). What the Ray flow
    keeps in the object store between steps 2, 3 and 4 (about 40 bytes a filter for one axis, 4 more
    for each further axis; numpy arrays, which Ray passes without copying)."""

    rows: np.ndarray
    codes: np.ndarray
    labels: list[list[str]]

    @property
    def q(self) -> np.ndarray:
        """(9, n) float32: the integers q of the block's filters."""
        return self.rows[:, : len(self)]

    @classmethod
    def of(cls, weights: np.ndarray, groupings: list[tuple[np.ndarray, list[str]]]) -> ScaledBlock:
        """Of (n, 9) weights and the (codes, labels) of every axis for the same rows."""
        return cls._with(_scaled_rows(weights), len(weights), groupings)

    @classmethod
    def _with(cls, rows: np.ndarray, n: int, groupings: list[tuple[np.ndarray, list[str]]]) -> ScaledBlock:
        codes = np.empty((len(groupings), n), np.int32)
        labels = []
        for x, (axis_codes, axis_labels) in enumerate(groupings):
            unique, codes[x] = _unique_labels(axis_codes, axis_labels)
            labels.append(unique)
        return cls(rows, codes, labels)

    def __len__(self) -> int:
        return self.codes.shape[1]


def scaled_block_and_moments(weights: np.ndarray, groupings: list[tuple[np.ndarray, list[str]]]) -> tuple[ScaledBlock, Moments]:
    """`ScaledBlock.of` and the `Moments` of its filters (step 2), each chunk's moments taken right
    after it is scaled, while it is in cache: the same values as `Moments.of_block(block)`."""
    weights = np.ascontiguousarray(weights, np.float32)
    q, sums = _block_buffer(len(weights)), np.zeros((2, kernels.N_MOMENTS), np.int64)
    kernels.scale_and_moments(weights, q, sums)
    return ScaledBlock._with(q, len(weights), groupings), Moments._of_sums(len(weights), sums)


# --- step 2: moments -> basis --------------------------------------------------------------------


@dataclass(frozen=True)
class Basis:
    """A PCA basis of peak-scaled filters, like scikit-learn's PCA: rows of `components` sorted by
    decreasing variance, each signed so that its largest-magnitude entry is positive; float32."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    n: int

    def integer_projection(self) -> tuple[np.ndarray, float, np.ndarray]:
        """(a, scale, offset): the coefficients of the integers q of a chunk are (a @ q) * scale - offset,
        with a = round(components * 2^25) (float64 integers, so that a @ q is exact) and offset the
        correctly rounded a @ mean * 2^-25 (its products are exact; fsum rounds their sum once)."""
        a = np.rint(self.components.astype(np.float64) * COMPONENT_SCALE)
        mean = self.mean.astype(np.float64)
        offset = np.array([math.fsum(row * mean) for row in a]) / COMPONENT_SCALE
        return a, 1 / (COMPONENT_SCALE * SCALE), offset

    def project(self, weights: np.ndarray) -> np.ndarray:
        """(n, 9) coefficients of the peak-scaled filters on the basis (float32), as the range and the
        histograms compute them."""
        a, scale, offset = self.integer_projection()
        return ((a @ scaled_q(weights).astype(np.float64)) * scale - offset[:, None]).T.astype(np.float32)  # a @ q exact: any BLAS


@dataclass
class Moments:
    """Count, sum and sum of outer products of the integers q of peak-scaled filters (`scaled_q`),
    exact: `total` and `outer` hold Python integers (in units of 2^-24 and 2^-48)."""

    n: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(N_COMPONENTS, object))
    outer: np.ndarray = field(default_factory=lambda: np.zeros((N_COMPONENTS, N_COMPONENTS), object))

    @classmethod
    def of(cls, weights: np.ndarray) -> Moments:
        return scaled_block_and_moments(weights, [])[1]

    @classmethod
    def of_block(cls, block: ScaledBlock) -> Moments:
        sums = np.zeros((2, kernels.N_MOMENTS), np.int64)
        kernels.moment_sums(block.rows, 0, len(block), sums)
        return cls._of_sums(len(block), sums)

    @classmethod
    def _of_sums(cls, n: int, sums: np.ndarray) -> Moments:
        """Of the kernel's sums in two int64 parts (kernels.moment_sums), joined as Python integers."""
        joined = [(int(high) << kernels.HALF_BITS) + int(low) for high, low in zip(sums[0].tolist(), sums[1].tolist())]
        total = np.array(joined[:N_COMPONENTS], object)
        outer = np.zeros((N_COMPONENTS, N_COMPONENTS), object)
        e = N_COMPONENTS
        for j in range(N_COMPONENTS):
            for k in range(j, N_COMPONENTS):
                outer[j, k] = outer[k, j] = joined[e]
                e += 1
        return cls(n, total, outer)

    def merge(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def basis(self) -> Basis:
        if self.n == 0:
            raise ValueError("no filters: a basis needs at least one filter")
        n = self.n
        scatter = n * self.outer - np.outer(self.total, self.total)  # n * sum (q - mean)(q - mean)^T, exact
        covariance = scatter.astype(np.float64) / (float(n * max(n - 1, 1)) * SCALE**2)
        mean = np.array([int(t) / n for t in self.total]) / SCALE  # int / int: correctly rounded
        values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0, None)
        components = vectors[:, order].T
        components *= np.sign(components[np.arange(N_COMPONENTS), np.abs(components).argmax(axis=1)])[:, None]
        total = values.sum()
        ratio = values / total if total > 0 else np.full(N_COMPONENTS, 1 / N_COMPONENTS)
        return Basis(
            mean=mean.astype(np.float32),
            components=components.astype(np.float32),
            explained_variance=values.astype(np.float32).astype(np.float64),
            explained_variance_ratio=ratio.astype(np.float32).astype(np.float64),
            n=n,
        )


# --- step 3: global range --------------------------------------------------------------------------


@dataclass
class CoefficientRange:
    """min and max of every component's coefficient (float64: the bin edges derive from them, and a
    float32 rounding would move every edge by up to 1e-7)."""

    lo: np.ndarray = field(default_factory=lambda: np.full(N_COMPONENTS, np.inf))
    hi: np.ndarray = field(default_factory=lambda: np.full(N_COMPONENTS, -np.inf))

    @classmethod
    def of(cls, weights: np.ndarray, basis: Basis) -> CoefficientRange:
        return cls.of_block(ScaledBlock.of(weights, []), basis)

    @classmethod
    def of_block(cls, block: ScaledBlock, basis: Basis) -> CoefficientRange:
        if not len(block):
            return cls()
        a, scale, offset = basis.integer_projection()
        lo, hi = np.full(N_COMPONENTS, np.iinfo(np.int64).max), np.full(N_COMPONENTS, np.iinfo(np.int64).min)
        kernels.integer_range(block.rows, 0, len(block), _rows(a), lo, hi)  # exact integers: |a @ q| <= 9 * 2^49 < 2^53
        # scaling and subtracting a constant are monotone: they commute with min and max
        return cls(lo.astype(np.float64) * scale - offset, hi.astype(np.float64) * scale - offset)

    def merge(self, other: CoefficientRange) -> CoefficientRange:
        return CoefficientRange(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def edges(self, range_mode: str = GLOBAL_RANGE) -> tuple[np.ndarray, np.ndarray]:
        """Outer bin edges of every component as float64: by default (the study's) one range for all
        nine, the min and max over every coefficient of every component; with PER_COMPONENT_RANGE each
        component's own. A range of a single value v becomes [v - 0.5, v + 0.5], like numpy.histogram."""
        lo, hi = self.lo.astype(np.float64), self.hi.astype(np.float64)
        if range_mode == GLOBAL_RANGE:
            lo, hi = np.full(N_COMPONENTS, lo.min()), np.full(N_COMPONENTS, hi.max())
        elif range_mode != PER_COMPONENT_RANGE:
            raise ValueError(f"range mode {range_mode!r}: choose one of {', '.join(RANGE_MODES)}")
        flat = hi <= lo
        return np.where(flat, lo - 0.5, lo), np.where(flat, hi + 0.5, hi)


# --- step 4: histograms ----------------------------------------------------------------------------


@dataclass
class Histograms:
    """Counts of the coefficients per group x component of one axis: `counts[label]` is (9, bins)
    int64, bins of equal width over [lo[k], hi[k]] for component k (the same range for all nine by
    default, `range_mode`); values outside are counted in the end bins."""

    lo: np.ndarray
    hi: np.ndarray
    bins: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    range_mode: str = GLOBAL_RANGE

    @classmethod
    def empty(cls, value_range: CoefficientRange, bins: int = DEFAULT_BINS, range_mode: str = GLOBAL_RANGE) -> Histograms:
        lo, hi = value_range.edges(range_mode)
        return cls(lo, hi, bins, range_mode=range_mode)

    @property
    def widths(self) -> np.ndarray:
        """(9,) bin width of every component."""
        return (self.hi - self.lo) / self.bins

    @classmethod
    def of(
        cls,
        weights: np.ndarray,
        codes: np.ndarray,
        labels: list[str],
        basis: Basis,
        value_range: CoefficientRange,
        bins: int = DEFAULT_BINS,
        range_mode: str = GLOBAL_RANGE,
    ) -> Histograms:
        """Histograms of the filters `weights` whose group is `labels[codes[i]]` (labels may repeat)."""
        return AxesHistograms.of_block(ScaledBlock.of(weights, [(codes, labels)]), basis, value_range, bins, range_mode).axes[0]

    def merge(self, other: Histograms) -> Histograms:
        if self.bins != other.bins or not (np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi)):
            raise ValueError("histograms over different bins cannot be merged")
        counts = dict(self.counts)
        for label, c in other.counts.items():
            counts[label] = counts[label] + c if label in counts else c
        return Histograms(self.lo, self.hi, self.bins, counts, self.range_mode)


@dataclass
class AxesHistograms:
    """The `Histograms` of several axes over the same bins, filled in one pass over the filters: the
    projection and the bin of every coefficient are computed once, then counted per axis."""

    axes: tuple[Histograms, ...]

    @classmethod
    def empty(cls, n_axes: int, value_range: CoefficientRange, bins: int = DEFAULT_BINS, range_mode: str = GLOBAL_RANGE) -> AxesHistograms:
        return cls(tuple(Histograms.empty(value_range, bins, range_mode) for _ in range(n_axes)))

    @classmethod
    def of_block(cls, block: ScaledBlock, basis: Basis, value_range: CoefficientRange, bins: int = DEFAULT_BINS,
                 range_mode: str = GLOBAL_RANGE) -> AxesHistograms:
        """The histograms of every axis of the block (its `codes` and `labels`), over the same bins."""
        result = cls.empty(len(block.labels), value_range, bins, range_mode)
        if not len(block):
            return result
        lo, hi = result.axes[0].lo, result.axes[0].hi
        # bin = (coefficient - lo) * bins / (hi - lo) = (a @ q) * factor + shift, with a @ q exact.
        a, scale, offset = basis.integer_projection()
        width = bins / (hi - lo)
        factor, shift = scale * width, -(offset + lo) * width
        sizes = [len(labels) * N_COMPONENTS * bins for labels in block.labels]
        offsets = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        counts = np.zeros(sum(sizes), np.int64)
        kernels.count_bins(block.rows, 0, len(block), _rows(a), _values(factor), _values(shift), bins, block.codes, offsets, counts)
        for histograms, labels, start, size in zip(result.axes, block.labels, offsets, sizes):
            axis_counts = counts[start : start + size].reshape(len(labels), N_COMPONENTS, bins)
            histograms.counts = {label: axis_counts[g].copy() for g, label in enumerate(labels) if axis_counts[g, 0].any()}
        return result

    def merge(self, other: AxesHistograms) -> AxesHistograms:
        return AxesHistograms(tuple(a.merge(b) for a, b in zip(self.axes, other.axes, strict=True)))


def _unique_labels(codes: np.ndarray, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Labels without repeats and the codes re-pointed at them."""
    unique = sorted(set(labels))
    if len(unique) == len(labels) and unique == list(labels):
        return unique, codes
    position = {label: i for i, label in enumerate(unique)}
    remap = np.array([position[label] for label in labels], np.int32)
    return unique, remap[codes]


def _values(vector: np.ndarray) -> tuple:
    """A float64 vector as a tuple, which the kernels hold in registers."""
    return tuple(float(v) for v in vector)


def _rows(matrix: np.ndarray) -> tuple:
    return tuple(_values(row) for row in matrix)
