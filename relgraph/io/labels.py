"""Class names of a classifier's outputs, read from UCF-101 style label files."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from relgraph.errors import LabelError

__all__ = ["Labels"]

_NUMBERED_LINE = re.compile(r"^(\d+)\s+(\S.*)$")


class Labels:
    """Class names in model output order (index ``i`` is output ``i``).

    Parameters
    ----------
    names
        One name per model output.
    file
        Where the names came from, for error messages.
    """

    def __init__(self, names: Sequence[str], *, file: str | os.PathLike | None = None) -> None:
        self.file = None if file is None else str(file)
        self.names: list[str] = [str(name) for name in names]
        if not self.names:
            raise LabelError("the label list is empty.", file=self.file)
        seen: dict[str, int] = {}
        for index, name in enumerate(self.names):
            if not name.strip():
                raise LabelError(f"class {index} has an empty name.", file=self.file)
            if name.isdigit():
                raise LabelError(
                    f"class {index} is named '{name}', a number; numbers are read as model "
                    "indices, so a class name needs a letter.",
                    file=self.file,
                )
            if name.lower() in seen:
                raise LabelError(
                    f"the name '{name}' appears twice (classes {seen[name.lower()]} and {index}).",
                    file=self.file,
                )
            seen[name.lower()] = index
        self._index_of_lower = seen

    @classmethod
    def from_names(cls, names: Sequence[str]) -> Labels:
        """Labels from a list of names in model output order."""
        return cls(list(names))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Labels:
        """Read a label file.

        Two layouts are accepted. UCF-101's ``classInd.txt``: one ``<id> <name>`` per line with
        1-based consecutive ids (model index = id - 1). Or plain: one name per line, in model
        order. Blank lines are skipped.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise LabelError("the label file does not exist.", file=path) from None
        except UnicodeDecodeError as exc:
            raise LabelError(
                f"the label file is not UTF-8 text (byte {exc.start}); is this a label file?",
                file=path,
            ) from None
        except OSError as exc:
            raise LabelError(
                f"cannot read the label file: {exc.strerror or exc}.", file=path
            ) from None

        lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
        lines = [(number, line) for number, line in lines if line]
        if not lines:
            raise LabelError(
                "the label file is empty; it needs one class name per line.", file=path
            )

        numbered = _NUMBERED_LINE.match(lines[0][1]) is not None
        names: list[str] = []
        first_line_of: dict[str, int] = {}
        for number, line in lines:
            match = _NUMBERED_LINE.match(line)
            if numbered:
                if match is None:
                    raise LabelError(
                        f"expected '<id> <name>' like the lines above, got {line!r}.",
                        file=path,
                        line=number,
                    )
                class_id, name = int(match.group(1)), match.group(2).strip()
                if class_id != len(names) + 1:
                    raise LabelError(
                        f"ids must count up from 1 without gaps: expected {len(names) + 1}, "
                        f"found {class_id}.",
                        file=path,
                        line=number,
                    )
            else:
                if match is not None or line.isdigit():
                    raise LabelError(
                        f"{line!r} starts with a number, but the first line has a plain name; "
                        "use either '<id> <name>' on every line or names only.",
                        file=path,
                        line=number,
                    )
                name = line
            if name.lower() in first_line_of:
                raise LabelError(
                    f"duplicate class name '{name}' (first on line {first_line_of[name.lower()]}).",
                    file=path,
                    line=number,
                )
            first_line_of[name.lower()] = number
            names.append(name)
        return cls(names, file=path)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        source = f", file={self.file!r}" if self.file else ""
        return f"Labels({len(self)} classes{source})"

    def index(self, name_or_index: str | int) -> int:
        """Model index of a class name (case-insensitive), an int or a digit string.

        Numbers are model indices, counted from 0 (UCF-101's id 1 is index 0).
        """
        if isinstance(name_or_index, int | np.integer) and not isinstance(name_or_index, bool):
            return self._check_index(int(name_or_index))
        if not isinstance(name_or_index, str):
            raise LabelError(
                f"a class is given by name or model index, not {type(name_or_index).__name__}.",
                file=self.file,
            )
        text = name_or_index.strip()
        if text.isdigit():
            return self._check_index(int(text))
        if text.lower() in self._index_of_lower:
            return self._index_of_lower[text.lower()]
        close = difflib.get_close_matches(text.lower(), list(self._index_of_lower), n=3, cutoff=0.6)
        suggestion = ""
        if close:
            quoted = [f"'{self.names[self._index_of_lower[c]]}'" for c in close]
            suggestion = f" Did you mean {' or '.join(quoted)}?"
        raise LabelError(
            f"unknown class '{name_or_index}'.{suggestion} The {len(self)} classes run from "
            f"'{self.names[0]}' to '{self.names[-1]}'; a number is taken as a model index "
            f"0..{len(self) - 1}.",
            file=self.file,
        )

    def name(self, index: int) -> str:
        """Class name of model output ``index``."""
        return self.names[self.index(int(index))]

    def check_size(self, num_classes: int) -> None:
        """Raise LabelError unless there is exactly one name per model output."""
        if len(self) != num_classes:
            raise LabelError(
                f"the label file has {len(self)} classes but the model has {num_classes} "
                "outputs; pass the label file the model was trained with.",
                file=self.file,
            )

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise LabelError(
                f"class index {index} is out of range: model indices run 0..{len(self) - 1} "
                "(UCF-101 ids are 1-based; index = id - 1).",
                file=self.file,
            )
        return index
