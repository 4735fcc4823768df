"""The offline demo zoo: small CNNs trained in seconds on images that ship inside installed packages.

Data sets (all deterministic given a seed, pixel values in [0, 1], 16x16):
  `digits`  scikit-learn's handwritten digits, upsampled from 8x8      -> visual category `handwritten`
  `photos`  16x16 tiles of the sample photographs of scikit-learn and
            scikit-image (downscaled 2x); label = which photograph   -> `natural`
  `shapes`  procedurally drawn disks, squares, triangles, crosses and
            stripes on noisy backgrounds; label = the shape          -> `synthetic`
Tasks: `classification` (cross-entropy on the labels) and `denoising` (predict the clean image from
the image plus Gaussian noise). Families: `vgg` (plain 3x3 stacks), `resnet` (basic blocks with 1x1
shortcut convolutions) and `mobilenet` (inverted residuals with depthwise 3x3); the denoisers
upsample with a 3x3 ConvTranspose2d, so the zoo holds transposed layers too.
Nothing here touches the network.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 16
TEST_SHARE = 0.2
NOISE_SIGMA = 0.25
INIT_SCALE = 0.05
"""Factor on the initial convolution weights. BatchNorm follows every convolution but the last, so a
convolution's scale barely changes the function; from a small start the few hundred Adam steps of
the demo shape the filters as long training does in real models, instead of leaving them near their
random initialisation. Measured by scikit-learn's PCA of the peak-scaled 3x3 filters, 3 epochs:
the first three components carry 64-85% of the variance of single trained models (digits vgg,
shapes resnet denoiser, photos mobilenet) and 78% of the whole trained zoo; 38-54% from scale 1."""
TASKS = ("classification", "denoising")
FORMATS = ("state_dict", "safetensors", "torchscript", "onnx")
"""The export formats, each a filterdb source: checkpoint, safetensors, torchscript, onnx."""
GRAPH_FORMATS = ("torchscript", "onnx")
"""The formats that keep the model's graph (layer kinds, transposition, depth)."""

SOURCE_OF_FORMAT = {"state_dict": "checkpoint", "safetensors": "safetensors", "torchscript": "torchscript",
                    "onnx": "onnx"}
FILE_OF_FORMAT = {"state_dict": "state_dict.pt", "safetensors": "model.safetensors",
                  "torchscript": "torchscript.pt", "onnx": "model.onnx"}


# ---------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageDataset:
    name: str
    visual_category: str
    classes: tuple[str, ...]
    x_train: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    visual_category: str
    make: Callable[[int], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]


DATASETS: dict[str, DatasetSpec] = {}


def dataset(name: str, visual_category: str):
    """Register a function `seed -> (images (N, C, H, W) in [0, 1], labels (N,), class names)`."""
    def decorate(make):
        DATASETS[name] = DatasetSpec(name, visual_category, make)
        return make

    return decorate


def load_dataset(name: str, seed: int = 0) -> ImageDataset:
    """A registered data set, split into train and test parts by a permutation drawn from `seed`."""
    spec = DATASETS[name]
    images, labels, classes = spec.make(seed)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * TEST_SHARE))
    test, train = order[:n_test], order[n_test:]
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageDataset(name, spec.visual_category, classes, x[train], y[train], x[test], y[test])


@dataset("digits", visual_category="handwritten")
def digits_images(seed: int):
    """scikit-learn's 1,797 digits (8x8, values 0..16), bilinearly upsampled to 16x16."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return images.clamp(0, 1).numpy(), digits.target, tuple(str(d) for d in range(10))


PHOTOS = ("china", "flower", "astronaut", "coffee", "chelsea", "rocket")


def sample_photographs() -> dict[str, np.ndarray]:
    """RGB photographs bundled with scikit-learn and scikit-image (no download), uint8 (H, W, 3)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    sklearn_photos = load_sample_images()
    photos = {Path(f).stem: image for f, image in zip(sklearn_photos.filenames, sklearn_photos.images)}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photos[name] = getattr(skimage.data, name)()
    return {name: photos[name] for name in PHOTOS}


