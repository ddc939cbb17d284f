"""The command line: ``relgraph explain``, ``demo``, ``arch show|check``, ``rules list|show``.

Every error relgraph knows about ends the program with one line on stderr,
``relgraph: error: ...``, and exit status 2; an interrupt exits with 130. Neither prints a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import RelgraphError, TargetError
from .outputs import ensure_out_dir, write_json, write_npz

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- the model


@dataclass
class Model:
    """Everything an explanation needs besides the video, loaded and checked once."""

    graph: Any  # relgraph.Graph
    preprocess: Any  # relgraph.preprocess.Preprocess
    node_rules: dict
    rules_name: str
    seed: str
    labels: Any = None  # relgraph.labels.Labels or None
    weights: str = ""
    weights_report: str = ""
    architecture: str = ""

    @property
    def frames_per_clip(self) -> int:
        return self.graph.input_shape[1]

    def class_name(self, index: int) -> str | None:
        return None if self.labels is None else self.labels.name(int(index))

    def describe_class(self, index: int) -> str:
        name = self.class_name(index)
        return f"{name} (class {index})" if name else f"class {index}"


def load_model(
    *,
    architecture: str,
    params: dict[str, Any],
    weights: str | os.PathLike | None,
    labels: str | os.PathLike | None,
    preprocess: str | None,
    rules: str | None,
    device: str,
    graph=None,
) -> Model:
    """Compile the architecture (or take ``graph``), load weights and labels, check that
    they fit, pick the input preset and resolve the rules once."""
    from .graph import load_architecture
    from .labels import Labels
    from .preprocess import get_preprocess
    from .rules import as_composite

    if graph is None:
        graph = load_architecture(architecture, **params)
    if len(graph.input_shape) != 4 or graph.input_shape[2] != graph.input_shape[3]:
        raise RelgraphError(
            f"architecture '{graph.name}' takes input {list(graph.input_shape)}; the video "
            "commands need square video clips (C, T, S, S)"
        )
    report = ""
    if weights is not None:
        report = str(graph.load_weights(weights))
    label_names = None
    if labels is not None:
        label_names = Labels.from_file(labels)
        label_names.check_size(graph.num_classes)
    preprocess_name = preprocess or graph.default_preprocess or "c3d-ucf101"
    preset = get_preprocess(preprocess_name, size=graph.input_shape[-1])
    if device == "cuda" and not torch.cuda.is_available():
        raise RelgraphError("--device cuda: this torch has no CUDA device available")
    graph.to(device=device)
    composite = as_composite(rules, graph)
    node_rules = composite.resolve(graph, preprocess=preprocess_name)
    return Model(
        graph=graph,
        preprocess=preset,
        node_rules=node_rules,
        rules_name=composite.name,
        seed=composite.seed or "onehot",
        labels=label_names,
        weights=str(weights) if weights is not None else "",
        weights_report=report,
        architecture=str(architecture),
    )


def parse_target(text: str, model: Model) -> str | int:
    """``auto``, a model index, or a class name of the label file, checked now (before any
    computation)."""
    text = text.strip()
    num_classes = model.graph.num_classes
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


def parse_columns(text: str | None, frames: int) -> tuple[int, ...] | None:
    """1-based frame numbers ``1,6,10,16`` → 0-based indices, checked against the clip."""
    if text is None:
        return None
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RelgraphError(
            f"--columns takes comma-separated frame numbers such as 1,6,10,16, got {text!r}"
        ) from None
    if not numbers:
        raise RelgraphError("--columns is empty: name at least one frame, e.g. 1,6,10,16")
    outside = [n for n in numbers if not 1 <= n <= frames]
    if outside:
        raise RelgraphError(
            f"--columns {outside} outside the clip: frames are numbered 1..{frames}"
        )
    return tuple(n - 1 for n in numbers)


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``k=v`` pairs; values are read as YAML scalars (``10`` is an int)."""
    import yaml

    params: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RelgraphError(f"--param takes key=value, e.g. num_classes=10; got {item!r}")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            params[key.strip()] = value
    return params


# --------------------------------------------------------------------------- the pipeline


@dataclass
class Options:
    """What ``explain`` and ``demo`` share on their command lines."""

    target: str | int = "auto"
    start: int = 0
    stride: int = 1
    all_clips: bool = False
    reduce: str = "first"
    normalize: str = "maxabs"
    batch_size: int | None = None
    columns: str | None = None
    quiet: bool = False
    extra_summary: dict[str, Any] = field(default_factory=dict)


