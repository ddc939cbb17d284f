"""Atomic output writing: a file appears complete at its final path, or not at all.

Every writer goes through :func:`atomic_path`: it writes to a temporary file beside the
target (same folder, so ``os.replace`` is atomic; same suffix, so libraries that infer the
format from the extension still work) and moves it into place only once writing succeeded.
An interrupted run therefore never leaves a truncated figure or array file behind, and an
existing file survives a writer that fails midway.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import re
import shutil
import signal
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from relgraph.errors import OutputError

__all__ = [
    "atomic_path",
    "OutputSet",
    "atomic_write_bytes",
    "check_out_dir",
    "check_out_file",
    "disk_full",
    "ensure_out_dir",
    "json_text",
    "kill_point",
    "write_json",
    "write_npz",
]


#: Test hook: ``RELGRAPH_TEST_KILL=point:n`` sends SIGKILL to the process the n-th time it
#: reaches ``point`` (see :func:`kill_point`); with ``RELGRAPH_TEST_KILL_RANK=r`` only rank r
#: dies. The data-set runs' resumability tests use it; unset, a kill point does nothing.
KILL_VARIABLE = "RELGRAPH_TEST_KILL"
_reached: dict[str, int] = {}


def kill_point(point: str) -> None:
    """Kill this process with SIGKILL here if ``RELGRAPH_TEST_KILL`` asks for it."""
    wanted = os.environ.get(KILL_VARIABLE)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    only_rank = os.environ.get(KILL_VARIABLE + "_RANK")
    if name != point or (only_rank is not None and only_rank != os.environ.get("RANK", "0")):
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def ensure_out_dir(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents) and check that files can be written in it.

    Parameters
    ----------
    path
        The folder.

    Returns
    -------
    Path
        The folder as a ``Path``.

    Raises
    ------
    OutputError
        If the folder cannot be created (e.g. a regular file is in the way) or written to.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(
            "cannot create the output folder: a file that is not a folder already has this name",
            file=folder,
        ) from None
    except OSError as error:
        raise OutputError(
            f"cannot create the output folder: {error.strerror or error}", file=folder
        ) from None
    # mkdir succeeding says nothing about write permission (the folder may already exist,
    # read-only, or sit on a read-only mount), so probe with a real file.
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(
            f"cannot write files in the output folder: {error.strerror or error}", file=folder
        ) from None
    return folder


def check_out_dir(path: str | os.PathLike) -> Path:
    """Check, creating nothing, that an output folder exists and can be written, or can be
    created: for commands that check every argument before they make anything.

    Raises
    ------
    OutputError
        A file that is not a folder is in the way, or the folder (or the nearest existing
        folder above it) cannot be written.
    """
    folder = Path(path)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(
            "cannot create the output folder: a file that is not a folder already has the "
            f"name '{existing}'",
            file=folder,
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in '{existing}': permission denied", file=folder)
    return folder


def check_out_file(path: str | os.PathLike) -> Path:
    """Check, creating nothing, that a file can be written at ``path`` (its folder exists and
    can be written, or can be created; no folder has its name).

    Raises
    ------
    OutputError
        Naming the file and the reason.
    """
    target = Path(path)
    if not target.name or target.is_dir():
        raise OutputError("cannot write the file: a folder has this name", file=target)
    try:
        check_out_dir(target.parent)
    except OutputError as error:
        raise OutputError(f"cannot write the file: {error.message}", file=target) from None
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError("cannot write the file: permission denied", file=target)
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; move it to ``path`` only if the block succeeds.

    The temporary file lies in the same folder as ``path`` and has the same suffix. It exists
    (empty) when yielded, so a writer may open it or overwrite it by name. On an exception the
    temporary file is removed, ``path`` is left as it was, and the exception propagates.
    Missing parent folders are created.

    Parameters
    ----------
    path
        The final location of the file.

    Yields
    ------
    Path
        The temporary file to write.

    Raises
    ------
    OutputError
        If the folder of ``path`` cannot be created or written to, or the file cannot be moved
        into place (e.g. ``path`` is an existing folder).
    """
    target = Path(path)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            dir=folder, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}"
        )
    except OSError as error:
        raise OutputError(
            f"cannot write the file: {error.strerror or error}", file=target
        ) from None
    os.close(handle)
    temporary = Path(temporary_name)
    try:
        try:
            yield temporary
            _flush_to_disk(temporary)
        except OSError as error:
            if error.errno in _DISK_FULL:
                raise disk_full(target, error) from None
            raise
        # mkstemp creates files readable by the owner only; give the result the permissions
        # any other new file would get.
        os.chmod(temporary, 0o666 & ~_umask())
        try:
            os.replace(temporary, target)
        except OSError as error:
            raise OutputError(
                f"cannot move the finished file into place: {error.strerror or error}",
                file=target,
            ) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


