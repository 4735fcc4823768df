"""The mergeable aggregates of the shift analysis (steps 1-4 of `ops.shifts`): small values with a
`merge`, computed per block and folded in any order on any number of workers.

    step 1  peak scaling  `scaled_chunks` (weights as read), `scaled_block` / `block_chunks` (kept;
                          `scaled_block_and_moments`: with step 2 of the same filters)
    step 2  Moments          count, sum and sum of outer products of the scaled filters -> Basis
    step 3  CoefficientRange min / max of every component's coefficient over the selection; the bins
                             span one range for all components (the study's) or each one's own
    step 4  Histograms       per group x component counts, `bins` bins over that range;
            AxesHistograms   those of several axes, counted in the same pass

The same classes serve the single-process path (`ops.shifts.analyse`) and the Ray flow
(flows/shifts.py); `chunks_of` hands them the chunks of either kind of block.

Exactness: results are identical, bit for bit, however the rows are split into blocks, batches and
chunks and in whatever order partials merge, on any BLAS and thread count, because every sum taken
is of integers whose partial sums stay below 2^53, which float64 holds exactly, so any order, tiling
or FMA gives the same value: a peak-scaled value x is held as q = round(x * 2^24) (at most 3e-8 from
x, and nothing for |x| >= 1/2, where float32's own step is 2^-24); moments are two float64 products
a chunk of q split into 12-bit halves, the projection is q times the components rounded to integers
over 2^25, and chunks add up in int64 and Python integers. Counts and min / max merge exactly, and
the rest (covariance, basis, bin edges, KL) is computed once on the driver from these exact values.

Hot path: the weights are worked on in chunks of `CHUNK_ROWS` rows that stay in cache, in reused
buffers, transposed to (9, rows) so that every step runs over contiguous rows: transpose, |w|, peak
as eight `np.maximum` of rows (a row-wise `max(axis=1)` on (n, 9) is several times slower), divide,
round to q, copy to float64; a kept block's q is read into float64 chunks; moments are the split of
q and two float64 products, the range one float64 matmul and a min/max per row, and the histograms
that matmul, a multiply and an add to the bin position, a clip, a cast to int32 and, per axis, one
`np.bincount` over a flat (component, group, bin) index spanning the chunk's groups (most of the
histograms' cost). `filterdb bench shifts --steps` prints the CPU nanoseconds per filter of each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

N_COMPONENTS = 9
DEFAULT_BINS = 70
GLOBAL_RANGE = "global"
"""The study's bins: one range for all nine components, the min and max over all their coefficients."""
PER_COMPONENT_RANGE = "per-component"
"""Each component binned over its own min and max (finer bins for the low-variance components)."""
RANGE_MODES = (GLOBAL_RANGE, PER_COMPONENT_RANGE)
CHUNK_ROWS = 8192
SCALE_BITS = 24
SCALE = float(2**SCALE_BITS)
"""Peak-scaled values are held as integers q = x * 2^24 (|q| <= 2^24): a sum of their products is exact."""
QUANTUM = 1 / SCALE
SPLIT = float(2**12)
"""Moments split q = hi * 2^12 + lo (|hi| <= 2^12, |lo| <= 2^11) so that products of a chunk sum exactly."""
INT64_CHUNKS = 1 << 13
"""Chunks whose moments int64 adds exactly (each below 2^49) before they go into Python integers."""
COMPONENT_SCALE = float(2**25)
"""The projection multiplies q by the components as integers round(c * 2^25), |c| <= 1."""


# --- step 1: peak scaling ----------------------------------------------------------------------------


def weights_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The `weights` column (fixed_size_list<float32, 9>) as an (n, 9) float32 array, zero-copy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, N_COMPONENTS)


def peak_scaled(weights: np.ndarray) -> np.ndarray:
    """Every filter divided by its own absolute peak max |w| (step 1), as the aggregates
    see it: rounded to a multiple of 2^-24 (float32, exact); an all-zero filter keeps divisor 1."""
    out = np.empty_like(weights, dtype=np.float32)
    for rows, q in scaled_chunks(weights):
        out[rows] = q.T * QUANTUM
    return out


