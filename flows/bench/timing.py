"""How every benchmark measures and reports: best-of-N timings, peak memory, and a figure table.

- `best_of(fn, repeats)` (and `best_of_each` for contenders timed in turn): the best run's seconds,
  result and, when `fn` records them, the seconds of its steps.
- `PeakMemory`: peak resident memory of a block of code.
- `FigureTable`: rows of figures printed as one rich table, with ratio columns against a named
  baseline, notes under it, and `--json FILE` writing the same figures.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timing:
    """The best run: its wall seconds (or `clock`'s), its result, and the seconds of its steps."""

    seconds: float
    result: Any
    steps: dict[str, float]


def best_of(fn: Callable, repeats: int = 1, *, steps: bool = False, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Best of `repeats` runs of fn(); with `steps`, fn(timings) records {step: seconds} into timings."""
    return best_of_each([fn], repeats, steps=steps, clock=clock)[0]


def best_of_each(fns: Sequence[Callable], repeats: int = 1, *, steps: bool = False,
                 clock: Callable[[], float] = time.perf_counter) -> list[Timing]:
    """The best of `repeats` runs of each fn, run in turn in every round (interleaved, so that load
    from other processes hits all of them alike); `steps` and `clock` as in `best_of`."""
    best = [Timing(math.inf, None, {}) for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            timings, start = {}, clock()
            result = fn(timings) if steps else fn()
            seconds = clock() - start
            if seconds < best[i].seconds:
                best[i] = Timing(seconds, result, timings)
    return best


class PeakMemory:
    """Peak memory in the `with` block: `.peak` (and `.baseline`), the resident memory of this process
    and, with `children`, of its child processes (Ray's, when Ray was started here) summed, sampled
    every 50 ms. Such a sum counts a shared page (the object store's) once per process that maps it;
    with `private` (and `children`) it also keeps, sampled every 100 ms: `.driver_peak`, this process'
    resident memory, and `.largest_child_private`, the private memory (USS) of the largest child, a Ray
    worker say. Reading a process' private memory costs about 2 ms of CPU: not for timed runs."""

    PRIVATE_EVERY = 2

    def __init__(self, children: bool = False, private: bool = False):
        import psutil

        self.process = psutil.Process()
        self.children = children
        self.private = private and children
        self.baseline = self.peak = self._rss()
        self.driver_peak = self.process.memory_info().rss
        self.largest_child_private = 0

    def _processes(self) -> list:
        return [self.process, *(self.process.children(recursive=True) if self.children else [])]

    def _rss(self) -> int:
        total = 0
        for p in self._processes():
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a process that just ended
                pass
        return total

    def _private(self) -> None:
        self.driver_peak = max(self.driver_peak, self.process.memory_info().rss)
        for p in self._processes()[1:]:
            try:
                self.largest_child_private = max(self.largest_child_private, p.memory_full_info().uss)
            except Exception:  # noqa: BLE001 - a process that just ended
                pass

    def __enter__(self):
        self.baseline = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        count = 0
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())
            count += 1
            if self.private and count % self.PRIVATE_EVERY == 0:
                self._private()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        if self.private:
            self._private()


@dataclass(frozen=True)
class Column:
    """A column of the figure `key` of each row, shown by `format` (e.g. "{:.1f}".format); a row
    without that figure shows an empty cell."""

    header: str
    key: str
    format: Callable[[Any], str] = str


@dataclass(frozen=True)
class Ratio:
    """A column of each row's figure `key` divided by the baseline's: the same figure of the table's
    baseline row, or, with `to`, the row's own figure `to`. `inverted`: the baseline's divided by the
    row's. Empty where either figure is missing or the divisor is 0."""

    header: str
    key: str
    to: str | None = None
    inverted: bool = False
    format: Callable[[float], str] = "{:.2f}x".format

    def value(self, row: Mapping, baseline: Mapping | None) -> float | None:
        reference = row if self.to else baseline
        this, other = row.get(self.key), None if reference is None else reference.get(self.to or self.key)
        if this is None or other is None:
            return None
        numerator, divisor = (other, this) if self.inverted else (this, other)
        return numerator / divisor if divisor else None


@dataclass
class FigureTable:
    """The figures of one benchmark: a row per contender under `columns`, ratios against the row
    named `baseline`, note lines printed under the table, and `extra` figures that only the JSON
    holds in full. `report` prints it all and writes the same figures to a JSON file if asked."""

    title: str
    columns: Sequence[Column | Ratio]
    baseline: str | None = None
    name_header: str = "run"
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def add(self, name: str, figures: Mapping) -> None:
        self.rows.append({"name": name, **{k: v for k, v in figures.items() if k != "name"}})

    def _baseline_row(self) -> dict | None:
        return next((r for r in self.rows if r["name"] == self.baseline), None)

    def cells(self, row: Mapping) -> list[str]:
        baseline, cells = self._baseline_row(), []
        for column in self.columns:
            value = column.value(row, baseline) if isinstance(column, Ratio) else row.get(column.key)
            cells.append("" if value is None else column.format(value))
        return cells

    def print(self, console=None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=self.title)
        table.add_column(self.name_header)
        for column in self.columns:
            table.add_column(column.header, justify="right")
        for row in self.rows:
            table.add_row(row["name"], *self.cells(row))
        console.print(table)
        for line in self.notes:
            console.print(line)

    def as_json(self) -> dict:
        """The rows' figures with their ratios (under the ratio columns' headers), the notes, the extra figures."""
        baseline = self._baseline_row()
        rows = [{**row, **{c.header: c.value(row, baseline) for c in self.columns if isinstance(c, Ratio)}} for row in self.rows]
        return {"title": self.title, "baseline": self.baseline, "rows": rows, "notes": self.notes, **self.extra}

    def report(self, json_path: str | None = None, console=None) -> None:
        self.print(console)
        if json_path:
            with open(json_path, "w") as file:
                json.dump(_finite(self.as_json()), file, indent=2, default=str)


def _finite(value):
    """JSON without NaN or infinities (None instead), tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
