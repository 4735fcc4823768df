"""TorchScript archives (torch.jit.save): graph depth from a dummy forward when the input size is known."""

from __future__ import annotations

import torch

from ops.layers import ModelLayers
from ops.sources import register, zip_members
from ops.sources.checkpoint import ZIP_MAGIC, is_torchscript_archive, unreadable_zip
from ops.torch_graph import module_convolutions


def recognises(path: str, head: bytes) -> bool:
    members = zip_members(path) if head.startswith(ZIP_MAGIC) else None
    return bool(members) and is_torchscript_archive(members)


@register("torchscript", description="a TorchScript archive (torch.jit.save)", recognises=recognises)
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    if unreadable_zip(entry.uri):
        raise ValueError(f"{entry.uri}: a zip archive (as torch.jit.save writes) whose directory cannot be read: "
                         f"the file is truncated or damaged; save or copy it again")
    try:
        module = torch.jit.load(entry.uri, map_location="cpu")
    except RuntimeError as error:
        reason = str(error).splitlines()[0].split(". ")[0]
        raise ValueError(f"{entry.uri}: not a TorchScript archive ({reason})") from None
    return module_convolutions(module, entry.input_size, device)