def scaled_chunks(weights: np.ndarray, out: np.ndarray | None = None):
    """Yield (rows, q): the peak-scaled filters of consecutive chunks of (n, 9) weights as integers
    q = round(w / max |w| * 2^24) (the division in float32), transposed to (9, rows) float64; with
    `out` ((9, n) float32), q is written there too (exactly: |q| <= 2^24).

    q lives in a buffer reused for the next chunk (fresh arrays of this size cost a page fault per
    page on every chunk); use it before asking for the next one. Weights are finite (extraction
    refuses others)."""
    size = max(1, min(CHUNK_ROWS, len(weights)))
    buffer, scaled = np.empty((N_COMPONENTS, size)), np.empty((N_COMPONENTS, size), np.float32)
    work = _ScalingBuffers(size)
    for start in range(0, len(weights), size):
        chunk = weights[start : start + size]
        rows = slice(start, start + len(chunk))
        x = scaled[:, : len(chunk)] if out is None else out[:, rows]
        work.scale(chunk, x)
        q = buffer[:, : len(chunk)]
        np.copyto(q, x)
        yield rows, q


class _ScalingBuffers:
    """The work buffers of peak scaling, reused chunk after chunk."""

    def __init__(self, size: int):
        self.magnitude, self.divisor = np.empty((N_COMPONENTS, size), np.float32), np.empty(size, np.float32)

    def scale(self, chunk: np.ndarray, x: np.ndarray) -> None:
        """x ((9, rows) float32) = the integers q of the (rows, 9) float32 weights `chunk`, exactly
        (|q| <= 2^24): transpose, |w|, peak as eight `np.maximum` of rows, divide, scale by 2^24, round."""
        a, p = self.magnitude[:, : len(chunk)], self.divisor[: len(chunk)]
        np.copyto(x, chunk.T)
        np.abs(x, out=a)
        np.maximum(a[0], a[1], out=p)
        for j in range(2, N_COMPONENTS):
            np.maximum(p, a[j], out=p)
        p[p == 0] = 1
        x /= p
        x *= SCALE  # exact: a power of two, |x| <= 1
        np.rint(x, out=x)


# --- step 1, kept: the block of filters read and scaled once, as the flow keeps it --------------

SCALED_COLUMNS = [f"q{k}" for k in range(N_COMPONENTS)]
GROUP_COLUMN = "group"
"""Prefix of a scaled block's group columns: `group0`, `group1`, ..., one per axis."""


def scaled_block(weights: np.ndarray, groupings: list[tuple[np.ndarray, list[str]]]) -> pa.Table:
    """Peak-scaled filters as nine float32 columns of the integers q of `scaled_chunks` (exact; so
    that a chunk of each is contiguous) and, per axis, the group as a dictionary column (`groupings`:
    (codes, labels) of every axis): what the Ray flow keeps in the object store so that steps 2-4
    read and scale the filters once."""
    q = _block_buffer(len(weights))
    work = _ScalingBuffers(max(1, min(CHUNK_ROWS, len(weights))))
    for start in range(0, len(weights), CHUNK_ROWS):
        chunk = weights[start : start + CHUNK_ROWS]
        work.scale(chunk, q[:, start : start + len(chunk)])  # straight into the block: no float64 copy
    return _block_table(q, groupings)


def scaled_block_and_moments(weights: np.ndarray, groupings: list[tuple[np.ndarray, list[str]]]) -> tuple[pa.Table, Moments]:
    """`scaled_block` and the `Moments` of its filters (step 2), each chunk taken while it is in
    cache: the same values as `Moments.of_chunks(block_chunks(block))`, without reading the block again."""
    q = _block_buffer(len(weights))
    moments = Moments.of_chunks(scaled_chunks(weights, out=q))
    return _block_table(q, groupings), moments


def _block_buffer(n: int) -> np.ndarray:
    # Memory from Arrow's pool, which keeps freed pages: a fresh numpy array of this size pays a page
    # fault per page, which doubles the cost of this step.
    return np.frombuffer(pa.allocate_buffer(n * N_COMPONENTS * 4), np.float32).reshape(N_COMPONENTS, n)


def _block_table(q: np.ndarray, groupings: list[tuple[np.ndarray, list[str]]]) -> pa.Table:
    groups = [pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, np.int32), pa.int32()), pa.array(labels, pa.string())) for codes, labels in groupings]
    return pa.table([*q, *groups], names=[*SCALED_COLUMNS, *(f"{GROUP_COLUMN}{i}" for i in range(len(groups)))])


def block_groups(block: pa.Table | pa.RecordBatch, axis_index: int = 0) -> tuple[np.ndarray, list[str]]:
    """Codes and labels of a scaled block's group column of the axis `axis_index`."""
    group = block.column(f"{GROUP_COLUMN}{axis_index}")
    if isinstance(group, pa.ChunkedArray):
        group = group.unify_dictionaries().combine_chunks()
    return group.indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False), group.dictionary.to_pylist()


