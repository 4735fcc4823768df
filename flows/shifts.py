"""`filterdb shifts`: the five steps of the shift analysis (`ops.shifts`) on Ray Data.

    filters.lance --read_lance(weights, axis column; predicate pushed down)-->
    step 1  map_batches: peak-scale, group codes -> materialize: kept in Ray's object store
    step 2  a task per block -> Moments           -> Basis             (skipped with a stored basis)
    step 3  a task per block -> CoefficientRange  -> global min / max  (skipped with a stored basis)
    step 4  a task per block -> Histograms
    step 5  on the driver: symmetric KL of every pair of groups -> DIR/analysis/ tables

Filter rows are never shuffled nor collected: every task yields one small aggregate, folded on the
driver as it arrives. A selection too large for the object store (CACHE_SHARE of it) is read from
filters.lance once per step instead: steps 2, 3 and 4 are each a `read_lance -> map_batches` whose
batches are scaled as they come (step 1 inside each), and memory then does not depend on the number
of filters. Either way, one adapter per aggregate (`_moments_of_block`, `_range_of_block`,
`_histograms_of_block`) takes a block of either kind, batch by batch, through `ops.shifts.chunks_of`.
All steps read the same version of filters.lance, and the tables carry it as `db_version`.
"""

from __future__ import annotations

import functools
import os
import pickle
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from flows.ray_runtime import ensure_ray
from flows.shifts_print import print_shift_matrix
from ops.shifts import (
    DEFAULT_BINS,
    DEFAULT_DEPTH_BINS,
    N_COMPONENTS,
    Axis,
    Basis,
    CoefficientRange,
    Histograms,
    Moments,
    ShiftInputError,
    ShiftResult,
    chunks_of,
    load_basis,
    scaled_block,
    select_filters,
    stored_basis_for,
    weights_array,
    write_analysis,
)

__all__ = ["CACHED_BYTES_PER_FILTER", "CACHE_SHARE", "ShiftInputError", "load_basis", "print_shift_matrix", "run_shifts", "shifts_command"]

BATCH_ROWS = 1 << 17
TASKS_PER_CPU = 4
ROWS_PER_TASK = 1 << 20

CACHE_SHARE = 0.25
"""Largest share of the cluster's object store the peak-scaled filters may take to be kept between
steps; a larger selection is read from filters.lance once per step. Measured on 7 GB: keeping
1.5 GB (21%) made the flow 1.3x faster, keeping 3.8 GB (54%) 1.3x slower (Ray Data throttles the
read that fills the store)."""
CACHED_BYTES_PER_FILTER = 4 * N_COMPONENTS + 4


# --- per block: one adapter per aggregate, for a kept block and a block read from Lance alike --------


def _over_batches(block: pa.Table, initial, of_batch):
    """of_batch(batch) of every record batch of a block, merged: the batches as they came (from Lance,
    or as step 1 scaled them), without concatenating."""
    result = initial
    for batch in block.to_batches():
        if batch.num_rows:
            result = result.merge(of_batch(batch))
    return result


def _scaled_block_of(table: pa.Table, axis: Axis) -> pa.Table:
    """Step 1, kept: a block read from filters.lance as the flow keeps it (`ops.shifts.scaled_block`)."""
    parts = [scaled_block(weights_array(b.column("weights")), *axis.codes(b)) for b in table.to_batches() if b.num_rows]
    return pa.concat_tables(parts) if parts else scaled_block(np.empty((0, N_COMPONENTS), np.float32), [], [])


def _moments_of_block(block: pa.Table) -> Moments:
    """Step 2 of a block, kept or as read from Lance."""
    return _over_batches(block, Moments(), lambda batch: Moments.of_chunks(chunks_of(batch)))


def _range_of_block(block: pa.Table, basis: Basis) -> CoefficientRange:
    """Step 3 of a block, kept or as read from Lance."""
    return _over_batches(block, CoefficientRange(), lambda batch: CoefficientRange.of_chunks(chunks_of(batch), basis))


def _histograms_of_block(block: pa.Table, axis: Axis, basis: Basis, value_range: CoefficientRange, bins: int) -> Histograms:
    """Step 4 of a block, kept or as read from Lance."""
    return _over_batches(block, Histograms.empty(value_range, bins), lambda batch: Histograms.of_chunks(chunks_of(batch), *axis.codes(batch), basis, value_range, bins))


