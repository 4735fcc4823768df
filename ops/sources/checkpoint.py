"""torch state_dict files (.pt/.pth/.bin), loaded without running pickled code unless trusted."""

from __future__ import annotations

import pickle

import torch

from ops.layers import ModelLayers, layers_from_weights
from ops.sources import register, zip_members
from ops.sources.timm_models import create_timm_model, input_size_of
from ops.torch_graph import module_convolutions, to_numpy

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
ZIP_MAGIC = b"PK\x03\x04"


def is_torchscript_archive(members: list[str]) -> bool:
    """TorchScript archives (torch.jit.save) hold code and constants next to the pickled data."""
    return any("/code/" in m or m.endswith("constants.pkl") for m in members)


def recognises(path: str, head: bytes) -> bool:
    """A torch.save file: a zip archive with a data.pkl and no TorchScript code, or a bare pickle
    (protocol 2-5, as torch.save wrote before zip archives)."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    members = zip_members(path) if head.startswith(ZIP_MAGIC) else None
    return bool(members) and any(m.endswith("data.pkl") for m in members) and not is_torchscript_archive(members)


def unreadable_zip(path: str) -> bool:
    """A file that starts like a zip archive but whose directory cannot be read: cut short or damaged."""
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC and zip_members(path) is None


def read_checkpoint(path: str, trust_pickles: bool) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        head = f.read(8)
    if unreadable_zip(path):
        raise ValueError(f"{path}: a zip archive (as torch.save writes) whose directory cannot be read: "
                         f"the file is truncated or damaged; save or copy it again")
    if not recognises(path, head):
        raise ValueError(f"{path}: not a torch checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickles)
    except (EOFError, RuntimeError) as error:  # torch's readers report a short file as either
        raise ValueError(f"{path}: the checkpoint ends early or is damaged ({str(error).splitlines()[0] or 'EOF'}); "
                         f"save or copy it again") from None
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: the checkpoint holds pickled objects beyond tensors, and unpickling them would run "
            f"code from the file. Re-save it as a plain state_dict or safetensors, or, if you trust the "
            f"file, pass --trust-pickles. ({str(error).splitlines()[0]})"
        ) from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, also when wrapped as {"state_dict": ...} or {"model": ...}."""
    for _ in range(3):
        if isinstance(obj, torch.nn.Module):  # only reachable with --trust-pickles
            obj = obj.state_dict()
        if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (dict, torch.nn.Module))), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state_dict found (expected a dict of tensors, "
                         f"possibly under one of {', '.join(WRAPPER_KEYS)})")
    prefix = "module."
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def layers_from_state_dict(state: dict[str, torch.Tensor], entry, device: str = "cpu") -> ModelLayers:
    """Into the timm architecture `entry.arch` when given (graph depth), else from 4-D tensors."""
    if not entry.arch:
        named = [(k.removesuffix(".weight"), to_numpy(v)) for k, v in state.items()
                 if v.dim() == 4 and not k.endswith("bias")]
        return layers_from_weights(named)
    model = create_timm_model(entry.arch, **_shape_overrides(entry.arch, state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{entry.uri}: weights do not fit timm architecture {entry.arch!r}: "
                         f"{str(error).splitlines()[0]} ...") from None
    return module_convolutions(model, input_size_of(entry, model), device)


def _shape_overrides(arch: str, state: dict[str, torch.Tensor]) -> dict:
    """num_classes and in_chans as the checkpoint has them (a fine-tuned head, grey inputs)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch) if timm.models.get_pretrained_cfg(arch) else None
    cfg = cfg.to_dict() if cfg is not None else {}
    overrides = {}
    classifier = cfg.get("classifier")
    if isinstance(classifier, str) and f"{classifier}.weight" in state:
        overrides["num_classes"] = int(state[f"{classifier}.weight"].shape[0])
    first_conv = cfg.get("first_conv")
    if isinstance(first_conv, str) and f"{first_conv}.weight" in state:
        overrides["in_chans"] = int(state[f"{first_conv}.weight"].shape[1])
    return overrides


@register("checkpoint", description="a torch.save checkpoint (state dict)", recognises=recognises)
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    return layers_from_state_dict(read_checkpoint(entry.uri, trust_pickles), entry, device)
