"""A DB table as a Ray Dataset, for distributed work: `db.ray_dataset(table, where=..., columns=...)`.

The read is `ray.data.read_lance` at the version the DB object pinned, with the visible-rows
predicate and `where` pushed into the Lance scan. Note that in Ray 2.60 `read_lance(filter=...)`'s
`count()` returns the unfiltered row count: count with `db.count(table, where)` instead.
"""

from __future__ import annotations


def ray_dataset(db, table: str, where: str | None = None, columns: list[str] | None = None, **read_options):
    """The visible rows of `table` matching `where`, `columns` only, as a Ray Dataset (Ray must be
    initialised, e.g. by `flows.ray_runtime.ensure_ray`). A bad predicate or column raises UsageError
    here, before any task runs."""
    import ray.data

    db.scanner(table, where, columns)  # plans the scan: a bad predicate or column fails here, once
    plan = db.read_plan(table, where)
    return ray.data.read_lance(plan["uri"], version=plan["version"], columns=columns, filter=plan["filter"],
                               storage_options=plan["storage_options"], **read_options)
