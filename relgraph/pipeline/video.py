"""The explain pipeline: a video file in, the discriminative maps and their files out.

:func:`explain_video` is what ``relgraph explain`` and ``relgraph demo`` run: read the video,
select its clip(s), preprocess, explain each clip with the discriminative method of Hiley et
al. (2019), and write ``figure.png``, ``animation.gif``, ``frames.png``, ``relevance.npz`` and
``summary.json`` atomically. Its steps are public so that other drivers (data-set runs) reuse
them clip by clip:

``load_model`` (graph, weights, labels, preprocessing, rules: once) →
``select_clips`` (a video's clips, decoding only the frames they need) →
``explain_clips`` (a preprocessed batch of clips → one :class:`ClipResult` per clip) →
``write_clip`` (a clip's files, or one file set for several clips of a video; figures
optional).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relgraph.engine.canonize import canonical
from relgraph.engine.graph import Graph, load_architecture
from relgraph.engine.memory import check_memory
from relgraph.engine.reverse import activations_needed
from relgraph.errors import ArgumentError, RelgraphError, TargetError, VideoError
from relgraph.io.labels import Labels
from relgraph.io.outputs import OutputSet, ensure_out_dir, write_json, write_npz
from relgraph.io.preprocess import Preprocess, get_preprocess
from relgraph.io.video import (
    ClipSelection,
    VideoInfo,
    iter_clips,
    read_video,
    select_clip,
    video_info,
)
from relgraph.methods.discriminative import (
    DEFAULT_BATCH_SIZE,
    check_discriminative_options,
    discriminative_with_rules,
)
from relgraph.models.pretrained import is_pretrained_folder, load_pretrained
from relgraph.rules import as_composite

__all__ = [
    "FIGURE_FILES",
    "FIGURE_STYLES",
    "LOST_NOTE_FRACTION",
    "OUTPUT_FILES",
    "ClipResult",
    "Model",
    "VideoExplanation",
    "VideoOptions",
    "check_explain_video_args",
    "explain_clips",
    "explain_video",
    "load_model",
    "lost_note",
    "parse_columns",
    "parse_target",
    "select_clips",
    "write_clip",
]

#: The files an explained clip gets, figures first.
OUTPUT_FILES: tuple[str, ...] = (
    "figure.png",
    "animation.gif",
    "frames.png",
    "relevance.npz",
    "summary.json",
)
#: The files that ``figures=False`` leaves out.
FIGURE_FILES: tuple[str, ...] = OUTPUT_FILES[:3]
#: The figures each ``figures=`` style of :func:`write_clip` draws: ``paper`` (``True``) the
#: matplotlib figures; ``quick`` the pixels-only grid and animation of data-set runs
#: (:mod:`relgraph.io.quickfig`, far faster); ``all`` the quick ones and the paper's stills.
FIGURE_STYLES: dict[str, tuple[str, ...]] = {
    "paper": FIGURE_FILES,
    "quick": ("grid.png", "animation.gif"),
    "all": ("grid.png", "animation.gif", "figure.png", "frames.png"),
}
#: A clip whose reverse passes lost more than this share of the seed relevance gets a note.
LOST_NOTE_FRACTION = 0.01

Log = Callable[[str], None]


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """Everything an explanation needs besides the video, loaded and checked once.

    Attributes
    ----------
    graph
        The compiled model, weights loaded, on its device.
    preprocess
        The input preset, at the model's input size.
    node_rules
        The rule of every node (``Composite.resolve``), resolved once for all clips.
    rules_name, output_relevance
        The rule preset's name and its output relevance (``onehot`` unless the preset says
        otherwise).
    labels
        Class names, or None.
    weights, weights_report, architecture
        Where the weights and the architecture came from, for the summary.
    """

    graph: Graph
    preprocess: Preprocess
    node_rules: dict
    rules_name: str
    output_relevance: str
    labels: Labels | None = None
    weights: str = ""
    weights_report: str = ""
    architecture: str = ""
    #: batch norms folded before the rules run (``relgraph.engine.canonize``); ``node_rules`` are
    #: those of ``explained_graph``
    canonize: bool = True

    @property
    def explained_graph(self) -> Graph:
        """The graph the rules run on: ``graph`` canonized unless ``canonize`` is false."""
        return canonical(self.graph, self.canonize)

    @property
    def frames_per_clip(self) -> int:
        return self.graph.input_shape[1]

    def class_name(self, index: int) -> str | None:
        return None if self.labels is None else self.labels.name(int(index))

    def describe_class(self, index: int) -> str:
        name = self.class_name(index)
        return f"{name} (class {index})" if name else f"class {index}"

    def describe(self) -> str:
        """One line: the graph, the weights report, the rules and the preprocessing."""
        return (
            f"model: {self.graph!r}; {self.weights_report}; rules {self.rules_name}, "
            f"preprocessing {self.preprocess.name}"
        )


def load_model(
    graph: Graph | str | os.PathLike,
    *,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    labels: Labels | Sequence[str] | str | os.PathLike | None = None,
    preprocess: str | None = None,
    rules: Any = None,
    device: str | torch.device | None = None,
    params: Mapping[str, Any] | None = None,
    canonize: bool | None = None,
    precision: str | None = None,
) -> Model:
    """Compile the architecture (or take ``graph``), load weights and labels, check that they
    fit, pick the input preset and resolve the rules once.

    Parameters
    ----------
    graph
        A compiled :class:`~relgraph.Graph` (used as it is; ``weights`` and ``device`` change
        it in place), a shipped architecture name or YAML path, compiled with ``params``, or
        a Hugging Face model folder (``config.json`` and weights: :func:`relgraph.load_pretrained`,
        which also gives the class names and the input preset).
    weights
        A weight file or state dict (see :meth:`Graph.load_weights`); None keeps the graph's.
    labels
        A label file (one class name per output), a list of names, or ``Labels``; default:
        the graph's own (``graph.labels``, e.g. a Hugging Face folder's ``id2label``).
    preprocess
        Input preset name. Default: the architecture's ``preprocess:``. There is no fallback:
        an architecture that names none needs one here.
    rules
        A rule preset name, a preset YAML path, a ``Composite`` or ``{node: rule}``
        overrides; default: the architecture's preset.
    device
        Where to compute (``"cpu"``, ``"cuda"``); None leaves the graph where it is.
    params
        Architecture parameters (``num_classes=10``), only with a name or path.
    canonize
        Fold batch norms into the layer before them before the rules run (see
        :func:`relgraph.explain`); default: the architecture's ``canonize:``.
    precision
        ``"fp32"``, ``"bf16"`` (heavy ops in bfloat16, shares and sums in float32; see the
        docs/guides/precision-and-memory.md) or ``"fp64"``; None leaves the graph's format.

    Raises
    ------
    RelgraphError
        The architecture does not take square video clips, names no preprocessing and none is
        given, the weights or labels do not fit, the device is missing, or the rules are bad.
    """
    check_explain_video_args(device=device, precision=precision)
    architecture = graph.name if isinstance(graph, Graph) else str(graph)
    folder = None
    if isinstance(graph, Graph):
        if params:
            raise RelgraphError(
                "params only apply when the architecture is given by name or path, not to a "
                "compiled graph"
            )
    elif is_pretrained_folder(graph):
        if params:
            raise RelgraphError(
                "params only apply to an architecture name or YAML path; a Hugging Face folder's "
                "sizes come from its config.json",
                file=graph,
            )
        folder = str(graph)
        graph = load_pretrained(folder)
    else:
        graph = load_architecture(graph, **dict(params or {}))
    if len(graph.input_shape) != 4 or graph.input_shape[2] != graph.input_shape[3]:
        raise RelgraphError(
            f"architecture '{graph.name}' takes input {list(graph.input_shape)}; the video "
            "commands need square video clips (C, T, S, S)"
        )
    report = "" if folder is None else f"weights and labels from the folder {folder}"
    if weights is not None:
        report = str(graph.load_weights(weights))
    label_names = _labels(labels)
    if label_names is None:
        label_names = graph.labels
    if label_names is not None:
        label_names.check_size(graph.num_classes)
    preprocess_name = preprocess or graph.default_preprocess
    if not preprocess_name:
        raise RelgraphError(
            f"architecture '{graph.name}' names no input preprocessing (no 'preprocess:' in "
            "its file) and none was given: choose one with --preprocess NAME (command line) or "
            "preprocess='NAME' (Python), e.g. c3d-ucf101 or hara",
            file=graph.file,
        )
    preset = get_preprocess(preprocess_name, size=graph.input_shape[-1])
    if device is not None:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RelgraphError(f"device {device}: this torch has no CUDA device available")
        graph.to(device=device)
    canonize = graph.canonize if canonize is None else bool(canonize)
    if precision is not None:
        graph.to(dtype=precision_dtype(precision))
    composite = as_composite(rules, graph)
    node_rules = composite.resolve(canonical(graph, canonize), preprocess=preprocess_name)
    return Model(
        graph=graph,
        preprocess=preset,
        node_rules=node_rules,
        rules_name=composite.name,
        output_relevance=composite.output_relevance or "onehot",
        labels=label_names,
        weights=_weights_name(weights) or (folder or ""),
        weights_report=report,
        architecture=architecture,
        canonize=canonize,
    )


#: ``precision`` names (``--precision``) and the format each runs the graph in
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a ``precision`` name (``fp32``, ``bf16``, ``fp64``)."""
    if precision not in PRECISIONS:
        raise ArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def parse_target(target: str | int, model: Model) -> str | int:
    """``"auto"``, a model index, or a class name of the label file, checked now (before any
    computation); returns ``"auto"`` or the index."""
    num_classes = model.graph.num_classes
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        text = str(int(target))
    elif isinstance(target, str):
        text = target.strip()
    else:
        raise TargetError(f"target must be 'auto', an index or a class name, not {target!r}")
    if text == "auto":
        return "auto"
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < num_classes:
            raise TargetError(
                f"--target {index} is out of range: the model has {num_classes} classes "
                f"(0..{num_classes - 1})"
            )
        return index
    if model.labels is None:
        raise TargetError(
            f"--target '{text}' is a class name, but no label file was given (--labels FILE)"
        )
    return model.labels.index(text)


