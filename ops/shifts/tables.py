"""The analysis tables under DIR/analysis/: what a shift analysis writes and what a later one reads
back, a stored basis and its coefficient range (`load_basis`), to skip steps 2 and 3.

    basis.lance       one row per component: the basis (step 2) and coefficient range (step 3)
    histograms.lance  one row per group x component: counts (step 4), density and bandwidth
    shifts.lance      one row per pair of groups: symmetric KL per component and weighted (step 5)

Rows of the same selection (and axis) are replaced by a new run; others are kept. Every row carries
`db_version`, the version of filters.lance it was computed from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops.shifts.aggregates import N_COMPONENTS, Basis, CoefficientRange, weights_array
from ops.shifts.divergence import ShiftResult
from ops.shifts.selection import DEFAULT_SELECTION, ShiftInputError

# --- stored bases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBasis:
    """A basis and its coefficient range as basis.lance holds them (steps 2 and 3 of an earlier run)."""

    basis: Basis
    value_range: CoefficientRange
    selection: str
    db_version: int


def load_basis(source: str | os.PathLike, selection: str | None = None) -> StoredBasis:
    """A basis and its coefficient range from a basis.lance table (or a DB folder holding
    analysis/basis.lance), the one computed over `selection` (default: the only one stored, or else
    the one over the whole default selection)."""
    path = Path(source)
    if (path / "analysis" / "basis.lance").exists():
        path = path / "analysis" / "basis.lance"
    try:
        table = lance.dataset(str(path)).to_table()
    except Exception:  # noqa: BLE001 - not a Lance dataset
        raise ShiftInputError(f"no stored basis at {source}: give a DB folder with analysis/basis.lance (written by an earlier `filterdb shifts`) or a basis.lance path") from None
    stored = sorted(set(table.column("selection").to_pylist()))
    if selection is None:
        whole = [s for s in stored if s in ("", DEFAULT_SELECTION)]  # "": a DB without transposed layers
        selection = stored[0] if len(stored) == 1 else whole[0] if whole else DEFAULT_SELECTION
    if selection not in stored:
        raise ShiftInputError(f"{path} holds no basis computed over {selection!r}; it has: {stored}")
    rows = table.filter(pc.equal(table.column("selection"), selection)).sort_by("component")
    basis = Basis(
        mean=weights_array(rows.column("mean"))[0].copy(),
        components=weights_array(rows.column("vector")).copy(),
        explained_variance=rows.column("explained_variance").to_numpy(),
        explained_variance_ratio=rows.column("explained_variance_ratio").to_numpy(),
        n=int(rows.column("n")[0].as_py()),
    )
    value_range = CoefficientRange(rows.column("coefficient_min").to_numpy().astype(np.float32), rows.column("coefficient_max").to_numpy().astype(np.float32))
    return StoredBasis(basis, value_range, selection, int(rows.column("db_version")[0].as_py()))


def stored_basis_for(db: Path, selection: str | None, version: int) -> StoredBasis | None:
    """The basis stored for exactly this selection of this version of the DB, if any: the same data,
    hence the same numbers, without steps 2 and 3."""
    try:
        stored = load_basis(db / "analysis" / "basis.lance", selection or "")
    except ShiftInputError:
        return None
    return stored if stored.db_version == version else None


# --- writing ---------------------------------------------------------------------------------------


def _vectors(rows: np.ndarray, value_type=pa.float32()) -> pa.FixedSizeListArray:
    rows = np.asarray(rows)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), value_type), rows.shape[1])


def _sql_string(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _replace_rows(path: Path, table: pa.Table, key: str) -> None:
    """Write `table` to the Lance dataset at `path`, replacing the rows that match `key` (SQL)."""
    if path.exists():
        dataset = lance.dataset(str(path))
        dataset.delete(key)
        lance.write_dataset(table, str(path), mode="append")
    else:
        lance.write_dataset(table, str(path))


def _tag_columns(result: ShiftResult, n: int) -> dict[str, pa.Array]:
    """What `n` rows of histograms or shifts were computed from: axis, selection, basis, DB version."""
    return {
        "axis": pa.array([result.axis] * n, pa.string()),
        "selection": pa.array([result.selection or ""] * n, pa.string()),
        "basis_selection": pa.array([result.basis_selection or ""] * n, pa.string()),
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
            "coefficient_min": pa.array(result.value_range.lo, pa.float32()),
            "coefficient_max": pa.array(result.value_range.hi, pa.float32()),
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


def write_analysis(db: str | os.PathLike, result: ShiftResult, write_basis: bool = True) -> Path:
    """DIR/analysis/{basis,histograms,shifts}.lance; rows of the same selection (and axis) are replaced,
    others kept."""
    folder = Path(db) / "analysis"
    folder.mkdir(exist_ok=True)
    selection = _sql_string(result.selection or "")
    if write_basis:
        _replace_rows(folder / "basis.lance", basis_table(result), f"selection = {selection}")
    key = f"axis = {_sql_string(result.axis)} AND selection = {selection}"
    _replace_rows(folder / "histograms.lance", histograms_table(result), key)
    _replace_rows(folder / "shifts.lance", shifts_table(result), key)
    return folder
