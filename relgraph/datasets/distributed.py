"""Running a data set over processes and machines with ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` then joins the process group (``gloo`` on CPU, ``nccl`` on GPU, with torchrun's
rendezvous, so several machines work the same way as one). Without torchrun it is a group of
one and every collective is the identity. Work is split by :func:`shard`: deterministic and
balanced by cost (longest first onto the least loaded rank).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Context", "setup", "shard"]

#: How long a rank waits in a collective (the final gather waits for the slowest rank).
TIMEOUT = datetime.timedelta(hours=48)


@dataclass
class Context:
    """This process's place in the run.

    Attributes
    ----------
    rank, world_size, local_rank
        As torchrun sets them (0, 1, 0 without torchrun).
    backend
        ``gloo``, ``nccl``, or None when running alone.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.backend:
            torch.distributed.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (pickled; for small Python objects)."""
        if not self.backend:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def all_ok(self, ok: bool) -> bool:
        """True when ``ok`` holds on every rank."""
        return all(self.all_gather(bool(ok)))

    def add_done(self, count: int) -> int:
        """Add to the run-wide count of finished items; returns the new total (rank 0 prints
        progress for all ranks from it). Uses the rendezvous key-value store."""
        if not self.backend:
            self._local = getattr(self, "_local", 0) + count
            return self._local
        store = _default_store()
        if store is None:  # no shared counter: estimate from this rank's share
            self._local = getattr(self, "_local", 0) + count
            return self._local * self.world_size
        return int(store.add("relgraph/done", count))

    def close(self) -> None:
        if self.backend and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(device: str) -> Context:
    """Join torchrun's process group if launched by it (``WORLD_SIZE`` > 1).

    Parameters
    ----------
    device
        ``cpu`` (gloo) or ``cuda`` (nccl; each process uses GPU ``LOCAL_RANK``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size <= 1:
        return Context()
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", local_rank)
    torch.distributed.init_process_group(**kwargs)
    return Context(rank, world_size, local_rank, backend)


def shard(costs: Sequence[float], world_size: int) -> list[int]:
    """The rank of each work unit: longest processing time first, onto the least loaded rank.

    Deterministic (ties go to the earlier unit and the lower rank); the largest load is at
    most 4/3 of the optimum (Graham, 1969).

    Parameters
    ----------
    costs
        The cost of each unit (e.g. its frames and clips).
    world_size
        Number of ranks.
    """
    loads = [0.0] * world_size
    ranks = [0] * len(costs)
    for unit in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        ranks[unit] = rank
        loads[rank] += costs[unit]
    return ranks


def _default_store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001 - the counter is optional
        return None
