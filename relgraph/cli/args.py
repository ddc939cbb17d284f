"""Argument helpers shared by the command-line modules (``cli``, ``dataset_cli``,
``evaluate_cli``): argparse types, option groups and ``--param`` parsing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from relgraph.engine.spec import parse_key_values
from relgraph.errors import ArgumentError
from relgraph.methods.decomposed import STATIC_PARTS
from relgraph.methods.discriminative import METHODS, NORMALIZATIONS, REDUCTIONS

__all__ = [
    "ExampleFormatter",
    "add_discriminative_options",
    "add_memory_check_option",
    "add_example",
    "add_param_option",
    "add_pretrained_option",
    "model_source",
    "non_negative_int",
    "parse_key_values",
    "parse_params",
    "positive_int",
    "subcommand_parsers",
]


class ExampleFormatter(argparse.HelpFormatter):
    """argparse's formatter, but an epilog that starts with ``example:`` keeps its lines, so
    that the example command reads as typed."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_example(parser: argparse.ArgumentParser, command: str) -> None:
    """Append ``example: COMMAND`` to ``parser``'s help (its epilog)."""
    example = f"example:\n  {command}"
    parser.epilog = f"{parser.epilog}\n\n{example}" if parser.epilog else example
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = ExampleFormatter


def subcommand_parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser of a command tree by its command path: ``()`` for ``parser`` itself,
    ``("arch", "show")`` for ``relgraph arch show``; in the order the commands were added."""
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(subcommand_parsers(sub, (*path, name)))
    return found


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``--param k=v`` pairs; values are read as YAML scalars (``10`` is an int)."""
    return parse_key_values(items, "--param")


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_discriminative_options(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--static``, ``--sigma``, ``--reduce``, ``--normalize``, ``--batch-size``
    and ``--quiet``: the options of every command that runs the discriminative method."""
    group = parser.add_argument_group("discriminative method")
    group.add_argument(
        "--method",
        choices=METHODS,
        default="frozen",
        help="what relevance due to motion means: frozen clips (the paper's, default), the "
        "input split into static and moving parts (decomposed, one explanation), DeepLIFT "
        "from the static clip with the Rescale rule (reference) or the RevealCancel rule "
        "(revealcancel), or selective relevance (docs/motion-methods.md)",
    )
    group.add_argument(
        "--static",
        choices=STATIC_PARTS,
        default=None,
        help="the static part of a clip for decomposed, reference and revealcancel: each "
        "pixel's mean, median or first value over the frames (default: median for "
        "revealcancel, mean for the others)",
    )
    group.add_argument(
        "--sigma",
        type=float,
        default=1.0,
        help="selective's threshold in standard deviations of the temporal derivative (1)",
    )
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
        type=positive_int,
        default=None,
        metavar="N",
        help="frozen clips explained at once (default: relgraph's measured default)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    add_memory_check_option(parser)


def add_memory_check_option(parser: argparse.ArgumentParser) -> None:
    """``--no-memory-check``: skip the memory preflight (``relgraph.engine.memory``)."""
    parser.add_argument(
        "--no-memory-check",
        dest="memory_check",
        action="store_false",
        help="run even when the estimated peak memory exceeds the memory available (the "
        "preflight refuses such a run before it allocates anything)",
    )


def add_param_option(parser: argparse.ArgumentParser) -> None:
    """``--param KEY=VALUE``, for every command that loads an architecture."""
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="architecture parameter, e.g. num_classes=10 (repeatable)",
    )


def add_pretrained_option(parser: argparse.ArgumentParser) -> None:
    """``--pretrained FOLDER``: a Hugging Face model folder instead of ``--arch``/``--weights``."""
    parser.add_argument(
        "--pretrained",
        metavar="FOLDER",
        help="a Hugging Face model folder (config.json and model.safetensors or "
        "pytorch_model.bin; VideoMAE, ViViT, TimeSformer): the architecture, weights, class "
        "names and input preset come from it, in place of --arch, --weights and --param",
    )


def model_source(
    args: argparse.Namespace, default_arch: str, *, weights_required: bool = True
) -> tuple[str, str | None, dict[str, Any]]:
    """``(architecture or folder, weights, params)`` from ``--pretrained`` or ``--arch``,
    ``--weights`` and ``--param``; refuses ``--pretrained`` together with any of those."""
    if args.pretrained is not None:
        given = [
            flag
            for flag, value in (
                ("--arch", args.arch),
                ("--weights", args.weights),
                ("--param", args.param),
            )
            if value
        ]
        if given:
            raise ArgumentError(
                f"--pretrained {args.pretrained} holds the architecture and weights: leave out "
                + ", ".join(given)
            )
        from relgraph.models.pretrained import is_pretrained_folder, load_pretrained

        if not is_pretrained_folder(args.pretrained):
            load_pretrained(args.pretrained)  # raises the reason: no folder, no config.json
        return args.pretrained, None, {}
    if weights_required and not args.weights:
        raise ArgumentError("--weights FILE is needed (or --pretrained FOLDER)")
    return args.arch or default_arch, args.weights, parse_params(args.param)
