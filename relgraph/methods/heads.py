"""Per-head relevance: which attention heads of which layer carry the relevance.

An attention head's contribution is its slice of attention·v, the context ``(…, H, N, d)``
that the heads' merge joins into ``(…, N, H·d)``; the relevance of that output, summed over
tokens and head features, is the head's share (Achtibat et al. 2024 read heads so). The
nodes are found structurally: a product of two activations (``bilinear``) whose first input
is a softmax's output.
"""

from __future__ import annotations

import torch

from relgraph.engine.graph import Graph
from relgraph.engine.reverse import Explanation
from relgraph.errors import ArgumentError

__all__ = ["attention_nodes", "head_relevance", "head_difference"]


def attention_nodes(graph: Graph) -> list[str]:
    """The attention·v nodes of ``graph``, in forward order: ops with the ``bilinear``
    capability whose first input is the output of a ``softmax`` op."""
    found = []
    for node in graph.order[1:]:
        if "bilinear" not in graph.op(node).capabilities:
            continue
        first = graph.inputs_of(node)[0]
        if "softmax" in graph.op(first).capabilities:
            found.append(node)
    return found


def head_relevance(graph: Graph, explanation: Explanation) -> dict[str, torch.Tensor]:
    """Relevance per attention head: ``{attention·v node: (B, H)}``, the relevance of each
    head's context summed over its tokens, features and any axes before the heads (the
    patches of TimeSformer's temporal attention, the frames of its spatial attention).

    Parameters
    ----------
    explanation
        From ``relgraph.explanation(..., node_relevance=True)``, which keeps every node's relevance.
    """
    nodes = attention_nodes(graph)
    if not nodes:
        raise ArgumentError(f"'{graph.name}' has no attention (no softmax·v product)")
    missing = [n for n in nodes if n not in explanation.node_relevance]
    if missing:
        raise ArgumentError(
            f"the explanation holds no relevance of '{missing[0]}': explain with "
            "node_relevance=True for per-head relevance"
        )
    heads = {}
    for node in nodes:
        relevance = explanation.node_relevance[node]  # (B, ..., H, N, d)
        per_head = relevance.sum(dim=(-2, -1))
        heads[node] = per_head.flatten(1, -2).sum(1) if per_head.dim() > 2 else per_head
    return heads


def head_difference(
    clip_heads: dict[str, torch.Tensor], frozen_heads: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The temporal (motion) part of each head's relevance (Hiley et al. 2019's subtraction,
    per head): a clip's head relevance minus that of its frozen clips, averaged over them.
    ``frozen_heads`` holds ``(B·T, H)`` per node, the frozen clips of each clip in a row."""
    difference = {}
    for node, clip in clip_heads.items():
        frozen = frozen_heads[node].reshape(clip.shape[0], -1, clip.shape[1]).mean(1)
        difference[node] = clip - frozen
    return difference
