"""A synthetic action data set whose class is decided by motion, for demo models.

Every clip shows a static textured background, one or two textured objects that move in the
class's direction (1 or 2 px per frame) and one to three static distractors that are copies
of the moving objects. Objects wrap around the frame edges (the frame is a torus) and start at
uniformly random positions, so in every single frame the objects' positions are uniform
whatever the class.

Motion decides the class. Appearance is a cue, as the scene is in real action data (a pool
suggests swimming): each object wears its class's typical colour (``CLASS_COLOURS``, jittered)
with probability ``cue`` (``APPEARANCE_CUE`` = 0.8 by default) and a uniformly random colour
otherwise. The distractors, being copies, wear the same colours, so a model that learned the
cue sees class evidence on static objects too; the discriminative method should tell that
spatial evidence apart from the motion. With ``cue=0`` a single frame carries no information
about the class, and the clips are otherwise identical (same seed, same positions, textures
and backgrounds; only the objects' colours differ).

Irrelevant motion (``irrelevant_motion=True``): one or two more objects of random colour that
move without going anywhere, so that a plain motion detector is not enough to find the
class's evidence. Each either *oscillates* in place (±1 or ±2 px along a random axis, period
4 frames, so it moves in both directions of that axis) or *flickers* (its texture swaps its
colour and the complement every 2 frames). Their pixels are the ``irrelevant`` mask. They are
drawn after every other random choice: the clips are otherwise those of the same seed
without them (the moving objects pass in front of them, they in front of the distractors).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relgraph.errors import ArgumentError, OutputError
from relgraph.io.video import write_video

__all__ = [
    "CLASS_NAMES",
    "SyntheticClip",
    "SyntheticSet",
    "make_clip",
    "make_dataset",
    "make_set",
    "write_label_file",
    "write_video_folders",
]

CLASS_NAMES: tuple[str, ...] = ("MoveRight", "MoveLeft", "MoveDown", "MoveUp")
# (dy, dx) per frame at speed 1, in class order; y grows downwards.
DIRECTIONS = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)], dtype=np.int64)

# The appearance cue: an object wears its class's typical colour (jittered) with probability
# APPEARANCE_CUE, any colour otherwise. Its texture pairs the colour with its complement:
# red/cyan, green/magenta, blue/yellow, light grey/near black.
CLASS_COLOURS = np.array([(220, 40, 40), (40, 200, 40), (40, 40, 220), (225, 225, 225)])
APPEARANCE_CUE = 0.8
COLOUR_JITTER = 30

MAX_MOVING = 2
MAX_DISTRACTORS = 3
MAX_IRRELEVANT = 2
# Offsets of an oscillating object along its axis, per frame (period 4), times its amplitude.
_OSCILLATION = np.array([0, 1, 0, -1], dtype=np.int64)
_CHUNK = 256  # clips rendered at once: bounds the memory of the gathers
_ALPHA = np.uint32(1 << 24)  # pixels are packed as R | G << 8 | B << 16 | covered << 24


@dataclass(frozen=True)
class SyntheticClip:
    """One synthetic clip and its ground truth.

    Attributes
    ----------
    frames
        uint8 RGB ``(T, H, W, 3)``.
    moving
        bool ``(T, H, W)``: pixels covered by a moving object in each frame.
    static
        bool ``(T, H, W)``: visible pixels of the static distractors (moving objects are drawn
        on top, so ``moving`` and ``static`` never overlap).
    label
        Class index into ``CLASS_NAMES``.
    irrelevant
        bool ``(T, H, W)``: visible pixels of the objects that oscillate or flicker in place
        (all False without ``irrelevant_motion``); disjoint from ``moving`` and ``static``.
    """

    frames: np.ndarray
    moving: np.ndarray
    static: np.ndarray
    label: int
    irrelevant: np.ndarray | None = None


@dataclass(frozen=True)
class SyntheticSet:
    """A synthetic data set with every ground-truth mask (see :func:`make_set`).

    ``frames`` uint8 ``(n, T, H, W, 3)``, ``labels`` int64 ``(n,)``; ``moving``, ``static``
    and ``irrelevant`` bool ``(n, T, H, W)``, pairwise disjoint.
    """

    frames: np.ndarray
    labels: np.ndarray
    moving: np.ndarray
    static: np.ndarray
    irrelevant: np.ndarray


def make_clip(
    label: int,
    rng: np.random.Generator,
    *,
    frames: int = 16,
    size: int = 32,
    cue: float = APPEARANCE_CUE,
    irrelevant_motion: bool = False,
) -> SyntheticClip:
    """Draw one clip of class ``label`` (index into ``CLASS_NAMES``)."""
    _check_geometry(frames, size)
    if isinstance(label, bool) or not isinstance(label, int | np.integer):
        raise ArgumentError(f"label must be a class index, not {label!r}.")
    if not 0 <= label < len(CLASS_NAMES):
        raise ArgumentError(
            f"label {label} is out of range: the classes are 0..{len(CLASS_NAMES) - 1} "
            f"({', '.join(CLASS_NAMES)})."
        )
    scene = _draw_scenes(np.array([label]), rng, size, _check_cue(cue), bool(irrelevant_motion))
    clip, moving, static, irrelevant = _render(scene, frames, size)
    return SyntheticClip(clip[0], moving[0], static[0], int(label), irrelevant[0])


def make_dataset(
    n: int,
    seed: int,
    *,
    frames: int = 16,
    size: int = 32,
    cue: float = APPEARANCE_CUE,
    irrelevant_motion: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` clips with balanced classes in random order, deterministic given ``seed``.

    Returns
    -------
    tuple
        ``frames`` uint8 ``(n, T, H, W, 3)``, ``labels`` int64 ``(n,)``, ``moving`` and
        ``static`` bool ``(n, T, H, W)``. Class counts differ by at most one. The
        ``irrelevant`` mask of ``irrelevant_motion`` comes with :func:`make_set`.
    """
    data = make_set(n, seed, frames=frames, size=size, cue=cue, irrelevant_motion=irrelevant_motion)
    return data.frames, data.labels, data.moving, data.static


