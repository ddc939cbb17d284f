"""``relgraph dataset explain|report``: the command line of data-set runs.

:func:`add_dataset_commands` adds the ``dataset`` command to the main parser
(:mod:`relgraph.cli.main`); errors end as every relgraph command's do (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from relgraph.cli.args import (
    add_discriminative_options,
    add_param_option,
    add_pretrained_option,
    model_source,
    non_negative_int,
    positive_int,
)
from relgraph.datasets.distributed import setup
from relgraph.datasets.report import build_report_with_damage
from relgraph.datasets.runner import RunOptions, run_dataset
from relgraph.datasets.sources import check_labels, load_source
from relgraph.datasets.store import STORE_FORMAT, Store, file_digest
from relgraph.errors import ArgumentError
from relgraph.io.outputs import check_out_dir, check_out_file, write_json
from relgraph.io.preprocess import SHIPPED_PRESETS
from relgraph.pipeline.video import load_model
from relgraph.version import __version__

__all__ = ["add_dataset_commands", "store_options"]


def add_dataset_commands(subparsers) -> None:
    """Add ``dataset explain`` and ``dataset report`` to ``subparsers``."""

    dataset = subparsers.add_parser(
        "dataset",
        help="explain a whole data set into a resumable store; report on it",
        description="Explain every video of a data set (resumable, torchrun-sharded), and "
        "build an HTML report from the store.",
    )
    commands = dataset.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)

    explain = commands.add_parser(
        "explain",
        help="explain every video of SOURCE into the store --out",
        description="Explain every video of SOURCE with the discriminative method into the "
        "store --out. Run it again with the same options to resume; launch it with "
        "`torchrun --nproc-per-node N -m relgraph dataset explain ...` to shard it.",
    )
    explain.add_argument(
        "source",
        metavar="SOURCE",
        help="a folder with one sub-folder per class, a UCF-101 split list (testlist01.txt, "
        "with classInd.txt beside it) or a CSV of path,label",
    )
    explain.add_argument("--arch", metavar="NAME|FILE", help="default: c3d")
    add_param_option(explain)
    explain.add_argument("--weights", metavar="FILE", help="needed unless --pretrained")
    add_pretrained_option(explain)
    explain.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per model output (needed unless the --pretrained folder names them)",
    )
    explain.add_argument("--out", required=True, metavar="STORE", help="the result store")
    explain.add_argument("--rules", metavar="PRESET|FILE")
    explain.add_argument("--preprocess", choices=SHIPPED_PRESETS)
    explain.add_argument(
        "--clips",
        default="first",
        metavar="first|all|N",
        help="the first clip of each video, all consecutive clips, or N clips spread evenly "
        "over it (default: first)",
    )
    explain.add_argument("--stride", type=positive_int, default=1, metavar="N")
    explain.add_argument(
        "--target",
        choices=("auto", "true"),
        default="auto",
        help="explain the predicted class (auto) or the true label (default: auto)",
    )
    explain.add_argument(
        "--figures",
        choices=("none", "summary", "all"),
        default="none",
        help="none (default), summary: grid.png and animation.gif of the first clip (fast), "
        "all: of every clip plus the matplotlib figure.png/frames.png (seconds a clip)",
    )
    explain.add_argument(
        "--raw",
        choices=("clip", "all"),
        default="clip",
        help="raw relevance stored: the clip's (C,T,H,W; default) or also every frozen "
        "clip's (T times larger)",
    )
    explain.add_argument(
        "--min-frames",
        type=positive_int,
        metavar="N",
        help="videos with fewer frames fail as too short; from N up to the clip length they "
        "are loop-padded (default: half the clip length)",
    )
    explain.add_argument("--class-index", metavar="FILE", help="classInd.txt of a split list")
    explain.add_argument("--root", metavar="DIR", help="folder relative paths start from")
    explain.add_argument(
        "--clip-batch",
        type=positive_int,
        default=4,
        metavar="N",
        help="clips, from any videos, explained at once (default: 4)",
    )
    explain.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="background decoding threads (0: decode in the main thread; default: 2)",
    )
    explain.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    explain.add_argument(
        "--dry-run", action="store_true", help="list what would be done and what is done"
    )
    explain.add_argument("--stats", metavar="FILE", help="write the run's timings as JSON")
    add_discriminative_options(explain)
    explain.set_defaults(handler=command_dataset_explain)

    report = commands.add_parser(
        "report",
        help="summary.json, plots and a static HTML report of a store",
        description="Aggregate a store per class into summary.json and plots, and write a "
        "static HTML report (index.html) that opens from the file system.",
    )
    report.add_argument("store", metavar="STORE")
    report.add_argument("--out", metavar="DIR", help="default: STORE/report")
    report.set_defaults(handler=command_dataset_report)


def _clips(text: str):

    text = text.strip().lower()
    if text in ("first", "all"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ArgumentError(f"--clips takes first, all or a positive number, got {text!r}")


def store_options(model, args: argparse.Namespace, options) -> dict[str, Any]:
    """What the results depend on, as stored and fingerprinted in ``store.json``.

    Weights are identified by the SHA-256 of their bytes, the architecture by its resolved
    YAML, the rules by every node's resolved rule; batch sizes, workers, device and figures
    are left out (they do not change the maps).
    """

    graph = model.graph
    rules_text = "\n".join(f"{node}: {rule!r}" for node, rule in sorted(model.node_rules.items()))
    return {
        "store_format": STORE_FORMAT,
        "relgraph": __version__,
        "architecture": graph.name,
        "architecture_sha256": hashlib.sha256(graph.to_yaml().encode()).hexdigest(),
        "weights_sha256": _weights_digest(args),
        "labels": list(model.labels.names),
        "rules": model.rules_name,
        "rules_sha256": hashlib.sha256(rules_text.encode()).hexdigest(),
        "output_relevance": model.output_relevance,
        "preprocess": model.preprocess.name,
        "dtype": str(graph.dtype).replace("torch.", ""),
        "clips": options.clips,
        "stride": options.stride,
        "target": options.target,
        "reduce": options.reduce,
        "normalize": options.normalize,
        # only where not the default: stores made before methods existed stay valid
        **_method_options(options),
        "min_frames": options.min_frames
        if options.min_frames is not None
        else math.ceil(model.frames_per_clip / 2),
        "raw": options.raw,
    }


def _weights_digest(args: argparse.Namespace) -> str:
    """The SHA-256 of the weight file, or of a ``--pretrained`` folder's config and weights."""
    if args.pretrained is None:
        return file_digest(args.weights)
    folder = Path(args.pretrained)
    names = ["config.json", "model.safetensors", "pytorch_model.bin"]
    names += [p.name for p in sorted(folder.glob("*.index.json"))]
    names += [p.name for p in sorted(folder.glob("model-*.safetensors"))]
    names += [p.name for p in sorted(folder.glob("pytorch_model-*.bin"))]
    digests = [f"{n}:{file_digest(folder / n)}" for n in names if (folder / n).is_file()]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _method_options(options) -> dict[str, Any]:
    """The motion method's options for the fingerprint; none for the paper's ``frozen``."""
    if options.method == "frozen":
        return {}
    found: dict[str, Any] = {"method": options.method}
    if options.method in ("decomposed", "reference"):
        found["static"] = options.static
    if options.method == "selective":
        found["sigma"] = options.sigma
    return found


