"""ONNX files: Conv/ConvTranspose nodes, weights wherever exporters put them, depth from the graph.

Exporters differ: PyTorch keeps weights as initializers, others emit `Constant` nodes, cast or
dequantize them (`Cast`, `DequantizeLinear`), or reshape/transpose them first. A weight is any
value computable from constants alone: such chains are evaluated node by node with onnx's
reference evaluator, so every op onnx knows is understood, not only the common ones.

Quantized convolutions are read as their dequantized kernels, `(q - zero_point) * scale` with a
scale and zero point per tensor or per output channel:
- QDQ graphs (`DequantizeLinear` feeding `Conv`): the weight chain above;
- `QLinearConv`: the weight, its scale and zero point are inputs of the node;
- `ConvInteger` (ONNX Runtime's dynamic quantization) applies the scale after the convolution,
  as `Mul(Cast(ConvInteger(...)), Mul(input_scale, weight_scale))`: the constant factor of that
  product is the weight scale. Where no such factor is found the kernels are `q - zero_point` and
  the model's notes say so; every analysis is invariant to a per-layer scale.
"""

from __future__ import annotations

import numpy as np

from ops.layers import ConvLayer, ModelLayers
from ops.sources import register

CONV_OPS = ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger")
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "QLinearConv": 3, "ConvInteger": 1}
"""Position of the weight among each convolution op's inputs."""
WEIGHT_NAME_SUFFIXES = ("_DequantizeLinear_Output", "_quantized", ".weight")


class _Graph:
    def __init__(self, graph):
        from onnx import numpy_helper

        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.raw_name = {name: name for name in self.constants}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        # values that depend on the model's inputs (nodes are stored in topological order)
        self.dynamic = {i.name for i in graph.input} - set(self.constants)
        for node in graph.node:
            if any(name in self.dynamic for name in node.input):
                self.dynamic.update(node.output)

    def constant(self, name: str):
        """The value of `name` if it depends on constants only, else None."""
        if name in self.constants or name == "" or name in self.dynamic:
            return self.constants.get(name)
        node = self.producer.get(name)
        if node is None:
            return None
        inputs = [self.constant(i) for i in node.input]
        if any(v is None for i, v in zip(node.input, inputs) if i):
            return None
        from onnx.reference import ReferenceEvaluator

        feeds = {i: v for i, v in zip(node.input, inputs) if i}
        outputs = ReferenceEvaluator(node).run(None, feeds)
        for out, value in zip(node.output, outputs):
            self.constants[out] = np.asarray(value)
            self.raw_name[out] = next((self.raw_name[i] for i in node.input if i in self.raw_name), node.name)
        return self.constants[name]


MODEL_PROTO_TAGS = (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A)
"""Wire tags of the ModelProto fields that follow `ir_version` (fields 2-8, 14, 15)."""


def recognises(path: str, head: bytes) -> bool:
    """A serialised ModelProto: writers put `ir_version` (field 1, a small varint) first."""
    return len(head) >= 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in MODEL_PROTO_TAGS


def read_onnx(path: str):
    import onnx
    from onnx import inliner

    try:
        model = onnx.load(path)
    except Exception as error:  # protobuf raises its own DecodeError, external data an OSError
        raise ValueError(f"{path}: not a readable ONNX model ({error})") from None
    return inliner.inline_local_functions(model)


def onnx_convolutions(model) -> ModelLayers:
    graph = _Graph(model.graph)
    initializer_names = set(graph.constants)
    tags = {i.name: 0 for i in model.graph.input if i.name not in initializer_names}
    layers, notes = [], []
    for index, node in enumerate(model.graph.node):
        in_tags = [tags[i] for i in node.input if i in tags]
        if not in_tags:
            continue
        depth = max(in_tags)
        if node.op_type in CONV_OPS and node.domain in ("", "ai.onnx"):
            layer = _conv_layer(node, index, graph, depth, notes)
            if layer is not None:
                layers.append(layer)
            depth += 1
        for out in node.output:
            tags[out] = depth
    return ModelLayers(layers, "graph", notes)


def _conv_layer(node, index: int, graph: _Graph, depth: int, notes: list[str]) -> ConvLayer | None:
    weight_input = node.input[WEIGHT_INPUT[node.op_type]]
    weight = graph.constant(weight_input)
    label = node.name or f"{node.op_type}_{index}"
    if weight is None:
        raise ValueError(f"node {label}: the weight of this {node.op_type} is computed from the model "
                         f"input, not from constants; such graphs are not supported")
    if weight.ndim != 4:
        return None  # Conv1d/Conv3d
    if node.op_type == "QLinearConv":
        weight = dequantized(weight, graph.constant(node.input[5]), graph.constant(node.input[4]))
    elif node.op_type == "ConvInteger":
        zero_point = graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        scale = _scale_applied_after(node, graph, out_channels=weight.shape[0])
        if scale is None:
            notes.append(f"{label}: ConvInteger without a weight scale found in the graph; its kernels are "
                         f"stored as q - zero_point (unscaled)")
        weight = dequantized(weight, zero_point, scale)
    if weight.dtype.kind != "f":
        raise ValueError(f"node {label}: weight of dtype {weight.dtype} is not a float tensor")
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    transposed = node.op_type == "ConvTranspose"
    first, second = int(weight.shape[0]), int(weight.shape[1]) * groups
    in_ch, out_ch = (first, second) if transposed else (second, first)
    name = graph.raw_name.get(weight_input, label)
    for suffix in WEIGHT_NAME_SUFFIXES:
        name = name.removesuffix(suffix)
    return ConvLayer(name, weight.astype(np.float32, copy=False), in_ch, out_ch, groups, transposed, depth)


def dequantized(q: np.ndarray, zero_point, scale) -> np.ndarray:
    """`(q - zero_point) * scale` in float32, the zero point and scale per tensor or per output channel
    (dim 0), as DequantizeLinear computes it; a missing zero point is 0, a missing scale 1."""
    def per_channel(value, dtype):
        value = np.asarray(0 if value is None else value, dtype)
        return value.reshape(-1, 1, 1, 1) if value.size > 1 else value.reshape(())

    shifted = q.astype(np.float32) - per_channel(zero_point, np.float32)
    return shifted if scale is None else shifted * per_channel(scale, np.float32)


def _scale_applied_after(node, graph: _Graph, out_channels: int):
    """The weight scale of a ConvInteger: the constant factor of `Mul(input_scale, weight_scale)` by
    which the `Mul` after its output (through `Cast`s) rescales it; None where there is no such factor.
    (A single constant factor merges the input's and the weight's scales and is not taken.)"""
    output = node.output[0]
    consumers = graph.consumers.get(output, [])
    while len(consumers) == 1 and consumers[0].op_type == "Cast":
        output = consumers[0].output[0]
        consumers = graph.consumers.get(output, [])
    if len(consumers) != 1 or consumers[0].op_type != "Mul":
        return None
    factor = next(name for name in consumers[0].input if name != output)
    producer = graph.producer.get(factor)
    if factor not in graph.dynamic or producer is None or producer.op_type != "Mul":
        return None
    scales = [graph.constant(name) for name in producer.input if name not in graph.dynamic]
    if len(scales) != 1 or scales[0] is None or scales[0].size not in (1, out_channels):
        return None
    return scales[0]


@register("onnx", description="an ONNX model", recognises=recognises)
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    return onnx_convolutions(read_onnx(entry.uri))