def make_set(
    n: int,
    seed: int,
    *,
    frames: int = 16,
    size: int = 32,
    cue: float = APPEARANCE_CUE,
    irrelevant_motion: bool = False,
) -> SyntheticSet:
    """:func:`make_dataset` with every mask, the ``irrelevant`` one included."""
    _check_geometry(frames, size)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ArgumentError(f"n must be a positive number of clips, not {n!r}.")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % len(CLASS_NAMES))
    scene = _draw_scenes(labels, rng, size, _check_cue(cue), bool(irrelevant_motion))
    clips = np.empty((n, frames, size, size, 3), dtype=np.uint8)
    masks = [np.empty((n, frames, size, size), dtype=bool) for _ in range(3)]
    for begin in range(0, n, _CHUNK):
        part = slice(begin, min(begin + _CHUNK, n))
        chunk = {key: value[part] for key, value in scene.items()}
        clips[part], *parts = _render(chunk, frames, size)
        for mask, rendered in zip(masks, parts):
            mask[part] = rendered
    return SyntheticSet(clips, labels, *masks)


def write_label_file(path: str | os.PathLike) -> Path:
    """Write ``CLASS_NAMES`` as a UCF-101 style label file (``1 MoveRight`` per line)."""
    path = Path(path)
    text = "".join(f"{class_id} {name}\n" for class_id, name in enumerate(CLASS_NAMES, 1))
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(
            f"cannot write the label file: {exc.strerror or exc}.", file=path
        ) from exc
    return path


