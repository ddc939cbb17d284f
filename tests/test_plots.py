"""Specification of relgraph.plots: the paper's figure, the animation and per-frame totals."""

from __future__ import annotations

import os
import warnings

import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from relgraph.errors import OutputError, RelgraphError
from relgraph.io.plots import PAPER_COLUMNS, animation, figure_frames, figure_paper, paper_columns

FRAME_SIZE = 32
MAP_SIZE = 8


def synthetic_clip(num_frames: int = 16, seed: int = 0):
    """Frames (T, 32, 32, 3) uint8 and three (T, 8, 8) maps at a lower resolution."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    spatiotemporal = rng.uniform(-1, 1, (num_frames, MAP_SIZE, MAP_SIZE))
    spatial = rng.uniform(-1, 1, (num_frames, MAP_SIZE, MAP_SIZE))
    return frames, spatiotemporal, spatial, spatiotemporal - spatial


def image_axes_by_row(figure):
    """{row: [axes in that row, left to right]} for the axes that show an image."""
    rows: dict[int, list] = {}
    for ax in figure.axes:
        if ax.images:
            spec = ax.get_subplotspec()
            rows.setdefault(spec.rowspan.start, []).append((spec.colspan.start, ax))
    return {row: [ax for _, ax in sorted(cells)] for row, cells in rows.items()}


def rendered_pixel(figure, ax, x: float, y: float) -> np.ndarray:
    """RGB of the rendered figure at data point (x, y) of ``ax``."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())
    display_x, display_y = ax.transData.transform((x, y))
    return pixels[int(pixels.shape[0] - display_y), int(display_x), :3]


def test_paper_columns_for_16_frames_are_frames_1_6_10_16():
    assert paper_columns(16) == (0, 5, 9, 15) == PAPER_COLUMNS


def test_paper_columns_for_other_lengths_keep_the_first_and_last_frame():
    assert paper_columns(8)[0] == 0
    assert paper_columns(8)[-1] == 7
    assert paper_columns(1) == (0,)


def test_figure_paper_has_four_rows_of_one_image_per_column():
    figure = figure_paper(*synthetic_clip(), columns=(0, 3, 7))
    rows = image_axes_by_row(figure)
    assert sorted(rows) == [0, 1, 2, 3]
    assert [len(rows[row]) for row in range(4)] == [3, 3, 3, 3]


def test_figure_paper_labels_rows_original_spatiotemporal_spatial_temporal():
    rows = image_axes_by_row(figure_paper(*synthetic_clip()))
    labels = [rows[row][0].get_ylabel() for row in range(4)]
    assert labels == ["original", "spatio-temporal", "spatial", "temporal"]


def test_figure_paper_heads_columns_with_one_based_frame_numbers():
    rows = image_axes_by_row(figure_paper(*synthetic_clip(), columns=(0, 5, 9, 15)))
    assert [ax.get_title() for ax in rows[0]] == ["frame 1", "frame 6", "frame 10", "frame 16"]


def test_figure_paper_shows_the_chosen_frame_of_each_map():
    frames, spatiotemporal, spatial, temporal = synthetic_clip()
    rows = image_axes_by_row(figure_paper(frames, spatiotemporal, spatial, temporal, columns=(4,)))
    np.testing.assert_array_equal(rows[0][0].images[0].get_array(), frames[4])
    for row, relevance in enumerate((spatiotemporal, spatial, temporal), start=1):
        np.testing.assert_array_equal(rows[row][0].images[0].get_array(), relevance[4])


def test_figure_paper_colour_limits_are_exactly_minus_one_to_one_for_every_map():
    rows = image_axes_by_row(figure_paper(*synthetic_clip()))
    for row in (1, 2, 3):
        for ax in rows[row]:
            assert ax.images[0].get_clim() == (-1.0, 1.0)


def test_figure_paper_colormap_is_diverging_blue_white_red():
    rows = image_axes_by_row(figure_paper(*synthetic_clip()))
    image = rows[1][0].images[0]
    most_negative, zero, most_positive = image.to_rgba(np.array([-1.0, 0.0, 1.0]))
    np.testing.assert_allclose(zero[:3], 1.0)
    assert most_negative[2] > most_negative[0]
    assert most_positive[0] > most_positive[2]


