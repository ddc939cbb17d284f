"""Specification of relgraph.preprocess: the input presets of c3d.md, checked independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relgraph.errors import RelgraphError, VideoError
from relgraph.io.preprocess import PRESETS, Preprocess, get_preprocess

MEAN = np.array([90.0, 98.0, 102.0])


def constant_frames(rgb, frames: int = 3, height: int = 240, width: int = 320) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (frames, height, width, 3)).copy()


def random_frames(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def bilinear_reference(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (cv2.INTER_LINEAR), one output pixel at a time."""
    in_height, in_width, _ = image.shape
    result = np.zeros((out_height, out_width, image.shape[2]))
    for row in range(out_height):
        src_y = max((row + 0.5) * in_height / out_height - 0.5, 0.0)
        y0 = int(np.floor(src_y))
        y1, wy = min(y0 + 1, in_height - 1), src_y - y0
        for col in range(out_width):
            src_x = max((col + 0.5) * in_width / out_width - 0.5, 0.0)
            x0 = int(np.floor(src_x))
            x1, wx = min(x0 + 1, in_width - 1), src_x - x0
            top = (1 - wx) * image[y0, x0] + wx * image[y0, x1]
            bottom = (1 - wx) * image[y1, x0] + wx * image[y1, x1]
            result[row, col] = (1 - wy) * top + wy * bottom
    return result


# --- c3d-ucf101 -------------------------------------------------------------------------------


def test_c3d_ucf101_output_is_float32_3_by_t_by_112_by_112():
    clip = get_preprocess("c3d-ucf101")(random_frames(16, 240, 320))
    assert clip.shape == (3, 16, 112, 112)
    assert clip.dtype == torch.float32


def test_c3d_ucf101_constant_rgb_frame_becomes_b_minus_90_g_minus_98_r_minus_102():
    r, g, b = 200, 50, 7
    clip = get_preprocess("c3d-ucf101")(constant_frames((r, g, b)))
    expected = torch.tensor([b - 90.0, g - 98.0, r - 102.0])
    assert torch.equal(clip, expected[:, None, None, None].expand(3, 3, 112, 112))


def test_c3d_ucf101_crops_rows_8_to_120_and_cols_30_to_142_of_the_171_by_128_frame():
    frames = random_frames(2, 128, 171)  # already 171 wide x 128 high: resizing is the identity
    clip = get_preprocess("c3d-ucf101")(frames)
    expected_bgr = frames[:, 8:120, 30:142, ::-1].astype(np.float64) - MEAN
    np.testing.assert_array_equal(clip.permute(1, 2, 3, 0).numpy(), expected_bgr)


def test_c3d_ucf101_resize_is_bilinear_with_half_pixel_centres():
    frames = random_frames(1, 32, 43, seed=3)
    display = get_preprocess("c3d-ucf101").display_frames(frames)
    reference = np.rint(bilinear_reference(frames[0].astype(np.float64), 128, 171))
    reference_crop = reference[8:120, 30:142]
    difference = np.abs(display[0].astype(np.float64) - reference_crop)
    assert difference.max() <= 1  # rounding ties may land either way
    assert (difference == 0).mean() > 0.99


def test_c3d_ucf101_only_takes_size_112():
    with pytest.raises(RelgraphError, match="c3d-ucf101.*only takes size 112"):
        get_preprocess("c3d-ucf101", size=128)
    assert get_preprocess("c3d-ucf101", size=112).size == 112


# --- hara -------------------------------------------------------------------------------------


def test_hara_constant_rgb_frame_becomes_r_minus_90_g_minus_98_b_minus_102():
    r, g, b = 200, 50, 7
    clip = get_preprocess("hara")(constant_frames((r, g, b)))
    expected = torch.tensor([r - 90.0, g - 98.0, b - 102.0])
    assert torch.equal(clip, expected[:, None, None, None].expand(3, 3, 112, 112))


def test_hara_centre_crops_the_longer_side_when_the_shorter_side_already_fits():
    landscape = random_frames(2, 112, 150)
    clip = get_preprocess("hara")(landscape)
    expected = landscape[:, :, 19:131].astype(np.float64) - MEAN  # (150 - 112) // 2 = 19
    np.testing.assert_array_equal(clip.permute(1, 2, 3, 0).numpy(), expected)

    portrait = random_frames(2, 150, 112)
    clip = get_preprocess("hara")(portrait)
    expected = portrait[:, 19:131].astype(np.float64) - MEAN
    np.testing.assert_array_equal(clip.permute(1, 2, 3, 0).numpy(), expected)


