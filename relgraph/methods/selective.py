"""Selective relevance (Hiley et al. 2020, "Explaining motion relevance for activity
recognition in video deep learning models"): the part of a spatio-temporal explanation whose
relevance changes quickly over time.

The explanation (channels summed) is filtered with a 3 × 3 × 3 Sobel operator that
differentiates along time and smooths along both image axes (``[1, 0, −1] ⊗ [1, 2, 1] ⊗
[1, 2, 1]``, zero padding of one); positions where the absolute temporal derivative exceeds
``σ`` standard deviations of that derivative (over the clip) keep their relevance, every other
position is set to 0. ``σ`` is the authors' "degree of selectivity".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from relgraph.errors import ArgumentError

__all__ = ["DEFAULT_SIGMA", "selective_mask", "temporal_sobel"]

#: Standard deviations of the temporal derivative above which relevance counts as motion's.
DEFAULT_SIGMA = 1.0


def temporal_sobel(maps: torch.Tensor) -> torch.Tensor:
    """``|∂R/∂t|`` of maps ``(B, T, H, W)`` by the 3-D Sobel operator along time (zero
    padding: the first and last frames see a zero frame beyond the clip, as in the authors'
    code)."""
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=maps.dtype, device=maps.device)
    derivative = torch.tensor([1.0, 0.0, -1.0], dtype=maps.dtype, device=maps.device)
    kernel = derivative[:, None, None] * smooth[None, :, None] * smooth[None, None, :]
    filtered = F.conv3d(maps.unsqueeze(1), kernel[None, None], padding=1)
    return filtered.squeeze(1).abs()


def selective_mask(maps: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Boolean ``(B, T, H, W)``: where ``|∂R/∂t|`` exceeds ``sigma`` times its standard
    deviation over each clip (Bessel-corrected, as ``torch.std``)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        raise ArgumentError(f"sigma must be a number ≥ 0, got {sigma!r}")
    wide = maps if maps.dtype == torch.float64 else maps.float()
    derivative = temporal_sobel(wide)
    spread = derivative.reshape(len(derivative), -1).std(dim=1)
    return derivative > sigma * spread.reshape(-1, 1, 1, 1)
