"""Explain frozen clips without redundant work.

A frozen clip (one frame repeated over the clip's ``T`` time slices; Hiley et al. 2019) is
constant in time, and so is every activation computed from it, except near the temporal
borders where padding, or a window running past the end, makes slices differ. Two savings
follow, both worked out from each op's temporal kernel, stride, padding and dilation (and its
own shape inference, which covers ``ceil_mode``), never from the architecture's name:

- **Forward.** Each node keeps a *compact* activation: the slices before and after the node's
  constant run, and only a few slices of the run itself (:class:`Layout`). A convolution or
  pool runs, unchanged, on its input with the run cut to what its window needs (at least
  ``span − 1`` slices, a multiple of the stride removed), so that every distinct slice is
  computed once or a few times instead of ``T`` times. Element-wise ops (ReLU, batch norm,
  dropout) keep the layout; ``add`` and ``concat`` (not along time) bring their inputs to a
  common one. An op whose time axis cannot be followed (``flatten``, ``linear``, ``reshape``,
  adaptive pools, a concat along time, ...) ends the shortcut: from it on the activations are
  the plain, full tensors.
- **Reverse.** Where only one input slice's relevance is wanted (``reduce`` ``first`` or
  ``same`` in :func:`relgraph.discriminative`), only the output slices in that slice's forward
  cone (its receptive field, seen from above) can send relevance to it. Each node's rule then
  runs, unchanged, on a temporal crop: the input slices those cone outputs read, extended on
  the inner sides by the padding and aligned to the stride so that the op's own padding only
  ever lands on true borders; relevance of output slices outside the cone is zero. Rules need
  not know about cropping (max-pool argmax indices are recomputed on the crop).

The results equal the plain path (:func:`relgraph.engine.reverse.explain_with_rules` on the full
frozen clips) up to floating-point rounding; ``tests/test_frozen.py`` checks this on every
shipped architecture and on generated graphs.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from relgraph.engine.capabilities import (
    Attending,
    Bilinear,
    Channelwise,
    Reshaping,
    Splitting,
)
from relgraph.engine.graph import Graph
from relgraph.engine.interpreter import ReversePass, Visit
from relgraph.engine.ops import all_finite, infer_output_shape
from relgraph.engine.reverse import (
    Target,
    accumulator_dtype,
    lost_fraction,
    make_seed,
    resolve_target,
    sample_totals,
)
from relgraph.errors import ArgumentError, GraphError, RelgraphError
from relgraph.rules.numerics import Numerics

__all__ = [
    "FrozenExplanation",
    "Layout",
    "explain_frozen",
    "frozen_plan",
    "temporal_cropping_applies",
    "wanted_slices",
]


def temporal_cropping_applies(graph: Graph) -> bool:
    """Whether the frozen-clip shortcut suits ``graph``: no node mixes tokens by a product
    of two activations (attention's q·kᵀ and attention·v, ops with the ``bilinear``
    capability, or fused attention, the ``attention`` capability), which makes every token
    depend on every frame. Found from the ops' declared capabilities, never from the
    architecture's name."""
    return not any(isinstance(graph.op(node), (Bilinear, Attending)) for node in graph.order[1:])


@dataclass(frozen=True)
class Layout:
    """How a compact activation stores a node's time axis.

    The full activation has ``length`` slices along tensor axis ``axis`` (batch = 0) and is
    constant over the run ``[r0, r1)``. The compact tensor holds slices ``[0, r0)``, ``m`` copies
    of the run value and slices ``[r1, length)``. ``r0 == r1`` (no run): the compact tensor is
    the full one.
    """

    axis: int
    length: int
    r0: int = 0
    r1: int = 0
    m: int = 0

    @property
    def run(self) -> int:
        return self.r1 - self.r0

    @property
    def compact_length(self) -> int:
        return self.length - self.run + self.m

    def compact_index(self, position: int) -> int:
        """Index in the compact tensor that holds full position ``position``."""
        if position < self.r0:
            return position
        if position < self.r1:
            return self.r0 + min(position - self.r0, self.m - 1)
        return position - self.run + self.m

    def full_position(self, index: int) -> int:
        """Full position of compact slice ``index`` (run copies: the run's own positions)."""
        return index if index < self.r0 + self.m else index + self.run - self.m

    def with_run(self, m: int) -> Layout:
        """The same activation with ``m`` run slices kept."""
        return Layout(self.axis, self.length, self.r0, self.r1, m if self.run else 0)