def run_pipeline(
    model: Model,
    video: str | os.PathLike,
    out: str | os.PathLike,
    options: Options,
    *,
    npz_extra=None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Read the video, explain its clip(s) with the discriminative method, write the outputs.

    ``npz_extra(selection)`` may return more arrays for a clip's ``relevance.npz``.
    Returns the top summary (also written to ``out/summary.json``).
    """
    from .video import iter_clips, read_video, select_clip, video_info

    started = time.perf_counter()
    timings = dict(timings or {})
    say = _printer(options.quiet)
    length = model.frames_per_clip
    columns = parse_columns(options.columns, length)
    if not isinstance(options.target, int):
        options.target = parse_target(str(options.target), model)

    clock = time.perf_counter()
    info = video_info(video)
    if options.all_clips:
        frames = read_video(video)
        selections = list(iter_clips(frames, stride=options.stride, length=length))
    else:
        needed = options.start + options.stride * (length - 1) + 1
        frames = read_video(video, max_frames=needed)
        selections = [
            select_clip(frames, start=options.start, stride=options.stride, length=length)
        ]
    timings["read_video_s"] = time.perf_counter() - clock
    out = ensure_out_dir(out)  # after the cheap checks: a refused run leaves no folder
    say(
        f"{video}: {info.width}x{info.height}, {info.fps:g} fps, {info.frames} frames; "
        f"{len(selections)} clip(s) of {length} frames"
    )

    clip_summaries = []
    for number, selection in enumerate(selections):
        folder = ensure_out_dir(out / f"clip-{number:03d}") if options.all_clips else out
        if selection.message:
            say(f"note: {selection.message}")
        summary = explain_clip(
            model,
            selection,
            folder,
            options,
            columns,
            extra=npz_extra(selection) if npz_extra else None,
            video=video,
        )
        clip_summaries.append(summary)
        label = f"clip {number}" if options.all_clips else "clip"
        say(
            f"{label} (frames {_ranges(selection.frame_indices)}): predicted "
            f"{summary['prediction']['label']} with p = {summary['prediction']['probability']:.3f}"
            f"; explained {summary['target']['label']} in {summary['timings']['explain_s']:.1f} s"
            f" → {folder}"
        )

    timings["total_s"] = time.perf_counter() - started + timings.get("load_model_s", 0.0)
    if options.all_clips:
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
                }
                for n, s in enumerate(clip_summaries)
            ],
            "model": _model_summary(model),
            "options": _options_summary(options, model),
            "timings": timings,
            **options.extra_summary,
        }
        write_json(out / "summary.json", top)
        return top
    # One clip: its summary is the top summary; add the run's timings to it.
    summary = clip_summaries[0]
    summary["timings"] = {**timings, **summary["timings"]}
    write_json(out / "summary.json", summary)
    return summary


def explain_clip(
    model: Model,
    selection,
    folder: Path,
    options: Options,
    columns: tuple[int, ...] | None,
    *,
    extra: dict[str, np.ndarray] | None,
    video: str | os.PathLike,
) -> dict[str, Any]:
    """Explain one clip and write figure.png, animation.gif, frames.png, relevance.npz and
    summary.json into ``folder``."""
    from .discriminative import discriminative_with_rules
    from .plots import animation, figure_frames, figure_paper

    graph = model.graph
    display = model.preprocess.display_frames(selection.frames)
    clip = model.preprocess(selection.frames).unsqueeze(0)
    clip = clip.to(device=graph.device, dtype=graph.dtype)

    clock = time.perf_counter()
    result = discriminative_with_rules(
        graph,
        clip,
        model.node_rules,
        options.target,
        model.seed,
        reduce=options.reduce,
        normalize=options.normalize,
        batch_size=options.batch_size,
        labels=model.labels,
        progress=False if options.quiet else None,
        options={"rules": model.rules_name, "preprocess": model.preprocess.name},
    )
    explain_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    maps = [
        m[0].detach().float().cpu().numpy()
        for m in (result.spatiotemporal, result.spatial, result.temporal)
    ]
    prediction = int(result.prediction[0])
    probability = float(result.probability[0])
    target = int(result.target[0])
    frozen = [
        (int(c), float(p))
        for c, p in zip(result.frozen_predictions[0].tolist(), result.frozen_probabilities[0])
    ]
    title = f"predicted {model.describe_class(prediction)}, p = {probability:.3f}"
    if target != prediction:
        title += f"; explaining {model.describe_class(target)}"
    shown = columns if columns is not None else _default_columns(len(frozen))
    column_labels = [
        f"frozen: {model.class_name(frozen[t][0]) or frozen[t][0]} ({frozen[t][1]:.2f})"
        for t in shown
    ]
    figure_paper(
        display,
        *maps,
        columns=shown,
        title=title,
        column_labels=column_labels,
        path=folder / "figure.png",
    )
    animation(display, *maps, folder / "animation.gif", title=title)
    figure_frames(*maps, path=folder / "frames.png", title=title)
    write_npz(
        folder / "relevance.npz",
        spatiotemporal=maps[0],
        spatial=maps[1],
        temporal=maps[2],
        relevance=result.relevance[0],
        frozen_relevance=result.frozen_relevance[0],
        frames=display,
        frame_indices=np.asarray(selection.frame_indices, dtype=np.int64),
        prediction=np.int64(prediction),
        probability=np.float64(probability),
        target=np.int64(target),
        frozen_predictions=result.frozen_predictions[0],
        frozen_probabilities=result.frozen_probabilities[0],
        **(extra or {}),
    )
    write_seconds = time.perf_counter() - clock

    summary = {
        "video": str(video),
        "clip": {
            "frame_indices": list(selection.frame_indices),
            "looped": bool(selection.looped),
            "padding": selection.message,
        },
        "prediction": _class_entry(model, prediction, probability),
        "target": _class_entry(model, target),
        "frozen_predictions": [
            {
                "frame": t + 1,
                "video_frame": selection.frame_indices[t],
                **_class_entry(model, index, p),
            }
            for t, (index, p) in enumerate(frozen)
        ],
        "model": _model_summary(model),
        "options": {**_options_summary(options, model), **result.options},
        "timings": {"explain_s": explain_seconds, "write_s": write_seconds},
        "files": ["figure.png", "animation.gif", "frames.png", "relevance.npz", "summary.json"],
        **options.extra_summary,
    }
    write_json(folder / "summary.json", summary)
    return summary


def _class_entry(model: Model, index: int, probability: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": int(index), "name": model.class_name(index)}
    entry["label"] = entry["name"] or f"class {index}"
    if probability is not None:
        entry["probability"] = float(probability)
    return entry


def _model_summary(model: Model) -> dict[str, Any]:
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


def _options_summary(options: Options, model: Model) -> dict[str, Any]:
    return {
        "target": options.target,
        "start": None if options.all_clips else options.start,
        "stride": options.stride,
        "all_clips": options.all_clips,
        "reduce": options.reduce,
        "normalize": options.normalize,
        "batch_size": options.batch_size,
        "rules": model.rules_name,
        "seed": model.seed,
        "preprocess": model.preprocess.name,
    }


def _default_columns(frames: int) -> tuple[int, ...]:
    from .plots import paper_columns

    return paper_columns(frames)


def _ranges(indices: Sequence[int]) -> str:
    """``0..15`` for consecutive indices, else the list."""
    steps = {b - a for a, b in zip(indices, indices[1:])}
    if len(steps) == 1 and steps.pop() > 0:
        step = indices[1] - indices[0]
        return f"{indices[0]}..{indices[-1]}" + (f" step {step}" if step != 1 else "")
    return ", ".join(map(str, indices))


def _printer(quiet: bool):
    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)

    return say


# --------------------------------------------------------------------------- commands


def command_explain(args: argparse.Namespace) -> int:
    clock = time.perf_counter()
    model = load_model(
        architecture=args.arch,
        params=parse_params(args.param),
        weights=args.weights,
        labels=args.labels,
        preprocess=args.preprocess,
        rules=args.rules,
        device=args.device,
    )
    load_seconds = time.perf_counter() - clock
    _printer(args.quiet)(
        f"model: {model.graph!r}; {model.weights_report}; rules {model.rules_name}, "
        f"preprocessing {model.preprocess.name}"
    )
    run_pipeline(
        model, args.video, args.out, _options(args), timings={"load_model_s": load_seconds}
    )
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from .demo_model import DEMO_LABELS, DEMO_PREPROCESS, DEMO_WEIGHTS, load_demo_model
    from .synthetic import CLASS_NAMES, make_clip
    from .video import write_video

    clock = time.perf_counter()
    graph = load_demo_model()
    model = load_model(
        architecture=graph.name,
        params={},
        weights=None,
        labels=DEMO_LABELS,
        preprocess=DEMO_PREPROCESS,
        rules=None,
        device="cpu",
        graph=graph,
    )
    model.weights = str(DEMO_WEIGHTS)
    model.weights_report = "shipped demo model"
    load_seconds = time.perf_counter() - clock

    out = ensure_out_dir(args.out)
    rng = np.random.default_rng(args.seed)
    label = int(rng.integers(len(CLASS_NAMES)))
    _, frames, size, _ = graph.input_shape
    synthetic = make_clip(label, rng, frames=frames, size=size)
    video = write_video(out / "demo.mp4", synthetic.frames, fps=8)
    say = _printer(args.quiet)
    say(
        f"demo: a synthetic {CLASS_NAMES[label]} clip ({frames} frames, {size}x{size}, "
        f"seed {args.seed}) written to {video}"
    )

    def masks(selection) -> dict[str, np.ndarray]:
        # Ground truth, at the model's input resolution (the video is written at that size).
        return {
            "moving_mask": synthetic.moving[selection.frame_indices],
            "static_mask": synthetic.static[selection.frame_indices],
            "true_class": np.int64(label),
        }

    options = Options(
        quiet=args.quiet,
        extra_summary={
            "demo": {"seed": args.seed, "true_class": {"index": label, "name": CLASS_NAMES[label]}}
        },
    )
    run_pipeline(
        model, video, out, options, npz_extra=masks, timings={"load_model_s": load_seconds}
    )
    return 0


def command_arch_show(args: argparse.Namespace) -> int:
    from .graph import load_architecture

    graph = load_architecture(args.architecture, init="none", **parse_params(args.param))
    print(repr(graph))
    print(graph.summary())
    return 0


def command_arch_check(args: argparse.Namespace) -> int:
    from .graph import load_architecture

    graph = load_architecture(args.file, init="none", **parse_params(args.param))
    print(f"OK: {args.file}: {graph!r}")
    return 0


def command_rules_list(args: argparse.Namespace) -> int:
    from .rules import RULES, preset, preset_names

    print("presets:")
    names = preset_names()
    width = max(map(len, names))
    for name in names:
        description = preset(name).description or ""
        print(f"  {name.ljust(width)}  {description}".rstrip())
    print()
    print("rules (name(parameter=default, ...)):")
    for name in sorted(RULES):
        cls = RULES[name]
        params = (
            ", ".join(_field_text(f) for f in dataclasses.fields(cls))
            if (dataclasses.is_dataclass(cls))
            else ""
        )
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"  {name}({params})")
        if doc:
            print(f"      {doc[0]}")
    return 0


def command_rules_show(args: argparse.Namespace) -> int:
    from .graph import load_architecture
    from .rules import preset

    graph = load_architecture(args.arch, init="none", **parse_params(args.param))
    composite = preset(args.preset)
    print(
        f"{composite.name} on {graph.name}"
        + (f": {composite.description}" if composite.description else "")
    )
    print(composite.table(graph, preprocess=args.preprocess))
    return 0


def _field_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"{f.name}={f.default!r}"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f"{f.name}={f.default_factory()!r}"  # type: ignore[misc]
    return f"{f.name} (required)"


def _options(args: argparse.Namespace) -> Options:
    return Options(
        target=args.target,
        start=args.start,
        stride=args.stride,
        all_clips=args.all_clips,
        reduce=args.reduce,
        normalize=args.normalize,
        batch_size=args.batch_size,
        columns=args.columns,
        quiet=args.quiet,
    )


# --------------------------------------------------------------------------- argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_discriminative_options(parser: argparse.ArgumentParser) -> None:
    from .discriminative import NORMALIZATIONS, REDUCTIONS

    group = parser.add_argument_group("discriminative method")
    group.add_argument(
        "--reduce",
        choices=REDUCTIONS,
        default="first",
        help="spatial map of frame t from its frozen clip's relevance: slice 0 (first, the "
        "authors' choice), slice t (same), mean or sum over time (default: first)",
    )
    group.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="maxabs",
        help="scale each explanation by its max |value| (maxabs, the paper's), its total "
        "(sum), or not at all (none) (default: maxabs)",
    )
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="frozen clips explained at once (default: relgraph's measured default)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _add_param_option(parser: argparse.ArgumentParser) -> None:
    """``--param KEY=VALUE``, for every command that loads an architecture."""
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="architecture parameter, e.g. num_classes=10 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    from .preprocess import PRESETS

    parser = argparse.ArgumentParser(
        prog="relgraph",
        description="Explain video 3D CNNs with layer-wise relevance, and separate the "
        "relevance due to motion (Hiley et al., 2019).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    explain = commands.add_parser(
        "explain",
        help="explain a video clip: spatio-temporal, spatial and temporal relevance",
        description="Explain a clip of VIDEO with the discriminative method and write "
        "figure.png, animation.gif, frames.png, relevance.npz and summary.json to --out.",
    )
    explain.add_argument("video", metavar="VIDEO", help="a video file (mp4, avi, mkv, ...)")
    explain.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help="checkpoint, state dict or safetensors file",
    )
    explain.add_argument(
        "--arch",
        default="c3d",
        metavar="NAME|FILE",
        help="shipped architecture name or YAML file (default: c3d)",
    )
    _add_param_option(explain)
    explain.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per model output (UCF-101 classInd.txt style)",
    )
    explain.add_argument(
        "--rules",
        metavar="PRESET|FILE",
        help="rule preset name or YAML file (default: the architecture's)",
    )
    explain.add_argument(
        "--target",
        default="auto",
        metavar="auto|INDEX|NAME",
        help="class to explain: auto (the prediction), a 0-based model index "
        "or a class name from --labels (default: auto)",
    )
    explain.add_argument(
        "--preprocess",
        choices=sorted(PRESETS),
        help="input preset (default: the architecture's; c3d → c3d-ucf101)",
    )
    clips = explain.add_mutually_exclusive_group()
    clips.add_argument(
        "--start",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="first frame of the clip, 0-based (default: 0)",
    )
    clips.add_argument(
        "--all-clips",
        action="store_true",
        help="explain every consecutive clip of the video, one folder each",
    )
    explain.add_argument(
        "--stride",
        type=_positive_int,
        default=1,
        metavar="N",
        help="take every N-th frame (default: 1)",
    )
    explain.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to compute (default: cpu)"
    )
    explain.add_argument(
        "--columns",
        metavar="1,6,10,16",
        help="1-based frames shown in figure.png (default: the paper's "
        "frames 1, 6, 10, 16, scaled to the clip length)",
    )
    explain.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_discriminative_options(explain)
    explain.set_defaults(handler=command_explain)

    demo = commands.add_parser(
        "demo",
        help="explain a synthetic motion clip with the shipped demo model",
        description="Draw a synthetic clip whose class is its motion, write it as "
        "DIR/demo.mp4, and run the explain pipeline on it with the shipped demo model "
        "(c3d-tiny). relevance.npz also holds the ground-truth masks of the moving objects "
        "(moving_mask) and the static distractors (static_mask).",
    )
    demo.add_argument("--out", required=True, metavar="DIR", help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the clip (default: 0)")
    demo.add_argument("--quiet", action="store_true", help="print nothing but errors")
    demo.set_defaults(handler=command_demo)

    arch = commands.add_parser(
        "arch",
        help="show or check an architecture",
        description="Show or check an architecture YAML.",
    )
    arch_commands = arch.add_subparsers(dest="arch_command", metavar="COMMAND", required=True)
    show = arch_commands.add_parser(
        "show",
        help="print the layer table of an architecture",
        description="Print node, op, inputs, shape and parameters.",
    )
    show.add_argument("architecture", metavar="NAME|FILE")
    _add_param_option(show)
    show.set_defaults(handler=command_arch_show)
    check = arch_commands.add_parser(
        "check",
        help="compile an architecture file: OK or the error",
        description="Compile FILE (shapes included); print OK or the error (exit status 2).",
    )
    check.add_argument("file", metavar="FILE")
    _add_param_option(check)
    check.set_defaults(handler=command_arch_check)

    rules = commands.add_parser(
        "rules",
        help="list rule presets and rules, or show a preset",
        description="List the rule presets and rules, or show which rule a preset gives each node.",
    )
    rules_commands = rules.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)
    listing = rules_commands.add_parser(
        "list",
        help="presets with descriptions; rules with parameters and defaults",
        description="Print the shipped presets and the registered rules with their parameters.",
    )
    listing.set_defaults(handler=command_rules_list)
    table = rules_commands.add_parser(
        "show",
        help="which rule each node gets under a preset",
        description="Print the rule of every node of --arch.",
    )
    table.add_argument("preset", metavar="PRESET|FILE")
    table.add_argument(
        "--arch", default="c3d", metavar="NAME|FILE", help="architecture (default: c3d)"
    )
    _add_param_option(table)
    table.add_argument(
        "--preprocess",
        choices=sorted(PRESETS),
        help="input preset the zβ bounds follow (default: the architecture's)",
    )
    table.set_defaults(handler=command_rules_show)
    from .evaluate_cli import add_evaluate_command

    add_evaluate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 2 on errors, 130 on interrupt)."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_request:  # --help, or argparse's own usage error
            code = exit_request.code
            return code if isinstance(code, int) else (0 if code is None else EXIT_ERROR)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.handler(args)
    except RelgraphError as error:
        print(f"relgraph: error: {_one_line(str(error))}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("relgraph: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`relgraph rules list | head`): stop quietly, and
        # point stdout at /dev/null so that Python's last flush does not fail again.
        with contextlib.suppress(Exception):
            stdout = sys.stdout.fileno()
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout)
        return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"relgraph: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())
