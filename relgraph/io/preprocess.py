"""Input presets: how decoded RGB frames become a model's (3, T, size, size) input tensor."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from relgraph.errors import ArgumentError, VideoError, did_you_mean

__all__ = ["PRESETS", "Preprocess", "get_preprocess"]

_CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """One input preset: resize, crop, channel order, scaling and normalisation.

    Frames are resized with bilinear interpolation (``torch.nn.functional.interpolate``,
    ``align_corners=False``, no antialiasing: cv2.INTER_LINEAR up to rounding) and rounded back
    to uint8, as cv2.resize on uint8 images does, then cropped. The model input is
    ``(pixel · scale − mean) / std`` per channel, in ``channel_order``.

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
        ``shorter_side`` (or ``size``) keeping the aspect ratio.
    shorter_side
        Length of the shorter side after resizing when ``resize_shape`` is None; None: ``size``.
    crop_origin
        ``(top, left)`` of the crop in the resized frame; None centres it.
    scale
        Factor applied to the 0..255 pixels before the mean is subtracted (``1/255`` for
        inputs in [0, 1]).
    std
        Divisor of each channel after the mean is subtracted (model channel order).
    rounding
        ``"c3d"``: a shorter-side resize rounds the longer side to the nearest pixel and a
        centred crop starts at ``(resized − size) // 2``. ``"torchvision"``: the longer side is
        rounded down and the crop starts at ``round((resized − size) / 2)`` (half to even), as
        pytorchvideo's ``ShortSideScale`` and torchvision's ``center_crop`` compute them.
    """

    name: str
    mean: tuple[float, float, float]
    channel_order: str
    size: int
    resize_shape: tuple[int, int] | None = None
    crop_origin: tuple[int, int] | None = None
    shorter_side: int | None = None
    scale: float = 1.0
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rounding: str = "c3d"

    def __post_init__(self) -> None:
        if self.channel_order not in _CHANNEL_ORDERS:
            raise ArgumentError(
                f"preset '{self.name}': channel_order must be 'RGB' or 'BGR', "
                f"not {self.channel_order!r}."
            )
        if len(self.mean) != 3:
            raise ArgumentError(f"preset '{self.name}': mean needs 3 values, got {self.mean}.")
        if self.size < 1:
            raise ArgumentError(f"preset '{self.name}': size must be positive, not {self.size}.")
        if len(self.std) != 3 or min(self.std) <= 0:
            raise ArgumentError(
                f"preset '{self.name}': std needs 3 positive values, got {self.std}."
            )
        if not self.scale > 0:
            raise ArgumentError(f"preset '{self.name}': scale must be positive, not {self.scale}.")
        if self.rounding not in ("c3d", "torchvision"):
            raise ArgumentError(
                f"preset '{self.name}': rounding must be 'c3d' or 'torchvision', "
                f"not {self.rounding!r}."
            )

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """Turn uint8 RGB frames ``(T, H, W, 3)`` into the model input ``(3, T, size, size)``."""
        visible = torch.from_numpy(self.display_frames(frames)).to(torch.float32)
        if self.channel_order == "BGR":
            visible = visible.flip(-1)
        return self.normalise(visible).permute(3, 0, 1, 2).contiguous()

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(pixels · scale − mean) / std`` for pixel values (0..255) in model channel order,
        channels last."""
        like = {"dtype": pixels.dtype, "device": pixels.device}
        mean, std = torch.tensor(self.mean, **like), torch.tensor(self.std, **like)
        scaled = pixels if self.scale == 1.0 else pixels * self.scale
        centred = scaled - mean
        return centred if self.std == (1.0, 1.0, 1.0) else centred / std

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
        long_side = round if self.rounding == "c3d" else math.floor
        side = self.size if self.shorter_side is None else self.shorter_side
        if self.resize_shape is not None:
            resized_height, resized_width = self.resize_shape
        elif height <= width:
            resized_height, resized_width = side, max(side, long_side(width * side / height))
        else:
            resized_height, resized_width = max(side, long_side(height * side / width)), side
        if self.crop_origin is not None:
            top, left = self.crop_origin
        elif self.rounding == "c3d":
            top, left = (resized_height - self.size) // 2, (resized_width - self.size) // 2
        else:
            top, left = (
                round((resized_height - self.size) / 2),
                round((resized_width - self.size) / 2),
            )
        if (
            top < 0
            or left < 0
            or top + self.size > resized_height
            or left + self.size > resized_width
        ):
            raise VideoError(
                f"preset '{self.name}': a {self.size}x{self.size} crop at (top {top}, left {left}) "
                f"does not fit the resized {resized_height}x{resized_width} frame."
            )
        return resized_height, resized_width, top, left

    def zbeta_bounds(self, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowest and highest input values, ``(3,)`` each in model channel order (float64).

        The pixel extremes 0 and 255 mapped through the preset: ``l_c = (0·scale − mean_c) /
        std_c``, ``h_c = (255·scale − mean_c) / std_c`` (Montavon et al. 2017, zβ on a bounded
        input domain). Without ``per_channel`` one box fits all channels: ``min_c l_c`` and
        ``max_c h_c``, repeated three times (for c3d-ucf101: −102 and 165).
        """
        mean = torch.tensor(self.mean, dtype=torch.float64)
        std = torch.tensor(self.std, dtype=torch.float64)
        low, high = (0.0 * self.scale - mean) / std, (255.0 * self.scale - mean) / std
        if per_channel:
            return low, high
        return torch.full((3,), float(low.min()), dtype=torch.float64), torch.full(
            (3,), float(high.max()), dtype=torch.float64
        )

    def with_size(self, size: int | None) -> Preprocess:
        """This preset at another crop size; fixed-geometry presets only allow their own."""
        if size is None or size == self.size:
            return self
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ArgumentError(
                f"preset '{self.name}': size must be a positive integer, not {size!r}."
            )
        if self.resize_shape is not None or self.crop_origin is not None or self.shorter_side:
            raise ArgumentError(
                f"preset '{self.name}' has a fixed geometry (resize to "
                f"{self.resize_shape or self.shorter_side}, crop at {self.crop_origin}) and only "
                "takes size "
                f"{self.size}, not {size}; for other sizes use a shorter-side preset such as "
                "'hara'."
            )
        return dataclasses.replace(self, size=size)


_KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
_KINETICS_STD = (0.22803, 0.22145, 0.216989)

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
    # torchvision's VideoClassification preset (r3d_18, mc3_18, r2plus1d_18 weights): resize to
    # 128x171, centre crop 112, [0, 1], Kinetics mean and std, RGB
    "kinetics": Preprocess(
        name="kinetics",
        mean=_KINETICS_MEAN,
        std=_KINETICS_STD,
        scale=1 / 255,
        channel_order="RGB",
        size=112,
        resize_shape=(128, 171),
        rounding="torchvision",
    ),
    # torchvision's s3d weights: resize to 256x256, centre crop 224, same normalisation
    "kinetics-s3d": Preprocess(
        name="kinetics-s3d",
        mean=_KINETICS_MEAN,
        std=_KINETICS_STD,
        scale=1 / 255,
        channel_order="RGB",
        size=224,
        resize_shape=(256, 256),
        rounding="torchvision",
    ),
    # pytorchvideo's X3D transforms: shorter side scaled, centre crop, mean 0.45, std 0.225
    **{
        f"x3d-{variant}": Preprocess(
            name=f"x3d-{variant}",
            mean=(0.45, 0.45, 0.45),
            std=(0.225, 0.225, 0.225),
            scale=1 / 255,
            channel_order="RGB",
            size=crop,
            shorter_side=side,
            rounding="torchvision",
        )
        for variant, side, crop in (
            ("xs", 182, 160),
            ("s", 182, 160),
            ("m", 256, 224),
            ("l", 356, 312),
        )
    },
}


# Hugging Face video transformers' processors: the shorter side scaled to the crop (the Hub's
# ViViT processor first scales it to 256 for a 224 crop: a folder's preprocessor_config.json
# gives that, see relgraph.models.pretrained), centre crop, RGB.
PRESETS.update(
    {
        # VideoMAE's Kinetics checkpoints: [0, 1], ImageNet mean and std
        "videomae": Preprocess(
            name="videomae",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            scale=1 / 255,
            channel_order="RGB",
            size=224,
            rounding="torchvision",
        ),
        # VivitImageProcessor: pixel / 127.5 − 1 (offset), then (· − 0.5) / 0.5, i.e.
        # (pixel / 127.5 − 1.5) / 0.5
        "vivit": Preprocess(
            name="vivit",
            mean=(1.5, 1.5, 1.5),
            std=(0.5, 0.5, 0.5),
            scale=1 / 127.5,
            channel_order="RGB",
            size=224,
            rounding="torchvision",
        ),
        # TimeSformer's Kinetics checkpoints: [0, 1], mean 0.45, std 0.225
        "timesformer": Preprocess(
            name="timesformer",
            mean=(0.45, 0.45, 0.45),
            std=(0.225, 0.225, 0.225),
            scale=1 / 255,
            channel_order="RGB",
            size=224,
            rounding="torchvision",
        ),
    }
)

#: the presets relgraph ships (the command line offers these; a Hugging Face folder's own
#: normalisation is added to ``PRESETS`` under a derived name when it is loaded)
SHIPPED_PRESETS: tuple[str, ...] = tuple(sorted(PRESETS))


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
        raise ArgumentError(
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
