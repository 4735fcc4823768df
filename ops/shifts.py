"""Distribution shift between groups of filters: the study's recipe (design.md, "Distribution shift")
written as small aggregates that merge, so blocks combine in any order on any number of workers.

    Moments          count, sum and sum of outer products of the peak-scaled filters (float64) -> Basis
    CoefficientRange min / max of every component's coefficient over the selection
    Histograms       per group x component counts, `bins` bins over that global range
    ShiftResult      symmetric KL per component and its explained-variance-weighted sum, every pair

The same classes serve the single-process path (`analyse`) and the Ray flow (flows/shifts.py).
Results do not depend on how the rows are split into blocks: counts and min/max are exact, and the
basis is rounded to float32 (the precision the projection runs in), which absorbs the last-bit
differences of float64 sums taken in another order.

Hot path (ns per filter on one core of the 2-core reference machine): the weights are worked on in
chunks of `CHUNK_ROWS` rows that stay in cache, in reused buffers, transposed to (9, rows) so that
every step runs over contiguous rows: transpose, |w|, peak as eight `np.maximum` of rows (a row-wise
`max(axis=1)` on (n, 9) costs ~90 alone), divide (~12-17 in all); then moments are one float64
`y @ y.T` with a row of ones (+12), the range one float32 matmul and a min/max per row (+5), and a
histogram is the matmul with the bin scale folded into the basis, one add, a clip, a cast and one
`np.bincount` over a flat (component, group, bin) index spanning the chunk's groups (+34, most of it
the bincount). Every aggregate takes its chunks from `scaled_chunks` (weights as read) or from
`block_chunks` (a `scaled_block`, scaled once and kept by the Ray flow between the steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

N_COMPONENTS = 9
DEFAULT_BINS = 70
DEFAULT_DEPTH_BINS = 10
EPSILON = float(np.finfo(np.float32).eps)
"""Probability given to empty bins before a histogram is renormalised (the study's floor)."""
CHUNK_ROWS = 8192
MISSING = "(missing)"
"""Group label of rows whose axis value is null."""


# --- per-filter kernels ----------------------------------------------------------------------------


def weights_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The `weights` column (fixed_size_list<float32, 9>) as an (n, 9) float32 array, zero-copy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, N_COMPONENTS)


def peak_scaled(weights: np.ndarray) -> np.ndarray:
    """Every filter divided by its own absolute peak max |w| (step 1 of the recipe); an all-zero filter
    keeps divisor 1."""
    out = np.empty_like(weights, dtype=np.float32)
    for rows, x in scaled_chunks(weights):
        out[rows] = x.T
    return out


def scaled_chunks(weights: np.ndarray, out: np.ndarray | None = None):
    """Yield (rows, x): the peak-scaled filters of consecutive chunks of (n, 9) weights, transposed to
    (9, rows) float32; x is a view of `out` (9, n) if given.

    Otherwise x lives in a buffer reused for the next chunk (fresh arrays of this size cost a page
    fault per page on every chunk); use it before asking for the next one."""
    size = max(1, min(CHUNK_ROWS, len(weights)))
    buffer, magnitude, divisor = np.empty((N_COMPONENTS, size), np.float32), np.empty((N_COMPONENTS, size), np.float32), np.empty(size, np.float32)
    for start in range(0, len(weights), size):
        chunk = weights[start : start + size]
        rows = slice(start, start + len(chunk))
        x, a, p = (buffer[:, : len(chunk)] if out is None else out[:, rows]), magnitude[:, : len(chunk)], divisor[: len(chunk)]
        np.copyto(x, chunk.T)
        np.abs(x, out=a)
        np.maximum(a[0], a[1], out=p)
        for j in range(2, N_COMPONENTS):
            np.maximum(p, a[j], out=p)
        p[p == 0] = 1
        x /= p
        yield rows, x


# --- filters read once, scaled once: the block the flow keeps between passes --------------------

SCALED_COLUMNS = [f"x{k}" for k in range(N_COMPONENTS)]
GROUP_COLUMN = "group"


