"""relgraph.from_torch: hand-written torch.nn models imported with torch.fx.

The imports are compared with the shipped YAML architectures node by node (op, fields,
inputs in slot order, shapes), with the module's own forward pass, and by relevance against
the YAML graph loaded with the module's state dict. Every construct relgraph cannot represent
must be refused with an error naming the fx node, its target and the source line.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.fx
import torch.nn.functional as F
import zoo_reference
from reference_models import C3D, ResNetTiny, c3d_tiny_reference, relative_error
from torch import nn

import relgraph
from relgraph import TorchImportError, from_torch
from relgraph.errors import RelgraphWarning

#: the reference C3D calls one shared ReLU and one shared dropout module (as the public code
#: does), so the import names their calls by the module path with fx's call count; the YAML
#: numbers them by layer. Every other name is the same.
C3D_RENAMES = {
    "relu": "relu1",
    "relu_1": "relu2",
    "relu_2": "relu3a",
    "relu_3": "relu3b",
    "relu_4": "relu4a",
    "relu_5": "relu4b",
    "relu_6": "relu5a",
    "relu_7": "relu5b",
    "relu_8": "relu6",
    "dropout": "drop6",
    "relu_9": "relu7",
    "dropout_1": "drop7",
}
#: ResNetTiny calls torch.relu, + and torch.cat in its forward: the import names them after
#: the op; the YAML after their place
RESNET_TINY_RENAMES = {
    "relu": "stem_relu",
    "relu_1": "res_relu1",
    "add": "res_add",
    "relu_2": "res_relu2",
    "concat": "join",
    "relu_3": "join_relu",
}


def assert_same_graph(imported, shipped, renames=None, bypass=()):
    """Same nodes (after ``renames``), same op and fields, inputs and shapes; the identity
    nodes in ``bypass`` (an ``nn.Identity`` the YAML leaves out) stand for their input."""
    renames = renames or {}
    name = {}
    for n in imported.order:
        if n in bypass:
            assert imported.op(n).type == "identity", n
            (source,) = imported.inputs_of(n)
            name[n] = name[source]
        else:
            name[n] = renames.get(n, n)
    kept = [n for n in imported.order if n not in bypass]
    assert sorted(name[n] for n in kept) == sorted(shipped.order)
    for node in kept:
        other = name[node]
        assert imported.op(node) == shipped.op(other), node
        assert [name[p] for p in imported.inputs_of(node)] == shipped.inputs_of(other), node
        assert imported.graph.nodes[node]["shape"] == shipped.graph.nodes[other]["shape"], node
        assert (
            imported.graph.nodes[node]["tensor_shapes"]
            == shipped.graph.nodes[other]["tensor_shapes"]
        )
    assert name[imported.output] == shipped.output


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine parameters (not the init's 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return module


def clip_for(shape, batch=2, seed=1, dtype=torch.float32):
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(seed)).to(dtype)


# --------------------------------------------------------------------------- shipped models


def test_c3d_tiny_imports_as_the_shipped_yaml():
    torch.manual_seed(0)
    model = c3d_tiny_reference().eval()
    imported = from_torch(model, (3, 16, 32, 32))
    shipped = relgraph.load_architecture("c3d-tiny", num_classes=4)
    assert_same_graph(imported, shipped, C3D_RENAMES)
    shipped.load_weights(model.state_dict())

    clip = clip_for((3, 16, 32, 32))
    with torch.no_grad():
        expected = model(clip)
    assert relative_error(imported.forward(clip).output, expected) < 1e-5
    assert relative_error(shipped.forward(clip).output, expected) < 1e-5

    imported.to(dtype=torch.float64)
    shipped.to(dtype=torch.float64)
    clip64 = clip.double()
    mine = relgraph.explain(imported, clip64, target=1, rules="epsilon-plus")
    theirs = relgraph.explain(shipped, clip64, target=1, rules="epsilon-plus")
    assert theirs.abs().sum() > 0
    assert relative_error(mine, theirs) < 1e-10


@pytest.mark.slow  # traces a batch of two full-size clips through 78 M parameters
def test_full_size_c3d_imports_as_the_shipped_yaml():
    torch.manual_seed(0)
    imported = from_torch(C3D().eval(), (3, 16, 112, 112), check=False)
    shipped = relgraph.load_architecture("c3d", init="none")
    assert_same_graph(imported, shipped, C3D_RENAMES)
    assert imported.num_parameters() == 78_409_573


def test_resnet_tiny_imports_as_the_shipped_yaml():
    torch.manual_seed(0)
    model = randomise_bn(ResNetTiny()).eval()
    shape = relgraph.load_architecture("resnet-tiny", init="none").input_shape
    imported = from_torch(model, shape)
    shipped = relgraph.load_architecture("resnet-tiny")
    assert_same_graph(imported, shipped, RESNET_TINY_RENAMES)
    shipped.load_weights(model.state_dict())
    imported.to(dtype=torch.float64)
    shipped.to(dtype=torch.float64)
    clip = clip_for(shape, dtype=torch.float64)
    with torch.no_grad():
        expected = model.double()(clip)
    assert relative_error(imported.forward(clip).output, expected) < 1e-10
    for rules in ("epsilon-plus", "epsilon-alpha2-beta1"):
        mine = relgraph.explain(imported, clip, target=0, rules=rules)
        theirs = relgraph.explain(shipped, clip, target=0, rules=rules)
        assert theirs.abs().sum() > 0
        assert relative_error(mine, theirs) < 1e-10


# --------------------------------------------------------------------------- small nets


class Functional(nn.Module):
    """Function and method forms: F.relu, x.view(x.size(0), -1), torch.add, torch.flatten,
    x.mean, sigmoid / silu, a gate product, a nested Sequential, an inplace ReLU, Identity."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.Sequential(nn.Conv2d(6, 6, 3, padding="same", bias=False), nn.Identity()),
        )
        self.gate = nn.Conv2d(6, 6, 1)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(6 * 4 * 4, 5)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        b = F.relu(a)
        g = torch.sigmoid(self.gate(b.mean(dim=(2, 3), keepdim=True)))
        b = b * g
        b = torch.add(b, F.silu(a))
        b = self.pool(b)
        b = self.drop(b.view(b.size(0), -1))
        return self.head(b).relu()