def parse_columns(columns: str | Sequence[int] | None, frames: int) -> tuple[int, ...] | None:
    """1-based frame numbers (``"1,6,10,16"`` or ``[1, 6, 10, 16]``, as the paper numbers
    frames) → 0-based indices, checked against the clip."""
    if columns is None:
        return None
    if isinstance(columns, str):
        try:
            numbers = [int(part) for part in columns.split(",") if part.strip()]
        except ValueError:
            raise RelgraphError(
                f"--columns takes comma-separated frame numbers such as 1,6,10,16, got {columns!r}"
            ) from None
    else:
        numbers = [int(n) for n in columns]
    if not numbers:
        raise RelgraphError("--columns is empty: name at least one frame, e.g. 1,6,10,16")
    outside = [n for n in numbers if not 1 <= n <= frames]
    if outside:
        raise RelgraphError(
            f"--columns {outside} outside the clip: frames are numbered 1..{frames}"
        )
    return tuple(n - 1 for n in numbers)


# --------------------------------------------------------------------------- one clip


@dataclass
class ClipResult:
    """The discriminative explanation of one clip, on the CPU as NumPy arrays.

    Attributes
    ----------
    spatiotemporal, spatial, temporal
        ``(T, H, W)`` float32: the normalised maps (see :class:`DiscriminativeResult`).
    relevance
        ``(C, T, H, W)``: the clip's raw relevance.
    frozen_relevance
        ``(T, C, T, H, W)``: the raw relevance of every frozen clip; None where
        :func:`explain_clips` was asked not to keep it.
    prediction, probability, target
        The model's class on the clip, its softmax probability, and the class explained.
    output
        ``(classes,)``: the model's output (logits) on the clip, or None.
    frozen_predictions, frozen_probabilities
        ``(T,)``: the model's class on each frozen clip and its probability.
    lost_fraction
        Share of the seed relevance the clip's reverse pass did not hand on to the input
        (stabilisers, zeroed denominators); None when the engine does not report it.
    frozen_lost_fraction
        ``(T,)``: the same for each frozen clip, or None.
    options
        The discriminative options used (rules, output_relevance, reduce, normalize, ...).
    explain_seconds
        Wall time of the batch this clip was explained in, divided by the batch size.
    """

    spatiotemporal: np.ndarray
    spatial: np.ndarray
    temporal: np.ndarray
    relevance: np.ndarray = field(repr=False)
    frozen_relevance: np.ndarray | None = field(repr=False)
    prediction: int
    probability: float
    target: int
    frozen_predictions: np.ndarray
    frozen_probabilities: np.ndarray
    output: np.ndarray | None = field(default=None, repr=False)
    lost_fraction: float | None = None
    frozen_lost_fraction: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)
    explain_seconds: float = 0.0

    @property
    def worst_lost_fraction(self) -> float | None:
        """The larger of the clip's lost share and its worst frozen clip's, or None."""
        shares = []
        if self.lost_fraction is not None:
            shares.append(float(self.lost_fraction))
        if self.frozen_lost_fraction is not None and self.frozen_lost_fraction.size:
            shares.append(float(np.max(self.frozen_lost_fraction)))
        return max(shares) if shares else None


