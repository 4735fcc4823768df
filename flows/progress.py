"""Driver-side progress of an extraction: models done / total, filters, filters/s, ETA, failures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


@dataclass
class ExtractSummary:
    total: int
    stored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    graph_pass_failed: dict[str, str] = field(default_factory=dict)
    """Stored models whose graph pass failed on some device (their `notes` say how, and where depth came from)."""
    n_filters: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_stored_after: float | None = None
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return len(self.stored) + len(self.skipped) + len(self.failed)


class ExtractProgress:
    """A rich progress bar fed with one call per finished model; prints a summary table at the end."""

    def __init__(self, summary: ExtractSummary, console: Console | None = None, enabled: bool = True):
        self.summary = summary
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TextColumn("models"),
            TextColumn("{task.fields[filters]:,} filters ({task.fields[rate]:,.0f}/s)"),
            TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=not enabled,
        )
        self.task = self.progress.add_task("extract", total=summary.total, filters=0, rate=0.0, failed=0)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def stored(self, model_id: str, n_filters: int, graph_pass_failure: str | None = None) -> None:
        s = self.summary
        s.stored.append(model_id)
        if graph_pass_failure:
            s.graph_pass_failed[model_id] = graph_pass_failure
        s.n_filters += n_filters
        if s.first_stored_after is None:
            s.first_stored_after = time.perf_counter() - s.started
        self._update()

    def skipped(self, model_id: str) -> None:
        self.summary.skipped.append(model_id)
        self._update()

    def failed(self, model_id: str, error: str) -> None:
        self.summary.failed[model_id] = error
        self._update()

    def _update(self) -> None:
        s = self.summary
        elapsed = max(time.perf_counter() - s.started, 1e-9)
        s.seconds = elapsed
        self.progress.update(self.task, completed=s.done, filters=s.n_filters, rate=s.n_filters / elapsed,
                             failed=len(s.failed))

    def print_summary(self) -> None:
        s = self.summary
        table = Table(title="extraction summary")
        for column in ("models", "stored", "skipped (unchanged)", "failed", "graph pass failed", "filters",
                       "seconds", "filters/s"):
            table.add_column(column, justify="right")
        table.add_row(str(s.total), str(len(s.stored)), str(len(s.skipped)), str(len(s.failed)), str(len(s.graph_pass_failed)),
                      f"{s.n_filters:,}", f"{s.seconds:.1f}", f"{s.n_filters / max(s.seconds, 1e-9):,.0f}")
        self.console.print(table)
        for model_id, error in s.failed.items():
            self.console.print(f"[red]failed[/red] {model_id}: {error}")
        for model_id, notes in s.graph_pass_failed.items():
            self.console.print(f"[yellow]graph pass failed[/yellow] {model_id}: {notes}")


class StepClock:
    """Runs steps, recording their wall seconds into `timings` (if given) by step name."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    def __call__(self, step: str, fn):
        start = time.perf_counter()
        result = fn()
        if self.timings is not None:
            self.timings[step] = time.perf_counter() - start
        return result
