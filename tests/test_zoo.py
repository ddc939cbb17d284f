"""The library video models: hand-written torch.nn references and the shipped YAMLs.

The references (tests/zoo_reference.py) must have exactly the libraries' state-dict keys and
shapes (tests/data/*.keys.tsv, written by torchvision 0.29 and pytorchvideo 0.1.5) and their
published parameter counts. relgraph's r3d-18, mc3-18 and r2plus1d-18 load the reference's
state dict from a file (``torch.save`` and safetensors, ``num_batches_tracked`` included)
and must compute the same logits, with batch-norm statistics and affine parameters random.
"""

from __future__ import annotations

import math

import pytest
import torch
import zoo_reference as zoo
from relgraph.rules.composite import preset, preset_names

import relgraph
from relgraph.engine.canonize import canonical
from relgraph.engine.graph import architecture_path

TORCHVISION = {
    "r3d-18": (zoo.r3d_18, "torchvision-r3d_18", 33_371_472),
    "mc3-18": (zoo.mc3_18, "torchvision-mc3_18", 11_695_440),
    "r2plus1d-18": (zoo.r2plus1d_18, "torchvision-r2plus1d_18", 31_505_325),
}
"""Shipped name: reference constructor, key list, parameter count (from the libraries'
own constructors)."""


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ the references


@pytest.mark.parametrize(
    ("factory", "keys", "count"),
    [*TORCHVISION.values(), (zoo.s3d, "torchvision-s3d", 8_320_048)],
    ids=[*TORCHVISION, "s3d"],
)
def test_torchvision_reference_has_the_library_keys_and_parameter_count(factory, keys, count):
    model = factory()
    assert shapes(model.state_dict()) == zoo.read_keys(keys)
    assert list(model.state_dict()) == list(zoo.read_keys(keys))  # the library's order too
    assert n_parameters(model) == count


@pytest.mark.parametrize("size", ["xs", "s", "m"])
def test_x3d_reference_has_the_library_keys(size):
    # the key list is of X3D-S; XS and M differ only in input size, so their keys are equal
    model = zoo.x3d(size)
    assert shapes(model.state_dict()) == zoo.read_keys("pytorchvideo-x3d_s")
    assert n_parameters(model) == 3_794_274


def test_x3d_l_reference_has_the_published_parameter_count():
    model = zoo.x3d("l")
    assert n_parameters(model) == 6_153_384
    stages = [len(model.blocks[i].res_blocks) for i in range(1, 5)]
    assert stages == [5, 10, 25, 15]  # ceil(5.0 × (1, 2, 5, 3))


def test_x3d_reference_runs_and_its_softmax_is_of_the_logits():
    # a small clip: the head's pool kernel follows frames and crop, as in create_x3d
    model = zoo.randomise(zoo.X3D(frames=2, crop=32, num_classes=7), seed=1).eval()
    x = torch.randn(2, 3, 2, 32, 32)
    with torch.no_grad():
        probabilities = model(x)
        model.blocks[-1].return_logits = True
        logits = model(x)
    assert probabilities.shape == logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(probabilities, torch.softmax(logits, dim=1))
    assert not torch.allclose(probabilities, logits)


@pytest.mark.slow
@pytest.mark.parametrize("size", list(zoo.X3D_SETTINGS))
def test_x3d_reference_runs_at_full_size(size):
    frames, crop, _ = zoo.X3D_SETTINGS[size]
    model = zoo.x3d(size, return_logits=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, frames, crop, crop))
    assert out.shape == (1, 400) and torch.isfinite(out).all()


def test_s3d_reference_runs_in_two_halves():
    # the whole net needs 16 × 224 × 224 (its fixed 2 × 7 × 7 pool): features on a small
    # clip here, the head on features of the size a full clip gives
    model = zoo.randomise(zoo.s3d(num_classes=5), seed=2).eval()
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, 8, 64, 64))
        out = model.classifier(model.avgpool(torch.randn(1, 1024, 2, 7, 7))).mean(dim=(2, 3, 4))
    assert features.shape == (1, 1024, 1, 2, 2) and torch.isfinite(features).all()
    assert out.shape == (1, 5) and torch.isfinite(out).all()


@pytest.mark.slow
def test_s3d_reference_runs_at_its_input_size():
    model = zoo.randomise(zoo.s3d(num_classes=5), seed=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 224, 224))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


# ------------------------------------------------------------------ shipped YAMLs


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_shipped_yaml_has_the_library_keys_without_num_batches_tracked(name):
    _, keys, count = TORCHVISION[name]
    graph = relgraph.load_architecture(name, init="none")
    expected = {k: v for k, v in zoo.read_keys(keys).items() if "num_batches_tracked" not in k}
    declared = {
        f"{node}.{t}": tuple(shape)
        for node in graph.order
        for t, shape in graph.graph.nodes[node]["tensor_shapes"].items()
    }
    assert declared == expected
    parameters = sum(
        math.prod(s) for k, s in declared.items() if not k.endswith(("running_mean", "running_var"))
    )
    assert parameters == count
    assert graph.output_shape == (400,)
    assert graph.input_shape == (3, 16, 112, 112)


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_shipped_yaml_is_short_and_uses_blocks(name):
    text = architecture_path(name).read_text()
    assert "blocks:" in text
    assert len(text.splitlines()) < 60


