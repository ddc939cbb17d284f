"""What the discriminative method and its motion methods return, and the map arithmetic they
share: the result type, the frozen clips of a clip, normalisation and reduction of maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from relgraph.errors import ArgumentError, did_you_mean

#: How to turn a frozen clip's relevance (T, H, W) into the spatial map of its frame.
REDUCTIONS: tuple[str, ...] = ("first", "same", "mean", "sum")
#: How each explanation's channel-summed map is scaled before maps are compared.
NORMALIZATIONS: tuple[str, ...] = ("maxabs", "sum", "none")
#: What "relevance due to motion" means (``docs/motion-methods.md``): the paper's frozen
#: clips, the input split between static and moving parts, DeepLIFT with the static clip as
#: reference, or the selective relevance of Hiley et al. (2020).
METHODS: tuple[str, ...] = ("frozen", "decomposed", "reference", "revealcancel", "selective")


@dataclass
class DiscriminativeResult:
    """Spatio-temporal, spatial and temporal relevance of a batch of clips.

    Shapes use ``B`` clips of ``C`` channels, ``T`` frames of ``H × W`` pixels.

    Attributes
    ----------
    spatiotemporal
        ``(B, T, H, W)``: the clip's relevance, summed over channels, normalised.
    spatial
        ``(B, T, H, W)``: map ``t`` comes from the frozen clip of frame ``t`` (summed over
        channels, normalised, then reduced over its time axis by ``reduce``).
    temporal
        ``(B, T, H, W)``: ``spatiotemporal − spatial``, the relevance due to motion.
    relevance
        ``(B, C, T, H, W)``: the clip's raw relevance, channel-resolved, before normalising.
    frozen_relevance
        ``(B, T, C, T, H, W)``: the raw relevance of every frozen clip, all of it (index 1 is
        the frozen frame, index 3 the frozen clip's own time axis), so that any other
        reduction or normalisation can be computed afterwards without explaining again.
        Except where the frozen-clip shortcut explained one slice only (``reduce``
        ``first``/``same`` with ``normalize="none"``): then the other slices are 0.
    output
        ``(B, K)``: the model's logits on each clip.
    prediction, probability
        ``(B,)``: the predicted class of each clip and its softmax probability.
    target
        ``(B,)``: the class every map explains (the clip's and its frozen clips' alike).
    frozen_output
        ``(B, T, K)``: logits on each frozen clip.
    frozen_predictions, frozen_probabilities
        ``(B, T)``: what the model predicts on each frozen clip, and the softmax probability
        of that prediction. It may differ from the clip's: one frame shows no motion.
    lost_fraction
        ``(B,)``: the share of each clip's seed relevance that the reverse pass did not hand
        on to the input (bias shares, the stabiliser's ε, zeroed denominators; see
        ``Explanation.lost_fraction``).
    frozen_lost_fraction
        ``(B, T)``: the same for each frozen clip (where the frozen-clip shortcut explained
        one slice only: of the relevance on that slice's receptive field).
    options
        The options used: ``method``, ``target`` (as given), ``rules``, ``output_relevance``,
        ``reduce``, ``normalize``, ``batch_size``, ``frozen_shortcut``, ``preprocess`` (and
        ``static``, ``sigma`` where the method reads them).
    spatial_relevance, temporal_relevance
        ``(B, C, T, H, W)``: the raw, channel-resolved relevance behind the spatial and
        temporal maps, for the methods other than ``frozen`` (``None`` for ``frozen``, whose
        spatial relevance is ``frozen_relevance``). ``decomposed``: the static and the moving
        part's share of ``relevance``; ``selective``: ``relevance`` outside and inside the
        selected positions; ``reference``: the static clip's relevance and DeepLIFT's.

    Methods other than ``frozen`` explain no frozen clip: their ``frozen_*`` fields have
    ``T = 0`` frames.
    """

    spatiotemporal: torch.Tensor
    spatial: torch.Tensor
    temporal: torch.Tensor
    relevance: torch.Tensor = field(repr=False)
    frozen_relevance: torch.Tensor = field(repr=False)
    output: torch.Tensor = field(repr=False)
    prediction: torch.Tensor
    probability: torch.Tensor
    target: torch.Tensor
    frozen_output: torch.Tensor = field(repr=False)
    frozen_predictions: torch.Tensor
    frozen_probabilities: torch.Tensor
    lost_fraction: torch.Tensor
    frozen_lost_fraction: torch.Tensor
    options: dict[str, Any]
    spatial_relevance: torch.Tensor | None = field(default=None, repr=False)
    temporal_relevance: torch.Tensor | None = field(default=None, repr=False)
    #: ``(B, K)``: the logits on the static clip (``reference`` only)
    static_output: torch.Tensor | None = field(default=None, repr=False)


# --------------------------------------------------------------------------- building blocks


def frozen_clips(clips: torch.Tensor, frames: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The frozen clips of ``(clip, frame)`` pairs: each frame repeated over the whole clip.

    Repeating the frame (not zero padding, which would add a sudden, false motion) keeps the
    input free of motion while every frame still looks like the video.

    Parameters
    ----------
    clips
        ``(B, C, T, H, W)``.
    frames
        ``(b, t)`` pairs: frame ``t`` of clip ``b``.

    Returns
    -------
    torch.Tensor
        ``(len(frames), C, T, H, W)``.
    """
    clip_index = torch.tensor([b for b, _ in frames], device=clips.device)
    frame_index = torch.tensor([t for _, t in frames], device=clips.device)
    still = clips[clip_index, :, frame_index]  # (N, C, H, W)
    return still.unsqueeze(2).expand(-1, -1, clips.shape[2], -1, -1).contiguous()


def normalize_maps(maps: torch.Tensor, normalize: str, dims: tuple[int, ...]) -> torch.Tensor:
    """Scale each map by a statistic over ``dims``: its max ``|value|`` (``maxabs``), the
    absolute value of its total (``sum``), or not at all (``none``).

    A map whose statistic is zero (or subnormal) stays as it is, all zeros: never NaN.
    """
    check_choice("normalize", normalize, NORMALIZATIONS)
    if normalize == "none":
        return maps
    if normalize == "maxabs":
        scale = maps.abs().amax(dim=dims, keepdim=True)
    else:
        # The absolute total keeps the sign of the evidence: with conserving rules the total
        # is positive and the map then sums to exactly 1.
        scale = maps.sum(dim=dims, keepdim=True).abs()
    usable = scale >= torch.finfo(maps.dtype).tiny
    return torch.where(usable, maps / torch.where(usable, scale, torch.ones_like(scale)), 0.0)


def reduce_frozen(frozen_maps: torch.Tensor, reduce: str) -> torch.Tensor:
    """Spatial maps from frozen-clip maps ``(B, T, T', H, W)``: frame ``t``'s map from
    slice 0 (``first``), slice ``t`` (``same``), the ``mean`` or the ``sum`` over ``T'``.
    """
    check_choice("reduce", reduce, REDUCTIONS)
    if reduce == "first":
        return frozen_maps[:, :, 0]
    if reduce == "mean":
        return frozen_maps.mean(dim=2)
    if reduce == "sum":
        return frozen_maps.sum(dim=2)
    # same: frame t's map is slice t of its own frozen clip, the diagonal of (frame, slice).
    return frozen_maps.diagonal(dim1=1, dim2=2).movedim(-1, 1)


# --------------------------------------------------------------------------- the method


def check_choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(
            f"{what} must be one of {', '.join(choices)}, got {value!r}"
            f"{did_you_mean(value, choices) if isinstance(value, str) else ''}"
        )
