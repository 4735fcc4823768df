"""`filterdb shifts`: the five steps of the shift analysis (`ops.shifts`) on Ray, for one axis or
several at once (`run_shift_axes`: one basis, one range, the histograms of every axis in one pass).

    filters.lance --groups of fragments dealt out to the block holders, Ray actors, one per CPU
                    (weights, the axes' columns; predicate pushed down)-->
    step 1  peak-scale, group codes of every axis -> ScaledBlocks, kept in the holder's memory
    step 2  in the same call: the blocks' Moments -> Basis             (skipped with a stored basis)
    step 3  a call per holder -> CoefficientRange -> global min / max  (skipped with a stored basis)
    step 4  a call per holder -> AxesHistograms   (every axis, the same bins)
    step 5  on the driver: per axis, symmetric KL of every pair of groups -> DIR/analysis/ tables

Filter rows are never shuffled nor collected: every call yields one small aggregate, folded on the
driver as it arrives. A selection too large to keep (CACHE_SHARE of the object store's size) is read from
filters.lance once per step instead: in steps 2, 3 and 4 the holders each read their groups again
(`_fold_reads`), scaling every batch as it comes (step 1 inside each) and keeping nothing, so that
memory does not depend on the number of filters. Either way, one adapter per aggregate
(`_moments_of_block`, `_range_of_block`, `_histograms_of_block`) takes a block of either kind: kept
`ScaledBlock`s, or a Lance batch it scales.
All steps read the same version of filters.lance, and the tables carry it as `db_version`.
"""

from __future__ import annotations

import functools
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from flows.progress import StepClock
from flows.ray_runtime import ensure_ray
from flows.shifts_print import print_shift_matrix
from ops.db import FilterDB
from ops.shifts import (
    DEFAULT_BINS,
    DEFAULT_DEPTH_BINS,
    GLOBAL_RANGE,
    N_COMPONENTS,
    AxesHistograms,
    Axis,
    Basis,
    CoefficientRange,
    Moments,
    ShiftInputError,
    ScaledBlock,
    ShiftResult,
    check_groups,
    drop_spare_blocks,
    groupings_of,
    load_basis,
    scaled_block_and_moments,
    select_filters,
    spare_blocks,
    stored_basis_for,
    weights_array,
    write_analysis,
)

__all__ = ["CACHED_BYTES_PER_FILTER", "CACHE_SHARE", "HOLDER_MALLOC", "ShiftInputError", "kept_bytes", "keeps_filters", "load_basis", "print_shift_matrix",
           "release_holders", "run_shift_axes", "run_shifts", "shifts_command"]

BATCH_ROWS = 1 << 17
TASKS_PER_CPU = 2
"""Fragment groups (holder calls) per CPU at least: one call's fixed costs (opening the dataset, scheduling, one result
each in steps 3 and 4) weigh less in fewer tasks, and a second per CPU evens out uneven ones. Measured
with 8, 4 and 2 tasks on the 10M-filter bench DB on 2 CPUs (five runs each, interleaved, 2026-12-01):
median 0.53, 0.46 and 0.47 s."""
ROWS_PER_TASK = 1 << 22
"""Filters per fragment group at most: what one holder call reads, and reads again if its holder dies.
(Memory does not depend on it: a call reading once per step holds one batch at a time.)"""

CACHE_SHARE = 0.25
"""Largest share of the size of the cluster's object store the peak-scaled filters may take to be kept
between steps (by the holders, in their memory: the store's size is the measure of what the nodes
hold); a larger selection is read from filters.lance once per step. Set when the blocks were kept in
the store itself, measured with `filterdb bench shifts --filters 40M` and `--filters 100M` on a 7 GB
store (2026-11-21): keeping 1.5 GB (21%) made the flow 1.3x faster, keeping 3.8 GB (54%) 1.3x slower.
With holders keeping the blocks and Ray Data reading once per step, keeping the 3.8 GB was 1.9x faster
(15.40 vs 8.11 M/s); with the holders reading once per step too, the two were even (14.98 M/s kept,
15.56 M/s read once per step; one run each, 2026-12-01), so the share stays."""
CACHED_BYTES_PER_FILTER = 4 * N_COMPONENTS + 4


