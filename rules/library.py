"""The rule library: each rule is a short dataclass whose ``relevance`` reads like its formula
in ``rules.md``. ``A``/``Aᵀ`` are the op's ``linear_map``/``adjoint``; ``stab`` the safe division.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from relgraph.errors import RuleError

from .base import (
    NodeContext,
    Rule,
    Stabilizer,
    make_rule,
    negative,
    positive,
    register_rule,
    rescaled,
    sample_scale,
    scale_and_sign,
)


def _A(ctx: NodeContext, x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    return ctx.op.linear_map(x, weight, bias)


def _At(ctx: NodeContext, s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return ctx.op.adjoint(s, weight, ctx.input_shapes[0])


def _A_scaled(
    ctx: NodeContext, x: torch.Tensor, weight: torch.Tensor, bias, scale: torch.Tensor
) -> torch.Tensor:
    """``A(x; W) + scale·b`` for an input ``x`` already multiplied by the per-sample ``scale``."""
    z = _A(ctx, x, weight)
    if bias is None:
        return z
    if scale is None:
        return z + bias.reshape(1, -1, *([1] * (z.dim() - 2)))
    return z + bias.reshape(1, -1, *([1] * (z.dim() - 2))) * scale.reshape(
        -1, *([1] * (z.dim() - 1))
    )


def signed_share(
    ctx: NodeContext,
    relevance: torch.Tensor,
    w_for_positive: torch.Tensor,
    w_for_negative: torch.Tensor | Callable[[], torch.Tensor],
    bias: torch.Tensor | None,
    stab: Stabilizer,
    key: str,
) -> torch.Tensor:
    """``z = A(x⁺; W_p) + A(x⁻; W_n) (+ bias)``, ``s = R / stab(z)``,
    ``R_in = x⁺ ⊙ Aᵀ(s; W_p) + x⁻ ⊙ Aᵀ(s; W_n)``: the building block of zplus, αβ and γ.
    Where ``x ≥ 0`` everywhere (ReLU outputs) the ``x⁻`` terms vanish and are skipped;
    elsewhere both adjoints run as one (``key`` names the weight pair for the memo).
    Each sample runs at the scale ``sample_scale`` picks: the same result, no overflow."""
    scale, nonnegative = scale_and_sign(ctx.x)
    x = rescaled(ctx.x, scale)
    if nonnegative:
        z = _A_scaled(ctx, x, w_for_positive, bias, scale)
        return x * _At(ctx, stab(relevance, z, scale), w_for_positive)
    if callable(w_for_negative):  # computed only now that the x⁻ terms are needed
        w_for_negative = w_for_negative()
    x_pos, x_neg = positive(x), negative(x)
    z = _A_scaled(ctx, x_pos, w_for_positive, bias, scale) + _A(ctx, x_neg, w_for_negative)
    from_positive, from_negative = ctx.adjoint_pair(
        stab(relevance, z, scale), key, w_for_positive, w_for_negative
    )
    return x_pos * from_positive + x_neg * from_negative


def input_free_share(
    ctx: NodeContext, relevance: torch.Tensor, stab: Stabilizer, name: str, weight: torch.Tensor
) -> torch.Tensor:
    """``R_in = Aᵀ(R / stab(A(1; V)); V)`` for a weight ``V`` (named ``name``) that ignores the
    input's values: flat (V = 1) and w² (V = W²). ``A(1; V)`` is the same for every sample,
    so it is computed once, for one sample."""
    shape = ctx.input_shapes[0]

    def denominator():
        ones = torch.ones((1, *shape[1:]), dtype=relevance.dtype, device=relevance.device)
        return _A(ctx, ones, weight)

    z = ctx.memo((f"A(1;{name})", tuple(shape[1:])), denominator)
    return _At(ctx, stab(relevance, z), weight)


def _bias_part(ctx: NodeContext, use_bias: bool, sign: str) -> torch.Tensor | None:
    bias = ctx.weight_and_bias()[1]
    if not use_bias or bias is None:
        return None
    return positive(bias) if sign == "+" else negative(bias)


# --------------------------------------------------------------------------- structural


@register_rule
@dataclass
class Pass(Rule):
    """``R_in = R``, reshaped to the input's shape (ReLU, dropout, flatten, identity)."""

    name = "pass"
    requires = ("reshape",)
    needs_inputs = False

    def relevance(self, ctx, relevance):
        return [relevance.reshape(ctx.input_shapes[0])]


