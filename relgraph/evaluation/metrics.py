"""Measure relevance maps of video classifiers: faithfulness, localisation, sanity.

Every function works on batches: clips ``(B, C, T, H, W)`` (preprocessed, as the model takes
them), maps ``(B, T, H, W)`` (one relevance value per voxel, channels summed), targets
``(B,)``. Perturbed clips are run through the model in batches.

- :func:`region_perturbation`: cubes of the clip replaced most relevant first (MoRF) or least
  relevant first (LeRF); the target's logit and probability after each step (Samek et al.,
  2017, "Evaluating the visualization of what a deep neural network has learned", in space
  and time). :func:`aopc` (Samek et al., 2017) and :func:`abpc` (Blücher et al., 2022,
  "Decoupling pixel flipping and occlusion strategy for consistent XAI benchmarks").
- :func:`frame_perturbation`: whole frames deleted (most relevant first) or inserted into a
  fully replaced clip (most relevant first), ordered by per-frame relevance (Petsiuk et al.,
  2018, RISE's deletion and insertion; per frame as Li et al., 2021, for video).
- :func:`localisation`: pointing game (Zhang et al., 2018), relevance mass accuracy and
  relevance rank accuracy (Arras et al., 2022, CLEVR-XAI) of a map on a mask.
- :func:`cascading_randomisation`: the model's layers re-initialised from the top, one more
  at a time, and the Spearman rank correlation of each map with the original model's
  (Adebayo et al., 2018, "Sanity checks for saliency maps").
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from relgraph.engine.graph import Graph, compile_spec
from relgraph.errors import ArgumentError, ShapeError

__all__ = [
    "REPLACEMENTS",
    "ForwardMemo",
    "PerturbationCurves",
    "abpc",
    "aopc",
    "cascading_randomisation",
    "frame_perturbation",
    "localisation",
    "model_function",
    "randomisable_layers",
    "region_perturbation",
    "replacement",
    "spearman",
    "summarise",
]

#: How a perturbed region is filled: ``freeze`` (the region's mean over its frames: removes
#: motion, keeps appearance), ``blur`` (a Gaussian blur of the clip in space and time),
#: ``mean`` (the data set's mean per channel).
REPLACEMENTS: tuple[str, ...] = ("freeze", "blur", "mean")

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PerturbationCurves:
    """The target's logit and probability after each perturbation step.

    Attributes
    ----------
    logit, probability
        ``(B, S + 1)``: step 0 is the unperturbed clip.
    fraction
        ``(S + 1,)``: share of the clip's voxels (or frames) replaced at each step.
    """

    logit: torch.Tensor
    probability: torch.Tensor
    fraction: torch.Tensor


class ForwardMemo:
    """The target's logit and probability of every perturbed clip already run, keyed by the
    clip and what was replaced in it, so that no perturbed clip is run twice: every curve
    starts at the unperturbed clip, each replacement's curves all end at the fully replaced
    clip, and maps that rank the regions (or frames) alike up to a step share the steps.
    The results are the same as without it. One memo serves one model, one set of clips and
    targets, and one ``mean``; ``runs`` and ``hits`` count the clips run and the ones reused.
    """

    def __init__(self) -> None:
        self._results: dict[tuple, tuple[float, float]] = {}
        self.runs = 0
        self.hits = 0


def model_function(graph: Graph) -> Model:
    """The graph as a function from a batch to its logits ``(B, K)``: no activations kept,
    so that element-wise ops run in place, and channels-last on CPU, where a forward pass
    alone runs faster (``Graph.forward``)."""

    def logits(x: torch.Tensor) -> torch.Tensor:
        return graph.forward(x, keep=(), channels_last=True).output.reshape(x.shape[0], -1)

    return logits


# --------------------------------------------------------------------------- replacement


def replacement(
    clips: torch.Tensor,
    how: str,
    *,
    cube_frames: int | None = None,
    mean: torch.Tensor | None = None,
    sigma: tuple[float, float, float] = (1.0, 2.0, 2.0),
) -> torch.Tensor:
    """The values that replace the clips' voxels, shaped like ``clips`` ``(B, C, T, H, W)``.

    ``freeze``: each voxel gets its pixel's mean over the frames of its cube's time slab
    (``cube_frames`` frames; default the whole clip), which keeps the appearance and removes
    the motion. ``blur``: a separable Gaussian blur (``sigma`` in frames, pixels, pixels;
    borders replicate). ``mean``: ``mean`` per channel ``(C,)``, default the clips' own.
    """
    _check_clips(clips)
    if how == "freeze":
        frames = clips.shape[2]
        step = frames if cube_frames is None else int(cube_frames)
        out = torch.empty_like(clips)
        for begin in range(0, frames, step):
            slab = clips[:, :, begin : begin + step]
            out[:, :, begin : begin + step] = slab.mean(dim=2, keepdim=True)
        return out
    if how == "blur":
        out = clips
        for axis, s in zip((2, 3, 4), sigma):
            out = _blur_axis(out, axis, float(s))
        return out
    if how == "mean":
        if mean is None:
            mean = clips.mean(dim=(0, 2, 3, 4))
        mean = torch.as_tensor(mean, dtype=clips.dtype, device=clips.device).reshape(-1)
        if mean.numel() != clips.shape[1]:
            raise ArgumentError(
                f"mean needs one value per channel ({clips.shape[1]}), got {mean.numel()}"
            )
        return mean.reshape(1, -1, 1, 1, 1).expand_as(clips).clone()
    raise ArgumentError(f"replacement must be one of {', '.join(REPLACEMENTS)}, got {how!r}")


def _blur_axis(x: torch.Tensor, axis: int, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    index = (
        torch.arange(x.shape[axis], device=x.device)[:, None]
        + torch.arange(-radius, radius + 1, device=x.device)[None, :]
    ).clamp(0, x.shape[axis] - 1)  # replicate the borders
    gathered = x.index_select(axis, index.reshape(-1))
    shape = list(x.shape)
    shape[axis : axis + 1] = [x.shape[axis], 2 * radius + 1]
    return (gathered.reshape(shape) * _along(kernel, axis + 1, len(shape))).sum(dim=axis + 1)


def _along(vector: torch.Tensor, axis: int, dims: int) -> torch.Tensor:
    shape = [1] * dims
    shape[axis] = -1
    return vector.reshape(shape)


# --------------------------------------------------------------------------- region perturbation


def region_ids(shape: Sequence[int], cube: Sequence[int], device=None) -> torch.Tensor:
    """The cube index of every voxel of a ``(T, H, W)`` grid, ``(T, H, W)`` int64; cubes
    at the far edges are cut short where ``cube`` does not divide the size."""
    grids = [torch.arange(size, device=device) // int(side) for size, side in zip(shape, cube)]
    counts = [math.ceil(size / int(side)) for size, side in zip(shape, cube)]
    t, h, w = torch.meshgrid(*grids, indexing="ij")
    return (t * counts[1] + h) * counts[2] + w


def region_perturbation(
    model: Model,
    clips: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    cube: Sequence[int] = (4, 8, 8),
    order: str = "morf",
    replace: str | torch.Tensor = "freeze",
    steps: int = 16,
    batch_size: int = 64,
    mean: torch.Tensor | None = None,
    progress: bool = False,
    memo: ForwardMemo | None = None,
) -> PerturbationCurves:
    """Replace cubes of each clip in the order of their summed relevance; the target's
    logit and probability after each step (Samek et al., 2017, region perturbation).

    Parameters
    ----------
    model
        Batch ``(N, C, T, H, W)`` → logits ``(N, K)`` (see :func:`model_function`).
    clips, maps, targets
        ``(B, C, T, H, W)``, ``(B, T, H, W)``, ``(B,)``.
    cube
        Region size in frames, pixels, pixels; the regions tile the clip.
    order
        ``morf`` (most relevant first) or ``lerf`` (least relevant first). Ties keep the
        regions' index order.
    replace
        A name of :data:`REPLACEMENTS` or the replacement values ``(B, C, T, H, W)``.
    steps
        Evaluation points after step 0: after step ``k``, ``round(k R / steps)`` of the
        ``R`` regions are replaced (all of them at the last step).
    memo
        A :class:`ForwardMemo` shared by the calls on the same model, clips and targets:
        perturbed clips run before are not run again (with a named ``replace`` only).
    """
    _check_clips(clips)
    _check_maps(clips, maps)
    if order not in ("morf", "lerf"):
        raise ArgumentError(f"order must be morf or lerf, got {order!r}")
    values = (
        replace
        if isinstance(replace, torch.Tensor)
        else replacement(clips, replace, cube_frames=cube[0], mean=mean)
    )
    ids = region_ids(clips.shape[2:], cube, device=clips.device)
    regions = int(ids.max()) + 1
    steps = max(1, min(int(steps), regions))
    scores = torch.zeros(maps.shape[0], regions, dtype=torch.float64, device=maps.device)
    scores.index_add_(1, ids.reshape(-1), maps.reshape(maps.shape[0], -1).to(torch.float64))
    # rank[b, r]: position of region r in clip b's perturbation order (stable for ties)
    ordering = torch.argsort(scores, dim=1, descending=order == "morf", stable=True)
    rank = torch.empty_like(ordering)
    rank.scatter_(1, ordering, torch.arange(regions, device=maps.device).expand_as(ordering))
    counts = [round(k * regions / steps) for k in range(steps + 1)]
    voxel_rank = rank[:, ids]  # (B, T, H, W)

    def perturbed(b: int, k: int) -> torch.Tensor:
        keep = (voxel_rank[b] >= counts[k]).unsqueeze(0)
        return torch.where(keep, clips[b], values[b])

    def key(b: int, k: int) -> tuple:
        replaced = np.sort(ordering[b, : counts[k]].cpu().numpy()).tobytes()
        return ("regions", replace, tuple(cube), b, replaced) if counts[k] else ("clip", b)

    jobs = [(b, k) for b in range(clips.shape[0]) for k in range(steps + 1)]
    if not isinstance(replace, str):
        memo = None  # replacement values the memo cannot name
    logit, probability = _run(
        model, jobs, perturbed, targets, batch_size, progress, order, memo, key
    )
    sizes = torch.bincount(ids.reshape(-1), minlength=regions).to(torch.float64)
    # the fraction is the same for every clip only on average; report the mean over clips
    fraction = torch.stack(
        [
            (sizes[None, :] * (rank < counts[k])).sum(dim=1).mean() / ids.numel()
            for k in range(steps + 1)
        ]
    )
    return PerturbationCurves(
        logit.reshape(-1, steps + 1), probability.reshape(-1, steps + 1), fraction
    )


def frame_perturbation(
    model: Model,
    clips: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    mode: str = "deletion",
    replace: str | torch.Tensor = "freeze",
    batch_size: int = 64,
    mean: torch.Tensor | None = None,
    progress: bool = False,
    memo: ForwardMemo | None = None,
) -> PerturbationCurves:
    """Delete frames from the clip, or insert them into a fully replaced clip, in the order
    of their relevance (each frame's summed map, most relevant first); one step per frame
    (Petsiuk et al., 2018, deletion and insertion, per frame). ``freeze`` replaces a frame
    with the clip's mean frame. ``memo``: see :func:`region_perturbation`."""
    _check_clips(clips)
    _check_maps(clips, maps)
    if mode not in ("deletion", "insertion"):
        raise ArgumentError(f"mode must be deletion or insertion, got {mode!r}")
    values = (
        replace
        if isinstance(replace, torch.Tensor)
        else replacement(clips, replace, cube_frames=None, mean=mean)
    )
    frames = clips.shape[2]
    per_frame = maps.reshape(*maps.shape[:2], -1).to(torch.float64).sum(dim=2)
    ordering = torch.argsort(per_frame, dim=1, descending=True, stable=True)
    rank = torch.empty_like(ordering)
    rank.scatter_(1, ordering, torch.arange(frames, device=maps.device).expand_as(ordering))

    def perturbed(b: int, k: int) -> torch.Tensor:
        done = (rank[b] < k).reshape(1, frames, 1, 1)
        if mode == "deletion":
            return torch.where(done, values[b], clips[b])
        return torch.where(done, clips[b], values[b])

    def key(b: int, k: int) -> tuple:
        done = (rank[b] < k).cpu().numpy()
        replaced = done if mode == "deletion" else ~done
        return ("frames", replace, b, replaced.tobytes()) if replaced.any() else ("clip", b)

    jobs = [(b, k) for b in range(clips.shape[0]) for k in range(frames + 1)]
    if not isinstance(replace, str):
        memo = None
    logit, probability = _run(
        model, jobs, perturbed, targets, batch_size, progress, mode, memo, key
    )
    fraction = torch.arange(frames + 1, dtype=torch.float64) / frames
    return PerturbationCurves(
        logit.reshape(-1, frames + 1), probability.reshape(-1, frames + 1), fraction
    )


def _run(model, jobs, make, targets, batch_size, progress, what, memo=None, key=None):
    """The target's logit and probability for each job's perturbed clip ``make(b, k)``,
    ``(len(jobs),)`` each in float64, run in batches; with a ``memo``, each distinct
    ``key(b, k)`` once over all calls that share it."""
    if memo is None:
        return _run_batches(model, jobs, make, targets, batch_size, progress, what)
    keys = [key(b, k) for b, k in jobs]
    todo: dict[tuple, tuple[int, int]] = {}
    for job, name in zip(jobs, keys):
        if name not in memo._results and name not in todo:
            todo[name] = job
    memo.hits += len(jobs) - len(todo)
    memo.runs += len(todo)
    if todo:
        logit, probability = _run_batches(
            model, list(todo.values()), make, targets, batch_size, progress, what
        )
        for name, lg, pr in zip(todo, logit.tolist(), probability.tolist()):
            memo._results[name] = (lg, pr)
    results = torch.tensor([memo._results[name] for name in keys], dtype=torch.float64)
    return results[:, 0], results[:, 1]


def _run_batches(model, jobs, make, targets, batch_size, progress, what):
    logits, probabilities = [], []
    chunks = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    for chunk in _bar(chunks, progress, what):
        batch = torch.stack([make(b, k) for b, k in chunk])
        with torch.inference_mode():
            out = model(batch).to(torch.float64)
            rows = torch.arange(len(chunk), device=out.device)
            wanted = targets[torch.tensor([b for b, _ in chunk], device=targets.device)]
            wanted = wanted.to(out.device)
            logits.append(out[rows, wanted])
            probabilities.append(out.softmax(dim=1)[rows, wanted])
    if not logits:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty
    return torch.cat(logits).cpu(), torch.cat(probabilities).cpu()


def aopc(curve: torch.Tensor) -> torch.Tensor:
    """Area over the perturbation curve per clip, ``(B,)``: ``1/(L+1) Σ_k (f(x⁰) − f(xᵏ))``
    for the ``L + 1`` points of a curve ``(B, L + 1)`` (Samek et al., 2017, eq. 12)."""
    return (curve[:, :1] - curve).mean(dim=1)


def abpc(lerf: torch.Tensor, morf: torch.Tensor) -> torch.Tensor:
    """Area between the LeRF and MoRF curves per clip, ``(B,)``: ``1/(L+1) Σ_k (f_LeRF(xᵏ)
    − f_MoRF(xᵏ))`` (Blücher et al., 2022); high when the map orders both ends well."""
    return (lerf - morf).mean(dim=1)


# --------------------------------------------------------------------------- localisation


def localisation(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where each map puts its relevance, against a ground-truth mask; per clip ``(B,)``,
    NaN where the mask is empty.

    - ``pointing``: 1 if the map's largest value lies in the mask (Zhang et al., 2018;
      ties: the first voxel in index order).
    - ``mass``: relevance mass accuracy, the share of the map's positive relevance in the
      mask (Arras et al., 2022).
    - ``rank``: relevance rank accuracy, the share of the map's ``K`` highest voxels that lie
      in the mask, ``K`` the mask's size (Arras et al., 2022; ties in index order).
    """
    if maps.shape != masks.shape:
        raise ShapeError(
            f"maps {list(maps.shape)} and masks {list(masks.shape)} must have the same shape"
        )
    flat = maps.reshape(maps.shape[0], -1).to(torch.float64)
    inside = masks.reshape(masks.shape[0], -1).to(torch.bool)
    size = inside.sum(dim=1)
    nan = torch.full((flat.shape[0],), math.nan, dtype=torch.float64)
    empty = size == 0
    peak = flat.argmax(dim=1)
    pointing = inside.gather(1, peak[:, None])[:, 0].to(torch.float64)
    positive = flat.clamp(min=0)
    total = positive.sum(dim=1)
    mass = torch.where(total > 0, (positive * inside).sum(dim=1) / total.clamp(min=1e-300), nan)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    top = position < size[:, None]
    rank = (top & inside).sum(dim=1) / size.clamp(min=1)
    return {
        "pointing": torch.where(empty, nan, pointing),
        "mass": torch.where(empty, nan, mass),
        "rank": torch.where(empty, nan, rank.to(torch.float64)),
    }


# --------------------------------------------------------------------------- sanity checks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps, ``(B,)`` (ties get their mean rank);
    NaN where a map is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    return torch.where(
        denominator > 0,
        (ra * rb).sum(dim=1) / denominator.clamp(min=1e-300),
        torch.full_like(denominator, math.nan),
    )


def _ranks(x: torch.Tensor) -> torch.Tensor:
    rows = []
    for row in x.reshape(x.shape[0], -1).to(torch.float64).cpu().numpy():
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        mean_rank = ends - (counts - 1) / 2.0  # 1-based mean rank of each distinct value
        rows.append(torch.from_numpy(mean_rank[inverse]))
    return torch.stack(rows)


def randomisable_layers(graph: Graph) -> list[str]:
    """The nodes with parameters, top (output) first: the order of cascading randomisation."""
    return [node for node in reversed(graph.order) if graph.tensors(node)]


def cascading_randomisation(
    graph: Graph,
    explain_maps: Callable[[Graph], dict[str, torch.Tensor]],
    *,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    original: dict[str, torch.Tensor] | None = None,
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Re-initialise the model's layers one more at a time, top first, and yield
    ``(layer, {map: Spearman ρ with the original maps, (B,)})`` after each (Adebayo et al.,
    2018, cascading randomisation).

    ``explain_maps(graph)`` computes every map ``(B, T, H, W)`` of the clips on ``graph``
    (for the original targets). The layer's weights are redrawn as the architecture
    initialises them (``seed``); ``graph`` is restored afterwards, also on an error.
    ``original``: the maps on the unchanged model, where already computed (else
    ``explain_maps(graph)`` first).
    """

    layers = list(layers) if layers is not None else randomisable_layers(graph)
    fresh = compile_spec(graph.spec, seed=seed, dtype=graph.dtype, device=graph.device)
    saved = {node: dict(graph.tensors(node)) for node in layers}
    try:
        if original is None:
            original = explain_maps(graph)
        for node in layers:
            graph.tensors(node).update(fresh.tensors(node))
            graph.cache.clear()
            maps = explain_maps(graph)
            yield node, {name: spearman(original[name], maps[name]) for name in original}
    finally:
        for node, tensors in saved.items():
            graph.tensors(node).update(tensors)
        graph.cache.clear()


# --------------------------------------------------------------------------- helpers


def summarise(values: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean and 95 % interval half-width (1.96 standard errors) of per-clip values,
    NaN values left out."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    array = array[np.isfinite(array)]
    count = len(array)
    std = float(array.std(ddof=1)) if count > 1 else math.nan
    return {
        "mean": float(array.mean()) if count else math.nan,
        "ci95": 1.96 * std / math.sqrt(count) if count > 1 else math.nan,
        "clips": count,
    }


def _check_clips(clips: torch.Tensor) -> None:
    if not isinstance(clips, torch.Tensor) or clips.dim() != 5:
        shape = list(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
        raise ShapeError(f"clips must be a batch (B, C, T, H, W), got {shape}")


def _check_maps(clips: torch.Tensor, maps: torch.Tensor) -> None:
    expected = (clips.shape[0], *clips.shape[2:])
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != expected:
        shape = list(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ShapeError(f"maps must be shaped (B, T, H, W) = {list(expected)}, got {shape}")


def _bar(items: list, progress: bool, what: str):
    if not progress:
        return items

    return tqdm(items, desc=what, unit="batch", file=sys.stderr, leave=False)