def kept_bytes(rows: int, n_axes: int = 1) -> int:
    """Bytes of `rows` peak-scaled filters as the flow keeps them: nine float32 q and an int32 group
    code per axis."""
    return rows * (CACHED_BYTES_PER_FILTER + 4 * (n_axes - 1))


def keeps_filters(rows: int, n_axes: int = 1) -> bool:
    """The flow's default `cache`: whether `rows` kept filters take at most CACHE_SHARE of the
    cluster's object store (Ray started)."""
    import ray

    return kept_bytes(rows, n_axes) <= CACHE_SHARE * ray.cluster_resources().get("object_store_memory", 0)


# --- per block: one adapter per aggregate, for kept blocks and a batch read from Lance alike ----------


def _scaled_parts(block: pa.RecordBatch | list[ScaledBlock], axes: tuple[Axis, ...] = ()):
    """The `ScaledBlock`s of a block: kept blocks are a list of them; a batch read from Lance is scaled
    here (with the groups of `axes`)."""
    if isinstance(block, list):
        yield from block
    else:
        yield ScaledBlock.of(weights_array(block.column("weights")), groupings_of(block, axes))


def _merged(parts, initial, of_part):
    result = initial
    for part in parts:
        result = result.merge(of_part(part))
    return result


@dataclass(frozen=True)
class FragmentScan:
    """How a holder reads groups of fragments of the selection: at the version the selection pinned,
    through the DB object, `predicate` with the visible-rows condition of `read_plan` pushed down."""

    root: str
    storage_options: dict | None
    version: int
    predicate: str | None
    columns: tuple[str, ...]
    batch_rows: int

    @classmethod
    def of(cls, db: FilterDB, version: int, predicate: str | None, columns: list[str], batch_rows: int) -> FragmentScan:
        return cls(db.root, db.storage_options, version, db.read_plan("filters", predicate)["filter"], tuple(columns), batch_rows)

    def batches(self, fragment_ids: list[int]):
        """The record batches of these fragments that hold rows of the selection."""
        from ops.db import open_db

        filters = open_db(self.root, storage_options=self.storage_options, must_exist=False).dataset_at("filters", self.version)
        scanner = filters.scanner(columns=list(self.columns), filter=self.predicate, fragments=[filters.get_fragment(i) for i in fragment_ids],
                                  batch_size=self.batch_rows)
        return (batch for batch in scanner.to_batches() if batch.num_rows)


def _read_and_scale(scan: FragmentScan, fragment_ids: list[int], axes: tuple[Axis, ...]) -> tuple[list[ScaledBlock], Moments]:
    """Steps 1 and 2 of a group of fragments: scaled batch by batch into the `ScaledBlock`s the flow
    keeps (with the group of every axis), and their moments, taken as they are scaled."""
    parts, moments = [], Moments()
    for batch in scan.batches(fragment_ids):
        part, partial = scaled_block_and_moments(weights_array(batch.column("weights")), groupings_of(batch, axes))
        parts.append(part)
        moments = moments.merge(partial)
    return parts, moments  # no parts where the predicate left no row of these fragments


def _moments_of_block(block: pa.RecordBatch | list[ScaledBlock]) -> Moments:
    """Step 2 of kept blocks or of a batch as read from Lance (scaled and summed in one pass)."""
    if isinstance(block, list):
        return _merged(block, Moments(), Moments.of_block)
    return Moments.of(weights_array(block.column("weights")))


def _range_of_block(block: pa.RecordBatch | list[ScaledBlock], basis: Basis) -> CoefficientRange:
    """Step 3 of kept blocks or of a batch as read from Lance."""
    return _merged(_scaled_parts(block), CoefficientRange(), lambda part: CoefficientRange.of_block(part, basis))


def _histograms_of_block(block: pa.RecordBatch | list[ScaledBlock], axes: tuple[Axis, ...], basis: Basis, value_range: CoefficientRange, bins: int,
                         range_mode: str) -> AxesHistograms:
    """Step 4 of kept blocks or of a batch as read from Lance: the histograms of every axis in one pass."""
    return _merged(_scaled_parts(block, axes), AxesHistograms.empty(len(axes), value_range, bins, range_mode),
                   lambda part: AxesHistograms.of_block(part, basis, value_range, bins, range_mode))


