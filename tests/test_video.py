"""Specification of relgraph.video: reading and writing real files, and clip selection."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest

from relgraph.errors import OutputError, VideoError
from relgraph.io.video import (
    ClipSelection,
    iter_clips,
    read_video,
    select_clip,
    video_info,
    write_video,
)

CONTAINERS = ["mp4", "avi", "mkv", "webm"]


def smooth_video(frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames with smooth gradients (what lossy codecs keep well) that change over time."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    video = [
        np.stack(
            [
                128 + 90 * np.sin((x + 3 * t) / 9),
                128 + 70 * np.cos(y / 7),
                np.full_like(x, 40.0 + 10 * t),
            ],
            axis=-1,
        )
        for t in range(frames)
    ]
    return np.clip(np.stack(video), 0, 255).astype(np.uint8)


def write_avi_without_frames(path) -> None:
    """Write an avi with a video stream header but no encoded frames."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
    container.close()


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", CONTAINERS)
def test_written_video_reads_back_with_same_count_shape_and_content(tmp_path, extension):
    frames = smooth_video()
    path = write_video(tmp_path / f"clip.{extension}", frames, fps=25)
    decoded = read_video(path)
    assert decoded.shape == frames.shape
    assert decoded.dtype == np.uint8
    # Lossy codecs: per-frame, per-channel means stay within a few grey levels.
    mean_error = np.abs(decoded.mean(axis=(1, 2)) - frames.mean(axis=(1, 2)))
    assert mean_error.max() < 4
    assert np.abs(decoded.astype(float) - frames).mean() < 8


@pytest.mark.parametrize("extension", CONTAINERS)
def test_video_info_reports_frames_fps_size_and_codec(tmp_path, extension):
    path = write_video(tmp_path / f"clip.{extension}", smooth_video(frames=10), fps=15)
    info = video_info(path)
    assert (info.frames, info.fps, info.width, info.height) == (10, 15.0, 64, 48)
    assert info.codec in {"h264", "mpeg4", "ffv1", "vp9", "vp8"}


def test_avi_is_written_as_mpeg4_like_ucf101(tmp_path):
    path = write_video(tmp_path / "clip.avi", smooth_video(frames=3))
    assert video_info(path).codec == "mpeg4"


def test_ffv1_round_trip_is_lossless(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
    path = write_video(tmp_path / "lossless.mkv", frames, codec="ffv1")
    np.testing.assert_array_equal(read_video(path), frames)


@pytest.mark.parametrize("extension", CONTAINERS)
def test_odd_frame_sizes_round_trip(tmp_path, extension):
    frames = smooth_video(frames=4, height=31, width=33)
    assert read_video(write_video(tmp_path / f"odd.{extension}", frames)).shape == frames.shape


def test_max_frames_stops_decoding_early(tmp_path):
    path = write_video(tmp_path / "clip.mp4", smooth_video(frames=12))
    assert read_video(path, max_frames=5).shape[0] == 5


def test_fractional_fps_is_kept(tmp_path):
    path = write_video(tmp_path / "clip.mkv", smooth_video(frames=4), fps=29.97)
    assert video_info(path).fps == pytest.approx(29.97, abs=1e-3)


# --- atomic writing ---------------------------------------------------------------------------


def test_interrupted_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_video(path, smooth_video(frames=4))
    before = path.read_bytes()
    encoded = 0
    real_from_ndarray = av.VideoFrame.from_ndarray

    def fail_on_third_frame(*args, **kwargs):
        nonlocal encoded
        encoded += 1
        if encoded == 3:
            raise KeyboardInterrupt
        return real_from_ndarray(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_on_third_frame)
    with pytest.raises(KeyboardInterrupt):
        write_video(path, smooth_video(frames=8))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["clip.mp4"]


def test_write_into_missing_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_video(tmp_path / "nowhere" / "clip.mp4", smooth_video(frames=2))


def test_unknown_extension_is_a_video_error_naming_the_file(tmp_path):
    with pytest.raises(VideoError, match=r"clip\.xyz.*extension"):
        write_video(tmp_path / "clip.xyz", smooth_video(frames=2))


def test_unknown_codec_is_a_video_error(tmp_path):
    with pytest.raises(VideoError, match="no video encoder 'libx265x'"):
        write_video(tmp_path / "clip.mp4", smooth_video(frames=2), codec="libx265x")


def test_float_frames_are_refused(tmp_path):
    with pytest.raises(VideoError, match="uint8"):
        write_video(tmp_path / "clip.mp4", smooth_video(frames=2).astype(np.float32))


# --- read errors ------------------------------------------------------------------------------


def test_missing_file_is_a_video_error_naming_it(tmp_path):
    with pytest.raises(VideoError, match=r"missing\.mp4: .*does not exist"):
        read_video(tmp_path / "missing.mp4")


def test_random_bytes_are_a_video_error(tmp_path):
    path = tmp_path / "noise.avi"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError, match=r"noise\.avi: cannot read"):
        read_video(path)


