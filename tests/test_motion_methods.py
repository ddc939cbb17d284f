"""The motion methods of ``relgraph.discriminative(..., method=...)``: decomposed, reference
(DeepLIFT from the static clip), selective (Hiley et al. 2020), integrated gradients from the
static clip, and their plumbing through the CLI and the evaluation suite.

References are computed another way: the engine's own rules for the decomposed split (the
split must add up to what the rule hands to the input), captum's ``DeepLift`` for the
reference method, a plain numpy Sobel filter for selective relevance, autograd for integrated
gradients.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from captum.attr import DeepLift
from test_captum import SMALL_VIDEO_NET_YAML, SmallVideoNet

import relgraph
from relgraph.cli.main import main
from relgraph.errors import ArgumentError, RelgraphError
from relgraph.evaluation.suite import compute_maps, full_metric_maps, markdown
from relgraph.methods.baselines import integrated_gradients
from relgraph.methods.decomposed import static_part
from relgraph.methods.selective import selective_mask

TINY = {"size": 16, "width": 2, "hidden": 8}


def tiny_graph(dtype=torch.float64, arch: str = "c3d-tiny"):
    params = TINY if arch == "c3d-tiny" else {"size": 16, "width": 2}
    return relgraph.load_architecture(arch, seed=3, dtype=dtype, **params)


def clips_for(graph, batch: int = 2, seed: int = 0) -> torch.Tensor:
    shape = (batch, *graph.input_shape)
    generator = torch.Generator().manual_seed(seed)
    # inputs within the hara preprocessing's range, as the zβ bounds assume
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).to(graph.dtype)


def linear_video_graph(bias: bool = True) -> relgraph.Graph:
    """A model linear in its clip, in float64: a conv3d on ``(2, 3, 4, 4)`` clips, a
    flatten and a linear layer (``bias=False``: neither layer has a bias)."""
    no_bias = {} if bias else {"bias": False}
    spec = {
        "name": "linear-video",
        "input": {"name": "input", "shape": [2, 3, 4, 4]},
        "nodes": [
            {"name": "conv", "op": "conv3d", "out_channels": 3, "kernel_size": 3, **no_bias},
            {"name": "flatten", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 2, **no_bias},
        ],
        "output": "fc",
    }
    return relgraph.architecture_from_yaml(json.dumps(spec), dtype=torch.float64, seed=1)


# --------------------------------------------------------------------------- options


def test_frozen_is_the_default_and_bit_identical_to_it():
    g = tiny_graph()
    x = clips_for(g, batch=1)
    default = relgraph.discriminative(g, x)
    frozen = relgraph.discriminative(g, x, method="frozen")
    for name in ("spatiotemporal", "spatial", "temporal", "frozen_relevance"):
        assert torch.equal(getattr(default, name), getattr(frozen, name)), name
    assert frozen.options["method"] == "frozen"


def test_an_unknown_method_or_static_part_is_one_clear_error():
    g = tiny_graph()
    x = clips_for(g)
    with pytest.raises(RelgraphError, match="method must be one of frozen, decomposed"):
        relgraph.discriminative(g, x, method="decompose")
    with pytest.raises(ArgumentError, match="static must be one of mean, first, median"):
        relgraph.discriminative(g, x, method="decomposed", static="average")
    with pytest.raises(ArgumentError, match="sigma"):
        relgraph.discriminative(g, x, method="selective", sigma=-1.0)


@pytest.mark.parametrize("static", ["mean", "first", "median"])
def test_static_part_is_constant_over_time_and_the_named_statistic(static):
    x = torch.randn(2, 3, 5, 4, 4, dtype=torch.float64)
    s = static_part(x, static)
    assert torch.equal(s, s[:, :, :1].expand_as(s))
    expected = {
        "mean": x.numpy().mean(axis=2),
        "first": x.numpy()[:, :, 0],
        "median": np.sort(x.numpy(), axis=2)[:, :, 2],  # 5 frames: the middle one
    }[static]
    np.testing.assert_allclose(s[:, :, 0].numpy(), expected, rtol=1e-12)


# --------------------------------------------------------------------------- decomposed

FIRST_LAYER_RULES = [
    {"name": "epsilon", "epsilon": 1e-6, "bias": True},
    {"name": "epsilon", "epsilon": 0.0, "bias": False},
    {"name": "zplus"},
    {"name": "alphabeta", "alpha": 2.0, "beta": 1.0},
    {"name": "gamma", "gamma": 0.25, "bias": True},
    {"name": "zbeta", "low": -1.0, "high": 1.0},
    {"name": "zbeta", "low": [-1.0, -1.5, -1.0], "high": [1.0, 1.5, 2.0]},
    {"name": "flat"},
    {"name": "wsquare"},
]


@pytest.mark.parametrize("rule", FIRST_LAYER_RULES, ids=lambda r: json.dumps(r))
def test_decomposed_static_plus_moving_is_the_rules_own_input_relevance(rule):
    g = tiny_graph()
    x = clips_for(g)
    rules = {"conv1": rule}
    ordinary = relgraph.explain(g, x, rules=rules)
    result = relgraph.discriminative(g, x, rules=rules, method="decomposed")
    total = result.spatial_relevance + result.temporal_relevance
    scale = float(ordinary.abs().max())
    assert scale > 0
    torch.testing.assert_close(total, ordinary, rtol=1e-9, atol=1e-10 * scale)
    torch.testing.assert_close(result.relevance, ordinary, rtol=1e-9, atol=1e-10 * scale)
    # the normalised maps add up too: one scale for all three
    torch.testing.assert_close(result.spatial + result.temporal, result.spatiotemporal)


def test_decomposed_on_a_residual_model_with_folded_batch_norms_adds_up():
    g = tiny_graph(arch="r2plus1d-tiny")
    x = clips_for(g)
    ordinary = relgraph.explain(g, x)
    result = relgraph.discriminative(g, x, method="decomposed", normalize="none")
    torch.testing.assert_close(
        result.spatial_relevance + result.temporal_relevance, ordinary, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(result.spatial + result.temporal, result.spatiotemporal)


def test_decomposed_gives_a_still_clip_no_motion_relevance():
    g = tiny_graph()
    still = static_part(clips_for(g), "first")
    result = relgraph.discriminative(g, still, method="decomposed", static="first")
    assert float(result.spatiotemporal.abs().max()) > 0
    assert torch.equal(result.temporal, torch.zeros_like(result.temporal))
    assert torch.equal(result.spatial, result.spatiotemporal)


def test_decomposed_epsilon_moving_part_is_the_moving_input_times_the_gradient_of_a_linear_model():
    # LRP-0 on a bias-free linear model seeded with the logit is gradient × input (Bach et al.
    # 2015), so the moving part's relevance is m ⊙ ∇f, computed here by autograd
    g = linear_video_graph(bias=False)
    rule = {"name": "epsilon", "epsilon": 0.0, "bias": False}
    rules = {"conv": rule, "fc": rule, "flatten": "pass"}
    x = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    result = relgraph.discriminative(
        g, x, rules=rules, target=1, output_relevance="logit", method="decomposed"
    )
    tensors = {n: g.tensors(n) for n in ("conv", "fc")}
    leaf = x.clone().requires_grad_(True)
    hidden = torch.nn.functional.conv3d(leaf, tensors["conv"]["weight"])
    logits = hidden.flatten(1) @ tensors["fc"]["weight"].T
    (gradient,) = torch.autograd.grad(logits[:, 1].sum(), leaf)
    moving = x - static_part(x)
    torch.testing.assert_close(result.temporal_relevance, moving * gradient)


def test_decomposed_refuses_an_input_read_by_a_layer_it_cannot_split():
    spec = {
        "name": "pool-first",
        "input": {"name": "input", "shape": [3, 4, 8, 8]},
        "nodes": [
            {"name": "pool", "op": "maxpool3d", "kernel_size": 2},
            {"name": "flatten", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 2},
        ],
        "output": "fc",
    }
    g = relgraph.architecture_from_yaml(json.dumps(spec), dtype=torch.float64)
    x = torch.randn(1, 3, 4, 8, 8, dtype=torch.float64)
    with pytest.raises(RelgraphError, match="'pool' .*maxpool3d.* is not an affine layer"):
        relgraph.discriminative(g, x, method="decomposed")


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("arch", ["c3d-tiny", "r2plus1d-tiny"])
def test_reference_conserves_the_logit_difference_to_the_static_clip(arch):
    g = tiny_graph(arch=arch)
    x = clips_for(g, batch=3)
    result = relgraph.discriminative(g, x, method="reference", normalize="none")
    rows = torch.arange(3)
    difference = result.output[rows, result.target] - result.static_output[rows, result.target]
    assert float(difference.abs().min()) > 0
    torch.testing.assert_close(
        result.temporal_relevance.sum(dim=(1, 2, 3, 4)), difference, rtol=1e-9, atol=1e-12
    )
    # the static clip's own logits, as a forward pass gives them
    still = static_part(x)
    torch.testing.assert_close(result.static_output, g.forward(still).output)


class AveragePoolNet(torch.nn.Module):
    """Conv, ReLU and average pools: captum's ``DeepLift`` sums to ``f(x) − f(x̄)`` here (on
    max pools its own convergence delta is not 0, so it is no reference there)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv3d(3, 4, kernel_size=3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.pool1 = torch.nn.AvgPool3d(kernel_size=(1, 2, 2))
        self.conv2 = torch.nn.Conv3d(4, 6, kernel_size=3, padding=1)
        self.relu2 = torch.nn.ReLU()
        self.pool2 = torch.nn.AvgPool3d(kernel_size=2)
        self.fc = torch.nn.Linear(6 * 2 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


AVERAGE_POOL_NET_YAML = {
    "name": "average-pool-net",
    "input": {"name": "input", "shape": [3, 4, 8, 8]},
    "nodes": [
        {"name": "conv1", "op": "conv3d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"name": "relu1", "op": "relu"},
        {"name": "pool1", "op": "avgpool3d", "kernel_size": [1, 2, 2]},
        {"name": "conv2", "op": "conv3d", "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"name": "relu2", "op": "relu"},
        {"name": "pool2", "op": "avgpool3d", "kernel_size": 2},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 5},
    ],
    "output": "fc",
}


def test_reference_matches_captums_deeplift_rescale():
    torch.manual_seed(7)
    net = AveragePoolNet().double().eval()
    graph = relgraph.architecture_from_yaml(json.dumps(AVERAGE_POOL_NET_YAML), dtype=torch.float64)
    graph.load_weights({name: t.detach().clone() for name, t in net.state_dict().items()})
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    result = relgraph.discriminative(graph, x, rules="epsilon-plus", method="reference")
    still = static_part(x)
    expected, delta = DeepLift(net).attribute(
        x.clone(), baselines=still, target=result.target.tolist(), return_convergence_delta=True
    )
    assert float(delta.abs().max()) < 1e-9  # captum's own summation to delta holds here
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        result.temporal_relevance, expected.detach(), rtol=1e-6, atol=1e-6 * scale
    )


def test_reference_on_max_pools_conserves_where_captum_does_not():
    torch.manual_seed(7)
    net = SmallVideoNet().double().eval()
    graph = relgraph.architecture_from_yaml(json.dumps(SMALL_VIDEO_NET_YAML), dtype=torch.float64)
    graph.load_weights({name: t.detach().clone() for name, t in net.state_dict().items()})
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    result = relgraph.discriminative(graph, x, rules="epsilon-plus", method="reference")
    with torch.no_grad():
        rows = torch.arange(2)
        difference = (net(x) - net(static_part(x)))[rows, result.target]
    torch.testing.assert_close(
        result.temporal_relevance.sum(dim=(1, 2, 3, 4)), difference, rtol=1e-9, atol=1e-12
    )


def test_reference_of_a_still_clip_hands_nothing_to_motion():
    g = tiny_graph()
    still = static_part(clips_for(g))
    result = relgraph.discriminative(g, still, method="reference")
    assert torch.equal(result.temporal, torch.zeros_like(result.temporal))
    assert bool(torch.isfinite(result.spatial).all())


# --------------------------------------------------------------------------- selective


def numpy_temporal_sobel(maps: np.ndarray) -> np.ndarray:
    """|∂R/∂t| with the 3-D Sobel kernel [1,0,−1]_t ⊗ [1,2,1]_y ⊗ [1,2,1]_x, zero padded,
    as a plain cross-correlation sum."""
    smooth = np.array([1.0, 2.0, 1.0])
    kernel = np.array([1.0, 0.0, -1.0])[:, None, None] * smooth[None, :, None] * smooth
    padded = np.pad(maps, ((0, 0), (1, 1), (1, 1), (1, 1)))
    out = np.zeros_like(maps)
    _, frames, height, width = maps.shape
    for dt in range(3):
        for dy in range(3):
            for dx in range(3):
                out += (
                    kernel[dt, dy, dx]
                    * padded[:, dt : dt + frames, dy : dy + height, dx : dx + width]
                )
    return np.abs(out)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_selective_mask_is_the_sobel_derivative_above_sigma_standard_deviations(sigma):
    maps = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    derivative = numpy_temporal_sobel(maps.numpy())
    spread = derivative.reshape(2, -1).std(axis=1, ddof=1)
    expected = derivative > sigma * spread[:, None, None, None]
    assert np.array_equal(selective_mask(maps, sigma).numpy(), expected)
    assert 0 < expected.sum() < expected.size


def test_selective_temporal_is_the_masked_spatiotemporal_map_and_spatial_the_rest():
    g = tiny_graph()
    x = clips_for(g)
    result = relgraph.discriminative(g, x, method="selective", sigma=1.0)
    mask = selective_mask(result.relevance.sum(dim=1), 1.0)
    torch.testing.assert_close(result.temporal, torch.where(mask, result.spatiotemporal, 0.0))
    torch.testing.assert_close(result.spatial + result.temporal, result.spatiotemporal)
    assert result.options["sigma"] == 1.0


# --------------------------------------------------------------------------- baselines


def test_integrated_gradients_is_exact_on_a_linear_model_and_sums_to_the_difference():
    g = linear_video_graph()
    x = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1])
    attribution = integrated_gradients(g, x, targets, steps=3, channels=True)
    leaf = x.clone().requires_grad_(True)
    tensors = {n: g.tensors(n) for n in ("conv", "fc")}
    hidden = torch.nn.functional.conv3d(leaf, tensors["conv"]["weight"], tensors["conv"]["bias"])
    logits = hidden.flatten(1) @ tensors["fc"]["weight"].T + tensors["fc"]["bias"]
    (gradient,) = torch.autograd.grad(logits[[0, 1], targets].sum(), leaf)
    torch.testing.assert_close(attribution, (x - static_part(x)) * gradient)