# --------------------------------------------------------------------------- affine rules


@register_rule
@dataclass
class Epsilon(Rule):
    """LRP-ε: ``z = A(x; W, b)``, ``R_in = x ⊙ Aᵀ(R / stab_ε(z); W)``; ε = 0 is LRP-0."""

    name = "epsilon"
    requires = ("affine",)
    conserving = False  # conserves with b = 0 and ε = 0
    epsilon: float = 1e-6
    bias: bool = True

    def __post_init__(self):
        if self.epsilon < 0:
            raise RuleError(f"epsilon must be ≥ 0, got {self.epsilon}")

    @property
    def needs_output(self) -> bool:  # the forward output is z itself when the bias is kept
        return self.bias

    def relevance(self, ctx, relevance):
        weight, bias = ctx.weight_and_bias()
        scale = sample_scale(ctx.x)  # see signed_share
        x = rescaled(ctx.x, scale)
        if self.bias and ctx.output is not None:
            z = rescaled(ctx.output, scale)
        else:
            z = _A_scaled(ctx, x, weight, bias if self.bias else None, scale)
        s = Stabilizer("epsilon", self.epsilon)(relevance, z, scale)
        return [x * _At(ctx, s, weight)]


@dataclass
class _Stabilized(Rule):
    """Rules with a choice of stabiliser (``zero`` or ``epsilon``) and of keeping the bias."""

    bias: bool = False
    stabilizer: str = "zero"
    epsilon: float = 1e-6
    #: the formula has no bias term, so ``bias: true`` would be silently ignored
    drops_bias: ClassVar[bool] = False

    def __post_init__(self):
        if self.bias and self.drops_bias:
            raise RuleError(
                f"rule '{self.name}' has no bias term (see rules.md), so bias: true would be "
                "ignored; leave it out"
            )
        # derived from the parameters, not itself a parameter (not a dataclass field)
        self.stab = Stabilizer(self.stabilizer, self.epsilon)


@register_rule
@dataclass
class ZPlus(_Stabilized):
    """z⁺: ``z = A(x⁺;W⁺) + A(x⁻;W⁻) (+b⁺)``, ``R_in = x⁺⊙Aᵀ(s;W⁺) + x⁻⊙Aᵀ(s;W⁻)``."""

    name = "zplus"
    requires = ("affine",)

    def relevance(self, ctx, relevance):
        w_pos, w_neg = ctx.positive_weight(), ctx.negative_weight
        return [
            signed_share(
                ctx, relevance, w_pos, w_neg, _bias_part(ctx, self.bias, "+"), self.stab, "W+|W-"
            )
        ]


@register_rule
@dataclass
class AlphaBeta(_Stabilized):
    """αβ: ``R_in = α·[x⁺⊙Aᵀ(sα;W⁺) + x⁻⊙Aᵀ(sα;W⁻)] − β·[x⁺⊙Aᵀ(sβ;W⁻) + x⁻⊙Aᵀ(sβ;W⁺)]``
    with ``zα = A(x⁺;W⁺)+A(x⁻;W⁻) (+b⁺)`` and ``zβ = A(x⁺;W⁻)+A(x⁻;W⁺) (+b⁻)``; α − β = 1."""

    name = "alphabeta"
    requires = ("affine",)
    alpha: float = 2.0
    beta: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise RuleError(
                f"alphabeta needs α, β ≥ 0 and α − β = 1, got α={self.alpha}, β={self.beta}"
            )

    def relevance(self, ctx, relevance):
        w_pos, w_neg = ctx.positive_weight(), ctx.negative_weight
        r_in = self.alpha * signed_share(
            ctx, relevance, w_pos, w_neg, _bias_part(ctx, self.bias, "+"), self.stab, "W+|W-"
        )
        if self.beta:
            r_in = r_in - self.beta * signed_share(
                ctx, relevance, w_neg(), w_pos, _bias_part(ctx, self.bias, "-"), self.stab, "W-|W+"
            )
        return [r_in]


