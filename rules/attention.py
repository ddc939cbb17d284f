"""Rules for the ops of attention blocks: AttnLRP (Achtibat et al. 2024) and CP-LRP
(Ali et al. 2022).

AttnLRP, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers"
(ICML 2024), as LXT's efficient mode computes it: softmax by its Taylor rule (Prop. 3.1),
both matrix products of attention by the uniform rule (each input half, Prop. 3.2),
layer norm by the identity rule with σ held constant (Prop. 3.3), GELU by the identity rule.
CP-LRP, "XAI for Transformers: Better Explanations through Conservative Propagation"
(ICML 2022): the attention probabilities are constants, all relevance takes the value path.
"""

from __future__ import annotations

from dataclasses import dataclass

from relgraph.engine.capabilities import Attending, Bilinear, Normalizing, Shifting
from relgraph.errors import RuleError

from .context import no_relevance
from .numerics import Stabilizer, widened
from .registry import Rule, register_rule


@dataclass
class _Stabilized(Rule):
    """A rule of this module whose quotients ``R / z`` are stabilised by ``epsilon`` (0: a
    vanishing z hands on nothing): ``stab``, derived from it, is not itself a parameter."""

    epsilon: float = 0.0

    def __post_init__(self):
        if self.epsilon < 0:
            raise RuleError(f"epsilon must be ≥ 0, got {self.epsilon}")
        self.stab = Stabilizer("epsilon", self.epsilon)


@register_rule
@dataclass
class SoftmaxTaylor(Rule):
    """Softmax (AttnLRP, Prop. 3.1): ``R_s = s ⊙ (R − a ⊙ Σ R)`` with ``s`` the softmax's
    input and ``a`` its output, the sum over the softmax axis. Conserves only in part: the
    share ``Σ s ⊙ a ⊙ ΣR`` that the bias of the Taylor expansion holds is lost."""

    name = "softmax"
    requires = ("softmax",)
    needs = frozenset({"inputs", "output"})
    scans = False
    conserving = False

    def relevance(self, ctx, relevance):
        s, a = widened(ctx.x), widened(ctx.output)
        return [s * (relevance - a * relevance.sum(-1, keepdim=True))]


@register_rule
@dataclass
class BilinearUniform(_Stabilized):
    """A product of two inputs (attention's q·kᵀ and attention·v) by the uniform rule
    (AttnLRP, Prop. 3.2): each input takes half, ``R_a = a ⊙ J_aᵀ(R / 2z)``,
    ``R_b = b ⊙ J_bᵀ(R / 2z)`` with ``z`` the product and ``J_a`` the map from ``a`` with
    ``b`` held constant; ``z`` stabilised by ε (0: a vanishing z hands on nothing)."""

    name = "bilinear-uniform"
    requires = (Bilinear,)
    needs = frozenset({"inputs", "output"})
    scans = False

    def relevance(self, ctx, relevance):
        inputs = [widened(x) for x in ctx.inputs]
        s = self.stab(relevance, widened(ctx.output), numerics=ctx.numerics) * 0.5
        return [x * ctx.op.input_vjp(s, inputs, slot) for slot, x in enumerate(inputs)]


@register_rule
@dataclass
class BilinearConstant(_Stabilized):
    """A product of two inputs with one held constant (CP-LRP, Ali et al. 2022: the
    attention probabilities): LRP-ε on the map from the other, ``R_b = b ⊙ J_bᵀ(R / z)``;
    the constant input (slot ``constant``) gets nothing."""

    name = "bilinear-constant"
    requires = (Bilinear,)
    needs = frozenset({"inputs", "output"})
    scans = False
    constant: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.constant not in (0, 1):
            raise RuleError(f"constant must be the slot 0 or 1, got {self.constant}")

    def relevance(self, ctx, relevance):
        inputs = [widened(x) for x in ctx.inputs]
        s = self.stab(relevance, widened(ctx.output), numerics=ctx.numerics)
        signal = 1 - self.constant
        handed = [no_relevance(relevance, shape) for shape in ctx.input_shapes]
        handed[signal] = inputs[signal] * ctx.op.input_vjp(s, inputs, signal)
        return handed


#: AttnLRP's factors of the gradients of q, k and v (the uniform rule, twice for q and k)
_FACTORS = (0.25, 0.25, 0.5)


def _record(ctx, g):
    """The attention node's forward record (each row's log-sum-exp) where it was formed in
    the format the adjoint runs in (a bfloat16 graph's is recomputed from the widened
    inputs)."""
    return ctx.record if ctx.inputs[0].dtype == g.dtype else None


