"""Frozen clips without redundant work (``relgraph.methods.frozen``) against the plain path.

The reference is ``explain_with_rules`` on the full frozen clip (the frame repeated ``T``
times): every slice computed, no plan. The shortcut must give the same relevance (every slice,
or the one wanted slice), logits and targets, to 1e-5 of the relevance's peak in float32 and
1e-12 in float64, on every shipped architecture and on generated graphs with every preset.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from relgraph.rules import preset, preset_names
from strategies import graph_cases, one_torch_thread  # noqa: F401

import relgraph
from relgraph.engine.graph import shipped_architectures
from relgraph.engine.reverse import explain_with_rules, explanation_with_rules, resolve_rules
from relgraph.errors import RelgraphError
from relgraph.methods.frozen import explain_frozen, frozen_forward, frozen_plan, wanted_slices

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
PRESETS = sorted(name for name in preset_names() if name != "base")
#: what a shipped architecture is shrunk to where its YAML has the parameter (dropped from
#: the end, one at a time, where the model does not compile with them)
#: attention mixes every frame: discriminative explains their frozen clips on the plain path
#: (tests/test_transformers.py checks it against explain)
TRANSFORMERS = ("videomae", "vivit", "timesformer")
SMALL = {"size": 16, "width": 2, "hidden": 16, "frames": 8}
#: a model with more input values per clip is checked once, in float32, at full size
SMALL_INPUT = 200_000


def small_graph(name: str, dtype: torch.dtype | None) -> relgraph.Graph:
    """The architecture with its size parameters made small where it declares them (and it
    still compiles with them); the full C3D has none and is checked at full size. ``None``:
    the structure alone, no weights."""
    declared = relgraph.load_architecture(name, init="none").params
    overrides = {k: v for k, v in SMALL.items() if k in declared and v < declared[k]}
    while True:
        try:
            if dtype is None:
                return relgraph.load_architecture(name, init="none", **overrides)
            return relgraph.load_architecture(name, dtype=dtype, seed=7, **overrides)
        except RelgraphError:
            if not overrides:
                raise
            overrides.popitem()  # too small for this architecture: drop one override


def frames_for(graph: relgraph.Graph, batch: int, dtype: torch.dtype) -> torch.Tensor:
    channels, _, *spatial = graph.input_shape
    generator = torch.Generator().manual_seed(5)
    return (torch.rand((batch, channels, *spatial), generator=generator) * 255 - 100).to(dtype)


def frozen_of(frames: torch.Tensor, length: int) -> torch.Tensor:
    """The full frozen clips, built here without relgraph: the frame ``length`` times."""
    return torch.stack([frames] * length, dim=2)


def assert_matches_plain(graph, frames, node_rules, seed, dtype, wanted, target="auto"):
    length = graph.input_shape[1]
    plain = explanation_with_rules(
        graph, frozen_of(frames, length), node_rules, target, seed, node_relevance=True
    )
    ours = explain_frozen(graph, frames, node_rules, target, seed, wanted=wanted)
    tolerance = TOLERANCE[dtype]
    scale = plain.relevance.abs().amax().item()  # 0 where no relevance flows: ours must be 0
    torch.testing.assert_close(ours.target, plain.target)
    out_scale = plain.output.abs().amax().item()
    torch.testing.assert_close(
        ours.output, plain.output, rtol=tolerance, atol=tolerance * out_scale
    )
    if wanted is None:
        torch.testing.assert_close(
            ours.relevance, plain.relevance, rtol=tolerance, atol=tolerance * scale
        )
        torch.testing.assert_close(
            ours.lost_fraction, plain.lost_fraction, rtol=tolerance, atol=100 * tolerance
        )
        return
    for row, t in enumerate(wanted):
        torch.testing.assert_close(
            ours.relevance[row, :, t],
            plain.relevance[row, :, t],
            rtol=tolerance,
            atol=tolerance * scale,
        )
        others = torch.ones(length, dtype=torch.bool)
        others[t] = False
        assert not ours.relevance[row, :, others].any()  # only the wanted slice is computed


# --------------------------------------------------------------------------- shipped models


def _is_big(name: str) -> bool:
    structure = small_graph(name, None)
    return (
        structure.num_parameters() > 10_000_000
        or torch.Size(structure.input_shape).numel() > SMALL_INPUT
    )


def _cases() -> list:
    cases = []
    for name in shipped_architectures():
        if name in TRANSFORMERS:
            continue
        marks = ()
        if name == "s3d":
            # Full-size S3D in float32: the shortcut's slice 0 is 1.5e-4 (relative L2) from the
            # float64 relevance, the plain float32 path 2.3e-5, so the "within 2x of plain"
            # bar fails. In float64 the shortcut equals the plain path to 9e-17 at the same
            # size, so this is float32 rounding on 77 folded layers, not a wrong slice; left
            # visible until the float32 accuracy of the shortcut on deep nets is looked into.
            marks = pytest.mark.xfail(
                reason="float32 rounding of the shortcut on full-size S3D exceeds 2x the plain "
                "path's (float64: exact to 9e-17)",
                strict=True,
            )
        cases.append(pytest.param(name, torch.float32, id=f"{name}-float32", marks=marks))
        if not _is_big(name):  # a full-size model is checked once (float32 and float64)
            cases.append(pytest.param(name, torch.float64, id=f"{name}-float64"))
    return cases


@pytest.mark.parametrize(("name", "dtype"), _cases())
def test_every_shipped_architecture_gives_the_plain_relevance(name, dtype):
    graph = small_graph(name, dtype)
    _, node_rules, seed = resolve_rules(graph, None, None, None)
    length = graph.input_shape[1]
    if _is_big(name):
        full_size_against_float64(graph, node_rules, seed)
        return
    frames = frames_for(graph, 3, dtype)
    assert_matches_plain(graph, frames, node_rules, seed, dtype, [0, length // 2, length - 1])
    assert_matches_plain(graph, frames, node_rules, seed, dtype, None)


def full_size_against_float64(graph, node_rules, seed):
    """A full-size model in float32. Its plain float32 relevance is itself only ~1e-4 from the
    float64 one (measured on C3D with random weights: 3e-4 of the peak, 8e-5 in relative L2;
    zβ's cancellations), so 1e-5 to the plain float32 path is not a meaningful bar there. Both
    are compared with the float64 plain relevance: the shortcut must be as close to it as the
    plain float32 path is (relative L2, within a factor 2), and the logits and targets equal."""
    length = graph.input_shape[1]
    frames = frames_for(graph, 1, torch.float32)
    plain = explain_with_rules(graph, frozen_of(frames, length), node_rules, "auto", seed)
    output = graph.forward(frozen_of(frames, length)).output
    one = explain_frozen(graph, frames, node_rules, "auto", seed, wanted=[0])
    every = explain_frozen(graph, frames, node_rules, "auto", seed)
    torch.testing.assert_close(one.output, output, rtol=1e-5, atol=1e-5 * output.abs().max())
    assert int(one.target) == int(output.argmax())
    graph.to(dtype=torch.float64)
    _, rules64, _ = resolve_rules(graph, None, None, None)
    double = frozen_of(frames.double(), length)
    reference = explain_with_rules(graph, double, rules64, one.target, seed).float()

    def distance(a, b):
        return ((a - b).norm() / b.norm()).item()

    first_plain = distance(plain[:, :, 0], reference[:, :, 0])
    assert distance(one.relevance[:, :, 0], reference[:, :, 0]) <= 2 * first_plain + 1e-6
    assert not one.relevance[:, :, 1:].any()
    every_plain = distance(plain, reference)
    assert distance(every.relevance, reference) <= 2 * every_plain + 1e-6
    assert every_plain < 1e-3  # the plain float32 path itself is this close


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("arch", ["c3d-tiny", "resnet-tiny"])
def test_every_preset_gives_the_plain_relevance(arch, name):
    graph = small_graph(arch, torch.float64)
    _, node_rules, seed = resolve_rules(graph, name, "c3d-ucf101", None)
    frames = frames_for(graph, 2, torch.float64)
    length = graph.input_shape[1]
    assert_matches_plain(graph, frames, node_rules, seed, torch.float64, [1, length - 2])
    assert_matches_plain(graph, frames, node_rules, "logit", torch.float64, None, target=[0, 1])


# --------------------------------------------------------------------------- generated graphs

PROPERTY = settings(max_examples=25, deadline=None)


@pytest.mark.parametrize("name", PRESETS)
@PROPERTY
@given(
    case=graph_cases(dims=(1, 2, 3), channels=3, first_conv=True),
    batch=st.integers(1, 3),
    data=st.data(),
)
def test_generated_graphs_give_the_plain_relevance(name, case, batch, data):
    graph = case.build()
    _, node_rules, seed = resolve_rules(graph, preset(name), "c3d-ucf101", None)
    generator = torch.Generator().manual_seed(case.seed)
    channels, length, *spatial = case.input_shape
    frames = torch.randn((batch, channels, *spatial), generator=generator, dtype=torch.float64)
    slices = st.lists(st.integers(0, length - 1), min_size=batch, max_size=batch)
    wanted = data.draw(st.none() | slices)
    assert_matches_plain(graph, frames, node_rules, seed, torch.float64, wanted)


@PROPERTY
@given(case=graph_cases(dims=(1, 2, 3)), data=st.data())
def test_generated_graphs_with_any_first_layer_give_the_plain_relevance(case, data):
    graph = case.build()
    _, node_rules, seed = resolve_rules(graph, "epsilon-alpha2-beta1", None, None)
    channels, length, *spatial = case.input_shape
    frames = torch.randn((2, channels, *spatial), dtype=torch.float64)
    wanted = data.draw(st.lists(st.integers(0, length - 1), min_size=2, max_size=2))
    assert_matches_plain(graph, frames, node_rules, seed, torch.float64, wanted)


@pytest.mark.parametrize("wanted", [None, [0], [1]])
def test_a_padded_pool_over_a_crop_shorter_than_its_window(wanted):
    # found by the property above: a temporal avg pool (window 2, stride 2, padding 1) whose
    # needed output reads one slice of its input; torch's pools refuse an input shorter than
    # the window even with padding, so the crop is widened (before: a RelgraphError)
    spec = {
        "name": "padded-pool",
        "input": {"name": "input", "shape": [3, 2, 2, 2]},
        "nodes": [
            {
                "name": "conv1",
                "op": "conv3d",
                "out_channels": 1,
                "kernel_size": [2, 1, 1],
                "stride": [2, 1, 1],
                "padding": [1, 0, 0],
            },
            {"name": "conv2", "op": "conv3d", "out_channels": 1, "kernel_size": 1},
            {"name": "concat", "op": "concat", "inputs": ["conv2", "conv1"]},
            {
                "name": "pool",
                "op": "avgpool3d",
                "kernel_size": [2, 1, 1],
                "stride": [2, 1, 1],
                "padding": [1, 0, 0],
                "count_include_pad": False,
            },
            {"name": "flatten", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 2},
        ],
        "output": "fc",
    }
    graph = relgraph.architecture_from_yaml(json.dumps(spec), dtype=torch.float64, seed=0)
    _, node_rules, seed = resolve_rules(graph, preset("epsilon-alpha2-beta1"), None, None)
    frames = torch.randn(
        (1, 3, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert_matches_plain(graph, frames, node_rules, seed, torch.float64, wanted)


# --------------------------------------------------------------------------- less work


def test_the_forward_computes_each_distinct_slice_a_few_times_not_t_times():
    graph = relgraph.load_architecture("c3d", init="none")
    plans = frozen_plan(graph)
    full = compact = 0
    for node in graph.order[1:]:
        plan = plans[node]
        if plan.out is None:
            continue
        per_slice = torch.Size(graph.graph.nodes[node]["shape"]).numel() // plan.out.length
        full += plan.out.length * per_slice
        compact += plan.out.compact_length * per_slice
        if plan.kind == "window" and plan.out.run > plan.span + plan.stride:
            # a long constant run is cut to a few slices
            assert plan.out.compact_length < plan.out.length
    assert compact < 0.4 * full  # most of C3D's activations lie in its early, long layers


def test_the_compact_activations_are_the_full_ones_with_the_run_cut():
    graph = small_graph("resnet-tiny", torch.float64)
    frames = frames_for(graph, 2, torch.float64)
    acts, plans = frozen_forward(graph, frames)
    full = graph.forward(frozen_of(frames, graph.input_shape[1])).activations
    for node in graph.order[1:]:
        layout = plans[node].out
        if layout is None:
            torch.testing.assert_close(acts[node], full[node])
            continue
        positions = [layout.full_position(i) for i in range(layout.compact_length)]
        expected = full[node].index_select(layout.axis, torch.tensor(positions))
        torch.testing.assert_close(acts[node], expected, rtol=1e-12, atol=1e-12)


def test_ops_that_lose_the_time_axis_end_the_shortcut():
    graph = relgraph.load_architecture("resnet-tiny", init="none")
    plans = frozen_plan(graph)
    assert plans["gap"].kind == "end"  # adaptive pool over time
    assert plans["flatten"].out is None and plans["fc"].out is None
    assert plans["res_add"].kind == "merge" and plans["join"].kind == "merge"


def test_the_wanted_slice_follows_reduce_and_normalize():
    assert wanted_slices("first", "none", [3, 5]) == [0, 0]
    assert wanted_slices("same", "none", [3, 5]) == [3, 5]
    # maxabs and sum scale by a statistic over every slice; mean and sum read every slice
    assert wanted_slices("first", "maxabs", [3]) is None
    assert wanted_slices("same", "sum", [3]) is None
    assert wanted_slices("mean", "none", [3]) is None


# --------------------------------------------------------------------------- discriminative


@pytest.mark.parametrize("normalize", ["maxabs", "none"])
@pytest.mark.parametrize("reduce", ["first", "same", "mean", "sum"])
def test_discriminative_with_and_without_the_shortcut_agree(reduce, normalize):
    graph = small_graph("c3d-tiny", torch.float64)
    generator = torch.Generator().manual_seed(2)
    clip = torch.rand((2, *graph.input_shape), generator=generator, dtype=torch.float64) * 200
    kwargs = {"reduce": reduce, "normalize": normalize, "batch_size": 3, "progress": False}
    fast = relgraph.discriminative(graph, clip, **kwargs)
    slow = relgraph.discriminative(graph, clip, frozen_shortcut=False, **kwargs)
    assert fast.options["frozen_shortcut"] and not slow.options["frozen_shortcut"]
    for field in ("spatiotemporal", "spatial", "temporal", "frozen_output"):
        torch.testing.assert_close(
            getattr(fast, field), getattr(slow, field), rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(fast.frozen_predictions, slow.frozen_predictions)
    if wanted_slices(reduce, normalize, [0]) is None:
        scale = slow.frozen_relevance.abs().amax().item()
        torch.testing.assert_close(
            fast.frozen_relevance, slow.frozen_relevance, rtol=1e-12, atol=1e-12 * scale
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_quotient_beyond_the_format_makes_the_shortcut_check_every_quotient(dtype, monkeypatch):
    # z ≈ 0.04 at the linear layer and a seed of 0.9 × the format's largest number: R / z
    # overflows. The first pass leaves it; its relevance is not finite, so a second pass
    # checks every quotient and hands on 0, as explain does on the full frozen clips
    graph = relgraph.architecture_from_yaml(
        "input: {shape: [1, 4, 2, 2]}\nnodes:\n"
        "  - {name: conv, op: conv3d, out_channels: 1, kernel_size: [3, 1, 1],"
        " padding: [1, 0, 0]}\n"
        "  - {name: flat, op: flatten}\n"
        "  - {name: fc, op: linear, out_features: 1, bias: false}\n",
        dtype=dtype,
    )
    graph.tensors("conv")["weight"] = torch.ones(1, 1, 3, 1, 1, dtype=dtype)
    graph.tensors("conv")["bias"] = torch.zeros(1, dtype=dtype)
    graph.tensors("fc")["weight"] = torch.ones(1, 16, dtype=dtype)
    frames = torch.full((1, 1, 2, 2), 1e-3, dtype=dtype)
    node_rules = resolve_rules(graph, "epsilon-plus", None, None)[1]
    huge = torch.full((1, 1), 0.9 * torch.finfo(dtype).max, dtype=dtype)
    passes = []
    one_pass = relgraph.methods.frozen._explain_frozen
    monkeypatch.setattr(
        relgraph.methods.frozen, "_explain_frozen", lambda *a: passes.append(1) or one_pass(*a)
    )
    ours = explain_frozen(graph, frames, node_rules, 0, huge, wanted=[0])
    plain = explanation_with_rules(
        graph, frozen_of(frames, 4), node_rules, 0, huge, node_relevance=True
    )
    assert len(passes) == 2
    assert torch.equal(plain.relevance, torch.zeros_like(plain.relevance))
    assert torch.equal(ours.relevance, plain.relevance)
    passes.clear()
    explain_frozen(graph, frames, node_rules, 0, torch.ones((1, 1), dtype=dtype), wanted=[0])
    assert len(passes) == 1
