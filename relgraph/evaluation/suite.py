"""The evaluation suite: every map of a model on a set of clips, every metric, one report.

``relgraph evaluate`` and ``benchmarks/evaluate.py`` run :func:`run_evaluation`; the metrics
themselves are in :mod:`relgraph.evaluation.metrics`, the baseline maps in
:mod:`relgraph.methods.baselines`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from relgraph.datasets.synthetic import APPEARANCE_CUE, make_set
from relgraph.engine.canonize import canonical
from relgraph.engine.graph import Graph
from relgraph.engine.hostmemory import reuse_freed
from relgraph.engine.memory import available_bytes, format_bytes
from relgraph.engine.reverse import explain, explain_with_rules
from relgraph.errors import (
    ArgumentError,
    DatasetError,
    LabelError,
    RelgraphError,
    ResourceError,
    did_you_mean,
)
from relgraph.evaluation import metrics
from relgraph.io.labels import Labels
from relgraph.io.preprocess import get_preprocess
from relgraph.io.video import read_video, select_clip
from relgraph.methods import baselines
from relgraph.methods.discriminative import (
    DEFAULT_BATCH_SIZE,
    METHODS,
    NORMALIZATIONS,
    REDUCTIONS,
    discriminative_with_rules,
    normalize_maps,
    reduce_frozen,
)
from relgraph.rules import as_composite, preset_names

__all__ = [
    "DEFAULT_MAPS",
    "EvaluationData",
    "full_metric_maps",
    "compute_maps",
    "frozen_batch_size",
    "markdown",
    "check_evaluation_args",
    "run_evaluation",
    "synthetic_data",
    "video_data",
]

#: The maps every metric is computed for; the option variants and other presets get the
#: cheaper ones (region perturbation with ``freeze``, localisation).
DEFAULT_MAPS: tuple[str, ...] = (
    "spatiotemporal",
    "spatial",
    "temporal",
    "random",
    "frame difference",
    "gradient",
    "gradient × input",
)
MASK_KINDS: tuple[str, ...] = ("moving", "static", "irrelevant")
#: the baseline map of the motion methods (``methods`` other than ``frozen``): integrated
#: gradients from the static clip, every metric computed for it too
INTEGRATED_GRADIENTS = "integrated gradients"
#: Riemann steps of the integrated gradients map
IG_STEPS = 16
#: per-clip metrics compared in pairs (``report["paired"]``)
PAIRED_METRICS: tuple[str, ...] = (
    "aopc freeze",
    "aopc blur",
    "aopc mean",
    "rank moving",
    "mass moving",
)


def method_maps(method: str) -> tuple[str, ...]:
    """The names of a motion method's maps in a report: ``spatial``/``temporal`` for
    ``frozen``, ``spatial method=NAME``/``temporal method=NAME`` for the others (the
    spatio-temporal map is the same ordinary explanation under every method)."""
    if method == "frozen":
        return ("spatial", "temporal")
    return (f"spatial method={method}", f"temporal method={method}")


def full_metric_maps(methods: Sequence[str] = ("frozen",)) -> tuple[str, ...]:
    """The maps that get every metric: :data:`DEFAULT_MAPS`, each method's maps and, with a
    method other than ``frozen``, integrated gradients from the static clip."""
    names = list(DEFAULT_MAPS)
    for method in methods:
        names += [n for n in method_maps(method) if n not in names]
    if any(m != "frozen" for m in methods):
        names.append(INTEGRATED_GRADIENTS)
    return tuple(names)


#: activation and relevance memory of the frozen clips explained at once for the maps
FROZEN_BUDGET = 512 * 2**20


def frozen_batch_size(graph: Graph) -> int:
    """Frozen clips explained at once by the maps and the randomisation: as many as keep
    every node's activation and relevance within :data:`FROZEN_BUDGET`, from
    ``DEFAULT_BATCH_SIZE`` (4) to 64. Small models are overhead bound and run faster in
    big batches; a full-size model keeps 4."""
    per_clip = (
        2 * graph.dtype.itemsize * sum(math.prod(graph.shape_of(node)) for node in graph.order)
    )
    return max(DEFAULT_BATCH_SIZE, min(64, FROZEN_BUDGET // per_clip))


@dataclass
class EvaluationData:
    """Clips ``(B, C, T, H, W)`` as the model takes them, labels ``(B,)``, and ground-truth
    masks ``{kind: (B, T, H, W) bool}`` (empty for clips without masks)."""

    clips: torch.Tensor
    labels: torch.Tensor
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


def synthetic_data(
    graph: Graph,
    n: int,
    seed: int,
    *,
    irrelevant_motion: bool = True,
    cue: float | None = None,
    preprocess: str | None = None,
) -> EvaluationData:
    """``n`` synthetic clips at the graph's input size, preprocessed, with their masks."""

    if len(graph.input_shape) != 4:
        raise ArgumentError(f"'{graph.name}' does not take video clips (C, T, H, W)")
    _, frames, size, width = graph.input_shape
    if size != width:
        raise ArgumentError(f"synthetic clips are square; '{graph.name}' takes {size}×{width}")
    _check_data_memory(graph, n)
    data = make_set(
        n,
        seed,
        frames=frames,
        size=size,
        cue=APPEARANCE_CUE if cue is None else cue,
        irrelevant_motion=irrelevant_motion,
    )
    transform = get_preprocess(preprocess or graph.default_preprocess, size=size)
    clips = torch.stack([transform(video) for video in data.frames]).to(graph.dtype)
    masks = {
        kind: torch.from_numpy(getattr(data, kind)) for kind in MASK_KINDS if kind != "irrelevant"
    }
    if irrelevant_motion:
        masks["irrelevant"] = torch.from_numpy(data.irrelevant)
    return EvaluationData(clips.to(graph.device), torch.from_numpy(data.labels), masks)