def test_hara_scales_the_shorter_side_to_size_keeping_aspect():
    preset = get_preprocess("hara")
    assert preset.spatial_plan(240, 320) == (112, 149, 0, 18)
    assert preset.spatial_plan(320, 240) == (149, 112, 18, 0)


def test_hara_downscale_is_bilinear_with_half_pixel_centres_and_no_antialiasing():
    frames = random_frames(1, 50, 70, seed=4)
    display = get_preprocess("hara", size=20).display_frames(frames)
    # 50x70 -> 20x28, centre crop columns 4:24
    reference = np.rint(bilinear_reference(frames[0].astype(np.float64), 20, 28))[:, 4:24]
    difference = np.abs(display[0].astype(np.float64) - reference)
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.99


def test_hara_takes_other_sizes():
    clip = get_preprocess("hara", size=64)(random_frames(4, 240, 320))
    assert clip.shape == (3, 4, 64, 64)


# --- shared behaviour -------------------------------------------------------------------------


MEAN_ONLY = ["c3d-ucf101", "hara"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_input_is_display_frames_in_model_order_scaled_minus_mean_over_std(name):
    preset = get_preprocess(name)
    frames = random_frames(3, 100, 130, seed=5)
    display = preset.display_frames(frames).astype(np.float64)
    if preset.channel_order == "BGR":
        display = display[..., ::-1]
    expected = (display * preset.scale - np.array(preset.mean)) / np.array(preset.std)
    actual = preset(frames).permute(1, 2, 3, 0).numpy()
    if name in MEAN_ONLY:  # integers minus integers: exact in float32
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_display_frames_are_uint8_rgb_at_crop_size(name):
    preset = get_preprocess(name)
    display = preset.display_frames(random_frames(2, 90, 120))
    assert display.shape == (2, preset.size, preset.size, 3) and display.dtype == np.uint8


@pytest.mark.parametrize("name", MEAN_ONLY)
def test_scalar_zbeta_bounds_are_minus_max_mean_and_255_minus_min_mean(name):
    low, high = get_preprocess(name).zbeta_bounds(per_channel=False)
    assert torch.equal(low, torch.full((3,), -102.0, dtype=torch.float64))
    assert torch.equal(high, torch.full((3,), 165.0, dtype=torch.float64))


@pytest.mark.parametrize("name", MEAN_ONLY)
def test_per_channel_zbeta_bounds_are_minus_mean_and_255_minus_mean(name):
    low, high = get_preprocess(name).zbeta_bounds(per_channel=True)
    assert torch.equal(low, torch.tensor([-90.0, -98.0, -102.0], dtype=torch.float64))
    assert torch.equal(high, torch.tensor([165.0, 157.0, 153.0], dtype=torch.float64))


KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [
        ("kinetics", KINETICS_MEAN, KINETICS_STD),
        ("kinetics-s3d", KINETICS_MEAN, KINETICS_STD),
        *[(f"x3d-{v}", (0.45,) * 3, (0.225,) * 3) for v in ("xs", "s", "m", "l")],
    ],
)
def test_zbeta_bounds_are_0_and_255_mapped_through_scale_mean_and_std(name, mean, std):
    """Pixels 0 and 255 scaled to [0, 1], minus the mean, over the std, per RGB channel."""
    low, high = get_preprocess(name).zbeta_bounds(per_channel=True)
    expected_low = [(0.0 - m) / s for m, s in zip(mean, std)]
    expected_high = [(1.0 - m) / s for m, s in zip(mean, std)]
    np.testing.assert_allclose(low.numpy(), expected_low, rtol=1e-12)
    np.testing.assert_allclose(high.numpy(), expected_high, rtol=1e-12)
    scalar_low, scalar_high = get_preprocess(name).zbeta_bounds(per_channel=False)
    np.testing.assert_allclose(scalar_low.numpy(), [min(expected_low)] * 3, rtol=1e-12)
    np.testing.assert_allclose(scalar_high.numpy(), [max(expected_high)] * 3, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_zbeta_bounds_contain_every_possible_input(name):
    preset = get_preprocess(name)
    extremes = np.zeros((2, 400, 400, 3), np.uint8)
    extremes[1] = 255
    clip = preset(extremes).to(torch.float64)
    slack = 1e-6
    for per_channel in (False, True):
        low, high = preset.zbeta_bounds(per_channel=per_channel)
        assert (clip >= low[:, None, None, None] - slack).all()
        assert (clip <= high[:, None, None, None] + slack).all()
        # and the box is tight: the extremes reach it
        if per_channel:
            torch.testing.assert_close(clip[:, 0].amin((1, 2)), low, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(clip[:, 1].amax((1, 2)), high, rtol=1e-6, atol=1e-6)


def test_kinetics_frame_round_trip_against_a_hand_computation():
    """torchvision's transform by hand: resize 240x320 to 128x171 (bilinear, half-pixel
    centres), round to uint8, centre crop 112 at top round(8) = 8 and left round(29.5) = 30,
    scale to [0, 1], subtract the mean, divide by the std; RGB."""
    frames = random_frames(2, 240, 320, seed=11)
    # the resize itself is checked against explicit loops above; float32 as cv2 rounds it
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32)
    resized = F.interpolate(pixels, size=(128, 171), mode="bilinear", align_corners=False)
    cropped = resized.round().clamp(0, 255)[:, :, 8:120, 30:142].to(torch.float64)
    mean = torch.tensor(KINETICS_MEAN, dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(KINETICS_STD, dtype=torch.float64).reshape(1, 3, 1, 1)
    expected = ((cropped / 255 - mean) / std).permute(1, 0, 2, 3)
    actual = get_preprocess("kinetics")(frames)
    assert actual.shape == (3, 2, 112, 112) and actual.dtype == torch.float32
    torch.testing.assert_close(actual.to(torch.float64), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "height", "width", "plan"),
    [
        # pytorchvideo's ShortSideScale rounds the longer side down; torchvision's centre crop
        # starts at round((resized - crop) / 2), half to even
        ("x3d-s", 240, 320, (182, 242, 11, 41)),
        ("x3d-xs", 320, 240, (242, 182, 41, 11)),
        ("x3d-m", 240, 320, (256, 341, 16, 58)),
        ("x3d-l", 240, 320, (356, 474, 22, 81)),
        ("kinetics-s3d", 240, 320, (256, 256, 16, 16)),
        ("kinetics", 240, 320, (128, 171, 8, 30)),
    ],
)
def test_library_presets_resize_and_crop_like_their_libraries(name, height, width, plan):
    assert get_preprocess(name).spatial_plan(height, width) == plan


def test_x3d_frame_round_trip_against_a_hand_computation():
    frames = random_frames(1, 240, 320, seed=12)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32)
    resized = F.interpolate(pixels, size=(182, 242), mode="bilinear", align_corners=False)
    cropped = resized.round().clamp(0, 255)[:, :, 11:171, 41:201].to(torch.float64)
    expected = ((cropped / 255 - 0.45) / 0.225).permute(1, 0, 2, 3)
    actual = get_preprocess("x3d-s")(frames)
    assert actual.shape == (3, 1, 160, 160)
    torch.testing.assert_close(actual.to(torch.float64), expected, rtol=1e-5, atol=1e-5)


