"""Nearest filters by shape: `db.similar(kernel, k=10, where=None)`.

Shape distance: the cosine distance between the two kernels as 9-vectors,
`d(a, b) = 1 - <a, b> / (|a| |b|)`, from 0 (the same shape) to 2 (the negated shape). It does not
change when either kernel is multiplied by a positive number, so, like the study's peak scaling
(each filter divided by its own `max |w|`), it compares shapes and ignores magnitudes. With
`sign_invariant=True` the distance is `1 - |<a, b>| / (|a| |b|)` (a kernel and its negative are the
same shape, at distance 0). All-zero filters have no shape and are never returned.

Search runs in Lance: with the vector index of `filterdb index` (IVF, cosine) an approximate search
(`nprobes` partitions, default NPROBES; `refine_factor` re-ranks that many times k by the exact
distance), without one an exact scan. A `where` predicate is applied before the search by default
(`prefilter=True`; a scalar index on the predicate's columns serves it), so k results come back
when k filters match.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ops.errors import UsageError

NPROBES = 32
RESULT_COLUMNS = ["model_id", "layer_index", "out_index", "in_index", "conv_depth", "conv_depth_norm", "kind", "weights"]
KERNEL_EXAMPLE = '"0,1,0;1,-4,1;0,1,0" (rows separated by ";")'


def parse_kernel(kernel) -> np.ndarray:
    """A 3x3 kernel as a (9,) float32 array: from a string "a,b,c;d,e,f;g,h,i" (rows separated by `;`,
    values by `,` or spaces), or anything numpy reads as 9 or 3x3 numbers. Raises UsageError naming
    what is wrong (not 3x3, not numeric, not finite, all zero)."""
    if isinstance(kernel, str):
        rows = [r for r in kernel.strip().split(";") if r.strip()]
        try:
            values = [[float(v) for v in re.split(r"[,\s]+", r.strip()) if v] for r in rows]
        except ValueError:
            raise UsageError(f"kernel {kernel!r} is not numeric: write nine numbers, e.g. {KERNEL_EXAMPLE}") from None
        if len(values) != 3 or any(len(r) != 3 for r in values):
            shape = "x".join(str(len(r)) for r in values) or "empty"
            raise UsageError(f"kernel {kernel!r} is not 3x3 (rows of {shape} values): write three rows of three, e.g. {KERNEL_EXAMPLE}")
        array = np.array(values, dtype=np.float64)
    else:
        try:
            array = np.asarray(kernel, dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError(f"kernel {kernel!r} is not numeric: give nine numbers as a 3x3 array or e.g. {KERNEL_EXAMPLE}") from None
        if array.size != 9 or array.shape not in ((9,), (3, 3), (1, 3, 3), (1, 9)):
            raise UsageError(f"kernel of shape {array.shape} is not 3x3: give a (3, 3) array or nine numbers")
    if not np.isfinite(array).all():
        raise UsageError("kernel has NaN or infinite values: give nine finite numbers")
    if not np.any(array):
        raise UsageError("kernel is all zeros, which has no shape: give a kernel with a non-zero value")
    return array.reshape(9).astype(np.float32)


def search(db, kernel, k: int = 10, where: str | None = None, sign_invariant: bool = False, exact: bool | None = None,
           prefilter: bool = True, nprobes: int | None = None, refine_factor: int | None = None) -> pd.DataFrame:
    """The k visible filters nearest to `kernel` in shape distance (module doc), nearest first;
    `exact=None` uses the vector index when there is one."""
    query = parse_kernel(kernel)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"k={k!r}: give a positive number of filters")
    use_index = db.has_vector_index() if exact is None else not exact
    found = [_nearest(db, q, int(k), where, use_index, prefilter, nprobes, refine_factor)
             for q in ([query, -query] if sign_invariant else [query])]
    result = pd.concat(found, ignore_index=True) if len(found) > 1 else found[0]
    if sign_invariant:  # a filter's distance to -q is 2 - its distance to q: keep the smaller, once
        result = result.sort_values("distance", kind="stable").drop_duplicates("_rowid").head(int(k))
    return result.drop(columns="_rowid").reset_index(drop=True)


def _nearest(db, query: np.ndarray, k: int, where, use_index: bool, prefilter: bool, nprobes, refine_factor) -> pd.DataFrame:
    nearest = {"column": "weights", "q": query, "k": k, "metric": "cosine", "use_index": use_index}
    if use_index:
        nearest["nprobes"] = nprobes or NPROBES
        if refine_factor:
            nearest["refine_factor"] = refine_factor
    scanner = db.scanner("filters", where, [*RESULT_COLUMNS, "_distance"], nearest=nearest, prefilter=prefilter,
                         with_row_id=True, disable_scoring_autoprojection=True)
    table = scanner.to_table()
    frame = table.to_pandas().rename(columns={"_distance": "distance"})
    frame = frame[np.isfinite(frame["distance"])]
    frame["weights"] = [np.asarray(w, np.float32).reshape(3, 3) for w in frame["weights"]]
    return frame.sort_values("distance", kind="stable").head(k).reset_index(drop=True)
