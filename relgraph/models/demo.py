"""The shipped demo models, trained on the synthetic clips (motion decides, colour hints), and
``run_demo``, what ``relgraph demo`` does with the first.

Three architectures, all made by ``scripts/train_demo_model.py`` (``--arch``): ``c3d-tiny``
(the demo model, ``DEMO_WEIGHTS``), ``r2plus1d-tiny`` (R(2+1)D blocks with batch norm and
residual adds, ``R2PLUS1D_DEMO_WEIGHTS``) and ``videomae-tiny`` (a 3-layer VideoMAE on 8
frames, ``VIDEOMAE_DEMO_WEIGHTS``; explained with ``attnlrp`` by default). Each classifies
``relgraph.datasets.synthetic`` clips, given through the ``hara`` preset at size 32, into
``relgraph.datasets.synthetic.CLASS_NAMES``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np

from relgraph.datasets.synthetic import CLASS_NAMES, make_clip
from relgraph.engine.graph import Graph, load_architecture
from relgraph.errors import ArgumentError
from relgraph.io.outputs import check_out_dir, ensure_out_dir
from relgraph.io.video import ClipSelection, write_video
from relgraph.pipeline.video import VideoExplanation, explain_video, load_model

__all__ = [
    "DEMO_ARCHITECTURE",
    "DEMO_LABELS",
    "DEMO_PREPROCESS",
    "DEMO_MODELS",
    "DEMO_WEIGHTS",
    "R2PLUS1D_DEMO_WEIGHTS",
    "VIDEOMAE_DEMO_WEIGHTS",
    "load_demo_model",
    "run_demo",
]

DEMO_ARCHITECTURE = "c3d-tiny"
DEMO_PREPROCESS = "hara"
# Package data installed as plain files (the package is never zipped), so a Path is safe.
DEMO_WEIGHTS = Path(
    str(resources.files("relgraph").joinpath("data", "c3d-tiny-synthetic.safetensors"))
)
R2PLUS1D_DEMO_WEIGHTS = Path(
    str(resources.files("relgraph").joinpath("data", "r2plus1d-tiny-synthetic.safetensors"))
)
VIDEOMAE_DEMO_WEIGHTS = Path(
    str(resources.files("relgraph").joinpath("data", "videomae-tiny-synthetic.safetensors"))
)
#: architecture name -> its shipped weights
DEMO_MODELS = {
    DEMO_ARCHITECTURE: DEMO_WEIGHTS,
    "r2plus1d-tiny": R2PLUS1D_DEMO_WEIGHTS,
    "videomae-tiny": VIDEOMAE_DEMO_WEIGHTS,
}
DEMO_LABELS = Path(str(resources.files("relgraph").joinpath("data", "synthetic-labels.txt")))


def load_demo_model(architecture: str = DEMO_ARCHITECTURE) -> Graph:
    """A shipped demo model (``DEMO_MODELS``; c3d-tiny by default) at its architecture's
    default parameters, with its weights loaded."""
    if architecture not in DEMO_MODELS:
        raise ArgumentError(
            f"no shipped demo model for architecture {architecture!r} "
            f"(there are: {', '.join(DEMO_MODELS)})"
        )
    graph = load_architecture(architecture)
    graph.load_weights(DEMO_MODELS[architecture])
    return graph


def run_demo(
    out: str | os.PathLike,
    *,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
    architecture: str = DEMO_ARCHITECTURE,
) -> VideoExplanation:
    """Draw a synthetic clip (its class is its motion), write it as ``out/demo.mp4``, and
    explain it with a shipped demo model (``architecture``, one of ``DEMO_MODELS``; c3d-tiny
    by default) through :func:`relgraph.explain_video`.

    ``relevance.npz`` also gets the ground-truth masks of the moving objects
    (``moving_mask``) and of the static distractors (``static_mask``), and ``true_class``;
    ``summary.json`` gets a ``demo`` entry (seed, true class).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ArgumentError(f"seed must be an integer of 0 or more, got {seed!r}")
    if architecture not in DEMO_MODELS:
        raise ArgumentError(
            f"no shipped demo model for architecture {architecture!r} "
            f"(there are: {', '.join(DEMO_MODELS)})"
        )
    check_out_dir(out)
    clock = time.perf_counter()
    model = load_model(
        load_demo_model(architecture),
        labels=DEMO_LABELS,
        preprocess=DEMO_PREPROCESS,
        device="cpu",
    )
    model.weights = str(DEMO_MODELS[architecture])
    model.weights_report = "shipped demo model"
    load_seconds = time.perf_counter() - clock

    created = not Path(out).exists()
    folder = ensure_out_dir(out)
    rng = np.random.default_rng(seed)
    label = int(rng.integers(len(CLASS_NAMES)))
    _, frames, size, _ = model.graph.input_shape
    synthetic = make_clip(label, rng, frames=frames, size=size)
    video = write_video(folder / "demo.mp4", synthetic.frames, fps=8)
    if log is not None:
        log(
            f"demo: a synthetic {CLASS_NAMES[label]} clip ({frames} frames, {size}x{size}, "
            f"seed {seed}) written to {video}"
        )

    def masks(selection: ClipSelection) -> dict[str, np.ndarray]:
        # Ground truth, at the model's input resolution (the video is written at that size).
        return {
            "moving_mask": synthetic.moving[selection.frame_indices],
            "static_mask": synthetic.static[selection.frame_indices],
            "true_class": np.int64(label),
        }

    try:
        return explain_video(
            video,
            model,
            folder,
            npz_extra=masks,
            summary_extra={
                "demo": {"seed": seed, "true_class": {"index": label, "name": CLASS_NAMES[label]}}
            },
            log=log,
            progress=progress,
            timings={"load_model_s": load_seconds},
        )
    except BaseException:
        # the explanation's outputs are written as a set or not at all: so is the video
        with contextlib.suppress(OSError):
            video.unlink()
            if created:
                folder.rmdir()
        raise