def test_function_and_method_forms():
    model = randomise_bn(Functional()).eval()
    g = from_torch(model, (3, 8, 8))
    kinds = {n: g.op(n).type for n in g.order}
    assert kinds["features.0"] == "conv2d"
    assert g.op("features.3.0").padding == (1, 1)
    assert kinds["features.3.1"] == "identity"
    assert kinds["mean"] == "mean" and g.op("mean").dims == (2, 3)
    assert [kinds[n] for n in ("relu", "sigmoid", "mul", "silu", "add")] == [
        "relu", "sigmoid", "mul", "silu", "add"
    ]  # fmt: skip
    assert g.inputs_of("mul") == ["relu", "sigmoid"]
    assert kinds["flatten"] == "flatten" and g.inputs_of("flatten") == ["pool"]
    assert kinds["relu_1"] == "relu" and g.output == "relu_1"
    clip = clip_for((3, 8, 8), batch=3, dtype=torch.float64)
    with torch.no_grad():
        expected = model.double()(clip)
    g.to(dtype=torch.float64)
    assert relative_error(g.forward(clip).output, expected) < 1e-12


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, stride=2, dilation=1)
        self.max = nn.MaxPool1d(3, stride=1, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool1d(2, count_include_pad=False)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 2, 3, bias=False)

    def forward(self, x):
        x = F.adaptive_avg_pool1d(self.avg(self.max(self.conv(x))), 2)
        return self.fc(self.flat(x))


def test_pools_1d_flatten_module_and_yaml_round_trip():
    model = Pools().eval()
    g = from_torch(model, (2, 17))
    assert [g.op(n).type for n in g.order] == [
        "input", "conv1d", "maxpool1d", "avgpool1d", "adaptive_avgpool1d", "flatten", "linear"
    ]  # fmt: skip
    assert g.op("max").ceil_mode is True and g.op("avg").count_include_pad is False
    assert "fc.bias" not in g.state_dict()
    back = relgraph.architecture_from_yaml(g.to_yaml(), init="none")
    assert back.order == g.order and back.to_yaml() == g.to_yaml()
    back.load_weights(g.state_dict())
    clip = clip_for((2, 17))
    assert torch.equal(back.forward(clip).output, g.forward(clip).output)


def test_weights_are_the_modules_and_its_mode_is_kept():
    model = randomise_bn(ResNetTiny()).train()
    g = from_torch(model, (3, 4, 8, 8))
    assert model.training  # put back as it was
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    mine = g.state_dict()
    assert sorted(mine) == sorted(state)
    for key, value in state.items():
        assert torch.equal(mine[key], value), key
    assert g.name == "ResNetTiny"


