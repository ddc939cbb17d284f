"""The numbers under every rule: formats, sign splits, the stabiliser and numeric rescaling.

How a pass treats its numbers (shares beyond the format checked at once or at the end,
activations' extremes remembered from the forward pass) is a ``Numerics`` object that the
pass hands to every rule (``NodeContext.numerics``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from relgraph.errors import RuleError

#: formats too narrow to divide or sum in: their shares and sums are formed in float32
LOW_PRECISION = (torch.bfloat16, torch.float16)

#: per-sample input size up to which a bfloat16 node runs its maps in float32
#: (``NodeContext.working``)
SMALL_INPUT = 16384


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """The format relevance is carried and divided in for activations of ``dtype``: float32
    for bfloat16 and float16 (8 and 11 significant bits would round every share), else
    ``dtype`` itself."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def widened(t: torch.Tensor) -> torch.Tensor:
    """``t`` in ``accumulator(t.dtype)``: a heavy op's bfloat16 result, ready to divide."""
    return t.float() if t.dtype in LOW_PRECISION else t


def positive(t: torch.Tensor) -> torch.Tensor:
    """``t⁺ = max(t, 0)``."""
    return t.clamp(min=0)


def negative(t: torch.Tensor) -> torch.Tensor:
    """``t⁻ = min(t, 0)``."""
    return t.clamp(max=0)


