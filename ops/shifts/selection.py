"""The boundary of a shift analysis: the DB, the axis, the predicate and the options checked once,
before any step runs, each problem said with what to do (a ShiftInputError, which the CLI prints
in one line). What comes out, a `Selection`, is trusted by the steps."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import lance

from ops.errors import UsageError
from ops.predicates import predicate_error
from ops.shifts.aggregates import DEFAULT_BINS
from ops.shifts.groups import DEFAULT_DEPTH_BINS, DEPTH_AXIS, Axis
from ops.store import FILTERS_SCHEMA

DEFAULT_SELECTION = "kind != 'transposed'"
"""The study analysed Conv layers only; transposed layers are stored but left out unless a predicate
names `kind`."""


class ShiftInputError(UsageError):
    """Bad input to a shift analysis (DB, axis, predicate, basis), with what to do about it."""


@dataclass(frozen=True)
class Selection:
    """The filters one analysis goes over: `filters` (filters.lance, at the version opened: every step
    reads that one), the rows matching `predicate` (None: all), grouped along `axis`."""

    filters: lance.LanceDataset
    version: int
    predicate: str | None
    axis: Axis


def select_filters(db: Path, by: str, where: str | None = None, bins: int = DEFAULT_BINS, depth_bins: int = DEFAULT_DEPTH_BINS) -> Selection:
    """The checked selection of `db`'s filters matching `where`, grouped by `by`; raises
    ShiftInputError for a missing filters.lance, bad bin counts, an unknown axis, a predicate that does
    not run or that matches nothing."""
    uri = db / "filters.lance"
    if not uri.exists():
        raise ShiftInputError(f"no filters.lance in {db}: run `filterdb extract` first or check --db")
    if bins < 2 or depth_bins < 1:
        raise ShiftInputError(f"bins must be at least 2 and depth bins at least 1, not {bins} and {depth_bins}")
    filters = lance.dataset(str(uri))
    axis = resolve_axis(db, by, depth_bins)
    predicate = selection_predicate(where, has_transposed=_has_transposed(db, filters))
    _check_selection(filters, predicate, where)
    return Selection(filters, filters.version, predicate, axis)


def resolve_axis(db: Path, by: str, depth_bins: int = DEFAULT_DEPTH_BINS) -> Axis:
    """The axis named `by`: 'depth', a filters.lance column, or a column only models.lance has."""
    if by == DEPTH_AXIS:
        return Axis(by, "conv_depth_norm", depth_bins=depth_bins)
    if by in FILTERS_SCHEMA.names and by != "weights":
        return Axis(by, by)
    models = db / "models.lance"
    model_columns = lance.dataset(str(models)).schema.names if models.exists() else []
    if by in model_columns and by != "model_id":
        table = lance.dataset(str(models)).to_table(columns=["model_id", by], filter="status = 'ok'")
        mapping = dict(zip(table.column("model_id").to_pylist(), table.column(by).to_pylist()))
        return Axis(by, "model_id", mapping=mapping)
    choices = [DEPTH_AXIS, *[c for c in FILTERS_SCHEMA.names if c != "weights"], *[c for c in model_columns if c not in FILTERS_SCHEMA.names]]
    raise ShiftInputError(f"unknown axis {by!r}: choose one of {', '.join(choices)}")


def selection_predicate(where: str | None, has_transposed: bool = True) -> str | None:
    """The SQL predicate of the analysed filters: `where`, and kind != 'transposed' unless `where`
    names the kind column (or the DB has no transposed filters, where it selects everything anyway)."""
    if where is not None and not where.strip():
        where = None
    if where is not None and re.search(r"\bkind\b", where):
        return where
    if not has_transposed:
        return where
    return DEFAULT_SELECTION if where is None else f"({where}) AND {DEFAULT_SELECTION}"


def _has_transposed(db: Path, filters: lance.LanceDataset) -> bool:
    # layers.lance, one row per layer, says it cheaply; filters.lance needs a scan of its kind column.
    layers = db / "layers.lance"
    if layers.exists():
        try:
            return lance.dataset(str(layers)).count_rows(filter="kind = 'transposed'") > 0
        except Exception:  # noqa: BLE001 - an unreadable layers table: ask the filters
            pass
    return filters.count_rows(filter="kind = 'transposed'") > 0


def _check_selection(filters: lance.LanceDataset, predicate: str | None, where: str | None) -> None:
    try:
        found = filters.scanner(columns=["kind"], filter=predicate, limit=1).to_table().num_rows
    except Exception as error:  # noqa: BLE001 - Lance raises several types for a bad predicate
        raise predicate_error(where, error, [c for c in filters.schema.names if c != "weights"]) from None
    if found == 0:
        raise ShiftInputError(f"no filters match {predicate or 'all filters'!r} in {filters.uri}: relax --where or check the DB")