def _full(layout: Layout) -> Layout:
    return Layout(layout.axis, layout.length)


def _take(tensor: torch.Tensor, source: Layout, indices: list[int]) -> torch.Tensor:
    """Slices ``indices`` of ``tensor`` along the layout's axis; a view where contiguous."""
    n = tensor.shape[source.axis]
    if indices == list(range(n)):
        return tensor
    if indices and indices == list(range(indices[0], indices[0] + len(indices))):
        return tensor.narrow(source.axis, indices[0], len(indices))
    index = torch.tensor(indices, dtype=torch.long, device=tensor.device)
    return tensor.index_select(source.axis, index)


def relayout(tensor: torch.Tensor, source: Layout, target: Layout) -> torch.Tensor:
    """A compact tensor stored as ``source`` brought to ``target`` (same activation)."""
    if source == target:
        return tensor
    indices = [source.compact_index(target.full_position(i)) for i in range(target.compact_length)]
    return _take(tensor, source, indices)


def crop(tensor: torch.Tensor, source: Layout, start: int, stop: int) -> torch.Tensor:
    """Full positions ``[start, stop)`` of a compact tensor."""
    return _take(tensor, source, [source.compact_index(f) for f in range(start, stop)])


# --------------------------------------------------------------------------- the plan


@dataclass
class NodePlan:
    """What the frozen path does at one node.

    ``kind``: ``window`` (convolution or pool along time), ``pointwise`` (time untouched),
    ``merge`` (add, concat not along time), ``end`` (the time axis is lost or unknown: plain
    full tensors from here). ``out``: the layout of the node's compact activation (``None``
    past the end). ``inputs``: the layout each input is brought to before the op runs.
    """

    kind: str
    out: Layout | None
    inputs: list[Layout | None]
    #: temporal kernel, stride, padding, dilation and span of a ``window`` node
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    #: output length (along time) of the op on an input of a given length (a ``window`` node)
    lengths: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def span(self) -> int:
        return self.dilation * (self.kernel - 1) + 1


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def frozen_plan(graph: Graph) -> dict[str, NodePlan]:
    """Each node's :class:`NodePlan` for frozen inputs (time: the first axis after the
    channels of the input), worked out from shapes and op fields alone; memoised per graph."""
    plans = _PLANS.get(graph)
    if plans is None:
        plans = _build_plan(graph)
        _PLANS[graph] = plans
    return plans


def _shape(graph: Graph, node: str) -> tuple[int, ...]:
    return tuple(graph.shape_of(node))


def _temporal_field(op, name: str, index: int, default: int) -> int | None:
    value = getattr(op, name, None)
    if value is None:
        return default
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return int(value[index]) if index < len(value) else None


def _out_length(graph: Graph, node: str, plan: NodePlan, axis: int, length: int) -> int:
    """The op's output length along time for an input of ``length`` slices (its own shape
    inference on meta tensors: covers ceil_mode and every field)."""
    if length not in plan.lengths:
        shape = list(_shape(graph, graph.inputs_of(node)[0]))
        shape[axis - 1] = length
        try:
            tensor_shapes = graph.tensor_shapes_of(node)
            out = infer_output_shape(graph.op(node), [tuple(shape)], tensor_shapes)
            plan.lengths[length] = out[axis - 1]
        except Exception:  # too short for the kernel: no output (only asked of crops)
            plan.lengths[length] = 0
    return plan.lengths[length]


def _classify(graph: Graph, node: str, layouts: list[Layout | None]) -> str:
    op = graph.op(node)
    out_shape = _shape(graph, node)
    in_shapes = [_shape(graph, p) for p in graph.inputs_of(node)]
    if any(layout is None for layout in layouts) or not layouts:
        return "end"
    axis = layouts[0].axis
    if any(layout.axis != axis or layout.length != layouts[0].length for layout in layouts):
        return "end"
    rank = len(in_shapes[0]) + 1  # with the batch
    if len(out_shape) + 1 != rank or out_shape[axis - 1] < 1:
        return "end"
    if isinstance(op, Splitting):  # add, concat
        along = getattr(op, "dim", None)
        if along == axis or any(s[axis - 1] != out_shape[axis - 1] for s in in_shapes):
            return "end"
        return "merge"
    if len(layouts) != 1:
        return "end"
    kernel = getattr(op, "kernel_size", None)
    if kernel is not None and getattr(op, "stride", None) is not None:
        if len(tuple(kernel)) == rank - 2 and hasattr(op, "padding"):
            return "window"
        return "end"
    if out_shape == in_shapes[0] and (isinstance(op, (Reshaping, Channelwise))):
        return "pointwise"  # relu, dropout, identity, batch norm: the same map at every slice
    return "end"