def test_a_model_in_float64_gives_a_float64_graph():
    model = Pools().double().eval()
    g = from_torch(model, (2, 17), name="pools")
    assert g.dtype == torch.float64 and g.name == "pools"


# --------------------------------------------------------------------------- refusals


def _line_of(obj, text: str) -> int:
    lines, start = inspect.getsourcelines(obj)
    return start + next(i for i, line in enumerate(lines) if text in line)


def custom_scale(x):
    return x * 2.0


torch.fx.wrap("custom_scale")


class CustomFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return custom_scale(self.conv(x)).flatten(1)  # marker: custom


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:  # marker: control flow
            x = -x
        return x.flatten(1)


class UnsupportedModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.conv(x)).flatten(1)  # marker: module


class Reflect(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.conv(x).flatten(1)  # marker: reflect


class UnsupportedFunction(nn.Module):
    def forward(self, x):
        return torch.tanh(x).flatten(1)  # marker: tanh


class AddConstant(nn.Module):
    def forward(self, x):
        return (x + 1).flatten(1)  # marker: constant


class SharedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x)).flatten(1)  # marker: shared


class LinearOverLastDim(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(x).flatten(1)  # marker: linear


class MixesBatch(nn.Module):
    def forward(self, x):
        return x.reshape(-1)  # marker: batch


class UsesShape(nn.Module):
    def forward(self, x):
        return (x * x.shape[1]).flatten(1)  # marker: shape


class PermuteMovesValues(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)  # marker: permute


class SoftmaxInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(108, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        probabilities = torch.softmax(self.fc(x.flatten(1)), dim=1)
        return self.out(probabilities)  # marker: softmax inside


class SoftmaxOverSpace(nn.Module):
    def forward(self, x):
        return F.softmax(x, dim=2).flatten(1)  # marker: softmax dim


class ChannelsLastConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.conv(self.pool(x).permute(0, 2, 3, 1)).flatten(1)  # marker: last conv


class ChannelsLastOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.pool(x).permute(0, 2, 3, 1))  # marker: last output


@pytest.mark.parametrize("model", [LinearOverLastDim, UsesShape, PermuteMovesValues])
def test_token_layouts_import(model):
    """A linear over the last dimension, a scale by a size and a permute that moves values
    map onto the token ops (linear on any leading axes, scale, permute)."""
    module = model().eval()
    g = from_torch(module, (3, 6, 6))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(g.forward(x).output, module(x), atol=1e-6)


@pytest.mark.parametrize(
    ("model", "marker", "node", "target", "reason"),
    [
        (CustomFunction, "custom", "custom_scale", "custom_scale", "no relgraph op"),
        (UnsupportedModule, "module", "act", "module 'act' (Tanh)", "has no relgraph op"),
        (Reflect, "reflect", "conv", "module 'conv' (Conv2d)", "padding_mode='reflect'"),
        (UnsupportedFunction, "tanh", "tanh", "torch.tanh", "no relgraph op"),
        (AddConstant, "constant", "add", "add", "is a constant"),
        (SharedWeights, "shared", "conv_1", "module 'conv'", "shared weights"),
        (MixesBatch, "batch", "reshape", "Tensor.reshape", "mixing the batch"),
        (SoftmaxInside, "softmax inside", "out", "module 'out'", "from the softmax at fx node"),
        (SoftmaxOverSpace, "softmax dim", "softmax", "functional.softmax", "over dimension 2"),
        (ChannelsLastConv, "last conv", "conv", "module 'conv'", "is a channels-last value"),
        (ChannelsLastOutput, "last output", "fc", "module 'fc'", "end the model with a flatten"),
    ],
)
def test_what_cannot_be_imported_is_named_with_its_source_line(model, marker, node, target, reason):
    with pytest.raises(TorchImportError) as caught:
        from_torch(model(), (3, 6, 6))
    message = str(caught.value)
    assert f"fx node '{node}'" in message
    assert target in message
    assert reason in message
    assert f"{__file__}:{_line_of(model, 'marker: ' + marker)}:" in message
    assert "\n" not in message


def test_data_dependent_control_flow_names_the_line():
    with pytest.raises(TorchImportError) as caught:
        from_torch(DataDependent(), (3, 6, 6))
    message = str(caught.value)
    assert "torch.fx cannot trace" in message
    assert f"{__file__}:{_line_of(DataDependent, 'marker: control flow')}:" in message


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


class TupleOutput(nn.Module):
    def forward(self, x):
        return x.relu(), x


def test_one_input_one_output():
    with pytest.raises(TorchImportError, match="exactly one input"):
        from_torch(TwoInputs(), (3,))
    with pytest.raises(TorchImportError, match="returning one tensor"):
        from_torch(TupleOutput(), (3,))
    with pytest.raises(TorchImportError, match="positive integers"):
        from_torch(Pools(), (2, 0))
    with pytest.raises(TorchImportError, match="torch.nn.Module"):
        from_torch(lambda x: x, (2,))


class MyConv(nn.Conv2d):
    """A Conv2d subclass that keeps Conv2d's forward (as torchvision's Conv3DSimple does)."""


class DoubledConv(nn.Conv2d):
    """A Conv2d subclass with a forward of its own: traced through, not taken for a conv."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_subclasses_of_supported_modules():
    model = nn.Sequential(MyConv(3, 2, 3), nn.Flatten())
    g = from_torch(model, (3, 5, 5))
    assert g.op("0").type == "conv2d"
    with pytest.raises(TorchImportError, match="used outside a supported module"):
        from_torch(nn.Sequential(DoubledConv(3, 2, 3), nn.Flatten()), (3, 5, 5))


# --------------------------------------------------------------------------- command line

NETS = """
import torch
from torch import nn


def tiny(num_classes=4, width=3):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(3, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


class Gated(nn.Module):
    def forward(self, x):
        return torch.tanh(x).flatten(1)


def not_a_model():
    return 3
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "fx10_nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cli_import_writes_yaml_and_weights(nets, capsys):
    from relgraph.cli.main import main

    status = main(
        ["arch", "import", "fx10_nets:tiny", "--input-shape", "3,2,5,5", "--out", "tiny.yaml",
         "--kwarg", "num_classes=6", "--kwarg", "width=2", "--weights-out", "tiny.safetensors"]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    g = relgraph.load_architecture(nets / "tiny.yaml")
    assert g.output_shape == (6,) and g.op("0").out_channels == 2
    g.load_weights(nets / "tiny.safetensors")
    import fx10_nets

    model = fx10_nets.tiny(num_classes=6, width=2).eval()
    clip = clip_for((3, 2, 5, 5))
    with torch.no_grad():
        expected = model(clip)
    assert relative_error(g.forward(clip).output, expected) < 1e-6
    assert "wrote tiny.yaml" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fx10_nets"], "is not package.module:factory"),
        (["no_such_module_fx10:tiny"], "cannot import 'no_such_module_fx10'"),
        (["fx10_nets:nope"], "has no attribute 'nope'"),
        (["fx10_nets:not_a_model"], "not a torch.nn.Module"),
        (["fx10_nets:tiny", "--kwarg", "depth=3"], "failed with arguments {'depth': 3}"),
        (["fx10_nets:tiny", "--kwarg", "depth"], "--kwarg takes key=value"),
        (["fx10_nets:Gated"], "cannot import fx node 'tanh'"),
        (["fx10_nets:tiny", "--input-shape", "3,x"], "--input-shape takes integers"),
    ],
)
def test_cli_import_errors_are_one_line(nets, capsys, argv, message):
    from relgraph.cli.main import main

    if "--input-shape" not in argv:
        argv = [*argv, "--input-shape", "3,2,5,5"]
    status = main(["arch", "import", *argv, "--out", "x.yaml"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("relgraph: error: ") and err.count("\n") == 1
    assert message in err
    assert not (nets / "x.yaml").exists()


# --------------------------------------------------------------------------- the zoo

#: shipped architecture -> (reference at 5 classes, small size params)
ZOO = {
    "r3d-18": (lambda: zoo_reference.r3d_18(num_classes=5), {"frames": 2, "size": 16}),
    "mc3-18": (lambda: zoo_reference.mc3_18(num_classes=5), {"frames": 2, "size": 16}),
    "r2plus1d-18": (lambda: zoo_reference.r2plus1d_18(num_classes=5), {"frames": 2, "size": 16}),
    "r2plus1d-tiny": (lambda: zoo_reference.R2Plus1DTiny(2, 5), {"width": 2, "size": 16}),
    # below torchvision's input size S3D's head pool shrinks to the feature map (s3d.yaml)
    "s3d": (lambda: zoo_reference.s3d_small(5, 5, 32), {"frames": 5, "size": 32}),
}


#: each takes seconds; r2plus1d-18 (the deepest of the three) runs by default
SLOW_ZOO = {"r3d-18", "mc3-18"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_ZOO else [])
        for n in ZOO
        if n in relgraph.shipped_architectures()
    ],
)
def test_zoo_reference_imports_as_the_shipped_yaml(name):
    factory, params = ZOO[name]
    model = zoo_reference.randomise(factory(), seed=3).eval()
    shipped = relgraph.load_architecture(name, init="none", num_classes=5, **params)
    imported = from_torch(model, shipped.input_shape)
    # the torchvision names are the module paths, so no node is renamed
    assert_same_graph(imported, shipped)
    written = relgraph.architecture_from_yaml(imported.to_yaml(), init="none")
    assert_same_graph(written, shipped)
    assert_same_forward_and_relevance(model, imported, shipped)


def assert_same_forward_and_relevance(model, imported, shipped):
    """The import and the shipped YAML with the model's state dict: the model's forward in
    float64 (1e-10) and equal epsilon-plus relevance (1e-10)."""
    shipped.to(dtype=torch.float64)
    shipped.load_weights(model.state_dict())
    imported.to(dtype=torch.float64)
    clip = clip_for(shipped.input_shape, batch=1, dtype=torch.float64)
    with torch.no_grad():
        expected = model.double()(clip)
    assert relative_error(imported.forward(clip).output, expected) < 1e-10
    mine = relgraph.explain(imported, clip, target=2, rules="epsilon-plus")
    theirs = relgraph.explain(shipped, clip, target=2, rules="epsilon-plus")
    assert theirs.abs().sum() > 0
    assert relative_error(mine, theirs) < 1e-10


def x3d_names(imported):
    """The import names X3D's swish, SE mean and SE product after the op, the YAML after their
    place; a block without SE has pytorchvideo's nn.Identity where the YAML has no node."""
    ends = {".act_b.silu": ".act_b", ".norm_b.1.mean": ".norm_b.1.squeeze"}
    ends[".norm_b.1.mul"] = ".norm_b.1.excite"
    renames = {}
    for node in imported.order:
        for end, shipped_end in ends.items():
            if node.endswith(end):
                renames[node] = node[: -len(end)] + shipped_end
    bypass = [n for n in imported.order if imported.op(n).type == "identity"]
    assert bypass and all(n.endswith(".branch2.norm_b.1") for n in bypass)
    return renames, bypass


@pytest.mark.parametrize(
    ("name", "depth"), [("x3d-s", 2.2), pytest.param("x3d-l", 5.0, marks=pytest.mark.slow)]
)
def test_x3d_reference_imports_as_the_shipped_yaml(name, depth):
    """pytorchvideo's head: permute to channels-last, nn.Linear, permute back, softmax (eval
    mode), pool to one, flatten: the import is the YAML's flatten and linear, with a warning
    that the softmax is left out."""
    model = zoo_reference.randomise(zoo_reference.X3D(2, 32, depth, 5), seed=3).eval()
    shipped = relgraph.load_architecture(name, init="none", num_classes=5, frames=2, size=32)
    with pytest.warns(RelgraphWarning, match="final softmax .* is left out") as caught:
        imported = from_torch(model, shipped.input_shape)
    assert f"{zoo_reference.__file__}:" in str(caught[0].message)  # the softmax's source line
    renames, bypass = x3d_names(imported)
    assert_same_graph(imported, shipped, renames, bypass)
    assert imported.op("blocks.5.flatten").type == "flatten"
    assert imported.inputs_of("blocks.5.proj") == ["blocks.5.flatten"]
    assert imported.output == "blocks.5.proj"
    assert sorted(imported.state_dict()) == sorted(
        k for k in model.state_dict() if "num_batches_tracked" not in k
    )
    clip = clip_for(shipped.input_shape, dtype=torch.float32)
    with torch.no_grad():  # the module's eval output is the softmax of the graph's logits
        probabilities = model(clip)
    logits = imported.forward(clip).output
    # float32 forward to 1e-4, as every zoo forward reference: the graph runs X3D's grouped
    # convolutions channels-last (other kernels, other rounding), and the softmax of logits
    # near 50 turns their rounding (~1e-6 relative) into ~2e-5 relative on probabilities
    assert relative_error(torch.softmax(logits, dim=1), probabilities) < 1e-4
    assert not torch.allclose(logits, probabilities)
    model.blocks[-1].return_logits = True  # no softmax: the same graph and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_torch(model, shipped.input_shape).order == imported.order
    assert_same_forward_and_relevance(model, imported, shipped)


class ChannelsLastHead(nn.Module):
    """A channels-last MLP head: permute, Linear, ReLU, Linear, mean over the size-1 dims,
    then an nn.Softmax module over the classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.hidden = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        x = torch.permute(self.pool(self.conv(x)), (0, 2, 3, 4, 1))
        x = self.out(F.relu(self.hidden(x))).contiguous()
        return self.softmax(x.mean(dim=(1, 2, 3)))


def test_a_channels_last_head_and_a_softmax_module():
    model = ChannelsLastHead().double().eval()
    with pytest.warns(RelgraphWarning, match="'softmax'"):
        g = from_torch(model, (3, 2, 4, 4))
    assert [g.op(n).type for n in g.order] == [
        "input", "conv3d", "adaptive_avgpool3d", "flatten", "linear", "relu", "linear"
    ]  # fmt: skip
    assert g.output == "out" and g.graph.nodes["hidden"]["shape"] == (6,)
    clip = clip_for((3, 2, 4, 4), batch=3, dtype=torch.float64)
    with torch.no_grad():
        expected = model(clip)
    assert relative_error(torch.softmax(g.forward(clip).output, dim=1), expected) < 1e-12


def test_a_softmax_over_conv_logits_then_a_pool_to_one_and_a_flatten():
    """A 1×1×1 conv classifier, softmax over its channels, pool to one, flatten: the softmax
    is left out, the pool (over size-1 dimensions) is no node, the flatten is one."""
    model = nn.Sequential(
        nn.Conv3d(3, 4, 1), nn.AdaptiveAvgPool3d(1), nn.Conv3d(4, 3, 1), nn.Softmax(dim=1),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(),
    ).double().eval()  # fmt: skip
    with pytest.warns(RelgraphWarning, match=r"fx node '_3', module '3' \(Softmax\)"):
        g = from_torch(model, (3, 2, 4, 4))
    assert [g.op(n).type for n in g.order] == [
        "input", "conv3d", "adaptive_avgpool3d", "conv3d", "flatten"
    ]  # fmt: skip
    clip = clip_for((3, 2, 4, 4), dtype=torch.float64)
    with torch.no_grad():
        expected = model(clip)
    assert relative_error(torch.softmax(g.forward(clip).output, dim=1), expected) < 1e-12


class Swish(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) * x


class SwishFunction(torch.autograd.Function):
    """pytorchvideo's way: x · sigmoid(x) in a custom autograd function."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - never run (the import runs no autograd)
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))


