"""The analysis tables under DIR/analysis/: what a shift analysis writes and what a later one reads
back, a stored basis and its coefficient range (`load_basis`), to skip steps 2 and 3.

    basis.lance       one row per component: the basis (step 2) and coefficient range (step 3)
    histograms.lance  one row per group x component: counts (step 4), density and bandwidth
    shifts.lance      one row per pair of groups: symmetric KL per component and weighted (step 5)

Every row carries `db_version`, the version of filters.lance it was computed from, and the options
that change its numbers: `selection`, and for histograms and shifts also `basis_selection`,
`range_mode` and `bins`. A new run replaces, in one commit, the rows of the same selection (basis),
or of the same axis, selection, basis selection, range mode and bins (histograms, shifts); others
are kept. Tables written before a column existed get it, null in their older rows. Reading and
writing go through the DB object (`ops.db`: `read_analysis`, `write_analysis`), and every analysis
written is recorded as a DB snapshot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops.db import ANALYSIS_FOLDER, FilterDB, open_db

from ops.shifts.aggregates import N_COMPONENTS, Basis, CoefficientRange, weights_array
from ops.shifts.divergence import ShiftResult
from ops.shifts.selection import DEFAULT_SELECTION, ShiftInputError, as_db

# --- stored bases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBasis:
    """A basis and its coefficient range as basis.lance holds them (steps 2 and 3 of an earlier run)."""

    basis: Basis
    value_range: CoefficientRange
    selection: str
    db_version: int


def _stored_bases(source: str | os.PathLike | FilterDB) -> tuple[pa.Table | None, str]:
    """The rows of a basis table and its URI: `source` is a DB (folder, URI or `open_db` object), whose
    analysis/basis.lance is read, or the URI of a basis.lance table itself."""
    if not isinstance(source, FilterDB):
        text = str(source).rstrip("/")
        if text.endswith(".lance"):  # a table: open the folder holding it as a DB root
            root, name = text.rsplit("/", 1) if "/" in text else (".", text)
            folder = open_db(root, must_exist=False)
            table = folder.dataset(name[: -len(".lance")])
            return (None if table is None else table.to_table()), text
    db = as_db(source)
    return db.read_analysis("basis"), db.analysis_uri("basis")


def load_basis(source: str | os.PathLike | FilterDB, selection: str | None = None) -> StoredBasis:
    """A basis and its coefficient range from a DB (folder, URI or `open_db` object) holding
    analysis/basis.lance, or from a basis.lance table, the one computed over `selection` (default:
    the only one stored, or else the one over the whole default selection)."""
    table, uri = _stored_bases(source)
    if table is None:
        raise ShiftInputError(f"no stored basis at {source}: give a DB folder with analysis/basis.lance (written by an earlier `filterdb shifts`) or a basis.lance path")
    stored = sorted(set(table.column("selection").to_pylist()))
    if selection is None:
        whole = [s for s in stored if s in ("", DEFAULT_SELECTION)]  # "": a DB without transposed layers
        selection = stored[0] if len(stored) == 1 else whole[0] if whole else DEFAULT_SELECTION
    if selection not in stored:
        raise ShiftInputError(f"{uri} holds no basis computed over {selection!r}; it has: {stored}")
    rows = table.filter(pc.equal(table.column("selection"), selection)).sort_by("component")
    basis = Basis(
        mean=weights_array(rows.column("mean"))[0].copy(),
        components=weights_array(rows.column("vector")).copy(),
        explained_variance=rows.column("explained_variance").to_numpy(),
        explained_variance_ratio=rows.column("explained_variance_ratio").to_numpy(),
        n=int(rows.column("n")[0].as_py()),
    )
    value_range = CoefficientRange(rows.column("coefficient_min").to_numpy().astype(np.float64), rows.column("coefficient_max").to_numpy().astype(np.float64))
    return StoredBasis(basis, value_range, selection, int(rows.column("db_version")[0].as_py()))


def stored_basis_for(db: str | os.PathLike | FilterDB, selection: str | None, version: int) -> StoredBasis | None:
    """The basis stored for exactly this selection of this version of the DB, if any: the same data,
    hence the same numbers, without steps 2 and 3."""
    try:
        stored = load_basis(as_db(db), selection or "")
    except ShiftInputError:
        return None
    return stored if stored.db_version == version else None


# --- writing ---------------------------------------------------------------------------------------


def _vectors(rows: np.ndarray, value_type=pa.float32()) -> pa.FixedSizeListArray:
    rows = np.asarray(rows)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), value_type), rows.shape[1])


def _tag_columns(result: ShiftResult, n: int) -> dict[str, pa.Array]:
    """What `n` rows of histograms or shifts were computed from: axis, selection, basis, DB version."""
    return {
        "axis": pa.array([result.axis] * n, pa.string()),
        "selection": pa.array([result.selection or ""] * n, pa.string()),
        "basis_selection": pa.array([result.basis_selection or ""] * n, pa.string()),
        "range_mode": pa.array([result.range_mode] * n, pa.string()),
        "bins": pa.array([result.histograms.bins] * n, pa.int64()),
        "db_version": pa.array([result.db_version] * n, pa.int64()),
    }


def basis_table(result: ShiftResult) -> pa.Table:
    b, k = result.basis, np.arange(N_COMPONENTS)
    return pa.table(
        {
            "selection": pa.array([result.selection or ""] * N_COMPONENTS, pa.string()),
            "db_version": pa.array([result.db_version] * N_COMPONENTS, pa.int64()),
            "n": pa.array([b.n] * N_COMPONENTS, pa.int64()),
            "component": pa.array(k, pa.int32()),
            "mean": _vectors(np.tile(b.mean, (N_COMPONENTS, 1))),
            "vector": _vectors(b.components),
            "explained_variance": pa.array(b.explained_variance, pa.float64()),
            "explained_variance_ratio": pa.array(b.explained_variance_ratio, pa.float64()),
            "coefficient_min": pa.array(result.value_range.lo, pa.float64()),
            "coefficient_max": pa.array(result.value_range.hi, pa.float64()),
        }
    )


def histograms_table(result: ShiftResult) -> pa.Table:
    h, densities = result.histograms, result.densities()
    rows = [(g, k) for g in result.groups for k in range(N_COMPONENTS)]
    n = len(rows)
    return pa.table(
        {
            **_tag_columns(result, n),
            "group": pa.array([g for g, _ in rows], pa.string()),
            "n": pa.array([int(h.counts[g][k].sum()) for g, k in rows], pa.int64()),
            "component": pa.array([k for _, k in rows], pa.int32()),
            "lo": pa.array([h.lo[k] for _, k in rows], pa.float64()),
            "hi": pa.array([h.hi[k] for _, k in rows], pa.float64()),
            "counts": pa.array([h.counts[g][k] for g, k in rows], pa.list_(pa.int64())),
            "density": pa.array([densities[g][0][k] for g, k in rows], pa.list_(pa.float64())),
            "bandwidth": pa.array([densities[g][1][k] for g, k in rows], pa.float64()),
        }
    )


def shifts_table(result: ShiftResult) -> pa.Table:
    pairs = [(a, b) for a in range(len(result.groups)) for b in range(a + 1, len(result.groups))]
    n = len(pairs)
    return pa.table(
        {
            **_tag_columns(result, n),
            "group_a": pa.array([result.groups[a] for a, _ in pairs], pa.string()),
            "group_b": pa.array([result.groups[b] for _, b in pairs], pa.string()),
            "n_a": pa.array([int(result.sizes[a]) for a, _ in pairs], pa.int64()),
            "n_b": pa.array([int(result.sizes[b]) for _, b in pairs], pa.int64()),
            "kl": _vectors(np.array([result.kl[a, b] for a, b in pairs]).reshape(n, N_COMPONENTS), pa.float64()),
            "kl_weighted": pa.array([result.kl_weighted[a, b] for a, b in pairs], pa.float64()),
        }
    )


def write_analysis(db: str | os.PathLike | FilterDB, result: ShiftResult, write_basis: bool = True) -> str:
    """DIR/analysis/{basis,histograms,shifts}.lance, each in one commit; rows computed with the same
    options are replaced, others kept. Returns the URI of the analysis folder. (The caller records
    the DB snapshot once it has written all its results: `FilterDB.snapshot`.)"""
    db = as_db(db)
    if write_basis:
        db.write_analysis("basis", basis_table(result), replace={"selection": result.selection or ""})
    key = {"axis": result.axis, "selection": result.selection or "", "basis_selection": result.basis_selection or "",
           "range_mode": result.range_mode, "bins": result.histograms.bins}
    db.write_analysis("histograms", histograms_table(result), replace=key)
    db.write_analysis("shifts", shifts_table(result), replace=key)
    return f"{db.root}/{ANALYSIS_FOLDER}"
