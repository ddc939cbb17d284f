"""Specification of relgraph.datasets.synthetic: motion decides the class, colour is a cue."""

from __future__ import annotations

import numpy as np
import pytest

from relgraph.datasets.synthetic import (
    APPEARANCE_CUE,
    CLASS_COLOURS,
    CLASS_NAMES,
    COLOUR_JITTER,
    DIRECTIONS,
    make_clip,
    make_dataset,
    write_label_file,
)
from relgraph.errors import RelgraphError
from relgraph.io.labels import Labels


@pytest.fixture(scope="module")
def dataset():
    return make_dataset(1200, seed=7)


def test_make_clip_shapes_and_types():
    clip = make_clip(2, np.random.default_rng(0), frames=10, size=24)
    assert clip.frames.shape == (10, 24, 24, 3) and clip.frames.dtype == np.uint8
    assert clip.moving.shape == clip.static.shape == (10, 24, 24)
    assert clip.moving.dtype == clip.static.dtype == bool
    assert clip.label == 2


def test_make_dataset_shapes_and_types():
    frames, labels, moving, static = make_dataset(6, seed=0)
    assert frames.shape == (6, 16, 32, 32, 3) and frames.dtype == np.uint8
    assert labels.shape == (6,) and labels.dtype == np.int64
    assert moving.shape == static.shape == (6, 16, 32, 32)


