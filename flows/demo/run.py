"""`filterdb demo`: train the offline demo zoo, export it in every source format, build its DB.

Everything comes from installed packages (no network): the data sets and architectures of
`flows.demo.zoo`, plus a few timm architectures with random weights as `untrained` models.
Layout of `out`: `models/<model_id>/` (the four files and `training.json`), `catalog.csv`, `db/`,
`report/report.html` (`filterdb report` of the trained models).
Re-runs reuse trained models whose files exist and skip models stored unchanged in the DB.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ops.errors import UsageError

MODELS_FOLDER = "models"
REPORT_FOLDER = "report"
UNTRAINED_TIMM = {"resnet18": "resnet", "mobilenetv3_small_100": "mobilenet", "regnetx_002": "regnet",
                  "efficientnet_b0": "efficientnet"}
"""Random-weight timm models (arch -> family): 1.25 M 3x3 filters together, 1.22 M of them resnet18's."""
QUICK_UNTRAINED_TIMM = {"mobilenetv3_small_050": "mobilenet"}


@dataclass(frozen=True)
class DemoModel:
    dataset: str
    task: str
    family: str
    seed: int

    @property
    def model_id(self) -> str:
        return f"{self.dataset}-{self.task}-{self.family}-s{self.seed}"


def demo_plan(seeds: int, quick: bool) -> list[DemoModel]:
    """Every data set x task x family x seed; quick: three models covering each data set, task and family."""
    from flows.demo.zoo import DATASETS, FAMILIES, TASKS

    if quick:
        return [DemoModel("digits", "classification", "vgg", 0),
                DemoModel("photos", "denoising", "mobilenet", 0),
                DemoModel("shapes", "classification", "resnet", 0)]
    return [DemoModel(dataset, task, family, seed)
            for dataset in DATASETS for task in TASKS for family in FAMILIES for seed in range(seeds)]


def cross_format_model(plan: list[DemoModel]) -> DemoModel:
    """The model catalogued in all four formats: a MobileNet denoiser has conv, depthwise and transposed layers."""
    return next((m for m in plan if m.family == "mobilenet" and m.task == "denoising"), plan[0])


def train_or_reuse(model: DemoModel, folder: Path, recipe: dict, datasets: dict) -> tuple[dict, bool]:
    """The model's training record; trains and exports only when its files are missing or the recipe changed."""
    from flows.demo.zoo import FILE_OF_FORMAT, export_model, load_dataset, train_model

    record_path = folder / "training.json"
    if record_path.is_file() and all((folder / f).is_file() for f in FILE_OF_FORMAT.values()):
        record = json.loads(record_path.read_text())
        if record.get("recipe") == recipe:
            return record, True
    if model.dataset not in datasets:
        datasets[model.dataset] = load_dataset(model.dataset, seed=0)
    data = datasets[model.dataset]
    trained = train_model(data, model.family, model.task, model.seed, **recipe)
    export_model(trained.model, data.input_size, folder)
    record = {"model_id": model.model_id, "recipe": recipe, "metrics": trained.metrics,
              "input_size": list(data.input_size), "visual_category": data.visual_category}
    record_path.write_text(json.dumps(record, indent=1))  # written last: marks a complete model folder
    return record, False


def demo_row(model: DemoModel, record: dict, fmt: str, copy_of: str = "") -> dict:
    """A catalog row; `copy_of` names the model's primary row when this row repeats it in another format."""
    from flows.demo.zoo import FILE_OF_FORMAT, SOURCE_OF_FORMAT

    metrics = record["metrics"]
    return {
        "model_id": model.model_id if not copy_of else f"{model.model_id}@{fmt}",
        "source": SOURCE_OF_FORMAT[fmt],
        "uri": f"{MODELS_FOLDER}/{model.model_id}/{FILE_OF_FORMAT[fmt]}",
        "input_size": "x".join(map(str, record["input_size"])),
        "seed": model.seed,
        "family": model.family,
        "task": model.task,
        "train_dataset": model.dataset,
        "pretrain_dataset": "none",
        "visual_category": record["visual_category"],
        "format": fmt,
        "trained": "true",
        "epochs": record["recipe"]["epochs"],
        "copy_of": copy_of,
        **{name: f"{value:.4f}" for name, value in metrics.items() if name != "train_seconds"},
    }


def untrained_rows(quick: bool) -> list[dict]:
    archs = QUICK_UNTRAINED_TIMM if quick else UNTRAINED_TIMM
    return [{"model_id": f"timm-{arch}-untrained", "source": "timm", "uri": arch, "pretrained": "false",
             "seed": 0, "family": family, "task": "untrained", "train_dataset": "none",
             "pretrain_dataset": "none", "visual_category": "none", "format": "timm", "trained": "false"}
            for arch, family in archs.items()]


