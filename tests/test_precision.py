"""bfloat16 explanations against float32, and the memory mode ``cache_policy``.

The float32 reference is the same graph's float32 run; the bounds are those the docs
(docs/benchmarks/precision.md) promise for ``deep-taylor-paper``: Pearson ≥ 0.999, relative L2 error
≤ 2 %, conservation error ≤ 1 %, the same predictions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from relgraph.rules import preset_names

import relgraph
from relgraph.datasets.synthetic import make_clip
from relgraph.errors import GraphError, RelgraphError
from relgraph.io.preprocess import get_preprocess
from relgraph.pipeline.video import load_model

RULES = "deep-taylor-paper"


def preprocessed_clips(graph: relgraph.Graph, count: int, seed: int = 0) -> torch.Tensor:
    """Synthetic moving-object clips through the graph's own preprocessing."""
    rng = np.random.default_rng(seed)
    preprocess = get_preprocess(graph.default_preprocess, size=graph.input_shape[-1])
    size = max(graph.input_shape[-1] + 16, 32)
    frames = graph.input_shape[1]
    return torch.stack(
        [preprocess(make_clip(i % 4, rng, frames=frames, size=size).frames) for i in range(count)]
    )


def noise_clips(graph: relgraph.Graph, count: int, seed: int = 0) -> torch.Tensor:
    """Uniform noise over the range of preprocessed input (pixels 0..255 through the graph's
    preprocessing). Flat synthetic frames make ties in the max pools that bfloat16's rounding
    breaks otherwise than float32 (see docs/benchmarks/precision.md): the bounds are for clips
    with texture everywhere, as real video has."""
    low, high = get_preprocess(graph.default_preprocess or "hara").zbeta_bounds(False)
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand((count, *graph.input_shape), generator=generator)
    return unit * float(high[0] - low[0]) + float(low[0])


def in_bfloat16(graph: relgraph.Graph) -> relgraph.Graph:
    copy = relgraph.load_architecture(graph.name, init="none")
    copy.assign(graph.state_dict())
    return copy.to(dtype=torch.bfloat16)


def check_bounds(graph: relgraph.Graph, clips: torch.Tensor) -> None:
    expected = relgraph.explanation(graph, clips, rules=RULES)
    half = in_bfloat16(graph)
    actual = relgraph.explanation(
        half,
        clips.to(torch.bfloat16),
        rules=RULES,
        target=expected.target,
    )
    assert actual.relevance.dtype == torch.float32  # carried and summed in float32
    assert torch.isfinite(actual.relevance).all()
    a = expected.relevance.reshape(len(clips), -1).double()
    b = actual.relevance.reshape(len(clips), -1).double()
    for i in range(len(clips)):
        pearson = torch.corrcoef(torch.stack([a[i], b[i]]))[0, 1]
        assert pearson >= 0.999, (i, float(pearson))
        assert (a[i] - b[i]).norm() / a[i].norm() <= 0.02
    seed = expected.output_relevance.reshape(len(clips), -1).double().sum(1)
    assert ((b.sum(1) - seed).abs() / seed).max() <= 0.01
    assert torch.equal(actual.output.float().argmax(1), expected.output.argmax(1))


def test_bfloat16_deep_taylor_is_within_the_bounds_on_c3d_tiny():
    graph = relgraph.load_architecture("c3d-tiny", seed=1)
    check_bounds(graph, noise_clips(graph, 4))


@pytest.mark.slow  # minutes where the CPU has no bfloat16 units (torch emulates bfloat16)
def test_bfloat16_deep_taylor_is_within_the_bounds_on_full_c3d():
    graph = relgraph.load_architecture("c3d")
    check_bounds(graph, noise_clips(graph, 2, seed=3))


