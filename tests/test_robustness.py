"""No rule and no preset emits NaN or Inf, for any finite input (docs/reference/rules.md).

Random graphs meet the inputs that break naive divisions: all-zero inputs, dead ReLUs
(pre-activations pushed negative), huge and tiny magnitudes, exact zeros in the weights, in
float32 and float64, from both the ``onehot`` and the ``logit`` seed.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from relgraph.rules import (
    AlphaBeta,
    Combine,
    Epsilon,
    Flat,
    Gamma,
    Proportional,
    Rule,
    Uniform,
    WSquare,
    ZBeta,
    ZPlus,
    preset,
    preset_names,
)
from strategies import graph_cases, one_torch_thread  # noqa: F401

import relgraph

PROPERTY = settings(max_examples=40, deadline=None)
BASE = preset("base")
#: every shipped preset that gives affine nodes a rule (``base`` only holds structural rules)
PRESETS = {name: preset(name) for name in preset_names() if name != "base"}

#: rules for affine nodes, with both stabilisers where a rule offers the choice
AFFINE_RULES: list[Rule] = [
    Epsilon(epsilon=1e-6),
    Epsilon(epsilon=0.0, bias=True),
    Epsilon(epsilon=0.0, bias=False),
    ZPlus(),
    ZPlus(bias=True, stabilizer="epsilon"),
    AlphaBeta(alpha=2.0, beta=1.0),
    AlphaBeta(alpha=2.0, beta=1.0, bias=True, stabilizer="epsilon"),
    AlphaBeta(alpha=1.0, beta=0.0),
    Gamma(gamma=0.25),
    Gamma(gamma=0.25, stabilizer="epsilon"),
    ZBeta(low=-1.0, high=1.0),
    Flat(),
    WSquare(),
    Combine(parts=[(0.5, ZPlus()), (0.5, Epsilon(epsilon=0.0))]),
]


def composite_for(affine: Rule, proportional_pools: bool):
    composite = BASE.override(ops=["conv*", "linear", "batchnorm*"], rule=affine)
    if proportional_pools:
        composite = composite.override(ops=["*pool*", "add", "concat"], rule=Proportional())
    else:
        composite = composite.override(ops="maxpool*", rule=Uniform())
    return composite


# --------------------------------------------------------------------------- conditions


def affine_nodes(graph):
    return [n for n in graph.order if "affine" in graph.op(n).capabilities]


def all_zero_input(graph, x):
    return torch.zeros_like(x)


def dead_relus(graph, x):
    """Negative weights and biases on a positive input: every affine node that reads the input
    or a ReLU has only negative pre-activations, so every ReLU after it is dead."""
    for node in affine_nodes(graph):
        tensors = graph.tensors(node)
        if "running_mean" in tensors:  # batch norm: (x − mean)/σ·w + b < 0 for x ≪ mean
            tensors["running_mean"] = tensors["running_mean"].abs() + 1e3
            if "weight" in tensors:
                tensors["weight"] = tensors["weight"].abs()
                tensors["bias"] = -tensors["bias"].abs() - 1
        else:
            tensors["weight"] = -tensors["weight"].abs()
            if "bias" in tensors:
                tensors["bias"] = -tensors["bias"].abs() - 1
    return x.abs()


def scaled(factor_float64: float, factor_float32: float):
    def scale(graph, x):
        return x * (factor_float64 if x.dtype == torch.float64 else factor_float32)

    return scale


def zeros_in_weights(graph, x):
    """About half of every weight tensor set to exactly 0, and the first affine node all 0."""
    generator = torch.Generator().manual_seed(7)
    for index, node in enumerate(affine_nodes(graph)):
        tensors = graph.tensors(node)
        weight = tensors.get("weight")
        if weight is None:  # batch norm without affine parameters
            continue
        keep = torch.rand(weight.shape, generator=generator) < 0.5
        tensors["weight"] = torch.where(keep, weight, 0.0) if index else torch.zeros_like(weight)
    return x


def smallest_normal_input(graph, x):
    """Each sample's largest magnitude a few times the smallest normal number of its type."""
    peak = x.abs().reshape(len(x), -1).amax(1).clamp(min=1e-300).reshape(-1, *[1] * (x.dim() - 1))
    return x / peak * (4 * torch.finfo(x.dtype).tiny)


CONDITIONS = {
    "all-zero input": all_zero_input,
    "dead ReLUs": dead_relus,
    "huge input (1e30 in float64, 1e15 in float32)": scaled(1e30, 1e15),
    "tiny input (1e-30 in float64, 1e-15 in float32)": scaled(1e-30, 1e-15),
    "exact zeros in weights": zeros_in_weights,
    "input at the smallest normal magnitude": smallest_normal_input,
}


