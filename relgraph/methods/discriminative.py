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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from relgraph.engine.canonize import canonical
from relgraph.engine.graph import Graph
from relgraph.engine.memory import check_memory
from relgraph.engine.reverse import (
    Target,
    activations_needed,
    explanation_with_rules,
    resolve_rules,
)
from relgraph.errors import ArgumentError, ShapeError, TargetError
from relgraph.methods.decomposed import default_static
from relgraph.methods.frozen import explain_frozen, temporal_cropping_applies, wanted_slices
from relgraph.methods.maps import (
    METHODS,
    NORMALIZATIONS,
    REDUCTIONS,
    DiscriminativeResult,
    check_choice,
    frozen_clips,
    normalize_maps,
    reduce_frozen,
)
from relgraph.methods.motion import explain_motion

if TYPE_CHECKING:
    from relgraph.io.labels import Labels
    from relgraph.rules import Composite, Rule

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "METHODS",
    "check_discriminative_options",
    "NORMALIZATIONS",
    "REDUCTIONS",
    "DiscriminativeResult",
    "discriminative",
    "discriminative_with_rules",
    "frozen_clips",
    "normalize_maps",
    "reduce_frozen",
]

#: Frozen clips explained per batch by default, chosen by measurement on a CPU (the table is
#: in docs/benchmarks/performance.md, "Frozen-clip batch size"): a tiny model is overhead
#: bound and gains from batches of 4 or more; the full C3D is compute bound, costs the same
#: per clip from 1 to 8, and its memory grows with every frozen clip in the batch. 4 is near
#: the best for both and keeps C3D's peak memory moderate. On a GPU larger batches may pay:
#: pass ``batch_size``.
DEFAULT_BATCH_SIZE = 4


def discriminative(
    g: Graph,
    clip: torch.Tensor,
    target: Target = "auto",
    rules: Composite | str | os.PathLike | dict | None = None,
    reduce: str = "first",
    normalize: str = "maxabs",
    batch_size: int | None = None,
    output_relevance: str | torch.Tensor | None = None,
    preprocess: str | None = None,
    labels: Labels | Sequence[str] | None = None,
    progress: bool | None = None,
    frozen_shortcut: bool = True,
    canonize: bool | None = None,
    memory_check: bool = True,
    method: str = "frozen",
    static: str | None = None,
    sigma: float = 1.0,
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
        it. Default :data:`DEFAULT_BATCH_SIZE` = 4, chosen by measurement
        (docs/benchmarks/performance.md): single clips cost more per clip on a tiny model,
        the full C3D costs the same from 1 to 8, and its memory grows with the batch.
    output_relevance
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
    memory_check
        Refuse, before anything is allocated, a run whose estimated peak memory (the larger
        of the clips and a batch of frozen clips) exceeds what the device has free
        (``relgraph.engine.memory``); False skips the check.
    method
        What "relevance due to motion" means (``docs/motion-methods.md``): ``frozen`` (the
        default, the paper's method described above), ``decomposed`` (one explanation; the
        input layer's relevance split between the clip's static part and its moving part,
        spatial + temporal = spatio-temporal), ``reference`` (DeepLIFT's Rescale rule with the
        static clip as reference: the temporal map explains ``f(x) − f(static)``; the spatial
        map is the static clip's explanation) or ``selective`` (Hiley et al. 2020: the
        spatio-temporal relevance where its temporal derivative exceeds ``sigma`` standard
        deviations). ``reduce``, ``batch_size``, ``progress`` and ``frozen_shortcut`` apply to
        ``frozen`` only; ``decomposed`` and ``selective`` normalise all three maps by the
        spatio-temporal map's statistic, so that spatial + temporal = spatio-temporal.
    static
        The static part of a clip for ``decomposed`` and ``reference``: each pixel's ``mean``
        (default), ``median`` or ``first`` value over the frames.
    sigma
        ``selective``'s threshold, in standard deviations of the temporal derivative.

    Returns
    -------
    DiscriminativeResult

    Raises
    ------
    RelgraphError
        For a clip of the wrong shape, dtype or device, an unknown ``reduce`` or
        ``normalize``, a bad ``batch_size``, target or output_relevance, or rules that do not fit.
    """
    check_discriminative_options(reduce, normalize, batch_size, method)
    g = canonical(g, canonize)
    composite, node_rules, seed = resolve_rules(g, rules, preprocess, output_relevance)
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
        memory_check=memory_check,
        method=method,
        static=static,
        sigma=sigma,
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
    output_relevance: str | torch.Tensor = "onehot",
    *,
    reduce: str = "first",
    normalize: str = "maxabs",
    batch_size: int | None = None,
    labels: Labels | Sequence[str] | None = None,
    progress: bool | None = None,
    options: dict[str, Any] | None = None,
    frozen_shortcut: bool = True,
    memory_check: bool = True,
    method: str = "frozen",
    static: str | None = None,
    sigma: float = 1.0,
) -> DiscriminativeResult:
    """:func:`discriminative` with the rules already resolved per node
    (``Composite.resolve``): resolve once, then call this for every clip of a video."""
    check_discriminative_options(reduce, normalize, batch_size, method)
    _check_clip(g, clip)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if memory_check:
        check_memory(g, max(clip.shape[0], batch_size), activations_needed(g, node_rules))
    batch, _, num_frames = clip.shape[:3]
    seed = output_relevance
    seed_for = _seed_rows(seed, batch)
    if method != "frozen":
        static = default_static(method, static)
        used = {
            "method": method,
            "target": target if isinstance(target, (str, int)) else _plain(target),
            "output_relevance": seed if isinstance(seed, str) else "tensor",
            "normalize": normalize,
            **({"static": static} if method in ("decomposed", "reference", "revealcancel") else {}),
            **({"sigma": sigma} if method == "selective" else {}),
            **(options or {}),
        }
        return explain_motion(
            g,
            clip,
            node_rules,
            target,
            seed,
            method=method,
            normalize=normalize,
            labels=labels,
            static=static,
            sigma=sigma,
            options=used,
        )

    # the output, target and lost relevance, without keeping every node's relevance
    explanation = explanation_with_rules(
        g,
        clip,
        node_rules,
        target,
        seed_for(None),
        labels=labels,
        memory_check=False,  # checked above, for the larger batch
    )
    relevance = explanation.relevance
    output = explanation.output.reshape(batch, -1)
    explained = explanation.target
    lost = explanation.lost_fraction
    del explanation

    # attention mixes the tokens of every frame: the frozen clips' activations are not
    # constant in time past the patch embedding, and only the plain path is used
    frozen_shortcut = frozen_shortcut and temporal_cropping_applies(g)
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
            frozen = explanation_with_rules(
                g,
                frozen_clips(clip, chunk),
                node_rules,
                explained[clip_rows],
                seed_for(clip_rows),
                memory_check=False,
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
        "method": "frozen",
        "target": target if isinstance(target, (str, int)) else _plain(target),
        "output_relevance": seed if isinstance(seed, str) else "tensor",
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


def check_discriminative_options(
    reduce: Any, normalize: Any, batch_size: Any, method: Any = "frozen"
) -> None:
    """Refuse an unknown ``method``, ``reduce`` or ``normalize``, or a ``batch_size`` that
    is not a positive integer or None, with an :class:`ArgumentError` naming it."""
    check_choice("method", method, METHODS)
    check_choice("reduce", reduce, REDUCTIONS)
    check_choice("normalize", normalize, NORMALIZATIONS)
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
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
            f"an output_relevance tensor must hold one row per clip ({batch}), got "
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
