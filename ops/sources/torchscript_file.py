"""TorchScript archives (torch.jit.save): graph depth from a dummy forward when the input size is known."""

from __future__ import annotations

import torch

from ops.layers import ModelLayers
from ops.sources import register
from ops.torch_graph import module_convolutions


@register("torchscript")
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    try:
        module = torch.jit.load(entry.uri, map_location="cpu")
    except RuntimeError as error:
        raise ValueError(f"{entry.uri}: not a TorchScript archive ({str(error).splitlines()[0]})") from None
    return module_convolutions(module, entry.input_size, device)
