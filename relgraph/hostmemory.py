"""Give the system back the memory the C allocator keeps after tensors are freed.

glibc keeps freed blocks below its (self-raising) mmap threshold in its heap, fragmented among
blocks still in use, so a process's resident memory can stay hundreds of MiB above what its
live tensors hold. The memory mode (``Graph.cache_policy = "none"``) calls ``release_freed``
after each node of the forward and reverse passes: ``malloc_trim(0)`` returns every free page
to the system. Elsewhere (another C library, another system) it does nothing. It changes no
value, only where freed memory goes; it costs a walk over the allocator's free lists.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

_UNSET = object()
_trim: Callable[[int], int] | None | object = _UNSET


def _load() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only: musl and others have no such symbol
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed() -> None:
    """Return the allocator's free memory to the system (glibc ``malloc_trim``; else no-op)."""
    global _trim
    if _trim is _UNSET:
        _trim = _load()
    if _trim is not None:
        _trim(0)  # type: ignore[operator]
