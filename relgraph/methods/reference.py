"""Relevance of a clip's motion as DeepLIFT's Rescale rule explains it, with the static clip as
the reference (Shrikumar et al. 2017, "Learning important features through propagating
activation differences").

The reference is the clip's static part ``s`` (``relgraph.methods.decomposed.static_part``).
A forward pass on ``s`` keeps every node's reference activation; the engine's own reverse
pass then runs difference rules, which divide the relevance by differences ``Δz = z − z_ref``
instead of by ``z``:

- affine layers (conv, linear, an unfolded batch norm): ``R_x = Δx ⊙ Aᵀ(R / Δz; W)`` with
  ``Δz = A(Δx; W)`` (the bias cancels);
- pointwise nonlinearities, reshapes, dropout: ``R`` passes through (Rescale: the
  multiplier ``Δy / Δx`` times ``Δx`` hands all of ``R`` on);
- max pools: ``R`` goes to the winner of the clip's window where the clip's maximum is at
  least the reference's, else to the reference's winner (captum's ``DeepLift`` does the
  same); the chosen winner's ``Δ`` is then not 0 wherever the window's ``Δ`` is not, so
  nothing is lost;
- average pools and means: ``R_x = Δx ⊙ Aᵀ(R / ΣΔx)`` over each window;
- add: ``R_i = Δx_i / Σ_j Δx_j · R``; concat: ``R`` sliced back.

The seed is the target's logit difference ``f(x) − f(s)``, so that the input relevance sums to
it: every rule conserves where no ``Δz`` is zero (``Explanation.lost_fraction`` counts what a
zero ``Δz`` drops).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relgraph.engine.capabilities import Affine, MaxRouted, Reshaping, Splitting, Windowed
from relgraph.engine.graph import Graph
from relgraph.errors import RelgraphError
from relgraph.rules import NodeContext, Rule, Stabilizer, widened

__all__ = ["difference_rule", "difference_rules"]


@dataclass
class _Difference(Rule):
    """A rule that reads the reference activations of its node's inputs."""

    references: list[torch.Tensor]
    stab: Stabilizer

    def deltas(self, ctx: NodeContext) -> list[torch.Tensor]:
        return [widened(x) - widened(ref) for x, ref in zip(ctx.inputs, self.references)]


@dataclass
class DeltaAffine(_Difference):
    """``R_x = Δx ⊙ Aᵀ(R / stab(A(Δx; W)); W)``."""

    name = "delta-affine"
    requires = (Affine,)

    def relevance(self, ctx, relevance):
        (delta,) = self.deltas(ctx)
        weight = widened(ctx.weight_and_bias()[0]).to(delta.dtype)
        z = ctx.op.linear_map(delta, weight)
        s = self.stab(relevance.to(delta.dtype), z)
        return [delta * ctx.op.adjoint(s, weight, ctx.input_shapes[0])]


@dataclass
class DeltaMax(_Difference):
    """``R`` to the clip's argmax of each window where the clip's maximum is at least the
    reference's, else to the reference's argmax."""

    name = "delta-max"
    requires = (MaxRouted,)

    def relevance(self, ctx, relevance):
        (x,), (reference,) = ctx.inputs, self.references
        pooled, winners = ctx.op.forward_record([x], ctx.tensors)
        pooled_reference, reference_winners = ctx.op.forward_record([reference], ctx.tensors)
        clip_wins = pooled >= pooled_reference
        shape = ctx.input_shapes[0]
        return [
            ctx.op.max_route(x, torch.where(clip_wins, relevance, 0.0), winners, shape)
            + ctx.op.max_route(
                reference, torch.where(clip_wins, 0.0, relevance), reference_winners, shape
            )
        ]


@dataclass
class DeltaWindow(_Difference):
    """``R_x = Δx ⊙ Aᵀ(R / stab(ΣΔx))`` over each window of a pool or mean."""

    name = "delta-window"
    requires = (Windowed,)

    def relevance(self, ctx, relevance):
        (delta,) = self.deltas(ctx)
        s = self.stab(relevance.to(delta.dtype), ctx.op.window_sum(delta))
        return [delta * ctx.op.window_sum_adjoint(s, ctx.input_shapes[0])]


@dataclass
class DeltaSplit(_Difference):
    """add: ``R_i = Δx_i / stab(Σ_j Δx_j) · R``; concat: ``R`` sliced back to each input."""

    name = "delta-split"
    requires = (Splitting,)

    def relevance(self, ctx, relevance):
        deltas = self.deltas(ctx)
        return ctx.op.split(deltas, relevance.to(deltas[0].dtype), self.stab)


@dataclass
class _PassThrough(Rule):
    """Rescale at a pointwise map or a reshape: ``R`` passes through."""

    name = "rescale-pass"
    requires = (Reshaping,)
    needs = frozenset()

    def relevance(self, ctx, relevance):
        return [relevance.reshape(ctx.input_shapes[0])]


def difference_rules(
    graph: Graph, references: dict[str, torch.Tensor], epsilon: float = 0.0
) -> dict[str, Rule]:
    """The difference rule of every node, holding the reference activations of its inputs
    (``references``: every node's activation on the reference, the input's included).

    ``epsilon`` > 0 stabilises ``Δz`` as ε-LRP does (``z + ε·sign(z)``); 0 drops the
    relevance of outputs whose ``Δz`` is exactly 0 (the ``zero`` stabiliser).

    Raises
    ------
    RelgraphError
        For an op with no difference rule (a product of two activations: ``mul``).
    """
    stab = Stabilizer("epsilon", epsilon) if epsilon > 0 else Stabilizer("zero")
    return {node: difference_rule(graph, node, references, stab) for node in graph.order[1:]}


def difference_rule(
    graph: Graph, node: str, references: dict[str, torch.Tensor], stab: Stabilizer
) -> Rule:
    """The difference rule of one node (see :func:`difference_rules`).

    Raises
    ------
    RelgraphError
        For an op with no difference rule.
    """
    op = graph.op(node)
    inputs = [references[p] for p in graph.inputs_of(node)]
    if isinstance(op, Affine):
        return DeltaAffine(inputs, stab)
    if isinstance(op, MaxRouted):
        return DeltaMax(inputs, stab)
    if isinstance(op, Windowed):
        return DeltaWindow(inputs, stab)
    if isinstance(op, Splitting):
        return DeltaSplit(inputs, stab)
    if isinstance(op, Reshaping):
        return _PassThrough()
    line = graph.line_of(node)
    raise RelgraphError(
        f"the reference method has no difference rule for '{node}' ({op.type})",
        file=graph.file,
        line=line,
        node=node,
    )
