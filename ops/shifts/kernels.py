"""Compiled loops of the shift analysis' hot path (numba): peak scaling, moments, coefficient range and
bin counting, each one pass over a block's rows.

Every kernel computes exactly what its numpy formulation computes (the tests compare them bit for bit):
the peak-scaled integers q = rint(w / max|w| * 2^24), the division in float32; sums of q and of q q^T in
int64; coefficients as float64 sums of products of integers (exact, so their order does not matter);
the bin of a coefficient c as clip(c * factor + shift, 0, bins - 1) truncated, with a rounded multiply
then a rounded add (no fused multiply-add: numba does not contract them), so that a value lands in the
same bin as the study's `np.histogram` puts it within float rounding (see aggregates.py, Exactness).

Why compiled: the numpy formulation makes one pass over memory per operation (transpose, |w|, eight
maxima, divide, round; split q, two products; a matmul, a multiply, an add, a clip, a cast, a bincount),
about 75 ns of CPU per filter; here each row is loaded once and its nine coefficients stay in registers
(`filterdb bench shifts --steps` prints both). Loops whose rows are independent are written so that LLVM
vectorizes them across rows: one row's nine values are locals, the reductions are integer min / max and
sums (a float min / max reduction is not vectorized without fast-math flags), and the counting, which
cannot be vectorized, runs over bin indices computed by a vectorized loop first. The stored (n, 9)
weights are transposed 16 filters at a time by a kernel written in LLVM IR (`_transpose16`), the one
thing numba's loops do not vectorize.

Compiled on first use and cached next to this file (`cache=True`; NUMBA_CACHE_DIR moves the cache).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

N_COMPONENTS = 9
SCALE32 = np.float32(2.0**24)
"""2^24 as float32: q = rint(w / peak * 2^24), exact (a power of two, |w / peak| <= 1)."""
CHUNK = 2048
"""Rows taken at a time: their bin indices (72 KB) are computed before they are counted, their moments
(int64 copies, 144 KB) summed, while they are in cache; and 2048 products q_j q_k (each at most 2^48)
sum below 2^62, within int64."""
PADDED_CHUNK = CHUNK + 16
"""Row length of the (9, CHUNK) work buffers. Rows a multiple of 4 KB apart make the nine values of a
column compete for the same cache sets: scaling into (9, n) rows took 19 ns a filter for n = 131,072
and 9 ns for n = 10^6 (one timing each, `time.thread_time`, the same filters)."""
ROW_ALIGN = 16


def padded_length(n: int) -> int:
    """Row length (in 4-byte values) for a (9, n) array: n rounded up to 64 bytes, plus 64 bytes where
    rows would otherwise lie a multiple of 4 KB apart (see PADDED_CHUNK)."""
    length = -(-max(n, 1) // ROW_ALIGN) * ROW_ALIGN
    return length + ROW_ALIGN if (length * 4) % 4096 == 0 else length


HALF_BITS = 31
"""Chunk sums of q q^T (below 2^62) are added as high (>> 31) and low (& 2^31 - 1) parts: int64 then holds
the sums of any number of rows exactly; the caller joins them as Python integers."""
N_MOMENTS = N_COMPONENTS + N_COMPONENTS * (N_COMPONENTS + 1) // 2

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)
_inline = numba.njit(cache=True, nogil=True, boundscheck=False, inline="always")


@_inline
def _dot(a, k, x0, x1, x2, x3, x4, x5, x6, x7, x8):
    """Row k of a ((9, 9) float64, as nested tuples: values the loop holds, not memory a store could
    change) times (x0..x8), summed left to right."""
    row = a[k]
    return (row[0] * x0 + row[1] * x1 + row[2] * x2 + row[3] * x3 + row[4] * x4 + row[5] * x5
            + row[6] * x6 + row[7] * x7 + row[8] * x8)


@_inline
def _rows(q, start, stop):
    """The nine rows of q, columns start..stop, as views indexed from 0 (so that LLVM knows the
    indices are not negative and vectorizes the loop)."""
    return (q[0, start:stop], q[1, start:stop], q[2, start:stop], q[3, start:stop], q[4, start:stop], q[5, start:stop],
            q[6, start:stop], q[7, start:stop], q[8, start:stop])


@intrinsic
def _transpose16(typingctx, weights, row, out, column):
    """out[k, column + j] = weights[row + j, k] for j < 16, k < 9, for (n, 9) C-contiguous weights and
    (9, L) rows: one load of the 144 values, nine shuffles, nine stores of 16. Why by hand: LLVM's
    vectorizer groups strided loads of at most 8 (`-max-interleave-group-factor`) and loaded a
    filter's nine values one by one: scaling one Lance batch of 131,072 filters took 8.2-8.9 ns a
    filter that way and 2.4-4.4 ns with this (a timing script, best of 30, 2026-12-01)."""
    if not (isinstance(weights, types.Array) and weights.layout == "C" and weights.ndim == 2 and isinstance(out, types.Array) and out.ndim == 2):
        return None  # rows of nine values one after another, or no such function

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        target = context.make_array(signature.args[2])(context, builder, args[2])
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        first = builder.gep(source.data, [builder.mul(args[1], ir.Constant(i64, N_COMPONENTS))])
        values = builder.load(builder.bitcast(first, ir.VectorType(f32, 16 * N_COMPONENTS).as_pointer()), align=4)
        row_bytes = cgutils.unpack_tuple(builder, target.strides, 2)[0]
        start = builder.bitcast(builder.gep(target.data, [args[3]]), ir.IntType(8).as_pointer())
        for k in range(N_COMPONENTS):
            mask = ir.Constant(ir.VectorType(i32, 16), [k + N_COMPONENTS * j for j in range(16)])
            component = builder.shuffle_vector(values, ir.Constant(values.type, ir.Undefined), mask)
            at = builder.gep(start, [builder.mul(row_bytes, ir.Constant(i64, k))])
            builder.store(component, builder.bitcast(at, ir.VectorType(f32, 16).as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(weights, row, out, column), codegen


@_inline
def _transpose_into(weights, first, m, out, column):
    """out[:, column:column + m] = weights[first:first + m].T"""
    whole = m - m % 16
    for i in range(0, whole, 16):
        _transpose16(weights, first + i, out, column + i)
    for i in range(whole, m):
        for k in range(N_COMPONENTS):
            out[k, column + i] = weights[first + i, k]


@_inline
def _scale_columns(q, start, stop):
    """Columns start..stop of q, the weights of one filter each, replaced by their integers q."""
    r0, r1, r2, r3, r4, r5, r6, r7, r8 = _rows(q, start, stop)
    for i in range(np.uint64(stop - start)):
        w0, w1, w2, w3, w4, w5, w6, w7, w8 = r0[i], r1[i], r2[i], r3[i], r4[i], r5[i], r6[i], r7[i], r8[i]
        p = max(max(max(abs(w0), abs(w1)), max(abs(w2), abs(w3))), max(max(abs(w4), abs(w5)), max(abs(w6), max(abs(w7), abs(w8)))))
        if p == 0:
            p = np.float32(1.0)
        r0[i] = np.rint(w0 / p * SCALE32)
        r1[i] = np.rint(w1 / p * SCALE32)
        r2[i] = np.rint(w2 / p * SCALE32)
        r3[i] = np.rint(w3 / p * SCALE32)
        r4[i] = np.rint(w4 / p * SCALE32)
        r5[i] = np.rint(w5 / p * SCALE32)
        r6[i] = np.rint(w6 / p * SCALE32)
        r7[i] = np.rint(w7 / p * SCALE32)
        r8[i] = np.rint(w8 / p * SCALE32)


@_jit
def scale_into(weights, out, start):
    """out[:, start:start + n] = the integers q of the (n, 9) C-contiguous float32 `weights` (float32):
    every filter divided by its own max |w| (1 for an all-zero filter), times 2^24, rounded half to
    even. A chunk at a time: transposed into `out` (`_transpose16`), then scaled there, in cache."""
    n = weights.shape[0]
    for first in range(0, n, CHUNK):
        m = min(n, first + CHUNK) - first
        _transpose_into(weights, first, m, out, start + first)
        _scale_columns(out, start + first, start + first + m)


@_jit
def moment_sums(q, start, stop, sums):
    """Add to `sums` ((2, N_MOMENTS) int64: high and low parts, HALF_BITS) the sums over rows
    start..stop of q ((9, n) float32 integers): first the nine sums of q_j, then q_j q_k for j <= k."""
    x = np.empty((N_COMPONENTS, PADDED_CHUNK), np.int64)
    for first in range(start, stop, CHUNK):
        _add_moments(q, first, min(stop, first + CHUNK) - first, x, sums)


@_jit
def scale_and_moments(weights, q, sums):
    """`scale_into(weights, q, 0)` and `moment_sums(q, 0, n, sums)` in one pass: each chunk's moments
    taken right after it is scaled, while it is in cache."""
    x = np.empty((N_COMPONENTS, PADDED_CHUNK), np.int64)
    for first in range(0, weights.shape[0], CHUNK):
        m = min(weights.shape[0], first + CHUNK) - first
        scale_into(weights[first:first + m], q, first)
        _add_moments(q, first, m, x, sums)


@_jit
def _add_moments(q, first, m, x, sums):
    """The moments of rows first..first + m (at most CHUNK: every sum below 2^62) added to `sums`."""
    mask = (1 << HALF_BITS) - 1
    for j in range(N_COMPONENTS):
        row, xj = q[j, first:first + m], x[j]
        for i in range(m):
            xj[i] = np.int64(row[i])
    e = 0
    for j in range(N_COMPONENTS):
        xj = x[j]
        total = np.int64(0)
        for i in range(m):
            total += xj[i]
        sums[0, e] += total >> HALF_BITS
        sums[1, e] += total & mask
        e += 1
    for j in range(N_COMPONENTS):
        xj = x[j]
        for k in range(j, N_COMPONENTS):
            xk = x[k]
            total = np.int64(0)
            for i in range(m):
                total += xj[i] * xk[i]
            sums[0, e] += total >> HALF_BITS
            sums[1, e] += total & mask
            e += 1


@_jit
def integer_range(q, start, stop, a, lo, hi):
    """lo / hi ((9,) int64) = their min / max with the coefficients a @ q of rows start..stop, `a`
    (9, 9) float64 integers such that every a @ q is an integer below 2^53 (exact in float64)."""
    q0, q1, q2, q3, q4, q5, q6, q7, q8 = _rows(q, start, stop)
    l0, l1, l2, l3, l4, l5, l6, l7, l8 = lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], lo[8]
    h0, h1, h2, h3, h4, h5, h6, h7, h8 = hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], hi[8]
    for i in range(stop - start):
        x0, x1, x2, x3, x4, x5, x6, x7, x8 = (np.float64(q0[i]), np.float64(q1[i]), np.float64(q2[i]), np.float64(q3[i]), np.float64(q4[i]),
                                              np.float64(q5[i]), np.float64(q6[i]), np.float64(q7[i]), np.float64(q8[i]))
        c = np.int64(_dot(a, 0, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l0, h0 = min(l0, c), max(h0, c)
        c = np.int64(_dot(a, 1, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l1, h1 = min(l1, c), max(h1, c)
        c = np.int64(_dot(a, 2, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l2, h2 = min(l2, c), max(h2, c)
        c = np.int64(_dot(a, 3, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l3, h3 = min(l3, c), max(h3, c)
        c = np.int64(_dot(a, 4, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l4, h4 = min(l4, c), max(h4, c)
        c = np.int64(_dot(a, 5, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l5, h5 = min(l5, c), max(h5, c)
        c = np.int64(_dot(a, 6, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l6, h6 = min(l6, c), max(h6, c)
        c = np.int64(_dot(a, 7, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l7, h7 = min(l7, c), max(h7, c)
        c = np.int64(_dot(a, 8, x0, x1, x2, x3, x4, x5, x6, x7, x8))
        l8, h8 = min(l8, c), max(h8, c)
    lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], lo[8] = l0, l1, l2, l3, l4, l5, l6, l7, l8
    hi[0], hi[1], hi[2], hi[3], hi[4], hi[5], hi[6], hi[7], hi[8] = h0, h1, h2, h3, h4, h5, h6, h7, h8


@_inline
def _bin(c, factor, shift, top):
    t = c * factor
    t = t + shift
    t = min(max(t, 0.0), top)
    return np.int32(t)


@_jit
def _bin_indices(q, first, m, a, factor, shift, top, index):
    """index[k, i] = the bin of coefficient k of row first + i. Unsigned indices: numba then adds no
    check for negative ones, and LLVM vectorizes the loop over two arrays (a few runtime alias checks)."""
    f0, f1, f2, f3, f4, f5, f6, f7, f8 = factor
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = shift
    for i in range(np.uint64(m)):
        r = np.uint64(first) + i
        x0, x1, x2, x3, x4, x5, x6, x7, x8 = (np.float64(q[0, r]), np.float64(q[1, r]), np.float64(q[2, r]), np.float64(q[3, r]), np.float64(q[4, r]),
                                              np.float64(q[5, r]), np.float64(q[6, r]), np.float64(q[7, r]), np.float64(q[8, r]))
        index[0, i] = _bin(_dot(a, 0, x0, x1, x2, x3, x4, x5, x6, x7, x8), f0, s0, top)
        index[1, i] = _bin(_dot(a, 1, x0, x1, x2, x3, x4, x5, x6, x7, x8), f1, s1, top)
        index[2, i] = _bin(_dot(a, 2, x0, x1, x2, x3, x4, x5, x6, x7, x8), f2, s2, top)
        index[3, i] = _bin(_dot(a, 3, x0, x1, x2, x3, x4, x5, x6, x7, x8), f3, s3, top)
        index[4, i] = _bin(_dot(a, 4, x0, x1, x2, x3, x4, x5, x6, x7, x8), f4, s4, top)
        index[5, i] = _bin(_dot(a, 5, x0, x1, x2, x3, x4, x5, x6, x7, x8), f5, s5, top)
        index[6, i] = _bin(_dot(a, 6, x0, x1, x2, x3, x4, x5, x6, x7, x8), f6, s6, top)
        index[7, i] = _bin(_dot(a, 7, x0, x1, x2, x3, x4, x5, x6, x7, x8), f7, s7, top)
        index[8, i] = _bin(_dot(a, 8, x0, x1, x2, x3, x4, x5, x6, x7, x8), f8, s8, top)


@_jit
def count_bins(q, start, stop, a, factor, shift, bins, codes, offsets, counts):
    """Count every coefficient of rows start..stop in its bin, per axis and group: for axis x, row i
    and component k, counts[offsets[x] + (codes[x, i] * 9 + k) * bins + bin] += 1, the bin being
    clip((a @ q)[k] * factor[k] + shift[k], 0, bins - 1) truncated. codes: (n_axes, n) int32, the
    group of every row along every axis; counts: int64, every axis' (groups, 9, bins) one after another."""
    index = np.empty((N_COMPONENTS, PADDED_CHUNK), np.int32)
    top = np.float64(bins - 1)
    for first in range(start, stop, CHUNK):
        m = min(stop, first + CHUNK) - first
        _bin_indices(q, first, m, a, factor, shift, top, index)
        for x in range(codes.shape[0]):
            axis_codes, offset = codes[x], np.uint64(offsets[x])
            for i in range(np.uint64(m)):
                row = offset + np.uint64(axis_codes[np.uint64(first) + i]) * np.uint64(N_COMPONENTS * bins)
                for k in range(N_COMPONENTS):
                    counts[row + np.uint64(k * bins + index[k, i])] += 1
