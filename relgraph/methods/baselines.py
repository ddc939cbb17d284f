"""Baseline maps that a relevance map should beat: they know nothing of the class.

Each returns maps ``(B, T, H, W)`` for clips ``(B, C, T, H, W)``, like the discriminative
method's (channels summed).
"""

from __future__ import annotations

import torch

from relgraph.engine.reverse import explain
from relgraph.errors import ShapeError

__all__ = ["frame_difference", "gradient", "gradient_times_input", "random_map"]


def random_map(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform random values in [0, 1), drawn on the CPU from ``seed`` (the same maps on
    every device), the floor any ordering of voxels should beat."""
    _check(clips)
    generator = torch.Generator().manual_seed(int(seed))
    shape = (clips.shape[0], *clips.shape[2:])
    return torch.rand(shape, generator=generator, dtype=torch.float64).to(
        device=clips.device, dtype=clips.dtype
    )


def frame_difference(clips: torch.Tensor) -> torch.Tensor:
    """Frame-difference magnitude: ``Σ_c |x[c, t] − x[c, t−1]|`` for frame ``t`` (frame 0
    takes frame 1's), a motion detector that knows nothing of the class."""
    _check(clips)
    if clips.shape[2] < 2:
        raise ShapeError("frame difference needs clips of at least 2 frames")
    difference = (clips[:, :, 1:] - clips[:, :, :-1]).abs().sum(dim=1)  # (B, T-1, H, W)
    return torch.cat([difference[:, :1], difference], dim=1)


def _check(clips: torch.Tensor) -> None:
    if not isinstance(clips, torch.Tensor) or clips.dim() != 5:
        shape = list(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
        raise ShapeError(f"clips must be a batch (B, C, T, H, W), got {shape}")


def gradient(graph, clips: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """∂ logit_target / ∂ x summed over channels (sensitivity, Simonyan et al. 2014), through
    the ops' explicit vector-Jacobian products (the ``gradient`` preset; no autograd)."""

    return explain(graph, clips, targets, rules="gradient").sum(dim=1)


def gradient_times_input(graph, clips: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Gradient × input summed over channels (Shrikumar et al. 2016), no autograd."""

    return (explain(graph, clips, targets, rules="gradient") * clips).sum(dim=1)