# --- the holders: Ray actors that read the fragments, and keep the blocks between the steps -----------


class BlockHolder:
    """A Ray actor that reads groups of fragments. Kept path: into `ScaledBlock`s (steps 1 and 2) kept
    in its own memory for steps 3 and 4, which then run where the blocks are, without copying them.
    Read once per step: one aggregate per group, batch by batch, nothing kept (`fold`).

    Why not Ray's object store: a task's blocks returned to it are copied into freshly mapped shared
    memory, whose page faults cost about 0.2 s of the 0.5 s read step on the 10M-filter bench DB
    (`filterdb bench shifts`; the same tasks returning nothing took 0.29 s). The blocks of several
    analyses at once are kept apart by their run id. Why not Ray Data's tasks, when reading once per
    step: their worker processes hand freed memory back (`HOLDER_MALLOC`), and each pass took
    about twice as long as a holder's."""

    def __init__(self):
        self.blocks: dict[str, list[ScaledBlock]] = {}

    def read(self, run: str, scan: FragmentScan, axes: tuple[Axis, ...], fragment_ids: list[int]) -> Moments:
        parts, moments = _read_and_scale(scan, fragment_ids, axes)
        self.blocks.setdefault(run, []).extend(parts)
        return moments

    def fold(self, scan: FragmentScan, fragment_ids: list[int], block_fn, kwargs: dict):
        """block_fn of every batch of the fragments as read, merged; None where no row was selected.
        The memory kept for the blocks of a next analysis is handed back first: reading once per step
        is the way of selections too large to keep."""
        drop_spare_blocks()
        result = None
        for batch in scan.batches(fragment_ids):
            partial = block_fn(batch, **kwargs)
            result = partial if result is None else result.merge(partial)
        return result

    def apply(self, run: str, block_fn, kwargs: dict):
        return block_fn(self.blocks.get(run, []), **kwargs)

    def release(self, run: str) -> None:
        """Done with the run's blocks: their memory is kept for the next analysis' blocks (`spare_blocks`:
        writing fresh memory costs page faults), and only that; Arrow's allocator hands the rest back."""
        spare_blocks(self.blocks.pop(run, []))
        pa.default_memory_pool().release_unused()


HOLDER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1), "MALLOC_ARENA_MAX": "2"}
"""glibc's malloc settings of the holders' processes (environment variables it reads at start; a
driver's own MALLOC_* values are passed on instead). Keep what they free for their next allocations:
every allocation below 32 MB (glibc's largest mmap threshold) comes from the heap, which is trimmed
only when more than 2 GiB at its top are free. Lance decodes every batch into new buffers: handed
back and mapped again, each page of them costs a page fault on the next batch, about 20,000 faults per 2.5M filters read (`getrusage`), and
the read step of the 10M-filter bench DB took 0.28-0.37 s against 0.24-0.27 s with this (five runs
each, two series, 2026-12-01). Two heaps shared by the threads instead of glibc's 8 per core: each
heap keeps what it freed, so a process keeps about the sum of their largest sizes; reading the
100M-filter bench DB once per step, the largest private memory (USS) of a holder was 684 MiB with
glibc's default and 357-414 MiB with two (two runs, 2026-12-01), the read step as fast."""


def _holder_env() -> dict:
    return {name: os.environ.get(name, value) for name, value in HOLDER_MALLOC.items()}


_POOL: dict = {}
"""The driver's holders, created on first use and reused by later analyses: {cluster key: [actors]}."""


def _holders(concurrency: int | None = None) -> list:
    """One BlockHolder per CPU of every alive node (pinned to it, `num_cpus=0`: an idle holder reserves
    no CPU, so it never keeps other work from running), the first `concurrency` of them if given.
    Starting an actor takes a new worker process (about 1-2 s for both on the 2-CPU machine), so
    the pool lives as long as the driver, per Ray job and set of nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = tuple(sorted((n["NodeID"], int(n["Resources"].get("CPU", 0))) for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1))
    key = (ray.get_runtime_context().get_job_id(), nodes)
    if key not in _POOL:
        release_holders()
        _POOL[key] = [_new_holder(NodeAffinitySchedulingStrategy(node, soft=True)) for node, cpus in nodes for _ in range(cpus)] or [_new_holder()]
    pool = _POOL[key]
    return pool[: concurrency or len(pool)]


@functools.cache
def _holder_actor():
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(BlockHolder)


def _new_holder(scheduling_strategy=None):
    """A BlockHolder in a process of its own, with the holders' malloc settings."""
    return _holder_actor().options(scheduling_strategy=scheduling_strategy, runtime_env={"env_vars": _holder_env()}).remote()