@dataset("photos", visual_category="natural")
def photo_tiles(seed: int):
    """Non-overlapping 16x16 tiles of each photograph after 2x2 average pooling; label = photograph.

    The tiles are fixed; `seed` only decides the train/test split (in `load_dataset`).
    """
    tiles, labels = [], []
    for label, image in enumerate(sample_photographs().values()):
        x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        x = F.avg_pool2d(x, 2)[0]
        rows, cols = x.shape[1] // IMAGE_SIZE, x.shape[2] // IMAGE_SIZE
        x = x[:, :rows * IMAGE_SIZE, :cols * IMAGE_SIZE]
        grid = x.reshape(3, rows, IMAGE_SIZE, cols, IMAGE_SIZE).permute(1, 3, 0, 2, 4)
        tiles.append(grid.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
        labels += [label] * (rows * cols)
    return torch.cat(tiles).numpy(), np.array(labels), PHOTOS


SHAPES = ("disk", "square", "triangle", "cross", "stripes")


@dataset("shapes", visual_category="synthetic")
def shape_images(seed: int, per_class: int = 400):
    """Random shapes (position, size, contrast) on a noisy background with a random gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5
    images, labels = [], []
    for label, shape in enumerate(SHAPES):
        for _ in range(per_class):
            r = rng.uniform(3.0, 6.5)
            cx, cy = rng.uniform(r, IMAGE_SIZE - r, size=2)
            dx, dy = x - cx, y - cy
            if shape == "disk":
                mask = dx ** 2 + dy ** 2 <= r ** 2
            elif shape == "square":
                mask = (abs(dx) <= r * 0.8) & (abs(dy) <= r * 0.8)
            elif shape == "triangle":
                mask = (dy >= -r) & (dy <= r) & (abs(dx) <= (dy + r) * 0.5)
            elif shape == "cross":
                mask = ((abs(dx) <= r / 3) & (abs(dy) <= r)) | ((abs(dy) <= r / 3) & (abs(dx) <= r))
            else:
                angle, period = rng.uniform(0, np.pi), rng.uniform(3.0, 6.0)
                mask = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period) > 0
            slope_x, slope_y = rng.uniform(-0.02, 0.02, size=2)
            background = rng.uniform(0.0, 1.0) + slope_x * dx + slope_y * dy
            foreground = rng.uniform(0.0, 1.0)
            while abs(foreground - background.mean()) < 0.3:
                foreground = rng.uniform(0.0, 1.0)
            image = np.where(mask, foreground, background) + rng.normal(0, 0.05, size=mask.shape)
            images.append(np.clip(image, 0, 1)[None])
            labels.append(label)
    return np.stack(images).astype(np.float32), np.array(labels), SHAPES


# ---------------------------------------------------------------------------------------------
# Architectures: one stage builder per family, shared by the classifier and the denoiser
# ---------------------------------------------------------------------------------------------

def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet's basic block; a 1x1 shortcut convolution when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_relu(in_ch, out_ch, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, depthwise 3x3, 1x1 project; identity shortcut when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int = 2):
        super().__init__()
        hidden = in_ch * expand
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def vgg_stage(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Max pooling first, so that both convolutions run at the lower resolution (cheaper on CPU)."""
    pool = [nn.MaxPool2d(stride)] if stride > 1 else []
    return nn.Sequential(*pool, conv_bn_relu(in_ch, out_ch), conv_bn_relu(out_ch, out_ch))


def resnet_stage(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))


def mobilenet_stage(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    return nn.Sequential(InvertedResidual(in_ch, out_ch, stride), InvertedResidual(out_ch, out_ch, 1))


FAMILIES: dict[str, Callable[[int, int, int], nn.Module]] = {
    "vgg": vgg_stage,
    "resnet": resnet_stage,
    "mobilenet": mobilenet_stage,
}
"""Family name -> `stage(in_channels, out_channels, stride)`."""


class Classifier(nn.Module):
    def __init__(self, stage, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, width)
        self.stages = nn.Sequential(stage(width, 2 * width, 2), stage(2 * width, 4 * width, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class Denoiser(nn.Module):
    """Encoder at half resolution, a 3x3 ConvTranspose2d back up plus a full-resolution skip from the
    stem (U-Net-like); the last convolution predicts the clean image."""

    def __init__(self, stage, in_channels: int, width: int = 16):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, width)
        self.stages = nn.Sequential(stage(width, 2 * width, 2), stage(2 * width, 2 * width, 1))
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 3, 2, 1, output_padding=1, bias=False),
                                nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width, in_channels, 3, 1, 1)

    def forward(self, x):
        features = self.stem(x)
        return self.out(self.up(self.stages(features)) + features)