def block_chunks(block: pa.Table | pa.RecordBatch):
    """Yield (rows, q) like `scaled_chunks`, from a scaled block (no scaling left to do)."""
    buffer = np.empty((N_COMPONENTS, CHUNK_ROWS))
    offset = 0
    for batch in block.to_batches() if isinstance(block, pa.Table) else [block]:
        columns = [batch.column(name).to_numpy() for name in SCALED_COLUMNS]
        for start in range(0, batch.num_rows, CHUNK_ROWS):
            q = buffer[:, : min(CHUNK_ROWS, batch.num_rows - start)]
            for k, column in enumerate(columns):
                q[k] = column[start : start + q.shape[1]]
            yield slice(offset + start, offset + start + q.shape[1]), q
        offset += batch.num_rows


def chunks_of(batch: pa.RecordBatch):
    """The (rows, q) chunks the aggregates take, from a batch of either kind of block: as read from
    filters.lance (its `weights` column, peak-scaled here by `scaled_chunks`) or of a scaled block
    (its q columns, by `block_chunks`). Neither copies the batch: each chunk is written into a buffer
    reused for the next."""
    if "weights" in batch.schema.names:
        return scaled_chunks(weights_array(batch.column("weights")))
    return block_chunks(batch)


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
        out = np.empty((len(weights), N_COMPONENTS), np.float32)
        for rows, q in scaled_chunks(weights):
            out[rows] = ((a @ q) * scale - offset[:, None]).T
        return out


@dataclass
class Moments:
    """Count, sum and sum of outer products of the integers q of peak-scaled filters (`scaled_chunks`),
    exact: `total` and `outer` hold Python integers (in units of 2^-24 and 2^-48)."""

    n: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(N_COMPONENTS, object))
    outer: np.ndarray = field(default_factory=lambda: np.zeros((N_COMPONENTS, N_COMPONENTS), object))

    @classmethod
    def of(cls, weights: np.ndarray) -> Moments:
        return cls.of_chunks(scaled_chunks(weights))

    @classmethod
    def of_chunks(cls, chunks) -> Moments:
        """Of the (rows, q) chunks of `chunks_of` (or of `scaled_chunks` / `block_chunks`).

        With q = hi * 2^12 + lo (|hi| <= 2^12, |lo| <= 2^11), q q^T = 2^12 hi q^T + lo q^T: two float64
        products a chunk, (hi, 1) @ q^T and (lo / 2^12) @ q^T, exact whatever order or kernel BLAS sums
        them in: every partial sum is an integer below CHUNK_ROWS * 2^36 = 2^49, or a multiple of 2^-12
        below 2^36, within float64's 53 bits. int64 adds up INT64_CHUNKS of them exactly, Python
        integers the rest."""
        result = cls()
        high, low = np.ones((N_COMPONENTS + 1, CHUNK_ROWS)), np.empty((N_COMPONENTS, CHUNK_ROWS))
        by_high, by_low = np.zeros((N_COMPONENTS + 1, N_COMPONENTS), np.int64), np.zeros((N_COMPONENTS, N_COMPONENTS), np.int64)
        for i, (_, q) in enumerate(chunks, start=1):
            hi, lo = high[:N_COMPONENTS, : q.shape[1]], low[:, : q.shape[1]]
            np.multiply(q, 1 / SPLIT, out=lo)
            np.rint(lo, out=hi)
            lo -= hi  # lo / 2^12, exactly
            by_high += (high[:, : q.shape[1]] @ q.T).astype(np.int64)  # sum of hi q^T, and (last row) of q
            by_low += (lo @ q.T * SPLIT).astype(np.int64)  # sum of lo q^T
            result.n += q.shape[1]
            if i % INT64_CHUNKS == 0:
                result = result.merge(_held_moments(by_high, by_low))
                by_high[:], by_low[:] = 0, 0
        return result.merge(_held_moments(by_high, by_low))

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


def _held_moments(by_high: np.ndarray, by_low: np.ndarray) -> Moments:
    """The sums of q and q q^T (count left at 0) from int64 sums of (hi, 1) q^T and lo q^T."""
    by_high, by_low = by_high.astype(object), by_low.astype(object)
    return Moments(0, by_high[-1].copy(), by_high[:-1] * int(SPLIT) + by_low)


# --- step 3: global range --------------------------------------------------------------------------


