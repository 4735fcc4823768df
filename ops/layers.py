"""The one record every source returns: a model's 2-D convolution layers in execution order."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

@dataclass
class ConvLayer:
    """One 2-D convolution as stored in the model.

    `weight` holds the stored values unchanged: `(out, in/groups, kh, kw)` for a convolution and
    `(in, out/groups, kh, kw)` for a transposed one (torch's and ONNX's layout).
    """

    name: str
    weight: np.ndarray
    in_channels: int
    out_channels: int
    groups: int
    transposed: bool = False
    conv_depth: int = 0

    @property
    def kind(self) -> str:
        return conv_kind(self.in_channels, self.out_channels, self.groups, self.transposed)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def n_filters(self) -> int:
        """Number of 2-D kernels: out * in/groups (in * out/groups for a transposed layer)."""
        return int(self.weight.shape[0] * self.weight.shape[1])


@dataclass
class ModelLayers:
    """What a source yields for one model: its convolutions and how their depth was found."""

    layers: list[ConvLayer]
    depth_method: str
    notes: list[str] = field(default_factory=list)

    @property
    def max_depth(self) -> int:
        return max((layer.conv_depth for layer in self.layers), default=0)

    def depth_norm(self, layer: ConvLayer) -> float:
        return layer.conv_depth / self.max_depth if self.max_depth else 0.0


def conv_kind(in_channels: int, out_channels: int, groups: int, transposed: bool) -> str:
    """`depthwise` is `groups == in == out` (design.md); other `groups > 1` layers are `grouped`."""
    if transposed:
        return "transposed"
    if groups > 1 and groups == in_channels == out_channels:
        return "depthwise"
    if groups > 1:
        return "grouped"
    return "conv"


def layers_from_weights(named_weights: list[tuple[str, np.ndarray]]) -> ModelLayers:
    """Layers from bare 4-D weight tensors in their stored order, when no architecture is known.

    Groups and transposition are not recorded in a state dict: every tensor is read as an
    ordinary convolution `(out, in, kh, kw)`, except that a tensor with one input channel after
    the first layer is read as depthwise (a stem seeing one grey channel stays `conv`).
    Depth is the key order (each layer one deeper than the one before).
    """
    layers = []
    for name, weight in named_weights:
        out_ch, in_per_group = int(weight.shape[0]), int(weight.shape[1])
        depthwise = in_per_group == 1 and out_ch > 1 and layers
        groups = out_ch if depthwise else 1
        in_ch = out_ch if depthwise else in_per_group
        layers.append(ConvLayer(name, weight, in_ch, out_ch, groups, conv_depth=len(layers)))
    return ModelLayers(layers, "declaration_order")
