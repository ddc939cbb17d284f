"""A z-rule is configuration: a new one, a few lines of ``ZRule.terms``, gives its formula.

References are computed another way: the convolution as a dense matrix ``M`` (its columns the
images of the unit inputs under ``torch.nn.functional.conv2d``), where ``A(x; V) = M_V x``
and ``Aᵀ(s; V) = M_Vᵀ s``, and autograd on the modified forward for the single-map form.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from relgraph.rules import RULES, NodeContext, Stabilizer, make_rule, register_rule
from relgraph.rules.zrule import (
    W_NEG,
    W_POS,
    X_NEG,
    X_POS,
    B,
    Term,
    X,
    ZRule,
    plus_gamma,
    positive_outputs,
)
from test_memory import contexts

import relgraph

EPSILON = 1e-3


@dataclass
class EpsilonGamma(ZRule):
    """LRP-ε on ``W + γW⁺``: ``R_in = x ⊙ Aᵀ(R / stab_ε(A(x; W + γW⁺) + b); W + γW⁺)``."""

    name = "epsilon-gamma-example"
    gamma: float = 0.5
    stab = Stabilizer("epsilon", EPSILON)

    def terms(self):
        return (Term(inputs=(X,), params=(plus_gamma(self.gamma, W_POS),), bias=B),)


@dataclass
class GammaUp(ZRule):
    """γ's positive side alone: outputs with y > 0 share by ``W↑ = W + γW⁺`` (x⁺) and
    ``W↓ = W + γW⁻`` (x⁻), bias-free; the others hand on nothing."""

    name = "gamma-up-example"
    gamma: float = 0.25
    stab = Stabilizer("epsilon", EPSILON)
    needs = frozenset({"inputs", "output"})

    def terms(self):
        up, down = plus_gamma(self.gamma, W_POS), plus_gamma(self.gamma, W_NEG)
        return (Term((X_POS, X_NEG), (up, down), where=positive_outputs),)


@dataclass
class PositivePart(ZRule):
    """The input's positive part through ``W⁺`` only: ``z = A(x⁺; W⁺)``,
    ``R_in = x⁺ ⊙ Aᵀ(R / stab(z); W⁺)`` (neither the sign split nor one whole map)."""

    name = "positive-part-example"
    stab = Stabilizer("epsilon", EPSILON)

    def terms(self):
        return (Term(inputs=(X_POS,), params=(W_POS,)),)


@pytest.fixture
def registered():
    """``EpsilonGamma`` registered by its name for the test, then removed."""
    register_rule(EpsilonGamma)
    yield
    RULES.pop(EpsilonGamma.name, None)


def context(low_memory: bool = False) -> NodeContext:
    return contexts(low_memory, channels=4, size=5, seed=11)


def dense_map(weight: torch.Tensor) -> torch.Tensor:
    """The convolution (padding 1) on one sample of shape (3, 5, 5) as a matrix."""
    units = torch.eye(3 * 5 * 5, dtype=weight.dtype).reshape(-1, 3, 5, 5)
    return torch.nn.functional.conv2d(units, weight, padding=1).reshape(units.shape[0], -1).T


def stab(z: torch.Tensor) -> torch.Tensor:
    return z + EPSILON * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def relevance_like(ctx: NodeContext) -> torch.Tensor:
    return torch.rand(ctx.output.shape, generator=torch.Generator().manual_seed(12)).double()


@pytest.mark.parametrize("low_memory", [False, True])
def test_a_rule_on_a_modified_weight_matches_autograd_on_the_modified_forward(
    registered, low_memory
):
    ctx = context(low_memory)
    relevance = relevance_like(ctx)
    weight, bias = ctx.tensors["weight"], ctx.tensors["bias"]
    modified = weight + 0.5 * weight.clamp(min=0)
    x = ctx.x.clone().requires_grad_(True)
    z = torch.nn.functional.conv2d(x, modified, bias, padding=1)
    (gradient,) = torch.autograd.grad(z, x, relevance / stab(z.detach()))
    expected = ctx.x * gradient
    got = make_rule({"name": "epsilon-gamma-example", "gamma": 0.5})(ctx, relevance)[0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("low_memory", [False, True])
def test_a_sign_split_rule_with_an_output_selection_matches_its_matrix_form(low_memory):
    ctx = context(low_memory)
    relevance = relevance_like(ctx)
    weight, gamma = ctx.tensors["weight"], 0.25
    m_up = dense_map(weight + gamma * weight.clamp(min=0))
    m_down = dense_map(weight + gamma * weight.clamp(max=0))
    expected = []
    for x, r, y in zip(ctx.x.flatten(1), relevance.flatten(1), ctx.output.flatten(1)):
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        s = torch.where(y > 0, r, 0.0) / stab(m_up @ x_pos + m_down @ x_neg)
        expected.append(x_pos * (m_up.T @ s) + x_neg * (m_down.T @ s))
    got = GammaUp(gamma=gamma)(ctx, relevance)[0]
    torch.testing.assert_close(
        got, torch.stack(expected).reshape(ctx.x.shape), rtol=1e-12, atol=1e-14
    )


def test_a_rule_of_other_modifiers_matches_its_matrix_form():
    ctx = context()
    relevance = relevance_like(ctx)
    m_pos = dense_map(ctx.tensors["weight"].clamp(min=0))
    expected = []
    for x, r in zip(ctx.x.flatten(1), relevance.flatten(1)):
        x_pos = x.clamp(min=0)
        expected.append(x_pos * (m_pos.T @ (r / stab(m_pos @ x_pos))))
    got = PositivePart()(ctx, relevance)[0]
    torch.testing.assert_close(
        got, torch.stack(expected).reshape(ctx.x.shape), rtol=1e-12, atol=1e-14
    )


def test_a_z_rule_runs_in_a_graph_from_yaml(registered):
    graph = relgraph.load_architecture("c3d-tiny", seed=0)
    x = torch.randn((1, *graph.input_shape), generator=torch.Generator().manual_seed(1))
    rules = {"conv*": {"name": "epsilon-gamma-example", "gamma": 0.25}}
    relevance = relgraph.explain(graph, x, target=0, rules=rules)
    assert relevance.shape == x.shape and torch.isfinite(relevance).all()
