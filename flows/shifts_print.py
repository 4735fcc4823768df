"""The shift matrix as a rich table: what `filterdb shifts` prints of a `ShiftResult`."""

from __future__ import annotations

from ops.shifts import GLOBAL_RANGE, ShiftResult


def print_shift_matrix(result: ShiftResult, console=None, max_groups: int = 24) -> None:
    """The explained-variance-weighted symmetric KL of every pair of groups as a rich table: rows
    name the groups (with their filter counts), columns refer to them by number."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shown = min(len(result.groups), max_groups)
    version = f", DB version {result.db_version}" if result.db_version is not None else ""
    span = "one range for all components" if result.range_mode == GLOBAL_RANGE else "each component's own range"
    bins = f"{result.histograms.bins} bins over {span}"
    order = {"mean": ", groups by column mean", "name": ", groups by name"}.get(result.sort, "")
    table = Table(title=f"Shift along {result.axis}: weighted symmetric KL ({bins}, {int(result.sizes.sum()):,} filters{version}{order})", box=box.SIMPLE_HEAD)
    table.add_column("group", no_wrap=True)
    table.add_column("filters", justify="right", no_wrap=True)
    for i in range(shown):
        table.add_column(str(i + 1), justify="right", no_wrap=True)
    high = result.kl_weighted.max() if result.kl_weighted.size else 0
    for a in range(shown):
        values = result.kl_weighted[a, :shown]
        cells = ["" if a == b else f"{v:.3f}" if v >= 0.001 else f"{v:.0e}" for b, v in enumerate(values)]
        cells = [f"[bold]{c}[/bold]" if c and high > 0 and v >= 0.5 * high else c for c, v in zip(cells, values)]
        table.add_row(f"{a + 1}. {result.groups[a]}", f"{int(result.sizes[a]):,}", *cells)
    needed = max(len(f"{i + 1}. {g}") for i, g in enumerate(result.groups[:shown])) + 14 + 8 * shown
    wide = console if needed <= console.width else Console(file=console.file, width=needed)  # overflow, not truncate
    wide.print(table)
    if shown < len(result.groups):
        console.print(f"(first {shown} of {len(result.groups)} groups; every pair is in analysis/shifts.lance)")
    ratio = ", ".join(f"{r:.3f}" for r in result.basis.explained_variance_ratio)
    console.print(f"selection: {result.selection or 'all filters'}; basis over {result.basis_selection or 'all filters'} ({result.basis.n:,} filters), explained-variance ratios {ratio}")