def test_figure_paper_renders_zero_relevance_as_white_pixels():
    frames, spatiotemporal, spatial, temporal = synthetic_clip()
    spatial[:, :, : MAP_SIZE // 2] = 0.0  # left half of every spatial map has no relevance
    spatial[:, :, MAP_SIZE // 2 :] = 1.0  # right half: the most positive relevance
    figure = figure_paper(frames, spatiotemporal, spatial, temporal)
    ax = image_axes_by_row(figure)[2][0]
    zero_pixel = rendered_pixel(figure, ax, FRAME_SIZE / 4, FRAME_SIZE / 2)
    positive_pixel = rendered_pixel(figure, ax, 3 * FRAME_SIZE / 4, FRAME_SIZE / 2)
    assert zero_pixel.min() >= 250
    assert positive_pixel[0] > 100 and positive_pixel[1:].max() < 30


def test_figure_paper_stretches_lower_resolution_maps_over_the_frame():
    rows = image_axes_by_row(figure_paper(*synthetic_clip()))
    frame_extent = rows[0][0].images[0].get_extent()
    for row in (1, 2, 3):
        assert rows[row][0].images[0].get_extent() == frame_extent


def test_figure_paper_has_exactly_one_colour_bar():
    figure = figure_paper(*synthetic_clip())
    colour_bars = [ax for ax in figure.axes if not ax.images]
    assert len(colour_bars) == 1
    assert colour_bars[0].get_ylim() == (-1.0, 1.0)


def test_figure_paper_writes_title_and_one_label_under_each_column():
    labels = ["WallPushups 0.41", "PullUps 0.88"]
    figure = figure_paper(
        *synthetic_clip(), columns=(0, 1), title="PullUps 0.93", column_labels=labels
    )
    assert figure.get_suptitle() == "PullUps 0.93"
    assert [ax.get_xlabel() for ax in image_axes_by_row(figure)[3]] == labels


def test_figure_paper_saves_a_png_that_decodes_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "figure.png"
    figure = figure_paper(*synthetic_clip(), path=target)
    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.size == (round(figure.bbox.width), round(figure.bbox.height))
    assert os.listdir(tmp_path) == ["figure.png"]


def test_figure_paper_with_an_unknown_file_suffix_raises_output_error(tmp_path):
    with pytest.raises(OutputError, match=r"\.png"):
        figure_paper(*synthetic_clip(), path=tmp_path / "figure.xyz")
    assert os.listdir(tmp_path) == []


def test_figure_paper_column_outside_the_clip_raises_listing_the_valid_range():
    with pytest.raises(RelgraphError, match=r"\[9, 15\].*0\.\.7"):
        figure_paper(*synthetic_clip(num_frames=8), columns=(0, 5, 9, 15))


def test_figure_paper_negative_column_raises():
    with pytest.raises(RelgraphError, match=r"0\.\.15"):
        figure_paper(*synthetic_clip(), columns=(-1,))


def test_figure_paper_defaults_to_the_paper_positions_for_other_clip_lengths():
    rows = image_axes_by_row(figure_paper(*synthetic_clip(num_frames=8)))
    assert len(rows[0]) == len(paper_columns(8))


def test_figure_paper_column_labels_of_the_wrong_length_raise():
    with pytest.raises(RelgraphError, match="one label per column"):
        figure_paper(*synthetic_clip(), columns=(0, 1), column_labels=["only one"])


def test_figure_paper_unknown_colormap_raises_suggesting_a_name():
    with pytest.raises(RelgraphError, match="seismic"):
        figure_paper(*synthetic_clip(), cmap="seismik")


def test_figure_paper_accepts_a_colormap_object():
    figure = figure_paper(*synthetic_clip(), cmap=matplotlib.colormaps["bwr"])
    zero = image_axes_by_row(figure)[1][0].images[0].to_rgba(np.array([0.0]))[0]
    np.testing.assert_allclose(zero[:3], 1.0)


def test_maps_with_nan_raise_naming_the_map():
    frames, spatiotemporal, spatial, temporal = synthetic_clip()
    spatial[3, 0, 0] = np.nan
    with pytest.raises(RelgraphError, match="spatial map has 1 NaN"):
        figure_paper(frames, spatiotemporal, spatial, temporal)


def test_frames_and_maps_with_different_lengths_raise():
    frames, spatiotemporal, spatial, temporal = synthetic_clip()
    with pytest.raises(RelgraphError, match="16 frames but the maps have 8"):
        figure_paper(frames, spatiotemporal[:8], spatial[:8], temporal[:8])


def test_maps_with_a_batch_dimension_raise():
    frames, spatiotemporal, spatial, temporal = synthetic_clip()
    with pytest.raises(RelgraphError, match="batch dimension"):
        figure_paper(frames, spatiotemporal[None], spatial[None], temporal[None])


def test_float_frames_raise_asking_for_uint8():
    frames, spatiotemporal, spatial, temporal = synthetic_clip()
    with pytest.raises(RelgraphError, match="uint8"):
        figure_paper(frames / 255.0, spatiotemporal, spatial, temporal)


def test_all_zero_maps_draw_every_figure_without_warnings(tmp_path):
    frames = np.zeros((3, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    zeros = np.zeros((3, MAP_SIZE, MAP_SIZE))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure_paper(frames, zeros, zeros, zeros, path=tmp_path / "paper.png")
        figure_frames(zeros, zeros, zeros, path=tmp_path / "frames.png")
        animation(frames, zeros, zeros, zeros, tmp_path / "clip.gif")
    assert sorted(os.listdir(tmp_path)) == ["clip.gif", "frames.png", "paper.png"]
    for name, kind, frame_count in [
        ("paper.png", "PNG", 1),
        ("frames.png", "PNG", 1),
        ("clip.gif", "GIF", 3),
    ]:
        with Image.open(tmp_path / name) as image:
            assert (image.format, getattr(image, "n_frames", 1)) == (kind, frame_count), name
            image.seek(frame_count - 1)
            image.load()  # decodes the last frame: a truncated file fails here


def test_animation_gif_has_one_frame_per_clip_frame(tmp_path):
    target = tmp_path / "clip.gif"
    animation(*synthetic_clip(num_frames=5), target)
    with Image.open(target) as image:
        assert image.format == "GIF"
        assert image.n_frames == 5
        sizes = set()
        for index in range(5):
            image.seek(index)
            image.load()
            sizes.add(image.size)
    assert len(sizes) == 1
    assert os.listdir(tmp_path) == ["clip.gif"]


def test_animation_of_a_still_clip_keeps_every_frame(tmp_path):
    target = tmp_path / "clip.gif"
    frames = np.full((4, FRAME_SIZE, FRAME_SIZE, 3), 128, dtype=np.uint8)
    zeros = np.zeros((4, MAP_SIZE, MAP_SIZE))
    animation(frames, zeros, zeros, zeros, target)
    with Image.open(target) as image:
        assert image.n_frames == 4


def test_animation_shows_four_panels_of_about_160_pixels_side_by_side(tmp_path):
    target = tmp_path / "clip.gif"
    animation(*synthetic_clip(num_frames=2), target)
    with Image.open(target) as image:
        width, height = image.size
    assert 4 * 140 <= width <= 4 * 200
    assert 140 <= height <= 260


def test_animation_frame_duration_follows_fps(tmp_path):
    target = tmp_path / "clip.gif"
    animation(*synthetic_clip(num_frames=2), target, fps=4)
    with Image.open(target) as image:
        assert image.info["duration"] == 250


def test_animation_rejects_a_non_positive_fps(tmp_path):
    with pytest.raises(RelgraphError, match="fps"):
        animation(*synthetic_clip(num_frames=2), tmp_path / "clip.gif", fps=0)


def test_figure_frames_lines_are_the_positive_relevance_summed_per_frame():
    _, spatiotemporal, spatial, temporal = synthetic_clip(num_frames=6)
    figure = figure_frames(spatiotemporal, spatial, temporal)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    expected = {"spatio-temporal": spatiotemporal, "spatial": spatial, "temporal": temporal}
    for name, relevance in expected.items():
        positive_total = [np.sum(frame[frame > 0]) for frame in relevance]
        np.testing.assert_allclose(lines[name].get_ydata(), positive_total)


def test_figure_frames_x_axis_is_frame_numbers_one_to_t():
    _, spatiotemporal, spatial, temporal = synthetic_clip(num_frames=7)
    figure = figure_frames(spatiotemporal, spatial, temporal)
    for line in figure.axes[0].get_lines():
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 8))


def test_figure_frames_saves_a_png_that_decodes(tmp_path):
    target = tmp_path / "frames.png"
    figure = figure_frames(*synthetic_clip(num_frames=4)[1:], path=target, title="PullUps")
    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.size == (round(figure.bbox.width), round(figure.bbox.height))
        image.load()
    assert os.listdir(tmp_path) == ["frames.png"]


@settings(max_examples=8, deadline=None)
@given(
    st.integers(1, 20).flatmap(
        lambda num_frames: arrays(
            np.float64,
            (3, num_frames, 2, 3),
            elements=st.one_of(st.just(0.0), st.floats(-2, 2, allow_subnormal=False)),
        )
    )
)
def test_figure_frames_positive_totals_hold_for_any_length_and_exact_zeros(maps):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = figure_frames(*maps)
    totals = [line.get_ydata() for line in figure.axes[0].get_lines()]
    np.testing.assert_allclose(totals, np.where(maps > 0, maps, 0).sum(axis=(2, 3)))