def release_holders() -> None:
    """End the driver's block holders (and the memory they keep for the next analysis); the next
    analysis that keeps its blocks starts new ones."""
    import ray

    for pool in _POOL.values():
        for actor in pool:
            ray.kill(actor)
    _POOL.clear()


def _replace_holder(dead) -> object:
    """A new holder in place of one that died (its node lost, its process killed), in the pool too."""
    replacement = _new_holder()
    for pool in _POOL.values():
        pool[:] = [replacement if actor == dead else actor for actor in pool]
    return replacement


@dataclass
class HeldBlocks:
    """What one holder keeps of one analysis: the fragment groups it read, to read them again elsewhere
    if it dies."""

    holder: object
    run: str
    scan: FragmentScan
    axes: tuple[Axis, ...]
    groups: list[list[int]] = field(default_factory=list)

    def reread(self) -> None:
        import ray

        self.holder = _replace_holder(self.holder)
        ray.get([self.holder.read.remote(self.run, self.scan, self.axes, group) for group in self.groups])

    def release(self) -> None:
        self.holder.release.remote(self.run)


def _read_kept_blocks(scan: FragmentScan, fragment_groups: list[list[int]], axes: tuple[Axis, ...],
                      concurrency: int | None = None) -> tuple[list[HeldBlocks], Moments]:
    """Steps 1 and 2 of the kept path: the fragment groups dealt out to the holders (`_holders`; each
    runs its reads one after another, so `concurrency` holders read at a time), their moments merged
    on the driver as they come. A group whose holder dies is read by another."""
    import ray
    from ray.exceptions import RayActorError

    run = uuid.uuid4().hex
    held = [HeldBlocks(holder, run, scan, axes) for holder in _holders(concurrency)]
    for n, group in enumerate(fragment_groups):
        held[n % len(held)].groups.append(group)
    running, merged, moments = {}, set(), Moments()

    def submit(i: int, g: int) -> None:
        holder = held[i].holder
        running[holder.read.remote(run, scan, axes, held[i].groups[g])] = (i, g, holder)

    for i, h in enumerate(held):
        for g in range(len(h.groups)):
            submit(i, g)
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        i, g, holder = running.pop(done[0])
        try:
            partial = ray.get(done[0])
        except RayActorError:
            if held[i].holder == holder:  # the first of its reads to fail: all its groups again, on a new holder
                held[i].holder = _replace_holder(holder)
                for other in range(len(held[i].groups)):
                    submit(i, other)
            continue
        if (i, g) not in merged:  # a group read again for its blocks has had its moments counted
            merged.add((i, g))
            moments = moments.merge(partial)
    return [h for h in held if h.groups], moments


def _fold_blocks(blocks: list[HeldBlocks], block_fn, initial, concurrency: int | None = None, **kwargs):
    """block_fn(the blocks a holder keeps) on every holder, where the blocks are, the results merged
    on the driver as they come (`concurrency`: the holders are already that many). A holder that died
    is replaced, its groups read again, and asked again."""
    import ray
    from ray.exceptions import RayActorError

    result, running = initial, {b.holder.apply.remote(b.run, block_fn, kwargs): b for b in blocks}
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        held = running.pop(done[0])
        try:
            result = result.merge(ray.get(done[0]))
        except RayActorError:
            held.reread()
            running[held.holder.apply.remote(held.run, block_fn, kwargs)] = held
    return result