@pytest.mark.parametrize("extension", ["mp4", "avi", "mkv"])
def test_truncated_file_is_a_video_error(tmp_path, extension):
    frames = np.random.default_rng(1).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / f"clip.{extension}", frames)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VideoError, match=rf"clip\.{extension}: .*(truncated|corrupt)"):
        read_video(path)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    container = av.open(str(path), mode="w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    with pytest.raises(VideoError, match=r"sound\.wav: the file has no video stream.*audio"):
        read_video(path)


@pytest.mark.parametrize("name", ["notes.txt", "notes.mp4"])
def test_text_file_is_not_a_video(tmp_path, name):
    # FFmpeg would render a .txt file as ANSI art; that must not pass as a video.
    path = tmp_path / name
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoError, match=name.replace(".", r"\.")):
        read_video(path)


def test_video_stream_without_frames_is_a_video_error(tmp_path):
    path = tmp_path / "empty.avi"
    write_avi_without_frames(path)
    with pytest.raises(VideoError, match=r"empty\.avi: .*no decodable frames"):
        read_video(path)


def test_folder_is_not_a_video(tmp_path):
    with pytest.raises(VideoError, match="not a file"):
        read_video(tmp_path)


def test_video_info_errors_like_read_video(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        video_info(tmp_path / "missing.mkv")


# --- clip selection ---------------------------------------------------------------------------


def numbered_video(count: int) -> np.ndarray:
    """Frame i is filled with the value i, so a clip's frames reveal their indices."""
    return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 4, 4, 3))


def test_select_clip_takes_length_frames_from_start_with_stride():
    clip = select_clip(numbered_video(100), start=10, stride=4, length=16)
    assert isinstance(clip, ClipSelection)
    assert clip.frame_indices == list(range(10, 74, 4))
    assert clip.frames[:, 0, 0, 0].tolist() == clip.frame_indices
    assert clip.frames.shape == (16, 4, 4, 3)
    assert not clip.looped and clip.message is None


def test_short_video_is_loop_padded_from_its_start():
    clip = select_clip(numbered_video(10), length=16)
    assert clip.frame_indices == list(range(10)) + list(range(6))
    assert clip.frames[:, 0, 0, 0].tolist() == clip.frame_indices
    assert clip.looped
    assert "10 frames" in clip.message and "loop" in clip.message


def test_loop_padding_wraps_indices_modulo_the_video_length():
    clip = select_clip(numbered_video(10), start=6, stride=3, length=4)
    assert clip.frame_indices == [6, 9, 2, 5]
    assert clip.looped


def test_clip_that_ends_on_last_frame_is_not_looped():
    assert not select_clip(numbered_video(16), length=16).looped


def test_start_beyond_the_end_is_a_video_error():
    with pytest.raises(VideoError, match="beyond the end.*10 frames"):
        select_clip(numbered_video(10), start=10)


@pytest.mark.parametrize("arguments", [{"stride": 0}, {"length": 0}, {"start": -1}])
def test_non_positive_clip_parameters_are_video_errors(arguments):
    with pytest.raises(VideoError):
        select_clip(numbered_video(10), **arguments)


def test_iter_clips_yields_consecutive_non_overlapping_clips():
    clips = list(iter_clips(numbered_video(40), length=16))
    assert [clip.frame_indices for clip in clips] == [list(range(16)), list(range(16, 32))]
    assert not any(clip.looped for clip in clips)


def test_iter_clips_with_stride_starts_each_clip_after_the_previous_one_spans():
    clips = list(iter_clips(numbered_video(70), stride=2, length=8))
    assert [clip.frame_indices[0] for clip in clips] == [0, 16, 32, 48]
    assert clips[-1].frame_indices[-1] == 62


def test_iter_clips_of_a_short_video_yields_one_looped_clip():
    clips = list(iter_clips(numbered_video(5), length=16))
    assert len(clips) == 1 and clips[0].looped
    assert clips[0].frame_indices == [i % 5 for i in range(16)]