def explain_clips(
    model: Model,
    clips: torch.Tensor,
    *,
    target: str | int | Sequence[str | int] = "auto",
    reduce: str = "first",
    normalize: str = "maxabs",
    batch_size: int | None = None,
    progress: bool | None = False,
    memory_check: bool = True,
    method: str = "frozen",
    static: str = "mean",
    sigma: float = 1.0,
    frozen_relevance: bool = True,
) -> list[ClipResult]:
    """Explain a batch of preprocessed clips (from one video or several) with the
    discriminative method of Hiley et al. (2019), and split the result per clip.

    Parameters
    ----------
    model
        From :func:`load_model`.
    clips
        ``(B, C, T, H, W)``, preprocessed with ``model.preprocess``; moved to the graph's
        device and dtype here.
    target
        ``"auto"``, an index or a class name, or one of those per clip.
    reduce, normalize, batch_size, progress, memory_check, method, static, sigma
        As in :func:`relgraph.discriminative`.
    frozen_relevance
        Keep every frozen clip's raw relevance (``T`` times the clip's size) in the results;
        False leaves ``ClipResult.frozen_relevance`` None and copies none of it to the CPU.
    """
    graph = model.explained_graph
    clips = clips.to(device=graph.device, dtype=graph.dtype)
    clock = time.perf_counter()
    result = discriminative_with_rules(
        graph,
        clips,
        model.node_rules,
        target,
        model.output_relevance,
        reduce=reduce,
        normalize=normalize,
        batch_size=batch_size,
        labels=model.labels,
        progress=progress,
        memory_check=memory_check,
        method=method,
        static=static,
        sigma=sigma,
        options={"rules": model.rules_name, "preprocess": model.preprocess.name},
    )
    seconds = (time.perf_counter() - clock) / len(clips)
    lost, frozen_lost = result.lost_fraction, result.frozen_lost_fraction
    return [
        ClipResult(
            spatiotemporal=_numpy(result.spatiotemporal[b], float32=True),
            spatial=_numpy(result.spatial[b], float32=True),
            temporal=_numpy(result.temporal[b], float32=True),
            relevance=_numpy(result.relevance[b]),
            frozen_relevance=_numpy(result.frozen_relevance[b]) if frozen_relevance else None,
            prediction=int(result.prediction[b]),
            probability=float(result.probability[b]),
            target=int(result.target[b]),
            frozen_predictions=_numpy(result.frozen_predictions[b]),
            frozen_probabilities=_numpy(result.frozen_probabilities[b]),
            output=_numpy(result.output[b]),
            lost_fraction=float(lost[b]),
            frozen_lost_fraction=_numpy(frozen_lost[b]),
            options=dict(result.options),
            explain_seconds=seconds,
        )
        for b in range(len(clips))
    ]


