"""The rule library: each rule is a short dataclass whose ``relevance`` reads like its formula
in the rule reference (docs/reference/rules.md), or, for the z-family, whose ``terms`` are
its formula as configuration (``relgraph.rules.zrule``). ``A``/``Aᵀ`` are the op's
``linear_map``/``adjoint``; ``stab`` the safe division; where values live is the node's
policy's business (``relgraph.rules.policy``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from relgraph.engine.capabilities import (
    Affine,
    Channelwise,
    MaxRouted,
    Product,
    Reshaping,
    Splitting,
    VectorJacobian,
    Windowed,
)
from relgraph.errors import RelgraphWarning, RuleError
from relgraph.io.preprocess import get_preprocess

from .context import NodeContext, no_relevance
from .numerics import (
    Stabilizer,
    accumulator,
    rescaled,
    sample_scale,
    widened,
)
from .registry import Rule, make_rule, register_rule
from .zrule import (
    B_NEG,
    B_POS,
    ONES,
    W_NEG,
    W_ONES,
    W_POS,
    W_SQUARED,
    X_NEG,
    X_POS,
    B,
    Term,
    W,
    X,
    ZRule,
    negative_outputs,
    plus_gamma,
    positive_outputs,
)

# --------------------------------------------------------------------------- structural


@register_rule
@dataclass
class Pass(Rule):
    """``R_in = R``, reshaped to the input's shape (ReLU, dropout, flatten, identity; and a
    batch norm left unfolded, a monotone per-channel map, as zennit's ``Pass`` treats it)."""

    name = "pass"
    requires = (Reshaping, Channelwise)
    needs = frozenset()

    def relevance(self, ctx, relevance):
        return [relevance.reshape(ctx.input_shapes[0])]


# --------------------------------------------------------------------------- affine rules


@register_rule
@dataclass
class Epsilon(ZRule):
    """LRP-ε: ``z = A(x; W, b)``, ``R_in = x ⊙ Aᵀ(R / stab_ε(z); W)``; ε = 0 is LRP-0
    (Bach et al. 2015)."""

    name = "epsilon"
    conserving = False  # conserves with b = 0 and ε = 0
    epsilon: float = 1e-6
    bias: bool = True

    def __post_init__(self):
        _check_number(self.name, "epsilon", self.epsilon)
        if self.epsilon < 0:
            raise RuleError(f"epsilon must be ≥ 0, got {self.epsilon}")
        self.stab = Stabilizer("epsilon", self.epsilon)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        # the forward output is z itself when the bias is kept
        return frozenset({"inputs", "output"}) if self.bias else frozenset({"inputs"})

    def terms(self):
        return (Term(inputs=(X,), params=(W,), bias=B if self.bias else None),)


@dataclass
class _Stabilized(ZRule):
    """Rules with a choice of stabiliser (``zero`` or ``epsilon``) and of keeping the bias."""

    bias: bool = False
    stabilizer: str = "zero"
    epsilon: float = 1e-6
    #: the formula has no bias term, so ``bias: true`` would be silently ignored
    drops_bias: ClassVar[bool] = False

    def __post_init__(self):
        _check_number(self.name, "epsilon", self.epsilon)
        if self.epsilon < 0:
            raise RuleError(f"{self.name}: epsilon must be ≥ 0, got {self.epsilon}")
        if self.bias and self.drops_bias:
            raise RuleError(
                f"rule '{self.name}' has no bias term (see docs/reference/rules.md), so bias: true "
                "would be "
                "ignored; leave it out"
            )
        # derived from the parameters, not itself a parameter (not a dataclass field)
        self.stab = Stabilizer(self.stabilizer, self.epsilon)


@register_rule
@dataclass
class ZPlus(_Stabilized):
    """z⁺ (Montavon et al. 2017): ``z = A(x⁺;W⁺) + A(x⁻;W⁻) (+b⁺)``,
    ``R_in = x⁺⊙Aᵀ(s;W⁺) + x⁻⊙Aᵀ(s;W⁻)``."""

    name = "zplus"

    def terms(self):
        bias = B_POS if self.bias else None
        return (Term((X_POS, X_NEG), (W_POS, W_NEG), bias, nonnegative=True),)


