"""Shipped S3D and X3D: the libraries' keys, the same forward pass as the torch.nn references of
``tests/zoo_reference.py`` (their own state dicts, random batch-norm statistics and affine
parameters), X3D's softmax, and, over every shipped architecture, rules for every node under
every preset and a finite discriminative pass.
"""

from __future__ import annotations

import math

import pytest
import torch
import zoo_reference as zoo
from relgraph.rules.composite import preset, preset_names

import relgraph
from relgraph.cli.main import main
from relgraph.engine.graph import architecture_path

X3D = {"x3d-xs": "xs", "x3d-s": "s", "x3d-m": "m", "x3d-l": "l"}
#: shipped name: (library key list, parameters without BN buffers (the libraries' own constructors))
KEYS = {
    "s3d": ("torchvision-s3d", 8_320_048),
    **{name: ("pytorchvideo-x3d_s", 3_794_274) for name in ("x3d-xs", "x3d-s", "x3d-m")},
}
#: small inputs of the default run: (frames, size); the smallest S3D's strides allow
SMALL = {"s3d": (5, 32), "x3d-s": (2, 32), "x3d-l": (2, 32)}
#: at equal params X3D-XS and -M are X3D-S's graph (only their defaults differ): tested as it
SAME_AS_X3D_S = ("x3d-xs", "x3d-m")


def declared_shapes(graph: relgraph.Graph) -> dict[str, tuple[int, ...]]:
    return {
        f"{node}.{tensor}": tuple(shape)
        for node in graph.order
        for tensor, shape in graph.graph.nodes[node]["tensor_shapes"].items()
    }


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(
        math.prod(s) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var"))
    )


@pytest.mark.parametrize("name", list(KEYS))
def test_shipped_yaml_declares_the_library_keys(name):
    keys, count = KEYS[name]
    graph = relgraph.load_architecture(name, init="none")
    expected = {k: v for k, v in zoo.read_keys(keys).items() if "num_batches_tracked" not in k}
    assert declared_shapes(graph) == expected
    assert parameter_count(expected) == count
    assert graph.output_shape == (400,)


def test_x3d_l_has_the_published_depth_and_parameter_count():
    graph = relgraph.load_architecture("x3d-l", init="none")
    shapes = declared_shapes(graph)
    assert shapes == {
        k: tuple(v.shape) for k, v in zoo.x3d("l").state_dict().items() if "num_batches" not in k
    }
    assert parameter_count(shapes) == 6_153_384
    for stage, depth in zip(range(1, 5), (5, 10, 25, 15)):  # ceil(5.0 × (1, 2, 5, 3))
        assert f"blocks.{stage}.res_blocks.{depth - 1}.activation" in graph.order
        assert f"blocks.{stage}.res_blocks.{depth}.activation" not in graph.order


@pytest.mark.parametrize(
    ("name", "frames", "size", "preprocess"),
    [
        ("s3d", 16, 224, "kinetics-s3d"),
        ("x3d-xs", 4, 160, "x3d-xs"),
        ("x3d-s", 13, 160, "x3d-s"),
        ("x3d-m", 16, 224, "x3d-m"),
        ("x3d-l", 16, 312, "x3d-l"),
    ],
)
def test_default_input_and_preprocessing_are_the_published_ones(name, frames, size, preprocess):
    graph = relgraph.load_architecture(name, init="none")
    assert graph.input_shape == (3, frames, size, size)
    assert graph.default_preprocess == preprocess
    assert graph.default_rules == "epsilon-plus"
    if name.startswith("x3d"):  # create_x3d's head pool: frames × ceil(crop / 32)²
        side = math.ceil(size / 32)
        assert graph.op("blocks.5.pool.pool").kernel_size == (frames, side, side)


def test_the_four_x3d_files_differ_only_in_their_settings():
    """One architecture, four published settings: the files must not drift apart."""
    settings = ("name:", "description:", "  frames:", "  size:", "  depth_factor:", "preprocess:")

    def body(name):
        lines = architecture_path(name).read_text().splitlines()
        return [x for x in lines if not x.startswith(("#", *settings))]

    assert body("x3d-xs") == body("x3d-s") == body("x3d-m") == body("x3d-l")