@register_rule
@dataclass
class AttentionUniform(_Stabilized):
    """Fused attention ``O = softmax(scale · q kᵀ) v`` under AttnLRP (Achtibat et al. 2024,
    LXT's efficient mode): the uniform rule on both products (Prop. 3.2), the softmax's
    Taylor rule (Prop. 3.1) and the identity on the scale, composed, are gradient × input
    with the gradients of q, k and v scaled by ¼, ¼ and ½: ``g = R / O``,
    ``R_q = q ⊙ ¼ ∂_q(g·O)``, ``R_k = k ⊙ ¼ ∂_k(g·O)``, ``R_v = v ⊙ ½ Pᵀ g``. ``O`` stabilised
    by ε (0: a vanishing output hands on nothing)."""

    name = "attention-uniform"
    requires = (Attending,)
    needs = frozenset({"inputs", "output", "record"})
    scans = False
    conserving = False  # the softmax's Taylor rule drops its bias term

    def relevance(self, ctx, relevance):
        policy = ctx.policy
        q, k, v = (widened(x) for x in ctx.inputs)
        output = widened(ctx.output)
        g = policy.divide(policy.relevance(relevance), output, self.stab)
        gradients = ctx.op.attention_vjp(g, q, k, v, output, _record(ctx, g))
        del g
        return [
            policy.multiply(policy.own(gradient), x, factor)
            for gradient, x, factor in zip(gradients, (q, k, v), _FACTORS)
        ]


@register_rule
@dataclass
class AttentionConstant(_Stabilized):
    """Fused attention ``O = P v``, ``P = softmax(scale · q kᵀ)``, with the probabilities
    held constant (CP-LRP, Ali et al. 2022): LRP-ε on the map from ``v``,
    ``R_v = v ⊙ Pᵀ(R / O)``; q and k get nothing."""

    name = "attention-constant"
    requires = (Attending,)
    needs = frozenset({"inputs", "output", "record"})
    scans = False

    def relevance(self, ctx, relevance):
        policy = ctx.policy
        q, k, v = (widened(x) for x in ctx.inputs)
        output = widened(ctx.output)
        handed = [no_relevance(relevance, shape) for shape in ctx.input_shapes[:2]]
        g = policy.divide(policy.relevance(relevance), output, self.stab)
        back = ctx.op.value_adjoint(g, q, k, v, output, _record(ctx, g))
        return [*handed, policy.multiply(policy.own(back), v)]


@register_rule
@dataclass
class FrozenScale(_Stabilized):
    """Layer norm by the identity rule (AttnLRP, Prop. 3.3; LXT: σ detached):
    ``R_x = x ⊙ M[(R / y) ⊙ w / σ]``, the LRP-ε rule of the map with σ held constant
    (M the centring matrix, ``y`` the output: the bias's share is lost)."""

    name = "frozen-scale"
    requires = (Normalizing,)
    needs = frozenset({"inputs", "output", "record"})
    scans = False

    def relevance(self, ctx, relevance):
        policy = ctx.policy
        x = widened(ctx.x)
        s = policy.divide(policy.relevance(relevance), widened(ctx.output), self.stab)
        tensors = {k: widened(v) for k, v in ctx.tensors.items()}
        # 1/σ as the forward recorded it, in the format the rule runs in (else recomputed)
        recorded = ctx.record if ctx.record is not None and ctx.record.dtype == x.dtype else None
        adjoint = ctx.op.frozen_scale_adjoint(s, x, tensors, recorded, into_s=policy.owns(s))
        return [policy.multiply(policy.own(adjoint), x)]


@register_rule
@dataclass
class Index(Rule):
    """Ops whose output entries are input entries (permute, slice, select, repeat, a
    prepended token): relevance follows the index map's adjoint, summed over copies; a
    constant's entries (the CLS token) hand theirs to nothing."""

    name = "index"
    requires = ("index",)
    needs = frozenset()

    def relevance(self, ctx, relevance):
        return ctx.op.vjp(relevance, [None], ctx.tensors, ctx.input_shapes)


@register_rule
@dataclass
class ShiftShare(_Stabilized):
    """``x + c`` for a constant ``c`` (position and time embeddings): the input keeps its
    share, ``R_x = x ⊙ R / stab(x + c)``; the constant's share is lost."""

    name = "shift-share"
    requires = (Shifting,)
    needs = frozenset({"inputs", "output"})
    scans = False

    def relevance(self, ctx, relevance):
        x = widened(ctx.x)
        return [x * self.stab(relevance, widened(ctx.output), numerics=ctx.numerics)]