def write_video_folders(
    folder: str | os.PathLike,
    n: int,
    seed: int,
    *,
    frames: int | tuple[int, int] = 16,
    size: int = 32,
    extension: str = ".avi",
) -> list[Path]:
    """Write ``n`` synthetic clips as videos in one sub-folder per class (UCF-101's layout).

    ``frames`` may be a range ``(low, high)``: each video gets a random length in it (longer
    videos are the clip followed by the motion continued). Files are named
    ``v_<Class>_g<k>.avi``; returns their paths in order.
    """

    folder = Path(folder)
    low, high = (frames, frames) if isinstance(frames, int) else frames
    rng = np.random.default_rng(seed)
    lengths = rng.integers(low, high + 1, size=n)
    clips, labels, _, _ = make_dataset(n, seed, frames=int(lengths.max()), size=size)
    paths = []
    for k in range(n):
        name = CLASS_NAMES[int(labels[k])]
        (folder / name).mkdir(parents=True, exist_ok=True)
        path = folder / name / f"v_{name}_g{k:03d}{extension}"
        paths.append(write_video(path, clips[k, : int(lengths[k])], fps=8))
    return paths


# ---------------------------------------------------------------------------------------------
# drawing: all random choices first (vectorised over clips), then rendering


def _check_geometry(frames: int, size: int) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or frames < 2:
        raise ArgumentError(f"frames must be an integer >= 2 (motion needs two), not {frames!r}.")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 8:
        raise ArgumentError(f"size must be an integer >= 8 pixels, not {size!r}.")


def _check_cue(cue: float) -> float:
    if isinstance(cue, bool) or not isinstance(cue, int | float) or not 0 <= cue <= 1:
        raise ArgumentError(f"cue must be a probability in [0, 1], not {cue!r}.")
    return float(cue)


def _draw_scenes(
    labels: np.ndarray,
    rng: np.random.Generator,
    size: int,
    cue: float,
    irrelevant_motion: bool = False,
) -> dict[str, np.ndarray]:
    """Every random choice of ``len(labels)`` clips; nothing but the motion depends on labels."""
    n = len(labels)
    smallest = max(3, round(size * 5 / 32))
    largest = max(smallest, round(size / 4))
    objects = (n, MAX_MOVING)
    appearance = {
        "side": rng.integers(smallest, largest + 1, objects),
        "disc": rng.random(objects) < 0.5,
        "pattern": rng.integers(0, 4, objects),  # checker, vertical, horizontal, diagonal
        "period": rng.integers(1, 3, objects),  # cell width of the texture, pixels
        "colour": rng.integers(0, 256, (*objects, 3)),
    }
    moving_count = rng.integers(1, MAX_MOVING + 1, n)
    distractor_count = rng.integers(1, MAX_DISTRACTORS + 1, n)
    # A distractor is a copy of one of the clip's moving objects.
    copy_of = (rng.random((n, MAX_DISTRACTORS)) * moving_count[:, None]).astype(np.int64)
    scene = {f"object_{key}": value for key, value in appearance.items()}
    scene.update(
        labels=np.asarray(labels, dtype=np.int64),
        moving_active=np.arange(MAX_MOVING) < moving_count[:, None],
        distractor_active=np.arange(MAX_DISTRACTORS) < distractor_count[:, None],
        copy_of=copy_of,
        moving_start=rng.integers(0, size, (n, MAX_MOVING, 2)),
        moving_speed=rng.integers(1, 3, (n, MAX_MOVING)),
        distractor_position=rng.integers(0, size, (n, MAX_DISTRACTORS, 2)),
        background_base=rng.uniform(50, 200, (n, 3)),
        background_blobs=rng.normal(0, 1, (n, 5, 5, 3)) * rng.uniform(10, 40, (n, 1, 1, 1)),
        stripe_amplitude=rng.uniform(0, 35, n) * (rng.random(n) < 0.6),
        stripe_angle=rng.uniform(0, np.pi, n),
        stripe_period=rng.uniform(3, 10, n),
        stripe_phase=rng.uniform(0, 2 * np.pi, n),
        stripe_tint=rng.uniform(0.3, 1.0, (n, 3)),
        grain=rng.normal(0, 1, (n, size, size, 3)) * rng.uniform(0, 8, (n, 1, 1, 1)),
    )
    # The appearance cue is drawn last: with cue=0 the clips are those of a motion-only set.
    cued = rng.random(objects) < cue
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, (*objects, 3))
    typical = np.clip(CLASS_COLOURS[scene["labels"]][:, None, :] + jitter, 0, 255)
    scene["object_colour"] = np.where(cued[..., None], typical, scene["object_colour"])
    # Irrelevant motion is drawn after everything else: without it the clips are the same.
    slots = (n, MAX_IRRELEVANT)
    scene["irrelevant_active"] = np.zeros(slots, dtype=bool)
    if irrelevant_motion:
        scene.update(
            irrelevant_side=rng.integers(smallest, largest + 1, slots),
            irrelevant_disc=rng.random(slots) < 0.5,
            irrelevant_pattern=rng.integers(0, 4, slots),
            irrelevant_period=rng.integers(1, 3, slots),
            irrelevant_colour=rng.integers(0, 256, (*slots, 3)),
            irrelevant_active=np.arange(MAX_IRRELEVANT) < rng.integers(1, 3, n)[:, None],
            irrelevant_position=rng.integers(0, size, (*slots, 2)),
            irrelevant_flickers=rng.random(slots) < 0.5,
            irrelevant_axis=rng.integers(0, 2, slots),
            irrelevant_amplitude=rng.integers(1, 3, slots),
        )
    return scene


