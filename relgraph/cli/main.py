"""The command line: ``relgraph explain``, ``demo``, ``arch show|check|import``,
``rules list|show``, ``dataset explain|report`` (the last from :mod:`relgraph.cli.dataset`).

Each command parses its arguments and calls one public function (``explain`` →
:func:`relgraph.explain_video`, ``demo`` → :func:`relgraph.models.demo.run_demo`), which
prints through the ``log`` callable it is given.

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
from collections.abc import Callable, Sequence

from relgraph.cli.args import (
    add_discriminative_options,
    add_example,
    add_param_option,
    add_pretrained_option,
    model_source,
    non_negative_int,
    parse_params,
    positive_int,
    subcommand_parsers,
)
from relgraph.cli.dataset import add_dataset_commands
from relgraph.cli.evaluate import add_evaluate_command
from relgraph.engine.canonize import fold_notes
from relgraph.engine.graph import load_architecture
from relgraph.errors import RelgraphError
from relgraph.io.outputs import atomic_write_bytes
from relgraph.io.preprocess import SHIPPED_PRESETS
from relgraph.models.demo import DEMO_ARCHITECTURE, DEMO_MODELS, run_demo
from relgraph.models.from_torch import from_torch, load_factory, parse_kwargs
from relgraph.pipeline.video import (
    PRECISIONS,
    VideoOptions,
    check_explain_video_args,
    explain_video,
    load_model,
)
from relgraph.rules import RULES, preset, preset_names

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _printer(quiet: bool) -> Callable[[str], None] | None:
    """Where the pipeline's progress lines go: stdout, or nowhere with --quiet."""

    def say(text: str) -> None:
        print(text, flush=True)

    return None if quiet else say


# --------------------------------------------------------------------------- commands


def command_explain(args: argparse.Namespace) -> int:
    options = VideoOptions(
        target=args.target,
        start=args.start,
        stride=args.stride,
        all_clips=args.all_clips,
        reduce=args.reduce,
        normalize=args.normalize,
        batch_size=args.batch_size,
        method=args.method,
        static=args.static,
        sigma=args.sigma,
        columns=args.columns,
        memory_check=args.memory_check,
    )
    options.check()  # every option before the model is loaded
    check_explain_video_args(out=args.out)
    log = _printer(args.quiet)
    clock = time.perf_counter()
    architecture, weights, params = model_source(args, "c3d")
    model = load_model(
        architecture,
        weights=weights,
        labels=args.labels,
        params=params,
        rules=args.rules,
        preprocess=args.preprocess,
        device=args.device,
        precision=args.precision,
        canonize=False if args.no_canonize else None,
    )
    if log is not None:  # None under --quiet
        log(model.describe())
    explain_video(
        args.video,
        model,
        args.out,
        options,
        log=log,
        progress=False if args.quiet else None,
        timings={"load_model_s": time.perf_counter() - clock},
    )
    return 0


def command_demo(args: argparse.Namespace) -> int:
    run_demo(
        args.out,
        seed=args.seed,
        log=_printer(args.quiet),
        progress=False if args.quiet else None,
        architecture=args.arch,
    )
    return 0


def command_arch_show(args: argparse.Namespace) -> int:
    graph = load_architecture(args.architecture, init="none", **parse_params(args.param))
    print(repr(graph))
    canonize = graph.canonize and not args.no_canonize
    notes = fold_notes(graph) if canonize else {}
    print(graph.summary(notes))
    folded = sum(1 for n in notes if graph.op(n).type.startswith("batchnorm"))
    if canonize:
        print(
            f"canonization: {folded} batch norm(s) folded into the layer before them before the "
            "rules run (--no-canonize, or 'canonize: false' in the YAML, keeps them)"
        )
    else:
        print("canonization: off (batch norms keep rules of their own)")
    return 0


def command_arch_check(args: argparse.Namespace) -> int:
    graph = load_architecture(args.file, init="none", **parse_params(args.param))
    print(f"OK: {args.file}: {graph!r}")
    return 0