def test_mean_is_listed_in_model_channel_order():
    assert get_preprocess("c3d-ucf101").channel_order == "BGR"
    assert get_preprocess("hara").channel_order == "RGB"
    assert get_preprocess("c3d-ucf101").mean == (90.0, 98.0, 102.0)


def test_unknown_preset_suggests_the_closest_name():
    with pytest.raises(RelgraphError, match="did you mean 'c3d-ucf101'"):
        get_preprocess("c3d_ucf101")


def test_a_user_can_register_a_preset(monkeypatch):
    custom = Preprocess(name="grey", mean=(128.0, 128.0, 128.0), channel_order="RGB", size=32)
    monkeypatch.setitem(PRESETS, "grey", custom)
    clip = get_preprocess("grey")(constant_frames((128, 128, 128), height=40, width=40))
    assert clip.shape == (3, 3, 32, 32) and torch.all(clip == 0)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 64, 64, 3), np.float32),
        np.zeros((64, 64, 3), np.uint8),
        np.zeros((2, 64, 64, 4), np.uint8),
    ],
    ids=["float", "single-frame", "rgba"],
)
def test_frames_that_are_not_uint8_t_h_w_3_are_video_errors(frames):
    with pytest.raises(VideoError):
        get_preprocess("hara")(frames)