def test_bfloat16_heavy_ops_run_in_bfloat16_and_shares_in_float32():
    graph = in_bfloat16(relgraph.load_architecture("c3d-tiny", seed=2))
    seen = {}
    conv = graph.op("conv2")
    original = type(conv).adjoint

    def spy(self, s, weight, x_shape, **kernel):  # kernel=: the kept flipped kernel
        seen[s.dtype, weight.dtype] = True
        return original(self, s, weight, x_shape, **kernel)

    clips = preprocessed_clips(graph, 1).to(torch.bfloat16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(conv), "adjoint", spy)
        relgraph.explain(graph, clips, rules=RULES)
    assert (torch.bfloat16, torch.bfloat16) in seen


@pytest.mark.parametrize(
    "name, rules",
    [("c3d-tiny", n) for n in preset_names() if n != "base"]
    + [("resnet-tiny", "epsilon-gamma-box"), ("resnet-tiny", "deep-taylor-paper")],
)
def test_every_preset_runs_in_bfloat16_finite_and_close_to_float32(name, rules):
    graph = relgraph.load_architecture(name, seed=4)
    clips = noise_clips(graph, 1, seed=5)
    expected = relgraph.explain(graph, clips, rules=rules, preprocess="hara")
    actual = relgraph.explain(
        in_bfloat16(graph),
        clips.to(torch.bfloat16),
        rules=rules,
        preprocess="hara",
        target=relgraph.engine.reverse.resolve_target(graph.forward(clips).output, "auto"),
    )
    assert torch.isfinite(actual).all()
    pearson = torch.corrcoef(torch.stack([expected.flatten(), actual.flatten()]))[0, 1]
    # the gradient (a baseline, no conservation) rounds more: its bfloat16 map is looser; so
    # do the transformer presets on a CNN, LRP-0 on every convolution (gradient × input)
    assert pearson > (0.95 if rules in ("gradient", "attnlrp", "cp-lrp") else 0.99)


# the plain path (17 explanations) in emulated bfloat16 is slow on CPUs without bfloat16 units
@pytest.mark.parametrize("shortcut", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_discriminative_in_bfloat16_is_close_to_float32(shortcut):
    graph = relgraph.load_architecture("c3d-tiny", seed=1)
    clip = noise_clips(graph, 1, seed=7)
    expected = relgraph.discriminative(graph, clip, rules=RULES, progress=False)
    actual = relgraph.discriminative(
        in_bfloat16(graph),
        clip.to(torch.bfloat16),
        rules=RULES,
        progress=False,
        frozen_shortcut=shortcut,  # the frozen-clip shortcut and the plain path alike
    )
    assert torch.equal(actual.frozen_predictions, expected.frozen_predictions)
    for field in ("spatiotemporal", "spatial"):
        a, b = getattr(expected, field).flatten(), getattr(actual, field).float().flatten()
        assert torch.isfinite(b).all()
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99, field


def test_load_model_takes_a_precision_and_refuses_an_unknown_one():
    model = load_model("c3d-tiny", precision="bf16")
    assert model.graph.dtype == torch.bfloat16
    with pytest.raises(RelgraphError, match="precision must be one of fp32, bf16, fp64"):
        load_model("c3d-tiny", precision="half")


# --------------------------------------------------------------------------- memory modes


@pytest.mark.parametrize(
    "rules", ["deep-taylor-paper", "epsilon-gamma-box", "epsilon-alpha2-beta1"]
)
def test_cache_policy_none_keeps_nothing_and_gives_the_same_relevance(rules):
    graph = relgraph.load_architecture("c3d-tiny", seed=6)
    clips = preprocessed_clips(graph, 2, seed=8)
    cached = relgraph.explain(graph, clips, rules=rules)
    assert graph.cache  # the default policy memoises W⁺ and the like
    graph.cache_policy = "none"
    assert not graph.cache  # setting the policy drops what was kept
    uncached = relgraph.explain(graph, clips, rules=rules)
    assert not graph.cache
    torch.testing.assert_close(uncached, cached, rtol=0, atol=0)


def test_unknown_cache_policy_is_a_graph_error():
    graph = relgraph.load_architecture("c3d-tiny", init="none")
    with pytest.raises(GraphError, match="cache_policy must be one of 'weights', 'none'"):
        graph.cache_policy = "all"
