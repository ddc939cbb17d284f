"""Data set sources: which videos to explain and their true labels.

Three layouts are read, each into a list of :class:`VideoItem` in a fixed (sorted) order:

- a folder with one sub-folder per class, as UCF-101 is laid out (the sub-folder's name is
  the true label);
- a UCF-101 split list (``testlist01.txt``: ``Class/v_Class_g01_c01.avi`` per line;
  ``trainlist01.txt`` adds the 1-based class id) with its ``classInd.txt``;
- a CSV file of ``path,label`` rows (a ``path,label`` header line is optional).

Relative paths in a list or CSV are taken from the list's folder; for a split list, the
videos of the usual layout (``ucfTrainTestlist/`` next to ``UCF-101/``) are found as well.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from relgraph.errors import DatasetError, LabelError
from relgraph.io.labels import Labels

__all__ = ["VIDEO_EXTENSIONS", "VideoItem", "check_labels", "load_source"]

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"}
)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class VideoItem:
    """One video of a data set.

    Attributes
    ----------
    key
        Stable identifier: the path relative to the source's root, POSIX style. Results are
        stored under it and the index is keyed by it.
    path
        Where the video file is.
    label
        The true class name.
    """

    key: str
    path: Path
    label: str

    @property
    def folder(self) -> str:
        """Folder name of the video's results in a store (the key, made file-system safe)."""
        parts = [_SAFE.sub("_", part) or "_" for part in Path(self.key).with_suffix("").parts]
        return "/".join(part if part not in {".", ".."} else "_" for part in parts)


def load_source(
    source: str | os.PathLike, *, class_index: str | os.PathLike | None = None, root=None
) -> list[VideoItem]:
    """Read a data set source into videos sorted by key.

    Parameters
    ----------
    source
        A class-folder tree, a UCF-101 split list (``.txt``) or a ``path,label`` CSV.
    class_index
        ``classInd.txt`` for a split list; default: the one beside the list.
    root
        Folder that relative paths of a list or CSV start from (default: the list's folder;
        for a split list also its parent and the parent's ``UCF-101`` folder).

    Raises
    ------
    DatasetError
        The source does not exist, holds no video, or a line cannot be read (file and line
        are named).
    """
    path = Path(source)
    if not path.exists():
        raise DatasetError("the data set source does not exist.", file=path)
    if path.is_dir():
        items = _from_folders(path)
    elif path.suffix.lower() == ".csv":
        items = _from_csv(path, root)
    elif path.suffix.lower() == ".txt":
        items = _from_split_list(path, class_index, root)
    else:
        raise DatasetError(
            "cannot tell the kind of source: give a folder of class folders, a UCF-101 split "
            "list (.txt) or a CSV of path,label (.csv).",
            file=path,
        )
    if not items:
        raise DatasetError("the data set source holds no video.", file=path)
    keys: dict[str, VideoItem] = {}
    folders: dict[str, str] = {}
    for item in items:
        if item.key in keys:
            raise DatasetError(f"the video '{item.key}' is listed twice.", file=path)
        if item.folder in folders:
            raise DatasetError(
                f"the videos '{folders[item.folder]}' and '{item.key}' would share the result "
                f"folder '{item.folder}'; rename one.",
                file=path,
            )
        keys[item.key] = item
        folders[item.folder] = item.key
    return sorted(items, key=lambda item: item.key)


def check_labels(items: list[VideoItem], labels: Labels, *, source: str | os.PathLike) -> None:
    """Every true label must be one of the model's classes (case as in the label file)."""
    unknown = sorted({item.label for item in items if item.label not in labels.names})
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DatasetError(
            f"true labels {shown}{more} are not classes of the model (label file "
            f"{labels.file or '?'} has {len(labels)}: {', '.join(labels.names[:4])}, ...).",
            file=source,
        )


# --------------------------------------------------------------------------- layouts


def _from_folders(folder: Path) -> list[VideoItem]:
    items = []
    for class_folder in sorted(p for p in folder.iterdir() if p.is_dir()):
        for video in sorted(class_folder.rglob("*")):
            if video.is_file() and video.suffix.lower() in VIDEO_EXTENSIONS:
                key = video.relative_to(folder).as_posix()
                items.append(VideoItem(key, video, class_folder.name))
    return items


def _from_split_list(path: Path, class_index, root) -> list[VideoItem]:
    index_file = Path(class_index) if class_index else path.parent / "classInd.txt"
    if not index_file.is_file():
        raise DatasetError(
            f"a split list needs its classInd.txt; none at '{index_file}' (pass --class-index).",
            file=path,
        )
    try:
        classes = Labels.from_file(index_file)
    except LabelError as error:
        raise DatasetError(str(error)) from None
    rows = []
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) > 2:
            raise DatasetError(
                f"expected 'Class/video.avi' or 'Class/video.avi <id>', got {line!r}.",
                file=path,
                line=number,
            )
        relative = parts[0].replace("\\", "/")
        if len(parts) == 2:
            if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                raise DatasetError(
                    f"class id {parts[1]!r} is not in {index_file} (1..{len(classes)}).",
                    file=path,
                    line=number,
                )
            label = classes.names[int(parts[1]) - 1]
        else:
            if "/" not in relative:
                raise DatasetError(
                    f"{relative!r} names no class folder (expected 'Class/video.avi').",
                    file=path,
                    line=number,
                )
            label = relative.split("/")[0]
        if label not in classes.names:
            raise DatasetError(f"class {label!r} is not in {index_file}.", file=path, line=number)
        rows.append((relative, label))
    base = _list_root(path, root, [relative for relative, _ in rows])
    return [VideoItem(relative, base / relative, label) for relative, label in rows]


def _from_csv(path: Path, root) -> list[VideoItem]:
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.reader(handle), 1):
                cells = [cell.strip() for cell in row]
                if not any(cells):
                    continue
                if number == 1 and [c.lower() for c in cells] == ["path", "label"]:
                    continue
                if len(cells) != 2 or not cells[0] or not cells[1]:
                    raise DatasetError(
                        f"expected 'path,label', got {','.join(row)!r}.", file=path, line=number
                    )
                rows.append((cells[0].replace("\\", "/"), cells[1]))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read the CSV: {error}.", file=path) from None
    base = Path(root) if root else path.parent
    items = []
    for relative, label in rows:
        video = Path(relative) if Path(relative).is_absolute() else base / relative
        key = relative if not Path(relative).is_absolute() else video.as_posix().lstrip("/")
        items.append(VideoItem(key, video, label))
    return items


def _list_root(path: Path, root, relatives: list[str]) -> Path:
    if root:
        return Path(root)
    candidates = [path.parent, path.parent.parent, path.parent.parent / "UCF-101"]
    probe = relatives[:20]
    for candidate in candidates:
        if probe and all((candidate / relative).exists() for relative in probe):
            return candidate
    for candidate in candidates:  # a partial copy: the folder where any of them is
        if any((candidate / relative).exists() for relative in probe):
            return candidate
    return path.parent


def _lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the list: {error}.", file=path) from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield number, line.strip()
