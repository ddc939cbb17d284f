"""Argument helpers shared by the command-line modules (``cli``, ``dataset_cli``,
``evaluate_cli``): argparse types, option groups and ``--param`` parsing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from relgraph.engine.spec import parse_key_values
from relgraph.methods.discriminative import NORMALIZATIONS, REDUCTIONS

__all__ = [
    "add_discriminative_options",
    "add_param_option",
    "non_negative_int",
    "parse_key_values",
    "parse_params",
    "positive_int",
]


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
    """``--reduce``, ``--normalize``, ``--batch-size`` and ``--quiet``: the options of every
    command that runs the discriminative method."""
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
        type=positive_int,
        default=None,
        metavar="N",
        help="frozen clips explained at once (default: relgraph's measured default)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def add_param_option(parser: argparse.ArgumentParser) -> None:
    """``--param KEY=VALUE``, for every command that loads an architecture."""
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="architecture parameter, e.g. num_classes=10 (repeatable)",
    )
