"""ONNX files: Conv/ConvTranspose nodes, weights wherever exporters put them, depth from the graph.

Exporters differ: PyTorch keeps weights as initializers, others emit `Constant` nodes, cast or
dequantize them (`Cast`, `DequantizeLinear`), or reshape/transpose them first. A weight is any
value computable from constants alone: such chains are evaluated node by node with onnx's
reference evaluator, so every op onnx knows is understood, not only the common ones.
"""

from __future__ import annotations

import numpy as np

from ops.layers import ConvLayer, ModelLayers
from ops.sources import register

CONV_OPS = ("Conv", "ConvTranspose")


class _Graph:
    def __init__(self, graph):
        from onnx import numpy_helper

        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.raw_name = {name: name for name in self.constants}
        self.producer = {out: node for node in graph.node for out in node.output}

    def constant(self, name: str):
        """The value of `name` if it depends on constants only, else None."""
        if name in self.constants or name == "":
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
    layers = []
    for index, node in enumerate(model.graph.node):
        in_tags = [tags[i] for i in node.input if i in tags]
        if not in_tags:
            continue
        depth = max(in_tags)
        if node.op_type in CONV_OPS and node.domain in ("", "ai.onnx"):
            layer = _conv_layer(node, index, graph, depth)
            if layer is not None:
                layers.append(layer)
            depth += 1
        for out in node.output:
            tags[out] = depth
    return ModelLayers(layers, "graph")


def _conv_layer(node, index: int, graph: _Graph, depth: int) -> ConvLayer | None:
    weight = graph.constant(node.input[1])
    label = node.name or f"{node.op_type}_{index}"
    if weight is None:
        raise ValueError(f"node {label}: the weight of this {node.op_type} is computed from the model "
                         f"input, not from constants; such graphs are not supported")
    if weight.ndim != 4:
        return None  # Conv1d/Conv3d
    if weight.dtype.kind != "f":
        raise ValueError(f"node {label}: weight of dtype {weight.dtype} is not a float tensor")
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    transposed = node.op_type == "ConvTranspose"
    first, second = int(weight.shape[0]), int(weight.shape[1]) * groups
    in_ch, out_ch = (first, second) if transposed else (second, first)
    name = graph.raw_name.get(node.input[1], label).removesuffix(".weight")
    return ConvLayer(name, weight.astype(np.float32, copy=False), in_ch, out_ch, groups, transposed, depth)


@register("onnx")
def load(entry, trust_pickles: bool = False, device: str = "cpu") -> ModelLayers:
    return onnx_convolutions(read_onnx(entry.uri))
