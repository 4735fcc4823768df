"""timm architectures: random initialisation, hub weights (needs a network) or a local weights file."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from urllib.parse import urlsplit

import torch

from ops.layers import ModelLayers
from ops.sources import register
from ops.torch_graph import module_convolutions


HUB_PROBE_TIMEOUT_S = 3.0
_hub_reachable: bool | None = None
"""Whether the Hugging Face hub answered; probed at most once per process (timm itself retries ~47 s)."""


def hub_reachable() -> bool:
    """One TCP connection to the hub's endpoint (HF_ENDPOINT), at most once per process; False without
    a probe under HF_HUB_OFFLINE=1."""
    global _hub_reachable
    if _hub_reachable is None:
        from huggingface_hub import constants

        endpoint = urlsplit(constants.ENDPOINT)
        if constants.is_offline_mode():
            _hub_reachable = False
        else:
            try:
                with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=HUB_PROBE_TIMEOUT_S):
                    _hub_reachable = True
            except OSError:
                _hub_reachable = False
    return _hub_reachable


def needs_hub(entry) -> bool:
    """Whether extracting this catalog row downloads timm weights from the hub."""
    return entry.source == "timm" and entry.pretrained and not entry.weights_file


def assume_hub_reachable(reachable: bool) -> None:
    """Take another process's probe (the driver's) as this process's, so a run probes at most once."""
    global _hub_reachable
    _hub_reachable = reachable


@contextmanager
def _hub_offline():
    """Hub downloads answered from the local cache only, for the duration of the block."""
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_timm_model(arch: str, weights_file: str | None = None, pretrained: bool = False,
                      seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model; random weights are seeded so that a re-run extracts the same values. Pretrained
    weights come from the hub, or from its local cache when the hub cannot be reached."""
    import timm

    torch.manual_seed(seed)
    if weights_file:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=weights_file), **kwargs)
    if not pretrained or hub_reachable():
        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    try:
        with _hub_offline():
            return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as error:  # timm and the hub raise many kinds for a missing cached file
        raise ValueError(
            f"no network: the Hugging Face hub is not reachable (or HF_HUB_OFFLINE is set) and timm's "
            f"pretrained weights of {arch!r} are not in the local cache; give local weights in the "
            f"catalog column weights_file (a .pth or .safetensors file), or set pretrained=false for random "
            f"weights ({type(error).__name__})") from None


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
