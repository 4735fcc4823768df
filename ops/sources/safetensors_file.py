"""safetensors files: a state dict without any pickle.

The format stores tensors sorted by name, so the original key order is gone. Without `arch`, keys
are put in natural order (`features.2` before `features.10`), which restores the order of
numbered blocks; named siblings (`stem`, `head`) stay alphabetical.
"""

from __future__ import annotations

import os
import re

from ops.layers import ModelLayers
from ops.sources import register
from ops.sources.checkpoint import layers_from_state_dict


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def recognises(path: str, head: bytes) -> bool:
    """An 8-byte little-endian header length, then the JSON header."""
    return len(head) > 8 and head[8:9] == b"{"


def read_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if not recognises(path, head):
        raise ValueError(f"{path}: not a safetensors file (it must start with an 8-byte header length and a "
                         f"JSON header)")
    header_bytes = int.from_bytes(head[:8], "little")
    if 8 + header_bytes > size:
        raise ValueError(f"{path}: its header claims {header_bytes} bytes but the file has {size}: "
                         f"truncated or not a safetensors file")
    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error}); truncated or damaged") from None


@register("safetensors", description="a safetensors file", recognises=recognises)
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    state = read_safetensors(entry.uri)
    return layers_from_state_dict({k: state[k] for k in sorted(state, key=natural_key)}, entry, device)