@register_rule
@dataclass
class AlphaBeta(_Stabilized):
    """αβ (Bach et al. 2015): ``R_in = α·[x⁺⊙Aᵀ(sα;W⁺) + x⁻⊙Aᵀ(sα;W⁻)]
    − β·[x⁺⊙Aᵀ(sβ;W⁻) + x⁻⊙Aᵀ(sβ;W⁺)]`` with ``zα = A(x⁺;W⁺)+A(x⁻;W⁻) (+b⁺)`` and
    ``zβ = A(x⁺;W⁻)+A(x⁻;W⁺) (+b⁻)``; α − β = 1."""

    name = "alphabeta"
    alpha: float = 2.0
    beta: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check_number(self.name, "alpha", self.alpha)
        _check_number(self.name, "beta", self.beta)
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise RuleError(
                f"alphabeta needs α, β ≥ 0 and α − β = 1, got α={self.alpha}, β={self.beta}"
            )

    def terms(self):
        b_pos, b_neg = (B_POS, B_NEG) if self.bias else (None, None)
        return (
            Term((X_POS, X_NEG), (W_POS, W_NEG), b_pos, coefficient=self.alpha),
            Term((X_POS, X_NEG), (W_NEG, W_POS), b_neg, coefficient=-self.beta),
        )


@register_rule
@dataclass
class Gamma(_Stabilized):
    """γ (Montavon et al. 2019; the generalised form of zennit's ``Gamma``): ``W↑ = W + γW⁺``,
    ``W↓ = W + γW⁻``; outputs with z > 0 share by ``z↑ = A(x⁺;W↑)+A(x⁻;W↓) (+b+γb⁺)``,
    outputs with z < 0 by ``z↓ = A(x⁺;W↓)+A(x⁻;W↑) (+b+γb⁻)``, z the layer's output.
    ``bias: false`` leaves the bias out of z↑ and z↓ (the output's sign still picks the side)."""

    name = "gamma"
    needs = frozenset({"inputs", "output"})
    gamma: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        _check_number(self.name, "gamma", self.gamma)
        if self.gamma < 0:
            raise RuleError(f"gamma must be ≥ 0, got {self.gamma}")

    def terms(self):
        up, down = plus_gamma(self.gamma, W_POS), plus_gamma(self.gamma, W_NEG)
        b_up, b_down = (up, down) if self.bias else (None, None)
        return (
            Term((X_POS, X_NEG), (up, down), b_up, where=positive_outputs),
            Term((X_POS, X_NEG), (down, up), b_down, where=negative_outputs),
        )


