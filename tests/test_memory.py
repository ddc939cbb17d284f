"""The memory mode (``graph.cache_policy = "none"``) changes no result.

It runs big affine maps a slice of channels at a time (``sliced_map``, ``sliced_adjoint``),
makes W⁺ slice by slice (``Lazy``), forms ``s = R / z`` in the memory of ``z`` or of the
relevance (``Policy.divide``), and hands freed memory back after each node.
The references are the default mode's results (whole maps, nothing overwritten) and the ops'
own maps; slices are made tiny here so that every path runs on small graphs. Peak memory is
measured by ``benchmarks/speed.py --only-memory``, not asserted here.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relgraph.rules import (
    AlphaBeta,
    Combine,
    Epsilon,
    Flat,
    Gamma,
    NodeContext,
    Pass,
    Proportional,
    Split,
    Uniform,
    WinnerTakeAll,
    WSquare,
    ZBeta,
    ZPlus,
)
from relgraph.rules import numerics as rule_numerics
from relgraph.rules import slicing as rule_slicing
from relgraph.rules.numerics import Stabilizer, positive
from relgraph.rules.slicing import Lazy, sliced_adjoint, sliced_map
from strategies import graph_cases, one_torch_thread  # noqa: F401

import relgraph
from relgraph.engine import hostmemory
from relgraph.engine.hostmemory import release_freed

AFFINE = [
    ZPlus(),
    Epsilon(epsilon=0.0),
    Epsilon(epsilon=1e-3, bias=False),
    AlphaBeta(alpha=2.0, beta=1.0),
    Gamma(gamma=0.25),
    ZBeta(low=-6.0, high=6.0),
    Flat(),
    WSquare(),
    Combine([(0.5, ZPlus()), (0.5, Gamma(gamma=1.0))]),
]


@pytest.fixture
def tiny_slices(monkeypatch):
    """Slices of one or two channels and of one position along the first spatial axis, and
    quotient pieces of 7 elements: every sliced and
    in-place path runs, with uneven last pieces, on graphs of a few channels."""
    monkeypatch.setattr(rule_slicing, "SLICE_BYTES", 1)
    monkeypatch.setattr(rule_slicing, "SLICE_ALIGN", 2)
    monkeypatch.setattr(rule_slicing, "SLICE_ROWS", 1)
    monkeypatch.setattr(rule_numerics, "CHUNK", 7)


def rules_for(graph: relgraph.Graph, affine) -> dict:
    rules = {}
    for node in graph.order[1:]:
        capabilities = graph.op(node).capabilities
        if "affine" in capabilities:
            rules[node] = affine
        elif "max_route" in capabilities:
            rules[node] = WinnerTakeAll()
        elif "window" in capabilities:
            rules[node] = Uniform()
        elif "split" in capabilities:
            rules[node] = Split()
        else:
            rules[node] = Pass()
    return rules


def explain_both(graph, x, rules, explain=None):
    """The default mode's result, then the memory mode's (``explain``: the function to run,
    by default ``relgraph.explain_with_rules``)."""
    explain = explain or relgraph.explain_with_rules
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zβ bounds that hidden activations pass
        graph.cache_policy = "weights"
        default = explain(graph, x.clone(), rules, 0, "onehot")
        graph.cache_policy = "none"
        low_memory = explain(graph, x.clone(), rules, 0, "onehot")
    return default, low_memory


def assert_same(actual, expected, dtype):
    """Equal up to 1e-6 (float32) or 1e-12 (float64) of the peak; on CPU they are in fact
    bit-identical (see docs/benchmarks/memory.md)."""
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    peak = max(float(expected.abs().max()), 1e-30)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * peak)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
# the fixture only sets module constants, the same for every drawn example
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    case=graph_cases(max_blocks=3, homogeneous=True),
    affine=st.sampled_from(AFFINE),
    max_pool=st.sampled_from([WinnerTakeAll(), Proportional()]),
)
def test_memory_mode_gives_the_default_modes_relevance(tiny_slices, dtype, case, affine, max_pool):
    graph = case.build(dtype)
    rules = rules_for(graph, affine)
    rules.update({n: max_pool for n, r in rules.items() if isinstance(r, WinnerTakeAll)})
    x = case.inputs(3, dtype)
    default, low_memory = explain_both(graph, x, rules, relgraph.explanation_with_rules)
    if dtype == torch.float32:
        # Drawn graphs can be ill-conditioned for ε (z a small difference of large terms: CI
        # drew one whose relevance peaks at 210 for a seed of 1), and there a different but
        # equally exact float32 summation order moves R by far more than 1e-6 of its peak. So
        # float32 is held to the default mode's own rounding error, measured against the same
        # graph in float64; float64 checks the logic at 1e-12.
        exact_graph = case.build(torch.float32).to(dtype=torch.float64)
        exact_explanation = relgraph.explanation_with_rules(
            exact_graph, x.double(), rules, 0, "onehot"
        )
        exact = exact_explanation.relevance
        rounding = float((default.relevance.double() - exact).abs().max())
        difference = float((low_memory.relevance.double() - default.relevance.double()).abs().max())
        peak = max(float(exact.abs().max()), 1e-30)
        assert difference <= 4 * rounding + 1e-6 * peak
        assert default.lost.keys() == low_memory.lost.keys()
        for node, lost in default.lost.items():  # read before s overwrites R; same yardstick
            rounding = float((lost.double() - exact_explanation.lost[node]).abs().max())
            difference = float((low_memory.lost[node].double() - lost.double()).abs().max())
            assert difference <= 4 * rounding + 1e-6 * max(1.0, peak)
        return
    assert_same(low_memory.relevance, default.relevance, dtype)
    assert default.lost.keys() == low_memory.lost.keys()
    for node, lost in default.lost.items():  # the lost relevance is read before s overwrites R
        # a difference of totals near 0: compared on the scale of the seed (one-hot: 1)
        torch.testing.assert_close(low_memory.lost[node], lost, rtol=1e-12, atol=1e-12)


@dataclasses.dataclass
class Recorder(relgraph.rules.Rule):
    """Delegates to ``rule`` and keeps a copy of the relevance it was handed."""

    rule: relgraph.rules.Rule = dataclasses.field(default_factory=ZPlus)
    seen: dict = dataclasses.field(default_factory=dict)
    name = "recorder-example"

    @property
    def needs(self):
        return self.rule.needs

    def relevance(self, ctx, relevance):
        self.seen[ctx.node] = relevance.clone()
        return self.rule(ctx, relevance)


@pytest.mark.parametrize("policy", ["weights", "none"])
def test_node_relevance_kept_intact(tiny_slices, policy):
    """With ``node_relevance=True`` the rules must not form s in the relevance they are handed: what
    each node keeps is what its rule was handed."""
    graph = relgraph.load_architecture("c3d-tiny", seed=3)
    graph.cache_policy = policy
    x = torch.rand((2, *graph.input_shape), generator=torch.Generator().manual_seed(0))
    rules = relgraph.rules.preset("deep-taylor-paper").resolve(graph)
    seen: dict = {}
    recorded = {node: Recorder(rule, seen) for node, rule in rules.items()}
    explanation = relgraph.explanation_with_rules(
        graph, x * 255 - 102, recorded, node_relevance=True
    )
    assert seen.keys() == set(graph.order[1:])
    for node, relevance in seen.items():
        assert torch.equal(explanation.node_relevance[node], relevance), node


@pytest.mark.parametrize("rules", ["deep-taylor-paper", "epsilon-gamma-box", "epsilon-plus"])
def test_c3d_tiny_is_bit_identical_in_the_memory_mode(rules):
    """The real slice sizes, as a user runs it: on CPU nothing changes, not one bit."""
    graph = relgraph.load_architecture("c3d-tiny", seed=5)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((2, *graph.input_shape), generator=generator) * 255 - 102
    node_rules = relgraph.rules.preset(rules).resolve(graph)
    default, low_memory = explain_both(graph, x, node_rules)
    assert torch.equal(low_memory, default)


@dataclasses.dataclass
class TwinRule(relgraph.rules.Rule):
    """Hands the same tensor to both inputs of an ``add`` (the engine must then not let a
    rule overwrite either)."""

    name = "twin-example"
    requires = ("split",)
    needs = frozenset()

    shared: bool = True

    def relevance(self, ctx, relevance):
        half = relevance * 0.5
        return [half, half if self.shared else half.clone()]


def test_relevance_shared_by_two_inputs_is_never_overwritten():
    graph = relgraph.architecture_from_yaml(
        """
