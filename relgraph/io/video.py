"""Real video in and out (PyAV), and the choice of the frames that make up a clip."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from relgraph.errors import OutputError, VideoError, did_you_mean
from relgraph.io.outputs import atomic_path

__all__ = [
    "ClipSelection",
    "VideoInfo",
    "iter_clips",
    "read_video",
    "select_clip",
    "video_info",
    "write_video",
]

# Encoders per extension, best first; the first one this PyAV build has is used.
CODECS_BY_EXTENSION: dict[str, tuple[str, ...]] = {
    ".mp4": ("libx264", "mpeg4"),
    ".m4v": ("libx264", "mpeg4"),
    ".mov": ("libx264", "mpeg4"),
    ".avi": ("mpeg4",),
    ".mkv": ("libx264", "ffv1"),
    ".webm": ("libvpx-vp9", "libvpx"),
}

# Quality settings: the encoders' defaults (e.g. mpeg4 at 200 kbit/s) smear small frames badly.
_CODEC_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "18"},
    "libvpx-vp9": {"crf": "30", "b": "0", "deadline": "good", "cpu-used": "4"},
    "libvpx": {"crf": "10", "b": "2M"},
}
_MPEG4_QSCALE = 3
_FF_QP2LAMBDA = 118  # FFmpeg's lambda per quantiser step, what `-q:v` multiplies by

# FFmpeg's tty demuxer "decodes" any text file as ANSI art; a text file is not a video.
_TEXT_FORMATS = {"tty"}
_TEXT_CODECS = {"ansi"}


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's first video stream says about itself.

    ``frames`` is the count from the container header, or from counting packets where the
    container keeps none (mkv, webm); it may differ from the decodable count by a frame or two.
    """

    path: str
    frames: int
    fps: float
    width: int
    height: int
    codec: str


@dataclass(frozen=True)
class ClipSelection:
    """The frames of one clip and where they come from.

    Attributes
    ----------
    frames
        ``(length, H, W, 3)`` frames of the clip.
    frame_indices
        Index into the video of every frame of the clip.
    looped
        True when the video was too short and indices wrapped around to its start.
    message
        Says what was padded and how, when ``looped``; otherwise None.
    """

    frames: np.ndarray
    frame_indices: list[int]
    looped: bool
    message: str | None


def read_video(path: str | os.PathLike, *, max_frames: int | None = None) -> np.ndarray:
    """Decode the first video stream of a file into RGB frames.

    Parameters
    ----------
    path
        Any container FFmpeg reads (mp4, avi, mkv, webm, ...).
    max_frames
        Stop after this many frames; None decodes them all.

    Returns
    -------
    np.ndarray
        uint8 array of shape ``(N, H, W, 3)``, RGB.

    Raises
    ------
    VideoError
        The file is missing, unreadable, corrupt or truncated, has no video stream, or no
        frame of it can be decoded.
    """
    if max_frames is not None and (isinstance(max_frames, bool) or int(max_frames) < 1):
        raise VideoError(f"max_frames must be a positive integer or None, not {max_frames!r}.")
    path = _existing_file(path)
    frames: list[np.ndarray] = []
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            raise VideoError(
                f"the video is corrupt: decoding failed after {len(frames)} frame(s) "
                f"({_reason(exc)}). Re-encode or replace the file.",
                file=path,
            ) from exc
        stopped_early = max_frames is not None and len(frames) >= max_frames
        expected = _expected_frames(container, stream)
    if not frames:
        raise VideoError(
            "the video stream has no decodable frames (the file is empty of pictures or "
            "broken). Check that it plays, or re-encode it.",
            file=path,
        )
    if not stopped_early and expected is not None and _looks_truncated(len(frames), expected):
        raise VideoError(
            f"the video looks truncated or corrupt: its header promises about {expected} "
            f"frames but only {len(frames)} could be decoded. Re-download or re-encode it, "
            f"or pass max_frames={len(frames)} to use the frames that are there.",
            file=path,
        )
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise VideoError(
            f"the frame size changes inside the video ({sorted(shapes)}); relgraph needs one "
            "size per video. Re-encode it at a fixed size.",
            file=path,
        )
    return np.stack(frames)


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate, size and codec of a file's first video stream.

    Raises
    ------
    VideoError
        The file is missing, unreadable or has no video stream.
    """
    path = _existing_file(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        frames = int(stream.frames or 0)
        if frames == 0:
            frames = _count_packets(container, stream, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return VideoInfo(
            path=str(path),
            frames=frames,
            fps=float(rate) if rate else 0.0,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            codec=stream.codec_context.name,
        )


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25,
    codec: str | None = None,
) -> Path:
    """Encode RGB frames into a video file, atomically.

    The video is written to a temporary file next to ``path`` and moved over it only when
    complete, so an interrupted write never leaves half a file behind.

    Parameters
    ----------
    path
        Output file; its extension picks the container and, unless ``codec`` is given, the
        encoder: mp4/mov/m4v -> libx264 (mpeg4 without it), avi -> mpeg4, mkv -> libx264
        (ffv1 without it), webm -> libvpx-vp9 (libvpx without it).
    frames
        uint8 array ``(N, H, W, 3)``, RGB, N >= 1.
    fps
        Frame rate.
    codec
        FFmpeg encoder name to use instead of the default. ``"ffv1"`` stores RGB losslessly.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    frames = _check_frames_to_write(frames, path)
    extension = path.suffix.lower()
    if extension not in CODECS_BY_EXTENSION:
        raise VideoError(
            f"cannot tell the container from the extension '{path.suffix}'"
            f"{did_you_mean(extension, CODECS_BY_EXTENSION)}; use one of "
            f"{', '.join(CODECS_BY_EXTENSION)}.",
            file=path,
        )
    codec = _pick_codec(extension, codec, path)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < math.inf:
        raise VideoError(f"fps must be a positive number, not {fps!r}.", file=path)
    if not path.parent.is_dir():
        raise OutputError(
            f"cannot write the video: the folder '{path.parent}' does not exist.", file=path
        )

    rate = Fraction(fps).limit_denominator(100_000)
    try:
        with atomic_path(path) as temporary:
            _encode(str(temporary), frames, rate, codec, extension)
    except av.error.FFmpegError as exc:
        raise VideoError(f"encoding with '{codec}' failed: {_reason(exc)}.", file=path) from exc
    except OSError as exc:
        raise OutputError(f"cannot write the video: {exc}.", file=path) from exc
    return path