@dataclass
class CoefficientRange:
    """min and max of every component's coefficient (float64: the bin edges derive from them, and a
    float32 rounding would move every edge by up to 1e-7)."""

    lo: np.ndarray = field(default_factory=lambda: np.full(N_COMPONENTS, np.inf))
    hi: np.ndarray = field(default_factory=lambda: np.full(N_COMPONENTS, -np.inf))

    @classmethod
    def of(cls, weights: np.ndarray, basis: Basis) -> CoefficientRange:
        return cls.of_chunks(scaled_chunks(weights), basis)

    @classmethod
    def of_chunks(cls, chunks, basis: Basis) -> CoefficientRange:
        a, scale, offset = basis.integer_projection()
        lo, hi = np.full(N_COMPONENTS, np.inf), np.full(N_COMPONENTS, -np.inf)
        buffer = np.empty((N_COMPONENTS, CHUNK_ROWS))
        for _, q in chunks:
            c = np.matmul(a, q, out=buffer[:, : q.shape[1]])  # exact integers: |a @ q| <= 9 * 2^49 < 2^53
            np.minimum(lo, c.min(axis=1), out=lo)
            np.maximum(hi, c.max(axis=1), out=hi)
        # scaling and subtracting a constant are monotone: they commute with min and max
        return cls(lo * scale - offset, hi * scale - offset)

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
        return cls.of_chunks(scaled_chunks(weights), codes, labels, basis, value_range, bins, range_mode)

    @classmethod
    def of_chunks(cls, chunks, codes: np.ndarray, labels: list[str], basis: Basis, value_range: CoefficientRange,
                  bins: int = DEFAULT_BINS, range_mode: str = GLOBAL_RANGE) -> Histograms:
        return AxesHistograms.of_chunks(chunks, [(codes, labels)], basis, value_range, bins, range_mode).axes[0]

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
    def of_chunks(cls, chunks, groupings: list[tuple[np.ndarray, list[str]]], basis: Basis, value_range: CoefficientRange,
                  bins: int = DEFAULT_BINS, range_mode: str = GLOBAL_RANGE) -> AxesHistograms:
        """Of the (rows, q) chunks of `chunks_of`; `groupings` holds (codes, labels) of every axis for
        the same rows."""
        result = cls.empty(len(groupings), value_range, bins, range_mode)
        lo, hi = result.axes[0].lo, result.axes[0].hi
        groupings = [_unique_labels(codes, labels) for codes, labels in groupings]
        # bin = (coefficient - lo) * bins / (hi - lo) = (a @ q) * factor + shift, with a @ q exact.
        a, scale, offset = basis.integer_projection()
        width = bins / (hi - lo)
        factor, shift = (scale * width)[:, None], (-(offset + lo) * width)[:, None]
        counts = [np.zeros((N_COMPONENTS, len(unique), bins), np.int64) for unique, _ in groupings]
        component_offset = (np.arange(N_COMPONENTS, dtype=np.int32) * bins)[:, None]
        # Bin indices as int32: numpy casts float64 to int32 several times faster than to intp.
        position, index_buffer = np.empty((N_COMPONENTS, CHUNK_ROWS)), np.empty((N_COMPONENTS, CHUNK_ROWS), np.int32)
        flat_buffer = np.empty((N_COMPONENTS, CHUNK_ROWS), np.int32)
        for rows, q in chunks:
            t = np.matmul(a, q, out=position[:, : q.shape[1]])
            t *= factor
            t += shift
            np.clip(t, 0, bins - 1, out=t)
            index = index_buffer[:, : q.shape[1]]
            np.copyto(index, t, casting="unsafe")  # truncation: floor for t >= 0
            for (_, codes), axis_counts in zip(groupings, counts):
                # One bincount over a flat (component, group, bin) index spanning only the chunk's
                # groups: rows come sorted by model, so a chunk mostly holds one group, and a bincount
                # as long as all groups x bins would cost more than the chunk itself on axes like model_id.
                group = codes[rows]
                first, last = int(group.min()), int(group.max())
                span = last - first + 1
                flat = flat_buffer[:, : q.shape[1]]
                np.add(index, component_offset * np.int32(span), out=flat)
                if span > 1:
                    flat += ((group - first) * bins).astype(np.int32)
                axis_counts[:, first : last + 1] += np.bincount(flat.ravel(), minlength=N_COMPONENTS * span * bins).reshape(N_COMPONENTS, span, bins)
        for histograms, (unique, _), axis_counts in zip(result.axes, groupings, counts):
            histograms.counts = {label: axis_counts[:, g].copy() for g, label in enumerate(unique) if axis_counts[0, g].any()}
        return result

    def merge(self, other: AxesHistograms) -> AxesHistograms:
        return AxesHistograms(tuple(a.merge(b) for a, b in zip(self.axes, other.axes, strict=True)))


def _unique_labels(codes: np.ndarray, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Labels without repeats and the codes re-pointed at them."""
    unique = sorted(set(labels))
    if len(unique) == len(labels) and unique == list(labels):
        return unique, np.asarray(codes, np.intp)
    position = {label: i for i, label in enumerate(unique)}
    remap = np.array([position[label] for label in labels], np.intp)
    return unique, remap[codes]
