"""The discriminative method of Hiley et al. (2019): which relevance of a clip is due to motion.

For a clip, explain it (the spatio-temporal map); for each frame ``t`` explain the *frozen
clip*, frame ``t`` repeated ``T`` times, for the same target (its relevance cannot come from
motion: the spatial map); the temporal map is their difference. The ``T`` frozen clips of a
clip are independent, so they are explained in batches.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from relgraph.engine.canonize import canonical
from relgraph.engine.graph import Graph
from relgraph.engine.reverse import Target, explain_with_rules, resolve_rules
from relgraph.errors import ArgumentError, ShapeError, TargetError, did_you_mean
from relgraph.methods.frozen import explain_frozen, wanted_slices

if TYPE_CHECKING:
    from relgraph.io.labels import Labels
    from relgraph.rules import Composite, Rule

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "NORMALIZATIONS",
    "REDUCTIONS",
    "DiscriminativeResult",
    "discriminative",
    "discriminative_with_rules",
    "frozen_clips",
    "normalize_maps",
    "reduce_frozen",
]

#: How to turn a frozen clip's relevance (T, H, W) into the spatial map of its frame.
REDUCTIONS: tuple[str, ...] = ("first", "same", "mean", "sum")
#: How each explanation's channel-summed map is scaled before maps are compared.
NORMALIZATIONS: tuple[str, ...] = ("maxabs", "sum", "none")

#: Frozen clips explained per batch by default, chosen by measurement on a 2-core CPU (AMD
#: EPYC, torch 2.13, float32, deep-taylor-paper rules): seconds per frozen clip for one batch
#: of each size, sizes interleaved, best of 10 rounds (c3d-tiny) or of 6 (C3D; 2 for 17),
#: and the process's peak memory with the full C3D loaded. The CPU was shared with other
#: jobs (medians 1.5-2.5x higher; in an earlier, busier session every C3D size took
#: 4.2-7.5 s per clip, size 1 the slowest):
#:
#: ==========================  ======  ======  ======  ======  ======
#: batch size                       1       2       4       8      17
#: ==========================  ======  ======  ======  ======  ======
#: c3d-tiny, s per clip         0.020  0.0072  0.0057  0.0049  0.0051
#: c3d, s per clip               1.39    1.33    1.38    1.64    3.01
#: c3d, peak memory (GB)          2.3     2.4     3.5     5.6    10.2
#: ==========================  ======  ======  ======  ======  ======
#:
#: The tiny model is overhead bound: batches of 4 or more run 3.5-4x faster than single
#: clips. The full C3D is compute bound: sizes 1 to 8 are equal within the noise, 17 is
#: slower, and memory grows by about 0.55 GB per frozen clip. 4 is within 15 % of the best
#: for the tiny model, as fast as any for C3D, and keeps C3D's peak at 3.5 GB. On a GPU
#: larger batches may pay: pass ``batch_size``.
DEFAULT_BATCH_SIZE = 4


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
        The options used: ``target`` (as given), ``rules``, ``seed``, ``reduce``,
        ``normalize``, ``batch_size``, ``frozen_shortcut``, ``preprocess``.
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
    _check_choice("normalize", normalize, NORMALIZATIONS)
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
    _check_choice("reduce", reduce, REDUCTIONS)
    if reduce == "first":
        return frozen_maps[:, :, 0]
    if reduce == "mean":
        return frozen_maps.mean(dim=2)
    if reduce == "sum":
        return frozen_maps.sum(dim=2)
    # same: frame t's map is slice t of its own frozen clip, the diagonal of (frame, slice).
    return frozen_maps.diagonal(dim1=1, dim2=2).movedim(-1, 1)


# --------------------------------------------------------------------------- the method


def discriminative(
    g: Graph,
    clip: torch.Tensor,
    target: Target = "auto",
    rules: Composite | str | os.PathLike | dict | None = None,
    reduce: str = "first",
    normalize: str = "maxabs",
    batch_size: int | None = None,
    seed: str | torch.Tensor | None = None,
    preprocess: str | None = None,
    labels: Labels | Sequence[str] | None = None,
    progress: bool | None = None,
    frozen_shortcut: bool = True,
    canonize: bool | None = None,
) -> DiscriminativeResult:
    """Spatio-temporal, spatial and temporal relevance of each clip of a batch.

    Follows Hiley et al. (2019) as its authors ran it: explain the clip; for each frame
    ``t`` explain the frozen clip (frame ``t`` repeated ``T`` times) for the **same** target
    and record the frozen clip's own prediction; sum every map over the colour channels and
    normalise each explanation by its own statistic (the clip's map once over all its frames,
    each frozen clip's map over its own frames, as the authors' code does); reduce each
    frozen map over its time axis to the spatial map of its frame; the temporal map is
    ``spatiotemporal − spatial``, per frame.

    Parameters
    ----------
    g
        The compiled model; its input must be a video ``(C, T, H, W)``.
    clip
        ``(B, C, T, H, W)`` on the graph's device and dtype, already preprocessed.
    target
        ``"auto"`` (each clip's predicted class), an index, a class name (with ``labels``),
        or one of those per clip. Frozen clips are explained for their clip's target.
    rules
        A preset name, a preset YAML path, a ``Composite``, or ``{node: rule}`` overrides
        (see :func:`relgraph.explain`); default: the architecture's preset. Resolved once.
    reduce
        How frame ``t``'s frozen-clip relevance ``(T, H, W)`` becomes its spatial map:
        ``first`` (slice 0, the authors' choice and the default), ``same`` (slice ``t``),
        ``mean`` or ``sum`` over the slices. ``sum`` is about ``T`` times the scale of one
        frame of the clip's map whatever ``normalize`` is, so its temporal map is mostly
        negative; ``mean`` is the aggregate on the clip's scale.
    normalize
        ``maxabs`` (default, the paper's): each explanation's channel-summed map divided by
        its own maximum absolute value (the clip's over ``T × H × W``, each frozen clip's over
        its ``T × H × W``), so the spatio-temporal and spatial maps lie in [−1, 1] and the
        temporal map in [−2, 2]. ``sum``: divided by the absolute value of its total (each
        explanation then carries one unit of relevance, and a frame of the clip and a slice of
        a frozen clip carry comparable shares of it). ``none``: raw relevance. Maps that are
        all zero stay zero; never NaN.
    batch_size
        Frozen clips explained at once (batches may span clips); results do not depend on
        it. Default :data:`DEFAULT_BATCH_SIZE` = 4, measured on a 2-core CPU (table at the
        constant): single clips cost 3.5-4x more per clip on c3d-tiny, the full C3D costs the
        same from 1 to 8 and more at 17, and needs 3.5 GB at 4, 10 GB at 17.
    seed
        Start of the reverse pass: ``onehot``, ``logit``, or a tensor ``(B, K)`` (frozen
        clips get their clip's row); default: the preset's, else ``onehot``.
    preprocess
        The preprocessing preset the clip went through (zβ bounds follow from it); default:
        the architecture's.
    labels
        Class names, to accept class names as targets.
    progress
        Show a tqdm bar on stderr over the batches of frozen clips. Default (``None``): only
        when stderr is a terminal and there is more than one batch.
    frozen_shortcut
        Explain frozen clips without redundant work (``methods.frozen``): the forward pass
        computes each distinct time slice once, and where the maps need one slice of each
        frozen clip (``reduce`` ``first``/``same`` with ``normalize="none"``) the reverse pass
        follows only that slice's receptive field. The same results up to rounding; ``False``
        explains the full frozen clips, for comparison. With the reverse shortcut,
        ``frozen_relevance`` holds only the slices the reduction reads (the others are 0).
    canonize
        Fold batch norms into the layer before them before the rules run (see
        :func:`relgraph.explain`); default: the architecture's ``canonize:``.

    Returns
    -------
    DiscriminativeResult

    Raises
    ------
    RelgraphError
        For a clip of the wrong shape, dtype or device, an unknown ``reduce`` or
        ``normalize``, a bad ``batch_size``, target or seed, or rules that do not fit.
    """
    _check_options(reduce, normalize, batch_size)
    g = canonical(g, canonize)
    composite, node_rules, seed = resolve_rules(g, rules, preprocess, seed)
    return discriminative_with_rules(
        g,
        clip,
        node_rules,
        target,
        seed,
        reduce=reduce,
        normalize=normalize,
        batch_size=batch_size,
        labels=labels,
        progress=progress,
        frozen_shortcut=frozen_shortcut,
        options={
            "rules": composite.name,
            "preprocess": preprocess or g.default_preprocess,
        },
    )


def discriminative_with_rules(
    g: Graph,
    clip: torch.Tensor,
    node_rules: dict[str, Rule],
    target: Target = "auto",
    seed: str | torch.Tensor = "onehot",
    *,
    reduce: str = "first",
    normalize: str = "maxabs",
    batch_size: int | None = None,
    labels: Labels | Sequence[str] | None = None,
    progress: bool | None = None,
    options: dict[str, Any] | None = None,
    frozen_shortcut: bool = True,
) -> DiscriminativeResult:
    """:func:`discriminative` with the rules already resolved per node
    (``Composite.resolve``): resolve once, then call this for every clip of a video."""
    _check_options(reduce, normalize, batch_size)
    _check_clip(g, clip)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    batch, _, num_frames = clip.shape[:3]
    seed_for = _seed_rows(seed, batch)

    # the output, target and lost relevance, without keeping every node's relevance
    explanation = explain_with_rules(
        g, clip, node_rules, target, seed_for(None), labels=labels, return_explanation=True
    )
    relevance = explanation.relevance
    output = explanation.output.reshape(batch, -1)
    explained = explanation.target
    lost = explanation.lost_fraction
    del explanation

    pairs = [(b, t) for b in range(batch) for t in range(num_frames)]
    chunks = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
    frozen_relevance = relevance.new_empty((batch, num_frames, *clip.shape[1:]))
    frozen_output = output.new_empty((batch, num_frames, output.shape[1]))
    frozen_lost = lost.new_empty((batch, num_frames))
    for chunk in _progress(chunks, progress):
        clip_rows = torch.tensor([b for b, _ in chunk], device=clip.device)
        frame_rows = torch.tensor([t for _, t in chunk], device=clip.device)
        if frozen_shortcut:
            frozen = explain_frozen(
                g,
                clip[clip_rows, :, frame_rows],
                node_rules,
                explained[clip_rows],
                seed_for(clip_rows),
                wanted=wanted_slices(reduce, normalize, [t for _, t in chunk]),
            )
        else:
            frozen = explain_with_rules(
                g,
                frozen_clips(clip, chunk),
                node_rules,
                explained[clip_rows],
                seed_for(clip_rows),
                return_explanation=True,
            )
        frozen_relevance[clip_rows, frame_rows] = frozen.relevance
        frozen_output[clip_rows, frame_rows] = frozen.output.reshape(len(chunk), -1)
        frozen_lost[clip_rows, frame_rows] = frozen.lost_fraction
        del frozen

    with torch.inference_mode():
        probabilities = output.softmax(dim=1)
        probability, prediction = probabilities.max(dim=1)
        frozen_probability, frozen_prediction = frozen_output.softmax(dim=2).max(dim=2)
        spatiotemporal = normalize_maps(relevance.sum(dim=1), normalize, dims=(1, 2, 3))
        frozen_maps = normalize_maps(frozen_relevance.sum(dim=2), normalize, dims=(2, 3, 4))
        spatial = reduce_frozen(frozen_maps, reduce)
        temporal = spatiotemporal - spatial

    used = {
        "target": target if isinstance(target, (str, int)) else _plain(target),
        "seed": seed if isinstance(seed, str) else "tensor",
        "reduce": reduce,
        "normalize": normalize,
        "batch_size": batch_size,
        "frozen_shortcut": frozen_shortcut,
        **(options or {}),
    }
    return DiscriminativeResult(
        spatiotemporal=spatiotemporal,
        spatial=spatial,
        temporal=temporal,
        relevance=relevance,
        frozen_relevance=frozen_relevance,
        output=output,
        prediction=prediction,
        probability=probability,
        target=explained,
        frozen_output=frozen_output,
        frozen_predictions=frozen_prediction,
        frozen_probabilities=frozen_probability,
        lost_fraction=lost,
        frozen_lost_fraction=frozen_lost,
        options=used,
    )


# --------------------------------------------------------------------------- checks, helpers


def _check_choice(what: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(
            f"{what} must be one of {', '.join(choices)}, got {value!r}"
            f"{did_you_mean(value, choices) if isinstance(value, str) else ''}"
        )


def _check_options(reduce: str, normalize: str, batch_size: int | None) -> None:
    _check_choice("reduce", reduce, REDUCTIONS)
    _check_choice("normalize", normalize, NORMALIZATIONS)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ArgumentError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def _check_clip(g: Graph, clip: torch.Tensor) -> None:
    if len(g.input_shape) != 4:
        raise ShapeError(
            f"the discriminative method needs a video model with input (C, T, H, W); "
            f"'{g.name}' takes {list(g.input_shape)}",
            file=g.file,
            node=g.input,
        )
    if not isinstance(clip, torch.Tensor):
        raise ShapeError(f"clip must be a torch.Tensor, got {type(clip).__name__}")
    if clip.dim() != 5:
        hint = " (one clip? add the batch dimension: clip.unsqueeze(0))" if clip.dim() == 4 else ""
        raise ShapeError(
            f"clip must be a batch shaped (B, C, T, H, W), got shape {list(clip.shape)}{hint}"
        )
    if clip.shape[0] == 0:
        raise ShapeError("clip is an empty batch (B = 0)")
    g.check_input(clip)


def _seed_rows(
    seed: str | torch.Tensor, batch: int
) -> Callable[[torch.Tensor | None], str | torch.Tensor]:
    """The seed for the clips (``None``) or for frozen clips of the given clip rows."""
    if isinstance(seed, str):
        return lambda rows: seed
    if not isinstance(seed, torch.Tensor) or seed.shape[0] != batch:
        raise TargetError(
            f"a seed tensor must hold one row per clip ({batch}), got "
            f"{list(seed.shape) if isinstance(seed, torch.Tensor) else type(seed).__name__}"
        )
    return lambda rows: seed if rows is None else seed[rows]


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _progress(chunks: list, progress: bool | None):
    show = progress if progress is not None else (len(chunks) > 1 and _stderr_is_terminal())
    if not show:
        return chunks
    from tqdm import tqdm

    return tqdm(chunks, desc="frozen clips", unit="batch", file=sys.stderr, leave=False)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