def select_clip(
    frames: np.ndarray, *, start: int = 0, stride: int = 1, length: int = 16
) -> ClipSelection:
    """Take ``length`` frames ``start, start + stride, ...`` from a video.

    When the video ends before the clip does, the indices wrap around to the video's start
    (index ``i`` becomes ``i mod N``, as if the video played in a loop): the loop padding of
    the paper authors' code. ``looped`` is then True and ``message`` says so.

    Parameters
    ----------
    frames
        ``(N, H, W, 3)`` frames of the whole video.
    start
        Index of the clip's first frame; must lie inside the video.
    stride
        Step between the clip's frames (the common C3D training code uses 4 in training).
    length
        Number of frames in the clip.
    """
    count = _frame_count(frames)
    _check_positive(stride=stride, length=length)
    if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
        raise VideoError(f"the clip start must be a non-negative integer, not {start!r}.")
    if start >= count:
        raise VideoError(
            f"the clip start {start} lies beyond the end of the video, which has {count} "
            f"frames (valid starts: 0..{count - 1})."
        )
    wanted = [int(start) + stride * k for k in range(length)]
    indices = [index % count for index in wanted]
    looped = wanted[-1] >= count
    message = None
    if looped:
        message = (
            f"the video has {count} frames but a clip of {length} frames from frame {start} "
            f"with stride {stride} needs frames up to {wanted[-1]}; indices wrap around to the "
            f"start of the video (loop padding), giving frames {indices}."
        )
    return ClipSelection(frames[indices], indices, looped, message)


def iter_clips(frames: np.ndarray, *, stride: int = 1, length: int = 16) -> Iterator[ClipSelection]:
    """Yield all consecutive, non-overlapping clips of a video.

    Clip ``k`` starts at frame ``k * length * stride``. Trailing frames too few for one more
    whole clip are left out; a video shorter than one clip yields a single loop-padded clip.
    """
    count = _frame_count(frames)
    _check_positive(stride=stride, length=length)
    span = length * stride
    last_offset = (length - 1) * stride  # from a clip's first frame to its last
    full_clips = 0 if count <= last_offset else (count - 1 - last_offset) // span + 1
    if full_clips == 0:
        yield select_clip(frames, start=0, stride=stride, length=length)
        return
    for clip in range(full_clips):
        yield select_clip(frames, start=clip * span, stride=stride, length=length)


# ---------------------------------------------------------------------------------------------
# reading


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            siblings = [p.name for p in path.parent.iterdir()]
            hint = did_you_mean(path.name, siblings)
        raise VideoError(f"the video file does not exist{hint}.", file=path)
    if not path.is_file():
        raise VideoError("this is not a file (a folder?); pass the path of a video.", file=path)
    return path