def _fold_reads(reads: tuple[FragmentScan, list[list[int]]], block_fn, initial, concurrency: int | None = None, **kwargs):
    """One step read from Lance: every fragment group of `reads` (scan, groups) read by a holder, which
    returns block_fn of its batches merged; merged on the driver as they come. Nothing is kept, so a
    group whose holder dies is simply read again by a new holder."""
    import ray
    from ray.exceptions import RayActorError

    scan, groups = reads
    holders, replaced, running, result = _holders(concurrency), {}, {}, initial

    def submit(holder, group: list[int]) -> None:
        running[holder.fold.remote(scan, group, block_fn, kwargs)] = (holder, group)

    for n, group in enumerate(groups):
        submit(holders[n % len(holders)], group)
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        holder, group = running.pop(done[0])
        try:
            partial = ray.get(done[0])
        except RayActorError:
            if holder not in replaced:
                replaced[holder] = _replace_holder(holder)
            submit(replaced[holder], group)
            continue
        if partial is not None:
            result = result.merge(partial)
    return result


# --- the flow ----------------------------------------------------------------------------------------


@contextmanager
def _progress_of(progress: bool, clock: StepClock):
    """The steps' runner: `clock`, and with `progress` the name of the step under way on the terminal
    (nothing where stderr is not one)."""
    if not progress:
        yield clock
        return
    from rich.console import Console

    with Console(stderr=True).status("shift analysis") as status:
        def step(name: str, fn):
            status.update(f"shift analysis: {name}")
            return clock(name, fn)

        yield step


def run_shifts(db: str | os.PathLike | FilterDB, by: str, **options) -> ShiftResult:
    """Shift analysis of the filters in `db` between the groups of one axis `by`; `options` as for
    `run_shift_axes`."""
    return run_shift_axes(db, [by], **options)[by]