def assert_all_finite(explanation: relgraph.Explanation) -> None:
    for node, relevance in explanation.node_relevance.items():
        bad = ~torch.isfinite(relevance)
        assert not bool(bad.any()), f"node {node}: {int(bad.sum())} NaN/Inf in its relevance"


def assert_same_relevance(plain: torch.Tensor, explanation: relgraph.Explanation) -> None:
    """``explain``'s input relevance (quotients checked once, at the end) is finite and that
    of ``node_relevance=True`` (each quotient checked as it is formed), up to rounding: with every
    node's relevance kept, no rule forms its result in the relevance it was handed, so a
    convolution's adjoint may run in another memory layout and sum in another order."""
    assert torch.isfinite(plain).all()
    expected = explanation.relevance
    bound = float(expected.abs().max()) * 10 * torch.finfo(expected.dtype).eps
    torch.testing.assert_close(plain, expected, rtol=1e-4, atol=bound)


def prepared(case, condition, dtype, batch=2):
    graph = case.build(dtype)
    x = CONDITIONS[condition](graph, case.inputs(batch, dtype))
    return graph, x


DTYPES = st.sampled_from([torch.float32, torch.float64])
SEEDS = st.sampled_from(["onehot", "logit"])


@pytest.mark.parametrize("condition", CONDITIONS)
@PROPERTY
@given(
    case=graph_cases(),
    rule=st.sampled_from(AFFINE_RULES),
    proportional_pools=st.booleans(),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_no_rule_emits_nan_or_inf(condition, case, rule, proportional_pools, dtype, seed):
    graph, x = prepared(case, condition, dtype)
    composite = composite_for(rule, proportional_pools)
    explanation = relgraph.explanation(graph, x, "auto", composite, seed, node_relevance=True)
    assert_all_finite(explanation)
    # the input relevance alone is computed with the quotients checked once, at the end
    assert_same_relevance(relgraph.explain(graph, x, "auto", composite, seed), explanation)


@pytest.mark.parametrize("condition", CONDITIONS)
@PROPERTY
@given(
    # three input channels and a first convolution on the input: the per-channel zβ bounds
    # of c3d-ucf101 fit it
    case=graph_cases(dims=(1, 2, 3), channels=3, first_conv=True),
    name=st.sampled_from(sorted(PRESETS)),
    dtype=DTYPES,
    seed=SEEDS,
)
def test_no_preset_emits_nan_or_inf(condition, case, name, dtype, seed):
    graph, x = prepared(case, condition, dtype)
    explanation = relgraph.explanation(
        graph, x, "auto", PRESETS[name], seed, preprocess="c3d-ucf101", node_relevance=True
    )
    assert_all_finite(explanation)
    plain = relgraph.explain(graph, x, "auto", PRESETS[name], seed, preprocess="c3d-ucf101")
    assert_same_relevance(plain, explanation)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_preset_emits_nan_or_inf_on_c3d_tiny_with_a_zero_clip(name, dtype):
    graph = relgraph.load_architecture("c3d-tiny", dtype=dtype, size=16, width=2, hidden=8)
    x = torch.zeros((1, *graph.input_shape), dtype=dtype)
    assert_all_finite(relgraph.explanation(graph, x, rules=name, node_relevance=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", AFFINE_RULES, ids=repr)
def test_relevance_stays_finite_where_an_intermediate_share_would_overflow(rule, dtype):
    # x = (4·tiny, 0) and W = 1 into 8 outputs seeded with 1 each: R/z = 1/(4·tiny) is
    # finite, but Aᵀ(R/z) summed over 8 outputs is not; the relevance itself is (8, 0)
    graph = relgraph.architecture_from_yaml(
        "input: {shape: [2]}\nnodes:\n  - {name: fc, op: linear, out_features: 8, bias: false}\n",
        dtype=dtype,
    )
    graph.tensors("fc")["weight"] = torch.ones(8, 2, dtype=dtype)
    x = torch.tensor([[4 * torch.finfo(dtype).tiny, 0.0]], dtype=dtype)
    composite = BASE.override(ops="linear", rule=rule)
    relevance = relgraph.explain(graph, x, 0, composite, torch.ones(1, 8, dtype=dtype))
    assert torch.isfinite(relevance).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", [Epsilon(epsilon=1e-6), ZPlus(bias=True, stabilizer="epsilon")])
def test_a_quotient_beyond_the_format_makes_explain_check_every_quotient(rule, dtype, monkeypatch):
    # z = 0.25 + 0.25 and a seed of 0.9 × the format's largest number: R / z overflows. The
    # input relevance alone is computed with the quotients checked at the end: that first
    # pass is not finite, so a second checks every quotient, and gives the share 0
    # (docs/reference/rules.md)
    graph = relgraph.architecture_from_yaml(
        "input: {shape: [2]}\nnodes:\n  - {name: fc, op: linear, out_features: 1, bias: false}\n",
        dtype=dtype,
    )
    graph.tensors("fc")["weight"] = torch.ones(1, 2, dtype=dtype)
    x = torch.tensor([[0.25, 0.25]], dtype=dtype)
    composite = BASE.override(ops="linear", rule=rule)
    passes = []
    one_pass = relgraph.engine.reverse._explain_pass
    monkeypatch.setattr(
        relgraph.engine.reverse,
        "_explain_pass",
        lambda *a, **k: passes.append(1) or one_pass(*a, **k),
    )
    huge = torch.full((1, 1), 0.9 * torch.finfo(dtype).max, dtype=dtype)
    relevance = relgraph.explain(graph, x, 0, composite, huge)
    assert len(passes) == 2
    assert torch.equal(relevance, torch.zeros_like(x))
    passes.clear()  # the relevance and each node's loss checked: the same two passes
    explanation = relgraph.explanation(graph, x, 0, composite, huge)
    assert len(passes) == 2
    assert torch.equal(explanation.relevance, torch.zeros_like(x))
    assert torch.equal(explanation.lost_fraction, torch.ones(1, dtype=dtype))
    passes.clear()  # every node's relevance kept: each quotient checked in the one pass
    explanation = relgraph.explanation(graph, x, 0, composite, huge, node_relevance=True)
    assert len(passes) == 1
    assert torch.equal(explanation.relevance, torch.zeros_like(x))
    passes.clear()
    ordinary = relgraph.explain(graph, x, 0, composite, torch.ones((1, 1), dtype=dtype))
    assert len(passes) == 1  # finite: the first pass is the result
    # ε absorbs its share: R·x/(z + ε) for each input
    expected = 0.25 / (0.5 + torch.tensor(1e-6, dtype=dtype))
    torch.testing.assert_close(ordinary, torch.full_like(x, float(expected)))


@pytest.mark.parametrize("vanishing", [0.0, 1e-40, None], ids=["zero", "subnormal", "none"])
@pytest.mark.parametrize("into", [None, "numerator", "denominator"])
def test_safe_division_masks_exactly_the_vanishing_denominators(vanishing, into):
    """The safe division's quotient against ``torch.where(|z| < tiny, 0, R / z)``, with
    and without a vanishing z (the mask is skipped where a reduction finds none), formed
    anew or in either operand."""
    from relgraph.rules.numerics import safe_divide

    generator = torch.Generator().manual_seed(4)
    z = torch.randn(3, 70, generator=generator)
    if vanishing is not None:
        z[1, 5] = vanishing
    numerator = torch.randn(3, 70, generator=generator)
    tiny = torch.finfo(torch.float32).tiny
    expected = torch.where(z.abs() < tiny, 0.0, numerator / z)
    numerator, z = numerator.clone(), z.clone()
    out = {None: None, "numerator": numerator, "denominator": z}[into]
    got = safe_divide(numerator, z, out=out)
    assert torch.equal(got, expected)
    assert (got == 0).sum() == (0 if vanishing is None else 1)


@pytest.mark.parametrize("where", [None, 0, -1], ids=["none", "first-piece", "last-piece"])
@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan-elsewhere"])
def test_safe_division_of_a_large_z_checks_every_piece(where, nan):
    """A denominator larger than the pieces the vanishing check takes at a time: a vanishing
    z in the first or the last piece is masked, and a NaN in another piece hides nothing
    (the reference: ``torch.where(|z| < tiny, 0, R / z)``, its NaN shares zeroed)."""
    from relgraph.rules.numerics import VANISH_PIECE, safe_divide

    generator = torch.Generator().manual_seed(5)
    size = 2 * VANISH_PIECE + 999
    z = torch.randn(2, size, generator=generator)
    if where is not None:
        z.view(-1)[where] = 1e-40  # subnormal
    if nan:
        z[0, VANISH_PIECE + 3] = float("nan")
    numerator = torch.randn(2, size, generator=generator)
    if where is not None:
        numerator.view(-1)[where] = 1e-3  # R / z = 1e37: finite, so only the mask zeroes it
    tiny = torch.finfo(torch.float32).tiny
    expected = torch.where(z.abs() < tiny, 0.0, numerator / z).nan_to_num(nan=0.0)
    assert torch.equal(safe_divide(numerator, z), expected)
    into = numerator.clone()
    assert torch.equal(safe_divide(into, z.clone(), out=into), expected)
