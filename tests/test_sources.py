"""Sources: every format yields the model's convolutions, in execution order, with exact weights."""

import numpy as np
import onnx
import pytest
import timm
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ops.catalog import CatalogEntry
from ops.sources import load_layers
from ops.sources.onnx_file import onnx_convolutions

INPUT_SIZE = (1, 32, 32)


def entry(source, uri, **kwargs):
    return CatalogEntry(model_id="m", source=source, uri=str(uri), **kwargs)


def independent_3x3_count(module: nn.Module) -> int:
    """Kernel count from module attributes (not weight shapes): out * in / groups per 3x3 layer."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d)) and tuple(sub.kernel_size) == (3, 3):
            count += sub.out_channels * sub.in_channels // sub.groups
    return count


@pytest.mark.parametrize(
    "arch", ["resnet18", "mobilenetv3_small_100", "regnetx_002", "nf_resnet26", "tf_efficientnet_b0", "densenet121"]
)
def test_timm_kernel_count_matches_module_tree(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    layers = load_layers(entry("timm", arch, pretrained=False))
    n_3x3 = sum(layer.n_filters for layer in layers.layers if layer.kernel_size == (3, 3))
    assert n_3x3 == independent_3x3_count(model)
    assert layers.depth_method == "graph"
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(layers.layers) == len(convs)


def test_timm_random_init_is_seeded_and_exact():
    layers = load_layers(entry("timm", "resnet18", pretrained=False, seed=3))
    torch.manual_seed(3)
    model = timm.create_model("resnet18", pretrained=False)
    first = dict(model.named_modules())[layers.layers[0].name]
    assert np.array_equal(layers.layers[0].weight.view(np.uint32), first.weight.detach().numpy().view(np.uint32))


def test_timm_conv2d_subclasses_are_convolutions():
    layers = load_layers(entry("timm", "nf_resnet26", pretrained=False))
    torch.manual_seed(0)  # the source's default seed
    model = timm.create_model("nf_resnet26", pretrained=False)
    subclassed = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d]
    assert subclassed, "nf_resnet26 uses weight-standardised Conv2d subclasses"
    assert set(subclassed) <= {layer.name for layer in layers.layers}
    # stored values are the parameter, not the standardised weight the forward pass computes
    by_name = {layer.name: layer for layer in layers.layers}
    module = dict(model.named_modules())[subclassed[0]]
    assert np.array_equal(by_name[subclassed[0]].weight, module.weight.detach().numpy())


class Branchy(nn.Module):
    """A residual block with a 1x1 shortcut, a depthwise, a grouped and a transposed convolution."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.shortcut = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(8, 4, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.b(torch.relu(self.a(x))) + self.shortcut(x)
        return self.up(self.grouped(x))


BRANCHY_DEPTHS = {"stem": 0, "a": 1, "b": 2, "shortcut": 1, "grouped": 3, "up": 4}
BRANCHY_KINDS = {"stem": "conv", "a": "conv", "b": "depthwise", "shortcut": "conv", "grouped": "grouped", "up": "transposed"}


def test_graph_depth_counts_convolutions_on_the_longest_path(tmp_path):
    model = Branchy()
    torch.save(model.state_dict(), tmp_path / "b.pt")
    torch.jit.trace(model, torch.randn(1, *INPUT_SIZE)).save(tmp_path / "b_ts.pt")
    torch.onnx.export(model, (torch.randn(1, *INPUT_SIZE),), tmp_path / "b.onnx", dynamo=False)
    for source, uri in (("torchscript", "b_ts.pt"), ("onnx", "b.onnx")):
        layers = load_layers(entry(source, tmp_path / uri, input_size=INPUT_SIZE))
        assert layers.depth_method == "graph"
        assert {l.name: l.conv_depth for l in layers.layers} == BRANCHY_DEPTHS, source
        assert {l.name: l.kind for l in layers.layers} == BRANCHY_KINDS, source
        n = {l.name: l.n_filters for l in layers.layers}
        assert n == {"stem": 8, "a": 64, "b": 8, "shortcut": 64, "grouped": 16, "up": 8}, source


def test_state_dict_without_arch_uses_key_order(tmp_path):
    torch.save(Branchy().state_dict(), tmp_path / "b.pt")
    layers = load_layers(entry("checkpoint", tmp_path / "b.pt"))
    assert layers.depth_method == "declaration_order"
    assert [l.name for l in layers.layers] == list(BRANCHY_DEPTHS)
    assert [l.conv_depth for l in layers.layers] == list(range(6))
    assert [l.kind for l in layers.layers][:3] == ["conv", "conv", "depthwise"]


