"""Lost relevance (``Explanation.lost``, ``lost_fraction``) and explanations that keep only
what a caller reads (``relgraph.explanation``).

References: the relevance a node keeps is read off a known construction (a unit whose z is
exactly 0), or off the node relevances of ``node_relevance=True`` summed here, never off ``lost``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from relgraph.rules import Combine, Epsilon, WinnerTakeAll, ZPlus, preset

import relgraph

#: the module (``relgraph.methods.discriminative`` is also the function's name on the package)
discriminative_module = importlib.import_module("relgraph.methods.discriminative")

DTYPE = torch.float64


def linear_graph(weight: torch.Tensor, bias: bool = False) -> relgraph.Graph:
    out_features, in_features = weight.shape
    graph = relgraph.architecture_from_yaml(
        f"input: {{shape: [{in_features}]}}\nnodes:\n"
        f"  - {{name: fc, op: linear, out_features: {out_features}, bias: {str(bias).lower()}}}\n",
        dtype=DTYPE,
    )
    graph.tensors("fc")["weight"].copy_(weight)
    return graph


@pytest.mark.parametrize(
    "rule", [ZPlus(), ZPlus(stabilizer="epsilon", epsilon=0.0), Epsilon(epsilon=0.0)], ids=repr
)
def test_a_unit_whose_z_is_zero_loses_exactly_its_relevance(rule):
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand((4, 5), generator=generator, dtype=DTYPE) + 0.1
    weight[2] = 0.0  # unit 2: z = 0 for every input
    graph = linear_graph(weight)
    x = torch.rand((3, 5), generator=generator, dtype=DTYPE) + 0.1
    seed = torch.rand((3, 4), generator=generator, dtype=DTYPE) + 0.5
    explanation = relgraph.explanation(graph, x, 0, {"fc": rule}, seed)
    torch.testing.assert_close(explanation.lost["fc"], seed[:, 2])
    torch.testing.assert_close(explanation.lost_fraction, seed[:, 2] / seed.sum(1))


def test_the_stabiliser_and_the_bias_lose_what_the_formula_says():
    """LRP-ε on one linear layer: R_in sums to Σ_j R_j·(z_j − b_j)/(z_j + ε·sign z_j)."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn((3, 4), generator=generator, dtype=DTYPE)
    graph = linear_graph(weight, bias=True)
    bias = torch.randn(3, generator=generator, dtype=DTYPE)
    graph.tensors("fc")["bias"].copy_(bias)
    x = torch.randn((2, 4), generator=generator, dtype=DTYPE)
    seed = torch.randn((2, 3), generator=generator, dtype=DTYPE)
    epsilon = 0.3
    rule = Epsilon(epsilon=epsilon)
    explanation = relgraph.explanation(graph, x, 0, {"fc": rule}, seed)
    z = x @ weight.T + bias
    handed_on = (seed * (z - bias) / (z + epsilon * torch.where(z >= 0, 1.0, -1.0))).sum(1)
    torch.testing.assert_close(explanation.lost["fc"], seed.sum(1) - handed_on)


def c3d_tiny(bias_free: bool) -> relgraph.Graph:
    graph = relgraph.load_architecture("c3d-tiny", dtype=DTYPE, size=16, width=2, hidden=8)
    if bias_free:
        for node in graph.order:
            if "bias" in graph.tensors(node):
                graph.tensors(node)["bias"].zero_()
    return graph


