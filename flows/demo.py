"""`filterdb demo`: train the offline demo zoo, export it in every source format, build its DB.

Everything comes from installed packages (no network): the data sets and architectures of
`ops.demo_zoo`, plus a few timm architectures with random weights as `untrained` models.
Layout of `out`: `models/<model_id>/` (the four files and `training.json`), `catalog.csv`, `db/`.
Re-runs reuse trained models whose files exist and skip models stored unchanged in the DB.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

MODELS_FOLDER = "models"
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
    from ops.demo_zoo import DATASETS, FAMILIES, TASKS

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
    from ops.demo_zoo import FILE_OF_FORMAT, export_model, load_dataset, train_model

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
    from ops.demo_zoo import FILE_OF_FORMAT, SOURCE_OF_FORMAT

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


def analyse_demo_db(db: str) -> None:
    """The study's two findings on the zoo: degenerated layers, and shifts by visual category and depth."""
    from flows.quality import print_report, quality_report
    from flows.shifts import print_shift_matrix, run_shifts
    from ops.metrics import DegeneracyThresholds

    per_model, worst = quality_report(db)
    print_report(per_model, worst, DegeneracyThresholds(), top=10)
    for axis in ("visual_category", "depth"):
        print_shift_matrix(run_shifts(db, axis, progress=False))


def run_demo(out: str, seeds: int = 2, epochs: int = 3, quick: bool = False) -> int:
    """Train (or reuse) the zoo under `out/models`, write `out/catalog.csv`, extract into `out/db`.

    Returns 0 when every model trained and extracted, 1 otherwise.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from ops.catalog import write_catalog
    from ops.demo_zoo import FORMATS
    from flows.extract import extract_catalog

    if seeds < 1 or epochs < 1:
        print(f"demo: --seeds and --epochs must be at least 1 (got seeds={seeds}, epochs={epochs})")
        return 2
    out_dir = Path(out)
    models_dir = out_dir / MODELS_FOLDER
    plan = demo_plan(seeds, quick)
    recipe = {"epochs": 1, "max_batches": 4} if quick else {"epochs": epochs, "max_batches": None}
    copied = cross_format_model(plan)
    rows, failed, datasets = [], [], {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread wastes nothing and never fights other processes
    started = time.perf_counter()
    try:
        for number, model in enumerate(plan, start=1):
            fmt = FORMATS[(number - 1) % len(FORMATS)]
            prefix = f"[{number:>{len(str(len(plan)))}}/{len(plan)}] {model.model_id:<34}"
            t0 = time.perf_counter()
            try:
                record, reused = train_or_reuse(model, models_dir / model.model_id, recipe, datasets)
            except Exception as error:  # one model failing must not stop the zoo
                failed.append(model.model_id)
                print(f"{prefix} FAILED: {type(error).__name__}: {error}", flush=True)
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
    summary = extract_catalog(str(catalog), str(out_dir / "db"))
    analyse_demo_db(str(out_dir / "db"))
    print(f"models:  {models_dir}/<model_id>/ ({', '.join(FORMATS)})\n"
          f"catalog: {catalog} ({len(rows)} rows; `@<format>` rows repeat {copied.model_id} in the other formats)\n"
          f"DB:      {out_dir / 'db'} (models.lance, layers.lance, filters.lance)")
    return 1 if failed or summary.failed else 0
