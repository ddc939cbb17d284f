"""Fast pictures of an explanation for data-set scale: pixels only, no matplotlib figure.

The matplotlib figures of :mod:`relgraph.io.plots` cost seconds a clip; these cost far less:
maps are coloured through a 256-entry look-up table of the same red/blue colour map (white at
zero, limits -1..1 as in the paper), enlarged by pixel repetition and written with Pillow.
Captions are left to the HTML report around them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from relgraph.io.outputs import atomic_write_bytes
from relgraph.io.plots import COLOUR_LIMITS, paper_columns

__all__ = ["colorize", "grid", "save_animation", "save_grid", "save_thumbnail"]

_GAP = 2
_LUT: np.ndarray | None = None


def _lut() -> np.ndarray:
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = (colormaps["seismic"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round()
        _LUT = _LUT.astype(np.uint8)
    return _LUT


def colorize(relevance: np.ndarray) -> np.ndarray:
    """``(..., H, W)`` map -> ``(..., H, W, 3)`` uint8, red positive, blue negative."""
    low, high = COLOUR_LIMITS
    scaled = (np.clip(np.nan_to_num(relevance), low, high) - low) / (high - low)
    return _lut()[(scaled * 255).round().astype(np.intp)]


def _scale(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else image


def _factor(size: int) -> int:
    return max(1, round(112 / size))


def grid(
    frames: np.ndarray,
    spatiotemporal: np.ndarray,
    spatial: np.ndarray,
    temporal: np.ndarray,
    columns: Sequence[int] | None = None,
) -> np.ndarray:
    """The paper's Figure 2 as pixels: rows frames, spatio-temporal, spatial, temporal."""
    columns = tuple(columns) if columns is not None else paper_columns(len(frames))
    factor = _factor(frames.shape[1])
    rows = [frames[list(columns)]] + [
        colorize(m[list(columns)]) for m in (spatiotemporal, spatial, temporal)
    ]
    tile = _scale(rows[0][0], factor).shape
    height = len(rows) * tile[0] + (len(rows) - 1) * _GAP
    width = len(columns) * tile[1] + (len(columns) - 1) * _GAP
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c in range(len(columns)):
            y, x = r * (tile[0] + _GAP), c * (tile[1] + _GAP)
            canvas[y : y + tile[0], x : x + tile[1]] = _scale(row[c], factor)
    return canvas


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def save_grid(path: str | os.PathLike, frames, spatiotemporal, spatial, temporal) -> Path:
    """Write :func:`grid` as a PNG, atomically."""
    return atomic_write_bytes(path, _png(grid(frames, spatiotemporal, spatial, temporal)))


def save_animation(
    path: str | os.PathLike, frames, spatiotemporal, spatial, temporal, fps: float = 4
) -> Path:
    """Every frame with its three maps side by side, as an endless GIF, atomically."""
    factor = _factor(frames.shape[1])
    panels = [frames, colorize(spatiotemporal), colorize(spatial), colorize(temporal)]
    gap = np.full((*frames.shape[:2], _GAP, 3), 255, dtype=np.uint8)
    strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=2)
    # One palette for the whole animation, from one fast octree quantisation of all frames
    # stacked (per-frame median-cut quantisation is far slower).
    stacked = Image.fromarray(_scale(strip, factor).reshape(-1, strip.shape[2] * factor, 3))
    paletted = stacked.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=0)
    height = strip.shape[1] * factor
    images = [
        paletted.crop((0, k * height, paletted.width, (k + 1) * height)) for k in range(len(strip))
    ]
    buffer = io.BytesIO()
    images[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=int(1000 / fps),
        loop=0,
    )
    return atomic_write_bytes(path, buffer.getvalue())


def save_thumbnail(path: str | os.PathLike, frame: np.ndarray, temporal: np.ndarray) -> Path:
    """One frame beside its temporal map, 64 px high, as a PNG."""
    factor = max(1, round(64 / frame.shape[0]))
    gap = np.full((frame.shape[0], 1, 3), 255, dtype=np.uint8)
    image = np.concatenate([frame, gap, colorize(temporal)], axis=1)
    return atomic_write_bytes(path, _png(_scale(image, factor)))
