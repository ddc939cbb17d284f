"""Where a rule's values live: the buffers it may overwrite, its maps slice by slice, what it keeps.

A rule states its formula and computes through its node's ``Policy`` (``NodeContext.policy``):
``divide`` for ``R / stab(z)``, ``multiply``/``add``/``subtract`` for element-wise steps,
``linear_map``/``adjoint``/``adjoint_pair`` for ``A`` and ``Aᵀ``, ``keep`` and ``weight`` for
what is derived from the weights. The policy decides, from the pass (``relevance_owned``,
``low_memory``) and from which tensors the rule made, where each result is formed:

- A tensor the policy made for the rule (a map's result, a quotient, a product) or that the
  rule declared its own (``own``) may be overwritten; the relevance handed to the rule may be
  when the pass hands it over (``relevance_owned``) and the rule reads it once
  (``relevance``); nothing else is ever written (activations, weights, kept values).
- In the memory mode (``low_memory``: ``Graph.cache_policy == "none"``) big affine maps run a
  slice of channels at a time (``relgraph.rules.slicing``), derived weights are made slice by
  slice (``Lazy``), and values derived from the weights are not kept.

Every decision changes where a value lives, never the value: the results are the same, bit
for bit, whichever buffers the policy picks.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from relgraph.engine.capabilities import RowSliceable, Sliceable
from relgraph.engine.ops import keeps_shape

from .numerics import (
    Stabilizer,
    dense,
    packed,
    rescaled,
    safe_divide,
    same_places,
    widened,
)
from .slicing import Lazy, materialized, sliced_adjoint, sliced_map

if TYPE_CHECKING:
    from .context import NodeContext


class Policy:
    """The memory decisions of one node's rule (see the module's docstring).

    Parameters
    ----------
    ctx
        The node's context: its op, weights, memo and the pass's ``relevance_owned`` and
        ``low_memory``.
    """

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        #: id → weak reference of each tensor the rule may overwrite (kept by the context)
        self._own: dict[int, weakref.ref] = ctx._owned

    @property
    def low_memory(self) -> bool:
        """The memory mode: maps a slice at a time, nothing derived kept."""
        return self.ctx.low_memory

    @property
    def keeps_derived(self) -> bool:
        """Whether values derived from the weights alone are kept between explanations."""
        return not self.ctx.low_memory

    # ------------------------------------------------------------------ ownership

    def own(self, t: torch.Tensor) -> torch.Tensor:
        """Declare ``t`` a temporary of the rule's that nothing else reads: the policy may
        form a later result in its memory. Returns ``t``."""
        self._own[id(t)] = weakref.ref(t)
        return t

    def owns(self, t: torch.Tensor) -> bool:
        """Whether the rule may overwrite ``t``."""
        ref = self._own.get(id(t))
        return ref is not None and ref() is t

    def relevance(self, relevance: torch.Tensor, last_reader: bool = True) -> torch.Tensor:
        """The relevance handed to the rule, for one reading of it: the rule's own to
        overwrite where the pass handed it over (``NodeContext.relevance_owned``) and this
        is its last reading (``last_reader``)."""
        if last_reader and self.ctx.relevance_owned:
            self.own(relevance)
        return relevance

    def rescaled(self, t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """``numerics.rescaled``: ``t`` at the per-sample ``scale``, a tensor of the rule's
        own where ``scale`` is given."""
        return t if scale is None else self.own(rescaled(t, scale))

    # ------------------------------------------------------------------ element-wise steps

    def divide(
        self,
        numerator: torch.Tensor,
        z: torch.Tensor,
        stab: Stabilizer,
        scale: torch.Tensor | None = None,
        *,
        nonnegative: bool = False,
        shifted: bool = False,
    ) -> torch.Tensor:
        """``numerator / stab(z)`` (``Stabilizer.denominator``, ``safe_divide``), formed in
        the memory of the numerator or of ``z`` where the rule owns it and the shapes,
        formats and layouts allow, so that they and the quotient are never alive at once.
        ``scale``, ``nonnegative``, ``shifted``: as for ``Stabilizer.denominator``. A
        bfloat16 operand is widened to float32 first (the widened copy is the rule's own)."""
        wide_z, wide_numerator = widened(z), widened(numerator)
        z_owned = self.owns(z) or wide_z is not z
        numerator_owned = self.owns(numerator) or wide_numerator is not numerator
        denominator = stab.denominator(
            wide_z, scale, nonnegative=nonnegative, shifted=shifted, into_z=z_owned
        )
        z_owned = z_owned or denominator is not wide_z
        fits = (
            denominator.shape == wide_numerator.shape
            and torch.result_type(wide_numerator, denominator)
            == denominator.dtype
            == wide_numerator.dtype
            and dense(denominator)
            and same_places(denominator, wide_numerator)  # element i at the same place
            and dense(wide_numerator)
        )
        out = None
        if fits and numerator_owned:
            out = wide_numerator
        elif fits and z_owned and not denominator._is_view():
            out = denominator
        mask = stab.masks_vanishing(denominator.dtype, scale)
        quotient = safe_divide(
            wide_numerator, denominator, mask=mask, out=out, numerics=self.ctx.numerics
        )
        return self.own(quotient)

    def _into(
        self, op: Callable[..., torch.Tensor], t: torch.Tensor, other: torch.Tensor
    ) -> torch.Tensor:
        """``op(t, other)``, written into ``t`` where the rule owns it and the result has its
        shape and format (a view the policy handed out as the rule's own, or a tensor whose
        axes are permuted, included), else a new tensor; the same values either way."""
        if (
            self.owns(t)
            and keeps_shape(t.shape, other.shape)
            and torch.result_type(t, other) == t.dtype
            and (t._is_view() or packed(t))
            and t.data_ptr() != other.data_ptr()
        ):
            return op(t, other, out=t)
        return self.own(op(t, other))

    def multiply(
        self, t: torch.Tensor, other: torch.Tensor, factor: float | None = None
    ) -> torch.Tensor:
        """``t ⊙ other`` (in ``t`` where the rule owns it); ``factor``: times that number
        too, in the same pass over the data (exact for a power of two, such as AttnLRP's
        ¼ and ½, as a second product would be)."""
        if factor is None:
            return self._into(torch.mul, t, other)
        zero = t.new_zeros(())

        def scaled_product(a, b, out=None):
            return torch.addcmul(zero, a, b, value=factor, out=out)

        return self._into(scaled_product, t, other)

    def add(self, t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``t + other`` (in ``t`` where the rule owns it)."""
        return self._into(torch.add, t, other)

    def subtract(self, t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``t − other``, in ``t`` where the rule owns it, else in ``other`` where the rule
        owns that and it has the result's shape and format, else new."""
        if not self.owns(t) and self.owns(other) and _same_form(other, t):
            return torch.sub(t, other, out=other)
        return self._into(torch.sub, t, other)

    def product(self, t: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``t ⊙ other`` as a result the rule hands on: in ``t`` only where ``t`` also spans
        all of its memory, so that no result keeps a larger buffer alive (a half of a
        stacked adjoint pair does not)."""
        if self.owns(t) and dense(t) and _whole(t):
            return t.mul_(other)
        return self.own(t * other)

    # ------------------------------------------------------------------ maps

    def sliced(self) -> bool:
        """Whether the node's maps run slice by slice: the memory mode, on an op that
        allows it."""
        op = self.ctx.op
        return self.low_memory and isinstance(op, Sliceable) and op.sliceable

    def linear_map(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | Lazy,
        bias: torch.Tensor | None = None,
        *,
        add_to: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``A(x; W) + b`` in the weight's working format (``NodeContext.working``), widened
        (``add_to``: added into that tensor, the rule's own). In the memory mode a slice of
        output channels at a time (``sliced_map``)."""
        ctx = self.ctx

        def one(weight: torch.Tensor, bias: torch.Tensor | None, rows=None) -> torch.Tensor:
            work, inputs = ctx.working(weight), x
            if work is not weight:
                inputs, bias = widened(x), None if bias is None else widened(bias)
            if rows is not None:
                return widened(ctx.op.linear_map_rows(inputs, work, bias, *rows))
            return widened(ctx.op.linear_map(inputs, work, bias))

        if self.sliced():
            if isinstance(ctx.op, RowSliceable) and x.dim() > 2:
                # cut along the first spatial axis too: a convolution's workspace (its
                # unfolded input: channels × kernel per output position) can exceed its result
                size = ctx.op.output_size(x.shape[2:])
                per_position = math.prod(size[1:]) * x.shape[0] * 4
                row_bytes = per_position * (1 + x.shape[1] * math.prod(ctx.op.kernel_size))
                result = sliced_map(
                    one, weight, bias, add_to=add_to, rows=size[0], row_bytes=row_bytes
                )
            else:
                result = sliced_map(one, weight, bias, add_to=add_to)
            return self.own(result)
        result = self.own(one(materialized(weight), bias))
        return result if add_to is None else self.add(add_to, result)

    def adjoint(self, s: torch.Tensor, weight: torch.Tensor | Lazy) -> torch.Tensor:
        """``Aᵀ(s; W)``, widened; in the memory mode a slice of input channels at a time."""
        ctx = self.ctx

        def one(weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
            work = ctx.working(weight)
            kept = ctx.adjoint_kernel
            return widened(
                ctx.op.adjoint_kept(s.to(work.dtype), work, x_shape, lambda w: kept(w, s))
            )

        if self.sliced():
            return self.own(sliced_adjoint(one, weight, ctx.input_shapes[0]))
        return self.own(one(materialized(weight), ctx.input_shapes[0]))

    def adjoint_pair(
        self, s: torch.Tensor, key: str, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Aᵀ(s; first), Aᵀ(s; second))`` (``NodeContext.adjoint_pair``), both the rule's
        own (they may be two halves of one tensor)."""
        pair = self.ctx.adjoint_pair(s, key, first, second)
        return self.own(pair[0]), self.own(pair[1])

    # ------------------------------------------------------------------ what is kept

    def keep(self, key: Any, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, kept with the node's weights (``NodeContext.memo``: read-only for
        the rule); in the memory mode made afresh, the rule's own."""
        if self.keeps_derived:
            kept = self.ctx.memo(key, compute)
            self._own.pop(id(kept), None)  # made by the policy's maps, but kept: read-only
            return kept
        return self.own(compute())

    def weight(
        self, key: Any, derive: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor | Lazy:
        """A weight derived element-wise from the node's (``derive(W)``, e.g. ``W⁺``): kept
        with the node's weights in the pass's layout (``NodeContext.laid_out``); in the
        memory mode a ``Lazy`` one, made a slice at a time where the maps run sliced
        (``materialized`` makes it whole)."""
        ctx = self.ctx
        weight = ctx.weight_and_bias()[0]
        if self.low_memory:
            return Lazy(weight, derive)
        return ctx.memo(("W'", key, ctx.channels_last), lambda: ctx.laid_out(derive(weight)))


def _whole(t: torch.Tensor) -> bool:
    """Whether ``t`` spans all of its memory (not a part of a larger tensor's)."""
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


def _same_form(t: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether ``t`` can hold a result shaped and typed like ``like``."""
    return t.shape == like.shape and t.dtype == like.dtype and dense(t) and not t._is_view()