# --------------------------------------------------------------------------- references


def reference(name: str, num_classes: int, frames: int, size: int, logits: bool = True):
    if name == "s3d":
        return zoo.s3d_small(num_classes, frames, size)
    depth = zoo.X3D_SETTINGS[X3D[name]][2]
    return zoo.X3D(frames, size, depth, num_classes, return_logits=logits)


def loaded_pair(name, tmp_path, dtype, frames, size, fmt="pth", num_classes=10, seed=0):
    """The randomised reference and relgraph's graph loaded from its saved state dict."""
    model = zoo.randomise(reference(name, num_classes, frames, size), seed=seed).eval()
    if name.startswith("x3d"):
        zoo.calm_branches(model)  # float32 keeps 1e-4 through X3D-L's 55 blocks
    return zoo.saved_and_loaded(model, name, tmp_path, dtype, frames, size, fmt, num_classes)


def assert_close_to(got, expected, rtol):
    scale = expected.abs().max()
    assert scale > 1e-3
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= rtol * scale, float((got - expected).abs().max())


@pytest.mark.parametrize(
    ("dtype", "rtol", "fmt"),
    [(torch.float32, 1e-4, "pth"), (torch.float64, 1e-10, "safetensors")],
    ids=["f32-pth", "f64-safetensors"],
)
@pytest.mark.parametrize("name", list(SMALL))
def test_forward_equals_the_reference_at_small_size(name, dtype, rtol, fmt, tmp_path):
    frames, size = SMALL[name]
    model, graph = loaded_pair(name, tmp_path, dtype, frames, size, fmt)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, frames, size, size, generator=generator).to(dtype)
    with torch.no_grad():
        expected = model(x)
    assert_close_to(graph(x).output, expected, rtol)


def test_channels_last_passes_give_the_default_layouts_relevance():
    """X3D's depthwise convolutions make its passes run channels-last on CPU in float32
    (oneDNN's fast grouped kernels). The relevance equals that of the same passes in the default
    layout, and is handed back in the input's own layout; float64 runs in the default one."""
    frames, size = SMALL["x3d-s"]
    graph = relgraph.load_architecture("x3d-s", seed=4, frames=frames, size=size)
    x = torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(5))
    assert graph.runs_channels_last(x)
    fast = relgraph.explain(graph, x, target=7, rules="epsilon-plus")
    assert fast.is_contiguous()
    assert not relgraph.load_architecture(
        "x3d-s", init="none", frames=frames, size=size, dtype=torch.float64
    ).runs_channels_last(x.double())
    graph.channels_last = False
    assert not graph.runs_channels_last(x)
    plain = relgraph.explain(graph, x, target=7, rules="epsilon-plus")
    assert_close_to(fast, plain, 1e-5)


@pytest.mark.parametrize("name", SAME_AS_X3D_S)
def test_x3d_xs_and_m_are_x3d_s_at_equal_params(name):
    params = {"frames": 2, "size": 32, "num_classes": 5}
    graph = relgraph.load_architecture(name, init="none", **params)
    same = relgraph.load_architecture("x3d-s", init="none", **params)

    def body(g):
        return [x for x in g.to_yaml().splitlines() if not x.startswith(("name:", "descr", "pre"))]

    assert body(graph) == body(same)
    assert len(body(graph)) > 500


@pytest.mark.parametrize("name", ["x3d-s", "x3d-l"])
def test_softmax_of_the_x3d_output_is_the_librarys_eval_output(name, tmp_path):
    frames, size = SMALL[name]
    model, graph = loaded_pair(name, tmp_path, torch.float64, frames, size)
    model.blocks[-1].return_logits = False  # the library's eval mode: softmax at the end
    x = torch.randn(2, 3, frames, size, size, dtype=torch.float64)
    with torch.no_grad():
        probabilities = model(x)
    logits = graph(x).output
    torch.testing.assert_close(torch.softmax(logits, dim=1), probabilities, rtol=1e-10, atol=0)
    assert not torch.allclose(logits, probabilities)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["s3d", *X3D])