@register_rule
@dataclass
class ZBeta(_Stabilized):
    """zβ (bounded inputs ``l ≤ x ≤ h``): ``z = A(x;W) − A(l;W⁺) − A(h;W⁻)``,
    ``R_in = x⊙Aᵀ(s;W) − l⊙Aᵀ(s;W⁺) − h⊙Aᵀ(s;W⁻)``.

    ``low``/``high`` are numbers or one value per input channel; or ``bounds`` names a
    preprocessing preset (``c3d-ucf101``, ``hara``) or ``preprocess`` (the one in use), with
    ``per_channel`` choosing per-channel bounds over the paper's one bound for all channels.
    The bias cancels out of z (zennit's ``ZBox`` likewise: ``(Wx+b) − (W⁺l+b⁺) − (W⁻h+b⁻)``),
    so ``bias: true`` is refused. As a z-rule (``relgraph.rules.zrule``) it is one term with
    the input modifiers ``(x, l, h)``, the weight modifiers ``(W, W⁺, W⁻)`` and the signs
    ``(+, −, −)``; its body computes that term with the bounds' part, the same for every
    sample, made once.
    """

    name = "zbeta"
    requires = (Affine,)
    drops_bias = True
    needs = frozenset({"inputs", "output"})
    low: float | tuple[float, ...] | None = None
    high: float | tuple[float, ...] | None = None
    bounds: str | None = None
    per_channel: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.bounds is None and (self.low is None or self.high is None):
            raise RuleError("zbeta needs 'low' and 'high', or 'bounds' (a preprocessing preset)")
        if self.low is not None and self.high is not None:
            low, high = _bound_values("low", self.low), _bound_values("high", self.high)
            if len(low) > 1 and len(high) > 1 and len(low) != len(high):
                raise RuleError(
                    f"zbeta: low has {len(low)} values and high {len(high)}: give one per "
                    "input channel for both, or one number"
                )
            if len(low) == 1 or len(high) == 1:
                low, high = low * len(high), high * len(low)
            crossed = [c for c, (lo, hi) in enumerate(zip(low, high)) if lo > hi]
            if crossed:
                c = crossed[0]
                raise RuleError(
                    f"zbeta needs low ≤ high, got low {low[c]:g} > high {high[c]:g}"
                    + (f" (channel {c})" if len(low) > 1 else "")
                )

    def bind(
        self, *, preprocess: str | None = None, graph: Any = None, node: str | None = None, **_: Any
    ) -> Rule:
        """Resolve ``bounds`` into ``low``/``high``: the pixel extremes 0 and 255 mapped
        through the preprocessing preset, then through the per-channel maps (batch norms,
        ReLUs, max pools) between the graph's input and ``node``, channel by channel."""
        if self.bounds is None:
            return self
        name = preprocess if self.bounds == "preprocess" else self.bounds
        if name is None:
            raise RuleError(
                "zbeta takes its bounds from the preprocessing, but none is known: pass "
                "preprocess=... or name one in the architecture file"
            )

        low, high = get_preprocess(name).zbeta_bounds(self.per_channel)
        chain = _channelwise_chain(graph, node) if graph is not None and node else []
        if chain:
            if not self.per_channel:  # one box for every channel the graph's input has
                channels = graph.input_shape[0]
                low, high = low[:1].expand(channels), high[:1].expand(channels)
            for between in chain:
                low, high = _map_box(graph, node, between, low, high)
        uniform = bool((low == low[0]).all() and (high == high[0]).all())
        if not self.per_channel and uniform:
            # the paper's bounds are one number for every channel (zbeta_bounds repeats it per
            # channel): kept scalar, they also fit a first layer that does not read 3 channels
            return dataclasses.replace(self, low=float(low[0]), high=float(high[0]), bounds=None)
        return dataclasses.replace(
            self, low=tuple(low.tolist()), high=tuple(high.tolist()), bounds=None
        )

    def _bound(self, value, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=accumulator(x.dtype), device=x.device)
        if t.dim() == 1:
            if t.numel() != x.shape[1]:
                raise RuleError(
                    f"zbeta has {t.numel()} per-channel bounds but its input has "
                    f"{x.shape[1]} channels"
                )
            t = t.reshape(1, -1, *([1] * (x.dim() - 2)))
        return t.expand_as(x)

    def relevance(self, ctx, relevance):
        x, policy = ctx.x, ctx.policy
        weight, bias = ctx.weight_and_bias()
        w_pos, w_neg = ctx.weight_parts()
        low, high = self._bound(self.low, x), self._bound(self.high, x)
        _warn_outside(ctx.node, x, low, high)
        # A(x;W) = output − b: no extra pass; the bounds' part is the same for every sample,
        # so it is computed once, for one sample, with the bias folded in.
        # In bfloat16, z = A(x;W) − offset cancels much of a rounded output: it is formed from
        # the input in float32 instead (the first layer is cheap: few input channels).
        low_precision = accumulator(x.dtype) != x.dtype
        from_output = ctx.output is not None and bias is not None and not low_precision

        def offset():  # A(l;W⁺) + A(h;W⁻) (+ b)
            wide_pos, wide_neg = w_pos.to(low.dtype), w_neg.to(low.dtype)
            part = policy.linear_map(
                high[:1], wide_neg, add_to=policy.linear_map(low[:1], wide_pos)
            )
            return policy.add(part, ctx.op.broadcast_bias(bias, part)) if from_output else part

        if from_output:
            forward = ctx.output
        elif low_precision:
            forward = policy.linear_map(widened(x), weight.to(low.dtype))
        else:
            forward = policy.linear_map(x, weight)
        key = ("zbeta", tuple(x.shape[1:]), self.low, self.high, from_output, str(low.dtype))
        z = policy.subtract(forward, policy.keep(key, offset))
        del forward
        bound_peak = max(abs(v) for v in _values(self.low) + _values(self.high))
        scale = ctx.sample_scale(x, also=bound_peak)  # see relgraph.rules.zrule
        s = policy.divide(policy.relevance(relevance), policy.rescaled(z, scale), self.stab, scale)
        del z, relevance
        # x⊙Aᵀ(s;W) − l⊙Aᵀ(s;W⁺) − h⊙Aᵀ(s;W⁻) with Aᵀ(s;W) = Aᵀ(s;W⁺) + Aᵀ(s;W⁻)
        from_positive, from_negative = policy.adjoint_pair(s, "W⁺|W⁻", w_pos, w_neg)
        del s
        total = (x - low) * from_positive
        del from_positive
        total.add_(policy.multiply(from_negative, x - high))
        return [rescaled(total, scale)]


