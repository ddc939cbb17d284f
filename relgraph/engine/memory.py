"""The memory preflight: estimate an explanation's peak memory from the graph, before anything
is allocated, and refuse a run that cannot fit.

The estimate (bytes) for a batch of ``B`` samples is::

    B × ( Σ_{n kept} |n| · s_act  +  k · max_n |n| · s_rel )

with ``|n|`` a node's output size per sample (from the shapes compiled into the graph),
``kept`` the nodes whose activations the forward pass keeps for the rules (the input and the
output included), ``s_act`` the graph's element size, ``s_rel`` that of the relevance
(float32 through a bfloat16 graph, else the graph's), and ``k = 4`` the reverse pass's
working tensors at the largest node (relevance in, relevance out, the rule's denominator and
quotient). The memory mode (``Graph.cache_policy = "none"``) keeps the same ``k``: it saves
on wide layers' weight-derived tensors and temporaries, not on activations, and measured
against the process's peak (``benchmarks/memory_preflight.py``) it did not stay below an
estimate with a smaller ``k``. Weights are not counted: they are already in memory.

The available memory is the system's ``MemAvailable`` (and the cgroup's limit, in a
container) on the CPU, ``torch.cuda.mem_get_info`` plus what torch's allocator holds free on
a CUDA device. Where it cannot be read, nothing is refused.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from relgraph.errors import ResourceError

if TYPE_CHECKING:  # annotations only: graph.py is below this module
    from relgraph.engine.graph import Graph

__all__ = [
    "MemoryEstimate",
    "available_bytes",
    "check_memory",
    "estimate_peak",
    "format_bytes",
]

#: working tensors of the reverse pass at its largest node (see the module docstring)
WORKING_TENSORS = 4
#: the same in the memory mode (``cache_policy = "none"``): no fewer (module docstring)
WORKING_TENSORS_MEMORY_MODE = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """An explanation's estimated peak memory, in bytes, and its parts."""

    batch: int
    activations: int
    relevance: int
    memory_mode: bool

    @property
    def total(self) -> int:
        return self.activations + self.relevance

    def describe(self) -> str:
        mode = "memory mode" if self.memory_mode else "memory mode off"
        return (
            f"a batch of {self.batch} needs an estimated {format_bytes(self.total)} "
            f"(activations {format_bytes(self.activations)}, relevance "
            f"{format_bytes(self.relevance)}; {mode})"
        )


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


def estimate_peak(graph: Graph, batch: int, kept: Iterable[str] | None = None) -> MemoryEstimate:
    """The estimated peak memory of explaining ``batch`` samples (module docstring formula).

    Parameters
    ----------
    graph
        The compiled model (its shapes and dtype).
    batch
        Samples explained at once.
    kept
        The nodes whose activations the rules read; None: every node (an upper bound).
    """
    sizes = {node: _numel(graph.shape_of(node)) for node in graph.order}
    kept_nodes = set(graph.order if kept is None else kept) | {graph.input, graph.output}
    activation_size = torch.empty((), dtype=graph.dtype).element_size()
    relevance_size = 8 if graph.dtype == torch.float64 else 4
    memory_mode = graph.cache_policy == "none"
    working = WORKING_TENSORS_MEMORY_MODE if memory_mode else WORKING_TENSORS
    activations = sum(sizes[node] for node in kept_nodes if node in sizes) * activation_size
    relevance = working * max(sizes.values()) * relevance_size
    return MemoryEstimate(
        batch=int(batch),
        activations=int(batch) * activations,
        relevance=int(batch) * relevance,
        memory_mode=memory_mode,
    )


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for a new allocation on ``device``, or None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free + max(cached, 0))
    if device.type != "cpu":
        return None
    found = [_meminfo_available()]
    found.append(_cgroup_available())
    known = [value for value in found if value is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_available() -> int | None:
    """The cgroup (v2, else v1) memory limit less its use, or None without a limit."""
    candidates = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    )
    for limit_file, usage_file in candidates:
        with contextlib.suppress(OSError, ValueError):
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max":
                return None
            limit = int(limit_text)
            if limit >= 1 << 60:  # v1's "no limit"
                return None
            return max(limit - int(Path(usage_file).read_text().strip()), 0)
    return None


def check_memory(
    graph: Graph,
    batch: int,
    kept: Iterable[str] | None = None,
    *,
    what: str = "explaining",
) -> MemoryEstimate:
    """Refuse, before anything is allocated, an explanation whose estimated peak
    (:func:`estimate_peak`) exceeds the memory available on the graph's device.

    Turned off by ``memory_check=False`` (Python) or ``--no-memory-check`` (command line),
    and by the environment variable ``RELGRAPH_NO_MEMORY_CHECK=1``.

    Raises
    ------
    ResourceError
        The estimate exceeds the available memory; the message gives both.
    """
    estimate = estimate_peak(graph, batch, kept)
    if os.environ.get("RELGRAPH_NO_MEMORY_CHECK", "") not in ("", "0"):
        return estimate
    available = available_bytes(graph.device)
    if available is not None and estimate.total > available:
        raise ResourceError(
            f"{what} '{graph.name}': {estimate.describe()}, but {format_bytes(available)} is "
            f"available on {graph.device}. Explain fewer samples at once (batch_size / "
            "--batch-size), use the memory mode (graph.cache_policy = 'none'), or skip this "
            "check with memory_check=False / --no-memory-check",
            file=graph.file,
        )
    return estimate


def format_bytes(count: int) -> str:
    """``1.5 GB``: decimal units, as memory is sold."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
