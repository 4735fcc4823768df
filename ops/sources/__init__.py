"""Model sources, registered by name like timm's models: each turns a catalog entry into layers.

A source is a function `load(entry, trust_pickles, device) -> ModelLayers` decorated with
`@register("name", needs_file=..., description=..., recognises=...)`. `recognises(path, head)`
says from a file's first bytes (`head`) whether it is in the source's format, so that a file under
the wrong source is named for what it is. Adding a format means adding one module here.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Callable

from ops.layers import ModelLayers

HEAD_BYTES = 64
"""How much of a file the recognisers see."""


@dataclass(frozen=True)
class Source:
    name: str
    load: Callable[..., ModelLayers]
    needs_file: bool
    description: str
    recognises: Callable[[str, bytes], bool] | None


SOURCES: dict[str, Source] = {}


def register(name: str, needs_file: bool = True, description: str = "", recognises=None):
    def decorate(load):
        SOURCES[name] = Source(name, load, needs_file, description or name, recognises)
        return load

    return decorate


def file_kind(path: str) -> str | None:
    """The source whose format the file's content shows, or None when no source recognises it."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    return next((s.name for s in SOURCES.values() if s.recognises and s.recognises(path, head)), None)


def file_problem(source: str, path: str) -> str | None:
    """Why the file at `path` cannot be read by `source`, judged from its content; None if it may be.

    An empty file, or one another source recognises (an ONNX model under `checkpoint`), is named for
    what it is; a file nobody recognises is left to the source's loader, which says what failed."""
    if os.path.getsize(path) == 0:
        return f"file {path} is empty (0 bytes): it was not written completely; export or copy it again"
    kind = file_kind(path)
    if kind is None or kind == source:
        return None
    return (f"file {path} looks like {SOURCES[kind].description}, not {SOURCES[source].description}: "
            f"use source {kind!r}")


def zip_members(path: str) -> list[str] | None:
    """The member names of a zip archive (torch.save and TorchScript files are zips), None if not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def load_layers(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    """The convolution layers of the model a catalog entry names, via its source.

    `device` is where a torch model runs its dummy forward pass (weights come back unchanged)."""
    source = SOURCES[entry.source]
    if source.needs_file:
        problem = file_problem(entry.source, entry.uri)
        if problem:
            raise ValueError(problem)
    return source.load(entry, trust_pickles=trust_pickles, device=device)


from ops.sources import checkpoint, onnx_file, safetensors_file, timm_models, torchscript_file  # noqa: E402,F401
