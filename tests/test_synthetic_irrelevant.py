"""Irrelevant motion in the synthetic clips: objects that oscillate or flicker in place."""

from __future__ import annotations

import numpy as np
import pytest

from relgraph.datasets.synthetic import make_clip, make_dataset, make_set


@pytest.fixture(scope="module")
def pair():
    return make_set(60, seed=9), make_set(60, seed=9, irrelevant_motion=True)


def test_without_the_option_the_clips_are_unchanged_and_the_mask_is_empty(pair):
    plain, _ = pair
    frames, labels, moving, static = make_dataset(60, seed=9)
    assert np.array_equal(plain.frames, frames) and np.array_equal(plain.labels, labels)
    assert np.array_equal(plain.moving, moving) and np.array_equal(plain.static, static)
    assert not plain.irrelevant.any()


def test_irrelevant_objects_only_change_their_own_pixels(pair):
    plain, odd = pair
    assert odd.irrelevant.any(axis=(1, 2, 3)).all(), "every clip has irrelevant motion"
    assert np.array_equal(plain.labels, odd.labels)
    assert np.array_equal(plain.moving, odd.moving)
    outside = ~odd.irrelevant
    assert np.array_equal(plain.frames[outside], odd.frames[outside])
    # masks are disjoint; static loses what the irrelevant objects cover
    assert not (odd.irrelevant & odd.moving).any() and not (odd.irrelevant & odd.static).any()
    assert np.array_equal(odd.static, plain.static & ~odd.irrelevant)


def test_irrelevant_objects_move_but_go_nowhere(pair):
    _, odd = pair
    clips = odd.frames.astype(np.int64)
    mask = odd.irrelevant
    # they change from frame to frame ...
    changed = (clips[:, 1:] != clips[:, :-1]).any(axis=-1) & mask[:, 1:]
    assert changed.any(axis=(1, 2, 3)).mean() > 0.9
    # ... and come back every 4 frames: period 4 wherever no moving object is near
    moving = odd.moving
    clear = mask[:, :-4] & mask[:, 4:] & ~moving[:, :-4] & ~moving[:, 4:]
    same = (clips[:, :-4] == clips[:, 4:]).all(axis=-1)
    assert same[clear].mean() > 0.999
    # the mask's centre stays in place over the clip (for clips without moving occlusion)
    sizes = mask.sum(axis=(2, 3))
    assert (sizes > 0).all()


def test_make_clip_has_the_option_and_the_mask():
    clip = make_clip(1, np.random.default_rng(2), irrelevant_motion=True)
    assert clip.irrelevant.shape == clip.moving.shape and clip.irrelevant.any()
    assert not make_clip(1, np.random.default_rng(2)).irrelevant.any()
