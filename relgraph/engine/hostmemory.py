"""Where the C allocator's freed memory goes: back to the system, or kept for reuse.

glibc keeps freed blocks below its (self-raising) mmap threshold in its heap, fragmented among
blocks still in use, so a process's resident memory can stay hundreds of MiB above what its
live tensors hold. The memory mode (``Graph.cache_policy = "none"``) calls ``release_freed``
after each node of the forward and reverse passes: ``malloc_trim(0)`` returns every free page
to the system. Elsewhere (another C library, another system) it does nothing. It changes no
value, only where freed memory goes; it costs a walk over the allocator's free lists.

The other way round, ``reuse_freed`` keeps freed memory for the next tensor: glibc serves
a block above 32 MiB that its heap has no room for with fresh ``mmap`` pages, so a loop of
forward passes whose activations exceed that size (the perturbation metrics' batches) faults
every page in again on every pass. Within ``reuse_freed`` every block comes from the heap
and freed blocks stay there (the kernel may still reclaim idle pages).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_UNSET = object()
_trim: Callable[[int], int] | None | object = _UNSET
_mallopt: Callable[[int, int], int] | None | object = _UNSET

# mallopt parameters (malloc.h) and glibc's defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _libc_function(name: str, argtypes: list) -> Callable | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = getattr(libc, name)  # glibc only: musl and others have no such symbols
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


def _load() -> Callable[[int], int] | None:
    return _libc_function("malloc_trim", [ctypes.c_size_t])


def release_freed() -> None:
    """Return the allocator's free memory to the system (glibc ``malloc_trim``; else no-op)."""
    global _trim
    if _trim is _UNSET:
        _trim = _load()
    if _trim is not None:
        _trim(0)  # type: ignore[operator]


@contextmanager
def reuse_freed() -> Iterator[None]:
    """Within it, the allocator serves every block from its heap and keeps freed ones for the
    next request (glibc ``mallopt``: no ``mmap`` blocks, no trimming); on leaving, glibc's
    defaults again, and ``release_freed``. Elsewhere it does nothing. No value changes."""
    global _mallopt
    if _mallopt is _UNSET:
        _mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    mallopt = _mallopt
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_MAX, 0)  # type: ignore[operator]
    mallopt(M_TRIM_THRESHOLD, 2**30)  # type: ignore[operator]
    try:
        yield
    finally:
        mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)  # type: ignore[operator]
        mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)  # type: ignore[operator]
        release_freed()
