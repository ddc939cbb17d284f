"""The reverse pass: seed the output, walk the graph backwards, one rule per node.

No autograd: the forward pass keeps the activations the rules need, and every backward step
is the explicit tensor op of the node's rule. Relevance reaching a node from several
consumers is summed; each activation is freed as soon as the pass has left its node.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import RuleError, TargetError
from .graph import Graph

if TYPE_CHECKING:
    from .labels import Labels
    from .rules import Composite, Rule

Target = int | str | Sequence[int | str] | torch.Tensor


@dataclass
class Explanation:
    """The result of ``explain(..., return_all=True)``.

    Attributes
    ----------
    relevance
        Input relevance, shaped like the input.
    output
        The model's output (logits) for the batch.
    target
        The explained class of each sample, ``(B,)``.
    seed
        The relevance the reverse pass started from, shaped like ``output``.
    node_relevance
        Relevance of every node's output (only with ``return_all=True``).
    rules
        The rule each node got.
    """

    relevance: torch.Tensor
    output: torch.Tensor
    target: torch.Tensor
    seed: torch.Tensor
    rules: dict[str, Rule]
    node_relevance: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


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
            from .labels import Labels

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


def make_seed(output: torch.Tensor, target: torch.Tensor, seed: str | torch.Tensor) -> torch.Tensor:
    """The relevance the reverse pass starts from: ``onehot`` (1 at the target), ``logit``
    (the target's logit there), or a tensor of the output's shape."""
    if isinstance(seed, torch.Tensor):
        if seed.shape != output.shape:
            raise TargetError(
                f"a seed tensor must have the output's shape {list(output.shape)}, "
                f"got {list(seed.shape)}"
            )
        if not torch.isfinite(seed).all():
            raise TargetError("the seed tensor contains NaN or Inf")
        return seed.to(dtype=output.dtype, device=output.device)
    flat = torch.zeros_like(output).reshape(output.shape[0], -1)
    rows = torch.arange(output.shape[0], device=output.device)
    if seed == "onehot":
        flat[rows, target] = 1.0
    elif seed == "logit":
        flat[rows, target] = output.reshape(output.shape[0], -1)[rows, target]
    else:
        raise TargetError(f"seed must be 'onehot', 'logit' or a tensor, got {seed!r}")
    return flat.reshape(output.shape)


def explain(
    graph: Graph,
    x: torch.Tensor,
    target: Target = "auto",
    rules: Composite | str | os.PathLike | dict | None = None,
    seed: str | torch.Tensor | None = None,
    *,
    labels: Labels | Sequence[str] | None = None,
    preprocess: str | None = None,
    return_all: bool = False,
) -> torch.Tensor | Explanation:
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
    seed
        ``"onehot"``, ``"logit"`` or a tensor shaped like the output; default: the preset's
        (else ``onehot``).
    preprocess
        The preprocessing preset the input went through (zβ bounds follow from it);
        default: the architecture's.
    return_all
        Return an ``Explanation`` with every node's relevance instead of the input relevance.

    Returns
    -------
    torch.Tensor or Explanation
    """
    _, node_rules, seed = resolve_rules(graph, rules, preprocess, seed)
    return explain_with_rules(
        graph, x, node_rules, target, seed, labels=labels, return_all=return_all
    )


def resolve_rules(
    graph: Graph,
    rules: Composite | str | os.PathLike | dict | None,
    preprocess: str | None,
    seed: str | torch.Tensor | None,
) -> tuple[Composite, dict[str, Rule], str | torch.Tensor]:
    """The composite, each node's rule and the seed that ``explain`` and ``discriminative``
    use for their ``rules``, ``preprocess`` and ``seed`` arguments."""
    from .rules import as_composite

    composite = as_composite(rules, graph)
    node_rules = composite.resolve(graph, preprocess=preprocess)
    # `seed or ...` would ask a seed tensor for its truth value
    return composite, node_rules, seed if seed is not None else composite.seed or "onehot"


def activations_needed(graph: Graph, node_rules: dict[str, Rule]) -> set[str]:
    """The nodes whose activations the rules will read."""
    needed = set()
    for node, rule in node_rules.items():
        if rule.needs_inputs:
            needed.update(graph.inputs_of(node))
        if getattr(rule, "needs_output", False):
            needed.add(node)
    return needed


def explain_with_rules(
    graph: Graph,
    x: torch.Tensor,
    node_rules: dict[str, Rule],
    target: Target = "auto",
    seed: str | torch.Tensor = "onehot",
    *,
    labels: Any = None,
    return_all: bool = False,
) -> torch.Tensor | Explanation:
    """``explain`` with the rules already resolved per node (see ``Composite.resolve``)."""
    from .rules import NodeContext

    fwd = graph.forward(
        x,
        keep=activations_needed(graph, node_rules),
        record=[n for n, rule in node_rules.items() if getattr(rule, "needs_record", False)],
    )
    activations, records = fwd.activations, fwd.records
    output = fwd.output.clone() if return_all else fwd.output
    with torch.inference_mode():
        target_index = resolve_target(output, target, labels)
        start = make_seed(output, target_index, seed)
        relevance: dict[str, torch.Tensor] = {graph.output: start}
        kept: dict[str, torch.Tensor] = {}
        batch = x.shape[0]
        for node in reversed(graph.order[1:]):
            node_relevance = relevance.pop(node)
            if return_all:
                kept[node] = node_relevance
            rule = node_rules[node]
            preds = graph.inputs_of(node)
            ctx = NodeContext(
                node=node,
                op=graph.op(node),
                inputs=[activations.get(p) for p in preds],
                input_shapes=[torch.Size((batch, *graph.graph.nodes[p]["shape"])) for p in preds],
                output=activations.get(node),
                tensors=graph.tensors(node),
                cache=graph.cache,
                record=records.pop(node, None),
            )
            try:
                contributions = rule(ctx, node_relevance)
            except RuleError as exc:  # e.g. zβ bounds that do not fit: say which node
                if exc.node is not None:
                    raise
                line = graph.graph.nodes[node].get("line")
                raise RuleError(exc.message, file=graph.file, line=line, node=node) from None
            for pred, contribution in zip(preds, contributions):
                relevance[pred] = (
                    relevance[pred] + contribution if pred in relevance else contribution
                )
            activations.pop(node, None)
            del ctx, node_relevance, contributions
        input_relevance = relevance.pop(graph.input)
    if not return_all:
        return input_relevance
    kept[graph.input] = input_relevance
    return Explanation(
        relevance=input_relevance,
        output=output,
        target=target_index,
        seed=start,
        rules=node_rules,
        node_relevance=kept,
    )