def scaled_block(weights: np.ndarray, codes: np.ndarray, labels: list[str]) -> pa.Table:
    """Peak-scaled filters as nine float32 columns (so that a chunk of each is contiguous) and their
    group as a dictionary column: what the Ray flow keeps in the object store so that the three steps
    read and scale the filters once."""
    # Memory from Arrow's pool, which keeps freed pages: a fresh numpy array of this size pays a page
    # fault per page, which doubles the cost of this step.
    x = np.frombuffer(pa.allocate_buffer(len(weights) * N_COMPONENTS * 4), np.float32).reshape(N_COMPONENTS, len(weights))
    for _ in scaled_chunks(weights, out=x):
        pass
    group = pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, np.int32)), pa.array(labels, pa.string()))
    return pa.table([*x, group], names=[*SCALED_COLUMNS, GROUP_COLUMN])


def block_groups(block: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Codes and labels of a scaled block's group column."""
    group = block.column(GROUP_COLUMN).unify_dictionaries().combine_chunks()
    return group.indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False), group.dictionary.to_pylist()


def block_chunks(block: pa.Table):
    """Yield (rows, x) like `scaled_chunks`, from a scaled block (no scaling left to do)."""
    buffer = np.empty((N_COMPONENTS, CHUNK_ROWS), np.float32)
    offset = 0
    for batch in block.select(SCALED_COLUMNS).to_batches():
        columns = [column.to_numpy() for column in batch.columns]
        for start in range(0, batch.num_rows, CHUNK_ROWS):
            x = buffer[:, : min(CHUNK_ROWS, batch.num_rows - start)]
            for k, column in enumerate(columns):
                x[k] = column[start : start + x.shape[1]]
            yield slice(offset + start, offset + start + x.shape[1]), x
        offset += batch.num_rows


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

    def project(self, weights: np.ndarray) -> np.ndarray:
        """(n, 9) coefficients of the peak-scaled filters on the basis."""
        out = np.empty((len(weights), N_COMPONENTS), np.float32)
        for rows, x in scaled_chunks(weights):
            out[rows] = (x.T - self.mean) @ self.components.T
        return out


@dataclass
class Moments:
    """Count, sum and sum of outer products (float64) of peak-scaled filters."""

    n: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(N_COMPONENTS))
    outer: np.ndarray = field(default_factory=lambda: np.zeros((N_COMPONENTS, N_COMPONENTS)))

    @classmethod
    def of(cls, weights: np.ndarray) -> Moments:
        return cls.of_chunks(scaled_chunks(weights))

    @classmethod
    def of_chunks(cls, chunks) -> Moments:
        """Of the (rows, x) chunks of `scaled_chunks` or `block_chunks`."""
        # One float64 product of the scaled chunk with a row of ones appended gives all three sums.
        sums = np.zeros((N_COMPONENTS + 1, N_COMPONENTS + 1))
        y = np.ones((N_COMPONENTS + 1, CHUNK_ROWS))
        for _, x in chunks:
            yc = y[:, : x.shape[1]]
            yc[:N_COMPONENTS] = x
            sums += yc @ yc.T
        return cls(int(round(sums[-1, -1])), sums[-1, :-1].copy(), sums[:-1, :-1].copy())

    def merge(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def basis(self) -> Basis:
        if self.n == 0:
            raise ValueError("no filters: a basis needs at least one filter")
        mean = self.total / self.n
        scatter = self.outer - self.n * np.outer(mean, mean)
        covariance = scatter / max(self.n - 1, 1)
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
            n=self.n,
        )


# --- step 3: global range, histograms ------------------------------------------------------------


