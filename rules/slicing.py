"""The memory mode's maps: an affine map or its adjoint computed a slice of channels at a time."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from relgraph.engine.hostmemory import release_freed


@dataclass(frozen=True)
class Lazy:
    """A weight derived element-wise from another (``derive(weight)``, e.g. W⁺ = max(W, 0)),
    made a slice at a time where the maps run slice by slice (``sliced_map``); ``full()``
    makes all of it. Element-wise, so a slice of the derived weight is the derived slice."""

    weight: torch.Tensor
    derive: Callable[[torch.Tensor], torch.Tensor]

    def full(self) -> torch.Tensor:
        return self.derive(self.weight)


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