def describe(record: dict) -> str:
    m = record["metrics"]
    if "accuracy" in m:
        return f"held-out accuracy {m['accuracy']:.3f}"
    return f"test MSE {m['test_mse']:.4f} (noisy input {m['noisy_mse']:.4f})"


def primary_format(model: DemoModel, number: int) -> str:
    """The format a model is catalogued in, rotating. Models with a transposed convolution (the
    denoisers) rotate through the formats that keep the graph (TorchScript, ONNX): a bare state dict
    cannot tell a transposed layer from an ordinary one, and the analyses leave transposed layers out."""
    from flows.demo.zoo import FORMATS, GRAPH_FORMATS

    formats = FORMATS if model.task == "classification" else GRAPH_FORMATS
    return formats[number % len(formats)]


TRAINED = "task != 'untrained' AND model_id NOT LIKE '%@%'"
"""The demo's analyses: trained models, each once (the `@<format>` rows are copies of one model)."""
CONTROLS = "task = 'untrained'"
"""Random-weight timm models: a control group that the quality metrics must call random-looking."""
AXES = ("visual_category", "depth")


@dataclass
class DemoFindings:
    """What the demo's analyses found, for its closing summary."""

    trained_models: int = 0
    degenerated_models: int = 0
    flagged: dict = field(default_factory=dict)
    controls: int = 0
    controls_random_looking: float = 0.0
    analysed_filters: int = 0
    variance_ratios: tuple = ()
    largest_shift: dict = field(default_factory=dict)


def analyse_demo_db(db: str) -> DemoFindings:
    """The study's two findings on the zoo, over the trained models: degenerated layers, and shifts by
    visual category and depth; the untrained models as a control group."""
    from flows.quality import LABELS, print_report, quality_report
    from flows.report import DEFAULT_AXES
    from flows.shifts import print_shift_matrix, run_shift_axes

    findings = DemoFindings()
    trained = quality_report(db, TRAINED)
    print_report(trained, top=10, title="trained models: ")
    per_model = trained.per_model
    findings.trained_models = len(per_model)
    findings.degenerated_models = int((per_model.share_degenerated > 0).sum())
    findings.flagged = {label: int(trained.layers[label].sum()) for label in LABELS}
    controls = quality_report(db, CONTROLS)
    findings.controls = len(controls.per_model)
    findings.controls_random_looking = float(controls.layers["random_looking"].mean())
    print(f"control group ({findings.controls} untrained timm models, random weights): "
          f"{findings.controls_random_looking:.0%} of their {len(controls.layers)} 3x3 layers are random-looking")
    # one pass for these axes and the report's, which then reads them back instead of computing them again
    results = run_shift_axes(db, list(dict.fromkeys([*AXES, *DEFAULT_AXES])), where=TRAINED, progress=False)
    for axis in AXES:
        result = results[axis]
        print_shift_matrix(result)
        a, b = np.unravel_index(np.argmax(result.kl_weighted), result.kl_weighted.shape)
        findings.largest_shift[axis] = (result.groups[a], result.groups[b], float(result.kl_weighted[a, b]))
    findings.analysed_filters = int(result.sizes.sum())  # every axis has the same selection and basis
    findings.variance_ratios = tuple(result.basis.explained_variance_ratio)
    return findings


