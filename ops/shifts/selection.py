"""The boundary of a shift analysis: the DB, the axis, the predicate and the options checked once,
before any step runs, each problem said with what to do (a ShiftInputError, which the CLI prints
in one line). What comes out, a `Selection`, is trusted by the steps."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
import os

import lance

from ops.db import FilterDB, open_db
from ops.errors import UsageError
from ops.shifts.aggregates import DEFAULT_BINS, GLOBAL_RANGE, RANGE_MODES
from ops.shifts.divergence import SORTS
from ops.shifts.groups import DEFAULT_DEPTH_BINS, DEPTH_AXIS, Axis
from ops.store import FILTERS_SCHEMA, META_COLUMNS, model_key

DEFAULT_SELECTION = "kind != 'transposed'"
"""The study analysed Conv layers only; transposed layers are stored but left out unless a predicate
names `kind`."""


class ShiftInputError(UsageError):
    """Bad input to a shift analysis (DB, axis, predicate, basis), with what to do about it."""


@dataclass(frozen=True)
class Selection:
    """The filters one analysis goes over: `filters` (filters.lance, at the version `db` pinned: every
    step reads that one), the rows matching `predicate` (None: all; the DB object adds the rows of
    incomplete models to hide), grouped along each of `axes`."""

    filters: lance.LanceDataset
    version: int
    predicate: str | None
    axes: tuple[Axis, ...]
    db: FilterDB


def axis_names(by: str | Sequence[str]) -> list[str]:
    """'task,depth' or ['task', 'depth'] -> ['task', 'depth'] (blanks dropped, repeats refused)."""
    names = [n.strip() for part in ([by] if isinstance(by, str) else by) for n in str(part).split(",") if n.strip()]
    if not names:
        raise ShiftInputError("no axis given: --by takes one axis or several separated by commas, e.g. --by task,depth")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ShiftInputError(f"axis {repeated[0]!r} is given twice in --by {','.join(names)}: give each axis once")
    return names


def as_db(db: str | os.PathLike | FilterDB) -> FilterDB:
    """A DB object for a folder or URI (a FilterDB is taken as it is)."""
    return db if isinstance(db, FilterDB) else open_db(db, must_exist=False)


def select_filters(db: str | os.PathLike | FilterDB, by: str | Sequence[str], where: str | None = None, bins: int = DEFAULT_BINS,
                   depth_bins: int = DEFAULT_DEPTH_BINS, range_mode: str = GLOBAL_RANGE, sort: str | None = None) -> Selection:
    """The checked selection of `db`'s filters (a folder, a URI or an `open_db` object) matching
    `where`, grouped by each axis of `by`; raises ShiftInputError for a missing filters.lance, bad bin
    counts, an unknown range mode, sort or axis, a predicate that does not run or that matches nothing."""
    db = as_db(db)
    filters = db.dataset("filters")
    if filters is None:
        raise ShiftInputError(f"no filters.lance in {db.root}: run `filterdb extract` first or check --db")
    if bins < 2 or depth_bins < 1:
        raise ShiftInputError(f"bins must be at least 2 and depth bins at least 1, not {bins} and {depth_bins}")
    if range_mode not in RANGE_MODES:
        raise ShiftInputError(f"unknown range {range_mode!r}: choose one of {', '.join(RANGE_MODES)} (the study: {GLOBAL_RANGE})")
    if sort is not None and sort not in SORTS:
        raise ShiftInputError(f"unknown sort {sort!r}: choose one of {', '.join(SORTS)}")
    axes = tuple(resolve_axis(db, name, depth_bins) for name in axis_names(by))
    predicate = selection_predicate(where, has_transposed=_has_transposed(db))
    _check_selection(db, predicate)
    return Selection(filters, filters.version, predicate, axes, db)


def resolve_axis(db: str | os.PathLike | FilterDB, by: str, depth_bins: int = DEFAULT_DEPTH_BINS) -> Axis:
    """The axis named `by`: 'depth', a filters.lance column, or a column only models.lance has.

    An axis whose value is one per model (model_id, the meta-parameters, a models.lance column) is read
    as filters.lance's integer `model_key` and mapped to its value through the ok models rows (the
    meta columns of a model's filters rows are written from the same catalog row as its models row):
    8 bytes a filter instead of a string. Read as the strings themselves where that cannot be done: a DB
    without `model_key` (written before filterdb 0.2: `filterdb upgrade`), a models.lance without the
    column, two model ids with one key."""
    if by == DEPTH_AXIS:
        return Axis(by, "conv_depth_norm", depth_bins=depth_bins)
    db = as_db(db)
    model_columns = db.columns("models") if db.dataset("models") is not None else []
    per_model = by == "model_id" or (by in model_columns and (by in META_COLUMNS or by not in FILTERS_SCHEMA.names))
    if per_model and "model_key" in db.columns("filters"):
        mapping = _per_model_values(db, by)
        if mapping is not None:
            return Axis(by, "model_key", mapping=mapping)
    if by in FILTERS_SCHEMA.names and by not in ("weights", "model_key"):
        return Axis(by, by)
    if by in model_columns and by != "model_id":
        table = db.models(columns=["model_id", by], where="status = 'ok'", as_="arrow")
        mapping = dict(zip(table.column("model_id").to_pylist(), table.column(by).to_pylist()))
        return Axis(by, "model_id", mapping=mapping)
    choices = [DEPTH_AXIS, *[c for c in FILTERS_SCHEMA.names if c not in ("weights", "model_key")],
               *[c for c in model_columns if c not in FILTERS_SCHEMA.names]]
    raise ShiftInputError(f"unknown axis {by!r}: choose one of {', '.join(choices)}")


def _per_model_values(db: FilterDB, by: str) -> dict[int, str | None] | None:
    """model_key -> the value of `by` of every ok model, or None when two of their ids share a key."""
    columns = ["model_id"] if by == "model_id" else ["model_id", by]
    table = db.models(columns=columns, where="status = 'ok'", as_="arrow")
    mapping, owner = {}, {}
    for model_id, value in zip(table.column("model_id").to_pylist(), table.column(by).to_pylist()):
        key = model_key(model_id)
        if owner.setdefault(key, model_id) != model_id:
            return None
        mapping[key] = value
    return mapping


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


def _has_transposed(db: FilterDB) -> bool:
    # layers.lance, one row per layer, says it cheaply; filters.lance needs a scan of its kind column.
    table = "layers" if db.dataset("layers") is not None else "filters"
    return db.count(table, "kind = 'transposed'") > 0


def _check_selection(db: FilterDB, predicate: str | None) -> None:
    """A predicate that does not run raises (the DB object's one line); one that matches nothing too."""
    found = db.scanner("filters", predicate, ["kind"], limit=1).to_table().num_rows
    if found == 0:
        raise ShiftInputError(f"no filters match {predicate or 'all filters'!r} in {db.table_uri('filters')}: relax --where or check the DB")


def check_groups(axis: str, groups: list[str], predicate: str | None, uri: str) -> None:
    """After step 4: an axis needs two groups or more to compare; say so in one line otherwise."""
    if not groups:
        raise ShiftInputError(f"no filters match {predicate or 'all filters'!r} in {uri}: relax --where or check the DB")
    if len(groups) == 1:
        raise ShiftInputError(f"axis {axis!r} has one group ({groups[0]!r}) among the filters matching {predicate or 'all filters'!r}: "
                              "nothing to compare; choose another axis or widen --where")