def _check_data_memory(graph: Graph, clips: int) -> None:
    """Refuse a data set whose clips (drawn as uint8 frames, then preprocessed in the graph's
    format) cannot fit in the memory available, before any is made."""
    values = math.prod(graph.input_shape)
    needed = clips * values * (1 + torch.empty((), dtype=graph.dtype).element_size())
    available = available_bytes("cpu")
    if available is not None and needed > available:
        raise ResourceError(
            f"{clips:,} clips of {list(graph.input_shape)} need {format_bytes(needed)}, more "
            f"than the {format_bytes(available)} available; evaluate fewer clips"
        )


def video_data(
    graph: Graph,
    listing: Path,
    *,
    labels: str | os.PathLike | None = None,
    preprocess: str | None = None,
) -> EvaluationData:
    """The first clip of each video of a list file, preprocessed; no masks.

    Each line of ``listing`` is ``PATH CLASS`` (UCF-101's trainlist format): the video's path
    relative to the list file and its class, a name of ``labels`` or a 1-based index.
    """

    names = Labels.from_file(labels) if labels is not None else graph.labels
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the video list: {exc}", file=str(listing)) from None
    _, frames, size, _ = graph.input_shape
    transform = get_preprocess(preprocess or graph.default_preprocess, size=size)
    clips, classes = [], []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetError("expected 'PATH CLASS'", file=str(listing), line=number)
        path, label = parts
        if label.isdigit():
            index = int(label) - 1
        elif names is not None:
            index = names.index(label)
        else:
            raise LabelError(
                f"class '{label}' is a name but no --labels file was given",
                file=str(listing),
                line=number,
            )
        if not 0 <= index < graph.num_classes:
            raise LabelError(
                f"class {label} is outside the model's {graph.num_classes} classes",
                file=str(listing),
                line=number,
            )
        # only the frames of the first clip are decoded (a short video is loop-padded)
        video = read_video(listing.parent / path, max_frames=frames)
        clips.append(transform(select_clip(video, length=frames).frames))
        classes.append(index)
    if not clips:
        raise DatasetError("the video list names no video", file=str(listing))
    data = torch.stack(clips).to(device=graph.device, dtype=graph.dtype)
    return EvaluationData(data, torch.tensor(classes))


# --------------------------------------------------------------------------- maps