#: the errors of a write that ran out of room: no space, over quota, file too large
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full(path: str | os.PathLike, error: OSError) -> OutputError:
    """The error for a write to ``path`` that ran out of room (``ENOSPC``, ``EDQUOT``,
    ``EFBIG``): one line naming the file and its file system's free space."""
    free = ""
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(Path(path).parent)
        free = f" ({usage.free / 1e6:.1f} MB free there now)"
    return OutputError(
        f"the disk filled up while writing this file: {error.strerror or error}{free}; "
        "free some space or choose another output folder",
        file=path,
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path
        The file to write.
    data
        Its complete contents.

    Returns
    -------
    Path
        ``path`` as a ``Path``.
    """
    target = Path(path)
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
    return target


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON, atomically.

    NumPy scalars and arrays, torch tensors (anything with ``.tolist()``), paths, tuples and
    sets are converted; dictionary keys that are NumPy scalars become strings as usual.
    The JSON is strict (RFC 8259): a float that is NaN or infinite is written as ``null``
    (:func:`json_text`), never as the ``NaN``/``Infinity`` that strict readers refuse.

    Parameters
    ----------
    path
        The file to write.
    obj
        The data.

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    OutputError
        If ``obj`` holds a value JSON cannot represent (the message names its type).
    """
    target = Path(path)
    try:
        text = json_text(obj, indent=2)
    except OutputError as error:
        raise OutputError(error.message, file=target) from None
    return atomic_write_bytes(target, (text + "\n").encode("utf-8"))


def json_text(
    obj: Any,
    *,
    indent: int | None = None,
    compact: bool = False,
    sort_keys: bool = False,
    unknown_as_text: bool = False,
) -> str:
    """``obj`` as strict JSON text: converted as in :func:`write_json`, every non-finite float
    (NaN, ±Infinity) written as ``null``, and ``allow_nan=False`` as the guard.

    Parameters
    ----------
    obj
        The data.
    indent
        As in :func:`json.dumps`.
    compact
        No spaces after separators (one row of a ``.jsonl`` file).
    sort_keys
        As in :func:`json.dumps`.
    unknown_as_text
        Write a value of a type JSON cannot represent as its ``str`` instead of refusing it.

    Raises
    ------
    OutputError
        If ``obj`` holds a value JSON cannot represent (the message names its type) or
        refers to itself.
    """
    separators = (",", ":") if compact else None
    try:
        return json.dumps(
            _to_json(obj, unknown_as_text),
            indent=indent,
            ensure_ascii=False,
            allow_nan=False,
            separators=separators,
            sort_keys=sort_keys,
        )
    except (RecursionError, TypeError, ValueError) as error:
        raise OutputError(f"cannot write as JSON: {error}") from None


def write_npz(path: str | os.PathLike, /, **arrays: Any) -> Path:
    """Write named arrays to a compressed ``.npz`` file, atomically.

    Accepts NumPy arrays, torch tensors (on any device, with or without grad; bfloat16 is
    stored as float32) and anything ``np.asarray`` accepts. Object arrays are refused so
    the file loads with ``np.load(..., allow_pickle=False)``. The file is written exactly at
    ``path``: no ``.npz`` suffix is appended.

    Parameters
    ----------
    path
        The file to write.
    **arrays
        The arrays, by the name they get in the file.

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    OutputError
        If an array cannot be stored (the message names it).
    """
    target = Path(path)
    converted = {}
    for name, value in arrays.items():
        array = _to_numpy(value)
        if array.dtype.hasobject:
            raise OutputError(
                f"array '{name}' has dtype object, which .npz cannot store without pickling",
                file=target,
            )
        converted[name] = array
    with atomic_path(target) as temporary, open(temporary, "wb") as handle:
        # Written with zipfile directly, as np.savez does, so that no array name can clash
        # with a keyword of np.savez and no suffix is appended to the name.
        with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, array in converted.items():
                with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        kill_point("npz")  # written, not yet moved into place: a kill leaves the temporary
    return target


def _to_numpy(value: Any) -> np.ndarray:
    """Convert a torch tensor or array-like to a NumPy array on the CPU."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach().cpu()
        try:
            return tensor.numpy()
        except TypeError:
            # dtypes NumPy lacks (bfloat16, float8 ...) are widened.
            return tensor.float().numpy()
    return np.asarray(value)


def _to_json(value: Any, unknown_as_text: bool = False) -> Any:
    """Recursively convert ``value`` to types ``json`` can write (non-finite floats: None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN or Infinity
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {_json_key(key): _to_json(item, unknown_as_text) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item, unknown_as_text) for item in value]
    if isinstance(value, (set, frozenset)):
        return [_to_json(item, unknown_as_text) for item in sorted(value, key=repr)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "detach") and hasattr(value, "tolist"):
        return _to_json(value.detach().cpu().tolist(), unknown_as_text)
    if hasattr(value, "tolist"):
        # NumPy scalars and arrays: tolist gives Python scalars or nested lists.
        return _to_json(value.tolist(), unknown_as_text)
    if unknown_as_text:
        return str(value)
    raise OutputError(
        f"cannot write as JSON: a value of type {type(value).__name__} is not JSON serializable"
    )


def _json_key(key: Any) -> Any:
    """Convert a dictionary key to a type ``json`` accepts as a key."""
    if hasattr(key, "item") and not isinstance(key, (str, bytes)):
        key = key.item()
    if isinstance(key, float) and not math.isfinite(key):
        return str(key)
    if key is None or isinstance(key, (bool, int, float, str)):
        return key
    return str(key)


def _flush_to_disk(path: Path) -> None:
    """Flush a finished file to stable storage before it replaces the old one."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:
        # Some file systems (pipes, certain network mounts) do not support fsync.
        pass
    finally:
        os.close(descriptor)


@functools.cache
def _umask() -> int:
    """The process's file-creation mask (read once: os.umask can only read it by setting it)."""
    current = os.umask(0)
    os.umask(current)
    return current


class OutputSet:
    """A set of outputs that appears in its folder whole, or not at all.

    The files are written into a hidden staging folder inside ``out``; :meth:`commit` moves
    them into ``out`` (a file or folder at a time, with ``os.replace``) and removes what an
    earlier run left there of relgraph's own outputs (the names ``owned`` matches) that this
    set does not hold, so that no stale ``clip-NNN`` folder or figure survives a rerun.
    Everything else in ``out`` (a user's own files) is left alone. Leaving the block without
    a commit (an error, an interrupt) removes the staging folder and leaves ``out`` as it was.
    A run killed outright (SIGKILL) leaves a hidden ``.relgraph-staging-*`` folder behind.

    Parameters
    ----------
    out
        The output folder; created on entering the block.
    owned
        Regular expression of the names (files or folders directly in ``out``) that are this
        kind of run's outputs.
    last
        Names moved into place last (a summary that says the set is complete).
    """

    def __init__(self, out: str | os.PathLike, owned: str, *, last: tuple[str, ...] = ()) -> None:
        self.out = Path(out)
        self.owned = re.compile(owned)
        self.last = tuple(last)
        self.staging: Path = self.out
        self.committed: list[Path] = []

    def __enter__(self) -> OutputSet:
        ensure_out_dir(self.out)
        try:
            self.staging = Path(tempfile.mkdtemp(dir=self.out, prefix=".relgraph-staging-"))
        except OSError as error:
            if error.errno in _DISK_FULL:
                raise disk_full(self.out / ".relgraph-staging", error) from None
            raise OutputError(
                f"cannot write in the output folder: {error.strerror or error}", file=self.out
            ) from None
        return self

    def final(self, path: str | os.PathLike) -> Path:
        """Where a file of the staging folder ends up once committed."""
        return self.out / Path(path).relative_to(self.staging)

    def commit(self) -> list[Path]:
        """Move the staged outputs into ``out`` and remove the stale ones; returns the final
        paths of the entries moved (files and folders directly in ``out``)."""
        staged = sorted(self.staging.iterdir(), key=lambda p: (p.name in self.last, p.name))
        names = {p.name for p in staged}
        try:
            for stale in sorted(self.out.iterdir()):
                if stale.name not in names and self.owned.fullmatch(stale.name):
                    _remove(stale)
            for entry in staged:
                target = self.out / entry.name
                if entry.is_dir() and target.is_dir() and not target.is_symlink():
                    _remove(target)
                os.replace(entry, target)
                self.committed.append(target)
        except OSError as error:
            raise OutputError(
                f"cannot move the finished outputs into place: {error.strerror or error}",
                file=self.out,
            ) from None
        return list(self.committed)

    def __exit__(self, *exc_info) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
