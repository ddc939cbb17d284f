"""``relgraph evaluate``: measure a model's maps (see :mod:`relgraph.evaluation.suite`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relgraph.cli.args import (
    add_memory_check_option,
    add_pretrained_option,
    model_source,
    non_negative_int,
    positive_int,
)
from relgraph.engine.graph import Graph, load_architecture
from relgraph.errors import ArgumentError, RelgraphError, did_you_mean
from relgraph.evaluation.suite import (
    check_evaluation_args,
    markdown,
    run_evaluation,
    synthetic_data,
    video_data,
)
from relgraph.io.outputs import atomic_write_bytes, check_out_dir, ensure_out_dir, write_json
from relgraph.methods.discriminative import METHODS
from relgraph.models.demo import DEMO_MODELS
from relgraph.models.pretrained import load_pretrained
from relgraph.rules import preset_names

__all__ = [
    "add_evaluate_command",
    "add_evaluation_options",
    "evaluation_graph",
    "evaluation_kwargs",
]

METRICS_HELP = """\
metrics (each map, mean ± 95 % interval over the clips; explained class: the prediction):
  AOPC        area over the MoRF perturbation curve, cubes replaced most relevant first
              (Samek et al. 2017, IEEE TNNLS, "Evaluating the visualization ...")
  ABPC        area between the LeRF and MoRF curves (Blücher et al. 2022, "Decoupling pixel
              flipping and occlusion strategy for consistent XAI benchmarks")
  freeze/blur/mean  replacement: the cube's mean over its frames (removes motion, keeps
              appearance) / Gaussian blur in space and time / the data set's mean
  frame deletion/insertion  mean probability while frames are deleted from the clip or
              inserted into a frozen one, most relevant frame first (Petsiuk et al. 2018, RISE)
  pointing    the map's peak lies on the mask (Zhang et al. 2018, excitation backprop)
  mass acc.   share of positive relevance on the mask (Arras et al. 2022, CLEVR-XAI)
  rank acc.   share of the K highest voxels on the mask, K = mask size (Arras et al. 2022)
  sanity      Spearman ρ of each map with the original model's, layers randomised from the
              top down (Adebayo et al. 2018, "Sanity checks for saliency maps")
