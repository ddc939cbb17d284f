"""Baseline maps that a relevance map should beat: they know nothing of the class.

Each returns maps ``(B, T, H, W)`` for clips ``(B, C, T, H, W)``, like the discriminative
method's (channels summed).
"""

from __future__ import annotations

import torch

from relgraph.engine.reverse import explain
from relgraph.errors import ArgumentError, ShapeError

__all__ = [
    "frame_difference",
    "gradient",
    "gradient_times_input",
    "integrated_gradients",
    "random_map",
]

#: Riemann steps of :func:`integrated_gradients` by default.
DEFAULT_IG_STEPS = 16


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


def integrated_gradients(
    graph,
    clips: torch.Tensor,
    targets: torch.Tensor,
    *,
    baseline: torch.Tensor | str = "mean",
    steps: int = DEFAULT_IG_STEPS,
    batch_size: int = 64,
    channels: bool = False,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017) from a baseline clip, summed over
    channels: ``(x − x̄) ⊙ (1/n) Σ_k ∇f((x̄ + α_k (x − x̄)))`` with the midpoints
    ``α_k = (k − ½)/n``, through the ops' explicit vector-Jacobian products (no autograd).

    ``baseline`` is a clip batch shaped like ``clips`` or the name of a static part
    (``mean``, ``median``, ``first``: :func:`relgraph.methods.decomposed.static_part`), so
    that the map explains ``f(x) − f(static)``, which it sums to as ``steps`` grows.
    ``channels=True`` returns the channel-resolved attribution ``(B, C, T, H, W)``.
    """
    from relgraph.methods.decomposed import static_part

    _check(clips)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ArgumentError(f"steps must be a positive integer, got {steps!r}")
    reference = static_part(clips, baseline) if isinstance(baseline, str) else baseline
    if reference.shape != clips.shape:
        raise ShapeError(
            f"the baseline must be shaped like the clips {list(clips.shape)}, "
            f"got {list(reference.shape)}"
        )
    targets = torch.as_tensor(targets, device=clips.device).reshape(-1)
    difference = clips - reference
    total = torch.zeros(
        clips.shape,
        dtype=torch.float64 if clips.dtype == torch.float64 else torch.float32,
        device=clips.device,
    )
    alphas = [(k + 0.5) / steps for k in range(steps)]
    per_call = max(1, batch_size // len(clips))
    for begin in range(0, steps, per_call):
        chosen = alphas[begin : begin + per_call]
        points = torch.cat([reference + a * difference for a in chosen])
        grads = explain(graph, points, targets.repeat(len(chosen)), rules="gradient")
        total += grads.reshape(len(chosen), *clips.shape).sum(dim=0).to(total.dtype)
    attribution = difference.to(total.dtype) * total / steps
    return attribution if channels else attribution.sum(dim=1)
