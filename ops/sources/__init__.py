"""Model sources, registered by name like timm's models: each turns a catalog entry into layers.

A source is a function `load(entry, trust_pickles, device) -> ModelLayers` decorated with
`@register("name", needs_file=...)`. Adding a format means adding one module here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ops.layers import ModelLayers


@dataclass(frozen=True)
class Source:
    name: str
    load: Callable[..., ModelLayers]
    needs_file: bool


SOURCES: dict[str, Source] = {}


def register(name: str, needs_file: bool = True):
    def decorate(load):
        SOURCES[name] = Source(name, load, needs_file)
        return load

    return decorate


def load_layers(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    """The convolution layers of the model a catalog entry names, via its source.

    `device` is where a torch model runs its dummy forward pass (weights come back unchanged)."""
    return SOURCES[entry.source].load(entry, trust_pickles=trust_pickles, device=device)


from ops.sources import checkpoint, onnx_file, safetensors_file, timm_models, torchscript_file  # noqa: E402,F401
