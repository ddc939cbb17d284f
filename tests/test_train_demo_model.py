"""scripts/train_demo_model.py: a tiny run writes weights that load, and the same seed repeats
(c3d-tiny and, with batch norm, r2plus1d-tiny)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from repo_scripts import load_script

from relgraph.datasets.synthetic import CLASS_NAMES
from relgraph.engine.graph import load_architecture
from relgraph.io.labels import Labels

TINY = ["--clips", "64", "--epochs", "2", "--test-clips", "8", "--video-clips", "2"]
SMALL_MODEL = ["--width", "2", "--hidden", "8"]


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/train_demo_model.py")


def train_tiny(script, folder: Path, *extra: str) -> Path:
    """A tiny run (``TINY`` plus ``extra``); the path of the weights it wrote."""
    threads = torch.get_num_threads()
    try:
        script.main([*TINY, "--out", str(folder), *extra])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    (weights,) = folder.glob("*.safetensors")
    return weights


def train(script, folder: Path, *extra: str) -> Path:
    """A tiny run of c3d-tiny at ``SMALL_MODEL``."""
    weights = train_tiny(script, folder, *SMALL_MODEL, *extra)
    assert weights.name == script.WEIGHTS_NAME
    return weights


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


def test_fine_tuning_from_given_weights_repeats_and_starts_from_them(script, tmp_path):
    """--init (the shipped model's second step): two fine-tunes of the same file give the same
    bytes; they start from the file (a fine-tune of other weights differs) and train it."""
    base = train(script, tmp_path / "base")
    other = train(script, tmp_path / "other", "--seed", "1")
    tune = ["--epochs", "1", "--irrelevant-share", "0.5", "--lr", "5e-4"]
    first = train(script, tmp_path / "a", "--init", str(base), *tune).read_bytes()
    again = train(script, tmp_path / "b", "--init", str(base), *tune).read_bytes()
    from_other = train(script, tmp_path / "c", "--init", str(other), *tune).read_bytes()
    assert first == again
    assert first != base.read_bytes()
    assert first != from_other


def test_frozen_clips_repeat_one_of_their_frames(script):
    clips = torch.arange(4 * 3 * 5 * 2 * 2, dtype=torch.float32).reshape(4, 3, 5, 2, 2)
    frozen = script.freeze_some(clips, 1.0, torch.Generator().manual_seed(0))
    for clip, original in zip(frozen, clips, strict=True):
        matches = [t for t in range(5) if torch.equal(clip, original[:, t : t + 1].expand_as(clip))]
        assert len(matches) == 1
    untouched = script.freeze_some(clips, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(untouched, clips)


def test_r2plus1d_tiny_trains_reproducibly_with_batch_norm_statistics(script, tmp_path):
    """--arch r2plus1d-tiny: same seed, same bytes; the batch norms learned running statistics
    (the graph's init is mean 0, variance 1) and the weights load into the graph."""
    arch = ["--arch", "r2plus1d-tiny", "--width", "2"]
    first = train_tiny(script, tmp_path / "a", *arch)
    again = train_tiny(script, tmp_path / "b", *arch)
    assert first.name == "r2plus1d-tiny-synthetic.safetensors"
    assert first.read_bytes() == again.read_bytes()
    graph = load_architecture("r2plus1d-tiny", width=2)
    initial = graph.state_dict()
    graph.load_weights(first)
    for key in ("stem.1.running_mean", "layer2.1.conv2.1.running_var"):
        assert not torch.allclose(graph.state_dict()[key], initial[key]), key
    clips = torch.zeros(2, *graph.input_shape, dtype=graph.dtype)
    assert torch.isfinite(graph.forward(clips, keep=()).output).all()


def test_training_mode_batch_norm_normalises_with_the_batch_and_updates_its_statistics(script):
    """GraphModule in training mode: batch statistics (biased variance) in the output, running
    statistics moved by momentum 0.1 with the unbiased variance (torch.nn.BatchNorm's rule)."""
    graph = load_architecture("r2plus1d-tiny", width=1, size=8)
    module = script.GraphModule(graph)
    stem = module.get_submodule("stem.1")
    clips = torch.randn(3, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    stem_conv = module.get_submodule("stem.0").weight
    conv = torch.nn.functional.conv3d(clips, stem_conv, stride=(1, 2, 2), padding=(0, 1, 1))
    mean = conv.mean(dim=(0, 2, 3, 4))
    var = conv.var(dim=(0, 2, 3, 4), unbiased=True)
    module.train()
    module(clips)
    torch.testing.assert_close(stem.running_mean, 0.1 * mean)
    torch.testing.assert_close(stem.running_var, 0.9 + 0.1 * var)
    # in eval mode the module is the graph's forward pass on its tensors
    module.eval()
    graph.load_weights(module.weights())
    torch.testing.assert_close(module(clips), graph.forward(clips, keep=()).output)


@pytest.mark.slow
def test_videomae_tiny_trains_reproducibly_on_eight_frames(script, tmp_path):
    """--arch videomae-tiny (the demo transformer) with the shipped recipe's options: same seed
    and thread count, same bytes; the clips follow the graph's 8 frames, and the weights load
    and moved off the init."""
    arch = ["--arch", "videomae-tiny", "--irrelevant-share", "0.5", "--threads", "1"]
    # the shipped recipe's knobs: motion only first, frozen clips after, mp4 chroma, two passes
    arch += ["--motion-kernels", "1", "--cue-from", "1", "--frozen-from", "1"]
    arch += ["--frozen-share", "0.5", "--chroma-share", "0.5", "--passes", "2"]
    first = train_tiny(script, tmp_path / "a", *arch)
    again = train_tiny(script, tmp_path / "b", *arch)
    assert first.name == "videomae-tiny-synthetic.safetensors"
    assert first.read_bytes() == again.read_bytes()
    graph = load_architecture("videomae-tiny")
    assert graph.input_shape[1] == 8
    initial = graph.state_dict()
    graph.load_weights(first)
    for key in ("videomae.encoder.layer.0.attention.attention.query.weight", "classifier.weight"):
        assert not torch.allclose(graph.state_dict()[key], initial[key]), key
    clips = torch.zeros(2, *graph.input_shape, dtype=graph.dtype)
    assert torch.isfinite(graph.forward(clips, keep=()).output).all()


def test_the_training_module_of_a_transformer_is_the_graph_forward(script):
    """GraphModule on videomae-tiny (layer norms, softmax, GELU, token matmuls) computes what
    the graph computes, and autograd reaches every weight through it."""
    graph = load_architecture("videomae-tiny", seed=3)
    module = script.GraphModule(graph).eval()
    clips = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    logits = module(clips)
    torch.testing.assert_close(logits, graph.forward(clips, keep=()).output)
    logits.sum().backward()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_chroma_subsampling_keeps_luma_and_shares_chroma_within_2x2_blocks(script):
    """subsample_chroma (the mp4 round trip's 4:2:0 chroma): the chosen clips keep each pixel's
    BT.601 luma, their chroma is constant over each 2 x 2 block; share 0 changes nothing."""
    generator = torch.Generator().manual_seed(0)
    clips = torch.randn(3, 3, 2, 4, 6, generator=generator, dtype=torch.float64) * 50
    changed = script.subsample_chroma(clips, 1.0, torch.Generator().manual_seed(1))
    weights = torch.tensor(script.LUMA, dtype=clips.dtype).reshape(1, 3, 1, 1, 1)
    luma = (clips * weights).sum(dim=1, keepdim=True)
    torch.testing.assert_close((changed * weights).sum(dim=1, keepdim=True), luma)
    chroma = changed - (changed * weights).sum(dim=1, keepdim=True)
    blocks = chroma.reshape(3, 3, 2, 2, 2, 3, 2)  # (n, C, T, H/2, 2, W/2, 2)
    torch.testing.assert_close(blocks, blocks[:, :, :, :, :1, :, :1].expand_as(blocks))
    assert not torch.allclose(changed, clips)
    untouched = script.subsample_chroma(clips, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(untouched, clips)


def test_the_epochs_before_cue_from_are_motion_only(script):
    args = script.argparse.Namespace(cue=0.8, cue_from=2)
    assert [script.epoch_cue(args, epoch) for epoch in range(4)] == [0.0, 0.0, 0.8, 0.8]