def test_same_seed_gives_the_same_data_set():
    first, second = make_dataset(40, seed=3), make_dataset(40, seed=3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_give_different_data_sets():
    assert not np.array_equal(make_dataset(8, seed=1)[0], make_dataset(8, seed=2)[0])


@pytest.mark.parametrize("n", [4, 10, 401])
def test_classes_are_balanced_to_within_one_clip(n):
    counts = np.bincount(make_dataset(n, seed=0)[1], minlength=len(CLASS_NAMES))
    assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_only_pixels_of_moving_objects_change_between_frames(dataset):
    frames, _, moving, _ = dataset
    changed = (frames[:, 1:] != frames[:, :-1]).any(axis=-1)
    assert not (changed & ~(moving[:, 1:] | moving[:, :-1])).any()


def test_most_moving_object_pixels_change_between_frames(dataset):
    frames, _, moving, _ = dataset
    changed = (frames[:, 1:] != frames[:, :-1]).any(axis=-1)
    swept = moving[:, 1:] | moving[:, :-1]
    assert changed[swept].mean() > 0.5


def test_distractor_pixels_never_change(dataset):
    frames, _, _, static = dataset
    still = static[:, 1:] & static[:, :-1]
    assert np.array_equal(frames[:, 1:][still], frames[:, :-1][still])


def test_every_clip_has_moving_objects_and_distractors(dataset):
    _, _, moving, static = dataset
    assert moving.any(axis=(2, 3)).all()
    assert static.any(axis=(1, 2, 3)).all()


def test_moving_and_static_masks_do_not_overlap(dataset):
    _, _, moving, static = dataset
    assert not (moving & static).any()


def test_moving_objects_step_1_or_2_pixels_per_frame_in_the_class_direction(dataset):
    _, labels, moving, _ = dataset
    for clip in range(50):
        dy, dx = DIRECTIONS[labels[clip]]
        now, later = moving[clip, :-1], moving[clip, 1:]
        reachable = np.roll(now, (dy, dx), axis=(1, 2)) | np.roll(
            now, (2 * dy, 2 * dx), axis=(1, 2)
        )
        assert not (later & ~reachable).any(), f"clip {clip} ({CLASS_NAMES[labels[clip]]})"


def test_distractors_wear_the_colours_of_the_moving_objects(dataset):
    frames, _, moving, static = dataset
    for clip in range(50):
        moving_colours = {tuple(c) for c in frames[clip][moving[clip]]}
        static_colours = {tuple(c) for c in frames[clip][static[clip]]}
        assert static_colours <= moving_colours


def assert_class_means_agree(values: np.ndarray, labels: np.ndarray) -> None:
    """Each class's mean of per-clip ``values`` lies within 5 standard errors of the others'."""
    for label in range(len(CLASS_NAMES)):
        inside, outside = values[labels == label], values[labels != label]
        standard_error = np.sqrt(inside.var(0) / len(inside) + outside.var(0) / len(outside))
        gap = np.abs(inside.mean(0) - outside.mean(0))
        assert (gap <= 5 * standard_error + 1e-9).all(), f"class {CLASS_NAMES[label]}"


@pytest.fixture(scope="module")
def motion_only():
    return make_dataset(1200, seed=7, cue=0.0)


@pytest.mark.parametrize("frame", [0, 15])
def test_single_frame_object_positions_do_not_depend_on_the_class(dataset, frame):
    _, labels, moving, static = dataset
    objects = (moving | static)[:, frame].astype(np.float64)
    # Where objects sit, by row and by column, and how much they cover.
    assert_class_means_agree(objects.mean(axis=1), labels)
    assert_class_means_agree(objects.mean(axis=2), labels)
    assert_class_means_agree(moving[:, frame].mean(axis=(1, 2))[:, None], labels)


@pytest.mark.parametrize("frame", [0, 15])
def test_without_the_cue_single_frame_colours_do_not_depend_on_the_class(motion_only, frame):
    frames, labels, _, _ = motion_only
    image = frames[:, frame].astype(np.float64)
    assert_class_means_agree(image.mean(axis=(1, 2)), labels)
    assert_class_means_agree(image.std(axis=(1, 2)), labels)


def test_the_cue_changes_colours_only(dataset, motion_only):
    frames, labels, moving, static = dataset
    plain_frames, plain_labels, plain_moving, plain_static = motion_only
    np.testing.assert_array_equal(labels, plain_labels)
    np.testing.assert_array_equal(moving, plain_moving)
    np.testing.assert_array_equal(static, plain_static)
    background = ~(moving | static)
    np.testing.assert_array_equal(frames[background], plain_frames[background])
    assert not np.array_equal(frames[moving], plain_frames[moving])


def near(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Whether each pixel lies within the jitter of ``colour`` or of its complement."""
    return (np.abs(pixels - colour) <= COLOUR_JITTER).all(-1) | (
        np.abs(pixels - (255 - colour)) <= COLOUR_JITTER
    ).all(-1)


def test_with_a_full_cue_every_object_wears_its_class_colour():
    frames, labels, moving, static = make_dataset(200, seed=5, cue=1.0)
    pixels = frames.astype(np.int64)
    colours = CLASS_COLOURS[labels][:, None, None, None, :]
    objects = moving | static
    assert near(pixels, colours)[objects].all()
    # and no other class's colour fits them
    for other in range(1, len(CLASS_NAMES)):
        shifted = CLASS_COLOURS[(labels + other) % len(CLASS_NAMES)][:, None, None, None, :]
        assert not near(pixels, shifted)[objects].any()


def test_a_single_frame_tells_the_class_by_colour_as_often_as_the_cue_says():
    # One moving object per clip is forced by reading frame 0 of clips of one object only.
    frames, labels, moving, _ = make_dataset(4000, seed=11)
    single = np.array([_one_object(mask) for mask in moving[:, 0]])
    pixels = frames[single, 0].astype(np.int64)
    votes = np.stack(
        [(near(pixels, colour) & moving[single, 0]).sum((1, 2)) for colour in CLASS_COLOURS], 1
    )
    cued = votes[np.arange(len(votes)), labels[single]] == moving[single, 0].sum((1, 2))
    count = int(single.sum())
    spread = 4 * np.sqrt(APPEARANCE_CUE * (1 - APPEARANCE_CUE) / count)
    # A random colour falls in a class's box now and then (under 2 %), hence the small bonus.
    assert APPEARANCE_CUE - spread <= cued.mean() <= APPEARANCE_CUE + 0.02 + spread


def _one_object(mask: np.ndarray) -> bool:
    """Whether the moving pixels of one frame form one 4-connected piece (on the torus)."""
    seen = np.zeros_like(mask)
    points = np.argwhere(mask)
    if len(points) == 0:
        return False
    stack = [tuple(points[0])]
    size = mask.shape[0]
    while stack:
        y, x = stack.pop()
        if seen[y, x] or not mask[y, x]:
            continue
        seen[y, x] = True
        stack += [((y + 1) % size, x), ((y - 1) % size, x)]
        stack += [(y, (x + 1) % size), (y, (x - 1) % size)]
    return bool(seen.sum() == mask.sum())


@pytest.mark.parametrize("cue", [-0.1, 1.5, "high", True])
def test_a_cue_outside_zero_to_one_is_an_error(cue):
    with pytest.raises(RelgraphError, match="cue must be a probability"):
        make_dataset(4, seed=0, cue=cue)
    with pytest.raises(RelgraphError, match="cue must be a probability"):
        make_clip(0, np.random.default_rng(0), cue=cue)


def test_label_file_lists_the_classes_in_ucf_format(tmp_path):
    path = write_label_file(tmp_path / "synthetic.txt")
    assert path.read_text().splitlines()[0] == f"1 {CLASS_NAMES[0]}"
    assert Labels.from_file(path).names == list(CLASS_NAMES)


@pytest.mark.parametrize("label", [-1, len(CLASS_NAMES)])
def test_out_of_range_label_is_an_error(label):
    with pytest.raises(RelgraphError, match="out of range"):
        make_clip(label, np.random.default_rng(0))