@contextlib.contextmanager
def _open_input(path: Path) -> Iterator[av.container.InputContainer]:
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(
            f"cannot read this file as a video: {_reason(exc)}. It may be corrupt, truncated "
            "or not a video at all.",
            file=path,
        ) from exc
    except OSError as exc:  # e.g. permission denied before FFmpeg sees the file
        raise VideoError(f"cannot open the file: {exc.strerror or exc}.", file=path) from exc
    try:
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    streams = list(container.streams.video)
    is_text = container.format.name in _TEXT_FORMATS or any(
        s.codec_context.name in _TEXT_CODECS for s in streams
    )
    if not streams or is_text:
        others = ", ".join(f"{s.type} ({s.codec_context.name})" for s in container.streams)
        found = "a text file" if is_text else f"only {others}" if others else "no streams"
        raise VideoError(
            f"the file has no video stream (found {found}); pass a video file.", file=path
        )
    return streams[0]


def _expected_frames(container: av.container.InputContainer, stream: av.VideoStream) -> int | None:
    """Frames the header promises: its count, else the stream or single-stream duration."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return None
    if stream.duration is not None and stream.time_base is not None:
        return round(float(stream.duration * stream.time_base * rate))
    # A container's duration covers all streams; an audio track may outlast the video.
    if container.duration is not None and len(container.streams) == 1:
        return round(container.duration / av.time_base * float(rate))
    return None


def _looks_truncated(decoded: int, expected: int) -> bool:
    # Headers of real files (UCF-101's xvid avi among them) can be off by a frame or two.
    missing = expected - decoded
    return missing > max(2, 0.05 * expected)


def _count_packets(container: av.container.InputContainer, stream: av.VideoStream, path) -> int:
    try:
        return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as exc:
        raise VideoError(f"the video is corrupt: {_reason(exc)}.", file=path) from exc


def _reason(exc: av.error.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or str(exc)


# ---------------------------------------------------------------------------------------------
# writing


def _check_frames_to_write(frames: np.ndarray, path: Path) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise VideoError(
            f"frames to write must have shape (N, H, W, 3) with N >= 1, got {frames.shape}.",
            file=path,
        )
    if frames.dtype != np.uint8:
        raise VideoError(
            f"frames to write must be uint8 RGB (0..255), got dtype {frames.dtype}; convert "
            "with np.clip(frames, 0, 255).astype(np.uint8).",
            file=path,
        )
    return np.ascontiguousarray(frames)


def _pick_codec(extension: str, codec: str | None, path: Path) -> str:
    available = av.codecs_available
    if codec is not None:
        if codec not in available or not _is_encoder(codec):
            raise VideoError(
                f"this PyAV build has no video encoder '{codec}'"
                f"{did_you_mean(codec, CODECS_BY_EXTENSION[extension])}; the defaults for "
                f"{extension} are {', '.join(CODECS_BY_EXTENSION[extension])}.",
                file=path,
            )
        return codec
    for candidate in CODECS_BY_EXTENSION[extension]:
        if candidate in available and _is_encoder(candidate):
            return candidate
    raise VideoError(
        f"this PyAV build has none of the encoders for {extension} "
        f"({', '.join(CODECS_BY_EXTENSION[extension])}); choose another container.",
        file=path,
    )


def _is_encoder(name: str) -> bool:
    try:
        return av.codec.Codec(name, "w").type == "video"
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False


def _pixel_format(codec: str, width: int, height: int) -> str:
    supported = [f.name for f in av.codec.Codec(codec, "w").video_formats or ()]
    if codec == "ffv1" and "bgr0" in supported:
        return "bgr0"  # lossless RGB
    odd = width % 2 or height % 2
    if "yuv420p" in supported and not (odd and codec == "libx264"):
        return "yuv420p"
    if "yuv444p" in supported:
        return "yuv444p"  # libx264 refuses 4:2:0 at odd sizes
    return supported[0]


def _encode(filename: str, frames: np.ndarray, rate: Fraction, codec: str, extension: str) -> None:
    _, height, width, _ = frames.shape
    container = av.open(filename, mode="w", format=_muxer(extension))
    try:
        stream = container.add_stream(codec, rate=rate, options=_CODEC_OPTIONS.get(codec, {}))
        stream.width = width
        stream.height = height
        stream.pix_fmt = _pixel_format(codec, width, height)
        if codec == "mpeg4":
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = _MPEG4_QSCALE * _FF_QP2LAMBDA
            if extension == ".avi":
                stream.codec_tag = "XVID"  # what UCF-101's files carry
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    finally:
        container.close()


def _muxer(extension: str) -> str:
    return {".mkv": "matroska", ".m4v": "mp4"}.get(extension, extension.lstrip("."))


# ---------------------------------------------------------------------------------------------
# clips


def _frame_count(frames: np.ndarray) -> int:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise VideoError(f"frames must be an array of shape (N, H, W, C), got {shape}.")
    if frames.shape[0] == 0:
        raise VideoError("the video has no frames to take a clip from.")
    return int(frames.shape[0])


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise VideoError(f"{name} must be a positive integer, not {value!r}.")
