"""The errors relgraph raises on bad input: one base class, a subclass per stage.

Every message is a single paragraph that names, where known, the file, the YAML line
and the node it concerns, e.g. ``c3d.yaml:12: node 'conv2': in_channels is 32 but ...``.
"""

from __future__ import annotations

import difflib
import os


class RelgraphError(Exception):
    """Base class of every error relgraph raises for bad input.

    Parameters
    ----------
    message
        What is wrong and, where possible, how to fix it.
    file
        The file the problem is in (architecture YAML, weight file, video, ...).
    line
        1-based line number inside ``file``.
    node
        Name of the graph node concerned.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        line: int | None = None,
        node: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.node = node
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        elif self.line is not None:
            where = f"line {self.line}"
        parts = [p for p in (where, f"node '{self.node}'" if self.node else "") if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class ArgumentError(RelgraphError, ValueError):
    """A function or command was called with an argument it cannot take.

    It is a ``ValueError`` too, as Python's own argument checks are.
    """


class SpecError(RelgraphError):
    """An architecture or rule file is not valid: YAML syntax, fields, types, unknown names."""


class GraphError(RelgraphError):
    """The graph's structure is wrong: duplicate names, dangling inputs, cycles."""


class ShapeError(RelgraphError):
    """A node's input shape does not fit its op (found at compile time or on real input)."""


class WeightsError(RelgraphError):
    """A weight file or state dict does not match the architecture."""


class RuleError(RelgraphError):
    """A rule does not fit its node, or a rule/preset name is unknown."""


class TargetError(RelgraphError):
    """A target class or seed is invalid for the model's output."""


class VideoError(RelgraphError):
    """A video cannot be read, has no video stream, or is otherwise unusable."""


class LabelError(RelgraphError):
    """A label file is unreadable, malformed, or does not fit the model."""


class TorchImportError(RelgraphError):
    """A torch.nn model cannot be imported: fx cannot trace it, or a node has no relgraph op."""


class OutputError(RelgraphError):
    """An output location cannot be written."""


class OpDefinitionError(RelgraphError, ValueError):
    """An op is defined or configured wrongly: a bad field value or shape, an unknown field
    kind, ``register_op`` misused. Compiling a YAML file turns it into a ``SpecError`` or
    ``ShapeError`` naming the file, line and node; defining an op class in Python raises it
    as it is.

    Parameters
    ----------
    message
        What is wrong.
    field
        The YAML field concerned, if any (the compiler looks up its line).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class RelgraphWarning(UserWarning):
    """Something is likely wrong but relgraph can go on (e.g. inputs outside the zβ bounds)."""


def did_you_mean(name: str, choices) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class DatasetError(RelgraphError):
    """A data set source (class folders, split list, CSV) is empty, malformed or does not fit
    the model's classes."""


class StoreError(RelgraphError):
    """A result store was made with other options or by another version, or is damaged."""


class ResourceError(RelgraphError):
    """The machine lacks what a run needs: memory for the explanation (the preflight of
    ``relgraph.engine.memory``), or disk space for its outputs."""