@dataclass(frozen=True)
class Stabilizer:
    """Safe division ``R / stab(z)``.

    ``zero`` (the paper authors' code): ``stab(z) = z`` and the result is 0 where ``z == 0``.
    ``epsilon`` (zennit, innvestigate): ``stab(z) = z + ε·sign(z)`` with ``sign(0) = +1``
    (a z of −0 takes −ε, which hands on the same shares: see ``denominator``).
    In both, a denominator that is zero or subnormal gives 0, and so does a quotient too large
    for the format: never Inf or NaN.

    Which buffers a rule's quotient may be formed in is not the stabiliser's business: the
    rules divide through their node's ``Policy.divide`` (``relgraph.rules.policy``), which
    calls ``denominator`` and ``safe_divide``.
    """

    kind: str = "zero"
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in ("zero", "epsilon"):
            raise RuleError(f"stabilizer must be 'zero' or 'epsilon', got {self.kind!r}")
        if self.epsilon < 0:
            raise RuleError(f"the stabilizer's epsilon must be ≥ 0, got {self.epsilon}")

    def epsilon_in_bias(
        self, bias: torch.Tensor | None, scale: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """``b + ε`` for a map whose ``z`` is ≥ 0 by construction (z⁺) and that adds its bias
        itself: the map then forms ``z + ε`` with no pass of its own (``denominator`` with
        ``shifted=True``); ``None`` where that does not apply: no bias, a zero stabiliser, a
        rescaled sample, or bfloat16 (whose bias is added to the widened ``z``)."""
        if (
            bias is None
            or scale is not None
            or self.kind != "epsilon"
            or self.epsilon <= 0
            or dtype in LOW_PRECISION
        ):
            return None
        return bias + self.epsilon

    def denominator(
        self,
        z: torch.Tensor,
        scale: torch.Tensor | None = None,
        *,
        nonnegative: bool = False,
        shifted: bool = False,
        into_z: bool = False,
    ) -> torch.Tensor:
        """``stab(z)``; ``scale`` is the per-sample factor (``sample_scale``) that ``z`` was
        computed with, so that ε scales along with it. ``nonnegative``: no ``z`` is below 0
        by construction (z⁺'s sums of non-negative products), so ``sign(z) = +1`` needs no
        test. ``shifted``: ``z`` holds ``z + ε`` already (``epsilon_in_bias``). ``into_z``:
        ``z + ε`` may be formed in ``z``'s memory (the same values)."""
        if shifted and (scale is not None or not nonnegative or self.kind != "epsilon"):
            raise RuleError("shifted: a non-negative z with ε added, at no rescaling")
        if self.kind != "epsilon" or self.epsilon <= 0 or shifted:
            return z
        epsilon = self.epsilon if scale is None else self.epsilon * _to_rank(scale, z)
        epsilon = torch.as_tensor(epsilon, dtype=z.dtype, device=z.device)
        if nonnegative:
            return z.add_(epsilon) if into_z and not z._is_view() else z + epsilon
        # ε·sign(z) as copysign(ε, z): faster than a where on X3D-S's adds. A z of −0 takes
        # −ε, which changes no share: a sum is −0 only where every one of its terms is, so
        # each contribution divided by it is 0 either way
        return torch.copysign(epsilon, z).add_(z)

    def masks_vanishing(self, dtype: torch.dtype, scale: torch.Tensor | None = None) -> bool:
        """Whether a denominator of ``dtype`` may be zero or subnormal: not
        ``z + ε·sign(z)`` at no rescaling, ``|z + ε·sign(z)| ≥ ε ≥ tiny``."""
        tiny = torch.finfo(dtype).tiny
        return not (self.kind == "epsilon" and scale is None and self.epsilon >= tiny)

    def __call__(
        self,
        numerator: torch.Tensor,
        z: torch.Tensor,
        scale: torch.Tensor | None = None,
        *,
        numerics: Numerics | None = None,
    ) -> torch.Tensor:
        """``numerator / stab(z)`` as a new tensor (see ``denominator``); a bfloat16 ``z``
        or numerator is widened to float32 first: the quotient is formed in float32.
        ``numerics``: the pass's numeric policy (``Numerics``; default: every share checked
        as it is formed)."""
        wide_z = widened(z)
        denominator = self.denominator(wide_z, scale, into_z=wide_z is not z)
        mask = self.masks_vanishing(denominator.dtype, scale)
        return safe_divide(widened(numerator), denominator, mask=mask, numerics=numerics)


def safe_divide(
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    *,
    mask: bool = True,
    out: torch.Tensor | None = None,
    numerics: Numerics | None = None,
) -> torch.Tensor:
    """``numerator / denominator`` with every share beyond the format set to 0 (see
    ``_safe_quotient``; ``mask=False``: no denominator can be subnormal). ``out``: one of the
    two operands, ``dense``, of the quotient's shape, format and layout, which the quotient
    is written into, a piece of ``CHUNK`` elements at a time, so that the mask of vanishing
    denominators is never larger than a piece (element-wise: the same values as in one go).
    ``numerics``: the pass's numeric policy (default: every share checked as it is formed)."""
    check = numerics is None or not numerics.checks_quotients_later
    tiny = torch.finfo(denominator.dtype).tiny
    if out is None:
        quotient = numerator / denominator
        mask = mask and _may_vanish(denominator, tiny)
        return _safe_quotient(numerator, denominator, tiny, quotient, mask=mask, check=check)
    into_numerator = out is numerator
    for num, den in zip(_pieces(flat(numerator)), _pieces(flat(denominator))):
        masked = mask and _may_vanish(den, tiny)
        vanishing = _vanishing(den, tiny) if masked else None
        quotient = torch.div(num, den, out=num if into_numerator else den)
        _safe_quotient(num, den, tiny, quotient, vanishing, mask=masked, check=check)
    return out


def same_places(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one shape keep each element at the same offset: their strides
    agree on every dimension longer than one (a dimension of size one, such as a batch of one,
    may carry any stride, and channels-last results differ there)."""
    return all(m == n or size == 1 for m, n, size in zip(a.stride(), b.stride(), a.shape))


#: elements per piece of a quotient formed in place (``safe_divide(..., out=...)``)
CHUNK = 2**20


def _pieces(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A 1-D ``t`` in pieces of ``CHUNK`` elements (itself where it is no longer)."""
    return (t,) if t.numel() <= CHUNK else t.split(CHUNK)


def dense(t: torch.Tensor) -> bool:
    """Whether ``t`` fills its memory without gaps or overlaps, in the default layout or
    channels-last (``Graph.working_layout``): it may then be written in place."""
    if t.is_contiguous():
        return True
    if t.dim() == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d)
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return False


def packed(t: torch.Tensor) -> bool:
    """Whether ``t`` fills its memory without gaps or overlaps with its axes in any order
    (a permuted tensor, such as the heads view ``(B, heads, N, d)`` of a ``(B, N, heads, d)``
    buffer): an element-wise result may be written into it. Unlike ``dense``, one sample
    need not be one block of memory."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def flat(t: torch.Tensor) -> torch.Tensor:
    """A ``dense`` tensor's memory as a 1-D view, in memory order."""
    return t.view(-1) if t.is_contiguous() else t.as_strided((t.numel(),), (1,))


#: elements of ``|z|`` that ``_may_vanish`` forms at a time, in one scratch buffer small
#: enough to stay in a core's cache
VANISH_PIECE = 2**17


def _may_vanish(z: torch.Tensor, tiny: float) -> bool:
    """Whether some ``|z| < tiny`` may be there to mask: on the CPU, one reduction tells
    (``min |z|``, much cheaper there than the two comparisons of the mask); on another
    device, always (the answer would cost a synchronisation). A NaN in ``z`` hides the
    minimum, so the answer is then yes: the mask itself takes a NaN for no vanishing z.

    A ``dense`` z larger than ``VANISH_PIECE`` is taken a piece at a time, its ``|z|``
    written into one reused scratch buffer, which stays in the cache, instead of a new
    z-sized tensor: the same minimum at about half the cost."""
    if z.device.type != "cpu":
        return True
    if z.numel() == 0:
        return False
    if z.numel() <= VANISH_PIECE or not dense(z):
        return not bool(z.abs().amin() >= tiny)
    scratch = torch.empty(VANISH_PIECE, dtype=z.dtype)
    least = torch.stack(
        [torch.abs(p, out=scratch[: p.numel()]).amin() for p in flat(z).split(VANISH_PIECE)]
    )
    return not bool(least.amin() >= tiny)


def _vanishing(z: torch.Tensor, tiny: float) -> torch.Tensor:
    """Where ``|z| < tiny`` (NaN: no), by two comparisons: no z-sized float temporary."""
    return torch.lt(z, tiny).logical_and_(torch.gt(z, -tiny))


def _safe_quotient(
    numerator: torch.Tensor,
    z: torch.Tensor,
    tiny: float,
    quotient: torch.Tensor,
    vanishing: torch.Tensor | None = None,
    *,
    mask: bool = True,
    check: bool = True,
) -> torch.Tensor:
    """``quotient = numerator / z`` with every share beyond the format set to 0, in place.

    z = 0 gives Inf or NaN, and a normal but tiny z can overflow R/z; such a share lies beyond
    the format and hands on nothing (NaN would follow where Inf meets a zero input). A
    subnormal z hands on nothing either. ``vanishing`` (where ``|z| < tiny``) must be taken
    before ``quotient`` overwrites ``z``; ``mask=False``: no z can be subnormal (ε ≥ tiny).
    ``check=False`` (``Numerics.checks_quotients_later``) leaves the shares beyond the format
    for the caller to find in the result."""
    if check:
        quotient.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    if not mask:
        return quotient
    if vanishing is None:
        vanishing = _vanishing(z, tiny)
    return quotient.masked_fill_(vanishing, 0.0)


def _to_rank(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.reshape(scale.shape[0], *([1] * (like.dim() - 1)))


#: peaks within [2⁻³², 2³²] leave ample room to the ends of float32 (2^±126): no rescaling
SAFE_EXPONENTS = (-32, 32)


def sample_scale(
    *tensors: torch.Tensor,
    numerics: Numerics | None = None,
    also: float = 0.0,
    nonnegative: bool | Sequence[bool] = False,
) -> torch.Tensor | None:
    """See ``scale_and_sign``; the scale alone."""
    return scale_and_sign(*tensors, also=also, nonnegative=nonnegative, numerics=numerics)[0]


def scale_and_sign(
    *tensors: torch.Tensor,
    numerics: Numerics | None = None,
    also: float = 0.0,
    nonnegative: bool | Sequence[bool] = False,
) -> tuple[torch.Tensor | None, bool]:
    """A power of two per sample that brings the sample's largest magnitude (over ``tensors``,
    all batched alike) into [1, 2), shaped ``(B, 1, ...)`` like the first tensor; ``None``
    (no rescaling needed) when every sample's peak already lies well inside the format.

    Rules compute ``z`` and ``s = R / stab(z)`` from inputs multiplied by it: a power of two
    changes no bit of a result in the normal range, but keeps ``z`` away from the ends of the
    format, where ``R / z`` overflows (inputs near 1e-38 in float32) or underflows (near 1e38).

    Also returns whether no entry is negative (then every ``t⁻`` term of a rule vanishes), read
    off the same single pass over the data. ``nonnegative=True`` says that the tensors are
    ≥ 0 by construction (``NodeContext.known_nonnegative``): their peak is their maximum,
    and the minimum is not looked for; a sequence says it per tensor (a residual add of a
    ReLU output and a convolution's: the first tensor's minimum is not looked for).
    ``numerics``: the pass's numeric policy, which may know the extremes already
    (``Numerics.remember_extremes``).
    """
    first = tensors[0]
    flags = [nonnegative] * len(tensors) if isinstance(nonnegative, bool) else list(nonnegative)
    peaks: list[float] = []
    no_negative = True
    for t, known in zip(tensors, flags):
        highs, lows = (numerics or PLAIN).sample_extremes(t, known)
        if not known:
            no_negative = no_negative and not any(v < 0 for v in lows)
            highs = [max(h, -lo) for h, lo in zip(highs, lows)]
        peaks = highs if not peaks else [max(a, b) for a, b in zip(peaks, highs)]
    low, high = SAFE_EXPONENTS
    # math.frexp(0) gives the exponent 0, as torch.frexp does; NaN and ±Inf, which torch
    # also gives 0, are no reason to rescale either
    if all(not math.isfinite(p) or low <= math.frexp(max(p, also))[1] <= high for p in peaks):
        return None, no_negative
    info = torch.finfo(first.dtype)
    # keep the factor itself a finite normal number (a subnormal peak is only raised part-way)
    lowest_power, highest_power = math.frexp(info.tiny)[1] - 1, math.frexp(info.max)[1] - 1
    # the peaks are the format's own values (exact in Python's float), so frexp gives the
    # exponent torch.frexp gives; ``also`` is a magnitude every sample has
    powers = [min(max(1 - math.frexp(max(p, also))[1], lowest_power), highest_power) for p in peaks]
    scale = torch.tensor(
        [2.0**p for p in powers], dtype=accumulator(first.dtype), device=first.device
    )  # exact: integer powers of two within the format
    return _to_rank(scale, first), no_negative


def _scan(t: torch.Tensor, nonnegative: bool) -> tuple[list[float], list[float]]:
    """Each sample's largest and (unless ``nonnegative``) smallest entry, as Python floats,
    after one transfer to the host: the tests on them cost a dozen tiny tensor ops less per
    rule in Python, which counts on graphs of hundreds of nodes (X3D's).

    On CPU each sample of a ``dense`` tensor (either layout) is one block of memory, reduced
    whole by one ``aminmax``: faster than ``amax`` and ``amin`` over all but the
    batch axis (and those run faster than ``aminmax(dim=1)`` of ``t.reshape(B, -1)``,
    which also copies a channels-last ``t``)."""
    batch = t.shape[0]
    if t.device.type == "cpu" and dense(t) and t.numel():
        memory, size = flat(t), t.numel() // batch
        samples = [memory[i * size : (i + 1) * size] for i in range(batch)]
        if nonnegative:
            extremes = [sample.amax() for sample in samples]
        else:
            extremes = [e for sample in samples for e in reversed(torch.aminmax(sample))]
        values = torch.stack(extremes).tolist()
    else:
        dims = tuple(range(1, t.dim()))
        parts = [t.amax(dims)] if nonnegative else [t.amax(dims), t.amin(dims)]
        # interleaved per sample: largest, then smallest
        values = torch.stack(parts, dim=1).flatten().tolist()
    if nonnegative:
        return values, []
    return values[0::2], values[1::2]


def rescaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``t`` times the per-sample ``scale`` of ``sample_scale`` (``t`` itself for ``None``),
    in ``t``'s own format: a power of two is exact in bfloat16 as in float32."""
    return t if scale is None else t * _to_rank(scale, t).to(t.dtype)


@dataclass(eq=False)  # one object per pass, compared by identity
class Numerics:
    """The numeric policy of one pass, handed to every rule (``NodeContext.numerics``).

    Attributes
    ----------
    checks_quotients_later
        The stabiliser leaves a quotient beyond the format (``R / z`` that overflows: with
        the ε stabiliser, ε = 1e-6, in float32 only where ``|R| > 3.4e32``) as Inf or NaN
        instead of zeroing it, which saves one pass over every quotient. For a caller that
        checks the final relevance and, where it is not finite, runs the pass again with
        this off (``explain``): the result is the same. A quotient beyond the format either
        reaches the result as Inf or NaN (products and sums keep them: Inf·0 is NaN), or
        reaches no element of it (an output position no input feeds, or one whose z
        vanishes, which is zeroed in both runs), so where the result is finite no quotient
        left non-finite changed any element of it. A vanishing z is still masked.
    remembers_extremes
        ``remember_extremes`` keeps each sample's extremes of a tensor for the rules'
        numeric scale (``scale_and_sign``), which then reads them instead of scanning the
        tensor again: ``explain`` takes them in the forward pass, as each activation is made
        and still in the cache, and once for an activation that two rules read. The same
        numbers either way.
    """

    checks_quotients_later: bool = False
    remembers_extremes: bool = False
    #: id → (weak reference, whether the tensor is ≥ 0 by construction, (largest, smallest))
    _extremes: dict = field(default_factory=dict, repr=False)

    def remember_extremes(self, t: torch.Tensor, nonnegative: bool) -> None:
        """Take ``t``'s per-sample extremes now (``nonnegative``: ``t`` ≥ 0 by construction,
        its maximum alone), for ``sample_extremes`` to read later in this pass; nothing
        unless ``remembers_extremes``. ``t`` must not change afterwards (kept activations
        do not)."""
        if self.remembers_extremes:
            self._extremes[id(t)] = (weakref.ref(t), nonnegative, _scan(t, nonnegative))

    def sample_extremes(
        self, t: torch.Tensor, nonnegative: bool
    ) -> tuple[list[float], list[float]]:
        """Each sample's largest and (unless ``nonnegative``) smallest entry: those
        ``remember_extremes`` took of this very tensor, else a scan. A tensor remembered as
        ≥ 0 by construction has no entry below 0: its smallest is reported as 0, which gives
        the same peak and sign as the true one."""
        entry = self._extremes.get(id(t))
        if entry is not None and entry[0]() is t:
            highs, lows = entry[2]
            if nonnegative:
                return highs, []
            return highs, [0.0] * len(highs) if entry[1] else lows
        return _scan(t, nonnegative)


#: the policy outside a pass (and the default of a ``NodeContext``): every share checked as it
#: is formed, nothing remembered
PLAIN = Numerics()
