"""`filterdb report`: the static HTML report of a DB and its analyses (`ops/report_html.py`), built from
the figures of `ops/figures.py`. Shift analyses already stored for this version of the DB are read
back; missing ones are computed with `flows.shifts.run_shift_axes` (and stored), unless `stored_only`.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from flows.progress import StepClock

DEFAULT_AXES = ("task", "visual_category", "depth")
REPORT_FILE = "report.html"


def build_report(db: str | os.PathLike, out: str | os.PathLike | None = None, axes=DEFAULT_AXES, where: str | None = None,
                 stored_only: bool = False, sample_size: int = 100_000, progress: bool = False, timings: dict | None = None) -> Path:
    """Writes OUT/report.html (OUT defaults to DB/report) and returns its path. Reads the models and
    layers tables, the analysis tables and bounded samples of filters (`sample_size` drawn uniformly,
    a few per group), never the whole filters table, except through `run_shift_axes` for the
    analyses not stored yet (one pass for all of them; none with `stored_only`). `timings` receives
    the seconds of each step by name: "analyses" (that pass), "stored" (reading the analysis tables),
    "quality", "sample", "summary", "html" (figures and page)."""
    from ops.errors import UsageError
    from ops.report_data import db_summary, sample_filters, stored_shift_result
    from ops.report_html import ReportContent, report_html
    from ops.shifts import DEPTH_AXIS, select_filters

    clock = StepClock(timings)
    db = str(db).rstrip("/")  # a folder or a URI: the DB object joins table URIs, never pathlib
    axes = list(dict.fromkeys(a.strip() for a in axes if a.strip()))
    if not axes:
        raise UsageError("--axes is empty: name at least one axis, e.g. --axes task,visual_category,depth")
    if out is None and "://" in db and not db.startswith("file://"):
        raise UsageError(f"{db} is on object storage: give --out, a local folder for the report")
    selection = select_filters(db, axes, where)  # checks the DB, the axes and the predicate (UsageError)
    predicate, version = selection.predicate, selection.version
    results = clock("stored", lambda: {axis: stored_shift_result(db, axis, predicate, version) for axis in axes})
    absent = [axis for axis, result in results.items() if result is None]
    where_option = f' --where "{where}"' if where else ""
    missing = {}
    if stored_only:
        missing = {axis: f"Not stored for this version of the DB: `filterdb shifts --db {db} --by {axis}{where_option}` computes it."
                   for axis in absent}
    elif absent:
        results.update(clock("analyses", lambda: _analyses(db, absent, where, progress, missing)))
    results = {axis: result for axis, result in results.items() if result is not None}
    quality, quality_note = clock("quality", lambda: _quality(db, where))
    sample_axes = axes if DEPTH_AXIS in axes else [*axes, DEPTH_AXIS]
    sample = clock("sample", lambda: sample_filters(db, predicate, version, sample_axes, n=sample_size))
    options = {
        "DB": db,
        "made": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") + f" by filterdb {_version()}",
        "command": f"filterdb report --db {db} --axes {','.join(axes)}{where_option}",
        "selection of the filters": predicate or "all filters",
        "filters.lance version analysed": str(version),
    }
    summary = clock("summary", lambda: db_summary(db))
    content = ReportContent(summary, options, results, missing, quality, quality_note, sample)
    page = clock("html", lambda: report_html(content))
    folder = Path(out) if out is not None else Path(db.removeprefix("file://")) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    partial = path.with_suffix(".html.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)  # a reader never sees half a page
    return path


def _analyses(db: str, axes: list[str], where: str | None, progress: bool, missing: dict) -> dict:
    """The shift analyses of `axes`, one pass for all; when that fails for bad input (an axis with one
    group), each axis on its own, the reason of every one that fails kept in `missing`."""
    from flows.shifts import run_shift_axes
    from ops.errors import UsageError

    try:
        return run_shift_axes(db, axes, where=where, progress=progress)
    except UsageError as error:
        if len(axes) == 1:
            missing[axes[0]] = f"Not computed: {error}"
            return {}
    results = {}
    for axis in axes:
        try:
            results.update(run_shift_axes(db, [axis], where=where, progress=progress))
        except UsageError as error:
            missing[axis] = f"Not computed: {error}"
    return results


def _quality(db: str, where: str | None):
    """The quality report of the selection, or None and why (no layers, or none with metrics)."""
    from flows.quality import quality_report
    from ops.errors import UsageError

    try:
        report = quality_report(db, where)
    except UsageError as error:
        return None, f"No layer quality to show: {error}"
    report.layers = report.layers.dropna(subset=["sparsity", "variance_entropy_norm"])
    if report.layers.empty:
        return None, f"The selected layers carry no quality metrics: `filterdb quality --db {db} --backfill` computes them."
    return report, ""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("filterdb")
    except PackageNotFoundError:
        return "(not installed)"


def _report(args) -> int:
    path = build_report(args.db, args.out, axes=args.axes.split(","), where=args.where, stored_only=args.stored_only, progress=True)
    print(f"report: {path}")
    return 0


def add_commands(commands) -> None:
    """Adds this module's subcommands to the `filterdb` parser."""
    report = commands.add_parser("report", help="a self-contained HTML report of the DB and its analyses")
    report.add_argument("--db", required=True, help="DB folder")
    report.add_argument("--out", help="folder of report.html (default: DB/report)")
    report.add_argument("--axes", default=",".join(DEFAULT_AXES),
                        help=f"comma-separated axes of the shift sections (default {','.join(DEFAULT_AXES)})")
    report.add_argument("--where", help="SQL predicate selecting the filters and layers shown (as for shifts and quality)")
    report.add_argument("--stored-only", action="store_true",
                        help="compute no analysis: show the stored ones, name the command for the others")
    report.set_defaults(run=_report)