def _render(scene: dict[str, np.ndarray], frames: int, size: int):
    n = len(scene["labels"])
    sprites = _sprites(scene, size)  # (n, MAX_MOVING, H, W) packed, sprite at the top left
    clip_index = np.arange(n)[:, None, None, None]
    pixels = np.broadcast_to(_background(scene, size)[:, None], (n, frames, size, size)).copy()
    moving = np.zeros((n, frames, size, size), dtype=bool)
    static = np.zeros_like(moving)
    irrelevant = np.zeros_like(moving)
    time = np.arange(frames)

    def place(sprite: np.ndarray, top: np.ndarray, left: np.ndarray) -> np.ndarray:
        # Frame pixel (y, x) shows sprite pixel ((y - top) mod H, (x - left) mod W).
        rows = (np.arange(size) - top[..., None]) % size
        cols = (np.arange(size) - left[..., None]) % size
        return sprite[clip_index, rows[:, :, :, None], cols[:, :, None, :]]

    # Distractors first: moving objects pass in front of them.
    for slot in range(MAX_DISTRACTORS):
        sprite = sprites[np.arange(n), scene["copy_of"][:, slot]]
        sprite = sprite * scene["distractor_active"][:, slot, None, None]
        top, left = (
            np.repeat(scene["distractor_position"][:, slot, k, None], frames, 1) for k in (0, 1)
        )
        placed = place(sprite, top, left)
        covered = placed >= _ALPHA
        np.copyto(pixels, placed, where=covered)
        static |= covered
    if scene["irrelevant_active"].any():
        odd = {k[len("irrelevant_") :]: v for k, v in scene.items() if k.startswith("irrelevant_")}
        odd_sprites = _sprites({f"object_{k}": v for k, v in odd.items()}, size)
        # Flickering: the texture's colour and its complement swap every 2 frames.
        swapped = (time // 2) % 2 == 1  # (T,)
        for slot in range(MAX_IRRELEVANT):
            sprite = odd_sprites[:, slot] * odd["active"][:, slot, None, None]
            shift = odd["amplitude"][:, slot, None] * _OSCILLATION[time % 4][None, :]  # (n, T)
            shift = np.where(odd["flickers"][:, slot, None], 0, shift)
            along_rows = odd["axis"][:, slot, None] == 0
            top = odd["position"][:, slot, 0, None] + np.where(along_rows, shift, 0)
            left = odd["position"][:, slot, 1, None] + np.where(along_rows, 0, shift)
            placed = place(sprite, top, left)
            flip = odd["flickers"][:, slot, None] & swapped[None, :]  # (n, T)
            placed = np.where(flip[..., None, None], placed ^ np.uint32(0xFFFFFF), placed)
            covered = placed >= _ALPHA
            np.copyto(pixels, placed, where=covered)
            irrelevant |= covered
        static &= ~irrelevant
    steps = DIRECTIONS[scene["labels"]]  # (n, 2)
    for slot in range(MAX_MOVING):
        sprite = sprites[:, slot] * scene["moving_active"][:, slot, None, None]
        offset = (
            scene["moving_speed"][:, slot, None, None] * steps[:, None, :] * time[None, :, None]
        )
        position = scene["moving_start"][:, slot, None, :] + offset  # (n, T, 2)
        placed = place(sprite, position[..., 0], position[..., 1])
        covered = placed >= _ALPHA
        np.copyto(pixels, placed, where=covered)
        moving |= covered
    static &= ~moving
    irrelevant &= ~moving
    rgb = pixels.astype("<u4").view(np.uint8).reshape(n, frames, size, size, 4)[..., :3]
    return np.ascontiguousarray(rgb), moving, static, irrelevant


def _sprites(scene: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Packed textured objects, ``(n, MAX_MOVING, size, size)``, each at the canvas's top left."""
    y = np.arange(size)[:, None]
    x = np.arange(size)[None, :]
    side = scene["object_side"][..., None, None]
    centre = (side - 1) / 2
    in_square = (y < side) & (x < side)
    in_disc = (y - centre) ** 2 + (x - centre) ** 2 <= (side / 2) ** 2 + 0.25
    shape = np.where(scene["object_disc"][..., None, None], in_disc & in_square, in_square)

    period = scene["object_period"][..., None, None]
    texture_by_pattern = np.stack(
        np.broadcast_arrays(
            (y // period + x // period) % 2,
            (x // period) % 2,
            (y // period) % 2,
            ((x + y) // period) % 2,
        ),
        axis=-1,
    )
    texture = np.take_along_axis(
        texture_by_pattern, scene["object_pattern"][..., None, None, None], axis=-1
    )[..., 0].astype(bool)
    colour = scene["object_colour"].astype(np.uint32)
    # Texture alternates a colour with its complement: always visible, whatever the colour.
    rgb = np.where(
        texture[..., None], colour[:, :, None, None, :], 255 - colour[:, :, None, None, :]
    )
    return _pack(rgb) | np.where(shape, _ALPHA, np.uint32(0))


def _background(scene: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Packed static backgrounds ``(n, size, size)``: smooth blobs, stripes and grain."""
    coarse = scene["background_blobs"]
    ramp = np.linspace(0, coarse.shape[1] - 1, size)
    # Linear interpolation matrix from the coarse grid to the frame, rows and columns alike.
    upsample = np.maximum(0, 1 - np.abs(ramp[:, None] - np.arange(coarse.shape[1])[None, :]))
    blobs = (upsample @ coarse.transpose(0, 3, 1, 2) @ upsample.T).transpose(0, 2, 3, 1)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = scene["stripe_angle"][:, None, None]
    wave = np.sin(
        2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / scene["stripe_period"][:, None, None]
        + scene["stripe_phase"][:, None, None]
    )
    stripes = (scene["stripe_amplitude"][:, None, None] * wave)[..., None] * scene["stripe_tint"][
        :, None, None, :
    ]
    image = scene["background_base"][:, None, None, :] + blobs + stripes + scene["grain"]
    return _pack(np.clip(np.rint(image), 0, 255).astype(np.uint32))


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] | (rgb[..., 1] << np.uint32(8)) | (rgb[..., 2] << np.uint32(16))
