"""safetensors files: a state dict without any pickle."""

from __future__ import annotations

from ops.layers import ModelLayers
from ops.sources import register
from ops.sources.checkpoint import layers_from_state_dict


@register("safetensors", suffixes=(".safetensors",))
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    from safetensors.torch import load_file

    return layers_from_state_dict(load_file(entry.uri, device="cpu"), entry, device)
