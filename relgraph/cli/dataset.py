"""``relgraph dataset explain|report``: the command line of data-set runs.

:func:`add_dataset_commands` adds the ``dataset`` command to the main parser
(:mod:`relgraph.cli.main`); errors end as every relgraph command's do (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from typing import Any

import torch

from relgraph import __version__
from relgraph.cli.args import (
    add_discriminative_options,
    add_param_option,
    parse_params,
    positive_int,
)
from relgraph.datasets.distributed import setup
from relgraph.datasets.report import build_report
from relgraph.datasets.runner import RunOptions, run_dataset
from relgraph.datasets.sources import check_labels, load_source
from relgraph.datasets.store import STORE_FORMAT, Store, file_digest
from relgraph.errors import RelgraphError
from relgraph.io.outputs import write_json
from relgraph.io.preprocess import PRESETS
from relgraph.pipeline.video import load_model

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
    explain.add_argument("--arch", default="c3d", metavar="NAME|FILE", help="default: c3d")
    add_param_option(explain)
    explain.add_argument("--weights", required=True, metavar="FILE")
    explain.add_argument(
        "--labels", required=True, metavar="FILE", help="class names, one per model output"
    )
    explain.add_argument("--out", required=True, metavar="STORE", help="the result store")
    explain.add_argument("--rules", metavar="PRESET|FILE")
    explain.add_argument("--preprocess", choices=sorted(PRESETS))
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
        type=int,
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
    raise RelgraphError(f"--clips takes first, all or a positive number, got {text!r}")


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
        "weights_sha256": file_digest(args.weights),
        "labels": list(model.labels.names),
        "rules": model.rules_name,
        "rules_sha256": hashlib.sha256(rules_text.encode()).hexdigest(),
        "seed": model.seed,
        "preprocess": model.preprocess.name,
        "dtype": str(graph.dtype).replace("torch.", ""),
        "clips": options.clips,
        "stride": options.stride,
        "target": options.target,
        "reduce": options.reduce,
        "normalize": options.normalize,
        "min_frames": options.min_frames
        if options.min_frames is not None
        else math.ceil(model.frames_per_clip / 2),
        "raw": options.raw,
    }


def command_dataset_explain(args: argparse.Namespace) -> int:

    clock = time.perf_counter()
    options = RunOptions(
        clips=_clips(args.clips),
        stride=args.stride,
        target=args.target,
        reduce=args.reduce,
        normalize=args.normalize,
        batch_size=args.batch_size,
        clip_batch=args.clip_batch,
        min_frames=args.min_frames,
        raw=args.raw,
        figures=args.figures,
        workers=max(0, args.workers),
        quiet=args.quiet,
        dry_run=args.dry_run,
    )
    items = load_source(args.source, class_index=args.class_index, root=args.root)
    store = Store(args.out)
    store.read_manifest()  # a non-store folder is refused before the model loads
    model = load_model(
        args.arch,
        params=parse_params(args.param),
        weights=args.weights,
        labels=args.labels,
        preprocess=args.preprocess,
        rules=args.rules,
        device=args.device,
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


def command_dataset_report(args: argparse.Namespace) -> int:

    out = build_report(args.store, args.out)
    print(f"report: {out / 'index.html'}")
    return 0
