"""Benchmarks that print figures, each run as `filterdb bench NAME` for NAME in BENCHMARKS.

Each is one module of this package with a one-line `HELP`, its options `add_arguments(parser)` and
`run(args) -> int` (args also carry `json`, the file for `--json FILE`); all time with `best_of`
and report through a `FigureTable` of `flows.bench.timing`. The product's numerics use none of them.
"""

BENCHMARKS = ("extract", "quality", "shifts", "report", "commit", "query")
"""Module names in flows.bench: extract (loop vs Ray pipeline), quality (our layer metrics vs
torchconvquality), shifts (shift flow vs numpy, the study's recipe, the Lance scan), report (the HTML report
beyond the analyses it needs), commit (the driver's commits of thousands of written models), query (reading, SQL and nearest filters of
the DB vs plain lance and numpy)."""
