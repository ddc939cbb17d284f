"""The motion methods that cost one explanation or a few: ``decomposed``, ``reference`` and
``selective`` (``frozen``, the paper's, is in :mod:`relgraph.methods.discriminative`).

Each returns the same :class:`~relgraph.methods.discriminative.DiscriminativeResult`; the
spatio-temporal map is always the clip's ordinary explanation. What "spatial" and "temporal"
mean under each method is in ``docs/motion-methods.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from relgraph.engine.graph import Graph
from relgraph.engine.reverse import Explanation, Target, explain_with_rules, explanation_with_rules
from relgraph.errors import RelgraphError
from relgraph.methods.decomposed import InputSplit, input_readers, static_part
from relgraph.methods.maps import DiscriminativeResult, normalize_maps
from relgraph.methods.reference import difference_rules
from relgraph.methods.revealcancel import revealcancel_multipliers
from relgraph.methods.selective import selective_mask
from relgraph.rules import Rule

__all__ = ["explain_motion", "normalize_like"]


def normalize_like(
    reference: torch.Tensor, maps: Sequence[torch.Tensor], normalize: str
) -> list[torch.Tensor]:
    """``maps`` divided by the statistic ``normalize`` takes of ``reference`` (each clip's),
    so that maps that sum to ``reference`` still do after normalising. Never NaN."""
    if normalize == "none":
        return list(maps)
    dims = tuple(range(1, reference.dim()))
    if normalize == "maxabs":
        scale = reference.abs().amax(dim=dims, keepdim=True)
    else:
        scale = reference.sum(dim=dims, keepdim=True).abs()
    usable = scale >= torch.finfo(reference.dtype).tiny
    divisor = torch.where(usable, scale, torch.ones_like(scale))
    return [torch.where(usable, m / divisor, 0.0) for m in maps]


def explain_motion(
    g: Graph,
    clip: torch.Tensor,
    node_rules: dict[str, Rule],
    target: Target,
    seed: str | torch.Tensor,
    *,
    method: str,
    normalize: str,
    labels: Any = None,
    static: str = "mean",
    sigma: float = 1.0,
    options: dict[str, Any],
) -> DiscriminativeResult:
    """The maps of ``method`` (``decomposed``, ``reference`` or ``selective``) for a checked
    clip batch, with the rules resolved per node; see :func:`relgraph.discriminative`."""
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    still = None
    rules = node_rules
    if method in ("decomposed", "reference", "revealcancel"):
        still = static_part(clip, static)
    if method == "decomposed":
        rules = dict(node_rules)
        for node in input_readers(g):
            rules[node] = InputSplit(node_rules[node], still, parts)
    explanation = explanation_with_rules(g, clip, rules, target, seed, labels=labels)
    relevance = explanation.relevance
    clip_map = relevance.sum(dim=1)
    spatial_relevance = temporal_relevance = static_output = None
    with torch.inference_mode():
        spatiotemporal = normalize_maps(clip_map, normalize, dims=(1, 2, 3))
    if method == "decomposed":
        spatial_relevance = sum(p[0] for p in parts.values())
        temporal_relevance = sum(p[1] for p in parts.values())
        with torch.inference_mode():
            spatial, temporal = normalize_like(
                clip_map, [spatial_relevance.sum(dim=1), temporal_relevance.sum(dim=1)], normalize
            )
    elif method == "selective":
        with torch.inference_mode():
            mask = selective_mask(clip_map, sigma)
            selected = torch.where(mask, clip_map, 0.0)
            temporal_relevance = relevance * mask.unsqueeze(1)
            spatial_relevance = relevance - temporal_relevance
            spatial, temporal = normalize_like(clip_map, [clip_map - selected, selected], normalize)
    else:
        spatial_relevance, temporal_relevance, static_output = _reference(
            g, clip, still, node_rules, explanation, seed, reveal=method == "revealcancel"
        )
        with torch.inference_mode():
            spatial = normalize_maps(spatial_relevance.sum(dim=1), normalize, dims=(1, 2, 3))
            temporal = normalize_maps(temporal_relevance.sum(dim=1), normalize, dims=(1, 2, 3))
    return _result(
        clip,
        explanation,
        spatiotemporal,
        spatial,
        temporal,
        spatial_relevance,
        temporal_relevance,
        static_output,
        options,
    )


def _reference(
    g: Graph,
    clip: torch.Tensor,
    still: torch.Tensor,
    node_rules: dict[str, Rule],
    explanation: Explanation,
    seed: str | torch.Tensor,
    reveal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The static clip's ordinary relevance (for the clip's target), DeepLIFT's relevance of
    ``clip − still`` for the target's logit difference (the Rescale rule, or RevealCancel with
    ``reveal``), and the logits on ``still``."""
    target = explanation.target
    static_explanation = explanation_with_rules(g, still, node_rules, target, seed)
    if reveal:
        moving, _, static_output = revealcancel_multipliers(g, clip, still, target)
        return static_explanation.relevance, moving, static_output
    references = g.forward(still).activations
    try:
        rules = difference_rules(g, references)
    except RelgraphError as refused:
        # ops the difference rules do not cover (a transformer's attention, layer norm and
        # token maps): the same Rescale rule on multipliers, with their exact multipliers
        del references
        try:
            moving, _, static_output = revealcancel_multipliers(
                g, clip, still, target, reveal=False
            )
        except RelgraphError:
            raise refused from None
        return static_explanation.relevance, moving, static_output
    static_output = static_explanation.output.reshape(len(clip), -1)
    rows = torch.arange(len(clip), device=clip.device)
    output = explanation.output.reshape(len(clip), -1)
    difference = output[rows, target] - static_output[rows, target]
    start = torch.zeros_like(explanation.output).reshape(len(clip), -1)
    start[rows, target] = difference
    del references
    moving = explain_with_rules(g, clip, rules, target, start.reshape(explanation.output.shape))
    return static_explanation.relevance, moving, static_output


def _result(
    clip: torch.Tensor,
    explanation: Explanation,
    spatiotemporal: torch.Tensor,
    spatial: torch.Tensor,
    temporal: torch.Tensor,
    spatial_relevance: torch.Tensor | None,
    temporal_relevance: torch.Tensor | None,
    static_output: torch.Tensor | None,
    options: dict[str, Any],
) -> DiscriminativeResult:
    batch = len(clip)
    output = explanation.output.reshape(batch, -1)
    with torch.inference_mode():
        probability, prediction = output.softmax(dim=1).max(dim=1)
    relevance = explanation.relevance
    return DiscriminativeResult(
        spatiotemporal=spatiotemporal,
        spatial=spatial,
        temporal=temporal,
        relevance=relevance,
        frozen_relevance=relevance.new_zeros((batch, 0, *relevance.shape[1:])),
        output=output,
        prediction=prediction,
        probability=probability,
        target=explanation.target,
        frozen_output=output.new_zeros((batch, 0, output.shape[1])),
        frozen_predictions=prediction.new_zeros((batch, 0)),
        frozen_probabilities=probability.new_zeros((batch, 0)),
        lost_fraction=explanation.lost_fraction,
        frozen_lost_fraction=explanation.lost_fraction.new_zeros((batch, 0)),
        options=options,
        spatial_relevance=spatial_relevance,
        temporal_relevance=temporal_relevance,
        static_output=static_output,
    )
