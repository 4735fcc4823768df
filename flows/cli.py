"""The `filterdb` command: each subcommand parses its arguments and calls one function of `flows`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _extract(args) -> int:
    from flows.extract import extract_catalog, extract_catalog_local

    if args.local:
        summary = extract_catalog_local(args.catalog, args.db, force=args.force, trust_pickles=args.trust_pickles)
    else:
        summary = extract_catalog(args.catalog, args.db, force=args.force, trust_pickles=args.trust_pickles,
                                  address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor)
    return 1 if summary.failed else 0


def _catalog_timm(args) -> int:
    from ops.catalog import write_catalog
    from ops.timm_catalog import timm_catalog_rows

    rows = timm_catalog_rows(args.include, args.exclude)
    write_catalog(rows, args.out)
    print(f"wrote {len(rows)} timm models to {args.out}")
    return 0 if rows else 1


def _demo(args) -> int:
    from flows.demo.run import run_demo

    return run_demo(args.out, seeds=args.seeds, epochs=args.epochs, quick=args.quick)


def _quality(args) -> int:
    from flows.quality import backfill_metrics, print_report, quality_report, write_report
    from ops.metrics import DegeneracyThresholds

    if args.backfill:
        print(f"recomputed the metrics of {backfill_metrics(args.db, eps=args.eps, device=args.device)} models")
    thresholds = DegeneracyThresholds(args.sparse, args.low_diversity, args.random_looking)
    report = quality_report(args.db, args.where, thresholds)
    written = write_report(report.per_model, args.out) if args.out else None
    print_report(report, top=args.top, as_json=args.format == "json")
    if written:
        print(written, file=sys.stderr if args.format == "json" else sys.stdout)
    return 0


def _shifts(args) -> int:
    from flows.shifts import shifts_command

    return shifts_command(args.db, args.by, where=args.where, basis=args.basis, bins=args.bins, depth_bins=args.depth_bins,
                          range_mode=args.range, sort=None if args.sort == "auto" else args.sort, address=args.address,
                          cache={"auto": None, "on": True, "off": False}[args.cache])


# Modules that register their own subcommands: each has `add_commands(commands)`, which adds its
# parsers and sets `run`. Their top-level imports stay light (argparse), so `filterdb --help` is quick.
COMMAND_MODULES = ("flows.query", "flows.report", "flows.jobs")


def _add_benchmarks(commands) -> None:
    """`filterdb bench NAME` for every benchmark of flows.bench: its options, `--json FILE`, its run."""
    from flows.bench import BENCHMARKS

    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench_kinds = bench.add_subparsers(dest="kind", required=True)
    for name in BENCHMARKS:
        module = importlib.import_module(f"flows.bench.{name}")
        sub = bench_kinds.add_parser(name, help=module.HELP, description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.add_argument("--json", metavar="FILE", help="also write the printed figures to this JSON file")
        sub.set_defaults(run=module.run)


def build_parser() -> argparse.ArgumentParser:
    from ops.metrics import DegeneracyThresholds

    parser = argparse.ArgumentParser(prog="filterdb", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="extract the filters of every catalog model into a DB")
    extract.add_argument("catalog", help="catalog file (.csv or .yaml), one model per row")
    extract.add_argument("--db", required=True, help="DB folder (created if missing)")
    extract.add_argument("--force", action="store_true", help="re-extract models already stored unchanged")
    extract.add_argument("--trust-pickles", action="store_true",
                         help="allow checkpoints that need full unpickling (runs code from the file)")
    extract.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                         help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    extract.add_argument("--actors", type=int, help="extraction actors (default: one per GPU, else per CPU)")
    extract.add_argument("--gpus-per-actor", type=float,
                         help="GPUs each actor reserves (default 1 when the cluster has GPUs, else 0)")
    extract.add_argument("--local", action="store_true", help="extract in this process, without Ray")
    extract.set_defaults(run=_extract)

    catalog = commands.add_parser("catalog", help="write catalogs")
    catalog_kinds = catalog.add_subparsers(dest="kind", required=True)
    timm_catalog = catalog_kinds.add_parser("timm", help="catalog of timm's pretrained models (no download)")
    timm_catalog.add_argument("out", help="catalog file to write (.csv)")
    timm_catalog.add_argument("--include", action="append", help="fnmatch pattern of names to keep (repeatable)")
    timm_catalog.add_argument("--exclude", action="append", help="fnmatch pattern of names to drop (repeatable)")
    timm_catalog.set_defaults(run=_catalog_timm)

    demo = commands.add_parser("demo", help="train the offline demo zoo and build its DB (no network)")
    demo.add_argument("--out", default="demo_out", help="folder for models, catalog and DB")
    demo.add_argument("--seeds", type=int, default=2, help="training seeds per architecture and data set")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs per model")
    demo.add_argument("--quick", action="store_true", help="a few barely trained models (smoke test)")
    demo.set_defaults(run=_demo)
    defaults = DegeneracyThresholds()
    quality = commands.add_parser("quality", help="degenerated layers per model (sparse, low diversity, random-looking)")
    quality.add_argument("--db", required=True, help="DB folder")
    quality.add_argument("--where", help="SQL predicate over layer and model columns, e.g. \"family = 'resnet'\"")
    quality.add_argument("--sparse", type=float, default=defaults.sparse, help="sparse layer: sparsity above this")
    quality.add_argument("--low-diversity", type=float, default=defaults.low_diversity,
                         help="low-diversity layer: variance_entropy_norm below this")
    quality.add_argument("--random-looking", type=float, default=defaults.random_looking,
                         help="random-looking layer: variance_entropy_norm above this")
    quality.add_argument("--top", type=int, default=15, help="rows of the ranked lists")
    quality.add_argument("--out", help="write the per-model table (.lance, .parquet or .csv)")
    quality.add_argument("--format", choices=("table", "json"), default="table")
    quality.add_argument("--backfill", action="store_true", help="first recompute the stored metrics from the filters")
    quality.add_argument("--eps", type=float, default=0.01, help="sparsity threshold eps (with --backfill)")
    quality.add_argument("--device", default="cpu", help="torch device for --backfill")
    quality.set_defaults(run=_quality)

    shifts = commands.add_parser("shifts", help="distribution shifts of the filters between groups (PCA + KL)")
    shifts.add_argument("--db", required=True, help="DB folder")
    shifts.add_argument("--by", required=True,
                        help="axis: a meta-parameter column, model_id, depth, or any models.lance column; "
                             "several separated by commas share one basis, one range and one pass (e.g. task,visual_category,depth)")
    shifts.add_argument("--where", help="SQL predicate over filters columns (transposed layers excluded unless named)")
    shifts.add_argument("--basis", help="reuse the basis stored in this DB folder or basis.lance")
    shifts.add_argument("--bins", type=int, default=70, help="histogram bins per component (the study: 70)")
    shifts.add_argument("--depth-bins", type=int, default=10, help="bins of conv_depth_norm for --by depth")
    shifts.add_argument("--range", choices=["global", "per-component"], default="global",
                        help="bin range: one over all components' coefficients (global, the study's) or each component's own")
    shifts.add_argument("--sort", choices=["auto", "mean", "name", "none"], default="auto",
                        help="order of the groups: by column mean, by name, or the axis' own (auto: depth bins in order, other axes by mean)")
    shifts.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address")
    shifts.add_argument("--cache", choices=["auto", "on", "off"], default="auto",
                        help="keep the scaled filters in Ray's object store between the steps (auto: when they fit in a quarter of it)")
    shifts.set_defaults(run=_shifts)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(commands)
    _add_benchmarks(commands)
    return parser


QUIET_ENVIRONMENT = {
    "LANCE_LOG": "error",  # Lance's "No existing dataset ... it will be created" and other WARN lines
    "RAY_LOGGER_LEVEL": "error",  # ray.init's INFO lines and the token-authentication notice
    "RAY_DATA_LOG_LEVEL": "ERROR",  # Ray Data's execution plans and logged progress (its bars stay)
}
QUIET_WARNINGS = (
    "The given NumPy array is not writable",  # torch.from_numpy of a read-only Arrow buffer
    "lance is not fork-safe",  # Lance on every fork, which Ray's local start does
)


def quiet_libraries() -> None:
    """Keeps the libraries' logs and warnings off the terminal (`--verbose` shows them). Runs before
    Lance or Ray is imported, which read these variables once; Ray's local processes inherit them.
    Warnings are dropped where they would be shown, since Ray puts its own filter first on import."""
    import warnings

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    show = warnings.showwarning
    if getattr(show, "filterdb_quiet", False):
        return

    def show_unless_quiet(message, category, *where, **options):
        if issubclass(category, (DeprecationWarning, FutureWarning)):  # the libraries' notes to their developers
            return
        if any(text in str(message) for text in QUIET_WARNINGS):
            return
        show(message, category, *where, **options)

    show_unless_quiet.filterdb_quiet = True
    warnings.showwarning = show_unless_quiet


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand; bad input (UsageError) is one message on stderr and exit status 2.
    Quiet by default; `--verbose`, anywhere on the command line, shows the libraries' logs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    if not verbose:
        quiet_libraries()
    from ops.errors import UsageError

    parser = build_parser()
    parser.add_argument("--verbose", action="store_true", help="show the logs and warnings of Ray, Lance and torch")
    args = parser.parse_args([a for a in argv if a != "--verbose"])
    try:
        return args.run(args)
    except UsageError as error:
        print(f"filterdb {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