@register_rule
@dataclass
class Gamma(_Stabilized):
    """γ: ``W↑ = W + γW⁺``, ``W↓ = W + γW⁻``; outputs with z > 0 share by
    ``z↑ = A(x⁺;W↑)+A(x⁻;W↓)``, outputs with z < 0 by ``z↓ = A(x⁺;W↓)+A(x⁻;W↑)``."""

    name = "gamma"
    requires = ("affine",)
    drops_bias = True
    needs_output = True
    gamma: float = 0.25

    def __post_init__(self):
        super().__post_init__()
        if self.gamma < 0:
            raise RuleError(f"gamma must be ≥ 0, got {self.gamma}")

    def relevance(self, ctx, relevance):
        weight, bias = ctx.weight_and_bias()
        gamma = self.gamma

        def weights():
            w_pos, w_neg = ctx.weight_parts()
            return weight + gamma * w_pos, weight + gamma * w_neg

        w_up, w_down = ctx.memo(f"gamma={gamma}", weights)
        z = ctx.output if ctx.output is not None else _A(ctx, ctx.x, weight, bias)
        up_key, down_key = f"γ={gamma} W↑|W↓", f"γ={gamma} W↓|W↑"
        up = signed_share(
            ctx, torch.where(z > 0, relevance, 0.0), w_up, w_down, None, self.stab, up_key
        )
        down = signed_share(
            ctx, torch.where(z < 0, relevance, 0.0), w_down, w_up, None, self.stab, down_key
        )
        return [up + down]