def command_arch_import(args: argparse.Namespace) -> int:
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        raise RelgraphError(
            f"--input-shape takes integers separated by commas (batch left out), e.g. "
            f"3,16,112,112; got {args.input_shape!r}"
        ) from None
    if args.weights_out and os.path.abspath(args.weights_out) == os.path.abspath(args.out):
        raise RelgraphError("--out and --weights-out name the same file")
    model = load_factory(args.factory, parse_kwargs(args.kwarg))
    graph = from_torch(model, shape, name=args.name)
    atomic_write_bytes(args.out, graph.to_yaml().encode("utf-8"))
    if args.weights_out:
        graph.save_weights(args.weights_out)
    print(f"wrote {args.out}: {graph!r}")
    if args.weights_out:
        print(f"wrote {args.weights_out}")
    return 0


def command_rules_list(args: argparse.Namespace) -> int:
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
    graph = load_architecture(args.arch, init="none", **parse_params(args.param))
    composite = preset(args.preset)
    print(
        f"{composite.name} on {graph.name}"
        + (f": {composite.description}" if composite.description else "")
    )
    print(
        composite.table(
            graph, preprocess=args.preprocess, canonize=False if args.no_canonize else None
        )
    )
    return 0


def _add_canonize_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-canonize",
        action="store_true",
        help="keep batch norms as nodes with rules of their own (default: fold each into the "
        "conv or linear layer before it, unless the architecture says 'canonize: false')",
    )


def _field_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"{f.name}={f.default!r}"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f"{f.name}={f.default_factory()!r}"  # type: ignore[misc]
    return f"{f.name} (required)"


# --------------------------------------------------------------------------- argparse


#: One example per command, shown at the end of its ``--help`` (the docs' command-line page
#: is generated from these parsers, and the docs test runs every example).
EXAMPLES: dict[tuple[str, ...], str] = {
    (): "relgraph demo --out out",
    ("explain",): "relgraph explain video.mp4 --arch c3d-tiny --weights c3d-tiny.safetensors "
    "--labels labels.txt --out explained/",
    ("demo",): "relgraph demo --out out",
    ("arch",): "relgraph arch show c3d-tiny",
    ("arch", "show"): "relgraph arch show c3d-tiny --param width=4",
    ("arch", "check"): "relgraph arch check my-net.yaml",
    ("arch", "import"): "relgraph arch import mypackage.models:my_net --input-shape 3,16,112,112 "
    "--out my-net.yaml --kwarg num_classes=10 --weights-out my-net.safetensors",
    ("rules",): "relgraph rules list",
    ("rules", "list"): "relgraph rules list",
    ("rules", "show"): "relgraph rules show epsilon-plus --arch r2plus1d-tiny",
    ("dataset",): "relgraph dataset report store/",
    ("dataset", "explain"): "relgraph dataset explain videos/ --arch c3d-tiny "
    "--weights c3d-tiny.safetensors --labels labels.txt --out store/",
    ("dataset", "report"): "relgraph dataset report store/",
    ("evaluate",): "relgraph evaluate --arch c3d-tiny --clips 2 --steps 2 --no-variants "
    "--no-frames --out evaluation/",
}