def _build_plan(graph: Graph) -> dict[str, NodePlan]:
    in_shape = graph.input_shape
    plans: dict[str, NodePlan] = {}
    if len(in_shape) < 2:
        raise GraphError(
            f"frozen clips need an input with a time axis; '{graph.name}' takes {list(in_shape)}"
        )
    length = in_shape[1]
    plans[graph.input] = NodePlan("input", Layout(2, length, 0, length, 1), [])
    for node in graph.order[1:]:
        preds = graph.inputs_of(node)
        layouts = [plans[p].out for p in preds]
        kind = _classify(graph, node, layouts)
        if kind == "end":
            inputs = [None if lay is None else _full(lay) for lay in layouts]
            plans[node] = NodePlan("end", None, inputs)
        elif kind == "pointwise":
            plans[node] = NodePlan("pointwise", layouts[0], [layouts[0]])
        elif kind == "merge":
            plans[node] = _merge_plan(layouts)
        else:
            plans[node] = _window_plan(graph, node, layouts[0])
    return plans


def _merge_plan(layouts: list[Layout]) -> NodePlan:
    first = layouts[0]
    r0 = max(lay.r0 for lay in layouts)
    r1 = min(lay.r1 for lay in layouts)
    if any(lay.run == 0 for lay in layouts) or r1 <= r0:
        out = _full(first)
    else:
        out = Layout(
            first.axis, first.length, r0, r1, max(1, min(min(lay.m for lay in layouts), r1 - r0))
        )
    return NodePlan("merge", out, [out] * len(layouts))


