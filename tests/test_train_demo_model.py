"""scripts/train_demo_model.py: a tiny run writes weights that load, and the same seed repeats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from repo_scripts import load_script

from relgraph.graph import load_architecture
from relgraph.labels import Labels
from relgraph.synthetic import CLASS_NAMES

TINY = ["--clips", "64", "--epochs", "2", "--test-clips", "8", "--video-clips", "2"]
SMALL_MODEL = ["--width", "2", "--hidden", "8"]


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/train_demo_model.py")


def train(script, folder: Path, *extra: str) -> Path:
    threads = torch.get_num_threads()
    try:
        script.main([*TINY, *SMALL_MODEL, "--out", str(folder), *extra])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    return folder / script.WEIGHTS_NAME


def test_a_tiny_run_writes_weights_the_graph_loads_and_the_label_file(script, tmp_path):
    weights = train(script, tmp_path, "--frozen-share", "0.5", "--motion-kernels", "1")
    graph = load_architecture("c3d-tiny", width=2, hidden=8)
    graph.load_weights(weights)
    clips = torch.zeros(2, *graph.input_shape, dtype=graph.dtype)
    assert torch.isfinite(graph.forward(clips, keep=()).output).all()
    assert Labels.from_file(tmp_path / script.LABELS_NAME).names == list(CLASS_NAMES)


def test_the_same_seed_gives_the_same_weights_and_another_does_not(script, tmp_path):
    first = train(script, tmp_path / "a").read_bytes()
    again = train(script, tmp_path / "b").read_bytes()
    other = train(script, tmp_path / "c", "--seed", "1").read_bytes()
    assert first == again
    assert first != other


def test_frozen_clips_repeat_one_of_their_frames(script):
    clips = torch.arange(4 * 3 * 5 * 2 * 2, dtype=torch.float32).reshape(4, 3, 5, 2, 2)
    frozen = script.freeze_some(clips, 1.0, torch.Generator().manual_seed(0))
    for clip, original in zip(frozen, clips, strict=True):
        matches = [t for t in range(5) if torch.equal(clip, original[:, t : t + 1].expand_as(clip))]
        assert len(matches) == 1
    untouched = script.freeze_some(clips, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(untouched, clips)