class LibrarySwish(nn.Module):
    def forward(self, x):
        return SwishFunction.apply(x)


class SigmoidTwice(nn.Module):
    """Not a swish: the sigmoid is used twice."""

    def forward(self, x):
        gate = x.sigmoid()
        return (x * gate + gate).flatten(1)


def test_swish_is_one_silu_node_and_other_products_stay_products():
    g = from_torch(nn.Sequential(nn.Conv2d(3, 2, 1), Swish(), nn.Flatten()), (3, 4, 4))
    assert [g.op(n).type for n in g.order] == ["input", "conv2d", "silu", "flatten"]
    assert g.order[2] == "1.silu"
    g = from_torch(nn.Sequential(nn.Conv2d(3, 2, 1), LibrarySwish(), nn.Flatten()), (3, 4, 4))
    assert [g.op(n).type for n in g.order] == ["input", "conv2d", "silu", "flatten"]
    g = from_torch(SigmoidTwice(), (3, 4, 4))
    assert [g.op(n).type for n in g.order] == ["input", "sigmoid", "mul", "add", "flatten"]


def test_the_import_checks_its_output_against_the_model(monkeypatch):
    """A wrong mapping (here planted: torch.relu imported as identity) is caught by the
    comparison with the module's own output."""
    import relgraph.models.from_torch as importer

    monkeypatch.setitem(importer._FUNCTIONS, torch.relu, importer._elementwise("identity"))
    model = ResNetTiny().eval()
    with pytest.raises(TorchImportError, match="output differs from the module's"):
        from_torch(model, (3, 4, 8, 8))
    assert from_torch(model, (3, 4, 8, 8), check=False).op("identity").type == "identity"


class NameClash(nn.Module):
    """A function called before a module of the same name: the module keeps its path."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Linear(12, 2)

    def forward(self, x):
        return self.flatten(torch.flatten(x, 1)).relu()


def test_module_paths_are_kept_for_the_modules():
    g = from_torch(NameClash(), (3, 2, 2))
    assert g.op("flatten").type == "linear"
    assert g.op("flatten_1").type == "flatten"
    assert sorted(g.state_dict()) == ["flatten.bias", "flatten.weight"]