def test_forward_equals_the_reference_at_full_size(name, tmp_path):
    graph = relgraph.load_architecture(name, init="none")
    _, frames, size, _ = graph.input_shape
    model, graph = loaded_pair(name, tmp_path, torch.float32, frames, size, num_classes=400)
    x = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
    assert_close_to(graph(x).output, expected, 1e-4)


# --------------------------------------------------------------------------- every architecture


#: the zoo at small inputs (frames, size) and 5 classes; the other shipped ones as they are
ZOO_SMALL = {
    **{name: (2, 32) for name in ("r3d-18", "mc3-18", "r2plus1d-18")},
    **SMALL,
    **{name: SMALL["x3d-s"] for name in SAME_AS_X3D_S},
}


def small(name: str) -> dict:
    if name not in ZOO_SMALL:
        return {}
    frames, size = ZOO_SMALL[name]
    return {"frames": frames, "size": size, "num_classes": 5}


@pytest.mark.parametrize("name", relgraph.shipped_architectures())
def test_every_preset_gives_every_node_of_every_shipped_architecture_a_rule(name):
    graph = relgraph.load_architecture(name, init="none", **small(name))
    preprocess = graph.default_preprocess or "kinetics"  # resnet-tiny names none
    for rules in preset_names():
        if rules == "base":  # structural rules only, by design
            continue
        chosen = preset(rules).resolve(graph, preprocess=preprocess)
        assert set(chosen) == set(graph.order[1:]), rules


def test_rules_show_gives_every_node_of_x3d_s_a_rule(capsys):
    assert main(["rules", "show", "epsilon-plus", "--arch", "x3d-s"]) == 0
    out = capsys.readouterr().out
    graph = relgraph.load_architecture("x3d-s", init="none")
    for node in graph.order[1:]:
        assert f"{node} " in out or f"{node}\t" in out, node
    se = "blocks.1.res_blocks.0.branch2.norm_b.1"
    table = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "signal-take-all" in table[f"{se}.excite"]
    assert "proportional" in table[f"{se}.squeeze"]
    assert (
        "pass" in table[f"{se}.block.3"] and "pass" in table["blocks.1.res_blocks.0.branch2.act_b"]
    )


#: not run below: c3d (fixed 16×112×112 input; c3d-tiny is its topology, and
#: test_discriminative runs it), x3d-xs and x3d-m (at small params x3d-s's very graph)
#: the full-size transformers need tens of GB for a batch of frozen clips: their discriminative
#: pass runs on small configurations in tests/test_transformers.py
COVERED_ELSEWHERE = ("c3d", *SAME_AS_X3D_S, "videomae", "vivit", "timesformer")
DISCRIMINATIVE = [n for n in relgraph.shipped_architectures() if n not in COVERED_ELSEWHERE]


def test_the_discriminative_check_covers_every_shipped_architecture():
    assert set(DISCRIMINATIVE) | set(COVERED_ELSEWHERE) == set(relgraph.shipped_architectures())
    assert {"r3d-18", "mc3-18", "r2plus1d-18", "s3d", "x3d-s", "x3d-l"} <= set(DISCRIMINATIVE)


@pytest.mark.parametrize(
    "name",
    # X3D-L: X3D-S's blocks, 55 instead of 26, over a minute on a busy 2-core machine
    [pytest.param(n, marks=pytest.mark.slow) if n == "x3d-l" else n for n in DISCRIMINATIVE],
)
def test_discriminative_runs_on_every_shipped_architecture_without_nan(name):
    params = small(name)
    graph = relgraph.load_architecture(name, seed=1, **params)
    if params:  # the library's own state dict, random BN statistics as in a checkpoint
        if name in SMALL:
            model = reference(name, 5, params["frames"], params["size"])
        else:
            model = getattr(zoo, name.replace("-", "_"))(num_classes=5)
        graph.load_weights(zoo.randomise(model, seed=2).state_dict())
    clip = torch.rand((1, *graph.input_shape), generator=torch.Generator().manual_seed(5))
    result = relgraph.discriminative(graph, clip, preprocess=graph.default_preprocess)
    for array in (result.spatiotemporal, result.spatial, result.temporal):
        assert torch.isfinite(torch.as_tensor(array)).all()
    assert torch.as_tensor(result.spatiotemporal).abs().sum() > 0