def _window_plan(graph: Graph, node: str, layout: Layout) -> NodePlan:
    op = graph.op(node)
    axis = layout.axis
    index = axis - 2  # the op's fields list the spatial axes, time first
    kernel = _temporal_field(op, "kernel_size", index, 1)
    stride = _temporal_field(op, "stride", index, 1)
    padding = _temporal_field(op, "padding", index, 0)
    dilation = _temporal_field(op, "dilation", index, 1)
    if None in (kernel, stride, padding, dilation):
        return NodePlan("end", None, [_full(layout)])
    plan = NodePlan("window", None, [], kernel, stride, padding, dilation)
    length = layout.length
    out_length = _shape(graph, node)[axis - 1]
    plan.lengths[length] = out_length
    span = plan.span
    # output slices whose whole window lies in the input's run: the output's run
    lo = -(-(layout.r0 + padding) // stride)
    hi = min(out_length, (layout.r1 - span + padding) // stride + 1)
    if layout.run == 0 or hi <= lo:
        plan.inputs = [_full(layout)]
        plan.out = Layout(axis, out_length)
        return plan
    run = layout.run
    for m in range(max(1, span - 1), run + 1):
        cut = run - m
        if cut % stride or (hi - lo) - cut // stride < 1:
            continue
        if cut and _out_length(graph, node, plan, axis, length - cut) != out_length - cut // stride:
            continue
        break
    else:  # pragma: no cover - m = run always qualifies
        m = run
    cut = run - m
    plan.inputs = [layout.with_run(m)]
    plan.out = Layout(axis, out_length, lo, hi, (hi - lo) - cut // stride)
    return plan


# --------------------------------------------------------------------------- explain


@dataclass
class FrozenExplanation:
    """Relevance ``(N, C, T, ...)`` of frozen clips, their logits and the explained class.

    Where a slice was ``wanted``, only that slice of each clip's relevance is computed; the
    other slices are zero."""

    relevance: torch.Tensor
    output: torch.Tensor
    target: torch.Tensor
    #: ``(N,)``: relevance not handed on, as a fraction of the output relevance
    #: (``Explanation.lost_fraction``);
    #: where a slice was wanted, of the relevance on that slice's receptive field only
    lost_fraction: torch.Tensor


def frozen_forward(
    graph: Graph, frames: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, NodePlan]]:
    """Every node's compact activation (see :class:`Layout`) for frozen clips of ``frames``
    ``(N, C, *spatial)`` (the clip's frame repeated along the input's time axis)."""
    plans = frozen_plan(graph)
    acts: dict[str, torch.Tensor] = {graph.input: frames.unsqueeze(2)}
    with torch.inference_mode():
        for node in graph.order[1:]:
            plan = plans[node]
            inputs = [
                acts[p] if target is None else relayout(acts[p], plans[p].out, target)
                for p, target in zip(graph.inputs_of(node), plan.inputs)
            ]
            out = graph.op(node).forward(inputs, graph.current_tensors(node))
            if plan.out is not None and out.shape[plan.out.axis] != plan.out.compact_length:
                raise RelgraphError(  # a plan that does not fit the op: a bug, say where
                    f"frozen-clip plan: node '{node}' gave {out.shape[plan.out.axis]} slices, "
                    f"expected {plan.out.compact_length}",
                    file=graph.file,
                    node=node,
                )
            acts[node] = out
    return acts, plans


def explain_frozen(
    graph: Graph,
    frames: torch.Tensor,
    node_rules: dict,
    target: Target = "auto",
    output_relevance: str | torch.Tensor = "onehot",
    *,
    wanted: Sequence[int] | None = None,
) -> FrozenExplanation:
    """Explain the frozen clips of ``frames`` ``(N, C, *spatial)``: each frame repeated over
    the input's time axis (axis 1 of ``graph.input_shape``), with the resolved rules.

    Parameters
    ----------
    wanted
        One time slice per clip whose relevance is wanted, or ``None`` for all of them. With
        it, the reverse pass follows only each slice's forward cone, and the other slices of
        the returned relevance are zero.

    Returns
    -------
    FrozenExplanation
        Equal to :func:`relgraph.engine.reverse.explain_with_rules` on the full frozen clips.
        Computed as it is: quotients beyond the format checked once at the end, and the
        pass run again with each checked where the relevance or the loss is not finite
        (``Numerics.checks_quotients_later``).
    """
    run = (graph, frames, node_rules, target, output_relevance, wanted)
    explanation, lost = _explain_frozen(*run, Numerics(checks_quotients_later=True))
    if all_finite(explanation.relevance) and all_finite(lost):
        return explanation
    return _explain_frozen(*run, Numerics())[0]


def _explain_frozen(
    graph: Graph,
    frames: torch.Tensor,
    node_rules: dict,
    target: Target,
    seed: str | torch.Tensor,
    wanted: Sequence[int] | None,
    numerics: Numerics,
) -> tuple[FrozenExplanation, torch.Tensor]:
    """One pass of ``explain_frozen``, and each clip's relevance lost on the way."""
    acts, plans = frozen_forward(graph, frames)
    out_plan = plans[graph.output]
    output = acts[graph.output]
    if out_plan.out is not None:
        output = crop(output, out_plan.out, 0, out_plan.out.length)
    batch = frames.shape[0]
    length = plans[graph.input].out.length
    if wanted is not None and len(wanted) != batch:
        raise ArgumentError(f"wanted needs one slice per frame ({batch}), got {len(wanted)}")
    with torch.inference_mode():
        target_index = resolve_target(output, target)
        # relevance in float32 through a bfloat16 graph, as in explain_with_rules
        start = make_seed(output, target_index, seed).to(accumulator_dtype(output.dtype))
        relevance = start.new_zeros((batch, frames.shape[1], length, *frames.shape[2:]))
        groups: dict[int | None, list[int]] = {}
        for row in range(batch):
            groups.setdefault(None if wanted is None else int(wanted[row]), []).append(row)
        lost = torch.zeros(batch, dtype=sample_totals(start).dtype, device=start.device)
        for slice_, rows in groups.items():
            index = None if len(rows) == batch else torch.tensor(rows, device=frames.device)
            reverse = FrozenReversePass(
                graph, node_rules, numerics, plans, acts, start, index, slice_
            )
            part, part_lost = reverse.run()
            if index is None:
                relevance, lost = part, part_lost
            else:
                relevance[index] = part
                lost[index] = part_lost
        fraction = lost_fraction({"all": lost}, start)
    explanation = FrozenExplanation(
        relevance=relevance, output=output, target=target_index, lost_fraction=fraction
    )
    return explanation, lost


def _cone(plan: NodePlan, cones: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    """The interval of output slices that read the input cones (``None``: every slice)."""
    if plan.out is None:
        return None
    live = [c for c in cones if c is not None and c[1] > c[0]]
    if not live:
        return (0, 0)
    if plan.kind == "window":
        c0, c1 = live[0]
        lo = max(0, -(-(c0 - plan.span + 1 + plan.padding) // plan.stride))
        hi = min(plan.out.length, (c1 - 1 + plan.padding) // plan.stride + 1)
        return (lo, max(lo, hi))
    return (min(c[0] for c in live), max(c[1] for c in live))


class FrozenReversePass(ReversePass):
    """The reverse pass over frozen clips' compact activations, for the clips ``rows``
    (``None``: all), all wanting slice ``wanted`` (``None``: every slice): each node's rule
    runs on the temporal crop its cone needs (see the module's docstring)."""

    def __init__(
        self,
        graph: Graph,
        node_rules: dict,
        numerics: Numerics,
        plans: dict[str, NodePlan],
        acts: dict[str, torch.Tensor],
        start: torch.Tensor,
        rows: torch.Tensor | None,
        wanted: int | None,
    ) -> None:
        super().__init__(graph, node_rules, numerics)
        self.plans, self.acts, self.start = plans, acts, start
        self.rows, self.wanted = rows, wanted
        self.length = plans[graph.input].out.length
        cones: dict[str, tuple[int, int] | None] = {
            graph.input: (0, self.length) if wanted is None else (wanted, wanted + 1)
        }
        for node in graph.order[1:]:
            cones[node] = _cone(plans[node], [cones[p] for p in graph.inputs_of(node)])
        self.cones = cones
        # relevance per node: a full tensor (past the end) or (start, window) along time
        seed = self.rows_of(start)
        self.relevance: dict[str, object] = {
            graph.output: seed if plans[graph.output].out is None else (0, seed)
        }
        self.lost = torch.zeros_like(sample_totals(seed))

    def rows_of(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.rows is None else t.index_select(0, self.rows)

    def activation(self, q: str, span: tuple[int, int] | None) -> torch.Tensor:
        t = self.acts[q] if span is None else crop(self.acts[q], self.plans[q].out, *span)
        return self.rows_of(t)

    def arrive(self, node: str) -> Visit | None:
        if node not in self.relevance:
            return None  # nothing reaches it from the slice's cone
        graph, plans, wanted = self.graph, self.plans, self.wanted
        plan = plans[node]
        node_relevance = self.relevance.pop(node)
        preds = graph.inputs_of(node)
        untrimmed = None
        if plan.out is None:  # past the end of the shortcut: full tensors
            ranges = [None if plans[q].out is None else (0, plans[q].out.length) for q in preds]
            out_range = None
            starts = [0] * len(preds)
            r = node_relevance
        else:
            axis = plan.out.axis
            lo, r = node_relevance
            if wanted is None:  # slices outside every cone read only padding: lost, as plain
                untrimmed = sample_totals(r)
            c0, c1 = self.cones[node]
            hi = lo + r.shape[axis]
            a, b = max(lo, c0), min(hi, c1)
            if b <= a:
                if wanted is None:
                    self.lost = self.lost + untrimmed
                return None
            if (a, b) != (lo, hi):
                r = r.narrow(axis, a - lo, b - a)
            lo, hi = a, b
            if plan.kind == "window":
                ranges, out_range, r = self._window_crop(node, plan, r, lo, hi)
            else:
                ranges = [(lo, hi)] * len(preds)
                out_range = (lo, hi)
            starts = [0 if span is None else span[0] for span in ranges]
        needs = self.needs[node]
        wants_record = "record" in needs
        inputs = [
            self.activation(q, span) if ("inputs" in needs or wants_record) else None
            for q, span in zip(preds, ranges)
        ]
        shapes = []
        for q, span in zip(preds, ranges):
            shape = [r.shape[0], *_shape(graph, q)]
            if span is not None:
                shape[plans[q].out.axis] = span[1] - span[0]
            shapes.append(torch.Size(shape))
        record = None
        if wants_record:
            _, record = graph.op(node).forward_record(inputs, graph.current_tensors(node))
        return Visit(
            relevance=r,
            input_shapes=shapes,
            inputs=inputs,
            output=self.activation(node, out_range) if "output" in needs else None,
            record=record,
            extra={"starts": starts, "untrimmed": untrimmed},
        )

    def _window_crop(self, node, plan, r, lo, hi):
        """A window op's input crop for its output slices ``[lo, hi)``, the output range the
        crop gives, and ``r`` zero-padded to that range."""
        axis, s, p = plan.out.axis, plan.stride, plan.padding
        in_length = self.plans[self.graph.inputs_of(node)[0]].out.length
        first = max(0, ((lo * s - p) // s) * s)
        last = min(in_length, (hi - 1) * s - p + plan.span)
        if last - first < plan.span:
            # torch's pools refuse an input shorter than the window, padding or not (a crop
            # of one slice for a two-slice window padded by one): widen the crop, the later
            # slices first; outputs keep their places in it
            last = min(in_length, first + plan.span)
            first = max(0, (last - plan.span) // s * s)
        out_first = first // s
        count = _out_length(self.graph, node, plan, axis, last - first)
        if out_first > lo or out_first + count < hi:  # pragma: no cover
            raise RelgraphError(
                f"frozen-clip crop [{first}, {last}) does not cover outputs [{lo}, {hi})",
                file=self.graph.file,
                node=node,
            )
        if (out_first, count) != (lo, hi - lo):
            padded = r.new_zeros((*r.shape[:axis], count, *r.shape[axis + 1 :]))
            padded.narrow(axis, lo - out_first, hi - lo).copy_(r)
            r = padded
        return [(first, last)], (out_first, out_first + count), r

    def depart(self, node: str, visit: Visit, contributions: list[torch.Tensor]) -> None:
        handed = sum(sample_totals(c) for c in contributions)
        untrimmed = visit.extra["untrimmed"]
        if untrimmed is not None:
            self.lost = self.lost + untrimmed - handed
        else:
            self.lost = self.lost + sample_totals(visit.relevance) - handed
        preds = self.graph.inputs_of(node)
        for pred, begin, contribution in zip(preds, visit.extra["starts"], contributions):
            _accumulate(self.relevance, pred, self.plans[pred].out, begin, contribution)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        graph, acts = self.graph, self.acts
        final = self.relevance.pop(graph.input, None)
        shape = (
            *self.rows_of(acts[graph.input]).shape[:2],
            self.length,
            *acts[graph.input].shape[3:],
        )
        full = self.start.new_zeros(shape)
        if final is not None:
            begin, window = final
            full.narrow(2, begin, window.shape[2]).copy_(window)
        if self.wanted is not None:
            kept = full.narrow(2, self.wanted, 1).clone()
            full.zero_()
            full.narrow(2, self.wanted, 1).copy_(kept)
        return full, self.lost


def _accumulate(relevance: dict, node: str, layout: Layout | None, begin: int, r: torch.Tensor):
    if layout is None:
        relevance[node] = relevance[node] + r if node in relevance else r
        return
    if node not in relevance:
        relevance[node] = (begin, r)
        return
    axis = layout.axis
    old_begin, old = relevance[node]
    first = min(begin, old_begin)
    last = max(begin + r.shape[axis], old_begin + old.shape[axis])
    if (first, last) == (begin, begin + r.shape[axis]) == (old_begin, old_begin + old.shape[axis]):
        relevance[node] = (first, old + r)
        return
    merged = r.new_zeros((*r.shape[:axis], last - first, *r.shape[axis + 1 :]))
    merged.narrow(axis, old_begin - first, old.shape[axis]).add_(old)
    merged.narrow(axis, begin - first, r.shape[axis]).add_(r)
    relevance[node] = (first, merged)


def wanted_slices(reduce: str, normalize: str, frames: Sequence[int]) -> list[int] | None:
    """The one slice of each frozen clip (of frame ``frames[i]``) that the discriminative
    method's spatial map reads, or ``None`` where it reads them all: ``mean``/``sum``, and any
    normalisation other than ``none`` (``maxabs`` and ``sum`` scale each frozen clip's map by a
    statistic over all its slices, as the authors' code does)."""
    if normalize != "none" or reduce not in ("first", "same"):
        return None
    return [0] * len(frames) if reduce == "first" else [int(t) for t in frames]
