"""Input presets: how decoded RGB frames become a model's (3, T, size, size) input tensor."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import RelgraphError, VideoError, did_you_mean

__all__ = ["PRESETS", "Preprocess", "get_preprocess"]

_CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """One input preset: resize, crop, channel order and mean subtraction.

    Frames are resized with bilinear interpolation (``torch.nn.functional.interpolate``,
    ``align_corners=False``, no antialiasing: cv2.INTER_LINEAR up to rounding) and rounded back
    to uint8, as cv2.resize on uint8 images does, then cropped. The model input is those
    integers in ``channel_order`` minus ``mean``.

    Attributes
    ----------
    name
        Preset name, the key in ``PRESETS``.
    mean
        Value subtracted from each channel, listed in the model's channel order.
    channel_order
        ``"BGR"`` or ``"RGB"``: the order of the model's input channels.
    size
        Side of the square crop.
    resize_shape
        ``(height, width)`` every frame is resized to; None scales the shorter side to
        ``size`` keeping the aspect ratio (the longer side rounded to the nearest pixel).
    crop_origin
        ``(top, left)`` of the crop in the resized frame; None centres it (rounded down).
    """

    name: str
    mean: tuple[float, float, float]
    channel_order: str
    size: int
    resize_shape: tuple[int, int] | None = None
    crop_origin: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in _CHANNEL_ORDERS:
            raise RelgraphError(
                f"preset '{self.name}': channel_order must be 'RGB' or 'BGR', "
                f"not {self.channel_order!r}."
            )
        if len(self.mean) != 3:
            raise RelgraphError(f"preset '{self.name}': mean needs 3 values, got {self.mean}.")
        if self.size < 1:
            raise RelgraphError(f"preset '{self.name}': size must be positive, not {self.size}.")

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """Turn uint8 RGB frames ``(T, H, W, 3)`` into the model input ``(3, T, size, size)``."""
        visible = torch.from_numpy(self.display_frames(frames)).to(torch.float32)
        if self.channel_order == "BGR":
            visible = visible.flip(-1)
        centred = visible - torch.tensor(self.mean, dtype=torch.float32)
        return centred.permute(3, 0, 1, 2).contiguous()

    def display_frames(self, frames: np.ndarray) -> np.ndarray:
        """The resized and cropped uint8 RGB frames ``(T, size, size, 3)`` the model sees."""
        frames = _check_frames(frames)
        _, height, width, _ = frames.shape
        resized_height, resized_width, top, left = self.spatial_plan(height, width)
        pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32)
        if (resized_height, resized_width) != (height, width):
            pixels = F.interpolate(
                pixels,
                size=(resized_height, resized_width),
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )
            pixels = pixels.round().clamp(0, 255)
        cropped = pixels[:, :, top : top + self.size, left : left + self.size]
        return cropped.permute(0, 2, 3, 1).to(torch.uint8).numpy()

    def spatial_plan(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(resized_height, resized_width, top, left)`` for a ``height`` x ``width`` frame."""
        if self.resize_shape is not None:
            resized_height, resized_width = self.resize_shape
        elif height <= width:
            resized_height, resized_width = (
                self.size,
                max(self.size, round(width * self.size / height)),
            )
        else:
            resized_height, resized_width = (
                max(self.size, round(height * self.size / width)),
                self.size,
            )
        if self.crop_origin is not None:
            top, left = self.crop_origin
        else:
            top, left = (resized_height - self.size) // 2, (resized_width - self.size) // 2
        if (
            top < 0
            or left < 0
            or top + self.size > resized_height
            or left + self.size > resized_width
        ):
            raise RelgraphError(
                f"preset '{self.name}': a {self.size}x{self.size} crop at (top {top}, left {left}) "
                f"does not fit the resized {resized_height}x{resized_width} frame."
            )
        return resized_height, resized_width, top, left

    def zbeta_bounds(self, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowest and highest input values, ``(3,)`` each in model channel order.

        Pixels span 0..255 before the mean is subtracted. With ``per_channel`` each channel gets
        ``(-mean_c, 255 - mean_c)``; otherwise one bound fits all channels:
        ``low = -max(mean)``, ``high = 255 - min(mean)``, repeated three times.
        """
        mean = torch.tensor(self.mean, dtype=torch.float32)
        if per_channel:
            return -mean, 255.0 - mean
        return torch.full((3,), -float(mean.max())), torch.full((3,), 255.0 - float(mean.min()))

    def with_size(self, size: int | None) -> Preprocess:
        """This preset at another crop size; fixed-geometry presets only allow their own."""
        if size is None or size == self.size:
            return self
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise RelgraphError(
                f"preset '{self.name}': size must be a positive integer, not {size!r}."
            )
        if self.resize_shape is not None or self.crop_origin is not None:
            raise RelgraphError(
                f"preset '{self.name}' has a fixed geometry (resize to "
                f"{self.resize_shape}, crop at {self.crop_origin}) and only takes size "
                f"{self.size}, not {size}; for other sizes use a shorter-side preset such as "
                "'hara'."
            )
        return dataclasses.replace(self, size=size)


# The mean is listed in the model's channel order, so for the BGR preset 90 is subtracted from
# blue, 98 from green and 102 from red (the usual reading of the C3D code, which subtracts
# [[[90.0, 98.0, 102.0]]] from cv2's BGR frames).
PRESETS: dict[str, Preprocess] = {
    "c3d-ucf101": Preprocess(
        name="c3d-ucf101",
        mean=(90.0, 98.0, 102.0),
        channel_order="BGR",
        size=112,
        resize_shape=(128, 171),
        crop_origin=(8, 30),
    ),
    "hara": Preprocess(name="hara", mean=(90.0, 98.0, 102.0), channel_order="RGB", size=112),
}


def get_preprocess(name: str, size: int | None = None) -> Preprocess:
    """Look up an input preset in ``PRESETS``.

    Parameters
    ----------
    name
        ``"c3d-ucf101"``: resize to 171 wide x 128 high, crop rows 8:120 and columns 30:142,
        BGR, subtract (90, 98, 102) from (B, G, R). ``"hara"``: scale the shorter side to
        ``size``, centre crop ``size`` x ``size``, RGB, subtract (90, 98, 102) from (R, G, B).
    size
        Crop side; None keeps the preset's (112). ``c3d-ucf101`` only takes 112.
    """
    if name not in PRESETS:
        raise RelgraphError(
            f"unknown preprocessing preset '{name}'{did_you_mean(name, PRESETS)}; known presets: "
            f"{', '.join(sorted(PRESETS))}."
        )
    return PRESETS[name].with_size(size)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        raise VideoError(f"frames must be a numpy array, got {type(frames).__name__}.")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise VideoError(f"frames must have shape (T, H, W, 3) with T >= 1, got {frames.shape}.")
    if frames.dtype != np.uint8:
        raise VideoError(f"frames must be uint8 RGB (0..255), got dtype {frames.dtype}.")
    return np.ascontiguousarray(frames)
