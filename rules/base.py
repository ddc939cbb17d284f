"""The machinery below every rule: the node context, safe division, sign splits, the registry.

A rule turns the relevance of a node's output into relevance of its inputs. It asks the op
for a capability (``affine``, ``window``, ``max_route``, ``split``, ``reshape``; see
``relgraph.engine.ops``) and never looks at the op's type.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import typing
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from relgraph.engine.hostmemory import release_freed
from relgraph.engine.ops import Op
from relgraph.errors import RuleError, did_you_mean


@dataclass
class NodeContext:
    """What a rule sees of one node during the reverse pass.

    Attributes
    ----------
    node
        The node's name.
    op
        Its op (offers the adjoint maps).
    inputs
        The activations of its inputs, in slot order (``None`` where the rule declared it
        does not need them).
    input_shapes
        The full (batched) shapes of its inputs.
    output
        Its own activation, when the rule needs ``"output"``, else ``None``.
    tensors
        Its parameter tensors by name.
    cache
        A per-graph memo for values that depend only on the weights (see ``memo``: an entry
        is dropped by itself when the weights it came from change).
    """

    node: str
    op: Op
    inputs: list[torch.Tensor | None]
    input_shapes: list[torch.Size]
    output: torch.Tensor | None
    tensors: dict[str, torch.Tensor]
    cache: dict
    #: what the op recorded in the forward pass (max pools: argmax indices), if asked for
    record: Any = None
    #: the memory mode (``Graph.cache_policy == "none"``): big affine maps run a slice of
    #: their weight at a time (``sliced_map``), derived weights are made slice by slice
    low_memory: bool = False
    #: the reverse pass will not read the relevance handed to the rule again, and no other
    #: tensor shares its memory: a rule that reads it once may form a result in it
    #: (``Stabilizer(..., overwrite_numerator=True)``); a rule that reads it twice must not
    relevance_owned: bool = False
    #: per input slot, whether the activation is ≥ 0 by construction
    #: (``Graph.nonnegative_nodes``): then no rule need look for negative entries
    nonnegative_inputs: tuple[bool, ...] = ()
    #: the pass runs channels-last (``Graph.working_layout``): the 5-D weights derived here
    #: (W⁺, W⁻, flipped kernels) are laid out so too, which oneDNN's convolutions would
    #: otherwise copy into that layout on every call (R(2+1)-D 18's last layers: 21 MB each)
    channels_last: bool = False
    #: the memo entry of this node, checked against ``tensors`` once (``memo``)
    _entry: tuple | None = field(default=None, init=False, repr=False)

    @property
    def x(self) -> torch.Tensor:
        """The single input's activation."""
        return self.inputs[0]

    def known_nonnegative(self, *slots: int) -> bool:
        """Whether the inputs of ``slots`` (default: all) are ≥ 0 by construction."""
        known = self.nonnegative_inputs
        chosen = slots or range(len(self.inputs))
        return bool(known) and all(slot < len(known) and known[slot] for slot in chosen)

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, computed once per node and weights.

        The node's entry in ``cache`` remembers which tensors it was computed from (their
        identity, storage and version counter): editing a weight in place
        (``graph.tensors(node)["weight"].mul_(2)``) or putting another tensor in its place
        drops the node's memo, so no caller ever has to clear it. Tensors without a version
        counter (created in inference mode) cannot vouch for their values: nothing derived
        from them is memoised.
        """
        entry = self._entry  # checked once per node and pass: the weights do not change within
        if entry is None:
            entry = self.cache.get(self.node)
            if entry is None or not _same_tensors(entry[0], self.tensors):
                signature = _signature(self.tensors)
                if signature is None:
                    return compute()
                entry = (signature, {})
                self.cache[self.node] = entry
            self._entry = entry
        values = entry[1]
        if key not in values:
            values[key] = compute()
        return values[key]

    def working(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight in the format the node's maps ``A``/``Aᵀ`` run in: its own, except that
        a bfloat16 node with a small input (at most ``SMALL_INPUT`` values per sample: the
        fully connected layers) runs in float32. There the relevance sits on few outputs (a
        one-hot seed: on one), so bfloat16's rounding of ``z`` and ``R / z`` does not average
        out over many, and the maps cost little next to the convolutions'."""
        if weight.dtype in LOW_PRECISION and math.prod(self.input_shapes[0][1:]) <= SMALL_INPUT:
            return weight.float()
        return weight

    def weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The affine map's weight and bias (batch-norm folded to scale and shift)."""
        return self.memo("W,b", lambda: self.op.weight_and_bias(self.tensors))

    def positive_weight(self, lazy: bool = False) -> torch.Tensor | Lazy:
        """``W⁺``, memoised; with ``lazy`` in the memory mode a ``Lazy`` W⁺ that the maps
        make slice by slice, so that the whole of it never exists."""
        if lazy and self.low_memory:
            return Lazy(self.weight_and_bias()[0], positive)
        return self.memo(
            ("W+", self.channels_last),
            lambda: self.laid_out(self.weight_and_bias()[0].clamp(min=0)),
        )

    def negative_weight(self) -> torch.Tensor:
        """``W⁻``, memoised. Kept apart from ``W⁺``: z⁺ on ReLU outputs never needs it, and
        caching it anyway would cost another copy of the weights."""
        return self.memo(
            ("W-", self.channels_last),
            lambda: self.laid_out(self.weight_and_bias()[0].clamp(max=0)),
        )

    def laid_out(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight derived for this node's maps in the pass's layout (``channels_last``)."""
        if self.channels_last and weight.dim() == 5:
            return weight.contiguous(memory_format=torch.channels_last_3d)
        return weight

    def weight_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W⁺, W⁻)``, memoised."""
        return self.positive_weight(), self.negative_weight()

    def stacked(self, key: str, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor | None:
        """``first`` and ``second`` stacked for ``op.adjoint_pair`` (memoised under ``key``)."""
        return self.memo(
            ("stacked", key, self.channels_last),
            lambda: self._laid_out_or_none(self.op.stack_inputs(first, second)),
        )

    def adjoint_pair(
        self, s: torch.Tensor, key: str, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Aᵀ(s; first), Aᵀ(s; second))``, in a single adjoint where the op allows."""
        stacked = self.stacked(key, first, second)
        work = self.working(first)
        if work is not first:  # float32 maps at a small bfloat16 node (see ``working``)
            first, second, stacked = work, self.working(second), None
        s = s.to(first.dtype)
        pair = self.op.adjoint_pair(
            s,
            first,
            second,
            self.input_shapes[0],
            stacked,
            kernel_of=lambda weight: self.adjoint_kernel(weight, s),
        )
        return widened(pair[0]), widened(pair[1])

    def adjoint_kernel(self, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor | None:
        """The op's ``adjoint_kernel`` of ``weight`` (a convolution's flipped kernel),
        memoised with the node's weights where ``weight`` is one of the memo's own (W⁺, W⁻,
        a stacked pair: the same tensor on every pass), made afresh for any other tensor;
        ``None`` where the op derives nothing, and in the memory mode, which keeps no
        derived weight."""
        if self.low_memory:
            return None
        op = self.op
        made = self.memo(
            ("Aᵀ kernel", id(weight), self.channels_last),
            lambda: (weakref.ref(weight), self._laid_out_or_none(op.adjoint_kernel(weight, s))),
        )
        if made[0]() is weight:
            return made[1]
        return op.adjoint_kernel(weight, s)

    def _laid_out_or_none(self, weight: torch.Tensor | None) -> torch.Tensor | None:
        return None if weight is None else self.laid_out(weight)


@dataclass(frozen=True)
class Lazy:
    """A weight derived element-wise from another (``derive(weight)``, e.g. W⁺ = max(W, 0)),
    made a slice at a time where the maps run slice by slice (``sliced_map``); ``full()``
    makes all of it. Element-wise, so a slice of the derived weight is the derived slice."""

    weight: torch.Tensor
    derive: Callable[[torch.Tensor], torch.Tensor]

    def full(self) -> torch.Tensor:
        return self.derive(self.weight)


def no_relevance(like: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Relevance that is zero by construction (the gate's under ``signal-take-all``), shaped
    ``shape``: one zero broadcast (no memory of its own), which the reverse pass recognises
    (``is_no_relevance``) and hands on without running the rules of the nodes it alone
    reaches: every rule hands on zeros for zero relevance, so the result is the same."""
    return like.new_zeros(()).expand(tuple(shape))


def is_no_relevance(t: torch.Tensor) -> bool:
    """Whether ``t`` is a broadcast zero (``no_relevance``): every stride 0 and its one
    value 0 (a rule may broadcast another value; that one is handed on as it is)."""
    return t.dim() > 0 and t.numel() > 0 and not any(t.stride()) and t[(0,) * t.dim()].item() == 0


def materialized(weight: torch.Tensor | Lazy) -> torch.Tensor:
    """The weight itself, a ``Lazy`` one made whole."""
    return weight.full() if isinstance(weight, Lazy) else weight


def underlying(weight: torch.Tensor | Lazy) -> torch.Tensor:
    """The weight itself, or the one a ``Lazy`` weight is derived from (same shape and
    format), without making anything."""
    return weight.weight if isinstance(weight, Lazy) else weight


#: the memory mode's slices of a map: at most about this many bytes of weight or of result
#: per slice (and at least ``SLICE_ALIGN`` channels)
SLICE_BYTES = 16 * 2**20
SLICE_ALIGN = 16
#: and at least this many positions along the first spatial axis: fewer can make the CPU's
#: convolution pick another algorithm, whose sums round differently (C3D: from 3 down)
SLICE_ROWS = 4


def _slices(total: int, per_channel: int, first: int = 0) -> list[tuple[int, int]]:
    """``(start, length)`` along ``total`` channels from ``first`` on, each about
    ``SLICE_BYTES`` for ``per_channel`` bytes a channel, a multiple of ``SLICE_ALIGN``."""
    step = max(1, SLICE_BYTES // max(per_channel, 1))
    step = max(SLICE_ALIGN, step - step % SLICE_ALIGN)
    return [(a, min(step, total - a)) for a in range(first, total, step)]


def sliced_map(
    one_slice: Callable[..., torch.Tensor],
    weight: torch.Tensor | Lazy,
    bias: torch.Tensor | None = None,
    *,
    add_to: torch.Tensor | None = None,
    rows: int | None = None,
    row_bytes: int = 0,
) -> torch.Tensor:
    """``A(x; W) + b`` a slice of output channels at a time (``one_slice(W_k, b_k)`` gives
    output channels k), so that only a slice of a ``Lazy`` weight and of the map's workspace
    exists at once. ``rows``: the output's length along its first spatial axis, where
    ``one_slice(W_k, b_k, (start, stop))`` gives just those positions, and ``row_bytes`` what
    one position costs (result and workspace, per output channel): slices are then cut along
    it too. ``add_to``: the result is added into that tensor instead (``add_to + A(x; W)``).
    The op must be ``sliceable``; each output is computed as in one go."""
    base = underlying(weight)
    derive = weight.derive if isinstance(weight, Lazy) else None
    total = base.shape[0]
    weight_per_channel = base[0].numel() * base.element_size()
    out = add_to

    def put(channels: tuple[int, int], span: tuple[int, int] | None = None) -> int:
        """Compute one slice into ``out``; its bytes per output channel."""
        nonlocal out
        result = _piece(one_slice, base, derive, bias, *channels, span)
        if out is None:
            spatial = result.shape[2:] if span is None else (rows, *result.shape[3:])
            out = result.new_empty((result.shape[0], total, *spatial))
        target = out.narrow(1, *channels)
        if span is not None:
            target = target.narrow(2, span[0], span[1] - span[0])
        target.add_(result) if add_to is not None else target.copy_(result)
        size = result.numel() // channels[1] * result.element_size()
        del result, target
        release_freed()  # the slice's result and workspace, before the next one allocates
        return size

    if rows is None:
        head = min(total, SLICE_ALIGN)
        per_channel = max(put((0, head)), weight_per_channel)
        for channels in _slices(total, per_channel, head):
            put(channels)
        return out
    for channels in _slices(total, weight_per_channel):
        step = max(SLICE_ROWS, SLICE_BYTES // max(row_bytes * channels[1], 1))
        if step >= rows:  # one piece: the plain map
            put(channels)
            continue
        for row in range(0, rows, step):
            put(channels, (row, min(rows, row + step)))
    return out


def _piece(one_slice, base, derive, bias, start, length, span=None) -> torch.Tensor:
    w = base.narrow(0, start, length)
    b = None if bias is None else bias.narrow(0, start, length)
    w = derive(w) if derive is not None else w
    return one_slice(w, b) if span is None else one_slice(w, b, span)


def sliced_adjoint(
    one_slice: Callable[[torch.Tensor, torch.Size], torch.Tensor],
    weight: torch.Tensor | Lazy,
    x_shape: torch.Size,
) -> torch.Tensor:
    """``Aᵀ(s; W)`` (``one_slice(W[:, j], shape_j)`` gives input channels j, shaped
    ``shape_j``) a slice of input channels at a time, into one tensor shaped ``x_shape``;
    see ``sliced_map``."""
    base = underlying(weight)
    derive = weight.derive if isinstance(weight, Lazy) else None
    total = base.shape[1]
    per_channel = max(
        math.prod(x_shape) // max(total, 1) * 4, base[:, :1].numel() * base.element_size()
    )
    out = None
    for start, length in _slices(total, per_channel):
        w = base.narrow(1, start, length)
        shape = torch.Size((x_shape[0], length, *x_shape[2:]))
        result = one_slice(derive(w) if derive is not None else w, shape)
        if out is None:
            out = result.new_empty(x_shape)
        out.narrow(1, start, length).copy_(result)
        del result
        release_freed()
    return out


def _signature(tensors: dict[str, torch.Tensor]) -> tuple | None:
    """What identifies the current values of ``tensors``: per name a weak reference to the
    tensor, its storage address and its version counter (bumped by every in-place edit).
    ``None`` when a tensor has no version counter (an inference-mode tensor)."""
    signature = []
    for name, t in sorted(tensors.items()):
        if t.is_inference():
            return None
        signature.append((name, weakref.ref(t), t.data_ptr(), t._version))
    return tuple(signature)


def _same_tensors(signature: tuple, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether ``tensors`` still holds the very tensors of ``signature``, unedited."""
    if len(signature) != len(tensors):
        return False
    for name, ref, pointer, version in signature:
        t = tensors.get(name)
        # a weak reference: a replaced tensor that was freed cannot be mistaken for a new one
        # that happens to reuse its id and memory
        if t is None or ref() is not t or t.data_ptr() != pointer or t._version != version:
            return False
    return True


# --------------------------------------------------------------------------- arithmetic

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
    (a z of −0 takes −ε, which hands on the same shares: see ``__call__``).
    In both, a denominator that is zero or subnormal gives 0, and so does a quotient too large
    for the format: never Inf or NaN.
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
        itself: the map then forms ``z + ε`` with no pass of its own (call this with
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

    def __call__(
        self,
        numerator: torch.Tensor,
        z: torch.Tensor,
        scale: torch.Tensor | None = None,
        *,
        overwrite: bool = False,
        overwrite_numerator: bool = False,
        nonnegative: bool = False,
        shifted: bool = False,
    ) -> torch.Tensor:
        """``numerator / stab(z)``; ``scale`` is the per-sample factor (``sample_scale``) that
        ``z`` was computed with, so that ε scales along with it. A bfloat16 ``z`` or numerator
        is widened to float32 first: the quotient is formed in float32.

        ``overwrite=True`` says that the caller will not read ``z`` again,
        ``overwrite_numerator=True`` the same of ``numerator``: the quotient is then formed in
        that one's memory (the numerator's first) where the shapes and formats allow, so that
        they and the quotient are never alive at once (the same values, bit for bit).
        ``nonnegative=True`` says that no ``z`` is below 0 by construction (z⁺'s sums of
        non-negative products), so ``sign(z) = +1`` needs no test. ``shifted=True`` says that
        ``z`` holds ``z + ε`` already (``epsilon_in_bias``), and ``scale`` is ``None``."""
        wide_z, wide_numerator = widened(z), widened(numerator)
        owned = overwrite or wide_z is not z
        numerator_owned = overwrite_numerator or wide_numerator is not numerator
        numerator, z = wide_numerator, wide_z
        if shifted and (scale is not None or not nonnegative or self.kind != "epsilon"):
            raise ValueError("shifted: a non-negative z with ε added, at no rescaling")
        if self.kind == "epsilon" and self.epsilon > 0 and not shifted:
            epsilon = self.epsilon if scale is None else self.epsilon * _to_rank(scale, z)
            epsilon = torch.as_tensor(epsilon, dtype=z.dtype, device=z.device)
            if nonnegative:
                z = z.add_(epsilon) if owned and not z._is_view() else z + epsilon
            else:
                # ε·sign(z) as copysign(ε, z): faster than a where on X3D-S's adds. A z
                # of −0 takes −ε, which changes no share: a sum is −0 only where every one
                # of its terms is, so each contribution divided by it is 0 either way
                z = torch.copysign(epsilon, z).add_(z)
            owned = True
        tiny = torch.finfo(z.dtype).tiny
        # |z + ε·sign(z)| ≥ ε ≥ tiny: no subnormal denominator to mask
        mask = not (self.kind == "epsilon" and scale is None and self.epsilon >= tiny)
        fits = (
            z.shape == numerator.shape
            and torch.result_type(numerator, z) == z.dtype == numerator.dtype
            and dense(z)
            and _same_places(z, numerator)  # one layout: element i at the same place
            and dense(numerator)
        )
        into_numerator = fits and numerator_owned
        into_z = fits and owned and not z._is_view()
        if not (into_numerator or into_z):
            return _safe_quotient(numerator, z, tiny, numerator / z, mask=mask)
        # the quotient formed in place, a piece at a time: the mask of vanishing z is never
        # larger than a piece (element-wise, so the same values as in one go)
        for num, den in zip(_pieces(flat(numerator)), _pieces(flat(z))):
            vanishing = _vanishing(den, tiny) if mask else None
            quotient = torch.div(num, den, out=num if into_numerator else den)
            _safe_quotient(num, den, tiny, quotient, vanishing, mask=mask)
        return numerator if into_numerator else z


#: elements per piece of the in-place quotient (``Stabilizer(..., overwrite=True)``)
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


def _same_places(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one shape keep each element at the same offset: their strides
    agree on every dimension longer than one (a dimension of size one, such as a batch of one,
    may carry any stride, and channels-last results differ there)."""
    return all(m == n or size == 1 for m, n, size in zip(a.stride(), b.stride(), a.shape))


def flat(t: torch.Tensor) -> torch.Tensor:
    """A ``dense`` tensor's memory as a 1-D view, in memory order."""
    return t.view(-1) if t.is_contiguous() else t.as_strided((t.numel(),), (1,))


def _vanishing(z: torch.Tensor, tiny: float) -> torch.Tensor:
    """Where ``|z| < tiny`` (NaN: no), by two comparisons: no z-sized float temporary."""
    return torch.lt(z, tiny).logical_and_(torch.gt(z, -tiny))


#: set by ``quotients_checked_later``: quotients beyond the format are not zeroed one by one
_CHECKED_LATER = contextvars.ContextVar("relgraph_quotients_checked_later", default=False)


@contextlib.contextmanager
def quotients_checked_later() -> Iterator[None]:
    """Within this block the stabiliser leaves a quotient beyond the format (``R / z`` that
    overflows: with the ε stabiliser, ε = 1e-6, in float32 only where ``|R| > 3.4e32``) as
    Inf or NaN instead of zeroing it: one pass over every quotient fewer (X3D-S's
    explanation: 4 % of its time).

    For a caller that checks the final relevance and, where it is not finite, runs the pass
    again outside the block (``explain``): the result is the same. A quotient beyond the
    format either reaches the result as Inf or NaN (products and sums keep them: Inf·0 is
    NaN), or reaches no element of it (an output position no input feeds, or one whose z
    vanishes, which is zeroed in both runs), so where the result is finite no quotient left
    non-finite changed any element of it. A vanishing z is still masked here."""
    token = _CHECKED_LATER.set(True)
    try:
        yield
    finally:
        _CHECKED_LATER.reset(token)


def _safe_quotient(
    numerator: torch.Tensor,
    z: torch.Tensor,
    tiny: float,
    quotient: torch.Tensor,
    vanishing: torch.Tensor | None = None,
    *,
    mask: bool = True,
) -> torch.Tensor:
    """``quotient = numerator / z`` with every share beyond the format set to 0, in place.

    z = 0 gives Inf or NaN, and a normal but tiny z can overflow R/z; such a share lies beyond
    the format and hands on nothing (NaN would follow where Inf meets a zero input). A
    subnormal z hands on nothing either. ``vanishing`` (where ``|z| < tiny``) must be taken
    before ``quotient`` overwrites ``z``; ``mask=False``: no z can be subnormal (ε ≥ tiny).
    Inside ``quotients_checked_later`` the shares beyond the format are left for the caller
    to find in the result."""
    if not _CHECKED_LATER.get():
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
    also: float = 0.0,
    nonnegative: bool | Sequence[bool] = False,
) -> torch.Tensor | None:
    """See ``scale_and_sign``; the scale alone."""
    return scale_and_sign(*tensors, also=also, nonnegative=nonnegative)[0]


def scale_and_sign(
    *tensors: torch.Tensor,
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
    """
    first = tensors[0]
    flags = [nonnegative] * len(tensors) if isinstance(nonnegative, bool) else list(nonnegative)
    peaks: list[float] = []
    no_negative = True
    for t, known in zip(tensors, flags):
        highs, lows = _sample_extremes(t, known)
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


#: the extremes ``remember_extremes`` took during one pass: id → (weak reference, whether
#: the tensor is ≥ 0 by construction, (largest, smallest)); ``None`` outside such a pass
_REMEMBERED: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "relgraph_remembered_extremes", default=None
)


@contextlib.contextmanager
def extremes_remembered() -> Iterator[None]:
    """A pass within which ``remember_extremes`` keeps each sample's extremes of a tensor for
    the rules' numeric scale (``scale_and_sign``), which then reads them instead of scanning
    the tensor again. ``explain`` takes them in the forward pass, as each activation is made
    and still in the cache, and once for an activation that two rules read (X3D's block
    inputs), which saves X3D's models a scan of each. The same numbers either way."""
    token = _REMEMBERED.set({})
    try:
        yield
    finally:
        _REMEMBERED.reset(token)


def remember_extremes(t: torch.Tensor, nonnegative: bool) -> None:
    """Take ``t``'s per-sample extremes now (``nonnegative``: ``t`` ≥ 0 by construction, its
    maximum alone), for ``_sample_extremes`` to read later in this pass; nothing outside
    ``extremes_remembered``. ``t`` must not change afterwards (kept activations do not)."""
    remembered = _REMEMBERED.get()
    if remembered is not None:
        remembered[id(t)] = (weakref.ref(t), nonnegative, _scan(t, nonnegative))


def _sample_extremes(t: torch.Tensor, nonnegative: bool) -> tuple[list[float], list[float]]:
    """Each sample's largest and (unless ``nonnegative``) smallest entry: those
    ``remember_extremes`` took of this very tensor, else a scan (``_scan``). A tensor
    remembered as ≥ 0 by construction has no entry below 0: its smallest is reported as 0,
    which gives the same peak and sign as the true one."""
    remembered = _REMEMBERED.get()
    entry = None if remembered is None else remembered.get(id(t))
    if entry is not None and entry[0]() is t:
        highs, lows = entry[2]
        if nonnegative:
            return highs, []
        return highs, [0.0] * len(highs) if entry[1] else lows
    return _scan(t, nonnegative)


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


# --------------------------------------------------------------------------- rules


#: What a rule can ask the forward pass for (``Rule.needs``):
#: ``inputs``: the activations of the node's inputs (``NodeContext.inputs``);
#: ``output``: the node's own activation (``NodeContext.output``);
#: ``record``: what the op recorded in the forward pass, e.g. max-pool indices (``record``).
#: The weights (``NodeContext.tensors``) and the input shapes are always there.
NEEDS = frozenset({"inputs", "output", "record"})

#: the protocol's names before ``needs``: a subclass that still sets one would be ignored
_LEGACY_NEEDS = ("needs_inputs", "needs_output", "needs_record")


class Rule:
    """Base class of relevance rules.

    Subclasses are dataclasses whose fields are the rule's parameters (settable from YAML),
    and implement ``relevance``. Class attributes (or properties, where they follow from the
    parameters):

    ``name``           the name used in YAML and by ``make_rule``
    ``requires``       the op capabilities the rule works with (any one suffices)
    ``needs``          what the rule reads from the forward pass: a frozenset of ``NEEDS``
                       (``inputs``, ``output``, ``record``). The reverse pass keeps exactly
                       that and asks nothing else; a rule built of parts (``Combine``) needs
                       the union of its parts' needs.
    ``conserving``     whether Σ R_in = Σ R holds (under the conditions in
                       docs/reference/rules.md)
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset({"inputs"})
    conserving: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = [n for n in _LEGACY_NEEDS if n in vars(cls)]
        if legacy:
            raise TypeError(
                f"rule class {cls.__name__} sets {', '.join(legacy)}: declare "
                f"needs = frozenset({{...}}) with some of {sorted(NEEDS)} instead"
            )

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        """Relevance of each input, given the relevance of the node's output."""
        raise NotImplementedError

    def __call__(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        return self.relevance(ctx, relevance)

    def bind(self, **context: Any) -> Rule:
        """This rule with context-dependent parameters resolved (e.g. zβ bounds from the
        preprocessing); most rules return themselves."""
        return self

    def fits(self, op: Op) -> bool:
        """Whether the op offers a capability this rule needs."""
        return any(c in op.capabilities for c in self.requires)

    def describe(self) -> str:
        """``name(param=value, ...)``."""
        if dataclasses.is_dataclass(self):
            params = ", ".join(
                f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
            )
            return f"{self.name}({params})" if params else self.name
        return self.name

    def __repr__(self) -> str:
        return self.describe()


RULES: dict[str, type[Rule]] = {}
"""Every registered rule class by name."""


def register_rule(cls: type[Rule] | None = None, *, name: str | None = None, replace: bool = False):
    """Register a rule class so YAML presets can name it. Use as a decorator.

    A name already registered (a built-in such as ``epsilon`` included) raises ``RuleError``:
    every preset naming it would silently change. Pass ``replace=True`` to mean it.

    Examples
    --------
    >>> @register_rule(name="halve-example", replace=True)
    ... @dataclass
    ... class Halve(Rule):
    ...     requires = ("reshape",)
    ...     needs = frozenset()
    ...     def relevance(self, ctx, relevance):
    ...         return [0.5 * relevance.reshape(ctx.input_shapes[0])]
    """

    def add(rule_cls: type[Rule]) -> type[Rule]:
        key = name or rule_cls.name
        existing = RULES.get(key)
        if existing is not None and existing is not rule_cls and not replace:
            raise RuleError(
                f"a rule named '{key}' is already registered ({existing.__module__}."
                f"{existing.__qualname__}); pass replace=True to replace it"
            )
        if not dataclasses.is_dataclass(rule_cls):
            rule_cls = dataclass(rule_cls)
        rule_cls.name = key
        RULES[key] = rule_cls
        return rule_cls

    return add(cls) if cls is not None else add


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert a YAML value for a rule parameter of the given annotation."""
    origin = typing.get_origin(annotation)
    options = (
        typing.get_args(annotation)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None))
        else (annotation,)
    )
    errors = []
    for option in options:
        if option is type(None):
            if value is None:
                return None
            continue
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is bool and isinstance(value, bool):
            return value
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) in (list, tuple, Sequence) and isinstance(
            value, (list, tuple)
        ):
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                return tuple(float(v) for v in value)
        if option is Any:
            return value
        errors.append(getattr(option, "__name__", str(option)))
    raise RuleError(f"{where} must be {' or '.join(errors) or 'valid'}, got {value!r}")


def make_rule(spec: Any, *, file: str | None = None, line: int | None = None) -> Rule:
    """Build a rule from a YAML spec: a name (``"zplus"``) or a mapping
    (``{name: epsilon, epsilon: 0.25}``), or pass a ``Rule`` through."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict):
        if "name" not in spec:
            raise RuleError(
                "a rule mapping needs 'name' (e.g. {name: epsilon, epsilon: 0.25})",
                file=file,
                line=line,
            )
        params = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise RuleError(
            f"a rule must be a name or a mapping with 'name', got {spec!r}", file=file, line=line
        )
    if name not in RULES:
        raise RuleError(
            f"unknown rule '{name}'{did_you_mean(name, RULES)} (rules: {', '.join(sorted(RULES))})",
            file=file,
            line=line,
        )
    cls = RULES[name]
    if name == "combine":
        return cls.from_spec(params, file=file, line=line)  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    kwargs = {}
    for key, value in params.items():
        if key not in fields:
            raise RuleError(
                f"rule '{name}' has no parameter '{key}'{did_you_mean(key, fields)} "
                f"(parameters: {', '.join(fields) or 'none'})",
                file=file,
                line=line,
            )
        try:
            kwargs[key] = _coerce(value, hints.get(key, Any), f"parameter '{key}' of rule '{name}'")
        except RuleError as exc:
            raise RuleError(exc.message, file=file, line=line) from None
    try:
        return cls(**kwargs)
    except RuleError as exc:
        raise RuleError(exc.message, file=file, line=line) from None
    except (TypeError, ValueError) as exc:
        raise RuleError(f"cannot build rule '{name}': {exc}", file=file, line=line) from None
