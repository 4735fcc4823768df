"""`filterdb sql`, `similar`, `index`, `info`, `vacuum` and `upgrade`: the DB's query and upkeep commands.

Each opens the DB with `ops.db.open_db` and prints what it found; top-level imports stay light, so
that `filterdb --help` is quick.
"""

from __future__ import annotations

MAX_PRINTED_ROWS = 40


def add_commands(commands) -> None:
    """Adds this module's subcommands to the `filterdb` parser."""
    sql = commands.add_parser("sql", help="run SQL (DuckDB) over the DB's tables and print the result",
                              description="Tables: models, layers, filters (rows of ok models), snapshots and the "
                                          "analysis tables (basis, histograms, shifts, ...).")
    _db_options(sql)
    sql.add_argument("query", help="a SELECT, e.g. \"SELECT family, count(*) FROM models GROUP BY family\"")
    sql.add_argument("--out", help="also write the result to this .parquet or .csv file")
    sql.add_argument("--max-rows", type=int, default=MAX_PRINTED_ROWS, help="rows to print")
    sql.set_defaults(run=_sql)

    similar = commands.add_parser("similar", help="the stored filters most similar in shape to a kernel")
    _db_options(similar)
    similar.add_argument("--kernel", required=True, help="nine numbers, rows separated by ';': \"0,1,0;1,-4,1;0,1,0\"")
    similar.add_argument("-k", type=int, default=10, help="how many filters")
    similar.add_argument("--where", help="SQL predicate over filters columns, e.g. \"family = 'resnet'\"")
    similar.add_argument("--sign-invariant", action="store_true", help="a kernel and its negative count as the same shape")
    similar.add_argument("--exact", action="store_true", help="exact search even when there is a vector index")
    similar.add_argument("--nprobes", type=int, help="index partitions to search (default: ops.similarity.NPROBES)")
    similar.set_defaults(run=_similar)

    index = commands.add_parser("index", help="build the vector index of the filters (for `filterdb similar`)")
    _db_options(index, version=False)
    index.add_argument("--partitions", type=int, help="IVF partitions (default: one per ~8k filters)")
    index.set_defaults(run=_index)

    info = commands.add_parser("info", help="tables, rows, models ok/failed, size, indexes and snapshots of a DB")
    _db_options(info)
    info.set_defaults(run=_info)

    vacuum = commands.add_parser("vacuum", help="delete old table versions and unreferenced data files")
    _db_options(vacuum, version=False)
    vacuum.add_argument("--keep", type=int, help="keep only the newest N snapshots (default: keep all)")
    vacuum.set_defaults(run=_vacuum)

    upgrade = commands.add_parser("upgrade", help="bring a DB written by an earlier filterdb to the current layout",
                                  description="Adds what the current layout has and the DB lacks (filters.lance's model_key, "
                                              "filterdb 0.2), without rewriting the filters; not while another process writes.")
    _db_options(upgrade, version=False)
    upgrade.set_defaults(run=_upgrade)


def _db_options(parser, version: bool = True) -> None:
    parser.add_argument("--db", required=True, help="DB folder or URI (s3://bucket/db, gs://..., file:///...)")
    if version:
        parser.add_argument("--version", type=int, help="read this snapshot (see `filterdb info`)")


def _open(args):
    from ops.db import open_db

    return open_db(args.db, version=getattr(args, "version", None))


def _sql(args) -> int:
    result = _open(args).sql(args.query)
    print_frame(result, f"{len(result)} rows", args.max_rows)
    if args.out:
        print(write_frame(result, args.out))
    return 0


def _similar(args) -> int:
    db = _open(args)
    result = db.similar(args.kernel, k=args.k, where=args.where, sign_invariant=args.sign_invariant,
                        exact=True if args.exact else None, nprobes=args.nprobes)
    shown = result.assign(weights=[" / ".join(" ".join(f"{v:.2g}" for v in row) for row in w) for w in result["weights"]])
    search = "exact" if args.exact or not db.has_vector_index() else "vector index"
    print_frame(shown, f"{len(result)} nearest filters by shape ({search}; distance 1 - cosine"
                       f"{', sign-invariant' if args.sign_invariant else ''})", args.k)
    return 0


def _index(args) -> int:
    import time

    started = time.perf_counter()
    built = _open(args).create_vector_index(args.partitions)
    print(f"indexed {built['rows']:,} filters ({built['index_type']}, {built['partitions']} partitions, cosine) "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def _info(args) -> int:
    print_info(_open(args).info())
    return 0


def _vacuum(args) -> int:
    from ops.errors import UsageError

    if args.keep is not None and args.keep < 0:
        raise UsageError(f"--keep {args.keep}: give 0 or more snapshots to keep")
    done = _open(args).vacuum(keep=args.keep)
    removed = done["snapshots_removed"]
    print(f"removed {done['versions_removed']} old table versions ({_size(done['bytes_removed'])} freed)"
          + (f" and snapshots {', '.join(map(str, removed))}" if removed else ""))
    return 0


def _upgrade(args) -> int:
    db = _open(args)
    if db.dataset("filters") is None:
        from ops.errors import UsageError

        raise UsageError(f"no filters.lance in {db.root}: nothing to upgrade (check --db)")
    added = db.upgrade()
    print(f"upgraded {db.root}: added {', '.join(added)}" if added else f"{db.root} has the current layout: nothing to do")
    return 0


# --- printing ----------------------------------------------------------------------------------------


def print_frame(frame, title: str, max_rows: int = MAX_PRINTED_ROWS) -> None:
    """A pandas frame as one rich table, at most `max_rows` rows (saying how many are left out)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right" if frame[column].dtype.kind in "iuf" else "left")
    for row in frame.head(max_rows).itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    console = Console(width=max(120, Console().width))
    console.print(table)
    if len(frame) > max_rows:
        console.print(f"({len(frame) - max_rows} more rows: --max-rows, or --out FILE)")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_frame(frame, out: str) -> str:
    """The result as .parquet or .csv, by the file's suffix; returns what was written."""
    from ops.errors import UsageError

    if out.lower().endswith(".parquet"):
        frame.to_parquet(out, index=False)
    elif out.lower().endswith(".csv"):
        frame.to_csv(out, index=False)
    else:
        raise UsageError(f"--out {out}: unknown format (use .parquet or .csv)")
    return f"wrote {len(frame)} rows to {out}"


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def print_info(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    at = f" (snapshot {info['version']})" if info["version"] is not None else ""
    console.print(f"DB {info['root']}{at}: {info['models_ok']} models ok, {info['models_failed']} failed")
    tables = Table(title="tables")
    for column in ("table", "rows", "visible rows", "version", "fragments", "size", "indexes"):
        tables.add_column(column, justify="left" if column in ("table", "indexes") else "right")
    for name, t in info["tables"].items():
        tables.add_row(name, f"{t['rows']:,}", "" if t["visible_rows"] is None else f"{t['visible_rows']:,}",
                       str(t["version"]), str(t["fragments"]), _size(t["bytes"]), ", ".join(t["indexes"]) or "-")
    console.print(tables)
    snapshots = info["snapshots"]
    if len(snapshots):
        shown = snapshots[["snapshot", "created_at", "kind", "models_added", "models_removed", "models_failed",
                           "models_ok", "rows_filters"]].copy()
        shown["created_at"] = shown["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S")
        print_frame(shown, f"{len(snapshots)} snapshots (read one with --version N)")
    else:
        console.print("no snapshots yet (every extraction and analysis records one)")
