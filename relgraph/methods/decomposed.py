"""Decomposed motion relevance: one explanation, split at the input between the clip's static
part and its moving part.

A clip ``x`` is the sum of a static part ``s`` (per pixel, the mean, first frame or median over
the clip's frames, repeated over time) and a moving part ``m = x − s``. The clip is explained
once with the ordinary rules; at each layer that reads the input, the relevance the rule hands
to ``x`` is split between ``s`` and ``m`` by their contributions. Relevance of ``m`` is the
temporal map, relevance of ``s`` the spatial map, and their sum is the ordinary explanation.

How each rule family splits (``R`` the layer's output relevance, ``A``/``Aᵀ`` its affine map
and adjoint, ``G`` the multiplier the rule applies to its input):

- ε / LRP-0: ``R_in = x ⊙ Aᵀ(R / stab(z); W)`` is linear in ``x`` once ``z`` is fixed:
  ``R_s = s ⊙ G``, ``R_m = m ⊙ G`` with ``G = Aᵀ(R / stab(z); W)``; exact (Bach et al. 2015).
- z⁺, αβ, γ: ``R_in = x⁺ ⊙ Aᵀ(s; W_p) + x⁻ ⊙ Aᵀ(s; W_n)`` is ``x ⊙ G`` with ``G`` the
  adjoint picked by the sign of each input element (``W_p`` where ``x ≥ 0``, else ``W_n``);
  the split is ``s ⊙ G`` and ``m ⊙ G``: each part is weighed by the multiplier of the sign
  the clip has there (Montavon et al. 2017).
- zβ: ``R_in = x ⊙ Aᵀ(s; W) − l ⊙ Aᵀ(s; W⁺) − h ⊙ Aᵀ(s; W⁻)``: the moving part gets
  ``m ⊙ Aᵀ(s; W)``, the static part ``s ⊙ Aᵀ(s; W)`` and the bound terms (the root point
  ``l``/``h`` is a still image).
- flat, w²: ``R_in`` does not depend on the input's values; it is split by the parts'
  magnitudes, ``R_m = R_in · |m| / (|s| + |m|)`` (all to the static part where both are 0).

Each split sums to the rule's own ``R_in`` up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from relgraph.engine.capabilities import Affine
from relgraph.engine.graph import Graph
from relgraph.errors import ArgumentError, RelgraphError
from relgraph.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    NodeContext,
    Rule,
    Stabilizer,
    WSquare,
    ZBeta,
    ZPlus,
    widened,
)

__all__ = [
    "STATIC_PARTS",
    "InputSplit",
    "default_static",
    "input_readers",
    "split_input_relevance",
    "static_part",
]

#: How the static part of a clip is formed from its frames, per pixel.
STATIC_PARTS: tuple[str, ...] = ("mean", "first", "median")
#: The static part a method takes when none is given: the median for ``revealcancel`` (chosen
#: on tuning clips of seed 7, docs/motion-methods.md), the mean for the others.
METHOD_STATIC: dict[str, str] = {"revealcancel": "median"}


def default_static(method: str, static: str | None = None) -> str:
    """``static`` where given, else ``method``'s default static part (:data:`METHOD_STATIC`,
    otherwise ``mean``)."""
    return static if static is not None else METHOD_STATIC.get(method, "mean")


def static_part(clips: torch.Tensor, static: str = "mean") -> torch.Tensor:
    """The static part ``s`` of clips ``(B, C, T, H, W)``: each pixel's ``mean``, ``median``
    or ``first`` value over the frames, repeated over the clip's ``T`` frames."""
    if static not in STATIC_PARTS:
        raise ArgumentError(f"static must be one of {', '.join(STATIC_PARTS)}, got {static!r}")
    if static == "mean":
        still = clips.mean(dim=2, keepdim=True)
    elif static == "median":
        still = clips.median(dim=2, keepdim=True).values
    else:
        still = clips[:, :, :1]
    return still.expand_as(clips).contiguous()


def input_readers(graph: Graph) -> list[str]:
    """The nodes that read the graph's input; a ``RelgraphError`` where one is not an affine
    layer with a single input (the split needs its adjoint)."""
    readers = [n for n in graph.order if graph.input in graph.inputs_of(n)]
    for node in readers:
        op = graph.op(node)
        if not isinstance(op, Affine) or len(graph.inputs_of(node)) != 1:
            line = graph.line_of(node)
            raise RelgraphError(
                f"the decomposed method splits relevance at the layers that read the input, "
                f"but '{node}' ({op.type}) is not an affine layer of one input",
                file=graph.file,
                line=line,
                node=node,
            )
    return readers


# --------------------------------------------------------------------------- the split