# --- folds: partial aggregates merged on the driver as they come -------------------------------------


@functools.cache
def _block_task():
    import ray

    # A read task whose fragments the predicate empties yields a block without rows and without
    # columns, which map_batches passes on without calling its function: such a block adds nothing.
    return ray.remote(num_cpus=1)(lambda block_fn, block, kwargs: block_fn(block, **kwargs) if block.num_rows else None)


def _fold_blocks(blocks: list, block_fn, initial, concurrency: int | None = None, **kwargs):
    """block_fn(block) as one Ray task per block in the object store (scheduled where the block is),
    at most `concurrency` at a time, the results merged on the driver as they come. Plain tasks: a
    Ray Data pass over materialized blocks costs 0.1-0.2 s more of planning and scheduling."""
    import ray

    limit = concurrency or len(blocks)
    result, waiting, running = initial, list(blocks), []
    while waiting or running:
        while waiting and len(running) < limit:
            running.append(_block_task().remote(block_fn, waiting.pop(), kwargs))
        done, running = ray.wait(running, num_returns=1)
        partial = ray.get(done[0])
        result = result if partial is None else result.merge(partial)
    return result


def _fold(dataset, block_fn, initial, concurrency: int | None = None, **kwargs):
    """map_batches(block_fn) over whole blocks read from Lance, partial aggregates merged on the driver
    as they come. `concurrency` must be the read's too: read and map fuse into one task only when
    they agree, otherwise every block travels through the object store."""
    result = initial
    partials = dataset.map_batches(_pickled(block_fn), batch_format="pyarrow", batch_size=None, concurrency=concurrency, fn_kwargs=kwargs)
    for batch in partials.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
        for blob in batch.column("partial").to_pylist():
            result = result.merge(pickle.loads(blob))
    return result


def _pickled(block_fn):
    """block_fn returning its aggregate as the one-row table map_batches wants (named as block_fn, as
    Ray Data's progress shows it)."""

    @functools.wraps(block_fn)
    def partial_of_block(block: pa.Table, **kwargs) -> pa.Table:
        return pa.table({"partial": pa.array([pickle.dumps(block_fn(block, **kwargs), protocol=5)], pa.binary())})

    return partial_of_block


# --- the flow ----------------------------------------------------------------------------------------


