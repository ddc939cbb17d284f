"""Conservation: Σ R_in = Σ R at every node and end to end, for each conserving rule.

The exceptions of the rule reference (docs/reference/rules.md) are part of the property: an output
whose denominator is zero (e.g. z⁺ = 0 because every input it sees is 0, or a window of padding
only) hands on no relevance. So at each node the test computes, independently of the rule, the
relevance the node must hand on: Σ_j R_j over the outputs j whose denominators are non-zero (per
term for αβ and γ). Where a bias stays in the denominator, the relevance lost is exactly the bias's
share Σ_j R_j·b_j/z_j. All in float64, per sample, to a relative 1e-6.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from relgraph.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Proportional,
    Rule,
    Split,
    Uniform,
    WinnerTakeAll,
    WSquare,
    ZBeta,
    ZPlus,
    preset,
)
from strategies import graph_cases, one_torch_thread  # noqa: F401

import relgraph

PROPERTY = settings(max_examples=30, deadline=None)
RELATIVE = 1e-6

#: rules for affine nodes that conserve under the conditions of docs/reference/rules.md
CONSERVING_AFFINE = {
    "zplus": ZPlus(bias=False),
    "alphabeta-2-1": AlphaBeta(alpha=2.0, beta=1.0, bias=False),
    "alphabeta-1-0": AlphaBeta(alpha=1.0, beta=0.0, bias=False),
    "zbeta": ZBeta(low=-3.0, high=3.0),
    "flat": Flat(),
    "wsquare": WSquare(),
    "epsilon-0": Epsilon(epsilon=0.0, bias=False),
    "gamma": Gamma(gamma=0.25),
}

#: rules for pools, merges and means: (max pools, average pools, add and concat, mean)
STRUCTURAL = {
    "winner-take-all, uniform, split, proportional": (
        WinnerTakeAll(),
        Uniform(),
        Split(),
        Proportional(),
    ),
    "proportional everywhere": (Proportional(), Proportional(), Proportional(), Proportional()),
    "uniform on every pool and mean": (Uniform(), Uniform(), Split(), Uniform()),
}


BASE = preset("base")


def composite_with(affine: Rule, pools=STRUCTURAL["winner-take-all, uniform, split, proportional"]):
    """``base`` with the given rules for affine nodes, pools, merges and means (sigmoid and
    SiLU keep ``pass``, the gates' ``mul`` keeps ``signal-take-all``)."""
    max_pool, avg_pool, merge, mean = pools
    return (
        BASE.override(ops=["conv*", "linear", "batchnorm*"], rule=affine)
        .override(ops="maxpool*", rule=max_pool)
        .override(ops=["avgpool*", "adaptive_avgpool*"], rule=avg_pool)
        .override(ops=["add", "concat"], rule=merge)
        .override(ops="mean", rule=mean)
    )


class Recorded(Rule):
    """Wraps a rule and records, per node, the relevance it got and what it handed on."""

    name = "recorded"

    def __init__(self, inner: Rule, log: dict) -> None:
        self.inner = inner
        self.log = log

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return self.inner.needs

    def relevance(self, ctx, relevance):
        handed_on = self.inner(ctx, relevance)
        self.log[ctx.node] = (relevance.clone(), [r.clone() for r in handed_on])
        return handed_on


def explain_recorded(graph: relgraph.Graph, x: torch.Tensor, composite):
    """``explain`` with every node's incoming and handed-on relevance recorded."""
    log: dict = {}
    rules = {n: Recorded(r, log) for n, r in composite.resolve(graph).items()}
    explanation = relgraph.explanation_with_rules(
        graph, x, rules, "auto", "onehot", node_relevance=True
    )
    return explanation, log


def per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def per_sample_abs(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).abs().sum(1)


def kept(relevance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_j R_j over the outputs j where ``mask`` holds, per sample."""
    return per_sample(torch.where(mask, relevance, 0.0))


# --------------------------------------------------------------------------- references


def relevance_handed_on(graph, node, rule, activations, relevance) -> torch.Tensor:
    """What the node must hand on, per sample, computed from the formulas of
    docs/reference/rules.md:
    Σ_j R_j over outputs with non-zero denominators (α·… − β·… for αβ)."""
    op = graph.op(node)
    inputs = [activations[p] for p in graph.inputs_of(node)]
    output = activations[node]
    name = rule.name
    if name in ("pass", "winner-take-all", "uniform", "signal-take-all") or op.type == "concat":
        return per_sample(relevance)
    if op.type == "add":  # split and proportional: R_i = x_i/Σx · R
        return kept(relevance, output != 0)
    if name == "proportional":  # a window's (or mean's) sum of |x| is zero only if all x are
        return kept(relevance, op.forward([inputs[0].abs()], {}) != 0)

    if name == "index":  # a prepended token's relevance is lost, every other entry kept
        if op.type == "prepend_token":
            return per_sample(relevance.narrow(op.dim, 1, relevance.shape[op.dim] - 1))
        return per_sample(relevance)
    if name in ("bilinear-uniform", "bilinear-constant"):  # halves or all: R where z ≠ 0
        return kept(relevance, output != 0)
    if name == "attention-constant":  # Σ v ⊙ Pᵀ(R/O) = Σ (R/O) ⊙ P v: R where O ≠ 0
        return kept(relevance, output != 0)
    if name == "attention-uniform":  # v's half of R, and the softmax rule's Σ Z ⊙ ½dS
        q, k, v = inputs
        z = q @ k.transpose(-1, -2) * op.scale
        p = torch.softmax(z, dim=-1)
        g = torch.where(output != 0, relevance / output, 0.0)
        dp = g @ v.transpose(-1, -2)
        ds = p * (dp - (p * dp).sum(-1, keepdim=True))
        return kept(relevance, output != 0) / 2 + per_sample(z * ds) / 2
    if name == "shift-share":  # the input's part x / (x + c) of R; the constant's is lost
        return per_sample(torch.where(output != 0, relevance * inputs[0] / output, 0.0))
    if name == "frozen-scale":  # Σ x ⊙ M[v ⊙ w/σ] = Σ (y − b) ⊙ v, v = R / y: the bias's share
        bias = graph.tensors(node)["bias"]
        return per_sample(torch.where(output != 0, relevance * (output - bias) / output, 0.0))

    x = inputs[0]
    weight, _ = op.weight_and_bias(graph.tensors(node))

    def A(values, w):  # the affine map without bias
        return op.linear_map(values, w)

    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
    if name == "zplus":
        return kept(relevance, A(x_pos, w_pos) + A(x_neg, w_neg) != 0)
    if name == "alphabeta":
        z_alpha = A(x_pos, w_pos) + A(x_neg, w_neg)
        z_beta = A(x_pos, w_neg) + A(x_neg, w_pos)
        return rule.alpha * kept(relevance, z_alpha != 0) - rule.beta * kept(relevance, z_beta != 0)
    if name == "zbeta":
        low, high = torch.full_like(x, rule.low), torch.full_like(x, rule.high)
        return kept(relevance, A(x, weight) - A(low, w_pos) - A(high, w_neg) != 0)
    if name == "flat":
        return kept(relevance, A(torch.ones_like(x), torch.ones_like(weight)) != 0)
    if name == "wsquare":
        return kept(relevance, A(torch.ones_like(x), weight**2) != 0)
    if name == "epsilon":
        return kept(relevance, A(x, weight) != 0)
    if name == "gamma":
        w_up, w_down = weight + rule.gamma * w_pos, weight + rule.gamma * w_neg
        z_up = A(x_pos, w_up) + A(x_neg, w_down)
        z_down = A(x_pos, w_down) + A(x_neg, w_up)
        return kept(relevance, (output > 0) & (z_up != 0)) + kept(
            relevance, (output < 0) & (z_down != 0)
        )
    raise AssertionError(f"no reference for {name}")


def assert_sums_match(actual, expected, *magnitudes, what=""):
    scale = torch.stack([*magnitudes, torch.ones_like(actual) * 1e-300]).amax(0)
    error = (actual - expected).abs()
    worst = int((error / scale).argmax())
    assert bool((error <= RELATIVE * scale).all()), (
        f"{what}: Σ R_in = {actual[worst].item()!r}, expected {expected[worst].item()!r}"
    )


def assert_every_node_conserves(graph, x, composite, skip_ops=()):
    activations = graph.forward(x).activations
    rules = composite.resolve(graph)
    _, log = explain_recorded(graph, x, composite)
    for node, (relevance, handed_on) in log.items():
        if graph.op(node).type in skip_ops:
            continue
        actual = sum(per_sample(r) for r in handed_on)
        expected = relevance_handed_on(graph, node, rules[node], activations, relevance)
        assert_sums_match(
            actual,
            expected,
            sum(per_sample_abs(r) for r in handed_on),
            per_sample_abs(relevance),
            what=f"node {node} ({rules[node]!r})",
        )


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("rule", CONSERVING_AFFINE.values(), ids=CONSERVING_AFFINE.keys())
@PROPERTY
@given(case=graph_cases(), batch=st.integers(1, 3))
def test_each_affine_rule_conserves_at_every_node_where_its_denominators_are_nonzero(
    rule, case, batch
):
    graph = case.build()
    assert_every_node_conserves(graph, case.inputs(batch), composite_with(rule))


@pytest.mark.parametrize("pools", STRUCTURAL.values(), ids=STRUCTURAL.keys())
@PROPERTY
@given(case=graph_cases(), batch=st.integers(1, 3))
def test_pool_and_merge_rules_conserve_at_every_node_where_their_denominators_are_nonzero(
    pools, case, batch
):
    graph = case.build()
    assert_every_node_conserves(graph, case.inputs(batch), composite_with(ZPlus(), pools))


@pytest.mark.parametrize("rule", CONSERVING_AFFINE.values(), ids=CONSERVING_AFFINE.keys())
@PROPERTY
@given(case=graph_cases(), batch=st.integers(1, 3))
def test_input_relevance_is_the_seed_less_what_zero_denominators_dropped(rule, case, batch):
    graph = case.build()
    x = case.inputs(batch)
    composite = composite_with(rule)
    rules = composite.resolve(graph)
    activations = graph.forward(x).activations
    explanation, log = explain_recorded(graph, x, composite)
    dropped = sum(
        per_sample(relevance)
        - relevance_handed_on(graph, node, rules[node], activations, relevance)
        for node, (relevance, _) in log.items()
    )
    assert_sums_match(
        per_sample(explanation.relevance),
        per_sample(explanation.output_relevance) - dropped,
        *(per_sample_abs(r) for r in explanation.node_relevance.values()),
        what="input",
    )


@pytest.mark.parametrize("rules", ["deep-taylor-paper", "deep-taylor-2020"])
def test_deep_taylor_on_c3d_tiny_hands_each_samples_seed_of_one_to_the_input(rules):
    graph = relgraph.load_architecture("c3d-tiny", dtype=torch.float64, seed=3)
    x = torch.rand((2, *graph.input_shape), dtype=torch.float64) * 255 - 100
    explanation = relgraph.explanation(graph, x, rules=rules, node_relevance=True)
    for node, relevance in explanation.node_relevance.items():
        torch.testing.assert_close(
            per_sample(relevance),
            torch.ones(2, dtype=torch.float64),
            rtol=RELATIVE,
            atol=0,
            msg=lambda m, node=node: f"node {node}: {m}",
        )


@PROPERTY
@given(case=graph_cases())
def test_relevance_reaching_a_node_from_several_consumers_is_summed(case):
    graph = case.build()
    explanation, log = explain_recorded(graph, case.inputs(2), composite_with(ZPlus()))
    arriving: dict[str, torch.Tensor] = {}
    for node, (_, handed_on) in log.items():
        for pred, relevance in zip(graph.inputs_of(node), handed_on):
            arriving[pred] = arriving.get(pred, 0) + relevance
    for node, relevance in arriving.items():
        torch.testing.assert_close(explanation.node_relevance[node], relevance)


def test_an_output_whose_inputs_are_all_zero_drops_its_relevance_under_zplus():
    graph = relgraph.architecture_from_yaml(
        "input: {shape: [3]}\nnodes:\n  - {name: fc, op: linear, out_features: 2}\n",
        dtype=torch.float64,
    )
    composite = BASE.override(ops="linear", rule=ZPlus())
    relevance = relgraph.explain(graph, torch.zeros(1, 3, dtype=torch.float64), 0, composite)
    assert torch.equal(relevance, torch.zeros(1, 3, dtype=torch.float64))


# --------------------------------------------------------------------------- bias


def relevance_lost(graph, node, activations, relevance, kind, epsilon=0.0):
    """Σ_j R_j·b_j/stab(z_j) (the bias's share), plus all of R_j where the denominator is 0,
    per sample, computed from the formulas of docs/reference/rules.md."""
    op = graph.op(node)
    x = activations[graph.inputs_of(node)[0]]
    weight, bias = op.weight_and_bias(graph.tensors(node))
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=x.dtype)
    shape = (1, -1, *([1] * (relevance.dim() - 2)))
    if kind == "epsilon":
        z = op.linear_map(x, weight, bias)
        sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        # with ε > 0 the ε term keeps its share too: R·(b + ε·sign z)/(z + ε·sign z)
        numerator = bias.reshape(shape).expand_as(z) + epsilon * sign
        denominator = z + epsilon * sign
    else:  # zplus with the bias on: z = A(x⁺;W⁺) + A(x⁻;W⁻) + b⁺
        b_pos = bias.clamp(min=0)
        denominator = op.linear_map(x.clamp(min=0), weight.clamp(min=0), b_pos) + op.linear_map(
            x.clamp(max=0), weight.clamp(max=0)
        )
        numerator = b_pos.reshape(shape).expand_as(denominator)
    nonzero = denominator != 0
    share = torch.where(nonzero, numerator / torch.where(nonzero, denominator, 1.0), 1.0)
    return per_sample(relevance * share)


@pytest.mark.parametrize(
    "rule, kind, epsilon",
    [
        (Epsilon(epsilon=0.0, bias=True), "epsilon", 0.0),
        (Epsilon(epsilon=0.1, bias=True), "epsilon", 0.1),
        (ZPlus(bias=True), "zplus", 0.0),
    ],
    ids=["epsilon-0", "epsilon-0.1", "zplus"],
)
@PROPERTY
@given(case=graph_cases(), batch=st.integers(1, 3))
def test_a_bias_in_the_denominator_keeps_exactly_its_share_of_the_relevance(
    rule, kind, epsilon, case, batch
):
    graph = case.build()
    x = case.inputs(batch)
    activations = graph.forward(x).activations
    _, log = explain_recorded(graph, x, composite_with(rule))
    for node, (relevance, handed_on) in log.items():
        if "affine" not in graph.op(node).capabilities:
            continue
        lost = per_sample(relevance) - per_sample(handed_on[0])
        expected = relevance_lost(graph, node, activations, relevance, kind, epsilon)
        assert_sums_match(
            lost,
            expected,
            per_sample_abs(relevance),
            per_sample_abs(handed_on[0]),
            what=f"node {node}",
        )


@pytest.mark.parametrize("preset_name", ["attnlrp", "cp-lrp"])
@settings(max_examples=8, deadline=None)
@given(case=graph_cases(dims=1, attention=True, max_blocks=2), batch=st.integers(1, 2))
def test_attention_rules_hand_on_what_their_formulas_keep_at_every_node(preset_name, case, batch):
    """Layer norm, both products of attention, position embeddings, CLS tokens, token
    slices: each node hands on the relevance its formula keeps (softmax under AttnLRP is
    not conserving by construction: its Taylor expansion's bias term is dropped)."""
    graph = case.build()
    composite = (
        preset(preset_name)
        .override(ops=["conv*", "linear", "batchnorm*"], rule=Epsilon(epsilon=0.0, bias=False))
        .override(ops=["sigmoid", "silu"], rule="pass")
        .override(ops="mul", rule="signal-take-all")
        .override(ops=["maxpool*"], rule="winner-take-all")
        .override(ops=["avgpool*", "adaptive_avgpool*"], rule="uniform")
    )
    assert_every_node_conserves(graph, case.inputs(batch), composite, skip_ops=("softmax",))
