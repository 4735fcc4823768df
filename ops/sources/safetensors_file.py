"""safetensors files: a state dict without any pickle.

The format stores tensors sorted by name, so the original key order is gone. Without `arch`, keys
are put in natural order (`features.2` before `features.10`), which restores the order of
numbered blocks; named siblings (`stem`, `head`) stay alphabetical.
"""

from __future__ import annotations

import re

from ops.layers import ModelLayers
from ops.sources import register
from ops.sources.checkpoint import layers_from_state_dict


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@register("safetensors")
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    from safetensors.torch import load_file

    state = load_file(entry.uri, device="cpu")
    return layers_from_state_dict({k: state[k] for k in sorted(state, key=natural_key)}, entry, device)
