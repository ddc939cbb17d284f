"""The reverse pass: from relevance on the output, walk the graph backwards, a rule per node.

No autograd: the forward pass keeps the activations the rules need, and every backward step
is the explicit tensor op of the node's rule. Relevance reaching a node from several
consumers is summed; each activation is freed as soon as the pass has left its node.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from relgraph.engine.canonize import canonical
from relgraph.engine.graph import ForwardResult, Graph
from relgraph.engine.interpreter import ReversePass, Visit, rule_needs
from relgraph.engine.memory import check_memory
from relgraph.engine.ops import all_finite
from relgraph.errors import TargetError
from relgraph.io.labels import Labels
from relgraph.rules import Composite, Rule, as_composite
from relgraph.rules.context import is_no_relevance, no_relevance
from relgraph.rules.numerics import Numerics, packed

Target = int | str | Sequence[int | str] | torch.Tensor


@dataclass
class Explanation:
    """The result of :func:`explanation`: the input relevance and what came with it.

    Attributes
    ----------
    relevance
        Input relevance, shaped like the input.
    output
        The model's output (logits) for the batch.
    target
        The explained class of each sample, ``(B,)``.
    output_relevance
        The relevance the reverse pass started from, shaped like ``output``.
    lost
        Per node, ``(B,)``: the relevance the node did not hand on to its inputs,
        ``Σ R_out − Σ R_in`` per sample (negative where a rule created relevance). See
        ``lost_fraction`` for what counts.
    node_relevance
        Relevance of every node's output (only with ``node_relevance=True``).
    rules
        The rule each node got.
    """

    relevance: torch.Tensor
    output: torch.Tensor
    target: torch.Tensor
    output_relevance: torch.Tensor
    rules: dict[str, Rule]
    lost: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    node_relevance: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def lost_fraction(self) -> torch.Tensor:
        """``(B,)``: the relevance lost on the way, over all nodes, as a fraction of the
        output relevance: ``Σ_nodes lost / Σ R_out`` per sample (0 where it sums to 0).

        It counts everything a rule does not hand on: the share a bias keeps (rules that
        keep a bias: ``epsilon``, and ``zplus``/``alphabeta`` with ``bias: true``), what the
        stabiliser's ε absorbs, what a zeroed denominator (z = 0, subnormal, or a share
        beyond the format) drops, and a rule's own non-conservation (``combine`` weights
        not summing to 1). Negative: relevance was created. With conserving rules it is
        0 up to rounding.
        """
        return lost_fraction(self.lost, self.output_relevance)


def lost_fraction(lost: dict[str, torch.Tensor], seed: torch.Tensor) -> torch.Tensor:
    """``Σ_nodes lost / Σ seed`` per sample (0 where the output relevance ``seed`` sums to
    0); see
    ``Explanation.lost_fraction``."""
    total_seed = seed.reshape(seed.shape[0], -1).sum(1, dtype=accumulator_dtype(seed.dtype))
    if not lost:
        return torch.zeros_like(total_seed)
    total_lost = torch.stack(list(lost.values())).sum(0)
    fraction = total_lost / total_seed
    return torch.where(total_seed == 0, 0.0, fraction)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """A 5-D ``t`` in channels-last layout (``Graph.working_layout``)."""
    if t.dim() == 5 and not t.is_contiguous(memory_format=torch.channels_last_3d):
        return t.contiguous(memory_format=torch.channels_last_3d)
    return t


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format to return relevance for the input ``x`` in: channels-last where
    ``x`` is, else the ordinary contiguous layout (a permuted or sliced input has no layout
    ``contiguous`` could reproduce)."""
    if (
        x.dim() == 5
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        return torch.channels_last_3d
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def _materialized(t: torch.Tensor) -> torch.Tensor:
    """``t`` with memory of its own where it is a broadcast zero (``no_relevance``), so that
    what a caller gets back is a tensor like any other."""
    return t.contiguous() if is_no_relevance(t) else t


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type relevance is carried and per-sample totals summed in: float64 for float64,
    else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sample_totals(t: torch.Tensor) -> torch.Tensor:
    """``(B,)``: each sample's sum."""
    return t.reshape(t.shape[0], -1).sum(1, dtype=accumulator_dtype(t.dtype))


def _exclusive(t: torch.Tensor, others) -> bool:
    """Whether no tensor of ``others`` shares memory with ``t`` (a rule may return one tensor
    for two inputs: neither may then be overwritten)."""
    storage = t.untyped_storage().data_ptr()
    return all(o.untyped_storage().data_ptr() != storage for o in others)


def resolve_target(
    output: torch.Tensor, target: Target, labels: Labels | Sequence[str] | None = None
) -> torch.Tensor:
    """Class index per sample from ``auto`` (the prediction), an index, a class name, or a
    list/tensor with one of those per sample."""
    batch, num_classes = output.shape[0], output[0].numel()
    flat = output.reshape(batch, -1)
    if isinstance(target, str) and target == "auto":
        return flat.argmax(dim=1)
    if isinstance(target, torch.Tensor):
        if target.dim() == 0:
            target = [int(target)] * batch
        else:
            target = target.tolist()
    if isinstance(target, (np.ndarray, np.integer)):  # e.g. a data set's labels
        target = target.tolist()
    if isinstance(target, (int, str)):
        target = [target] * batch
    if not isinstance(target, (list, tuple)) or len(target) != batch:
        raise TargetError(f"give one target per sample ({batch}), or a single one; got {target!r}")
    indices = []
    for item in target:
        if isinstance(item, np.integer):
            item = int(item)
        if isinstance(item, str) and item == "auto":
            indices.append(None)
            continue
        if isinstance(item, str) and not item.lstrip("-").isdigit():
            if labels is None:
                raise TargetError(
                    f"target '{item}' is a class name, but no labels were given (labels=...)"
                )

            names = labels if isinstance(labels, Labels) else Labels.from_names(list(labels))
            try:
                item = names.index(item)
            except Exception as exc:  # LabelError: keep its message, raise as a target error
                raise TargetError(getattr(exc, "message", str(exc))) from None
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise TargetError(f"a target must be an index or a class name, got {item!r}")
        index = int(item)
        if not 0 <= index < num_classes:
            raise TargetError(
                f"target {index} is out of range for {num_classes} classes (0..{num_classes - 1})"
            )
        indices.append(index)
    predicted = flat.argmax(dim=1)
    return torch.tensor(
        [predicted[i].item() if v is None else v for i, v in enumerate(indices)],
        dtype=torch.long,
        device=output.device,
    )


def make_seed(
    output: torch.Tensor, target: torch.Tensor, output_relevance: str | torch.Tensor
) -> torch.Tensor:
    """The relevance the reverse pass starts from: ``onehot`` (1 at the target), ``logit``
    (the target's logit there), or a tensor of the output's shape."""
    if isinstance(output_relevance, torch.Tensor):
        if output_relevance.shape != output.shape:
            raise TargetError(
                f"an output_relevance tensor must have the output's shape {list(output.shape)}, "
                f"got {list(output_relevance.shape)}"
            )
        if not torch.isfinite(output_relevance).all():
            raise TargetError("the output_relevance tensor contains NaN or Inf")
        return output_relevance.to(dtype=output.dtype, device=output.device)
    flat = torch.zeros_like(output).reshape(output.shape[0], -1)
    rows = torch.arange(output.shape[0], device=output.device)
    if output_relevance == "onehot":
        flat[rows, target] = 1.0
    elif output_relevance == "logit":
        flat[rows, target] = output.reshape(output.shape[0], -1)[rows, target]
    else:
        raise TargetError(
            f"output_relevance must be 'onehot', 'logit' or a tensor, got {output_relevance!r}"
        )
    return flat.reshape(output.shape)


def explain(
    graph: Graph,
    x: torch.Tensor,
    target: Target = "auto",
    rules: Composite | str | os.PathLike | dict | None = None,
    output_relevance: str | torch.Tensor | None = None,
    *,
    labels: Labels | Sequence[str] | None = None,
    preprocess: str | None = None,
    canonize: bool | None = None,
    memory_check: bool = True,
) -> torch.Tensor:
    """Explain a batch: the relevance of each input element for the target class.

    Parameters
    ----------
    graph
        The compiled model.
    x
        Input batch ``(B, *graph.input_shape)`` on the graph's device and dtype.
    target
        ``"auto"`` (the predicted class), an index, a class name (with ``labels``), or one
        of those per sample.
    rules
        A preset name (``"deep-taylor-paper"``), a preset YAML path, a ``Composite``, or
        ``{node or pattern: rule}`` overrides on the architecture's default preset.
    output_relevance
        The relevance the reverse pass starts from: ``"onehot"`` (1 at the target),
        ``"logit"`` (the target's logit there) or a tensor shaped like the output; default:
        the preset's (else ``onehot``).
    preprocess
        The preprocessing preset the input went through (zβ bounds follow from it);
        default: the architecture's.
    canonize
        Fold each batch norm into the conv or linear layer before it first
        (``relgraph.engine.canonize``), so that the rules see one affine layer; default: the
        architecture's ``canonize:`` (true unless the YAML says false). Folded batch norms
        get no rule and have no entry in ``Explanation.rules`` or ``node_relevance``.
    memory_check
        Refuse, before anything is allocated, a batch whose estimated peak memory exceeds
        what the device has free (``relgraph.engine.memory``); False skips the check.

    Returns
    -------
    torch.Tensor
        The input relevance, shaped like ``x``. :func:`explanation` gives it with the
        output, the target, the lost relevance and, on request, every node's relevance.

    Raises
    ------
    ResourceError
        The estimated peak memory exceeds the available memory (see ``memory_check``).
    """
    graph = canonical(graph, canonize)
    _, node_rules, output_relevance = resolve_rules(graph, rules, preprocess, output_relevance)
    return explain_with_rules(
        graph,
        x,
        node_rules,
        target,
        output_relevance,
        labels=labels,
        memory_check=memory_check,
    )


def explanation(
    graph: Graph,
    x: torch.Tensor,
    target: Target = "auto",
    rules: Composite | str | os.PathLike | dict | None = None,
    output_relevance: str | torch.Tensor | None = None,
    *,
    labels: Labels | Sequence[str] | None = None,
    preprocess: str | None = None,
    canonize: bool | None = None,
    memory_check: bool = True,
    node_relevance: bool = False,
) -> Explanation:
    """Explain a batch, as :func:`explain`, and return an :class:`Explanation`: the input
    relevance with the output, the target, the output relevance and each node's lost
    relevance.

    Parameters
    ----------
    node_relevance
        Also keep every node's relevance (``Explanation.node_relevance``; memory-hungry:
        every node's output size, kept to the end).
    graph, x, target, rules, output_relevance, labels, preprocess, canonize, memory_check
        As in :func:`explain`.
    """
    graph = canonical(graph, canonize)
    _, node_rules, output_relevance = resolve_rules(graph, rules, preprocess, output_relevance)
    return explanation_with_rules(
        graph,
        x,
        node_rules,
        target,
        output_relevance,
        labels=labels,
        memory_check=memory_check,
        node_relevance=node_relevance,
    )


def resolve_rules(
    graph: Graph,
    rules: Composite | str | os.PathLike | dict | None,
    preprocess: str | None,
    output_relevance: str | torch.Tensor | None,
) -> tuple[Composite, dict[str, Rule], str | torch.Tensor]:
    """The composite, each node's rule and the output relevance that ``explain`` and
    ``discriminative`` use for their ``rules``, ``preprocess`` and ``output_relevance``
    arguments."""

    composite = as_composite(rules, graph)
    node_rules = composite.resolve(graph, preprocess=preprocess)
    if output_relevance is None:  # `x or ...` would ask a tensor for its truth value
        output_relevance = composite.output_relevance or "onehot"
    return composite, node_rules, output_relevance


def activations_needed(graph: Graph, node_rules: dict[str, Rule]) -> set[str]:
    """The nodes whose activations the rules will read."""
    needed = set()
    for node, rule in node_rules.items():
        needs = rule_needs(rule)
        if "inputs" in needs:
            needed.update(graph.inputs_of(node))
        if "output" in needs:
            needed.add(node)
    return needed


def explain_with_rules(
    graph: Graph,
    x: torch.Tensor,
    node_rules: dict[str, Rule],
    target: Target = "auto",
    output_relevance: str | torch.Tensor = "onehot",
    *,
    labels: Any = None,
    memory_check: bool = True,
) -> torch.Tensor:
    """:func:`explain` with the rules already resolved per node (see ``Composite.resolve``).

    The pass leaves quotients beyond the format in place and checks the input relevance once
    at the end (``Numerics.checks_quotients_later``); where it is not finite, the pass runs
    again with every quotient checked. The result is the same either way."""
    run = (graph, x, node_rules, target, output_relevance, labels)
    _check_memory(graph, x, node_rules, memory_check, keep_all=False)
    result = _explain_pass(*run, "input", checks_later=True)
    return result if all_finite(result) else _explain_pass(*run, "input", checks_later=False)


def explanation_with_rules(
    graph: Graph,
    x: torch.Tensor,
    node_rules: dict[str, Rule],
    target: Target = "auto",
    output_relevance: str | torch.Tensor = "onehot",
    *,
    labels: Any = None,
    memory_check: bool = True,
    node_relevance: bool = False,
) -> Explanation:
    """:func:`explanation` with the rules already resolved per node.

    Unless every node's relevance is kept (``node_relevance``), the pass leaves quotients
    beyond the format in place and checks the input relevance and each node's lost
    relevance once at the end (``Numerics.checks_quotients_later``); where they are not
    finite, the pass runs again with every quotient checked. The result is the same either
    way."""
    run = (graph, x, node_rules, target, output_relevance, labels)
    _check_memory(graph, x, node_rules, memory_check, keep_all=node_relevance)
    if node_relevance:  # every node's relevance is reported: each quotient checked as formed
        return _explain_pass(*run, "all", checks_later=False)
    result = _explain_pass(*run, "explanation", checks_later=True)
    # each node's loss, not the fraction: that is 0 wherever the output relevance sums to 0
    lost = list(result.lost.values())
    if all_finite(result.relevance) and (not lost or all_finite(torch.stack(lost))):
        return result
    return _explain_pass(*run, "explanation", checks_later=False)


def _check_memory(
    graph: Graph, x: Any, node_rules: dict[str, Rule], memory_check: bool, keep_all: bool
) -> None:
    """The memory preflight of one explanation (``relgraph.engine.memory``)."""
    if memory_check and isinstance(x, torch.Tensor) and x.dim() >= 1:
        kept = None if keep_all else activations_needed(graph, node_rules)
        check_memory(graph, x.shape[0], kept)


class ExplainPass(ReversePass):
    """The reverse pass of ``explain``: relevance summed over a node's consumers, each
    activation freed as soon as the pass has left its node, and, for an ``Explanation``,
    each node's lost relevance (and with ``keep_all`` its relevance) kept."""

    def __init__(
        self,
        graph: Graph,
        node_rules: dict[str, Rule],
        numerics: Numerics,
        fwd: ForwardResult,
        start: torch.Tensor,
        *,
        batch: int,
        channels_last: bool,
        detailed: bool,
        keep_all: bool,
    ) -> None:
        super().__init__(graph, node_rules, numerics, channels_last=channels_last)
        self.activations, self.records = fwd.activations, fwd.records
        self.relevance: dict[str, torch.Tensor] = {graph.output: start}
        self.kept: dict[str, torch.Tensor] = {}
        self.lost: dict[str, torch.Tensor] = {}
        self.batch, self.detailed, self.keep_all = batch, detailed, keep_all
        self.start_dtype = start.dtype
        self.seed_storage = start.untyped_storage().data_ptr()

    def arrive(self, node: str) -> Visit | None:
        graph, batch = self.graph, self.batch
        node_relevance = self.relevance.pop(node)
        if self.keep_all:
            self.kept[node] = _materialized(node_relevance)
        preds = graph.inputs_of(node)
        if is_no_relevance(node_relevance):  # zero by construction: so is all it hands on
            if self.detailed:
                self.lost[node] = node_relevance.new_zeros(batch, dtype=self.start_dtype)
            for pred in preds:
                if pred not in self.relevance:
                    shape = (batch, *graph.shape_of(pred))
                    self.relevance[pred] = no_relevance(node_relevance, shape)
            self.activations.pop(node, None)
            return None
        needs = self.needs[node]
        visit = Visit(
            relevance=node_relevance,
            input_shapes=[torch.Size((batch, *graph.shape_of(p))) for p in preds],
            inputs=[self.activations.get(p) for p in preds] if "inputs" in needs else [],
            output=self.activations.get(node) if "output" in needs else None,
            record=self.records.pop(node, None),
            owned=not self.keep_all
            and node != graph.output  # the seed, which an Explanation returns
            and _exclusive(node_relevance, self.relevance.values()),
        )
        if self.detailed:  # before the rule, which may form its result in the relevance
            visit.extra["handed_in"] = sample_totals(node_relevance)
        return visit

    def depart(self, node: str, visit: Visit, contributions: list[torch.Tensor]) -> None:
        relevance = self.relevance
        if self.detailed:  # one reduction per tensor and sample
            self.lost[node] = visit.extra["handed_in"] - sum(
                sample_totals(c) for c in contributions
            )
        for pred, contribution in zip(self.graph.inputs_of(node), contributions):
            if is_no_relevance(contribution):  # nothing to add (see no_relevance)
                if pred not in relevance:
                    relevance[pred] = contribution
                continue
            if self.channels_last:  # keep the relevance in the activations' layout
                contribution = _channels_last(contribution)
            if pred not in relevance or is_no_relevance(relevance[pred]):
                relevance[pred] = contribution
            elif self._may_add_into(pred, contribution):
                relevance[pred].add_(contribution)
            else:
                relevance[pred] = relevance[pred] + contribution
        self.activations.pop(node, None)

    def _may_add_into(self, pred: str, contribution: torch.Tensor) -> bool:
        """Whether ``pred``'s relevance so far may take ``contribution`` in its own memory:
        a whole tensor of the result's shape and format that nothing else holds (no other
        node's relevance, not the seed, which an ``Explanation`` returns, and nothing kept)."""
        total = self.relevance[pred]
        return (
            not self.keep_all
            and not total._is_view()
            and total.shape == contribution.shape
            and torch.result_type(total, contribution) == total.dtype
            and packed(total)
            and total.untyped_storage().data_ptr() != self.seed_storage
            and _exclusive(total, (r for p, r in self.relevance.items() if p != pred))
        )


def _explain_pass(
    graph: Graph,
    x: torch.Tensor,
    node_rules: dict[str, Rule],
    target: Target,
    output_relevance: str | torch.Tensor,
    labels: Any,
    returns: str,
    *,
    checks_later: bool,
) -> torch.Tensor | Explanation:
    """One forward and reverse pass: the input relevance (``returns="input"``), an
    ``Explanation`` (``"explanation"``), or one that keeps every node's relevance
    (``"all"``). Extremes of the rules' inputs are remembered as the forward pass makes
    them; ``checks_later``: quotients beyond the format are checked in the result
    (``Numerics.checks_quotients_later``)."""
    numerics = Numerics(checks_quotients_later=checks_later, remembers_extremes=True)
    return_all = returns == "all"
    detailed = returns != "input"
    needs = {node: rule_needs(rule) for node, rule in node_rules.items()}
    read = {
        p
        for n, rule in node_rules.items()
        if "inputs" in needs[n] and getattr(rule, "scans", True)  # a hint, True by default
        for p in graph.inputs_of(n)
    }
    nonnegative = graph.nonnegative_nodes()

    def made(node: str, activation: torch.Tensor) -> None:
        if node in read:  # an input of a rule, which scans it for its numeric scale
            numerics.remember_extremes(activation, node in nonnegative)

    fwd = graph.forward(
        x,
        keep=activations_needed(graph, node_rules),
        record=[n for n in node_rules if "record" in needs[n]],
        made=made,
    )
    output = fwd.output.clone() if detailed else fwd.output
    with torch.inference_mode():
        target_index = resolve_target(output, target, labels)
        # relevance is carried in float32 through a bfloat16 graph
        # (see docs/guides/precision-and-memory.md)
        start = make_seed(output, target_index, output_relevance).to(
            accumulator_dtype(output.dtype)
        )
    reverse = ExplainPass(
        graph,
        node_rules,
        numerics,
        fwd,
        start,
        batch=x.shape[0],
        channels_last=graph.runs_channels_last(x),
        detailed=detailed,
        keep_all=return_all,
    )
    del fwd
    reverse.run()
    with torch.inference_mode():
        # in the input's own layout (the passes may run channels-last: Graph.working_layout)
        input_relevance = _materialized(reverse.relevance.pop(graph.input)).contiguous(
            memory_format=_layout_of(x)
        )
    if not detailed:
        return input_relevance
    kept = reverse.kept
    if return_all:
        kept[graph.input] = input_relevance
    return Explanation(
        relevance=input_relevance,
        output=output,
        target=target_index,
        output_relevance=start,
        rules=node_rules,
        lost=reverse.lost,
        node_relevance=kept,
    )