maps: spatiotemporal, spatial, temporal (Hiley et al. 2019) for every reduce/normalize pair,
the other rule presets (--presets), and the baselines random, frame difference, gradient
and gradient × input (explicit adjoints, no autograd).
masks (synthetic clips): moving objects, static look-alikes, irrelevant (oscillating or
flickering) objects."""


def add_evaluate_command(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the CLI's subcommands; returns its parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="measure the maps: perturbation, localisation, sanity checks",
        description="Compute every map of a model on synthetic clips (with masks) or a "
        "folder of videos, and measure them. Writes report.json and report.md to --out.",
        epilog=METRICS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_evaluation_options(parser, presets="", sanity_clips=0)
    parser.add_argument(
        "--videos",
        metavar="LIST",
        help="instead of synthetic clips: a file of 'path class' lines (paths relative to "
        "it; class: a name of --labels or a 1-based index), first 16-frame clip of each",
    )
    parser.add_argument("--labels", metavar="FILE", help="class names (UCF-101 classInd style)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_memory_check_option(parser)
    parser.set_defaults(handler=command_evaluate)
    return parser


def add_evaluation_options(
    parser: argparse.ArgumentParser, *, presets: str, sanity_clips: int
) -> None:
    """The options shared by ``relgraph evaluate`` and ``benchmarks/evaluate.py``: the model,
    the synthetic clips, the maps and the metrics' settings (defaults ``presets`` and
    ``sanity_clips`` differ: the CLI is quick by default, the benchmark complete)."""
    parser.add_argument("--arch", metavar="NAME|FILE", help="architecture (default c3d-tiny)")
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="weights (default: the shipped demo model's, for c3d-tiny, r2plus1d-tiny and "
        "videomae-tiny)",
    )
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="arch parameter")
    add_pretrained_option(parser)
    parser.add_argument(
        "--clips", type=positive_int, default=100, help="synthetic clips (default 100)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=2019, help="synthetic data seed (2019)"
    )
    parser.add_argument(
        "--no-irrelevant-motion",
        action="store_true",
        help="synthetic clips without the oscillating/flickering objects",
    )
    parser.add_argument(
        "--presets",
        default=presets,
        help="comma-separated other rule presets to compare, 'all' or 'none' "
        f"(default {presets or 'none'})",
    )
    parser.add_argument(
        "--no-variants", action="store_true", help="only the default reduce/normalize pair"
    )
    parser.add_argument(
        "--method",
        default="frozen",
        metavar="NAMES",
        help="comma-separated motion methods whose maps are measured, or 'all' "
        f"({', '.join(METHODS)}; default frozen, the paper's, which is always measured)",
    )
    parser.add_argument(
        "--cube",
        type=positive_int,
        nargs=3,
        default=(4, 8, 8),
        metavar=("T", "H", "W"),
        help="region size in frames and pixels (default 4 8 8)",
    )
    parser.add_argument("--steps", type=positive_int, default=16, help="perturbation steps (16)")
    parser.add_argument(
        "--replacements",
        nargs="+",
        default=["freeze", "blur", "mean"],
        choices=["freeze", "blur", "mean"],
        help="fill strategies for the default maps (default: all three)",
    )
    parser.add_argument(
        "--no-frames", action="store_true", help="skip frame deletion and insertion"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="clips per forward (64)"
    )
    parser.add_argument(
        "--sanity-clips",
        type=non_negative_int,
        default=sanity_clips,
        help=f"clips for the randomisation check (0: off; default {sanity_clips})",
    )


def evaluation_graph(args: argparse.Namespace) -> Graph:
    """The model to measure: a ``--pretrained`` folder, ``--arch`` with ``--weights``, or a
    shipped demo model's."""
    arch, weights, params = model_source(args, "c3d-tiny", weights_required=False)
    if args.pretrained is not None:
        return load_pretrained(args.pretrained)
    graph = load_architecture(arch, **params)
    if weights:
        graph.load_weights(weights)
    elif arch in DEMO_MODELS and not params:
        graph.load_weights(DEMO_MODELS[arch])
    else:
        raise RelgraphError(
            f"--weights is needed for '{arch}' (shipped weights: {', '.join(DEMO_MODELS)}), or "
            "--pretrained FOLDER"
        )
    return graph


def evaluation_kwargs(args: argparse.Namespace, graph: Graph, clips: int) -> dict:
    """Keyword arguments of :func:`relgraph.evaluation.suite.run_evaluation` from the options."""
    spec = [p.strip() for p in args.presets.split(",") if p.strip()]
    if spec == ["all"]:
        spec = [p for p in preset_names() if p not in ("base", "gradient", graph.default_rules)]
    elif spec == ["none"]:
        spec = []
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if methods == ["all"]:
        methods = list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ArgumentError(
            f"--method: unknown method '{unknown[0]}'{did_you_mean(unknown[0], METHODS)} "
            f"(known: {', '.join(METHODS)}, or all)"
        )
    return {
        "methods": tuple(methods),
        "presets": spec,
        "variants": not args.no_variants,
        "cube": tuple(args.cube),
        "steps": args.steps,
        "replacements": tuple(args.replacements),
        "frames": not args.no_frames,
        "batch_size": args.batch_size,
        "sanity_clips": min(args.sanity_clips, clips),
    }


def command_evaluate(args: argparse.Namespace) -> int:

    # every option is checked, and the model and data loaded, before --out is created
    check_out_dir(args.out)
    graph = evaluation_graph(args)
    options = evaluation_kwargs(args, graph, args.clips)
    check_evaluation_args(
        **{k: options[k] for k in ("cube", "steps", "batch_size", "sanity_clips", "presets")},
        replacements=options["replacements"],
    )
    if args.videos:
        data = video_data(graph, Path(args.videos), labels=args.labels)
    else:
        data = synthetic_data(
            graph, args.clips, args.seed, irrelevant_motion=not args.no_irrelevant_motion
        )
    options["sanity_clips"] = min(args.sanity_clips, len(data.clips))
    report = run_evaluation(
        graph, data, **options, progress=sys.stderr.isatty(), memory_check=args.memory_check
    )
    out = ensure_out_dir(args.out)
    write_json(out / "report.json", report)
    text = markdown(report)
    atomic_write_bytes(out / "report.md", (text + "\n").encode("utf-8"))
    print(text)
    return 0