input: {shape: [2, 6]}
nodes:
  - {name: a, op: conv1d, out_channels: 3, kernel_size: 3, padding: 1}
  - {name: b, op: conv1d, out_channels: 3, kernel_size: 3, padding: 1}
  - {name: relu_a, op: relu, inputs: [a]}
  - {name: relu_b, op: relu, inputs: [b]}
  - {name: sum, op: add, inputs: [relu_a, relu_b]}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out_features: 2}
""",
        dtype=torch.float64,
    )
    x = torch.randn((2, 2, 6), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rules = rules_for(graph, ZPlus())
    rules["sum"] = TwinRule(shared=False)
    reference = relgraph.explain_with_rules(graph, x, rules, 0, "onehot")
    rules["sum"] = TwinRule()
    for relevance in explain_both(graph, x, rules):
        assert torch.equal(relevance, reference)


# --------------------------------------------------------------------------- pieces


def contexts(
    low_memory: bool, owned: bool = False, *, channels: int = 5, size: int = 6, seed: int = 2
) -> NodeContext:
    """A float64 conv2d node (3 → ``channels``, 3 × 3, padded) with random weights, bias and
    a batch of 2 inputs of both signs, ``size`` × ``size``, drawn from ``seed``."""
    op = relgraph.engine.ops.OPS["conv2d"](out_channels=channels, kernel_size=3, padding=1)
    op.resolve([(3, size, size)])
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "weight": torch.randn((channels, 3, 3, 3), generator=generator, dtype=torch.float64),
        "bias": torch.randn(channels, generator=generator, dtype=torch.float64),
    }
    x = torch.randn((2, 3, size, size), generator=generator, dtype=torch.float64)
    return NodeContext(
        node="conv",
        op=op,
        inputs=[x],
        input_shapes=[x.shape],
        output=op.forward([x], tensors),
        tensors=tensors,
        cache={},
        low_memory=low_memory,
        relevance_owned=owned,
    )


@pytest.mark.parametrize(
    "rule", [ZPlus(), AlphaBeta(), Epsilon(epsilon=0.0), ZBeta(low=-9.0, high=9.0), Gamma()]
)
def test_a_rule_leaves_the_relevance_alone_unless_it_owns_it(tiny_slices, rule):
    relevance = torch.rand((2, 5, 6, 6), generator=torch.Generator().manual_seed(3)).double()
    handed = relevance.clone()
    expected = rule(contexts(False), relevance)[0]
    assert torch.equal(handed, relevance)  # not owned: read, never written
    got = rule(contexts(True, owned=True), handed)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    # AlphaBeta reads the relevance twice (its last reading may reuse it) and Gamma splits it
    # first (never writes in it)
    if isinstance(rule, (ZPlus, Epsilon, ZBeta)):
        assert not torch.equal(handed, relevance)  # owned: the memory was reused


def test_combine_gives_each_part_the_relevance_unchanged():
    relevance = torch.rand((2, 5, 6, 6), generator=torch.Generator().manual_seed(5)).double()
    rule = Combine([(0.5, ZPlus()), (0.5, Epsilon(epsilon=0.0, bias=False))])
    expected = rule(contexts(False), relevance.clone())[0]
    got = rule(contexts(True, owned=True), relevance.clone())[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("owned", ["z", "numerator", "both", "neither"])
@pytest.mark.parametrize("kind", ["zero", "epsilon"])
def test_policy_divides_in_place_as_the_plain_quotient(tiny_slices, owned, kind):
    generator = torch.Generator().manual_seed(6)
    z = torch.randn((3, 4, 5), generator=generator)
    z[0, 0, :3] = torch.tensor([0.0, -0.0, 1e-39])  # zero and subnormal: shares of 0
    z[1, 1, 1] = 1e-30  # R / z overflows float32: a share of 0
    numerator = torch.randn((3, 4, 5), generator=generator) * 1e10
    stab = Stabilizer(kind, 1e-3)
    expected = stab(numerator.clone(), z.clone())
    z_copy, numerator_copy = z.clone(), numerator.clone()
    policy = contexts(False).policy
    if owned in ("z", "both"):
        policy.own(z_copy)
    if owned in ("numerator", "both"):
        policy.own(numerator_copy)
    got = policy.divide(numerator_copy, z_copy, stab)
    assert torch.equal(got, expected)
    assert torch.isfinite(got).all()
    if owned in ("numerator", "both"):
        assert got.data_ptr() == numerator_copy.data_ptr()
    elif owned == "z" and kind == "zero":
        assert got.data_ptr() == z_copy.data_ptr()
    else:
        assert torch.equal(z_copy, z) and torch.equal(numerator_copy, numerator)


def test_policy_divides_in_place_across_a_batch_of_ones_strides():
    # channels-last tensors of a batch of one differ in the batch's stride alone (one conv's
    # output against another's): the same places, so the quotient is still formed in place
    generator = torch.Generator().manual_seed(8)
    layout = torch.channels_last_3d
    z = torch.rand((1, 6, 2, 3, 4), generator=generator).contiguous(memory_format=layout)
    numerator = torch.randn((1, 6, 2, 3, 4), generator=generator).contiguous(memory_format=layout)
    numerator = numerator.as_strided(numerator.shape, (999, *numerator.stride()[1:]))
    assert numerator.stride() != z.stride()
    expected = numerator / (z + 1e-3)
    for into in ("z", "numerator"):
        z_copy, numerator_copy = z.clone(), numerator.clone()
        numerator_copy = numerator_copy.as_strided(numerator.shape, numerator.stride())
        policy = contexts(False).policy
        policy.own(z_copy if into == "z" else numerator_copy)
        got = policy.divide(numerator_copy, z_copy, Stabilizer("epsilon", 1e-3), nonnegative=True)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
        owner = z_copy if into == "z" else numerator_copy
        assert got.data_ptr() == owner.data_ptr()


def test_policy_never_writes_into_a_broadcast_denominator():
    z = torch.tensor([[2.0, 4.0]])
    numerator = torch.ones((3, 2))
    policy = contexts(False).policy
    got = policy.divide(numerator, policy.own(z), Stabilizer())
    assert got.shape == (3, 2) and torch.equal(z, torch.tensor([[2.0, 4.0]]))


def test_policy_never_writes_into_what_it_keeps():
    ctx = contexts(False, owned=True)
    kept = ctx.policy.keep("kept", lambda: ctx.policy.linear_map(ctx.x[:1], ctx.tensors["weight"]))
    again = kept.clone()
    relevance = torch.ones_like(kept)
    ctx.policy.divide(relevance, kept, Stabilizer("epsilon", 1e-3))
    assert torch.equal(kept, again) and ctx.memo("kept", lambda: None) is kept


@pytest.mark.parametrize(
    "op_type, fields, in_shape",
    [
        ("conv1d", {"out_channels": 7, "kernel_size": 3, "stride": 2, "padding": 1}, (5, 11)),
        (
            "conv2d",
            {"out_channels": 6, "kernel_size": [3, 2], "dilation": [2, 1], "padding": [2, 0]},
            (4, 9, 7),
        ),
        ("conv3d", {"out_channels": 5, "kernel_size": 3, "padding": 1, "stride": 2}, (3, 5, 6, 6)),
        ("linear", {"out_features": 9}, (13,)),
    ],
)
def test_sliced_maps_equal_the_ops_maps(tiny_slices, op_type, fields, in_shape):
    op = relgraph.engine.ops.OPS[op_type](**fields)
    op.resolve([in_shape])
    assert op.sliceable
    generator = torch.Generator().manual_seed(7)
    shapes = op.tensor_shapes([in_shape])
    weight = torch.randn(shapes["weight"], generator=generator, dtype=torch.float64)
    bias = torch.randn(shapes["bias"], generator=generator, dtype=torch.float64)
    x = torch.randn((2, *in_shape), generator=generator, dtype=torch.float64)
    for w in (weight, Lazy(weight, positive)):
        whole = w.full() if isinstance(w, Lazy) else w
        z = sliced_map(lambda part, b: op.linear_map(x, part, b), w, bias)
        torch.testing.assert_close(z, op.linear_map(x, whole, bias), rtol=1e-13, atol=1e-13)
        added = sliced_map(lambda part, b: op.linear_map(x, part, b), w, bias, add_to=z.clone())
        torch.testing.assert_close(added, 2 * z, rtol=1e-13, atol=1e-13)
        s = torch.randn_like(z)
        back = sliced_adjoint(lambda part, shape, s=s: op.adjoint(s, part, shape), w, x.shape)
        torch.testing.assert_close(back, op.adjoint(s, whole, x.shape), rtol=1e-13, atol=1e-13)


def test_grouped_convolutions_are_not_sliced():
    op = relgraph.engine.ops.OPS["conv2d"](out_channels=4, kernel_size=3, groups=2)
    op.resolve([(4, 5, 5)])
    assert not op.sliceable
    assert relgraph.engine.ops.OPS["conv2d"](out_channels=4, kernel_size=3).sliceable


def test_setting_the_memory_mode_keeps_nothing_between_explanations():
    graph = relgraph.load_architecture("c3d-tiny", seed=1)
    x = torch.rand((1, *graph.input_shape)) * 255 - 102
    graph.cache_policy = "none"
    relgraph.explain(graph, x, rules="deep-taylor-paper")
    assert not graph.cache
    release_freed()  # callable at any time, changes nothing
    assert math.isfinite(float(relgraph.explain(graph, x, rules="deep-taylor-paper").sum()))


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True], ids=["default-layout", "channels-last"])
def test_full_c3d_explanation_in_the_memory_mode(channels_last):
    """Full C3D in the memory mode: bit-identical in the default layout; channels-last (C3D's
    layout on the CPU), where oneDNN may block a slice of output channels otherwise than all
    of them, within float32 rounding of the peak."""
    graph = relgraph.load_architecture("c3d")
    graph.channels_last = channels_last
    x = torch.rand((1, *graph.input_shape), generator=torch.Generator().manual_seed(1))
    rules = relgraph.rules.preset("deep-taylor-paper").resolve(graph)
    default, low_memory = explain_both(graph, x * 255 - 102, rules)
    if channels_last:
        assert_same(low_memory, default, torch.float32)
    else:
        assert torch.equal(low_memory, default)


@pytest.mark.parametrize("reduce", ["first", "mean"])
def test_discriminative_with_the_frozen_shortcut_is_unchanged_in_the_memory_mode(reduce):
    """The frozen-clip shortcut's reverse pass (``relgraph.methods.frozen``) runs the memory mode's
    rules too."""
    graph = relgraph.load_architecture("c3d-tiny", seed=2)
    x = torch.rand((1, *graph.input_shape), generator=torch.Generator().manual_seed(3))
    results = []
    for policy in ("weights", "none"):
        graph.cache_policy = policy
        results.append(
            relgraph.discriminative(
                graph, x * 255 - 102, rules="deep-taylor-paper", reduce=reduce, progress=False
            )
        )
    default, low_memory = results
    assert torch.equal(low_memory.relevance, default.relevance)
    assert torch.equal(low_memory.frozen_relevance, default.frozen_relevance)
    assert torch.equal(low_memory.temporal, default.temporal)


def _on_the_heap(mib: int) -> bool:
    """Whether a new block of ``mib`` MiB lies in the allocator's heap, below the program
    break (glibc's ``mmap`` blocks lie far above it)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_ssize_t]
    block = torch.empty(mib * 2**18)  # float32: 4 bytes
    return block.data_ptr() < libc.sbrk(0)


@pytest.mark.skipif(
    hostmemory._libc_function("mallopt", []) is None, reason="needs glibc's mallopt"
)
def test_reuse_freed_serves_big_blocks_from_the_heap_and_then_restores_the_defaults():
    # glibc serves a block above 32 MiB that its heap has no room for with fresh mmap pages,
    # faulted in on every pass; within reuse_freed the heap grows instead, and keeps it
    assert not _on_the_heap(1024)
    with hostmemory.reuse_freed():
        assert _on_the_heap(1024)
        assert _on_the_heap(64)
    assert not _on_the_heap(1024)  # the defaults are back, and the heap trimmed
