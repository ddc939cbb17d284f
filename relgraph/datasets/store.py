"""The result store of a data-set run: one folder per video, a manifest, and the index.

Layout of ``STORE/``::

    store.json                       format, relgraph version, options and their fingerprint
    index.jsonl                      one JSON row per video, in source order (rank 0 writes it)
    videos/<Class>/<video>/
        relevance.npz                maps, raw relevance, frames, predictions (all clips)
        grid.png, animation.gif      with --figures summary|all
        row.json                     the video's index row: written last, it marks it done

Every file is written atomically (:mod:`relgraph.io.outputs`). ``row.json`` is the commit
record: a video is done when, and only when, its ``row.json`` exists, and it is written after
all the video's other files. A run killed at any point therefore leaves finished videos
(with their row) and videos without a row, whose files a later run overwrites; temporary
files of interrupted atomic writes are removed when a run starts. ``index.jsonl`` is the
merge of the rows and is rewritten whole at the end of every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from relgraph.errors import OutputError, StoreError
from relgraph.io.outputs import atomic_write_bytes, ensure_out_dir, json_text, write_json
from relgraph.version import __version__

__all__ = [
    "STORE_FORMAT",
    "Store",
    "file_digest",
    "fingerprint",
    "read_index",
]

#: Version of the store layout; a store of another format is refused.
STORE_FORMAT = 1

MANIFEST = "store.json"
INDEX = "index.jsonl"
ROW = "row.json"
#: the writers' lock (``Store.lock``): held by the one process that writes the store
LOCK = ".writer.lock"
VIDEOS = "videos"


def fingerprint(options: Mapping[str, Any]) -> str:
    """SHA-256 of the options' canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (weights are fingerprinted by content, not by name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_index(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of an ``index.jsonl`` (stdlib only; pandas: ``pd.read_json(path, lines=True)``)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class Store:
    """A result store (see the module docstring for the layout).

    Parameters
    ----------
    root
        The store's folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------- manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, None for a store not created yet."""
        if not self.manifest_path.exists():
            # (another rank's manifest being written atomically shows as a hidden temporary)
            if self.root.is_dir() and any(
                not (p.name.startswith(".") and ".tmp" in p.name) and p.name != LOCK
                for p in self.root.iterdir()
            ):
                raise StoreError(
                    f"the folder is not empty but has no {MANIFEST}: it is not a relgraph "
                    "store. Pick a new --out or an empty folder.",
                    file=self.root,
                )
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise StoreError(
                f"cannot read the store manifest: {error}.", file=self.manifest_path
            ) from None
        if not isinstance(manifest, dict) or "fingerprint" not in manifest:
            raise StoreError("the store manifest is damaged.", file=self.manifest_path)
        return manifest

    def check(self, options: Mapping[str, Any]) -> bool:
        """Check that the store was made with ``options``; False when it does not exist yet.

        Raises
        ------
        StoreError
            Another store format, or other options (the differing ones are named).
        """
        manifest = self.read_manifest()
        if manifest is None:
            return False
        if manifest.get("format") != STORE_FORMAT:
            raise StoreError(
                f"the store has format {manifest.get('format')!r} (relgraph "
                f"{manifest.get('relgraph', '?')}); this relgraph writes format {STORE_FORMAT}. "
                "Use a new --out.",
                file=self.root,
            )
        if manifest["fingerprint"] != fingerprint(options):
            old = manifest.get("options", {})
            differ = sorted(
                key for key in set(old) | set(options) if old.get(key) != options.get(key)
            )
            shown = "; ".join(
                f"{key}: {_short(old.get(key))} -> {_short(options.get(key))}" for key in differ
            )
            raise StoreError(
                f"the store was made with other options ({shown or 'fingerprint differs'}); "
                "results are never mixed: use a new --out, or the store's options.",
                file=self.root,
            )
        return True

    def create(self, options: Mapping[str, Any]) -> None:
        """Create the folder and write the manifest (the caller checked it was absent)."""
        ensure_out_dir(self.root)
        write_json(
            self.manifest_path,
            {
                "format": STORE_FORMAT,
                "relgraph": __version__,
                "fingerprint": fingerprint(options),
                "options": dict(options),
            },
        )

    def check_writable(self) -> None:
        """Fail early, with a one-line error, where the store cannot be written."""
        ensure_out_dir(self.root)
        if (self.root / VIDEOS).exists():
            ensure_out_dir(self.root / VIDEOS)

    def check_unlocked(self) -> None:
        """Refuse now, before any work, when another run holds the writer lock."""
        if (self.root / LOCK).is_file():
            with self.lock(create=False):
                pass

    @contextlib.contextmanager
    def lock(self, *, create: bool = True) -> Iterator[None]:
        """Hold the store's writer lock for the block, or refuse at once.

        The lock is ``flock`` on ``STORE/.writer.lock``, which the operating system releases
        when the holder exits, however it ends (no stale lock after a crash or SIGKILL).
        The file records the holder's host and process id for the error message.

        Parameters
        ----------
        create
            Create the folder and the lock file if absent, and record this process as the
            holder; False only probes an existing lock file.

        Raises
        ------
        StoreError
            Another process holds the lock: a run is writing this store.
        """
        if create:
            ensure_out_dir(self.root)
        path = self.root / LOCK
        try:
            handle = open(path, "a+" if create else "r+", encoding="utf-8")
        except OSError as error:
            raise StoreError(
                f"cannot open the store's lock file: {error.strerror or error}", file=path
            ) from None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StoreError(
                    f"another run is writing this store ({holder}); wait for it to finish, "
                    "or use another --out",
                    file=self.root,
                ) from None
            except OSError as error:
                raise StoreError(
                    f"cannot lock the store: {error.strerror or error}", file=path
                ) from None
            try:
                if create:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
                    handle.flush()
                yield
            finally:
                if create:
                    with contextlib.suppress(OSError):
                        handle.truncate(0)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # ----------------------------------------------------------------- videos

    def video_dir(self, folder: str) -> Path:
        return self.root / VIDEOS / folder

    def row_path(self, folder: str) -> Path:
        return self.video_dir(folder) / ROW

    def done_rows(self, folders: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Rows of the videos (by result folder) that are done: those with a ``row.json``."""
        rows = {}
        for folder in folders:
            path = self.row_path(folder)
            if path.is_file():
                try:
                    rows[folder] = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # unreadable: the video is done again
        return rows

    def write_row(self, folder: str, row: Mapping[str, Any]) -> None:
        """Commit a video: its row, written after all its other files."""
        write_json(self.row_path(folder), row)

    def remove_temporaries(self) -> int:
        """Delete the temporary files SIGKILLed atomic writes left; returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for path in self.root.rglob(".*.tmp*"):
            if path.is_file():
                try:
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def write_index(self, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write ``index.jsonl`` whole, atomically (one compact JSON object per line)."""
        text = "".join(json_text(row, compact=True, unknown_as_text=True) + "\n" for row in rows)
        try:
            return atomic_write_bytes(self.index_path, text.encode("utf-8"))
        except OSError as error:
            raise OutputError(f"cannot write the index: {error}", file=self.index_path) from None


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]