@dataclass
class CoefficientRange:
    """min and max of every component's coefficient (float32)."""

    lo: np.ndarray = field(default_factory=lambda: np.full(N_COMPONENTS, np.inf, np.float32))
    hi: np.ndarray = field(default_factory=lambda: np.full(N_COMPONENTS, -np.inf, np.float32))

    @classmethod
    def of(cls, weights: np.ndarray, basis: Basis) -> CoefficientRange:
        return cls.of_chunks(scaled_chunks(weights), basis)

    @classmethod
    def of_chunks(cls, chunks, basis: Basis) -> CoefficientRange:
        result = cls()
        buffer = np.empty((N_COMPONENTS, CHUNK_ROWS), np.float32)
        for _, x in chunks:
            c = np.matmul(basis.components, x, out=buffer[:, : x.shape[1]])
            np.minimum(result.lo, c.min(axis=1), out=result.lo)
            np.maximum(result.hi, c.max(axis=1), out=result.hi)
        offset = basis.components @ basis.mean  # subtracting a constant commutes with min and max
        return cls(result.lo - offset, result.hi - offset)

    def merge(self, other: CoefficientRange) -> CoefficientRange:
        return CoefficientRange(np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi))

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Outer bin edges as float64; a component with a single value gets [v - 0.5, v + 0.5] like
        numpy.histogram."""
        lo, hi = self.lo.astype(np.float64), self.hi.astype(np.float64)
        flat = hi <= lo
        return np.where(flat, lo - 0.5, lo), np.where(flat, hi + 0.5, hi)


@dataclass
class Histograms:
    """Counts of the coefficients per group x component: `counts[label]` is (9, bins) int64, bins of
    equal width over [lo, hi] of every component; values outside are counted in the end bins."""

    lo: np.ndarray
    hi: np.ndarray
    bins: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, value_range: CoefficientRange, bins: int = DEFAULT_BINS) -> Histograms:
        lo, hi = value_range.edges()
        return cls(lo, hi, bins)

    @classmethod
    def of(
        cls,
        weights: np.ndarray,
        codes: np.ndarray,
        labels: list[str],
        basis: Basis,
        value_range: CoefficientRange,
        bins: int = DEFAULT_BINS,
    ) -> Histograms:
        """Histograms of the filters `weights` whose group is `labels[codes[i]]` (labels may repeat)."""
        return cls.of_chunks(scaled_chunks(weights), codes, labels, basis, value_range, bins)

    @classmethod
    def of_chunks(cls, chunks, codes: np.ndarray, labels: list[str], basis: Basis, value_range: CoefficientRange, bins: int = DEFAULT_BINS) -> Histograms:
        result = cls.empty(value_range, bins)
        unique, codes = _unique_labels(codes, labels)
        n_groups = len(unique)
        # bin = (coefficient - lo) * bins / (hi - lo), with the scale folded into the basis (float32).
        scale = bins / (result.hi - result.lo)
        matrix = (basis.components.astype(np.float64) * scale[:, None]).astype(np.float32)
        shift = (-(basis.components.astype(np.float64) @ basis.mean + result.lo) * scale).astype(np.float32)
        counts = np.zeros((N_COMPONENTS, n_groups, bins), np.int64)
        position, index_buffer = np.empty((N_COMPONENTS, CHUNK_ROWS), np.float32), np.empty((N_COMPONENTS, CHUNK_ROWS), np.intp)
        for rows, x in chunks:
            t = np.matmul(matrix, x, out=position[:, : x.shape[1]])
            t += shift[:, None]
            np.clip(t, 0, bins - 1, out=t)
            index = index_buffer[:, : x.shape[1]]
            np.copyto(index, t, casting="unsafe")  # truncation: floor for t >= 0
            # One bincount over a flat (component, group, bin) index spanning only the chunk's groups:
            # rows come sorted by model, so a chunk mostly holds one group, and a bincount as long as
            # all groups x bins would cost more than the chunk itself on axes like model_id.
            group = codes[rows]
            first, last = int(group.min()), int(group.max())
            span = last - first + 1
            index += (np.arange(N_COMPONENTS) * span * bins)[:, None]
            if span > 1:
                index += (group - first) * bins
            counts[:, first : last + 1] += np.bincount(index.ravel(), minlength=N_COMPONENTS * span * bins).reshape(N_COMPONENTS, span, bins)
        result.counts = {label: counts[:, g].copy() for g, label in enumerate(unique) if counts[0, g].any()}
        return result

    def merge(self, other: Histograms) -> Histograms:
        if self.bins != other.bins or not (np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi)):
            raise ValueError("histograms over different bins cannot be merged")
        counts = dict(self.counts)
        for label, c in other.counts.items():
            counts[label] = counts[label] + c if label in counts else c
        return Histograms(self.lo, self.hi, self.bins, counts)


def _unique_labels(codes: np.ndarray, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Labels without repeats and the codes re-pointed at them."""
    unique = sorted(set(labels))
    if len(unique) == len(labels) and unique == list(labels):
        return unique, np.asarray(codes, np.intp)
    position = {label: i for i, label in enumerate(unique)}
    remap = np.array([position[label] for label in labels], np.intp)
    return unique, remap[codes]