def build_model(family: str, task: str, in_channels: int, num_classes: int) -> nn.Module:
    stage = FAMILIES[family]
    if task == "classification":
        return Classifier(stage, in_channels, num_classes)
    if task == "denoising":
        return Denoiser(stage, in_channels)
    raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainedModel:
    model: nn.Module
    metrics: dict[str, float]
    """classification: accuracy (held-out); denoising: test_mse and noisy_mse (the input's)."""


def add_noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + NOISE_SIGMA * torch.randn(x.shape, generator=generator)


def train_model(data: ImageDataset, family: str, task: str, seed: int, epochs: int = 3,
                batch_size: int = 64, lr: float = 3e-3, max_batches: int | None = None,
                init_scale: float = INIT_SCALE) -> TrainedModel:
    """Adam on `data`'s train part, seeded (init, batch order and noise); evaluated on its test part.

    `max_batches` caps the batches per epoch (quick runs for tests).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(family, task, data.input_size[0], len(data.classes))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.weight.mul_(init_scale)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    started = time.perf_counter()
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        order = torch.randperm(len(data.x_train), generator=generator)
        for number, start in enumerate(range(0, len(order), batch_size)):
            if max_batches is not None and number >= max_batches:
                break
            batch = order[start:start + batch_size]
            x, y = data.x_train[batch], data.y_train[batch]
            if task == "classification":
                loss = F.cross_entropy(model(x), y)
            else:
                loss = F.mse_loss(model(add_noise(x, generator)), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    recalibrate_batchnorm(model, data, task, generator)
    metrics = {"final_loss": loss.item(), "train_seconds": time.perf_counter() - started}
    metrics.update(evaluate(model, data, task))
    return TrainedModel(model, metrics)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: ImageDataset, task: str, generator: torch.Generator) -> None:
    """BatchNorm statistics as the averages over the training images under the final weights (the
    running averages lag behind weights that moved fast), then eval mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average
    model.train()
    for start in range(0, len(data.x_train), 256):
        x = data.x_train[start:start + 256]
        model(add_noise(x, generator) if task == "denoising" else x)
    for layer in layers:
        layer.momentum = 0.1
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageDataset, task: str) -> dict[str, float]:
    """Held-out accuracy, or the MSE of the denoised and of the noisy test images (fixed noise)."""
    model.eval()
    if task == "classification":
        return {"accuracy": float((model(data.x_test).argmax(1) == data.y_test).float().mean())}
    noisy = add_noise(data.x_test, torch.Generator().manual_seed(12345))
    return {"test_mse": float(F.mse_loss(model(noisy), data.x_test)),
            "noisy_mse": float(F.mse_loss(noisy, data.x_test))}


# ---------------------------------------------------------------------------------------------
# Export to every source format
# ---------------------------------------------------------------------------------------------

def export_model(model: nn.Module, input_size: tuple[int, ...], folder: str | Path) -> dict[str, Path]:
    """Write `model` as state_dict, safetensors, TorchScript (traced) and ONNX; returns format -> file.

    The ONNX export keeps every weight as stored: the default exporters fold BatchNorm into the
    preceding convolution in eval mode, which would change the very weights the DB is about, so
    constant folding (legacy exporter) or optimisation (dynamo exporter) is switched off.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {fmt: folder / FILE_OF_FORMAT[fmt] for fmt in FORMATS}
    model = model.eval()
    example = torch.zeros(1, *input_size)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, paths["state_dict"])
    save_file(state, str(paths["safetensors"]), metadata={"format": "pt"})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the way to write TorchScript
        torch.jit.save(torch.jit.trace(model, example), str(paths["torchscript"]))
    export_onnx(model, example, paths["onnx"])
    return paths


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False, do_constant_folding=False,
                              input_names=["image"], output_names=["output"])
        except Exception:  # the legacy exporter is gone in some torch build: the dynamo one, unoptimised
            torch.onnx.export(model, (example,), str(path), dynamo=True, optimize=False, verbose=False,
                              input_names=["image"], output_names=["output"])
