"""benchmarks/motion_localization.py: its masks, its shares, and the paper's claim at small N."""

from __future__ import annotations

import math

import numpy as np
import pytest
from repo_scripts import load_script

from relgraph.datasets.synthetic import make_dataset


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/motion_localization.py")


def test_moving_static_and_background_partition_every_frame(bench):
    _, _, moving, static = make_dataset(8, seed=4)
    for clip in range(8):
        masks = bench.region_masks(moving[clip], static[clip])
        total = masks["moving"].astype(int) + masks["static"] + masks["background"]
        assert (total == 1).all()
        assert not (masks["trail"] & ~masks["background"]).any()
        np.testing.assert_array_equal(masks["motion"], masks["moving"] | masks["trail"])


def test_trail_is_where_a_moving_object_was_or_will_be(bench):
    moving = np.zeros((3, 4, 4), dtype=bool)
    moving[0, 0, 0] = moving[1, 0, 1] = moving[2, 0, 2] = True  # one pixel moving right
    trail = bench.region_masks(moving, np.zeros_like(moving))["trail"]
    assert np.argwhere(trail).tolist() == [[0, 0, 1], [1, 0, 0], [1, 0, 2], [2, 0, 1]]


def test_positive_shares_ignore_negative_relevance(bench):
    relevance = np.array([[3.0, -5.0], [1.0, 0.0]])
    left = np.array([[True, False], [True, False]])
    top = np.array([[True, True], [False, False]])
    masks = {"left": left, "top": top}
    shares = bench.positive_shares(relevance, masks)
    assert shares == {"left": 1.0, "top": 0.75}
    assert all(math.isnan(v) for v in bench.positive_shares(-np.abs(relevance), masks).values())


def test_temporal_map_puts_more_positive_relevance_on_moving_objects(bench):
    """The paper's claim on the shipped demo model (the benchmark at 24 clips, authors' options)."""
    args = bench.build_parser().parse_args(["--clips", "24", "--seed", "2019"])
    report = bench.run(args)
    assert report["accuracy"] >= 0.9
    difference = report["temporal_minus_spatiotemporal"]
    moving, static = difference["moving"], difference["static"]
    assert moving["mean"] - moving["ci95"] > 0, moving
    assert static["mean"] + static["ci95"] < 0, static
    assert moving["clips_where_temporal_is_higher"] >= 0.6
