"""The offline demo zoo: its data, its training, its exports and the DB `filterdb demo` builds."""

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flows.demo.zoo import (DATASETS, FAMILIES, FILE_OF_FORMAT, FORMATS, TASKS, build_model, export_model,
                            load_dataset, train_model)

EXPECTED = {  # name: (visual category, channels, images, classes)
    "digits": ("handwritten", 1, 1797, 10),
    "photos": ("natural", 3, None, 6),
    "shapes": ("synthetic", 1, 2000, 5),
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dataset_is_deterministic_and_has_the_claimed_shapes_and_labels(name):
    category, channels, n_images, n_classes = EXPECTED[name]
    data, again = load_dataset(name, seed=0), load_dataset(name, seed=0)
    assert data.visual_category == category
    assert len(data.classes) == n_classes
    for part in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(data, part), getattr(again, part))
    n = len(data.x_train) + len(data.x_test)
    assert n_images is None or n == n_images
    assert data.x_train.shape[1:] == data.x_test.shape[1:] == (channels, 16, 16)
    assert data.x_train.dtype == torch.float32
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1.0
    assert set(data.y_train.tolist()) == set(data.y_test.tolist()) == set(range(n_classes))
    assert len(data.x_test) == round(0.2 * n)


def test_another_seed_gives_another_split_of_the_same_digits():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert not torch.equal(a.y_test, b.y_test)
    assert torch.equal(torch.cat([a.x_train, a.x_test]).sum(0), torch.cat([b.x_train, b.x_test]).sum(0))


def test_registries_span_three_categories_two_tasks_three_families():
    assert len({spec.visual_category for spec in DATASETS.values()}) >= 3
    assert set(TASKS) == {"classification", "denoising"}
    assert set(FAMILIES) == {"vgg", "resnet", "mobilenet"}


def test_classifier_beats_chance_on_held_out_digits():
    data = load_dataset("digits")
    model = train_model(data, "vgg", "classification", seed=0, epochs=3).model
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy > 0.8  # chance: 0.1