class _Clock:
    """Runs steps, recording their wall time in seconds into `timings` (if given)."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    def __call__(self, step: str, fn):
        start = time.perf_counter()
        result = fn()
        if self.timings is not None:
            self.timings[step] = time.perf_counter() - start
        return result


@contextmanager
def _data_context(progress: bool):
    """Ray Data settings of the passes, restored afterwards. Each pass is one fused operator (read +
    aggregate) whose outputs are a few KB: the share of resources Ray Data otherwise reserves for
    downstream operators only halves the parallelism (one task at a time on 2 CPUs)."""
    import ray

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.op_resource_reservation_enabled
    context.enable_progress_bars, context.op_resource_reservation_enabled = progress, False
    try:
        yield
    finally:
        context.enable_progress_bars, context.op_resource_reservation_enabled = saved


def run_shifts(
    db: str | os.PathLike,
    by: str,
    where: str | None = None,
    basis: str | os.PathLike | None = None,
    bins: int = DEFAULT_BINS,
    depth_bins: int = DEFAULT_DEPTH_BINS,
    address: str | None = None,
    basis_selection: str | None = None,
    write: bool = True,
    reuse: bool = True,
    concurrency: int | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
    cache: bool | None = None,
    timings: dict | None = None,
) -> ShiftResult:
    """Shift analysis of the filters in `db` between the groups of `by` (a filters.lance column,
    'depth', or a models.lance column), over the filters matching `where` (SQL; transposed layers are
    left out unless it names `kind`). `basis` reuses the basis and coefficient range stored in a DB
    folder / basis.lance so that analyses of subsets stay comparable (`basis_selection` picks one of
    several stored there); without it, a basis stored for the same selection of the same DB version
    is reused (`reuse`), which skips steps 2 and 3. Writes DIR/analysis/ tables unless write=False.
    `concurrency` caps the parallel read+aggregate tasks.

    `cache`: read filters.lance once and keep the peak-scaled filters in Ray's object store for steps
    2-4 (True), or read it once per step (False); by default, cache when the selection takes at most
    CACHE_SHARE of the cluster's object store. `timings` receives the seconds of each step that ran,
    by name: "read" (step 1, when kept), "moments" (2), "range" (3), "histograms" (4)."""
    db = Path(db)
    selection = select_filters(db, by, where, bins, depth_bins)
    filters, version, predicate, axis = selection.filters, selection.version, selection.predicate, selection.axis
    stored = load_basis(basis, basis_selection) if basis is not None else stored_basis_for(db, predicate, version) if reuse else None

    import ray

    ensure_ray(address)

    # Read tasks of whole fragments, at least a few per CPU and about ROWS_PER_TASK filters each (a
    # worker's memory then does not grow with the DB), each task's rows passed on as whole blocks:
    # Ray's default cuts blocks into pieces of a few thousand rows, where per-block overhead dominates.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    fragments = filters.get_fragments()
    rows = sum(f.count_rows() for f in fragments)
    n_tasks = max(1, min(len(fragments), max(TASKS_PER_CPU * cpus, -(-rows // ROWS_PER_TASK))))

    def read(columns):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # `filter=` is the push-down we want
            return ray.data.read_lance(
                filters.uri, version=version, columns=columns, filter=predicate, scanner_options={"batch_size": batch_rows},
                override_num_blocks=n_tasks, concurrency=concurrency,
            )

    if cache is None:
        cache = rows * CACHED_BYTES_PER_FILTER <= CACHE_SHARE * ray.cluster_resources().get("object_store_memory", 0)
    clock, histograms, basis_selection = _Clock(timings), None, predicate
    with _data_context(progress):
        if stored is not None:  # steps 2 and 3 done by an earlier run
            found, value_range, basis_selection = stored.basis, stored.value_range, stored.selection
        elif cache:
            # Each step needs the previous one's result: step 1 once, its blocks kept in the object
            # store for steps 2-4.
            scaled = read(["weights", axis.column]).map_batches(_scaled_block_of, batch_format="pyarrow", batch_size=None, concurrency=concurrency, fn_kwargs={"axis": axis})
            blocks = clock("read", lambda: scaled.materialize().to_arrow_refs())
            found = clock("moments", lambda: _fold_blocks(blocks, _moments_of_block, Moments(), concurrency).basis())
            value_range = clock("range", lambda: _fold_blocks(blocks, _range_of_block, CoefficientRange(), concurrency, basis=found))
            histograms = clock("histograms", lambda: _fold_blocks(blocks, _histograms_of_block, Histograms.empty(value_range, bins), concurrency, axis=axis, basis=found, value_range=value_range, bins=bins))
            del blocks
        else:
            found = clock("moments", lambda: _fold(read(["weights"]), _moments_of_block, Moments(), concurrency).basis())
            value_range = clock("range", lambda: _fold(read(["weights"]), _range_of_block, CoefficientRange(), concurrency, basis=found))
        if histograms is None:
            histograms = clock("histograms", lambda: _fold(read(["weights", axis.column]), _histograms_of_block, Histograms.empty(value_range, bins), concurrency, axis=axis, basis=found, value_range=value_range, bins=bins))
    if not histograms.counts:
        raise ShiftInputError(f"no filters match {predicate!r} in {filters.uri}")
    result = ShiftResult.of(by, found, value_range, histograms, order=axis.order(), selection=predicate, basis_selection=basis_selection, db_version=version)  # step 5
    if write:
        write_analysis(db, result, write_basis=stored is None)
    return result


def shifts_command(db: str | os.PathLike, by: str, console=None, **options) -> int:
    """`filterdb shifts`: run the analysis (`options` as for `run_shifts`), write the tables, print the
    matrix. Bad input raises ShiftInputError (a UsageError: the CLI prints it, exit status 2)."""
    from rich.console import Console

    console = console or Console()
    result = run_shifts(db, by, **options)
    print_shift_matrix(result, console)
    console.print(f"tables: {Path(db) / 'analysis'} (basis, histograms, shifts)")
    return 0