def run_shift_axes(
    db: str | os.PathLike | FilterDB,
    by: str | list[str],
    where: str | None = None,
    basis: str | os.PathLike | None = None,
    bins: int = DEFAULT_BINS,
    depth_bins: int = DEFAULT_DEPTH_BINS,
    range_mode: str = GLOBAL_RANGE,
    sort: str | None = None,
    address: str | None = None,
    basis_selection: str | None = None,
    write: bool = True,
    reuse: bool = True,
    concurrency: int | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
    cache: bool | None = None,
    timings: dict | None = None,
) -> dict[str, ShiftResult]:
    """Shift analysis of the filters in `db` (a folder, a URI or an `open_db` object) between the groups of every axis of `by` (names, or one
    string separated by commas; each a filters.lance column, 'depth', or a models.lance column), over
    the filters matching `where` (SQL; transposed layers are left out unless it names `kind`): the
    basis and the range once, the histograms of all axes in one pass. By default the study's recipe;
    `range_mode` PER_COMPONENT_RANGE bins each component over its own range, `bins` sets the bin count.
    `sort` orders each result's groups (SORTS; default: depth bins in order, other axes by column mean).

    `basis` reuses the basis and coefficient range stored in a DB folder / basis.lance so that analyses
    of subsets stay comparable (`basis_selection` picks one of several stored there); without it, a
    basis stored for the same selection of the same DB version is reused (`reuse`), which skips steps
    2 and 3. Writes DIR/analysis/ tables unless write=False. `concurrency` caps the holders that read
    at a time (default: one per CPU).

    `cache`: read filters.lance once and keep the peak-scaled filters in the holders' memory for steps
    2-4 (True), or read it once per step (False); by default, keep them when all rows of filters.lance
    (an upper bound of the selection) take at most CACHE_SHARE of the cluster's object store
    (`keeps_filters`). `progress`: show the step under way. `timings` receives the seconds of each step that ran, by name: "read" (steps 1
    and 2, when kept), "moments" (2, read once per step), "range" (3), "histograms" (4). Writing the
    tables records a DB snapshot of kind "shifts"."""
    selection = select_filters(db, by, where, bins, depth_bins, range_mode, sort)
    db, filters, version, predicate, axes = selection.db, selection.filters, selection.version, selection.predicate, selection.axes
    stored = load_basis(basis, basis_selection) if basis is not None else stored_basis_for(db, predicate, version) if reuse else None

    import ray

    ensure_ray(address)

    # Groups of whole fragments, a multiple of the CPUs (no last wave on a few of them), at least
    # TASKS_PER_CPU per CPU and at most about ROWS_PER_TASK filters each.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    fragments = filters.get_fragments()
    rows = sum(f.count_rows() for f in fragments)
    if cache is None:
        cache = keeps_filters(rows, len(axes))
    n_tasks = max(1, min(len(fragments), cpus * max(TASKS_PER_CPU, -(-rows // (cpus * ROWS_PER_TASK)))))
    ids = [fragment.metadata.id for fragment in fragments]
    groups = [[int(i) for i in group] for group in np.array_split(ids, n_tasks) if len(group)]
    axis_columns = list(dict.fromkeys(axis.column for axis in axes))

    def reads(columns):
        return FragmentScan.of(db, version, predicate, columns, batch_rows), groups

    clock, histograms, basis_over = StepClock(timings), None, predicate  # basis_over: the selection the basis was computed over
    histogram_options = {"axes": axes, "bins": bins, "range_mode": range_mode}
    with _progress_of(progress, clock) as step:
        if stored is not None:  # steps 2 and 3 done by an earlier run
            found, value_range, basis_over = stored.basis, stored.value_range, stored.selection
        elif cache:
            # Each step needs the previous one's result: steps 1 and 2 once, the scaled blocks kept by
            # the holders for steps 3 and 4.
            scan = FragmentScan.of(db, version, predicate, ["weights", *axis_columns], batch_rows)
            blocks, moments = step("read", lambda: _read_kept_blocks(scan, groups, axes, concurrency))
            found = moments.basis()
            value_range = step("range", lambda: _fold_blocks(blocks, _range_of_block, CoefficientRange(), concurrency, basis=found))
            empty = AxesHistograms.empty(len(axes), value_range, bins, range_mode)
            try:
                histograms = step("histograms", lambda: _fold_blocks(blocks, _histograms_of_block, empty, concurrency, basis=found, value_range=value_range, **histogram_options))
            finally:
                for held in blocks:
                    held.release()
        else:
            found = step("moments", lambda: _fold_reads(reads(["weights"]), _moments_of_block, Moments(), concurrency).basis())
            value_range = step("range", lambda: _fold_reads(reads(["weights"]), _range_of_block, CoefficientRange(), concurrency, basis=found))
        if histograms is None:
            empty = AxesHistograms.empty(len(axes), value_range, bins, range_mode)
            histograms = step("histograms", lambda: _fold_reads(reads(["weights", *axis_columns]), _histograms_of_block, empty, concurrency, basis=found, value_range=value_range, **histogram_options))
    for axis, axis_histograms in zip(axes, histograms.axes):
        check_groups(axis.name, sorted(axis_histograms.counts), predicate, db.table_uri("filters"))
    results = {
        axis.name: ShiftResult.of(axis.name, found, value_range, axis_histograms, order=axis.order(), sort=sort, selection=predicate,
                                  basis_selection=basis_over, db_version=version)  # step 5
        for axis, axis_histograms in zip(axes, histograms.axes)
    }
    if write:
        for i, result in enumerate(results.values()):
            write_analysis(db, result, write_basis=stored is None and i == 0)
        db.snapshot("shifts", note=f"shifts --by {','.join(results)}" + (f" --where {where!r}" if where else "")
                    + ("" if range_mode == GLOBAL_RANGE else f" --range {range_mode}") + ("" if bins == DEFAULT_BINS else f" --bins {bins}"))
    return results


def shifts_command(db: str | os.PathLike | FilterDB, by: str | list[str], console=None, **options) -> int:
    """`filterdb shifts`: run the analysis of every axis of `by` in one go (`options` as for
    `run_shift_axes`), write the tables, print each axis' matrix. Bad input raises ShiftInputError
    (a UsageError: the CLI prints it, exit status 2)."""
    from rich.console import Console

    from ops.shifts.selection import as_db

    console, db = console or Console(), as_db(db)
    if "model_key" in db.missing_columns("filters"):
        console.print(f"note: {db.table_uri('filters')} has no model_key column (written before filterdb 0.2); the groups are read "
                      f"as strings, which is slower. `filterdb upgrade --db {db.root}` adds it without rewriting the filters.")
    for result in run_shift_axes(db, by, **options).values():
        print_shift_matrix(result, console)
    console.print(f"tables: {db.analysis_uri('basis')}, histograms.lance, shifts.lance (same folder)")
    return 0