def test_denoiser_lowers_the_mse_of_its_noisy_input():
    data = load_dataset("digits")
    model = train_model(data, "vgg", "denoising", seed=0, epochs=2).model
    noisy = data.x_test + 0.25 * torch.randn(data.x_test.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        denoised_mse = F.mse_loss(model(noisy), data.x_test).item()
    noisy_mse = F.mse_loss(noisy, data.x_test).item()
    assert denoised_mse < 0.6 * noisy_mse


def _randomise_batchnorm(model):
    """Non-trivial running statistics, so that an exporter folding BatchNorm into convs would show."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated, still reads TorchScript
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_export_format_holds_bit_identical_weights(tmp_path, family):
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = build_model(family, "denoising", 3, 0).eval()
    _randomise_batchnorm(model)
    paths = export_model(model, (3, 16, 16), tmp_path)
    assert set(paths) == set(FORMATS) and all(p.is_file() for p in paths.values())
    expected = {k: v.numpy() for k, v in model.state_dict().items() if v.dim() == 4}
    graph = onnx.load(str(paths["onnx"])).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    conv_weights = [node.input[1] for node in graph.node if node.op_type in ("Conv", "ConvTranspose")]
    loaded = {
        "state_dict": torch.load(paths["state_dict"], weights_only=True),
        "safetensors": load_file(str(paths["safetensors"])),
        "torchscript": torch.jit.load(str(paths["torchscript"])).state_dict(),
        "onnx": {name: initializers[name] for name in conv_weights},
    }
    for fmt, tensors in loaded.items():
        found = {k: np.asarray(v) for k, v in tensors.items() if np.asarray(v).ndim == 4}
        assert found.keys() == expected.keys(), fmt
        for name, weight in expected.items():
            assert found[name].dtype == weight.dtype and found[name].tobytes() == weight.tobytes(), (fmt, name)


def _table(out, name):
    import lance

    return lance.dataset(str(out / "db" / f"{name}.lance")).to_table().to_pandas()


def test_quick_demo_stores_every_catalog_row_ok(quick_demo):
    out, code = quick_demo
    assert code == 0
    with open(out / "catalog.csv", newline="") as f:
        catalog = list(csv.DictReader(f))
    models = _table(out, "models")
    assert sorted(models.model_id) == sorted(row["model_id"] for row in catalog)
    assert (models.status == "ok").all(), models[models.status != "ok"][["model_id", "error"]]
    assert (models.n_filters_3x3 > 0).all()
    for row in catalog:
        if row["source"] != "timm":
            assert (out / row["uri"]).is_file()
            assert all((out / row["uri"]).with_name(f).is_file() for f in FILE_OF_FORMAT.values())


def test_quick_demo_spans_categories_tasks_families_and_every_source(quick_demo):
    out, _ = quick_demo
    models = _table(out, "models")
    trained = models[models.trained == "true"]
    assert trained.visual_category.nunique() >= 3
    assert trained.task.nunique() >= 2
    assert trained.family.nunique() >= 3
    assert set(models.source) == {"checkpoint", "safetensors", "torchscript", "onnx", "timm"}
    untrained = models[models.trained == "false"]
    assert len(untrained) >= 1 and set(untrained.task) == {"untrained"} and set(untrained.pretrained) == {False}


def test_quick_demo_copies_in_other_formats_hold_the_same_filters(quick_demo):
    out, _ = quick_demo
    models = _table(out, "models")
    copies = models[models.copy_of != ""]
    assert len(copies) == len(FORMATS) - 1
    original = copies.copy_of.iloc[0]
    filters, layers = _table(out, "filters"), _table(out, "layers")
    filters = filters.merge(layers[["model_id", "layer_index", "layer_name"]], on=["model_id", "layer_index"])

    def kernels_by_position(model_id):
        """Each kernel's bytes keyed by (layer, dim 0, dim 1) of the stored weight: (out, in), or (in, out) for a
        layer stored as transposed. A state dict cannot tell a transposed layer from an ordinary one and reads
        its dim 0 as `out`; the position in the stored weight is the same either way."""
        rows = filters[filters.model_id == model_id]
        transposed = (rows.kind == "transposed").to_numpy()
        dim0 = np.where(transposed, rows.in_index, rows.out_index)
        dim1 = np.where(transposed, rows.out_index, rows.in_index)
        weights = np.stack(rows.weights.to_numpy()).astype(np.float32)
        kernels = {(name, int(d0), int(d1)): w.tobytes() for name, d0, d1, w in zip(rows.layer_name, dim0, dim1, weights)}
        assert len(kernels) == len(rows), f"{model_id}: two kernels at the same position"
        return kernels

    def kinds(model_id):
        return dict(layers[layers.model_id == model_id][["layer_name", "kind"]].itertuples(index=False))

    reference = kernels_by_position(original)
    assert reference and "transposed" in kinds(original).values()
    for copy, fmt in zip(copies.model_id, copies.format):
        assert kernels_by_position(copy) == reference, copy
        if fmt in ("torchscript", "onnx"):  # graph formats know each layer's kind
            assert kinds(copy) == kinds(original), copy


def test_demo_rerun_reuses_trained_models(quick_demo, capsys):
    from flows.demo.run import run_demo

    out, _ = quick_demo
    records = sorted(out.glob("models/*/training.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert run_demo(str(out), quick=True) == 0
    assert [p.stat().st_mtime_ns for p in records] == stamps
    assert capsys.readouterr().out.count("reused") == len(records)


def test_the_demo_ends_with_a_summary_of_what_it_stored_and_found(quick_demo, capsys):
    from flows.demo.run import run_demo

    out, _ = quick_demo
    assert run_demo(str(out), quick=True) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("filterdb demo: "))
    closing = lines[start:]
    assert closing[0].startswith("filterdb demo: done") and len(closing) <= 12
    assert any(line.lstrip().startswith("basis:") and "first three of nine components" in line for line in closing)
    assert sum(line.lstrip().startswith("shift:") for line in closing) == 2
    assert any(f"DB:       {out / 'db'}" in line for line in closing)


def test_models_with_transposed_layers_are_catalogued_in_graph_formats(quick_demo):
    out, _ = quick_demo
    with open(out / "catalog.csv", newline="") as f:
        primaries = [row for row in csv.DictReader(f) if row["trained"] == "true" and not row["copy_of"]]
    denoisers = [row for row in primaries if row["task"] == "denoising"]
    assert denoisers and {row["format"] for row in denoisers} <= {"torchscript", "onnx"}


def test_trained_filters_concentrate_their_variance_and_random_ones_do_not():
    from sklearn.decomposition import PCA

    def top3_share(model):
        kernels = np.concatenate([m.weight.detach().numpy().reshape(-1, 9) for m in model.modules()
                                  if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)])
        peaks = np.abs(kernels).max(axis=1, keepdims=True)
        return PCA(9).fit(kernels / np.where(peaks == 0, 1, peaks)).explained_variance_ratio_[:3].sum()

    data = load_dataset("digits")
    torch.manual_seed(0)
    assert top3_share(build_model("vgg", "classification", 1, 10)) < 0.4  # nine directions alike: 1/3
    assert top3_share(train_model(data, "vgg", "classification", seed=0, epochs=3).model) > 0.55