@register_rule
@dataclass
class ZBeta(_Stabilized):
    """zβ (bounded inputs ``l ≤ x ≤ h``): ``z = A(x;W) − A(l;W⁺) − A(h;W⁻)``,
    ``R_in = x⊙Aᵀ(s;W) − l⊙Aᵀ(s;W⁺) − h⊙Aᵀ(s;W⁻)``.

    ``low``/``high`` are numbers or one value per input channel; or ``bounds`` names a
    preprocessing preset (``c3d-ucf101``, ``hara``) or ``preprocess`` (the one in use), with
    ``per_channel`` choosing ``(−mean_c, 255 − mean_c)`` over the paper's scalar bounds.
    """

    name = "zbeta"
    requires = ("affine",)
    needs_output = True
    low: float | tuple[float, ...] | None = None
    high: float | tuple[float, ...] | None = None
    bounds: str | None = None
    per_channel: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.bounds is None and (self.low is None or self.high is None):
            raise RuleError("zbeta needs 'low' and 'high', or 'bounds' (a preprocessing preset)")

    def bind(self, *, preprocess: str | None = None, **_: Any) -> Rule:
        """Resolve ``bounds`` into ``low``/``high`` from the preprocessing preset."""
        if self.bounds is None:
            return self
        name = preprocess if self.bounds == "preprocess" else self.bounds
        if name is None:
            raise RuleError(
                "zbeta takes its bounds from the preprocessing, but none is known: pass "
                "preprocess=... or name one in the architecture file"
            )
        from relgraph.preprocess import get_preprocess

        low, high = get_preprocess(name).zbeta_bounds(self.per_channel)
        if not self.per_channel:
            # the paper's bounds are one number for every channel (zbeta_bounds repeats it per
            # channel): kept scalar, they also fit a first layer that does not read 3 channels
            return dataclasses.replace(self, low=float(low[0]), high=float(high[0]), bounds=None)
        return dataclasses.replace(
            self, low=tuple(low.tolist()), high=tuple(high.tolist()), bounds=None
        )

    def _bound(self, value, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        if t.dim() == 1:
            if t.numel() != x.shape[1]:
                raise RuleError(
                    f"zbeta has {t.numel()} per-channel bounds but its input has "
                    f"{x.shape[1]} channels"
                )
            t = t.reshape(1, -1, *([1] * (x.dim() - 2)))
        return t.expand_as(x)

    def relevance(self, ctx, relevance):
        x = ctx.x
        weight, bias = ctx.weight_and_bias()
        w_pos, w_neg = ctx.weight_parts()
        low, high = self._bound(self.low, x), self._bound(self.high, x)
        # A(x;W) = output − b: no extra pass; the bounds' part is the same for every sample,
        # so it is computed once, for one sample, with the bias folded in
        from_output = ctx.output is not None and bias is not None

        def offset():
            part = _A(ctx, low[:1], w_pos) + _A(ctx, high[:1], w_neg)
            return part + bias.reshape(1, -1, *([1] * (part.dim() - 2))) if from_output else part

        key = ("zbeta", tuple(x.shape[1:]), self.low, self.high, from_output)
        z = (ctx.output if from_output else _A(ctx, x, weight)) - ctx.memo(key, offset)
        bound_peak = max(abs(v) for v in _values(self.low) + _values(self.high))
        scale = sample_scale(x, also=bound_peak)  # see signed_share
        s = self.stab(relevance, rescaled(z, scale), scale)
        # x⊙Aᵀ(s;W) − l⊙Aᵀ(s;W⁺) − h⊙Aᵀ(s;W⁻) with Aᵀ(s;W) = Aᵀ(s;W⁺) + Aᵀ(s;W⁻)
        from_positive, from_negative = ctx.adjoint_pair(s, "W+|W-", w_pos, w_neg)
        return [rescaled((x - low) * from_positive + (x - high) * from_negative, scale)]


def _values(bound: float | tuple[float, ...]) -> list[float]:
    return list(bound) if isinstance(bound, (tuple, list)) else [bound]


@register_rule
@dataclass
class Flat(_Stabilized):
    """Flat: ``R_in = Aᵀ(R / stab(A(1;1)); 1)``, uniform over each receptive field."""

    name = "flat"
    requires = ("affine",)
    drops_bias = True
    needs_inputs = False

    def relevance(self, ctx, relevance):
        ones = ctx.memo("1", lambda: torch.ones_like(ctx.weight_and_bias()[0]))
        return [input_free_share(ctx, relevance, self.stab, "1", ones)]


@register_rule
@dataclass
class WSquare(_Stabilized):
    """w²: ``R_in = Aᵀ(R / stab(A(1;W²)); W²)``, bias dropped."""

    name = "wsquare"
    requires = ("affine",)
    drops_bias = True
    needs_inputs = False

    def relevance(self, ctx, relevance):
        squared = ctx.memo("W²", lambda: ctx.weight_and_bias()[0] ** 2)
        return [input_free_share(ctx, relevance, self.stab, "W²", squared)]


# --------------------------------------------------------------------------- pooling, merges


@register_rule
@dataclass
class WinnerTakeAll(Rule):
    """Max pool: ``R_in[k] = Σ_j δ_jk R[j]``, δ the forward's argmax (overlaps add)."""

    name = "winner-take-all"
    requires = ("max_route",)
    # the argmax indices come from the forward pass, so the input itself need not be kept
    needs_inputs = False
    needs_record = True

    def relevance(self, ctx, relevance):
        return [ctx.op.max_route(ctx.x, relevance, indices=ctx.record, x_shape=ctx.input_shapes[0])]


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
    """``R_in = x ⊙ Aᵀ(R / stab(f(x)))``: each input its share of the window (or sum) it fed."""

    name = "proportional"
    requires = ("window", "split")

    def relevance(self, ctx, relevance):
        if "window" in ctx.op.capabilities:
            scale = sample_scale(ctx.x)  # see signed_share
            x = rescaled(ctx.x, scale)
            s = self.stab(relevance, ctx.op.window_sum(x), scale)
            return [x * ctx.op.window_sum_adjoint(s, x.shape)]
        return _scaled_split(ctx, relevance, self.stab)


@register_rule
@dataclass
class Uniform(Rule):
    """Average pool as in the paper: ``R_in[k] = Σ_j R[j] / N_j`` over the windows j holding k
    (``N_j`` counts the window's real inputs, so padding takes no relevance)."""

    name = "uniform"
    requires = ("window",)
    needs_inputs = False

    def relevance(self, ctx, relevance):
        shape = ctx.input_shapes[0]

        def counts():  # the same for every sample: counted once, for one sample
            ones = torch.ones((1, *shape[1:]), dtype=relevance.dtype, device=relevance.device)
            return ctx.op.window_sum(ones)

        per_window = ctx.memo(("N_j", tuple(shape[1:])), counts)
        return [ctx.op.window_sum_adjoint(Stabilizer("zero")(relevance, per_window), shape)]


@register_rule
@dataclass
class Split(_Shares):
    """add: ``R_i = x_i / Σx · R`` (stabilised); concat: ``R`` sliced back to each input."""

    name = "split"
    requires = ("split",)

    def relevance(self, ctx, relevance):
        return _scaled_split(ctx, relevance, self.stab)


@register_rule
@dataclass
class SignalTakeAll(Rule):
    """A product of a signal and a gate: ``R_signal = R``, ``R_gate = 0`` (Arras et al. 2017,
    "Explaining recurrent neural network predictions in sentiment analysis", the rule of LRP
    for LSTMs). The signal is the input shaped like the output (the squeeze-excitation gate
    is broadcast); ``signal`` (slot 0 or 1) names it where both or neither are. A signal
    that was broadcast gets R summed over the broadcast dimensions."""

    name = "signal-take-all"
    requires = ("product",)
    needs_inputs = False  # the input shapes decide
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
                    "signal: 0 or signal: 1 for this node"
                )
            signal = slots[0]
        handed = [relevance.new_zeros(shape) for shape in shapes]
        handed[signal] = ctx.op.to_input_shape(relevance, shapes[signal])
        return handed