def _values(bound: float | tuple[float, ...]) -> list[float]:
    return list(bound) if isinstance(bound, (tuple, list)) else [bound]


#: inputs may pass the bounds by this much of the box's width (rounding of the preprocessing)
BOUNDS_TOLERANCE = 1e-4


def _check_number(rule: str, name: str, value: Any) -> None:
    """Refuse a rule parameter that is not a finite real number (``nan``, ``inf``, text)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RuleError(f"{rule}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise RuleError(f"{rule}: {name} must be a finite number, got {value!r}")


def _bound_values(name: str, value: Any) -> list[float]:
    """A zβ bound as a list of finite numbers (one, or one per channel)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise RuleError(f"zbeta: {name} is empty")
    for item in values:
        _check_number("zbeta", name, item)
    return [float(item) for item in values]


def _warn_outside(node: str, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
    """A ``RelgraphWarning`` when some input lies outside ``[low, high]`` beyond rounding."""
    slack = BOUNDS_TOLERANCE * (high - low).abs()
    below, above = (low - x - slack).amax(), (x - high - slack).amax()
    if bool(torch.maximum(below, above) > 0):
        lo, hi = float(x.amin()), float(x.amax())
        warnings.warn(
            f"node '{node}': zβ input values span [{lo:.6g}, {hi:.6g}], outside the bounds "
            f"[{float(low.amin()):.6g}, {float(high.amax()):.6g}] the rule assumes (with "
            "bounds: preprocess, the input did not go through the preprocessing named)",
            RelgraphWarning,
            stacklevel=2,
        )


def _channelwise_chain(graph: Any, node: str) -> list[str]:
    """The nodes between the graph's input and ``node`` (input first), when that path is one
    chain of per-channel monotone maps; a ``RuleError`` otherwise."""
    chain: list[str] = []
    current = node
    while True:
        inputs = graph.inputs_of(current)
        if len(inputs) != 1:
            raise RuleError(
                f"zbeta at '{node}' maps its bounds back to the input, but '{current}' has "
                f"{len(inputs)} inputs; give zbeta low/high explicitly",
                node=node,
            )
        (previous,) = inputs
        if previous == graph.input:
            return chain[::-1]
        if not isinstance(graph.op(previous), (Channelwise, MaxRouted, Reshaping)):
            raise RuleError(
                f"zbeta at '{node}' cannot map the input's bounds through '{previous}' "
                f"({graph.op(previous).type}); give zbeta low/high explicitly",
                node=node,
            )
        chain.append(previous)
        current = previous


def _map_box(graph: Any, rule_node: str, node: str, low: torch.Tensor, high: torch.Tensor):
    """Per-channel interval arithmetic through a monotone per-channel op (batch norm, ReLU,
    dropout, identity, max pool): the op applied to inputs that hold ``low_c`` (``high_c``)
    everywhere in channel c; each channel's box is the smaller and the larger of the two
    results (a decreasing map swaps them). An op that only reshapes (flatten) keeps a box that
    is the same for every channel, and mixes one that is not (a ``RuleError``)."""
    shape = graph.shape_of(graph.inputs_of(node)[0])
    out_shape = graph.shape_of(node)
    if isinstance(graph.op(node), Reshaping) and tuple(out_shape) != tuple(shape):
        if not bool((low == low[0]).all() and (high == high[0]).all()):
            raise RuleError(
                f"zbeta at '{rule_node}' cannot carry per-channel bounds through '{node}' "
                f"({graph.op(node).type}), which mixes channels; give zbeta low/high explicitly",
                node=rule_node,
            )
        return low[:1].expand(out_shape[0]), high[:1].expand(out_shape[0])
    tensors = {k: v.to(torch.float64) for k, v in graph.tensors(node).items()}
    view = (1, -1, *([1] * (len(shape) - 1)))
    filled = [
        bound.to(torch.float64).reshape(view).expand(1, *shape).contiguous()
        for bound in (low, high)
    ]
    with torch.inference_mode():
        outs = [graph.op(node).forward([t], tensors) for t in filled]
    per_channel = [o.reshape(o.shape[0], o.shape[1], -1)[0] for o in outs]
    lowest = torch.minimum(*per_channel).amin(dim=1)
    highest = torch.maximum(*per_channel).amax(dim=1)
    return lowest, highest


@register_rule
@dataclass
class Flat(_Stabilized):
    """Flat (Lapuschkin et al. 2019): ``R_in = Aᵀ(R / stab(A(1;1)); 1)``, uniform over each
    receptive field."""

    name = "flat"
    drops_bias = True
    needs = frozenset()

    def terms(self):
        return (Term(inputs=(ONES,), params=(W_ONES,)),)


@register_rule
@dataclass
class WSquare(_Stabilized):
    """w² (Montavon et al. 2017): ``R_in = Aᵀ(R / stab(A(1;W²)); W²)``, bias dropped."""

    name = "wsquare"
    drops_bias = True
    needs = frozenset()

    def terms(self):
        return (Term(inputs=(ONES,), params=(W_SQUARED,)),)


# --------------------------------------------------------------------------- pooling, merges


@register_rule
@dataclass
class WinnerTakeAll(Rule):
    """Max pool: ``R_in[k] = Σ_j δ_jk R[j]``, δ the forward's argmax (overlaps add)."""

    name = "winner-take-all"
    requires = (MaxRouted,)
    # the argmax indices come from the forward pass, so the input itself need not be kept
    needs = frozenset({"record"})

    def relevance(self, ctx, relevance):
        return [ctx.op.max_route(ctx.x, relevance, indices=ctx.record, x_shape=ctx.input_shapes[0])]


@register_rule
@dataclass
class Gradient(Rule):
    """Not a relevance rule: the plain gradient, ``g_in = Jᵀ g`` with the op's own explicit
    vector-Jacobian product (``op.vjp``), no autograd. With the one-hot seed the input
    "relevance" is ∂f_target/∂x (sensitivity; Simonyan et al. 2014); times the input, it is
    gradient × input (Shrikumar et al. 2016). For baselines."""

    name = "gradient"
    requires = (VectorJacobian,)
    needs = frozenset({"inputs", "record"})

    def relevance(self, ctx, relevance):
        # in a bfloat16 graph the vector-Jacobian product runs in the activations' format
        # and its result is carried on in float32, as every rule's
        dtype = next((x.dtype for x in ctx.inputs if x is not None), relevance.dtype)
        grads = ctx.op.vjp(
            relevance.to(dtype), ctx.inputs, ctx.tensors, ctx.input_shapes, ctx.record
        )
        return [widened(g) for g in grads]


@dataclass
class _Shares(Rule):
    """Pool and merge rules that divide by a window's or a sum's total, with a choice of
    stabiliser."""

    stabilizer: str = "zero"
    epsilon: float = 1e-6

    def __post_init__(self):
        # derived from the parameters, not itself a parameter (not a dataclass field)
        self.stab = Stabilizer(self.stabilizer, self.epsilon)


@register_rule
@dataclass
class Proportional(_Shares):
    """``R_in = x ⊙ Aᵀ(R / stab(f(x)))``: each input its share of the window (or sum) it fed.

    ``divide_by: sum`` (default): f sums each window, A = f. ``divide_by: output``: f is the
    average pool's own output (the window's mean) and A the pool itself, as zennit's ``Norm``
    rule computes it: ``R_in = x ⊙ Σ_j R_j / (stab(mean_j) · D_j)`` with ``D_j`` the pool's
    divisor. The two differ only in how ε enters (``sum + ε`` against ``sum + D·ε``). On add
    the output is the sum, so both read the same.
    """

    name = "proportional"
    requires = (Windowed, Splitting)
    divide_by: str = "sum"

    def __post_init__(self):
        super().__post_init__()
        if self.divide_by not in ("sum", "output"):
            raise RuleError(f"divide_by must be 'sum' or 'output', got {self.divide_by!r}")

    def relevance(self, ctx, relevance):
        if not isinstance(ctx.op, Windowed):
            return _scaled_split(ctx, relevance, self.stab)
        scale = sample_scale(
            ctx.x, nonnegative=ctx.known_nonnegative(0), numerics=ctx.numerics
        )  # see relgraph.rules.zrule
        x = rescaled(ctx.x, scale)
        if self.divide_by == "sum":
            s = self.stab(relevance, ctx.op.window_sum(x), scale, numerics=ctx.numerics)
            return [x * ctx.op.window_sum_adjoint(s, x.shape)]
        if isinstance(ctx.op, MaxRouted):
            raise RuleError(
                "divide_by: output needs an average pool (a max pool's output is no linear map)",
                node=ctx.node,
            )
        shape = x.shape

        def divisors():  # each window's divisor D_j, the same for every sample
            ones = torch.ones((1, *shape[1:]), dtype=x.dtype, device=x.device)
            return (ctx.op.window_sum(ones) / ctx.op.forward([ones], ctx.tensors)).round()

        divisor = ctx.memo(("D_j", tuple(shape[1:])), divisors)
        s = self.stab(relevance, ctx.op.forward([x], ctx.tensors), scale, numerics=ctx.numerics)
        s = s / divisor
        return [x * ctx.op.window_sum_adjoint(s, shape)]


@register_rule
@dataclass
class Uniform(Rule):
    """Average pool as in the paper: ``R_in[k] = Σ_j R[j] / N_j`` over the windows j holding k
    (``N_j`` counts the window's real inputs, so padding takes no relevance)."""

    name = "uniform"
    requires = (Windowed,)
    needs = frozenset()

    def relevance(self, ctx, relevance):
        shape = ctx.input_shapes[0]

        def counts():  # the same for every sample: counted once, for one sample
            ones = torch.ones((1, *shape[1:]), dtype=relevance.dtype, device=relevance.device)
            return ctx.op.window_sum(ones)

        per_window = ctx.memo(("N_j", tuple(shape[1:])), counts)
        return [
            ctx.op.window_sum_adjoint(
                Stabilizer("zero")(relevance, per_window, numerics=ctx.numerics), shape
            )
        ]


@register_rule
@dataclass
class Split(_Shares):
    """add: ``R_i = x_i / Σx · R`` (stabilised); concat: ``R`` sliced back to each input."""

    name = "split"
    requires = (Splitting,)

    def relevance(self, ctx, relevance):
        return _scaled_split(ctx, relevance, self.stab)


@register_rule
@dataclass
class SignalTakeAll(Rule):
    """A product of a signal and a gate: ``R_signal = R``, ``R_gate = 0`` (Arras et al. 2017,
    "Explaining recurrent neural network predictions in sentiment analysis", the rule of LRP
    for LSTMs). The signal is the input shaped like the output (the squeeze-excitation gate
    is broadcast, or the mul node names its ``gate``); ``signal`` (slot 0 or 1) names it
    where both or neither are. A signal
    that was broadcast gets R summed over the broadcast dimensions. The gate's zero is a
    broadcast one (``no_relevance``): the reverse pass skips the gate's branch, which would
    only hand on zeros (X3D-S: 9 % of an explanation)."""

    name = "signal-take-all"
    requires = (Product,)
    needs = frozenset()  # the input shapes (always there) decide
    signal: int | None = None

    def __post_init__(self):
        if self.signal is not None and self.signal not in (0, 1):
            raise RuleError(f"signal must be the slot 0 or 1, got {self.signal}")

    def relevance(self, ctx, relevance):
        shapes = ctx.input_shapes
        signal = self.signal
        if signal is None:
            slots = ctx.op.signal_slots(shapes, relevance.shape)
            if len(slots) != 1:
                listed = " and ".join(str(list(s[1:])) for s in shapes)
                raise RuleError(
                    f"signal-take-all cannot tell the signal from the gate: "
                    f"{'both' if slots else 'neither'} of the inputs ({listed}) "
                    f"{'are' if slots else 'is'} shaped like the output; give the rule "
                    "signal: 0 or signal: 1 for this node, or the mul node gate: 0 or 1"
                )
            signal = slots[0]
        handed = [no_relevance(relevance, shape) for shape in shapes]
        handed[signal] = ctx.op.to_input_shape(relevance, shapes[signal])
        return handed


def _scaled_split(ctx: NodeContext, relevance: torch.Tensor, stab: Stabilizer) -> list:
    """The op's ``split`` with the inputs at the scale ``sample_scale`` picks (see
    ``relgraph.rules.zrule``); concat only slices, and its inputs are not even read."""
    if any(x is None for x in ctx.inputs):
        return ctx.op.split(ctx.inputs, relevance, stab)
    known = [ctx.known_nonnegative(slot) for slot in range(len(ctx.inputs))]
    scale = ctx.sample_scale(*ctx.inputs, nonnegative=known)
    inputs = [widened(rescaled(x, scale)) for x in ctx.inputs]
    policy = ctx.policy

    def divide(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # the quotient in the relevance's memory where the pass handed it over
        return policy.divide(policy.relevance(r), z, stab, scale)

    return ctx.op.split(inputs, relevance, divide)


# --------------------------------------------------------------------------- composition


@register_rule
@dataclass
class Combine(Rule):
    """A weighted sum of rules at one node: ``R_in = Σ_k w_k · rule_k(R)``.

    YAML: ``{name: combine, parts: [{weight: 0.5, rule: zplus}, {weight: 0.5, rule: epsilon}]}``.
    """

    name = "combine"
    conserving = False
    parts: list[tuple[float, Rule]] = field(default_factory=list)

    def __post_init__(self):
        if not self.parts:
            raise RuleError("combine needs at least one part")
        for weight, _ in self.parts:
            _check_number("combine", "a part's weight", weight)
        self.parts = [(float(w), make_rule(r)) for w, r in self.parts]

    @property
    def requires(self) -> tuple[type | str, ...]:  # type: ignore[override]
        return tuple(c for _, r in self.parts for c in r.requires)

    def fits(self, op) -> bool:
        return all(rule.fits(op) for _, rule in self.parts)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        """Everything any part needs: each part sees the same node context."""
        return frozenset().union(*(r.needs for _, r in self.parts))

    @property
    def scans(self) -> bool:  # type: ignore[override]
        """Whether any part reads its inputs' numeric scale."""
        return any(r.scans for _, r in self.parts)

    def bind(self, **context: Any) -> Rule:
        parts = [(w, r.bind(**context)) for w, r in self.parts]
        return dataclasses.replace(self, parts=parts)

    def relevance(self, ctx, relevance):
        total = None
        ctx = dataclasses.replace(ctx, relevance_owned=False)  # every part reads it
        for weight, rule in self.parts:
            part = [weight * r for r in rule(ctx, relevance)]
            total = part if total is None else [t + p for t, p in zip(total, part)]
        return total

    def describe(self) -> str:
        return "combine(" + " + ".join(f"{w:g}·{r.describe()}" for w, r in self.parts) + ")"

    @classmethod
    def from_spec(cls, params: dict, *, file=None, line=None) -> Combine:
        parts = params.get("parts")
        extra = set(params) - {"parts"}
        if extra or not isinstance(parts, list) or not parts:
            raise RuleError(
                "combine needs 'parts': a list of {weight: w, rule: ...}", file=file, line=line
            )
        built = []
        for part in parts:
            if not isinstance(part, dict) or set(part) != {"weight", "rule"}:
                raise RuleError(
                    f"each part of combine needs 'weight' and 'rule', got {part!r}",
                    file=file,
                    line=line,
                )
            weight = part["weight"]
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not math.isfinite(weight)
            ):
                raise RuleError(
                    f"a part's weight must be a finite number, got {weight!r}",
                    file=file,
                    line=line,
                )
            built.append((float(weight), make_rule(part["rule"], file=file, line=line)))
        return cls(parts=built)
