"""Figures of a discriminative explanation: the paper's grid, an animation, per-frame totals.

All functions take one clip as plain NumPy arrays (the caller converts tensors and drops the
batch dimension): ``frames`` is uint8 ``(T, H, W, 3)`` RGB as it should be displayed, and the
three maps are float ``(T, h, w)``, already normalised (e.g. to [-1, 1], the temporal map to
[-2, 2]). Maps may have a lower resolution than the frames; they are stretched over the frame.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot,
so nothing here touches global matplotlib state or needs a display.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from PIL import Image

from relgraph.errors import ArgumentError, OutputError, did_you_mean
from relgraph.io.outputs import atomic_path

__all__ = ["animation", "figure_frames", "figure_paper", "paper_columns"]

#: Frame indices (0-based) the paper shows for a 16-frame clip: frames 1, 6, 10 and 16.
PAPER_COLUMNS: tuple[int, ...] = (0, 5, 9, 15)

#: Colour limits of the normalised maps; values beyond are clipped, as in the paper.
COLOUR_LIMITS: tuple[float, float] = (-1.0, 1.0)

ROW_NAMES: tuple[str, ...] = ("original", "spatio-temporal", "spatial", "temporal")

_MAP_NAMES: tuple[str, ...] = ("spatiotemporal", "spatial", "temporal")
_PANEL_INCHES = 1.7
_DPI = 100


def paper_columns(num_frames: int) -> tuple[int, ...]:
    """The frames the paper shows, rescaled to a clip of ``num_frames`` frames.

    For 16 frames this is ``(0, 5, 9, 15)`` (frames 1, 6, 10, 16); for other lengths the same
    relative positions, without duplicates.

    Parameters
    ----------
    num_frames
        Number of frames ``T`` in the clip (at least 1).

    Returns
    -------
    tuple of int
        0-based frame indices in increasing order.
    """
    if num_frames < 1:
        raise ArgumentError(f"a clip needs at least one frame, got {num_frames}")
    last = PAPER_COLUMNS[-1]
    scaled = (round(index * (num_frames - 1) / last) for index in PAPER_COLUMNS)
    return tuple(sorted(set(scaled)))


def figure_paper(
    frames: np.ndarray,
    spatiotemporal: np.ndarray,
    spatial: np.ndarray,
    temporal: np.ndarray,
    *,
    columns: Sequence[int] | None = None,
    title: str | None = None,
    column_labels: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    cmap: str | Colormap = "seismic",
) -> Figure:
    """The layout of Figure 2 of Hiley et al. (2019): frames and the three maps, by column.

    Rows are the original frames, the spatio-temporal, spatial and temporal maps; columns are
    the chosen frames, headed "frame 1", "frame 6", ... (1-based). Maps use a diverging
    colormap, white at zero, with colour limits exactly (-1, 1) (values beyond are clipped,
    so the temporal map's [-2, 2] saturates) and share one colour bar.

    Parameters
    ----------
    frames
        uint8 ``(T, H, W, 3)`` RGB frames.
    spatiotemporal, spatial, temporal
        float ``(T, h, w)`` normalised maps.
    columns
        0-based frame indices to show; default :func:`paper_columns` (``(0, 5, 9, 15)`` for
        ``T = 16``).
    title
        Figure title, e.g. the predicted class and its probability.
    column_labels
        One text per column written under it, e.g. each frozen frame's own prediction.
    path
        If given, the figure is saved there atomically (PNG unless the suffix names another
        format matplotlib writes, such as ``.pdf`` or ``.svg``).
    cmap
        A diverging colormap (name or object) that is white at its centre.

    Returns
    -------
    Figure
        The figure, on an Agg canvas.

    Raises
    ------
    RelgraphError
        If the arrays do not fit together, a column is outside ``0..T-1``, the number of
        column labels differs from the number of columns, or the colormap is unknown.
    OutputError
        If ``path`` cannot be written.
    """
    maps = _check_clip(frames, spatiotemporal, spatial, temporal)
    num_frames = frames.shape[0]
    columns = _check_columns(columns, num_frames)
    colormap = _colormap(cmap)
    if column_labels is not None and len(column_labels) != len(columns):
        raise ArgumentError(
            f"column_labels has {len(column_labels)} entries but there are {len(columns)} "
            f"columns {list(columns)}: give one label per column"
        )

    num_rows = len(ROW_NAMES)
    figure = Figure(
        figsize=(_PANEL_INCHES * len(columns) + 1.6, _PANEL_INCHES * num_rows + 0.6),
        dpi=_DPI,
        layout="constrained",
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, len(columns), squeeze=False)
    extent = _frame_extent(frames)
    image = None
    for column, frame_index in enumerate(columns):
        axes[0, column].imshow(frames[frame_index], interpolation="nearest", extent=extent)
        axes[0, column].set_title(f"frame {frame_index + 1}", fontsize=10)
        for row, relevance in enumerate(maps, start=1):
            image = _show_map(axes[row, column], relevance[frame_index], colormap, extent)
        if column_labels is not None:
            axes[-1, column].set_xlabel(textwrap.fill(str(column_labels[column]), 22), fontsize=9)
    for row, name in enumerate(ROW_NAMES):
        axes[row, 0].set_ylabel(name, fontsize=10)
    for ax in axes.flat:
        _bare(ax)
    colour_bar = figure.colorbar(
        image, ax=axes[1:, :].ravel().tolist(), extend="both", shrink=0.9, aspect=30
    )
    colour_bar.set_label("relevance (normalised)", fontsize=9)
    if title is not None:
        figure.suptitle(title, fontsize=12)
    if path is not None:
        _save(figure, path)
    return figure


def animation(
    frames: np.ndarray,
    spatiotemporal: np.ndarray,
    spatial: np.ndarray,
    temporal: np.ndarray,
    path: str | os.PathLike,
    *,
    fps: float = 4,
    title: str | None = None,
) -> Path:
    """Write all ``T`` frames as an animated GIF: frame and the three maps side by side.

    Colours are those of :func:`figure_paper` (``seismic``, limits (-1, 1)); each panel is
    about 160 pixels wide. The GIF loops forever.

    Parameters
    ----------
    frames
        uint8 ``(T, H, W, 3)`` RGB frames.
    spatiotemporal, spatial, temporal
        float ``(T, h, w)`` normalised maps.
    path
        The GIF to write (atomically).
    fps
        Frames per second (GIF timing has a resolution of 10 ms).
    title
        Shown above the panels, followed by the frame number.

    Returns
    -------
    Path
        ``path`` as a ``Path``.

    Raises
    ------
    RelgraphError
        If the arrays do not fit together or ``fps`` is not positive.
    OutputError
        If ``path`` cannot be written.
    """
    maps = _check_clip(frames, spatiotemporal, spatial, temporal)
    if not np.isfinite(fps) or fps <= 0:
        raise ArgumentError(f"fps must be a positive number, got {fps}")
    num_frames = frames.shape[0]
    colormap = _colormap("seismic")
    figure = Figure(figsize=(4 * 1.6 + 0.7, 1.6 + 0.55), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 4, squeeze=True)
    extent = _frame_extent(frames)
    frame_image = axes[0].imshow(frames[0], interpolation="nearest", extent=extent)
    map_images = [
        _show_map(ax, relevance[0], colormap, extent)
        for ax, relevance in zip(axes[1:], maps, strict=True)
    ]
    for ax, name in zip(axes, ROW_NAMES, strict=True):
        ax.set_title(name, fontsize=9)
        _bare(ax)
    colour_bar = figure.colorbar(map_images[0], ax=axes.tolist(), extend="both", aspect=15)
    colour_bar.ax.tick_params(labelsize=7)
    heading = figure.suptitle(_animation_heading(title, 0, num_frames), fontsize=9)
    canvas = figure.canvas
    canvas.draw()
    # Freeze the layout found for the first frame so panels do not move between frames.
    figure.set_layout_engine("none")

    rendered = []
    for frame_index in range(num_frames):
        frame_image.set_data(frames[frame_index])
        for image, relevance in zip(map_images, maps, strict=True):
            image.set_data(relevance[frame_index])
        # The heading changes every frame, which also keeps Pillow from merging frames that
        # happen to be identical (e.g. all-zero maps over a still scene).
        heading.set_text(_animation_heading(title, frame_index, num_frames))
        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
        rendered.append(Image.fromarray(np.ascontiguousarray(rgb)))

    target = Path(path)
    duration_ms = max(10, int(round(1000 / fps / 10)) * 10)
    with atomic_path(target) as temporary:
        rendered[0].save(
            temporary,
            format="GIF",
            save_all=True,
            append_images=rendered[1:],
            duration=duration_ms,
            loop=0,
        )
    return target


def figure_frames(
    spatiotemporal: np.ndarray,
    spatial: np.ndarray,
    temporal: np.ndarray,
    *,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Total positive relevance of each frame, for the three maps, as lines over frames 1..T.

    Shows which frames carry the evidence and how much of it is due to motion. The line of
    each map is labelled with its name (``"spatio-temporal"``, ``"spatial"``, ``"temporal"``).

    Parameters
    ----------
    spatiotemporal, spatial, temporal
        float ``(T, h, w)`` maps.
    path
        If given, the figure is saved there atomically (PNG unless the suffix says otherwise).
    title
        Figure title.

    Returns
    -------
    Figure
        The figure, on an Agg canvas.
    """
    maps = _check_maps(spatiotemporal, spatial, temporal)
    num_frames = maps[0].shape[0]
    frame_numbers = np.arange(1, num_frames + 1)
    figure = Figure(
        figsize=(max(5.0, 0.35 * num_frames + 1.5), 3.2), dpi=_DPI, layout="constrained"
    )
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    styles = (("black", "o", "-"), ("tab:blue", "s", "--"), ("tab:red", "^", "-"))
    for relevance, name, (colour, marker, line) in zip(maps, ROW_NAMES[1:], styles, strict=True):
        positive_total = np.clip(relevance, 0.0, None).sum(axis=(1, 2), dtype=np.float64)
        ax.plot(
            frame_numbers,
            positive_total,
            color=colour,
            marker=marker,
            linestyle=line,
            markersize=4,
            label=name,
        )
    ax.set_xlabel("frame")
    ax.set_ylabel("total positive relevance")
    ax.set_xticks(frame_numbers if num_frames <= 32 else ax.get_xticks())
    ax.set_xlim(0.5, num_frames + 0.5)
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if title is not None:
        ax.set_title(title, fontsize=11)
    if path is not None:
        _save(figure, path)
    return figure


def _check_maps(*maps: np.ndarray) -> list[np.ndarray]:
    """Check that the three maps are finite float arrays of one shape ``(T, h, w)``."""
    checked = []
    for name, relevance in zip(_MAP_NAMES, maps, strict=True):
        relevance = np.asarray(relevance)
        if relevance.ndim != 3:
            raise ArgumentError(
                f"the {name} map must be shaped (T, H, W) for one clip, got shape "
                f"{relevance.shape}; sum over colour channels and drop the batch dimension first"
            )
        if not np.issubdtype(relevance.dtype, np.number) or np.iscomplexobj(relevance):
            raise ArgumentError(f"the {name} map must be real numbers, got dtype {relevance.dtype}")
        relevance = relevance.astype(np.float64, copy=False)
        finite = np.isfinite(relevance)
        if not finite.all():
            raise ArgumentError(
                f"the {name} map has {int(finite.size - finite.sum())} NaN or infinite values; "
                "normalise with a safe division (an all-zero map must stay zero)"
            )
        checked.append(relevance)
    shapes = {relevance.shape for relevance in checked}
    if len(shapes) != 1:
        described = ", ".join(
            f"{name} {relevance.shape}" for name, relevance in zip(_MAP_NAMES, checked, strict=True)
        )
        raise ArgumentError(f"the three maps must have the same shape, got {described}")
    if checked[0].shape[0] < 1:
        raise ArgumentError("the maps have no frames (T = 0)")
    return checked


def _check_clip(
    frames: np.ndarray, spatiotemporal: np.ndarray, spatial: np.ndarray, temporal: np.ndarray
) -> list[np.ndarray]:
    """Check frames against the maps; return the maps as float arrays."""
    maps = _check_maps(spatiotemporal, spatial, temporal)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ArgumentError(
            f"frames must be shaped (T, H, W, 3) RGB for one clip, got shape {frames.shape}"
        )
    if frames.dtype != np.uint8:
        raise ArgumentError(
            f"frames must be uint8 RGB as displayed (0..255), got dtype {frames.dtype}; "
            "undo mean subtraction and BGR order before plotting"
        )
    if frames.shape[0] != maps[0].shape[0]:
        raise ArgumentError(
            f"frames has {frames.shape[0]} frames but the maps have {maps[0].shape[0]}"
        )
    return maps


def _check_columns(columns: Sequence[int] | None, num_frames: int) -> tuple[int, ...]:
    """Validate 0-based frame indices against ``0..num_frames-1``."""
    if columns is None:
        return paper_columns(num_frames)
    columns = tuple(columns)
    if not columns:
        raise ArgumentError("columns is empty: choose at least one frame to show")
    invalid = [
        column
        for column in columns
        if isinstance(column, bool)
        or not isinstance(column, (int, np.integer))
        or not 0 <= column < num_frames
    ]
    if invalid:
        raise ArgumentError(
            f"columns {invalid} are outside the valid range 0..{num_frames - 1} "
            f"(0-based frame indices of a clip of {num_frames} frames)"
        )
    return tuple(int(column) for column in columns)


def _colormap(cmap: str | Colormap) -> Colormap:
    """Look up a colormap by name (readable error if unknown), with its centre colour on zero."""
    if isinstance(cmap, Colormap):
        colormap = cmap
    else:
        try:
            colormap = matplotlib.colormaps[cmap]
        except KeyError:
            raise ArgumentError(
                f"unknown colormap '{cmap}'{did_you_mean(cmap, list(matplotlib.colormaps))}; "
                "use a diverging map that is white at zero, such as 'seismic' or 'bwr'"
            ) from None
    # With an even number of colours, zero falls on the first colour past the centre (a faint
    # red for seismic); an odd number puts the centre colour itself, white, on zero.
    if colormap.N % 2 == 0:
        colormap = colormap.resampled(colormap.N - 1)
    return colormap


def _frame_extent(frames: np.ndarray) -> tuple[float, float, float, float]:
    """Image extent in frame pixel coordinates, shared by frames and maps so they align."""
    height, width = frames.shape[1:3]
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def _show_map(ax: Axes, relevance: np.ndarray, colormap: Colormap, extent: tuple) -> AxesImage:
    """Draw one map stretched over the frame, white at zero, limits (-1, 1)."""
    low, high = COLOUR_LIMITS
    return ax.imshow(
        relevance,
        cmap=colormap,
        vmin=low,
        vmax=high,
        interpolation="nearest",
        extent=extent,
    )


def _bare(ax: Axes) -> None:
    """Hide ticks but keep the axis labels (row names, column labels)."""
    ax.set_xticks([])
    ax.set_yticks([])


def _animation_heading(title: str | None, frame_index: int, num_frames: int) -> str:
    """The heading of one animation frame."""
    counter = f"frame {frame_index + 1}/{num_frames}"
    return f"{title}  ({counter})" if title else counter


def _save(figure: Figure, path: str | os.PathLike) -> None:
    """Save a figure atomically in the format its suffix names (PNG without a suffix)."""
    target = Path(path)
    file_format = target.suffix[1:].lower() or "png"
    supported = figure.canvas.get_supported_filetypes()
    if file_format not in supported:
        raise OutputError(
            f"cannot save a figure as '.{file_format}': use one of "
            + ", ".join(f".{suffix}" for suffix in sorted(supported)),
            file=target,
        )
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format=file_format)