@pytest.fixture(scope="module")
def trained_timm(tmp_path_factory):
    """timm's tiny test_resnet trained for a few steps on sklearn digits, saved in every format."""
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("trained")
    digits = load_digits()
    x = torch.tensor(digits.images[:512], dtype=torch.float32).unsqueeze(1) / 16
    x = nn.functional.interpolate(x, size=32)
    y = torch.tensor(digits.target[:512])
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(5):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    state = model.state_dict()
    torch.save({"state_dict": state, "epoch": 5}, folder / "m.pth")
    save_file(state, folder / "m.safetensors")
    torch.jit.trace(model, torch.randn(1, *INPUT_SIZE)).save(folder / "m_ts.pt")
    # without constant folding the exporter keeps BatchNorm apart instead of folding it into the weights
    torch.onnx.export(model, (torch.randn(1, *INPUT_SIZE),), folder / "m.onnx", dynamo=False, do_constant_folding=False)
    torch.onnx.export(model, (torch.randn(1, *INPUT_SIZE),), folder / "m_folded.onnx", dynamo=False)
    return folder, model


def test_same_trained_model_gives_identical_layers_in_every_format(trained_timm):
    folder, model = trained_timm
    variants = {
        "checkpoint": entry("checkpoint", folder / "m.pth", arch="test_resnet", input_size=INPUT_SIZE),
        "safetensors": entry("safetensors", folder / "m.safetensors", arch="test_resnet", input_size=INPUT_SIZE),
        "torchscript": entry("torchscript", folder / "m_ts.pt", input_size=INPUT_SIZE),
        "onnx": entry("onnx", folder / "m.onnx"),
    }
    results = {name: load_layers(e) for name, e in variants.items()}
    reference = results["checkpoint"]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(reference.layers) == len(convs)
    for name, result in results.items():
        assert result.depth_method == "graph", name
        assert [l.conv_depth for l in result.layers] == [l.conv_depth for l in reference.layers], name
        assert [l.kind for l in result.layers] == [l.kind for l in reference.layers], name
        for ours, ref in zip(result.layers, reference.layers):
            assert ours.weight.shape == ref.weight.shape, name
            assert np.array_equal(ours.weight.view(np.uint32), ref.weight.view(np.uint32)), (name, ours.name)
    # and the values are the trained module's own, bit for bit
    state = model.state_dict()
    for layer in reference.layers:
        assert np.array_equal(layer.weight, state[layer.name + ".weight"].numpy())


def test_bn_folded_onnx_export_stores_the_fused_weights_it_holds(trained_timm):
    """The exporter folds each BatchNorm into the convolution before it: W * gamma / sqrt(var + eps)
    per output channel, computed here from the trained module's own parameters."""
    folder, model = trained_timm
    folded = load_layers(entry("onnx", folder / "m_folded.onnx"))
    reference = load_layers(entry("checkpoint", folder / "m.pth", arch="test_resnet", input_size=INPUT_SIZE))
    modules = list(model.named_modules())
    following_bn = {name: next(m for _, m in modules[i + 1:] if isinstance(m, nn.BatchNorm2d))
                    for i, (name, module) in enumerate(modules) if isinstance(module, nn.Conv2d)}
    assert len(folded.layers) == len(reference.layers) == len(following_bn)
    assert [l.conv_depth for l in folded.layers] == [l.conv_depth for l in reference.layers]
    for ours, ref in zip(folded.layers, reference.layers):
        bn = following_bn[ref.name]
        gain = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
        expected = ref.weight.astype(np.float64) * gain.reshape(-1, 1, 1, 1)
        assert not np.allclose(gain, 1.0), ref.name  # trained BatchNorm: folding changes the values
        np.testing.assert_allclose(ours.weight, expected, rtol=2e-6, atol=1e-7 * np.abs(expected).max(), err_msg=ref.name)


