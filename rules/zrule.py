"""The z-rule base: a rule of the z-family as configuration (zennit's ``BasicHook``, over the
ops' explicit adjoints).

A z-rule (Montavon et al. 2019, "Layer-wise relevance propagation: an overview", Eq. 4 and
its variants) is a sum of terms, each

``z = Σ_k A(m_k(x); w_k(W)) + β(b)``, ``s = [sel(y)] R / stab(z)``,
``R_in += c · Σ_k m_k(x) ⊙ Aᵀ(s; w_k(W))``

with input modifiers ``m_k`` (``x``, ``x⁺``, ``x⁻``, ``1``), parameter modifiers ``w_k``
(``W⁺``, ``W + γW⁺``, ``W²``, ...), a bias modifier ``β`` (or none), a coefficient ``c`` (the
reducer: α and −β) and an optional selection of the outputs by the sign of the layer's
output ``y`` (γ). ``ZRule.terms`` gives a rule's terms; the base computes them through the
node's ``Policy`` (``relgraph.rules.policy``), with the shortcuts the modifiers allow:

- ``(x,)``: one map on the whole input; ``z`` is the layer's output where the modifiers are
  the identity (LRP-ε with its bias).
- ``(x⁺, x⁻)``: the sign split; where ``x ≥ 0`` everywhere (ReLU outputs) the ``x⁻`` part
  vanishes and is skipped, elsewhere both adjoints run as one (``NodeContext.adjoint_pair``).
- ``(1,)``: ``z = A(1; w(W))`` does not depend on the input: computed once, for one sample.
- anything else: the sum as written.

Each sample runs at the scale ``sample_scale`` picks (a power of two: the same result, no
overflow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from relgraph.engine.capabilities import Affine
from relgraph.errors import RuleError

from .context import NodeContext
from .numerics import LOW_PRECISION, Stabilizer, negative, positive, rescaled
from .registry import Rule
from .slicing import Lazy, materialized, underlying


@dataclass(frozen=True)
class Modifier:
    """A named element-wise map of an input or a parameter (``x ↦ x⁺``, ``W ↦ W + γW⁺``);
    the name keys what is derived from it in the node's memo, so two modifiers of one name
    must be the same map."""

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.apply(t)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


#: input modifiers
X = Modifier("x", _identity)
X_POS = Modifier("x⁺", positive)
X_NEG = Modifier("x⁻", negative)
ONES = Modifier("1", torch.ones_like)

#: parameter modifiers (weights and biases alike)
W = Modifier("W", _identity)
W_POS = Modifier("W⁺", positive)
W_NEG = Modifier("W⁻", negative)
W_ONES = Modifier("1", torch.ones_like)
W_SQUARED = Modifier("W²", torch.square)
B = W
B_POS = W_POS
B_NEG = W_NEG


def plus_gamma(gamma: float, part: Modifier) -> Modifier:
    """``W ↦ W + γ·part(W)`` (γ-rule: ``part`` is ``W⁺`` or ``W⁻``)."""
    return Modifier(f"W+{gamma!r}{part.name}", lambda w: w + gamma * part(w))


def positive_outputs(y: torch.Tensor) -> torch.Tensor:
    """Where the layer's output is above 0."""
    return y > 0


def negative_outputs(y: torch.Tensor) -> torch.Tensor:
    """Where the layer's output is below 0."""
    return y < 0


@dataclass(frozen=True)
class Term:
    """One term of a z-rule (see the module's docstring).

    Attributes
    ----------
    inputs
        The input modifiers ``m_k``.
    params
        The weight modifiers ``w_k``, one per input modifier.
    bias
        The bias modifier ``β`` (``None``: no bias in ``z``).
    coefficient
        ``c``, the term's weight in the sum.
    where
        The outputs that share by this term, from the layer's output ``y``: ``[sel(y)] R``
        (``None``: all).
    nonnegative
        ``z ≥ 0`` by construction (``x⁺`` meets weights ≥ 0, ``x⁻`` weights ≤ 0, the bias is
        ≥ 0): the stabiliser skips the sign test and ε is folded into the bias, so that the
        map forms ``z + ε`` itself (sums rounded as z⁺ has always rounded them).
    """

    inputs: tuple[Modifier, ...]
    params: tuple[Modifier, ...]
    bias: Modifier | None = None
    coefficient: float = 1.0
    where: Callable[[torch.Tensor], torch.Tensor] | None = None
    nonnegative: bool = False

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.params) or not self.inputs:
            raise RuleError(
                f"a term needs one weight modifier per input modifier, got "
                f"{len(self.inputs)} input and {len(self.params)} weight modifiers"
            )