def clip(graph: relgraph.Graph, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    return torch.randn((batch, *graph.input_shape), generator=generator, dtype=DTYPE)


def test_a_conserving_composite_loses_nothing():
    graph = c3d_tiny(bias_free=True)
    composite = preset("base").override(ops=["conv*", "linear"], rule=ZPlus())
    explanation = relgraph.explanation(graph, clip(graph), "auto", composite)
    for node, lost in explanation.lost.items():
        torch.testing.assert_close(lost, torch.zeros_like(lost), atol=1e-12, rtol=0, msg=node)
    torch.testing.assert_close(
        explanation.lost_fraction, torch.zeros(2, dtype=DTYPE), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("rules", ["epsilon-plus", "epsilon-alpha2-beta1"])
def test_lost_is_each_nodes_relevance_minus_what_reached_its_input(rules):
    graph = c3d_tiny(bias_free=False)
    x = clip(graph) * 50
    full = relgraph.explanation(graph, x, "auto", rules, "logit", node_relevance=True)
    slim = relgraph.explanation(graph, x, "auto", rules, "logit")
    assert slim.node_relevance == {}
    for name in ("output", "target", "output_relevance", "relevance"):
        torch.testing.assert_close(getattr(slim, name), getattr(full, name))
    assert set(slim.lost) == set(graph.order[1:])

    def total(t):
        return t.reshape(t.shape[0], -1).sum(1)

    for node in graph.order[1:]:  # c3d-tiny is a chain: one input per node
        (pred,) = graph.inputs_of(node)
        expected = total(full.node_relevance[node]) - total(full.node_relevance[pred])
        torch.testing.assert_close(slim.lost[node], expected, atol=1e-12, rtol=1e-9, msg=node)
    seed_total = total(full.output_relevance)
    expected_fraction = (seed_total - total(full.relevance)) / seed_total
    torch.testing.assert_close(slim.lost_fraction, expected_fraction, atol=1e-12, rtol=1e-9)


def test_lost_fraction_is_zero_where_the_seed_sums_to_zero():
    graph = linear_graph(torch.ones(2, 3, dtype=DTYPE))
    x = torch.ones(1, 3, dtype=DTYPE)
    seed = torch.tensor([[1.0, -1.0]], dtype=DTYPE)
    explanation = relgraph.explanation(graph, x, 0, {"fc": ZPlus()}, seed)
    assert explanation.lost_fraction.tolist() == [0.0]


def test_bfloat16_totals_are_summed_in_float32():
    graph = c3d_tiny(bias_free=False).to(dtype=torch.bfloat16)
    explanation = relgraph.explanation(
        graph, clip(graph).to(torch.bfloat16), "auto", "epsilon-plus"
    )
    assert all(lost.dtype == torch.float32 for lost in explanation.lost.values())
    assert explanation.lost_fraction.shape == (2,)
    assert torch.isfinite(explanation.lost_fraction).all()


def test_discriminative_reports_lost_fractions_and_keeps_no_node_relevance(monkeypatch):
    graph = c3d_tiny(bias_free=False)
    x = clip(graph) * 50
    calls = []
    original = discriminative_module.explanation_with_rules

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(discriminative_module, "explanation_with_rules", spy)
    result = relgraph.discriminative(graph, x, rules="epsilon-plus", batch_size=8)
    assert calls and not any(kwargs.get("node_relevance") for kwargs in calls)
    frames = graph.input_shape[1]
    assert result.lost_fraction.shape == (2,)
    assert result.frozen_lost_fraction.shape == (2, frames)
    # onehot seeds sum to 1: the lost fraction is 1 − Σ R_in
    torch.testing.assert_close(
        result.lost_fraction, 1 - result.relevance.sum((1, 2, 3, 4)), atol=1e-12, rtol=1e-9
    )
    torch.testing.assert_close(
        result.frozen_lost_fraction,
        1 - result.frozen_relevance.sum((2, 3, 4, 5)),
        atol=1e-12,
        rtol=1e-9,
    )
    assert (result.lost_fraction.abs() > 1e-6).all()  # biases and ε: something is lost


def test_combined_winner_take_all_on_c3d_conserves_through_the_pools():
    graph = c3d_tiny(bias_free=True)
    composite = (
        preset("base")
        .override(ops=["conv*", "linear"], rule=ZPlus())
        .override(ops="maxpool*", rule=Combine([(1.0, WinnerTakeAll())]))
    )
    explanation = relgraph.explanation(graph, clip(graph), 0, composite)
    for node in graph.order[1:]:
        if node.startswith("pool"):
            torch.testing.assert_close(
                explanation.lost[node], torch.zeros(2, dtype=DTYPE), atol=1e-12, rtol=0
            )