def _scaled_split(ctx: NodeContext, relevance: torch.Tensor, stab: Stabilizer) -> list:
    """The op's ``split`` with the inputs at the scale ``sample_scale`` picks (see
    ``signed_share``); concat only slices, and its inputs are not even read."""
    if any(x is None for x in ctx.inputs):
        return ctx.op.split(ctx.inputs, relevance, stab)
    scale = sample_scale(*ctx.inputs)
    inputs = [rescaled(x, scale) for x in ctx.inputs]
    return ctx.op.split(inputs, relevance, lambda r, z: stab(r, z, scale))


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
        self.parts = [(float(w), make_rule(r)) for w, r in self.parts]

    @property
    def requires(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(c for _, r in self.parts for c in r.requires)

    def fits(self, op) -> bool:
        return all(rule.fits(op) for _, rule in self.parts)

    @property
    def needs_inputs(self) -> bool:  # type: ignore[override]
        return any(r.needs_inputs for _, r in self.parts)

    @property
    def needs_output(self) -> bool:  # type: ignore[override]
        return any(getattr(r, "needs_output", False) for _, r in self.parts)

    def bind(self, **context: Any) -> Rule:
        parts = [(w, r.bind(**context)) for w, r in self.parts]
        return dataclasses.replace(self, parts=parts)

    def relevance(self, ctx, relevance):
        total = None
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
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise RuleError(
                    f"a part's weight must be a number, got {weight!r}", file=file, line=line
                )
            built.append((float(weight), make_rule(part["rule"], file=file, line=line)))
        return cls(parts=built)