def command_dataset_explain(args: argparse.Namespace) -> int:

    clock = time.perf_counter()
    check_dataset_explain_args(args)
    options = RunOptions(
        clips=_clips(args.clips),
        stride=args.stride,
        target=args.target,
        reduce=args.reduce,
        normalize=args.normalize,
        method=args.method,
        static=args.static,
        sigma=args.sigma,
        batch_size=args.batch_size,
        clip_batch=args.clip_batch,
        min_frames=args.min_frames,
        raw=args.raw,
        figures=args.figures,
        workers=args.workers,
        quiet=args.quiet,
        dry_run=args.dry_run,
        memory_check=args.memory_check,
    )
    items = load_source(args.source, class_index=args.class_index, root=args.root)
    store = Store(args.out)
    if not args.dry_run:
        store.check_unlocked()  # a store being written is refused before any work
    store.read_manifest()  # a non-store folder is refused before the model loads
    architecture, weights, params = model_source(args, "c3d")
    model = load_model(
        architecture,
        params=params,
        weights=weights,
        labels=args.labels,
        preprocess=args.preprocess,
        rules=args.rules,
        device=args.device,
    )
    if args.min_frames is not None and args.min_frames > model.frames_per_clip:
        raise ArgumentError(
            f"--min-frames {args.min_frames} is more than the clip length of "
            f"'{model.graph.name}' ({model.frames_per_clip} frames): videos of "
            f"{model.frames_per_clip} frames and more are never too short; give at most "
            f"{model.frames_per_clip}"
        )
    if model.labels is None:
        raise ArgumentError(
            "--labels FILE is needed: the data set's classes are matched to the model's by name"
        )
    check_labels(items, model.labels, source=args.source)
    fingerprinted = store_options(model, args, options)
    store.check(fingerprinted)
    if not args.dry_run:
        store.check_writable()
    context = setup(args.device)
    try:
        if args.device == "cuda":
            model.graph.to(device=torch.device("cuda", context.local_rank))
        stats = run_dataset(model, items, store, fingerprinted, options, context)
        if stats and args.stats and context.is_main:
            stats["startup_s"] = time.perf_counter() - clock - stats["wall_s"]
            write_json(args.stats, stats)
    finally:
        context.close()
    return 0


def check_dataset_explain_args(args: argparse.Namespace) -> None:
    """The checks of ``dataset explain``'s options that need no model, run before any work:
    ``--clips``, ``--stats`` and ``--out`` can be written. (``--min-frames`` is checked
    against the clip length once the model is loaded, still before the store is touched.)"""
    _clips(args.clips)
    if args.stats:
        check_out_file(args.stats)
    if not args.dry_run:
        check_out_dir(args.out)


def command_dataset_report(args: argparse.Namespace) -> int:

    out, damaged = build_report_with_damage(args.store, args.out)
    for line in damaged:
        print(f"relgraph: warning: damaged, left out: {line}", file=sys.stderr, flush=True)
    print(f"report: {out / 'index.html'}")
    return 0