def test_timm_weights_from_local_file(tmp_path):
    torch.manual_seed(7)
    model = timm.create_model("test_resnet", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    layers = load_layers(entry("timm", "test_resnet", weights_file=str(tmp_path / "w.pth")))
    state = model.state_dict()
    assert all(np.array_equal(l.weight, state[l.name + ".weight"].numpy()) for l in layers.layers)


def test_pickled_checkpoint_refused_unless_trusted(tmp_path):
    torch.save({"model": Branchy()}, tmp_path / "full.pt")  # a whole module: needs full unpickling
    with pytest.raises(ValueError, match="--trust-pickles"):
        load_layers(entry("checkpoint", tmp_path / "full.pt"))
    layers = load_layers(entry("checkpoint", tmp_path / "full.pt"), trust_pickles=True)
    assert len(layers.layers) == 6


# --- ONNX graphs the way different exporters write them ----------------------------------------


def conv_graph(weight_nodes, weight_name, initializers, weight_shape=(4, 2, 3, 3), extra_inputs=()):
    """x -> Conv(weight) -> y, with the weight produced by `weight_nodes` from `initializers`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight_shape[1], 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight_shape[0], 8, 8])
    conv = helper.make_node("Conv", ["x", weight_name], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([*weight_nodes, conv], "g", [x, *extra_inputs], [y], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


WEIGHT = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)


def single_weight(model):
    layers = onnx_convolutions(model).layers
    assert len(layers) == 1
    return layers[0].weight


def test_onnx_weight_in_constant_node():
    const = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(WEIGHT, "w"))
    assert np.array_equal(single_weight(conv_graph([const], "w", [])), WEIGHT)


def test_onnx_weight_behind_identity_and_cast():
    init = numpy_helper.from_array(WEIGHT.astype(np.float16), "w16")
    nodes = [helper.make_node("Identity", ["w16"], ["wi"]), helper.make_node("Cast", ["wi"], ["w"], to=TensorProto.FLOAT)]
    assert np.array_equal(single_weight(conv_graph(nodes, "w", [init])), WEIGHT.astype(np.float16).astype(np.float32))


def test_onnx_weight_dequantized():
    scale, q = np.float32(0.05), np.round(WEIGHT / 0.05).astype(np.int8)
    inits = [numpy_helper.from_array(q, "wq"), numpy_helper.from_array(np.array(scale), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"])]
    assert np.allclose(single_weight(conv_graph(nodes, "w", inits)), q.astype(np.float32) * scale)


def test_onnx_weight_reshaped_and_transposed_like_tf_converters():
    hwio = WEIGHT.transpose(2, 3, 1, 0).reshape(-1)  # stored flat, height-width-in-out
    inits = [numpy_helper.from_array(hwio, "flat"), numpy_helper.from_array(np.array([3, 3, 2, 4], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["flat", "shape"], ["hwio"]),
             helper.make_node("Transpose", ["hwio"], ["w"], perm=[3, 2, 0, 1])]
    assert np.array_equal(single_weight(conv_graph(nodes, "w", inits)), WEIGHT)


def test_onnx_external_data_next_to_model(tmp_path):
    model = conv_graph([], "w", [numpy_helper.from_array(np.repeat(WEIGHT, 64, axis=0), "w")], (256, 2, 3, 3))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    layers = load_layers(entry("onnx", tmp_path / "ext.onnx"))
    assert np.array_equal(layers.layers[0].weight, np.repeat(WEIGHT, 64, axis=0))


def test_onnx_weight_from_graph_input_is_refused_clearly():
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2, 3, 3])
    model = conv_graph([], "w", [], extra_inputs=[w_in])
    with pytest.raises(ValueError, match="computed from the model input"):
        onnx_convolutions(model)


def test_onnx_depth_from_branching_graph():
    inits = [numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32) * i, f"w{i}") for i in range(4)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w1"], ["b"], pads=[1] * 4),
        helper.make_node("Conv", ["ar", "w2"], ["c"], pads=[1] * 4),
        helper.make_node("Conv", ["c", "w3"], ["d"], pads=[1] * 4),
        helper.make_node("Add", ["b", "d"], ["y"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=inits))
    layers = onnx_convolutions(model).layers
    assert [l.name for l in layers] == ["w0", "w1", "w2", "w3"]
    assert [l.conv_depth for l in layers] == [0, 1, 1, 2]


def test_safetensors_without_arch_restores_numbered_order(tmp_path):
    from safetensors.torch import save_file

    model = nn.Sequential(*[nn.Conv2d(2, 2, 3) for _ in range(12)])
    save_file(model.state_dict(), tmp_path / "seq.safetensors")
    layers = load_layers(entry("safetensors", tmp_path / "seq.safetensors"))
    assert [l.name for l in layers.layers] == [str(i) for i in range(12)]
    assert all(np.array_equal(l.weight, model[i].weight.detach().numpy()) for i, l in enumerate(layers.layers))


class NeedsTwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x, y):
        return self.conv(x) + y


def test_failed_forward_pass_falls_back_to_order_and_says_why():
    from ops.torch_graph import module_convolutions

    layers = module_convolutions(NeedsTwoInputs(), (1, 8, 8))
    assert layers.depth_method == "declaration_order"
    assert "forward pass on input (1, 8, 8) failed" in layers.notes[0]


# --- quantized ONNX models, as ONNX Runtime's quantization tools write them ----------------------


class SmallNet(nn.Module):
    """An ordinary, a depthwise and a 1x1 convolution: per-channel scales differ between channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


QUANTIZED = [(kind, per_channel) for kind in ("dynamic", "static_qoperator", "static_qdq") for per_channel in (False, True)]


@pytest.fixture(scope="module")
def quantized_models(tmp_path_factory):
    """SmallNet exported as float ONNX, then quantized: {(kind, per_channel): path}, and its float weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    class Calibration(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.standard_normal((1, 2, 8, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    folder = tmp_path_factory.mktemp("quantized")
    torch.manual_seed(0)
    model = SmallNet().eval()
    torch.onnx.export(model, (torch.randn(1, 2, 8, 8),), folder / "float.onnx", dynamo=False, input_names=["x"])
    paths = {}
    for kind, per_channel in QUANTIZED:
        path = paths[kind, per_channel] = folder / f"{kind}_{per_channel}.onnx"
        if kind == "dynamic":
            quantize_dynamic(folder / "float.onnx", path, per_channel=per_channel, weight_type=QuantType.QUInt8)
        else:
            quant_format = QuantFormat.QOperator if kind == "static_qoperator" else QuantFormat.QDQ
            quantize_static(folder / "float.onnx", path, Calibration(), quant_format=quant_format, per_channel=per_channel)
    return paths, {name: m.weight.detach().numpy() for name, m in model.named_children()}


def initializer(model, name):
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


@pytest.mark.parametrize("kind, per_channel", QUANTIZED)
def test_quantized_onnx_gives_the_dequantized_kernels(quantized_models, kind, per_channel):
    paths, float_weights = quantized_models
    ops_seen = {node.op_type for node in onnx.load(paths[kind, per_channel]).graph.node}
    assert {"dynamic": "ConvInteger", "static_qoperator": "QLinearConv", "static_qdq": "DequantizeLinear"}[kind] in ops_seen
    file = onnx.load(paths[kind, per_channel])
    layers = load_layers(entry("onnx", paths[kind, per_channel])).layers
    assert [l.name for l in layers] == ["a", "b", "c"]
    assert [l.kind for l in layers] == ["conv", "depthwise", "conv"]
    assert [l.conv_depth for l in layers] == [0, 1, 2]
    for layer in layers:
        # the file's own quantized weight, zero point and scale (per tensor or per output channel)
        q = initializer(file, f"{layer.name}.weight_quantized").astype(np.float64)
        zero_point = initializer(file, f"{layer.name}.weight_zero_point").astype(np.float64).reshape(-1, 1, 1, 1)
        scale = initializer(file, f"{layer.name}.weight_scale").astype(np.float64).reshape(-1, 1, 1, 1)
        if per_channel and kind != "dynamic":  # ONNX Runtime's dynamic ConvInteger keeps one scale per tensor
            assert scale.size == layer.weight.shape[0]
        np.testing.assert_allclose(layer.weight, (q - zero_point) * scale, rtol=1e-6, atol=0)
        # and the float model's kernels, to within half a quantization step
        assert np.all(np.abs(layer.weight - float_weights[layer.name]) <= scale / 2 * (1 + 1e-4)), layer.name


def test_conv_integer_without_a_scale_in_the_graph_keeps_q_minus_zero_point_and_says_so():
    q = np.random.default_rng(1).integers(0, 256, (4, 2, 3, 3)).astype(np.uint8)
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4, 6, 6])
    inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(np.array(128, np.uint8), "w_zp"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zp")]
    node = helper.make_node("ConvInteger", ["x", "w_q", "x_zp", "w_zp"], ["y"], name="conv")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    result = onnx_convolutions(model)
    assert np.array_equal(result.layers[0].weight, q.astype(np.float32) - 128)
    assert "ConvInteger without a weight scale" in result.notes[0]