@dataclass
class ZRule(Rule):
    """Base of the z-family: a subclass gives its ``terms`` and its stabiliser (``stab``)
    and inherits ``relevance``. zennit's ``BasicHook`` (input modifiers, parameter
    modifiers, gradient mapper, reducer) over the ops' explicit adjoints.

    Examples
    --------
    >>> @dataclass
    ... class PlusOnly(ZRule):  # z⁺ without the x⁻ part: for ReLU outputs
    ...     name = "plus-only-example"
    ...     stab = Stabilizer("epsilon", 1e-6)
    ...     def terms(self):
    ...         return (Term(inputs=(X_POS,), params=(W_POS,)),)
    """

    requires: ClassVar[tuple[type | str, ...]] = (Affine,)
    stab: ClassVar[Stabilizer] = Stabilizer("zero")

    def terms(self) -> tuple[Term, ...]:
        """The rule's terms, from its parameters."""
        raise NotImplementedError

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        terms = [term for term in self.terms() if term.coefficient != 0]
        readers = [i for i, term in enumerate(terms) if term.where is None]
        y = None
        if any(term.where is not None for term in terms):
            y = ctx.output
            if y is None:
                weight, bias = ctx.weight_and_bias()
                y = ctx.policy.linear_map(ctx.x, weight, bias)
        total = None
        for i, term in enumerate(terms):
            if term.where is None:
                numerator = ctx.policy.relevance(relevance, last_reader=i == readers[-1])
            else:  # a tensor of the term's own: s may be formed in it
                numerator = ctx.policy.own(torch.where(term.where(y), relevance, 0.0))
            share = term_share(ctx, numerator, term, self.stab)
            del numerator
            if term.coefficient != 1:
                share = term.coefficient * share
            total = share if total is None else total + share
        return [total]


def term_share(
    ctx: NodeContext, relevance: torch.Tensor, term: Term, stab: Stabilizer
) -> torch.Tensor:
    """``Σ_k m_k(x) ⊙ Aᵀ(s; w_k(W))`` with ``s = R / stab(Σ_k A(m_k(x); w_k(W)) + β(b))``."""
    bias = _modified_bias(ctx, term.bias)
    if term.inputs == (X,):
        return _whole_share(ctx, relevance, term, bias, stab)
    if term.inputs == (ONES,) and bias is None:
        return _input_free_share(ctx, relevance, term.params[0], stab)
    if term.inputs == (X_POS, X_NEG):
        return _signed_share(ctx, relevance, term, bias, stab)
    return _plain_share(ctx, relevance, term, bias, stab)


def _modified_bias(ctx: NodeContext, modifier: Modifier | None) -> torch.Tensor | None:
    """``β(b)``, kept with the weights; ``None`` without a bias or a bias modifier."""
    bias = ctx.weight_and_bias()[1]
    if modifier is None or bias is None:
        return None
    if modifier is B:
        return bias
    return ctx.memo(("b", modifier.name), lambda: modifier(bias))


def _weight(ctx: NodeContext, modifier: Modifier) -> torch.Tensor | Lazy:
    """``w(W)``: the node's weight itself, any other through the policy
    (``Policy.weight``: kept, or made slice by slice in the memory mode)."""
    if modifier is W:
        return ctx.weight_and_bias()[0]
    return ctx.policy.weight(modifier.name, modifier.apply)


