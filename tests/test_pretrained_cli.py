"""The commands on a Hugging Face folder: ``relgraph explain``, ``dataset explain`` and
``evaluate`` with ``--pretrained`` on a tiny saved VideoMAE and tiny generated videos (figures,
the store, the report, the class names from id2label), and their option clashes refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relgraph.cli.main import main
from relgraph.datasets.synthetic import CLASS_NAMES, make_clip, write_video_folders
from relgraph.io.video import write_video
from relgraph.models.demo import DEMO_WEIGHTS

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained-cli")
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_frames=4,
        image_size=16,
        patch_size=8,
        tubelet_size=2,
        id2label=dict(enumerate(CLASS_NAMES)),
        label2id={name: i for i, name in enumerate(CLASS_NAMES)},
    )
    transformers.VideoMAEForVideoClassification(config).save_pretrained(root / "model")
    clip = make_clip(1, np.random.default_rng(0), frames=8, size=24)
    write_video(root / "video.mp4", clip.frames, fps=8)
    write_video_folders(root / "videos", 1, seed=0, frames=8, size=24)
    return root


def test_explain_with_pretrained_folder(files, tmp_path):
    out = tmp_path / "out"
    code = main(
        ["explain", str(files / "video.mp4"), "--pretrained", str(files / "model")]
        + ["--out", str(out), "--quiet", "--target", "MoveLeft"]
    )
    assert code == 0
    for name in ("figure.png", "frames.png", "animation.gif", "relevance.npz"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == {"index": 1, "name": "MoveLeft", "label": "MoveLeft"}
    assert summary["prediction"]["name"] in CLASS_NAMES
    assert summary["model"]["architecture"] == "videomae"
    assert summary["options"]["rules"] == "attnlrp"
    assert summary["options"]["preprocess"] == "videomae"
    maps = np.load(out / "relevance.npz")
    assert all(np.isfinite(maps[key]).all() for key in maps.files)


def test_dataset_explain_with_pretrained_folder(files, tmp_path):
    store = tmp_path / "store"
    args = ["dataset", "explain", str(files / "videos"), "--pretrained", str(files / "model")]
    assert main(args + ["--out", str(store), "--quiet"]) == 0
    rows = [json.loads(line) for line in (store / "index.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert all(row["status"] == "ok" and row["prediction"] in CLASS_NAMES for row in rows)
    # the same folder again: nothing to do, the fingerprint (config and weights) unchanged
    assert main(args + ["--out", str(store), "--quiet"]) == 0


def test_evaluate_with_pretrained_folder(files, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        ["evaluate", "--pretrained", str(files / "model"), "--clips", "4", "--steps", "2"]
        + ["--no-variants", "--sanity-clips", "0", "--replacements", "mean", "--out", str(out)]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 4
    assert report["maps"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--weights", "w.safetensors"], ["--pretrained", "--weights"]),
        (["--param", "num_labels=3"], ["--pretrained", "--param"]),
        (["--arch", "vivit"], ["--pretrained", "--arch"]),
    ],
)
def test_pretrained_clashes_are_refused(files, tmp_path, capsys, extra, words):
    args = ["explain", str(files / "video.mp4"), "--pretrained", str(files / "model")]
    assert main(args + extra + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(word in err for word in words)
    assert not (tmp_path / "o").exists()


def test_missing_folder_and_missing_weights_are_refused(files, tmp_path, capsys):
    video = str(files / "video.mp4")
    assert main(["explain", video, "--pretrained", str(tmp_path / "none"), "--out", "o"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["explain", video, "--out", str(tmp_path / "o")]) == 2
    assert "--weights FILE is needed (or --pretrained FOLDER)" in capsys.readouterr().err
    no_labels = ["dataset", "explain", str(files / "videos"), "--arch", "c3d-tiny"]
    code = main(no_labels + ["--weights", str(DEMO_WEIGHTS), "--out", str(tmp_path / "s")])
    assert code == 2
    assert "--labels FILE is needed" in capsys.readouterr().err