def compute_maps(
    graph: Graph,
    clips: torch.Tensor,
    targets: torch.Tensor,
    *,
    presets: Sequence[str] = (),
    variants: bool = True,
    clips_per_call: int = 16,
    progress: bool = False,
    memory_check: bool = True,
    methods: Sequence[str] = ("frozen",),
    costs: dict[str, float] | None = None,
    refused: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Every map of the clips for their targets, ``{name: (B, T, H, W)}``.

    A method other than ``frozen`` that the model refuses (a ``RelgraphError``: the reference
    methods have no difference rule for a gate's product) is left out; ``refused``, if given,
    gets its message.

    Each of ``methods`` other than ``frozen`` adds its spatial and temporal maps
    (``temporal method=decomposed``; the model's preset, its default options), and then
    integrated gradients from the static clip is a baseline too. ``costs``, if given, gets
    the seconds each method's maps took (``frozen`` included) and those of one plain
    explanation of the clips (``explanation``).

    The model's preset gives ``spatiotemporal``, ``spatial`` and ``temporal`` (the authors'
    options: ``reduce first``, ``normalize maxabs``) and, with ``variants``, the spatial and
    temporal maps of every other ``reduce``/``normalize`` pair (``temporal reduce=same
    normalize=sum``); each of ``presets`` gives its three maps (``temporal rules=NAME``);
    then the baselines ``random`` and ``frame difference``.
    """

    maps: dict[str, torch.Tensor] = {}
    graph = canonical(graph)  # batch norms folded, as explain and discriminative do
    batch_size = frozen_batch_size(graph)
    for preset in (None, *presets):
        started = time.perf_counter()
        composite = as_composite(preset, graph)
        node_rules = composite.resolve(graph)
        seed = composite.output_relevance or "onehot"
        relevance, frozen = [], []
        for begin in _tqdm(range(0, len(clips), clips_per_call), progress, preset or "maps"):
            part = slice(begin, begin + clips_per_call)
            result = discriminative_with_rules(
                graph,
                clips[part],
                node_rules,
                targets[part],
                seed,
                progress=False,
                batch_size=batch_size,
                memory_check=memory_check,
            )
            relevance.append(result.relevance.sum(dim=1))
            frozen.append(result.frozen_relevance.sum(dim=2))
            del result
        clip_maps, frozen_maps = torch.cat(relevance), torch.cat(frozen)
        suffix = "" if preset is None else f" rules={preset}"
        pairs = [("first", "maxabs")]
        if variants and preset is None:
            pairs += [(r, n) for r in REDUCTIONS for n in NORMALIZATIONS if (r, n) != pairs[0]]
        for reduce, normalize in pairs:
            spatiotemporal = normalize_maps(clip_maps, normalize, dims=(1, 2, 3))
            spatial = reduce_frozen(normalize_maps(frozen_maps, normalize, dims=(2, 3, 4)), reduce)
            options = (
                "" if (reduce, normalize) == pairs[0] else f" reduce={reduce} normalize={normalize}"
            )
            if not options:
                maps[f"spatiotemporal{suffix}"] = spatiotemporal
            maps[f"spatial{options}{suffix}"] = spatial
            maps[f"temporal{options}{suffix}"] = spatiotemporal - spatial
        if costs is not None and preset is None:
            costs["frozen"] = time.perf_counter() - started
    _motion_maps(graph, clips, targets, methods, clips_per_call, maps, costs, progress, refused)
    maps["random"] = baselines.random_map(clips)
    maps["frame difference"] = baselines.frame_difference(clips)
    # one gradient for both maps (gradient_times_input would run it again)
    gradient = explain(graph, clips, targets, rules="gradient")
    maps["gradient"] = gradient.sum(dim=1)
    maps["gradient × input"] = (gradient * clips).sum(dim=1)
    del gradient
    if any(m != "frozen" for m in methods):
        clock = time.perf_counter()
        maps[INTEGRATED_GRADIENTS] = baselines.integrated_gradients(
            graph, clips, targets, steps=IG_STEPS
        )
        if costs is not None:
            costs[INTEGRATED_GRADIENTS] = time.perf_counter() - clock
    return {name: value.cpu() for name, value in maps.items()}


def _motion_maps(
    graph: Graph,
    clips: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str],
    clips_per_call: int,
    maps: dict[str, torch.Tensor],
    costs: dict[str, float] | None,
    progress: bool,
    refused: dict[str, str] | None = None,
) -> None:
    """The maps of the methods other than ``frozen`` into ``maps``; with ``costs``, their
    seconds and those of one plain explanation of the clips. A method the model refuses is
    left out (its message into ``refused``)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise RelgraphError(f"unknown method '{unknown[0]}' (known: {', '.join(METHODS)})")
    composite = as_composite(None, graph)
    node_rules = composite.resolve(graph)
    seed = composite.output_relevance or "onehot"
    if costs is not None:
        clock = time.perf_counter()
        for begin in range(0, len(clips), clips_per_call):
            part = slice(begin, begin + clips_per_call)
            explain_with_rules(graph, clips[part], node_rules, targets[part], seed)
        costs["explanation"] = time.perf_counter() - clock
    for method in methods:
        if method == "frozen":
            continue
        clock = time.perf_counter()
        spatial, temporal = [], []
        try:
            for begin in _tqdm(range(0, len(clips), clips_per_call), progress, method):
                part = slice(begin, begin + clips_per_call)
                result = discriminative_with_rules(
                    graph, clips[part], node_rules, targets[part], seed, method=method
                )
                spatial.append(result.spatial)
                temporal.append(result.temporal)
                del result
        except RelgraphError as exc:
            if refused is None:
                raise
            refused[method] = str(exc)
            continue
        if costs is not None:
            costs[method] = time.perf_counter() - clock
        names = method_maps(method)
        maps[names[0]], maps[names[1]] = torch.cat(spatial), torch.cat(temporal)


# --------------------------------------------------------------------------- the suite


def check_evaluation_args(
    *,
    cube: Sequence[int] = (4, 8, 8),
    steps: int = 16,
    batch_size: int = 64,
    sanity_clips: int = 0,
    replacements: Sequence[str] = metrics.REPLACEMENTS,
    presets: Sequence[str] = (),
) -> None:
    """Check :func:`run_evaluation`'s options before any work (``relgraph evaluate`` calls it
    before it loads anything or creates its output folder).

    Raises
    ------
    ArgumentError
        Naming the option, what it takes and what it got.
    """

    def integer(name: str, value, minimum: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ArgumentError(f"{name} must be an integer, got {value!r}")
        if value < minimum:
            raise ArgumentError(f"{name} must be at least {minimum}, got {value}")

    if isinstance(cube, (str, bytes)) or not isinstance(cube, Sequence) or len(cube) != 3:
        raise ArgumentError(f"cube takes three sizes (frames, height, width), got {cube!r}")
    for axis, size in zip(("frames", "height", "width"), cube):
        integer(f"cube {axis}", size, 1)
    integer("steps", steps, 1)
    integer("batch_size", batch_size, 1)
    integer("sanity_clips", sanity_clips, 0)
    unknown = [how for how in replacements if how not in metrics.REPLACEMENTS]
    if unknown or not replacements:
        raise ArgumentError(
            f"replacements must be some of {', '.join(metrics.REPLACEMENTS)}, got "
            f"{list(replacements)!r}"
        )
    names = set(preset_names())
    for name in presets:
        if name not in names and Path(name).suffix.lower() not in (".yaml", ".yml"):
            raise ArgumentError(f"unknown rule preset '{name}'{did_you_mean(name, sorted(names))}")


@reuse_freed()  # a context manager, applied anew to each call
def run_evaluation(
    graph: Graph,
    data: EvaluationData,
    *,
    presets: Sequence[str] = (),
    variants: bool = True,
    cube: Sequence[int] = (4, 8, 8),
    steps: int = 16,
    replacements: Sequence[str] = metrics.REPLACEMENTS,
    batch_size: int = 64,
    sanity_clips: int = 0,
    frames: bool = True,
    progress: bool = False,
    memory_check: bool = True,
    methods: Sequence[str] = ("frozen",),
    computed: dict | None = None,
    full_maps: Sequence[str] | None = None,
    regions: bool = True,
) -> dict:
    """Compute every map and every metric; a JSON-ready report (see :func:`markdown`).

    ``computed``: an empty dict receives the maps, their costs and the refused methods
    (``{"maps", "costs", "refused"}``); one filled so by an earlier run on the same model,
    clips and options is used instead of computing the maps again (the metrics can then be
    measured in parts, each part reading the same maps). ``full_maps``: the maps that get
    every metric (default :func:`full_metric_maps` of the methods); the others get region
    perturbation with ``freeze`` where ``replacements`` has it, and localisation.
    ``regions=False`` leaves region perturbation out (a part that measures the rest).

    ``methods`` are the motion methods whose maps are measured (``frozen``, the paper's,
    always; see :func:`compute_maps`); the report's ``costs`` give each method's seconds
    per clip relative to one plain explanation.

    Every map gets region perturbation with ``freeze`` (MoRF and LeRF) and localisation on
    each mask; :data:`DEFAULT_MAPS` also get the other replacements, frame deletion and
    insertion (unless ``frames`` is False), and (on the first ``sanity_clips`` clips)
    cascading randomisation. The explained class is each clip's prediction.
    Freed memory is kept for reuse meanwhile (``relgraph.engine.hostmemory.reuse_freed``): the
    perturbed batches' forward passes then run faster (docs/benchmarks/performance.md).
    """
    check_evaluation_args(
        cube=cube,
        steps=steps,
        batch_size=batch_size,
        sanity_clips=sanity_clips,
        replacements=replacements,
        presets=presets,
    )
    started = time.perf_counter()
    model = metrics.model_function(graph)
    with torch.inference_mode():
        logits = torch.cat(
            [model(data.clips[i : i + batch_size]) for i in range(0, len(data.clips), batch_size)]
        )
    targets = logits.argmax(dim=1)
    accuracy = float((targets.cpu() == data.labels).double().mean())
    methods = tuple(dict.fromkeys(("frozen", *methods)))
    if computed:
        maps, refused = computed["maps"], dict(computed["refused"])
        seconds = dict(computed["costs"])
    else:
        seconds, refused = {}, {}
        maps = compute_maps(
            graph,
            data.clips,
            targets,
            presets=presets,
            variants=variants,
            progress=progress,
            memory_check=memory_check,
            methods=methods,
            costs=seconds,
            refused=refused,
        )
        if computed is not None:
            computed.update(maps=maps, costs=dict(seconds), refused=dict(refused))
    map_seconds = time.perf_counter() - started
    methods = tuple(m for m in methods if m not in refused)
    full = full_metric_maps(methods) if full_maps is None else tuple(full_maps)
    mean = data.clips.mean(dim=(0, 2, 3, 4))
    memo = metrics.ForwardMemo()  # each distinct perturbed clip is run once
    report: dict = {"maps": {}, "curves": {}}
    for name, values in _tqdm(list(maps.items()), progress, "metrics"):
        values = values.to(data.clips.device)
        entry: dict = {}
        chosen = replacements if name in full else tuple(r for r in replacements if r == "freeze")
        if not regions:
            chosen = ()
        for how in chosen:
            curves = {
                order: metrics.region_perturbation(
                    model,
                    data.clips,
                    values,
                    targets,
                    cube=cube,
                    order=order,
                    replace=how,
                    steps=steps,
                    batch_size=batch_size,
                    mean=mean,
                    memo=memo,
                )
                for order in ("morf", "lerf")
            }
            morf, lerf = curves["morf"].probability, curves["lerf"].probability
            entry[f"aopc {how}"] = metrics.summarise(metrics.aopc(morf))
            entry[f"abpc {how}"] = metrics.summarise(metrics.abpc(lerf, morf))
            entry[f"aopc logit {how}"] = metrics.summarise(metrics.aopc(curves["morf"].logit))
            report["curves"].setdefault(name, {})[how] = {
                "fraction": curves["morf"].fraction.tolist(),
                "morf": morf.mean(dim=0).tolist(),
                "lerf": lerf.mean(dim=0).tolist(),
            }
            entry[f"_aopc {how} per clip"] = metrics.aopc(morf).tolist()
        if frames and name in full:
            for mode in ("deletion", "insertion"):
                curve = metrics.frame_perturbation(
                    model,
                    data.clips,
                    values,
                    targets,
                    mode=mode,
                    batch_size=batch_size,
                    memo=memo,
                )
                entry[f"frame {mode}"] = metrics.summarise(curve.probability.mean(dim=1))
        for kind, mask in data.masks.items():
            for metric, per_clip in metrics.localisation(values.cpu(), mask).items():
                entry[f"{metric} {kind}"] = metrics.summarise(per_clip)
                if kind == "moving":
                    entry[f"_{metric} moving per clip"] = per_clip.tolist()
        report["maps"][name] = entry
    if sanity_clips:
        # the default preset's maps on the unchanged model are the first row's reference
        device = data.clips.device
        sanity_maps = _sanity_maps(methods)
        original = {name: maps[name][:sanity_clips].to(device) for name in sanity_maps}
        report["sanity"] = _sanity(
            graph, data.clips[:sanity_clips], targets[:sanity_clips], progress, original, methods
        )
    report["paired"] = _paired(report["maps"], methods)
    explanation = seconds.pop("explanation", None)
    report["costs"] = {
        name: {
            "seconds per clip": value / len(data.clips),
            **({"relative to one explanation": value / explanation} if explanation else {}),
        }
        for name, value in seconds.items()
    }
    for entry in report["maps"].values():
        for key in [k for k in entry if k.startswith("_")]:
            del entry[key]
    report.update(
        accuracy=accuracy,
        clips=len(data.clips),
        seconds=time.perf_counter() - started,
        map_seconds=map_seconds,
        perturbed_clips={"run": memo.runs, "reused": memo.hits},
        refused_methods=refused,
        config={
            "arch": graph.name,
            "cube": list(cube),
            "steps": steps,
            "replacements": list(replacements),
            "presets": list(presets),
            "variants": variants,
            "batch_size": batch_size,
            "sanity_clips": sanity_clips,
            "frames": frames,
            "target": "predicted",
            "methods": list(methods),
        },
    )
    return report


def _paired(entries: dict, methods: Sequence[str] = ("frozen",)) -> dict:
    """Each method's temporal map against the spatio-temporal map and frame difference, and
    the maps against the random one, per clip: mean ± 95 % interval of the difference."""
    out = {}

    def diff(a: str, b: str, key: str) -> dict | None:
        hidden = f"_{key} per clip"
        if a in entries and b in entries and hidden in entries[a] and hidden in entries[b]:
            delta = np.asarray(entries[a][hidden]) - np.asarray(entries[b][hidden])
            stats = metrics.summarise(delta)
            stats["share_higher"] = float(np.mean(delta[np.isfinite(delta)] > 0))
            return stats
        return None

    pairs = [("spatiotemporal", "random")]
    for method in methods:
        temporal = method_maps(method)[1]
        pairs += [
            (temporal, "spatiotemporal"),
            (temporal, "frame difference"),
            (temporal, "random"),
        ]
    if INTEGRATED_GRADIENTS in entries:
        pairs += [
            (INTEGRATED_GRADIENTS, "spatiotemporal"),
            (INTEGRATED_GRADIENTS, "frame difference"),
        ]
    for key in PAIRED_METRICS:
        for a, b in pairs:
            found = diff(a, b, key)
            if found:
                out[f"{key}: {a} − {b}"] = found
    return out


#: the maps whose rank correlation cascading randomisation reports
SANITY_MAPS: tuple[str, ...] = ("spatiotemporal", "spatial", "temporal", "frame difference")


def _sanity_maps(methods: Sequence[str]) -> tuple[str, ...]:
    """:data:`SANITY_MAPS` and every other method's spatial and temporal maps."""
    extra = [n for m in methods if m != "frozen" for n in method_maps(m)]
    return (*SANITY_MAPS, *extra)


def _sanity(
    graph: Graph,
    clips: torch.Tensor,
    targets: torch.Tensor,
    progress: bool = False,
    original: dict[str, torch.Tensor] | None = None,
    methods: Sequence[str] = ("frozen",),
) -> dict:

    composite = as_composite(None, graph)
    node_rules = composite.resolve(canonical(graph))
    seed = composite.output_relevance or "onehot"
    batch_size = frozen_batch_size(graph)

    def explain_maps(g: Graph) -> dict[str, torch.Tensor]:
        parts = []
        view = canonical(g)  # follows the randomised weights
        for begin in range(0, len(clips), 16):
            part = slice(begin, begin + 16)
            parts.append(
                discriminative_with_rules(
                    view, clips[part], node_rules, targets[part], seed, batch_size=batch_size
                )
            )
        found = {
            name: torch.cat([getattr(p, name) for p in parts])
            for name in SANITY_MAPS
            if name != "frame difference"
        }
        for method in methods:
            if method == "frozen":
                continue
            results = [
                discriminative_with_rules(
                    view, clips[b : b + 16], node_rules, targets[b : b + 16], seed, method=method
                )
                for b in range(0, len(clips), 16)
            ]
            names = method_maps(method)
            found[names[0]] = torch.cat([r.spatial for r in results])
            found[names[1]] = torch.cat([r.temporal for r in results])
        return found | {"frame difference": baselines.frame_difference(clips)}

    rows = {}
    layers = metrics.randomisable_layers(graph)
    # the maps on the original model (unless given), then after each layer is redrawn
    first = 1 if original is None else 0
    bar = tqdm(
        total=len(layers) + first,
        desc="randomisation",
        file=sys.stderr,
        leave=False,
        disable=not progress,
    )
    with bar:
        for layer, rho in metrics.cascading_randomisation(
            graph, explain_maps, layers=layers, original=original
        ):
            rows[layer] = {name: metrics.summarise(values) for name, values in rho.items()}
            bar.update(1 + first if len(rows) == 1 else 1)
    return rows


# --------------------------------------------------------------------------- report


TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("aopc freeze", "AOPC freeze ↑"),
    ("abpc freeze", "ABPC freeze ↑"),
    ("aopc blur", "AOPC blur ↑"),
    ("aopc mean", "AOPC mean ↑"),
    ("frame deletion", "frame deletion ↓"),
    ("frame insertion", "frame insertion ↑"),
    ("rank moving", "rank acc. moving ↑"),
    ("mass moving", "mass acc. moving ↑"),
    ("pointing moving", "pointing moving ↑"),
    ("rank static", "rank acc. static ↓"),
    ("rank irrelevant", "rank acc. irrelevant ↓"),
)


def markdown(report: dict, maps: Sequence[str] | None = None) -> str:
    """The report as Markdown tables: one row per map, mean ± 95 % interval."""
    names = list(maps) if maps is not None else list(report["maps"])
    columns = [
        (k, label) for k, label in TABLE_COLUMNS if any(k in report["maps"][n] for n in names)
    ]
    lines = [
        f"{report['config']['arch']}, {report['clips']} clips (accuracy "
        f"{report['accuracy']:.1%}), mean ± 95 % interval; cube "
        f"{'×'.join(map(str, report['config']['cube']))}, {report['config']['steps']} steps, "
        f"probability of the predicted class; {report['seconds']:.0f} s",
        "",
        "| map | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in names:
        entry = report["maps"][name]
        cells = [_cell(entry.get(key)) for key, _ in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.get("paired"):
        lines += [
            "",
            "Paired per clip (mean ± 95 % interval; share of clips where the first is higher)",
            "",
        ]
        for label, stats in report["paired"].items():
            lines.append(f"- {label}: {_cell(stats, signed=True)} ({stats['share_higher']:.0%})")
    if report.get("refused_methods"):
        lines += ["", "Methods the model refuses (no maps):", ""]
        lines += [f"- {name}: {message}" for name, message in report["refused_methods"].items()]
    if report.get("costs"):
        lines += ["", "Cost per clip (seconds; relative to one plain explanation of the clip)", ""]
        for name, cost in report["costs"].items():
            relative = cost.get("relative to one explanation")
            ratio = f" ({relative:.2f}×)" if relative is not None else ""
            lines.append(f"- {name}: {cost['seconds per clip']:.4f} s{ratio}")
    if report.get("sanity"):
        layers = list(report["sanity"])
        kinds = list(report["sanity"][layers[0]])
        lines += [
            "",
            "Cascading randomisation: Spearman ρ with the original map, layers randomised "
            "from the top down to",
            "",
            "| map | " + " | ".join(layers) + " |",
            "|---|" + "---:|" * len(layers),
        ]
        for kind in kinds:
            cells = [f"{report['sanity'][layer][kind]['mean']:.2f}" for layer in layers]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(stats: dict | None, signed: bool = False) -> str:
    if not stats or not math.isfinite(stats.get("mean", math.nan)):
        return "–"
    mean = f"{stats['mean']:+.3f}" if signed else f"{stats['mean']:.3f}"
    return f"{mean} ± {stats['ci95']:.3f}"


def _tqdm(items, progress: bool, what: str):
    if not progress:
        return items

    return tqdm(items, desc=what, file=sys.stderr, leave=False)
