"""timm architectures: random initialisation, hub weights (needs a network) or a local weights file."""

from __future__ import annotations

import torch

from ops.layers import ModelLayers
from ops.sources import register
from ops.torch_graph import module_convolutions


def create_timm_model(arch: str, weights_file: str | None = None, pretrained: bool = False,
                      seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model; random weights are seeded so that a re-run extracts the same values."""
    import timm

    torch.manual_seed(seed)
    if weights_file:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=weights_file), **kwargs)
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


def input_size_of(entry, model: torch.nn.Module) -> tuple[int, ...] | None:
    """The catalog's input size, else the one timm records for the architecture."""
    if entry.input_size:
        return entry.input_size
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg["input_size"]) if "input_size" in cfg else None


@register("timm", needs_file=False)
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    model = create_timm_model(entry.uri, entry.weights_file, entry.pretrained, entry.seed)
    return module_convolutions(model, input_size_of(entry, model), device)
