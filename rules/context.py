"""What a rule sees of one node: the node context, its memo and the weights derived there."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relgraph.engine.ops import Op
from relgraph.engine.signature import same_tensors, tensor_signature

from .numerics import (
    LOW_PRECISION,
    PLAIN,
    SMALL_INPUT,
    Numerics,
    scale_and_sign,
    widened,
)
from .policy import Policy
from .slicing import Lazy, materialized, underlying

__all__ = [
    "Lazy",
    "NodeContext",
    "is_no_relevance",
    "materialized",
    "no_relevance",
    "underlying",
]


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
    #: (what that means for a rule is decided in one place: ``policy``)
    low_memory: bool = False
    #: the reverse pass will not read the relevance handed to the rule again, and no other
    #: tensor shares its memory: a rule that reads it once may form a result in it
    #: (``Policy.relevance``); a rule that reads it twice must not
    relevance_owned: bool = False
    #: per input slot, whether the activation is ≥ 0 by construction
    #: (``Graph.nonnegative_nodes``): then no rule need look for negative entries
    nonnegative_inputs: tuple[bool, ...] = ()
    #: the pass runs channels-last (``Graph.working_layout``): the 5-D weights derived here
    #: (W⁺, W⁻, flipped kernels) are laid out so too, which oneDNN's convolutions would
    #: otherwise copy into that layout on every call (R(2+1)-D 18's last layers: 21 MB each)
    channels_last: bool = False
    #: the pass's numeric policy: shares checked now or at the end, extremes remembered
    numerics: Numerics = PLAIN
    #: the memo entry of this node, checked against ``tensors`` once (``memo``)
    _entry: tuple | None = field(default=None, init=False, repr=False)
    #: what the rule may overwrite (``Policy.own``): id → weak reference
    _owned: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def policy(self) -> Policy:
        """The node's memory decisions (``relgraph.rules.policy``): the buffers its rule may
        overwrite, its maps slice by slice, what is kept. (A view of this context: the
        context holds no reference to it, so that nothing keeps the context alive.)"""
        return Policy(self)

    @property
    def x(self) -> torch.Tensor:
        """The single input's activation."""
        return self.inputs[0]

    def scale_and_sign(
        self,
        *tensors: torch.Tensor,
        also: float = 0.0,
        nonnegative: bool | Sequence[bool] = False,
    ) -> tuple[torch.Tensor | None, bool]:
        """``numerics.scale_and_sign`` under this pass's numeric policy."""
        return scale_and_sign(*tensors, also=also, nonnegative=nonnegative, numerics=self.numerics)

    def sample_scale(
        self,
        *tensors: torch.Tensor,
        also: float = 0.0,
        nonnegative: bool | Sequence[bool] = False,
    ) -> torch.Tensor | None:
        """``numerics.sample_scale`` under this pass's numeric policy."""
        return self.scale_and_sign(*tensors, also=also, nonnegative=nonnegative)[0]

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
            if entry is None or not same_tensors(entry[0], self.tensors):
                signature = tensor_signature(self.tensors)
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

    def positive_weight(self) -> torch.Tensor:
        """``W⁺``, memoised."""
        return self.memo(
            ("W'", "W⁺", self.channels_last),  # the key of Policy.weight's W⁺
            lambda: self.laid_out(self.weight_and_bias()[0].clamp(min=0)),
        )

    def negative_weight(self) -> torch.Tensor:
        """``W⁻``, memoised. Kept apart from ``W⁺``: z⁺ on ReLU outputs never needs it, and
        caching it anyway would cost another copy of the weights."""
        return self.memo(
            ("W'", "W⁻", self.channels_last),
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
