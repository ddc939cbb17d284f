"""Per-head relevance: which attention heads of which layer carry the relevance.

An attention head's contribution is its slice of attention·v, the context ``(…, H, N, d)``
that the heads' merge joins into ``(…, N, H·d)``; the relevance of that output, summed over
tokens and head features, is the head's share (Achtibat et al. 2024 read heads so). The
nodes are found structurally: a fused attention op (the ``attention`` capability), or a
product of two activations (``bilinear``) whose first input is a softmax's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relgraph.engine.capabilities import Attending, Bilinear, op_has
from relgraph.engine.graph import Graph
from relgraph.engine.reverse import Explanation, Target, explanation
from relgraph.errors import ArgumentError

__all__ = ["HeadRelevance", "attention_nodes", "discriminative_heads", "head_relevance"]


def attention_nodes(graph: Graph) -> list[str]:
    """The attention·v nodes of ``graph``, in forward order: fused attention ops (the
    ``attention`` capability), and ops with the ``bilinear`` capability whose first input is
    the output of a ``softmax`` op."""
    found = []
    for node in graph.order[1:]:
        if isinstance(graph.op(node), Attending):
            found.append(node)
            continue
        if not isinstance(graph.op(node), Bilinear):
            continue
        first = graph.inputs_of(node)[0]
        if op_has(graph.op(first), "softmax"):
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
        raise ArgumentError(
            f"'{graph.name}' has no attention (no attention op, no softmax·v product)"
        )
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


@dataclass
class HeadRelevance:
    """Per-head relevance of clips and of their frozen clips (Hiley et al. 2019, per head).

    Attributes
    ----------
    spatiotemporal
        ``{attention·v node: (B, H)}``: each clip's head relevance.
    spatial
        ``{node: (B, T, H)}``: the head relevance of each frozen clip (frame ``t`` repeated
        over time), explained for the clip's class.
    temporal
        ``{node: (B, T, H)}``: ``spatiotemporal − spatial``, the part due to motion.
    target
        ``(B,)``: the explained class of each clip.
    """

    spatiotemporal: dict[str, torch.Tensor]
    spatial: dict[str, torch.Tensor]
    temporal: dict[str, torch.Tensor]
    target: torch.Tensor


def discriminative_heads(
    graph: Graph, clip: torch.Tensor, target: Target = "auto", rules=None
) -> HeadRelevance:
    """Per-head relevance of each clip, of each of its frozen clips, and their difference
    (the temporal part): ``T + 1`` explanations with every node's relevance kept."""
    clip_explanation = explanation(graph, clip, target, rules, node_relevance=True)
    explained = clip_explanation.target
    clip_heads = head_relevance(graph, clip_explanation)
    del clip_explanation
    frames = clip.shape[2]
    per_frame = []
    for t in range(frames):
        frozen = clip[:, :, t : t + 1].expand_as(clip).contiguous()
        per_frame.append(
            head_relevance(graph, explanation(graph, frozen, explained, rules, node_relevance=True))
        )
    spatial = {node: torch.stack([f[node] for f in per_frame], dim=1) for node in clip_heads}
    temporal = {node: clip_heads[node][:, None] - spatial[node] for node in clip_heads}
    return HeadRelevance(clip_heads, spatial, temporal, explained)