# --- groups of an axis -----------------------------------------------------------------------------


def group_codes(column: pa.Array | pa.ChunkedArray, mapping: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """Codes and labels of a column's values (nulls labelled MISSING); with `mapping`, the label of a
    value is mapping[value] (e.g. model_id -> an extra catalog column), MISSING when absent."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    runs = pc.run_end_encode(column)
    if len(runs.values) * 8 <= len(column):
        # Rows come grouped (by model, layer): encoding the runs' values is 2-3x cheaper than all rows'.
        run_codes, labels = _dictionary_codes(runs.values, mapping)
        lengths = np.diff(runs.run_ends.to_numpy(), prepend=0)
        return np.repeat(run_codes, lengths), labels
    return _dictionary_codes(column, mapping)


def _dictionary_codes(column: pa.Array, mapping: dict | None) -> tuple[np.ndarray, list[str]]:
    encoded = pc.dictionary_encode(column, null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
    values = encoded.dictionary.to_pylist()
    if mapping is not None:
        values = [mapping.get(v) for v in values]
    return codes, [MISSING if v is None else str(v) for v in values]


def depth_labels(n_bins: int = DEFAULT_DEPTH_BINS) -> list[str]:
    """'[0.0, 0.1]', '(0.1, 0.2]', ..., '(0.9, 1.0]' for 10 bins."""
    edges = [f"{k / n_bins:.{max(1, len(str(n_bins)) - 1)}f}" for k in range(n_bins + 1)]
    return [("[" if k == 0 else "(") + f"{edges[k]}, {edges[k + 1]}]" for k in range(n_bins)]


def depth_codes(conv_depth_norm: np.ndarray, n_bins: int = DEFAULT_DEPTH_BINS) -> tuple[np.ndarray, list[str]]:
    """Bin of every conv_depth_norm: [0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]."""
    inner_edges = np.arange(1, n_bins) / n_bins
    codes = np.searchsorted(inner_edges, np.asarray(conv_depth_norm, np.float64), side="left")
    return codes.astype(np.intp), depth_labels(n_bins)


# --- step 4: KL between groups, densities ----------------------------------------------------------


def probabilities(counts: np.ndarray) -> np.ndarray:
    """Histograms (last axis = bins) as probabilities; empty bins get EPSILON, then each histogram is
    renormalised to sum 1."""
    counts = np.asarray(counts, np.float64)
    p = counts / counts.sum(axis=-1, keepdims=True)
    p[counts == 0] = EPSILON
    return p / p.sum(axis=-1, keepdims=True)


def symmetric_kl_matrix(p: np.ndarray) -> np.ndarray:
    """(groups, 9, bins) probabilities -> (groups, groups, 9) symmetric KL, KL(a||b) + KL(b||a) with
    natural logs, of every pair, from one
    matrix product per component: KL(a||b) + KL(b||a) = H[a,a] + H[b,b] - H[a,b] - H[b,a] with
    H[a,b] = sum p_a log p_b."""
    by_component = p.transpose(1, 0, 2)
    cross = by_component @ np.log(by_component).transpose(0, 2, 1)  # (9, groups, groups)
    own = np.diagonal(cross, axis1=1, axis2=2)
    kl = own[:, :, None] + own[:, None, :] - cross - cross.transpose(0, 2, 1)
    kl = np.clip(kl, 0, None).transpose(1, 2, 0)
    kl[np.arange(len(p)), np.arange(len(p))] = 0
    return kl


def silverman_bandwidth(counts: np.ndarray, lo: float, hi: float) -> float:
    """Silverman's rule as KDEpy writes it, min(std, IQR / 1.349) * (3n / 4)^(-1/5), with the standard
    deviation and the quartiles taken from the binned data (bin centres, linear within a bin)."""
    counts = np.asarray(counts, np.float64)
    n = counts.sum()
    if n < 2:
        return (hi - lo) / len(counts)
    width = (hi - lo) / len(counts)
    centres = lo + width * (np.arange(len(counts)) + 0.5)
    mean = (counts * centres).sum() / n
    std = np.sqrt((counts * (centres - mean) ** 2).sum() / (n - 1))
    cdf = np.concatenate([[0.0], np.cumsum(counts) / n])
    q25, q75 = np.interp([0.25, 0.75], cdf, lo + width * np.arange(len(counts) + 1))
    sigma = min(std, (q75 - q25) / 1.349) if q75 > q25 else std
    if sigma <= 0:
        sigma = width
    return float(sigma * (3 * n / 4) ** (-1 / 5))


def binned_kde(counts: np.ndarray, lo: float, hi: float, bandwidth: float | None = None) -> tuple[np.ndarray, float]:
    """Gaussian KDE of binned data on the bin centres (a density: integrates to ~1 over [lo, hi])."""
    counts = np.asarray(counts, np.float64)
    bandwidth = silverman_bandwidth(counts, lo, hi) if bandwidth is None else bandwidth
    width = (hi - lo) / len(counts)
    centres = lo + width * (np.arange(len(counts)) + 0.5)
    kernel = np.exp(-0.5 * ((centres[:, None] - centres[None, :]) / bandwidth) ** 2) / (bandwidth * np.sqrt(2 * np.pi))
    return kernel @ counts / max(counts.sum(), 1), bandwidth


@dataclass
class ShiftResult:
    """Everything one shift analysis produces; `kl[a, b, k]` is the symmetric KL of component k
    between groups a and b, `kl_weighted[a, b]` its sum weighted by the explained-variance ratios."""

    axis: str
    groups: list[str]
    sizes: np.ndarray
    basis: Basis
    value_range: CoefficientRange
    histograms: Histograms
    kl: np.ndarray
    kl_weighted: np.ndarray
    selection: str | None = None
    basis_selection: str | None = None
    db_version: int | None = None

    @classmethod
    def of(cls, axis: str, basis: Basis, value_range: CoefficientRange, histograms: Histograms, order: list[str] | None = None, **tags) -> ShiftResult:
        order = [g for g in order or [] if g in histograms.counts]
        groups = order + sorted(set(histograms.counts) - set(order))
        counts = np.stack([histograms.counts[g] for g in groups]) if groups else np.zeros((0, N_COMPONENTS, histograms.bins), np.int64)
        kl = symmetric_kl_matrix(probabilities(counts))
        return cls(
            axis=axis,
            groups=groups,
            sizes=counts[:, 0].sum(axis=1),
            basis=basis,
            value_range=value_range,
            histograms=histograms,
            kl=kl,
            kl_weighted=kl @ basis.explained_variance_ratio,
            **tags,
        )

    def densities(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Binned Gaussian KDE (Silverman bandwidth) per group: (9, bins) densities and (9,) bandwidths."""
        out = {}
        for g in self.groups:
            rows = [binned_kde(self.histograms.counts[g][k], self.histograms.lo[k], self.histograms.hi[k]) for k in range(N_COMPONENTS)]
            out[g] = (np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]))
        return out


# --- the single-process path -----------------------------------------------------------------------


def analyse(
    weights: np.ndarray,
    codes: np.ndarray,
    labels: list[str],
    axis: str = "group",
    bins: int = DEFAULT_BINS,
    basis: Basis | None = None,
    value_range: CoefficientRange | None = None,
    order: list[str] | None = None,
    block_rows: int = 1 << 20,
) -> ShiftResult:
    """The whole analysis of in-memory filters, with the same aggregates the Ray flow folds, block by
    block (a stored `basis` and its `value_range` may be given to skip steps 2 and 3)."""
    blocks = [slice(s, s + block_rows) for s in range(0, len(weights), block_rows)]
    if basis is None:
        moments = Moments()
        for b in blocks:
            moments = moments.merge(Moments.of(weights[b]))
        basis = moments.basis()
    if value_range is None:
        value_range = CoefficientRange()
        for b in blocks:
            value_range = value_range.merge(CoefficientRange.of(weights[b], basis))
    histograms = Histograms.empty(value_range, bins)
    for b in blocks:
        histograms = histograms.merge(Histograms.of(weights[b], codes[b], labels, basis, value_range, bins))
    return ShiftResult.of(axis, basis, value_range, histograms, order=order)