def clip_summary(
    model: Model,
    result: ClipResult,
    frame_indices: Sequence[int],
    *,
    video: str | os.PathLike | None = None,
    looped: bool = False,
    padding: str | None = None,
) -> dict[str, Any]:
    """The JSON-ready summary of one clip: prediction, target, frozen predictions, the lost
    relevance, the model. The caller adds ``options``, ``timings`` and ``files``."""
    frozen = zip(result.frozen_predictions.tolist(), result.frozen_probabilities.tolist())
    return {
        "video": None if video is None else str(video),
        "clip": {
            "frame_indices": [int(i) for i in frame_indices],
            "looped": bool(looped),
            "padding": padding,
        },
        "prediction": _class_entry(model, result.prediction, result.probability),
        "target": _class_entry(model, result.target),
        "frozen_predictions": [
            {
                "frame": t + 1,
                "video_frame": int(frame_indices[t]),
                **_class_entry(model, index, probability),
            }
            for t, (index, probability) in enumerate(frozen)
        ],
        "lost_relevance": {
            "clip": result.lost_fraction,
            "frozen": (
                None
                if result.frozen_lost_fraction is None
                else [float(share) for share in result.frozen_lost_fraction]
            ),
        },
        "model": model_summary(model),
    }


def write_clip(
    model: Model,
    result: ClipResult | Sequence[ClipResult],
    folder: str | os.PathLike,
    frames: np.ndarray,
    frame_indices: Sequence[int] | Sequence[Sequence[int]],
    *,
    figures: bool | str = True,
    figure_clips: int | None = None,
    columns: Sequence[int] | None = None,
    npz_extra: Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> list[Path]:
    """Write a clip's files into ``folder``, each atomically: the figures, ``relevance.npz``
    and, when ``summary`` is given, ``summary.json`` (with a ``files`` entry added).

    Given several results (the clips of one video, as a data-set store keeps them), one
    ``relevance.npz`` holds them all, every array stacked along a first clip axis and
    floating-point arrays in float32; the first clip's figures go into ``folder``, clip
    ``k``'s into ``folder/clip-NNN``.

    Parameters
    ----------
    result
        One clip's result (:func:`explain_clips`), or those of several clips of a video.
    frames
        ``(T, S, S, 3)`` uint8 RGB: the clip as the model saw it
        (``model.preprocess.display_frames``); ``(K, T, S, S, 3)`` for ``K`` results.
    frame_indices
        Index in the video of each frame of the clip (one list per clip for ``K`` results).
    figures
        A style of :data:`FIGURE_STYLES` (``"paper"``, ``"quick"``, ``"all"``); True is
        ``"paper"``, False draws none.
    figure_clips
        How many of the clips get figures (the first ones); default: all.
    columns
        0-based frames shown in ``figure.png``; default: the paper's 1, 6, 10, 16 scaled to
        the clip length.
    npz_extra
        More arrays for ``relevance.npz``.
    summary
        What ``summary.json`` holds (e.g. :func:`clip_summary` plus options and timings).
    timings
        When given, gets ``figures_s`` and ``npz_s``: the seconds spent on each.

    Returns
    -------
    list[Path]
        The files written: figures first, then ``relevance.npz`` (and ``summary.json``).

    Raises
    ------
    ArgumentError
        For an unknown ``figures`` style.
    """
    style = figure_style(figures)
    stacked = not isinstance(result, ClipResult)
    results = list(result) if stacked else [result]
    folder = ensure_out_dir(folder)
    written: list[Path] = []
    clock = time.perf_counter()
    if style is not None:
        count = len(results) if figure_clips is None else min(figure_clips, len(results))
        for k in range(count):
            target = folder if k == 0 else ensure_out_dir(folder / f"clip-{k:03d}")
            shown = frames[k] if stacked else frames
            written += _draw_style(model, results[k], target, shown, style, columns)
    seconds = time.perf_counter() - clock
    arrays = _clip_arrays(results[0]) if not stacked else _stacked_arrays(results)
    arrays["frames"] = frames
    arrays["frame_indices"] = np.asarray(frame_indices, dtype=np.int64)
    written.append(write_npz(folder / "relevance.npz", **arrays, **dict(npz_extra or {})))
    if timings is not None:
        timings["figures_s"] = seconds
        timings["npz_s"] = time.perf_counter() - clock - seconds
    if summary is not None:
        names = [path.name for path in written] + ["summary.json"]
        written.append(write_json(folder / "summary.json", {**summary, "files": names}))
    return written


def figure_style(figures: bool | str) -> str | None:
    """The :data:`FIGURE_STYLES` name of a ``figures=`` value (None: no figures)."""
    if isinstance(figures, (bool, np.bool_)):
        return "paper" if figures else None
    if figures not in FIGURE_STYLES:
        raise ArgumentError(
            f"figures must be True, False or one of {', '.join(FIGURE_STYLES)}, got {figures!r}"
        )
    return figures


def _clip_arrays(result: ClipResult) -> dict[str, Any]:
    """One clip's arrays of ``relevance.npz``, as explained (dtypes kept)."""
    arrays: dict[str, Any] = {
        "spatiotemporal": result.spatiotemporal,
        "spatial": result.spatial,
        "temporal": result.temporal,
        "relevance": result.relevance,
    }
    if result.output is not None:
        arrays["output"] = result.output
    arrays.update(
        prediction=np.int64(result.prediction),
        probability=np.float64(result.probability),
        target=np.int64(result.target),
        frozen_predictions=result.frozen_predictions,
        frozen_probabilities=result.frozen_probabilities,
    )
    if result.frozen_relevance is not None:
        arrays["frozen_relevance"] = result.frozen_relevance
    return arrays


def _stacked_arrays(results: Sequence[ClipResult]) -> dict[str, np.ndarray]:
    """Several clips' arrays stacked along a first axis, floating point in float32."""
    per_clip = [_clip_arrays(result) for result in results]
    stacked = {}
    for name in per_clip[0]:
        array = np.stack([np.asarray(arrays[name]) for arrays in per_clip])
        stacked[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
    return stacked


def _draw_style(
    model: Model,
    result: ClipResult,
    folder: Path,
    frames: np.ndarray,
    style: str,
    columns: Sequence[int] | None,
) -> list[Path]:
    """Draw one clip's figures of a :data:`FIGURE_STYLES` style into ``folder``."""
    maps = (result.spatiotemporal, result.spatial, result.temporal)
    if style == "paper":
        return _draw_figures(model, result, folder, frames, maps, columns)
    # pixels only: no matplotlib figure (imported here: only runs that draw pay for it)
    from relgraph.io import quickfig

    paths = [
        quickfig.save_grid(folder / "grid.png", frames, *maps),
        quickfig.save_animation(folder / "animation.gif", frames, *maps),
    ]
    if style == "all":
        stills = _draw_figures(model, result, folder, frames, maps, columns, animation=False)
        paths += stills
    return paths


def lost_note(result: ClipResult, label: str = "clip") -> str | None:
    """A one-line note when the reverse passes lost more than :data:`LOST_NOTE_FRACTION` of
    the seed relevance (the clip's, or its worst frozen clip's); else None."""
    worst = result.worst_lost_fraction
    if worst is None or worst <= LOST_NOTE_FRACTION:
        return None
    parts = []
    if result.lost_fraction is not None:
        parts.append(f"{100 * result.lost_fraction:.1f} % of the clip's seed")
    if result.frozen_lost_fraction is not None and result.frozen_lost_fraction.size:
        frame = int(np.argmax(result.frozen_lost_fraction))
        share = float(result.frozen_lost_fraction[frame])
        parts.append(f"{100 * share:.1f} % of frozen frame {frame + 1}'s")
    return (
        f"note: {label}: the rules lost relevance on the way to the input ("
        + "; ".join(parts)
        + "): stabilisers or zeroed denominators absorbed it, so the maps do not sum to the "
        "output"
    )


# --------------------------------------------------------------------------- a video


@dataclass
class VideoExplanation:
    """What :func:`explain_video` returns.

    Attributes
    ----------
    video
        The video file.
    model
        The model that explained it (reuse it for the next video).
    clips
        One :class:`ClipResult` per explained clip, in video order.
    selections
        Where each clip's frames come from (indices, loop padding).
    frames
        ``(T, S, S, 3)`` uint8 per clip: the frames as the model saw them.
    summary
        The top summary (what ``summary.json`` holds).
    out
        The output folder, or None when nothing was written.
    files
        Every file written.
    """

    video: str
    model: Model = field(repr=False)
    clips: list[ClipResult] = field(repr=False)
    selections: list[ClipSelection] = field(repr=False)
    frames: list[np.ndarray] = field(repr=False)
    summary: dict[str, Any] = field(repr=False)
    out: Path | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def spatiotemporal(self) -> np.ndarray:
        """``(N, T, H, W)``: the spatio-temporal map of every clip."""
        return np.stack([clip.spatiotemporal for clip in self.clips])

    @property
    def spatial(self) -> np.ndarray:
        """``(N, T, H, W)``: the spatial map of every clip."""
        return np.stack([clip.spatial for clip in self.clips])

    @property
    def temporal(self) -> np.ndarray:
        """``(N, T, H, W)``: the temporal map of every clip."""
        return np.stack([clip.temporal for clip in self.clips])

    @property
    def predictions(self) -> list[int]:
        """The model's class on every clip."""
        return [clip.prediction for clip in self.clips]


@dataclass(frozen=True)
class VideoOptions:
    """How :func:`explain_video` explains a video: which clips, the method, what it writes.

    Attributes
    ----------
    target
        ``"auto"`` (the prediction), a 0-based index, or a class name of the model's labels.
    start, stride, all_clips
        Which frames: the clip from frame ``start`` (0-based) taking every ``stride``-th
        frame, or every consecutive clip (``all_clips``). A video shorter than the clip is
        loop-padded.
    method, reduce, normalize, batch_size, static, sigma
        As in :func:`relgraph.discriminative`.
    columns
        1-based frame numbers shown in ``figure.png`` (``"1,6,10,16"`` or a list, numbered as
        the figure numbers them); default: the paper's, scaled to the clip length.
    figures
        Draw the three figures; False writes only ``relevance.npz`` and ``summary.json``.
    memory_check
        Refuse, before the output folder is created, a run whose estimated peak memory
        exceeds what the device has free (``relgraph.engine.memory``); False skips it.
    """

    target: str | int = "auto"
    start: int = 0
    stride: int = 1
    all_clips: bool = False
    method: str = "frozen"
    reduce: str = "first"
    normalize: str = "maxabs"
    batch_size: int | None = None
    static: str = "mean"
    sigma: float = 1.0
    columns: str | Sequence[int] | None = None
    figures: bool = True
    memory_check: bool = True

    def check(self) -> None:
        """Refuse a bad option with an :class:`~relgraph.ArgumentError` naming it."""
        check_explain_video_args(
            target=self.target,
            start=self.start,
            stride=self.stride,
            all_clips=self.all_clips,
            reduce=self.reduce,
            normalize=self.normalize,
            batch_size=self.batch_size,
            columns=self.columns,
            figures=self.figures,
            method=self.method,
        )


def select_clips(
    video: str | os.PathLike,
    frames_per_clip: int,
    options: VideoOptions,
    *,
    count: int | None = None,
    min_frames: int | None = None,
) -> tuple[VideoInfo, list[ClipSelection]]:
    """The select step of :func:`explain_video`: the video's properties and the clips the
    options select, decoding only the frames they need (every frame for ``all_clips``).

    Parameters
    ----------
    video
        A video file.
    frames_per_clip
        The clip length (``Model.frames_per_clip``).
    options
        ``start``, ``stride`` and ``all_clips`` say which frames (:class:`VideoOptions`).
    count
        With ``all_clips``: at most this many clips, spread evenly over the video (the first
        and the last included).
    min_frames
        Refuse a video of fewer frames (it would be loop-padded more than a clip can bear).

    Raises
    ------
    VideoError
        The video cannot be read, or is shorter than ``min_frames``.
    """
    info = video_info(video)
    start, stride = options.start, options.stride
    if options.all_clips:
        frames = read_video(video)
    else:
        frames = read_video(video, max_frames=start + stride * (frames_per_clip - 1) + 1)
    if min_frames is not None and len(frames) < min_frames:
        raise VideoError(
            f"too short: {len(frames)} frame(s), fewer than {min_frames} (--min-frames); a "
            f"{frames_per_clip}-frame clip would repeat every frame more than twice"
        )
    if not options.all_clips:
        return info, [select_clip(frames, start=start, stride=stride, length=frames_per_clip)]
    selections = list(iter_clips(frames, stride=stride, length=frames_per_clip))
    if count is not None and len(selections) > count:
        picks = np.linspace(0, len(selections) - 1, count).round()
        selections = [selections[int(i)] for i in picks]
    return info, selections


def explain_video(
    video: str | os.PathLike,
    model: Graph | Model | str | os.PathLike,
    out: str | os.PathLike | None = None,
    options: VideoOptions | None = None,
    *,
    log: Log | None = None,
    progress: bool | None = None,
    npz_extra: Callable[[ClipSelection], Mapping[str, Any]] | None = None,
    summary_extra: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
) -> VideoExplanation:
    """Explain a video file with the discriminative method (Hiley et al., 2019): what
    ``relgraph explain`` does.

    Three steps: select the clips (:func:`select_clips`), explain each clip and its frozen
    clips (:func:`explain_clips`), and, with ``out``, write ``figure.png``,
    ``animation.gif``, ``frames.png``, ``relevance.npz`` and ``summary.json``
    (:func:`write_clip`; with ``all_clips``: one ``clip-NNN`` folder per clip and a top
    ``summary.json``). Every option is checked before anything is loaded or created, and a
    refused run leaves no output folder. The files are written as one set
    (:class:`relgraph.io.outputs.OutputSet`): into a hidden staging folder, moved into ``out``
    once all are written, so that an interrupted or failed run (a full disk included) leaves
    ``out`` as it was. A rerun replaces the earlier run's outputs and removes those it does not
    write again (stale ``clip-NNN`` folders); other files in ``out`` stay.

    Parameters
    ----------
    video
        A video file (mp4, avi, mkv, ...).
    model
        A :class:`Model` from :func:`load_model` (a graph with its weights, labels, rules,
        preprocessing, device and precision), or a compiled :class:`~relgraph.Graph`, a
        shipped architecture name or a YAML path, which is loaded with
        :func:`load_model`'s defaults.
    out
        Output folder; None writes nothing (the result holds the maps).
    options
        Which clips, the method and what to write (:class:`VideoOptions`); default: its
        defaults.
    log
        Called with each progress line (the CLI passes ``print``); None says nothing.
    progress
        A tqdm bar over the frozen clips; None: only on a terminal.
    npz_extra
        ``npz_extra(selection)`` returns more arrays for a clip's ``relevance.npz``.
    summary_extra
        More entries for every ``summary.json``.
    timings
        Seconds already spent (e.g. ``load_model_s``), added to the summary's timings.

    Returns
    -------
    VideoExplanation

    Raises
    ------
    RelgraphError
        For a video that cannot be read, a bad clip selection, target, column, option,
        architecture, weight or label file, a missing preprocessing, or an unwritable ``out``.
    """
    started = time.perf_counter()
    options = VideoOptions() if options is None else options
    if not isinstance(options, VideoOptions):
        raise ArgumentError(f"options must be a VideoOptions, got {type(options).__name__}")
    check_explain_video_args(out=out)
    options.check()
    timings = dict(timings or {})
    say = log or _silent
    if not isinstance(model, Model):
        clock = time.perf_counter()
        model = load_model(model)
        timings["load_model_s"] = time.perf_counter() - clock
        say(model.describe())
    target, start, stride = options.target, options.start, options.stride
    all_clips, method, reduce = options.all_clips, options.method, options.reduce
    normalize, batch_size = options.normalize, options.batch_size
    static, sigma, figures = options.static, options.sigma, options.figures
    length = model.frames_per_clip
    shown = parse_columns(options.columns, length)
    target = parse_target(target, model)
    if options.memory_check:  # each clip is explained alone, its frozen clips in batches
        explained = model.explained_graph
        check_memory(
            explained,
            max(1, DEFAULT_BATCH_SIZE if batch_size is None else batch_size),
            activations_needed(explained, model.node_rules),
        )
    summary_options = {
        "target": target,
        "start": None if all_clips else start,
        "stride": stride,
        "all_clips": all_clips,
        "method": method,
        "reduce": reduce,
        "normalize": normalize,
        "batch_size": batch_size,
        "rules": model.rules_name,
        "output_relevance": model.output_relevance,
        "preprocess": model.preprocess.name,
        "canonize": model.canonize,
    }

    clock = time.perf_counter()
    info, selections = select_clips(video, length, options)
    timings["read_video_s"] = time.perf_counter() - clock
    say(
        f"{video}: {info.width}x{info.height}, {info.fps:g} fps, {info.frames} frames; "
        f"{len(selections)} clip(s) of {length} frames"
    )
    # after every check: the files are staged, and moved into `out` once all are written
    outputs = (
        contextlib.nullcontext(None)
        if out is None
        else OutputSet(out, OWNED_OUTPUTS, last=("summary.json",))
    )
    files: list[Path] = []
    with outputs as staged:
        folder = None if staged is None else staged.staging
        clip_results: list[ClipResult] = []
        clip_frames: list[np.ndarray] = []
        summaries: list[dict[str, Any]] = []
        for number, selection in enumerate(selections):
            if selection.message:
                say(f"note: {selection.message}")
            display = model.preprocess.display_frames(selection.frames)
            clip = model.preprocess(selection.frames).unsqueeze(0)
            (result,) = explain_clips(
                model,
                clip,
                target=target,
                reduce=reduce,
                normalize=normalize,
                batch_size=batch_size,
                progress=progress,
                memory_check=False,  # checked above, before the output folder
                method=method,
                static=static,
                sigma=sigma,
            )
            summary = {
                **clip_summary(
                    model,
                    result,
                    selection.frame_indices,
                    video=video,
                    looped=selection.looped,
                    padding=selection.message,
                ),
                "options": {**summary_options, **result.options},
                "timings": {"explain_s": result.explain_seconds},
                **dict(summary_extra or {}),
            }
            clip_folder = None
            if folder is not None:
                clip_folder = folder / f"clip-{number:03d}" if all_clips else folder
                clock = time.perf_counter()
                written = write_clip(
                    model,
                    result,
                    clip_folder,
                    display,
                    selection.frame_indices,
                    figures=figures,
                    columns=shown,
                    npz_extra=npz_extra(selection) if npz_extra else None,
                )
                summary["timings"]["write_s"] = time.perf_counter() - clock
                summary["files"] = [path.name for path in written] + ["summary.json"]
                # With one clip its summary is the top summary: written at the end, with the
                # run's timings added.
                if all_clips:
                    write_json(clip_folder / "summary.json", summary)
            clip_results.append(result)
            clip_frames.append(display)
            summaries.append(summary)
            label = f"clip {number}" if all_clips else "clip"
            final = None if clip_folder is None else staged.final(clip_folder)
            say(
                f"{label} (frames {_ranges(selection.frame_indices)}): predicted "
                f"{summary['prediction']['label']} with p = {result.probability:.3f}"
                f"; explained {summary['target']['label']} in {result.explain_seconds:.1f} s"
                + (f" → {final}" if final is not None else "")
            )
            note = lost_note(result, label)
            if note:
                say(note)

        timings["total_s"] = time.perf_counter() - started + timings.get("load_model_s", 0.0)
        if all_clips:
            top = {
                "video": str(video),
                "clips": [
                    {
                        "folder": f"clip-{n:03d}",
                        "frame_indices": s["clip"]["frame_indices"],
                        "looped": s["clip"]["looped"],
                        "padding": s["clip"]["padding"],
                        "prediction": s["prediction"],
                        "target": s["target"],
                        "lost_relevance": s["lost_relevance"],
                    }
                    for n, s in enumerate(summaries)
                ],
                "model": model_summary(model),
                "options": summary_options,
                "timings": timings,
                **dict(summary_extra or {}),
            }
        else:
            top = summaries[0]
            top["timings"] = {**timings, **top["timings"]}
        if staged is not None:
            write_json(folder / "summary.json", top)
            written_files = [p for p in folder.rglob("*") if p.is_file()]
            # in the order they were made: figures, npz, summaries (summary.json last)
            written_files.sort(key=lambda p: (p.name == "summary.json" and p.parent == folder,))
            staged.commit()
            files = [staged.final(p) for p in written_files]
    return VideoExplanation(
        video=str(video),
        model=model,
        clips=clip_results,
        selections=selections,
        frames=clip_frames,
        summary=top,
        out=None if out is None else Path(out),
        files=files,
    )


#: the names in an output folder that are ``explain_video``'s own outputs (replaced or
#: removed by the next run into the folder; anything else there is left alone)
OWNED_OUTPUTS = r"figure\.png|animation\.gif|frames\.png|relevance\.npz|summary\.json|clip-\d{3,}"


def check_explain_video_args(
    *,
    out: Any = None,
    device: Any = None,
    precision: Any = None,
    target: Any = "auto",
    start: Any = 0,
    stride: Any = 1,
    all_clips: Any = False,
    reduce: Any = "first",
    normalize: Any = "maxabs",
    batch_size: Any = None,
    columns: Any = None,
    figures: Any = True,
    method: Any = "frozen",
) -> None:
    """Check the arguments of :func:`explain_video` that need no model or video, before
    anything is loaded or created: types, ranges and choices.

    Raises
    ------
    ArgumentError
        Naming the argument, what it takes and what it got.
    """
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise ArgumentError(f"out must be a folder path or None, got {type(out).__name__}")
    if out is not None and not os.fspath(out):
        raise ArgumentError("out is an empty path: name a folder")
    check_device(device)
    if precision is not None and precision not in PRECISIONS:
        raise ArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(target, bool) or not isinstance(target, (str, int, np.integer)):
        raise ArgumentError(
            f"target must be 'auto', an index or a class name, got {type(target).__name__}"
        )
    check_integer("start", start, minimum=0)
    check_integer("stride", stride, minimum=1)
    for name, flag in (("all_clips", all_clips), ("figures", figures)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ArgumentError(f"{name} must be True or False, got {flag!r}")
    check_discriminative_options(reduce, normalize, batch_size, method)
    if columns is not None and not isinstance(columns, str):
        if not isinstance(columns, Sequence) or not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in columns
        ):
            raise ArgumentError(
                "columns must be a text such as '1,6,10,16' or a list of frame numbers, "
                f"got {columns!r}"
            )


def check_integer(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int, or an :class:`ArgumentError` naming ``name`` (bools, floats and
    text are refused: ``stride='2'`` is a mistake, not a 2)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ArgumentError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_device(device: Any) -> None:
    """Refuse a ``device`` that is neither None, the CPU, nor a CUDA device."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


# --------------------------------------------------------------------------- helpers


def model_summary(model: Model) -> dict[str, Any]:
    """The model's entry of ``summary.json``."""
    graph = model.graph
    return {
        "architecture": graph.name,
        "architecture_source": model.architecture,
        "parameters": graph.num_parameters(),
        "input_shape": list(graph.input_shape),
        "classes": graph.num_classes,
        "weights": model.weights,
        "weights_report": model.weights_report,
        "labels": None if model.labels is None else model.labels.file,
        "device": str(graph.device),
        "dtype": str(graph.dtype).replace("torch.", ""),
    }


def _draw_figures(
    model: Model,
    result: ClipResult,
    folder: Path,
    frames: np.ndarray,
    maps: tuple[np.ndarray, np.ndarray, np.ndarray],
    columns: Sequence[int] | None,
    animation: bool = True,
) -> list[Path]:
    """``figure.png``, ``animation.gif`` (with ``animation``) and ``frames.png``."""
    # matplotlib is heavy to import: only runs that draw figures pay for it.
    from relgraph.io import plots

    frozen = list(zip(result.frozen_predictions.tolist(), result.frozen_probabilities.tolist()))
    title = f"predicted {model.describe_class(result.prediction)}, p = {result.probability:.3f}"
    if result.target != result.prediction:
        title += f"; explaining {model.describe_class(result.target)}"
    shown = tuple(columns) if columns is not None else plots.paper_columns(len(frames))
    # methods other than frozen explain no frozen clip: no frozen prediction to show
    column_labels = (
        [
            f"frozen: {model.class_name(frozen[t][0]) or frozen[t][0]} ({frozen[t][1]:.2f})"
            for t in shown
        ]
        if frozen
        else None
    )
    figure, moving, stills = (folder / name for name in FIGURE_FILES)
    plots.figure_paper(
        frames, *maps, columns=shown, title=title, column_labels=column_labels, path=figure
    )
    if animation:
        plots.animation(frames, *maps, moving, title=title)
    plots.figure_frames(*maps, path=stills, title=title)
    return [figure, moving, stills] if animation else [figure, stills]


def _class_entry(model: Model, index: int, probability: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": int(index), "name": model.class_name(index)}
    entry["label"] = entry["name"] or f"class {index}"
    if probability is not None:
        entry["probability"] = float(probability)
    return entry


def _labels(labels: Labels | Sequence[str] | str | os.PathLike | None) -> Labels | None:
    if labels is None or isinstance(labels, Labels):
        return labels
    if isinstance(labels, (str, os.PathLike)):
        return Labels.from_file(labels)
    return Labels.from_names(labels)


def _weights_name(weights: Any) -> str:
    if weights is None:
        return ""
    if isinstance(weights, (str, os.PathLike)):
        return str(weights)
    return "state dict"


def _numpy(tensor: torch.Tensor, *, float32: bool = False) -> np.ndarray:
    """A tensor as a NumPy array on the CPU (dtypes NumPy lacks, e.g. bfloat16, widened)."""
    tensor = tensor.detach().cpu()
    if float32 or tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _ranges(indices: Sequence[int]) -> str:
    """``0..15`` for consecutive indices, else the list."""
    steps = {b - a for a, b in zip(indices, indices[1:])}
    if len(steps) == 1 and steps.pop() > 0:
        step = indices[1] - indices[0]
        return f"{indices[0]}..{indices[-1]}" + (f" step {step}" if step != 1 else "")
    return ", ".join(map(str, indices))


def _silent(text: str) -> None:
    pass
