"""Convolution layers of a torch module (eager or TorchScript), their execution order and depth.

Depth comes from a dummy forward pass: every tensor carries a tag, the number of convolutions on
the longest path from the model input to it. An op's output takes the largest tag of its inputs;
a convolution's output takes its input's tag plus one, and that input tag is the convolution's
`conv_depth`. Tags are tracked at the aten level (a `TorchDispatchMode`), so functional code,
shortcuts, concatenations and TorchScript all count the same way as an ONNX graph does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

from ops.layers import ConvLayer, ModelLayers, layers_from_weights

GRAPH_PASS_FAILED = "graph pass failed"
"""How each note of a failed or incomplete graph pass begins; the run's summary counts these models."""

CONV_MODULES = (nn.Conv2d, nn.ConvTranspose2d)
"""Base classes of 2-D convolutions; timm's same-padding and weight-standardised convs subclass them."""


def to_numpy(weight: torch.Tensor):
    """Stored values as a float32 numpy array (exact for float32/16/bfloat16 weights)."""
    return weight.detach().to("cpu", torch.float32).contiguous().numpy()


CONVOLUTION_OPS = (torch.ops.aten.convolution.default, torch.ops.aten._convolution.default)
"""What every 2-D (transposed) convolution reaches at the aten level; traced TorchScript calls the second.
Both take (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups, ...)."""


class _DepthTracker(TorchDispatchMode):
    """Propagates conv-depth tags through every aten op and records each 2-D convolution, once per
    layer (in order of first call, with the largest depth it was called at)."""

    def __init__(self, name_of_weight, current_module):
        super().__init__()
        self.tags = WeakTensorKeyDictionary()
        self.layers: dict[str, ConvLayer] = {}
        self._name_of_weight = name_of_weight
        self._current_module = current_module

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        tags = [self.tags[t] for t in inputs if t in self.tags]
        if not tags:
            return out
        depth = max(tags)
        if func in CONVOLUTION_OPS:
            self._record(args, out, depth)
            depth += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.tags[t] = max(depth, self.tags.get(t, depth))
        return out

    def _record(self, args, out, depth):
        x, weight = args[0], args[1]
        if weight.dim() != 4:
            return  # 1-D/3-D convolutions are not 2-D
        name, stored = self._current_module() or (None, None)
        if name is None:
            name = self._name_of_weight.get(weight.data_ptr(), f"conv{len(self.layers)}")
        if name in self.layers:
            self.layers[name].conv_depth = max(self.layers[name].conv_depth, depth)
            return
        transposed, groups = bool(args[6]), int(args[8])
        self.layers[name] = ConvLayer(name, to_numpy(stored if stored is not None else weight),
                                      int(x.shape[1]), int(out.shape[1]), groups, transposed, depth)


def _module_stack(module: nn.Module):
    """Forward hooks that tell which convolution module is running (eager modules only)."""
    stack: list[tuple[str, torch.Tensor]] = []
    handles = []
    if isinstance(module, torch.jit.ScriptModule):
        return stack, handles

    def enter(name, conv):
        stack.append((name, conv.weight))

    def leave(*_):
        stack.pop()

    for name, sub in module.named_modules():
        if isinstance(sub, CONV_MODULES):
            handles.append(sub.register_forward_pre_hook(lambda m, a, n=name: enter(n, m)))
            handles.append(sub.register_forward_hook(leave))
    return stack, handles


def trace_convolutions(module: nn.Module, input_size: tuple[int, ...], device: str = "cpu") -> ModelLayers:
    """Convolutions in execution order with graph depths, from one forward pass of a dummy input."""
    name_of_weight = {p.data_ptr(): n.removesuffix(".weight") for n, p in module.named_parameters()}
    stack, handles = _module_stack(module)
    tracker = _DepthTracker(name_of_weight, lambda: stack[-1] if stack else None)
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad(), tracker:
            tracker.tags[x] = 0
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    return ModelLayers(list(tracker.layers.values()), "graph")


def declared_convolutions(module: nn.Module) -> ModelLayers:
    """Convolution modules in declaration order, depth = position (no forward pass possible)."""
    layers = []
    for name, sub in module.named_modules():
        if isinstance(sub, CONV_MODULES):
            transposed = isinstance(sub, nn.ConvTranspose2d)
            layers.append(
                ConvLayer(name, to_numpy(sub.weight), sub.in_channels, sub.out_channels,
                          sub.groups, transposed, conv_depth=len(layers))
            )
    return ModelLayers(layers, "declaration_order")


def module_convolutions(module: nn.Module, input_size: tuple[int, ...] | None, device: str = "cpu") -> ModelLayers:
    """Graph depths when the input size is known and the forward pass runs, else declaration order.

    A failed pass is never silent: it is written into `notes` (which go on the models row). When the
    pass fails on an accelerator it is run again on the CPU, since depth does not depend on the device."""
    module.eval().to(device)
    if input_size is None:
        return _fallback(module)
    input_size = tuple(input_size)
    notes = []
    try:
        traced = trace_convolutions(module, input_size, device)
    except Exception as error:  # a model that cannot run a dummy input still has its weights
        if torch.device(device).type == "cpu":
            return _fallback(module, f"{GRAPH_PASS_FAILED}: forward pass on input {input_size} failed "
                                     f"({_reason(error)}); depth from order")
        notes.append(f"{GRAPH_PASS_FAILED} on {device}: forward pass on input {input_size} failed "
                     f"({_reason(error)}); depth from a pass on cpu")
        try:
            traced = trace_convolutions(module.to("cpu"), input_size, "cpu")
        except Exception as cpu_error:
            return _fallback(module, *notes, f"{GRAPH_PASS_FAILED} on cpu: forward pass on input {input_size} failed "
                                             f"({_reason(cpu_error)}); depth from order")
    declared = _fallback(module)
    missing = {layer.name for layer in declared.layers} - {layer.name for layer in traced.layers}
    if missing:
        declared.notes.extend([*notes, f"{GRAPH_PASS_FAILED}: {len(missing)} convolution(s) did not run in the "
                                       f"forward pass ({', '.join(sorted(missing)[:3])}); depth from order"])
        return declared
    traced.notes.extend(notes)
    return traced


def graph_pass_failure(notes: str | None) -> str | None:
    """A models row's `notes` when they record a failed or incomplete graph pass, else None."""
    return notes if notes and GRAPH_PASS_FAILED in notes else None


def _reason(error: Exception) -> str:
    """One line of an exception: TorchScript errors carry their TorchScript traceback in the text,
    with the error itself on the last line."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1]
    return lines[0] if lines else type(error).__name__


def _fallback(module: nn.Module, *notes: str) -> ModelLayers:
    """Layers in declaration order (state-dict order for TorchScript), with `notes` saying why."""
    if isinstance(module, torch.jit.ScriptModule):
        named = [(n.removesuffix(".weight"), to_numpy(p)) for n, p in module.state_dict().items()
                 if n.endswith("weight") and p.dim() == 4]
        layers = layers_from_weights(named)
    else:
        layers = declared_convolutions(module)
    layers.notes.extend(notes)
    return layers
