"""``relgraph explain video.mp4 --arch r2plus1d-18 --weights r2plus1d_18.pth --labels
kinetics400.txt --out out/`` end to end: random weights saved as torchvision saves its state
dict (from the torch.nn reference, ``num_batches_tracked`` included), a Kinetics-style label
file (one class name per line, names with spaces, parentheses and apostrophes), and a real
video file encoded with PyAV."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
import zoo_reference as zoo

from relgraph.cli.main import main
from relgraph.io.labels import Labels

#: Kinetics-400's first classes and a few with the punctuation the list has; the rest
#: numbered so the file has 400 lines, one name per line, as kinetics400.txt files do
KINETICS_LIKE = [
    "abseiling",
    "air drumming",
    "answering questions",
    "applauding",
    "massaging person's head",
    "passing American football (in game)",
    "passing American football (not in game)",
    "tying knot (not on a tie)",
]
NAMES = KINETICS_LIKE + [f"action number {i}" for i in range(400 - len(KINETICS_LIKE))]


def write_mp4(path, frames: int = 12, height: int = 48, width: int = 64):
    """A moving bright square on a textured background, H.264 or MPEG-4 in an .mp4."""
    rng = np.random.default_rng(0)
    background = rng.integers(40, 200, (height, width, 3), dtype=np.uint8)
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=25)
    stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
    for t in range(frames):
        rgb = background.copy()
        rgb[10:30, 4 + 3 * t : 24 + 3 * t] = (250, 240, 30)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode(None))
    container.close()
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo-cli")
    model = zoo.randomise(zoo.r2plus1d_18(), seed=3)
    weights = folder / "r2plus1d_18.pth"
    torch.save(model.state_dict(), weights)  # torchvision's key names, 400 classes
    labels = folder / "kinetics400.txt"
    labels.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    return {"video": write_mp4(folder / "video.mp4"), "weights": weights, "labels": labels}


def test_a_kinetics_style_label_file_reads_one_name_per_line(inputs):
    labels = Labels.from_file(inputs["labels"])
    assert len(labels) == 400
    assert labels.index("passing American football (in game)") == 5
    assert labels.name(4) == "massaging person's head"


def test_explain_r2plus1d_end_to_end(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "explain",
        str(inputs["video"]),
        "--arch",
        "r2plus1d-18",
        "--weights",
        str(inputs["weights"]),
        "--labels",
        str(inputs["labels"]),
        "--out",
        str(out),
        # 2 frames keep the test quick; crop, layers and weights are the full model's
        "--param",
        "frames=2",
        "--target",
        "air drumming",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "r2plus1d-18" in printed
    for name in ("figure.png", "animation.gif", "frames.png", "relevance.npz", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"]["index"] == 1 and summary["target"]["name"] == "air drumming"
    assert summary["prediction"]["name"] in NAMES
    assert summary["options"]["rules"] == "epsilon-plus"
    assert summary["options"]["preprocess"] == "kinetics"
    assert summary["options"]["canonize"] is True
    with np.load(out / "relevance.npz") as data:
        relevance = data["relevance"]
        assert relevance.shape == (3, 2, 112, 112)
        assert np.isfinite(relevance).all() and np.abs(relevance).sum() > 0
        assert np.isfinite(data["temporal"]).all()