def reference_and_graph(name, tmp_path, dtype, frames, size, fmt, num_classes=400, seed=0):
    factory, _, _ = TORCHVISION[name]
    model = zoo.randomise(factory(num_classes=num_classes), seed=seed).eval()
    return zoo.saved_and_loaded(model, name, tmp_path, dtype, frames, size, fmt, num_classes)


@pytest.mark.parametrize(
    ("dtype", "rtol", "fmt"),
    [(torch.float32, 1e-4, "pth"), (torch.float64, 1e-10, "safetensors")],
    ids=["f32-pth", "f64-safetensors"],
)
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_forward_equals_the_reference_at_small_size(name, dtype, rtol, fmt, tmp_path):
    model, graph = reference_and_graph(name, tmp_path, dtype, 4, 32, fmt, num_classes=10)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.no_grad():
        expected = model(x)
    got = graph(x).output
    scale = expected.abs().max()
    assert scale > 1e-3
    assert (got - expected).abs().max() <= rtol * scale


def test_loading_keeps_random_batch_norm_statistics(tmp_path):
    model, graph = reference_and_graph("r2plus1d-18", tmp_path, torch.float32, 4, 32, "pth")
    bn = graph.tensors("layer3.1.conv1.0.1")
    torch.testing.assert_close(bn["running_var"], model.layer3[1].conv1[0][1].running_var)
    assert not torch.allclose(bn["running_var"], torch.ones_like(bn["running_var"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_forward_equals_the_reference_at_full_size(name, tmp_path):
    model, graph = reference_and_graph(name, tmp_path, torch.float32, 16, 112, "pth")
    x = torch.randn(1, 3, 16, 112, 112, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
    got = graph(x).output
    assert got.shape == (1, 400)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def _preprocess_for_tests() -> str:
    # kinetics is the YAMLs' default; another helper adds it: fall back to hara until then
    from relgraph.io.preprocess import PRESETS

    return "kinetics" if "kinetics" in PRESETS else "hara"


@pytest.mark.parametrize("rules", [n for n in preset_names() if n != "base"])
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_every_preset_gives_every_node_a_rule(name, rules):
    graph = relgraph.load_architecture(name, init="none", frames=4, size=32)
    chosen = preset(rules).resolve(graph, preprocess=_preprocess_for_tests())
    assert set(chosen) == set(graph.order[1:])


def test_default_rules_explain_r2plus1d():
    # one model is enough here: what the rules do is checked elsewhere, per op
    name = "r2plus1d-18"
    graph = relgraph.load_architecture(name, init="none", frames=4, size=32, num_classes=5)
    assert graph.default_rules == "epsilon-plus"
    model = zoo.randomise(TORCHVISION[name][0](num_classes=5), seed=5)
    graph.load_weights(model.state_dict())
    clip = torch.randn(1, 3, 4, 32, 32)
    relevance = relgraph.explain(graph, clip, target=0, output_relevance="logit")
    assert relevance.shape == clip.shape
    assert torch.isfinite(relevance).all()
    assert relevance.abs().sum() > 0


def test_ungrouped_3d_convolutions_run_channels_last_where_onednn_takes_the_dtype():
    """r2plus1d-18's passes run channels-last on CPU in float32 (oneDNN's kernels are faster
    there), in bfloat16 only where torch says oneDNN takes it, never in float64. The relevance
    equals that of the default layout's passes (``Graph.channels_last = False``, which the
    canonized view follows) and comes back in the input's own layout."""
    graph = relgraph.load_architecture("r2plus1d-18", seed=2, frames=4, size=32, num_classes=5)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(6))
    assert graph.runs_channels_last(x) == torch.backends.mkldnn.is_available()
    assert graph.runs_channels_last(x.bfloat16()) == (
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    assert not relgraph.load_architecture(
        "r2plus1d-18", init="none", frames=4, size=32, dtype=torch.float64
    ).runs_channels_last(x.double())
    fast = relgraph.explain(graph, x, target=3, rules="epsilon-plus")
    assert fast.is_contiguous()
    graph.channels_last = False
    assert not graph.runs_channels_last(x)
    assert not canonical(graph).runs_channels_last(x)
    plain = relgraph.explain(graph, x, target=3, rules="epsilon-plus")
    scale = plain.abs().max()
    assert scale > 0
    assert (fast - plain).abs().max() <= 1e-5 * scale
    graph.channels_last = True
    assert graph.runs_channels_last(x) and not graph.runs_channels_last(x.double())
    with pytest.raises(relgraph.GraphError, match="channels_last must be None, True or False"):
        graph.channels_last = 1