def run_demo(out: str, seeds: int = 2, epochs: int = 3, quick: bool = False) -> int:
    """Train (or reuse) the zoo under `out/models`, write `out/catalog.csv`, extract into `out/db`,
    analyse it and end with a summary of what was stored and found.

    Returns 0 when every model trained, extracted and the analyses ran; 1 otherwise, and then the
    last lines say what failed.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from ops.catalog import write_catalog
    from flows.demo.zoo import FORMATS, INIT_SCALE
    from flows.extract import extract_catalog
    from flows.report import build_report

    if seeds < 1 or epochs < 1:
        raise UsageError(f"--seeds and --epochs must be at least 1 (got seeds={seeds}, epochs={epochs})")
    out_dir = Path(out)
    models_dir = out_dir / MODELS_FOLDER
    plan = demo_plan(seeds, quick)
    recipe = {"epochs": 1, "max_batches": 4} if quick else {"epochs": epochs, "max_batches": None}
    recipe["init_scale"] = INIT_SCALE
    copied = cross_format_model(plan)
    rows, failed, datasets = [], {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread wastes nothing and never fights other processes
    started = time.perf_counter()
    try:
        for number, model in enumerate(plan, start=1):
            fmt = primary_format(model, number - 1)
            prefix = f"[{number:>{len(str(len(plan)))}}/{len(plan)}] {model.model_id:<34}"
            t0 = time.perf_counter()
            try:
                record, reused = train_or_reuse(model, models_dir / model.model_id, recipe, datasets)
            except Exception as error:  # one model failing must not stop the zoo
                failed[model.model_id] = f"{type(error).__name__}: {error}"
                print(f"{prefix} FAILED: {failed[model.model_id]}", flush=True)
                continue
            action = "reused" if reused else f"trained in {time.perf_counter() - t0:4.1f}s"
            print(f"{prefix} {action:<16} {describe(record)}  -> catalogued as {fmt}", flush=True)
            rows.append(demo_row(model, record, fmt))
            if model == copied:
                rows += [demo_row(model, record, other, copy_of=model.model_id)
                         for other in FORMATS if other != fmt]
    finally:
        torch.set_num_threads(threads)
    print(f"zoo: {len(plan) - len(failed)}/{len(plan)} models ready in {time.perf_counter() - started:.1f}s",
          flush=True)
    rows += untrained_rows(quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = out_dir / "catalog.csv"
    write_catalog(rows, catalog)
    db = out_dir / "db"
    summary = extract_catalog(str(catalog), str(db))
    findings, analysis_error = None, None
    if not failed and not summary.failed:
        try:
            findings = analyse_demo_db(str(db))
        except Exception as error:  # noqa: BLE001 - reported in the closing lines, with the traceback above them
            traceback.print_exc()
            last = str(error).strip().splitlines()  # a RayTaskError's text is the whole remote traceback
            analysis_error = f"{type(error).__name__}: {last[-1] if last else ''}"
    report = None
    if findings is not None:
        try:
            report = build_report(str(db), out_dir / REPORT_FOLDER, where=TRAINED)
        except Exception as error:  # noqa: BLE001 - reported in the closing lines, with the traceback above them
            traceback.print_exc()
            analysis_error = f"report: {type(error).__name__}: {error}"
    print_closing_summary(out_dir, catalog, rows, copied, failed, summary, findings, analysis_error,
                          time.perf_counter() - started, report)
    return 1 if failed or summary.failed or analysis_error else 0


def print_closing_summary(out_dir: Path, catalog: Path, rows: list[dict], copied: DemoModel, failed: dict,
                          summary, findings: DemoFindings | None, analysis_error: str | None, seconds: float,
                          report: Path | None = None) -> None:
    """The demo's last lines: what was stored and found and where it is, or what failed and what to do."""
    from ops.db import open_db

    db = out_dir / "db"
    stored = open_db(db, must_exist=False).models(where="status = 'ok'", columns=["n_filters_3x3"], as_="arrow")
    stored_filters = sum(v or 0 for v in stored.column("n_filters_3x3").to_pylist())
    copies = sum(1 for row in rows if row.get("copy_of"))
    controls = sum(1 for row in rows if row.get("trained") == "false")
    lines = [f"filterdb demo: {'FAILED' if failed or summary.failed or analysis_error else 'done'} in {seconds:.0f} s",
             f"  models:   {len(summary.stored) + len(summary.skipped)} of {len(rows)} catalog rows stored "
             f"({len(rows) - copies - controls} trained, {controls} untrained controls, {copies} format copies of "
             f"{copied.model_id}); {len(summary.failed)} failed to extract, {len(failed)} failed to train"]
    if findings is not None:
        ratios = findings.variance_ratios
        lines += [
            f"  filters:  {stored_filters:,} 3x3 filters in the DB; analysed: {findings.analysed_filters:,} of "
            f"the trained models (each once, transposed layers left out: where {TRAINED!r})",
            f"  quality:  {findings.degenerated_models} of {findings.trained_models} trained models have a degenerated "
            f"3x3 layer (layers: {', '.join(f'{n} {label}' for label, n in findings.flagged.items())}); "
            f"controls: {findings.controls_random_looking:.0%} of their layers random-looking, as random weights must be",
            f"  basis:    the first three of nine components carry {sum(ratios[:3]):.0%} of the variance "
            f"({', '.join(f'{r:.2f}' for r in ratios[:4])}, ...)",
            *[f"  shift:    along {axis}, the largest weighted KL is {kl:.3f} ({a} vs {b})"
              for axis, (a, b, kl) in findings.largest_shift.items()],
        ]
    if report is not None:
        lines.append(f"  report:   {report} (every figure, self-contained: open it in a browser)")
    lines += [f"  DB:       {db} (models, layers, filters; analysis tables under {db / 'analysis'})",
              f"  catalog:  {catalog}; models: {out_dir / MODELS_FOLDER}/<model_id>/ (one folder each, four formats)"]
    if failed:
        lines += [f"  FAILED to train {model_id}: {error}" for model_id, error in failed.items()]
    if summary.failed:
        lines += [f"  FAILED to extract {model_id}: {error}" for model_id, error in summary.failed.items()]
    if analysis_error:
        lines.append(f"  FAILED analysis: {analysis_error}")
    if failed or summary.failed or analysis_error:
        lines.append(f"  what to do: fix what the lines above name, then run `filterdb demo --out {out_dir}` again "
                     f"(trained models and stored models are reused)")
    else:
        lines.append(f"  next:     filterdb shifts --db {db} --by task --where \"{TRAINED}\"")
    print("\n".join(lines), flush=True)