def _with_bias(
    ctx: NodeContext,
    x: torch.Tensor,
    weight: torch.Tensor | Lazy,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """``A(x; W) + scale·b`` for an input ``x`` already multiplied by the per-sample
    ``scale``; the map adds the bias itself where it can (one pass fewer)."""
    dtype = underlying(weight).dtype
    policy = ctx.policy
    if bias is None or (scale is None and dtype not in LOW_PRECISION):
        return policy.linear_map(x, weight, bias)
    z = policy.linear_map(x, weight)
    if scale is None:  # bfloat16: the bias added to the widened z, in float32
        return policy.add(z, ctx.op.broadcast_bias(bias, z))
    return policy.add(z, ctx.op.broadcast_bias(bias, z) * scale.reshape(-1, *([1] * (z.dim() - 1))))


def _whole_share(
    ctx: NodeContext,
    relevance: torch.Tensor,
    term: Term,
    bias: torch.Tensor | None,
    stab: Stabilizer,
) -> torch.Tensor:
    """``z = A(x; w(W)) + β(b)``, ``R_in = x ⊙ Aᵀ(R / stab(z); w(W))``; ``z`` is the
    layer's output where ``w`` and ``β`` are the identity."""
    policy = ctx.policy
    weight = _weight(ctx, term.params[0])
    scale = ctx.sample_scale(ctx.x, nonnegative=ctx.known_nonnegative(0))
    x = rescaled(ctx.x, scale)
    if term.params[0] is W and term.bias is B and ctx.output is not None:
        z = policy.rescaled(ctx.output, scale)
    else:
        z = _with_bias(ctx, x, weight, bias, scale)
    s = policy.divide(relevance, z, stab, scale)
    del z, relevance
    return policy.multiply(policy.adjoint(s, weight), x)


def _input_free_share(
    ctx: NodeContext, relevance: torch.Tensor, modifier: Modifier, stab: Stabilizer
) -> torch.Tensor:
    """``R_in = Aᵀ(R / stab(A(1; V)); V)`` for ``V = w(W)`` (flat: V = 1, w²: V = W²):
    ``A(1; V)`` is the same for every sample, so it is computed once, for one sample."""
    shape = ctx.input_shapes[0]
    weight = _weight(ctx, modifier)
    policy = ctx.policy

    def denominator() -> torch.Tensor:
        like = underlying(weight)
        ones = torch.ones((1, *shape[1:]), dtype=like.dtype, device=like.device)
        return policy.linear_map(ones, weight)

    z = policy.keep((f"A(1;{modifier.name})", tuple(shape[1:])), denominator)
    return policy.adjoint(policy.divide(relevance, z, stab), weight)


def _signed_share(
    ctx: NodeContext,
    relevance: torch.Tensor,
    term: Term,
    bias: torch.Tensor | None,
    stab: Stabilizer,
) -> torch.Tensor:
    """``z = A(x⁺; W_p) + A(x⁻; W_n) (+ b)``, ``s = R / stab(z)``,
    ``R_in = x⁺ ⊙ Aᵀ(s; W_p) + x⁻ ⊙ Aᵀ(s; W_n)``: z⁺, αβ and γ. Where ``x ≥ 0`` everywhere
    (ReLU outputs) the ``x⁻`` terms vanish and are skipped; elsewhere both adjoints run as
    one where the op stacks the pair (``stack_inputs``)."""
    policy = ctx.policy
    for_positive, for_negative = term.params
    scale, nonnegative = ctx.scale_and_sign(ctx.x, nonnegative=ctx.known_nonnegative(0))
    x = rescaled(ctx.x, scale)
    w_positive = _weight(ctx, for_positive)
    # z + ε formed by the map itself, where z ≥ 0 by construction: one pass over z fewer
    dtype = underlying(w_positive).dtype
    shifted = None
    if term.nonnegative and scale is None and bias is not None:  # made once per node
        shifted = ctx.memo(
            ("bias+ε", term.bias.name, stab, dtype),
            lambda: stab.epsilon_in_bias(bias, None, dtype),
        )
    elif term.nonnegative:
        shifted = stab.epsilon_in_bias(bias, scale, dtype)
    z_bias = bias if shifted is None else shifted
    if nonnegative:
        z = _with_bias(ctx, x, w_positive, z_bias, scale)
        s = policy.divide(
            relevance, z, stab, scale, nonnegative=term.nonnegative, shifted=shifted is not None
        )
        del z, relevance
        return policy.multiply(policy.adjoint(s, w_positive), x)
    # the pair's adjoint runs on both weights at once: made whole
    w_positive, w_negative = materialized(w_positive), materialized(_weight(ctx, for_negative))
    x_pos = positive(x)
    z = _with_bias(ctx, x_pos, w_positive, z_bias, scale)
    x_neg = negative(x)  # A(x⁻; W⁻) ≥ 0 too: z + ε is still ≥ ε
    z = policy.add(z, policy.linear_map(x_neg, w_negative))
    s = policy.divide(
        relevance, z, stab, scale, nonnegative=term.nonnegative, shifted=shifted is not None
    )
    del z, relevance
    key = f"{for_positive.name}|{for_negative.name}"
    from_positive, from_negative = policy.adjoint_pair(s, key, w_positive, w_negative)
    del s
    total = policy.product(from_positive, x_pos)
    del from_positive
    return total.addcmul_(from_negative, x_neg)  # no temporary for the second product


def _plain_share(
    ctx: NodeContext,
    relevance: torch.Tensor,
    term: Term,
    bias: torch.Tensor | None,
    stab: Stabilizer,
) -> torch.Tensor:
    """The term as written: ``z = Σ_k A(m_k(x); w_k(W)) + β(b)``,
    ``R_in = Σ_k m_k(x) ⊙ Aᵀ(R / stab(z); w_k(W))``."""
    policy = ctx.policy
    scale = ctx.sample_scale(ctx.x, nonnegative=ctx.known_nonnegative(0))
    x = rescaled(ctx.x, scale)
    inputs = [modifier(x) for modifier in term.inputs]
    weights = [_weight(ctx, modifier) for modifier in term.params]
    z = _with_bias(ctx, inputs[0], weights[0], bias, scale)
    for value, weight in zip(inputs[1:], weights[1:]):
        z = policy.add(z, policy.linear_map(value, weight))
    s = policy.divide(relevance, z, stab, scale)
    del z, relevance
    total = None
    for value, weight in zip(inputs, weights):
        part = policy.multiply(policy.adjoint(s, weight), value)
        total = part if total is None else policy.add(total, part)
    return total