def test_integrated_gradients_approaches_the_logit_difference_with_more_steps():
    g = tiny_graph()
    x = clips_for(g, batch=1)
    targets = g.forward(x).output.argmax(dim=1)
    rows = torch.arange(len(x))
    difference = (g.forward(x).output - g.forward(static_part(x)).output)[rows, targets]
    errors = [
        float((integrated_gradients(g, x, targets, steps=n).sum(dim=(1, 2, 3)) - difference)
              .abs().max())
        for n in (2, 32)
    ]  # fmt: skip
    assert errors[1] < errors[0]
    assert errors[1] < 0.02 * float(difference.abs().max())


# --------------------------------------------------------------------------- precision, plumbing


@pytest.mark.parametrize("method", ["decomposed", "reference", "selective"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_method_is_finite_in_low_precision(method, dtype):
    g = tiny_graph(dtype=dtype)
    x = clips_for(g)
    result = relgraph.discriminative(g, x, method=method)
    for name in ("spatiotemporal", "spatial", "temporal"):
        values = getattr(result, name)
        assert values.shape == (2, *g.input_shape[1:])
        assert bool(torch.isfinite(values).all()), name
    assert result.frozen_predictions.shape == (2, 0)


def test_the_suite_measures_every_methods_maps_and_their_cost():
    g = tiny_graph(dtype=torch.float32)
    x = clips_for(g, batch=1)
    targets = torch.tensor([1])
    costs: dict[str, float] = {}
    maps = compute_maps(g, x, targets, variants=False, methods=("frozen", "selective"), costs=costs)
    for name in full_metric_maps(("frozen", "selective")):
        assert maps[name].shape == (1, *g.input_shape[1:]), name
    assert {"temporal method=selective", "spatial method=selective", "integrated gradients"} <= (
        set(maps)
    )
    assert set(costs) == {"frozen", "selective", "explanation", "integrated gradients"}
    report = {
        "maps": {"spatiotemporal": {}},
        "config": {"arch": "c3d-tiny", "cube": [1, 2, 2], "steps": 2},
        "clips": 2,
        "accuracy": 1.0,
        "seconds": 1.0,
        "costs": {"decomposed": {"seconds per clip": 0.5, "relative to one explanation": 1.2}},
    }
    assert "- decomposed: 0.5000 s (1.20×)" in markdown(report)


def test_explain_command_writes_the_decomposed_maps(tmp_path):
    from test_cli import moving_square_video, write_video

    video = write_video(tmp_path / "square.avi", moving_square_video(18))
    out = tmp_path / "out"
    argv = [
        "explain",
        str(video),
        "--arch",
        "c3d-tiny",
        "--weights",
        str(relgraph.models.demo.DEMO_MODELS["c3d-tiny"]),
        "--out",
        str(out),
        "--quiet",
        "--method",
        "decomposed",
        "--static",
        "median",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["method"] == "decomposed"
    assert summary["options"]["static"] == "median"
    with np.load(out / "relevance.npz") as arrays:
        np.testing.assert_allclose(
            arrays["spatial"] + arrays["temporal"], arrays["spatiotemporal"], atol=1e-6
        )


def test_evaluate_refuses_an_unknown_method(tmp_path, capsys):
    argv = ["evaluate", "--clips", "1", "--method", "decomposed,sideways", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "unknown method 'sideways'" in capsys.readouterr().err