def _maps(ctx: NodeContext, dtype: torch.dtype):
    """``A(x; W) + b`` and ``Aᵀ(s; W)`` of the node, in ``dtype``."""
    op, shape = ctx.op, ctx.input_shapes[0]

    def forward(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
        return op.linear_map(
            x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        )

    def adjoint(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return op.adjoint(s.to(dtype), weight.to(dtype), shape)

    return forward, adjoint


def _bias_shape(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return bias.reshape(1, -1, *([1] * (like.dim() - 2)))


def _signed_multiplier(
    forward: Callable,
    adjoint: Callable,
    x: torch.Tensor,
    relevance: torch.Tensor,
    w_positive: torch.Tensor,
    w_negative: torch.Tensor,
    bias: torch.Tensor | None,
    stab: Stabilizer,
) -> torch.Tensor:
    """``G`` with ``x⁺ ⊙ Aᵀ(s; W_p) + x⁻ ⊙ Aᵀ(s; W_n) = x ⊙ G``, where
    ``z = A(x⁺; W_p) + A(x⁻; W_n) (+ b)`` and ``s = R / stab(z)``."""
    z = forward(x.clamp(min=0), w_positive) + forward(x.clamp(max=0), w_negative)
    if bias is not None:
        z = z + _bias_shape(bias.to(z.dtype), z)
    s = stab(relevance.to(z.dtype), z)
    return torch.where(x >= 0, adjoint(s, w_positive), adjoint(s, w_negative))


def split_input_relevance(
    rule: Rule,
    ctx: NodeContext,
    relevance: torch.Tensor,
    static: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R_static, R_moving)``: the relevance ``rule`` hands to the node's input ``x =
    static + moving``, split between the two parts as the module docstring says.

    Raises
    ------
    RelgraphError
        For a rule whose split is not defined (pass, proportional, a ``combine``).
    """
    x = widened(ctx.x)
    dtype = x.dtype
    static = static.to(dtype)
    moving = x - static
    forward, adjoint = _maps(ctx, dtype)
    weight, bias = ctx.weight_and_bias()
    weight = weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    relevance = relevance.to(dtype)
    positive, negative = weight.clamp(min=0), weight.clamp(max=0)

    if isinstance(rule, Epsilon):
        if rule.bias and ctx.output is not None:  # the forward's own z
            z = widened(ctx.output).to(dtype)
        else:
            z = forward(x, weight, bias if rule.bias else None)
        multiplier = adjoint(Stabilizer("epsilon", rule.epsilon)(relevance, z), weight)
        return static * multiplier, moving * multiplier
    if isinstance(rule, ZBeta):
        low, high = rule._bound(rule.low, x), rule._bound(rule.high, x)
        # the bounds' part is the same for every sample: computed for one
        offset = forward(low[:1], positive) + forward(high[:1], negative)
        if ctx.output is not None and ctx.output.dtype == dtype:  # A(x; W) = output − b
            z = (
                ctx.output - offset
                if bias is None
                else ctx.output - _bias_shape(bias, offset) - offset
            )
        else:
            z = forward(x, weight) - offset
        s = rule.stab(relevance, z)
        from_positive, from_negative = adjoint(s, positive), adjoint(s, negative)
        multiplier = from_positive + from_negative
        bounds = low * from_positive + high * from_negative
        return static * multiplier - bounds, moving * multiplier
    if isinstance(rule, ZPlus):
        b = bias.clamp(min=0) if (rule.bias and bias is not None) else None
        multiplier = _signed_multiplier(
            forward, adjoint, x, relevance, positive, negative, b, rule.stab
        )
        return static * multiplier, moving * multiplier
    if isinstance(rule, AlphaBeta):
        use = rule.bias and bias is not None
        multiplier = rule.alpha * _signed_multiplier(
            forward, adjoint, x, relevance, positive, negative,
            bias.clamp(min=0) if use else None, rule.stab,
        )  # fmt: skip
        if rule.beta:
            multiplier = multiplier - rule.beta * _signed_multiplier(
                forward, adjoint, x, relevance, negative, positive,
                bias.clamp(max=0) if use else None, rule.stab,
            )  # fmt: skip
        return static * multiplier, moving * multiplier
    if isinstance(rule, Gamma):
        up, down = weight + rule.gamma * positive, weight + rule.gamma * negative
        output = forward(x, weight, bias)
        b_up = b_down = None
        if rule.bias and bias is not None:
            b_up = bias + rule.gamma * bias.clamp(min=0)
            b_down = bias + rule.gamma * bias.clamp(max=0)
        multiplier = _signed_multiplier(
            forward, adjoint, x, torch.where(output > 0, relevance, 0.0), up, down, b_up, rule.stab
        ) + _signed_multiplier(
            forward, adjoint, x, torch.where(output < 0, relevance, 0.0), down, up, b_down,
            rule.stab,
        )  # fmt: skip
        return static * multiplier, moving * multiplier
    if isinstance(rule, (Flat, WSquare)):
        total = widened(rule(ctx, relevance)[0])
        magnitude = static.abs() + moving.abs()
        share = torch.where(magnitude > 0, moving.abs() / magnitude.clamp(min=1e-30), 0.0)
        return total - total * share, total * share
    raise RelgraphError(
        f"the decomposed method has no split for rule {rule.describe()} at '{ctx.node}' "
        "(it splits epsilon, zplus, alphabeta, gamma, zbeta, flat and wsquare)",
        node=ctx.node,
    )


class InputSplit(Rule):
    """A rule at a layer that reads the graph's input: records the split of the relevance
    ``inner`` hands to the input between the clip's static and moving parts in
    ``parts[node]``, and hands on their sum (``inner``'s own relevance, to rounding)."""

    name = "input-split"

    def __init__(self, inner: Rule, static: torch.Tensor, parts: dict[str, Any]) -> None:
        self.inner, self.static, self.parts = inner, static, parts
        self.requires = inner.requires

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.inner.needs) | {"inputs"}

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        static, moving = split_input_relevance(self.inner, ctx, relevance, self.static)
        self.parts[ctx.node] = (static, moving)
        # the parts' sum is the inner rule's R_in (to rounding): its adjoints are not run again
        return [static + moving]

    def describe(self) -> str:
        return f"input-split({self.inner.describe()})"