def build_parser() -> argparse.ArgumentParser:
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
        metavar="FILE",
        help="checkpoint, state dict or safetensors file (needed unless --pretrained)",
    )
    explain.add_argument(
        "--arch",
        metavar="NAME|FILE",
        help="shipped architecture name or YAML file (default: c3d)",
    )
    add_param_option(explain)
    add_pretrained_option(explain)
    _add_canonize_option(explain)
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
        "or a class name from --labels or the --pretrained folder's (default: auto)",
    )
    explain.add_argument(
        "--preprocess",
        choices=SHIPPED_PRESETS,
        help="input preset (default: the architecture's 'preprocess:', e.g. c3d → "
        "c3d-ucf101; required when the architecture names none)",
    )
    clips = explain.add_mutually_exclusive_group()
    clips.add_argument(
        "--start",
        type=non_negative_int,
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
        type=positive_int,
        default=1,
        metavar="N",
        help="take every N-th frame (default: 1)",
    )
    explain.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to compute (default: cpu)"
    )
    explain.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="number format: fp32 (default), bf16 (faster on CPUs with bfloat16 units; maps "
        "within about 2%% of fp32, see docs/benchmarks/precision.md), fp64",
    )
    explain.add_argument(
        "--columns",
        metavar="1,6,10,16",
        help="1-based frames shown in figure.png (default: the paper's "
        "frames 1, 6, 10, 16, scaled to the clip length)",
    )
    explain.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_discriminative_options(explain)
    explain.set_defaults(handler=command_explain)

    demo = commands.add_parser(
        "demo",
        help="explain a synthetic motion clip with the shipped demo model",
        description="Draw a synthetic clip whose class is its motion, write it as "
        "DIR/demo.mp4, and run the explain pipeline on it with the shipped demo model "
        "(c3d-tiny, or --arch). relevance.npz also holds the ground-truth masks of the "
        "moving objects (moving_mask) and the static distractors (static_mask).",
    )
    demo.add_argument("--out", required=True, metavar="DIR", help="output folder")
    demo.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed of the clip (default: 0)"
    )
    demo.add_argument(
        "--arch",
        choices=tuple(DEMO_MODELS),
        default=DEMO_ARCHITECTURE,
        help=f"which shipped demo model explains the clip (default: {DEMO_ARCHITECTURE})",
    )
    demo.add_argument("--quiet", action="store_true", help="print nothing but errors")
    demo.set_defaults(handler=command_demo)

    arch = commands.add_parser(
        "arch",
        help="show, check or import an architecture",
        description="Show or check an architecture YAML, or import one from torch.nn.",
    )
    arch_commands = arch.add_subparsers(dest="arch_command", metavar="COMMAND", required=True)
    show = arch_commands.add_parser(
        "show",
        help="print the layer table of an architecture",
        description="Print node, op, inputs, shape and parameters.",
    )
    show.add_argument("architecture", metavar="NAME|FILE")
    add_param_option(show)
    _add_canonize_option(show)
    show.set_defaults(handler=command_arch_show)
    check = arch_commands.add_parser(
        "check",
        help="compile an architecture file: OK or the error",
        description="Compile FILE (shapes included); print OK or the error (exit status 2).",
    )
    check.add_argument("file", metavar="FILE")
    add_param_option(check)
    check.set_defaults(handler=command_arch_check)
    importer = arch_commands.add_parser(
        "import",
        help="write the YAML of a torch.nn model (traced with torch.fx)",
        description="Build a model with package.module:factory (the current folder is "
        "searched first), trace it with torch.fx and write its architecture YAML. Node names "
        "are the module paths, so the model's state_dict() loads into the YAML unchanged.",
    )
    importer.add_argument("factory", metavar="MODULE:FACTORY")
    importer.add_argument(
        "--input-shape",
        required=True,
        metavar="C,T,H,W",
        help="input shape without the batch, e.g. 3,16,112,112",
    )
    importer.add_argument("--out", required=True, metavar="FILE", help="the YAML to write")
    importer.add_argument(
        "--kwarg",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument of the factory, read as a YAML scalar, e.g. num_classes=10 "
        "(repeatable)",
    )
    importer.add_argument(
        "--weights-out",
        metavar="FILE",
        help="also write the model's weights (safetensors for .safetensors, else a state dict)",
    )
    importer.add_argument("--name", help="architecture name (default: the model's class name)")
    importer.set_defaults(handler=command_arch_import)

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
    add_param_option(table)
    table.add_argument(
        "--preprocess",
        choices=SHIPPED_PRESETS,
        help="input preset the zβ bounds follow (default: the architecture's)",
    )
    _add_canonize_option(table)
    table.set_defaults(handler=command_rules_show)
    add_dataset_commands(commands)
    add_evaluate_command(commands)
    for path, subparser in subcommand_parsers(parser).items():
        add_example(subparser, EXAMPLES[path])
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
    except OSError as error:
        # what the operating system refused where no check names it better (a file name too
        # long, a permission): still one line, naming the file
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or str(error) or type(error).__name__
        print(f"relgraph: error: {_one_line(where + reason)}", file=sys.stderr, flush=True)
        return EXIT_ERROR


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"relgraph: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())
