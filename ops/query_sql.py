"""`db.sql(...)`: DuckDB over the DB's Lance tables, predicates and projections pushed into the scans.

Each table is handed to DuckDB as the Lance dataset itself (a pyarrow Dataset), which DuckDB scans
with the query's column list and filters, so `SELECT count(*) FROM filters WHERE model_id = 'x'`
reads `model_id` only, through its scalar index. `layers` and `filters` are views that show the rows
of ok models only (the DB object's visibility predicate, an `IN` list DuckDB pushes down too).
"""

from __future__ import annotations

import re

import duckdb

from ops.errors import UsageError
from ops.store import TABLES

_UNKNOWN_TABLE = re.compile(r"Table with name (\S+) does not exist")
_UNKNOWN_COLUMN = re.compile(r'(?:Referenced column|column with name) "?([^"\s]+)"? not found')
_SYNTAX = re.compile(r"Parser Error: (.*)")


class SQLError(UsageError):
    """A query DuckDB cannot run over the DB, said in one line with the tables there are."""


def connect(db) -> tuple[duckdb.DuckDBPyConnection, dict[str, list[str]]]:
    """A DuckDB connection with the DB's tables registered under their names (analysis tables by
    theirs, e.g. `shifts`, also as `analysis_NAME`); returns it and table -> columns."""
    con = duckdb.connect()
    tables: dict[str, list[str]] = {}
    for table in TABLES:
        ds = db.dataset(table)
        if ds is None:
            continue
        hidden = db._visibility(table)
        if hidden:
            con.register(f"_{table}_all", ds)
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_all WHERE {hidden}")
        else:
            con.register(table, ds)
        tables[table] = ds.schema.names
    snapshots = db.dataset("snapshots")
    if snapshots is not None:
        con.register("snapshots", snapshots)
        tables["snapshots"] = snapshots.schema.names
    for name in db.analysis_tables():
        ds = db.dataset(f"analysis/{name}")
        if ds is None:
            continue
        for alias in (f"analysis_{name}", name):
            if alias not in tables:
                con.register(alias, ds)
                tables[alias] = ds.schema.names
    return con, tables


def run_sql(db, query: str, as_: str = "pandas"):
    if as_ not in ("pandas", "arrow"):
        raise UsageError(f"as_={as_!r}: choose pandas or arrow")
    if not query or not query.strip():
        raise SQLError("empty query: write e.g. \"SELECT family, count(*) FROM models GROUP BY family\"")
    con, tables = db.sql_connection()
    if not tables:
        raise UsageError(f"no DB at {db.root} (no tables there): run `filterdb extract CATALOG --db {db.root}` first")
    try:
        result = con.sql(query)
        if result is None:
            raise SQLError(f"{query!r} returns no rows: write a SELECT")
        return result.df() if as_ == "pandas" else result.to_arrow_table()
    except duckdb.Error as error:
        raise sql_error(query, error, tables) from None


def sql_error(query: str, error: Exception, tables: dict[str, list[str]]) -> SQLError:
    """DuckDB's error as one line naming the problem and what is there."""
    message = str(error).strip()
    first = message.splitlines()[0] if message else type(error).__name__
    found = _UNKNOWN_TABLE.search(message)
    if found:
        return SQLError(f"unknown table {found.group(1)}; the tables are: {', '.join(tables)}")
    found = _UNKNOWN_COLUMN.search(message)
    if found:
        candidates = re.search(r"Candidate bindings: (.*)", message)
        hint = f" (did you mean {candidates.group(1).strip()})" if candidates else ""
        return SQLError(f"unknown column {found.group(1)}{hint}; the columns of each table: `filterdb info --db DIR` "
                        f"or `DESCRIBE table`")
    found = _SYNTAX.search(message)
    if found:
        return SQLError(f"{query!r} is not valid SQL ({found.group(1).strip()})")
    return SQLError(re.sub(r"^\w+ Error: ", "", first))
