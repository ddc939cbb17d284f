"""The evaluation suite end to end on a tiny video model, and ``relgraph evaluate``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from relgraph import architecture_from_yaml
from relgraph.cli.main import main
from relgraph.evaluation.suite import (
    DEFAULT_MAPS,
    _sanity,
    compute_maps,
    markdown,
    run_evaluation,
    synthetic_data,
    video_data,
)
from tests.test_evaluate import TINY_VIDEO_MODEL

TINY_SQUARE = TINY_VIDEO_MODEL.replace("out_features: 3}", "out_features: 4}")


@pytest.fixture(scope="module")
def tiny():
    return architecture_from_yaml(TINY_SQUARE, seed=4)


def test_synthetic_data_has_clips_and_masks_at_the_models_input(tiny):
    data = synthetic_data(tiny, 5, seed=1)
    assert data.clips.shape == (5, 3, 4, 8, 8) and data.clips.dtype == tiny.dtype
    assert set(data.masks) == {"moving", "static", "irrelevant"}
    assert all(mask.shape == (5, 4, 8, 8) for mask in data.masks.values())
    assert "irrelevant" not in synthetic_data(tiny, 2, seed=1, irrelevant_motion=False).masks


def test_compute_maps_gives_every_option_pair_and_the_temporal_map_is_the_difference(tiny):
    data = synthetic_data(tiny, 3, seed=2)
    targets = torch.tensor([0, 1, 2])
    maps = compute_maps(tiny, data.clips, targets, presets=["epsilon-plus"])
    assert set(DEFAULT_MAPS) <= set(maps)
    assert "temporal reduce=same normalize=sum" in maps and "temporal rules=epsilon-plus" in maps
    assert len([n for n in maps if n.startswith("temporal") and "rules" not in n]) == 12
    torch.testing.assert_close(maps["temporal"], maps["spatiotemporal"] - maps["spatial"])
    from relgraph.methods.discriminative import discriminative

    result = discriminative(tiny, data.clips, targets, reduce="mean", normalize="sum")
    torch.testing.assert_close(maps["spatial reduce=mean normalize=sum"], result.spatial)


def test_run_evaluation_reports_every_metric_in_range(tiny):
    data = synthetic_data(tiny, 4, seed=3)
    report = run_evaluation(
        tiny, data, variants=False, cube=(2, 4, 4), steps=4, batch_size=16, sanity_clips=2
    )
    assert set(report["maps"]) == set(DEFAULT_MAPS)
    entry = report["maps"]["temporal"]
    for key in ("aopc freeze", "abpc blur", "aopc mean", "frame deletion", "rank irrelevant"):
        assert key in entry and entry[key]["clips"] >= 1, key
    for kind in ("moving", "static", "irrelevant"):
        assert 0 <= entry[f"mass {kind}"]["mean"] <= 1
    assert -1 <= entry["aopc freeze"]["mean"] <= 1
    assert list(report["sanity"]) == ["fc2", "fc1", "conv2", "conv1"]
    # frame difference ignores the model: its maps never change
    assert all(
        math.isclose(row["frame difference"]["mean"], 1.0) for row in report["sanity"].values()
    )
    text = markdown(report)
    assert "| temporal |" in text and "Cascading randomisation" in text
    json.dumps(report)  # JSON-ready
    # the first row's reference is the maps already computed: the same rows as explaining
    # the clips on the unchanged model again
    targets = torch.cat([tiny(data.clips[:2]).output.argmax(1)])
    again = _sanity(tiny, data.clips[:2], targets)
    assert again == report["sanity"]


def test_maps_computed_once_give_the_same_report_when_read_back(tiny):
    data = synthetic_data(tiny, 3, seed=5)
    options = dict(variants=False, cube=(2, 4, 4), steps=4, batch_size=16, methods=("selective",))
    computed: dict = {}
    first = run_evaluation(tiny, data, replacements=("freeze",), computed=computed, **options)
    assert set(computed) == {"maps", "costs", "refused"}
    assert "temporal method=selective" in computed["maps"]
    # the second part reads the maps: a map changed in the file changes its numbers
    computed["maps"]["temporal method=selective"] = computed["maps"]["random"].clone()
    second = run_evaluation(tiny, data, replacements=("freeze",), computed=computed, **options)

    def aopc(report, name):
        return report["maps"][name]["aopc freeze"]["mean"]

    # (the perturbed clips are batched differently: equal to rounding)
    assert aopc(second, "random") == pytest.approx(aopc(first, "random"), rel=1e-6)
    assert second["maps"]["random"]["rank moving"] == first["maps"]["random"]["rank moving"]
    moved = aopc(second, "temporal method=selective")
    assert moved == pytest.approx(aopc(second, "random"), rel=1e-6)
    assert moved != pytest.approx(aopc(first, "temporal method=selective"), rel=1e-3)


def test_full_maps_choose_which_maps_get_every_metric(tiny):
    data = synthetic_data(tiny, 2, seed=6)
    report = run_evaluation(
        tiny,
        data,
        variants=False,
        cube=(2, 4, 4),
        steps=4,
        replacements=("blur",),
        frames=False,
        full_maps=("spatiotemporal", "temporal"),
    )
    assert "aopc blur" in report["maps"]["temporal"]
    assert "aopc blur" not in report["maps"]["spatial"]
    assert "aopc freeze" not in report["maps"]["spatial"]  # freeze was not asked for
    assert "rank moving" in report["maps"]["spatial"]


def test_a_method_the_model_refuses_is_left_out_with_its_reason():
    """The reference method has no difference rule for a product of two activations."""
    spec = {
        "name": "gated",
        "rules": "epsilon-plus",
        "preprocess": "hara",
        "input": {"name": "input", "shape": [3, 4, 8, 8]},
        "nodes": [
            {"name": "conv", "op": "conv3d", "out_channels": 2, "kernel_size": 3, "padding": 1},
            {"name": "gate", "op": "sigmoid", "inputs": "conv"},
            {"name": "gated", "op": "mul", "inputs": ["conv", "gate"], "gate": 1},
            {"name": "pool", "op": "adaptive_avgpool3d", "output_size": 1},
            {"name": "flatten", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 4},
        ],
        "output": "fc",
    }
    graph = architecture_from_yaml(json.dumps(spec), seed=2)
    data = synthetic_data(graph, 2, seed=7)
    report = run_evaluation(
        graph,
        data,
        variants=False,
        cube=(2, 4, 4),
        steps=2,
        replacements=("freeze",),
        frames=False,
        methods=("reference", "selective"),
    )
    assert set(report["refused_methods"]) == {"reference"}
    assert "mul" in report["refused_methods"]["reference"]
    assert "temporal method=selective" in report["maps"]
    assert "temporal method=reference" not in report["maps"]
    assert "Methods the model refuses" in markdown(report)


def test_video_list_reads_the_first_clip_of_each_video(tiny, tmp_path):
    from relgraph.io.video import write_video

    frames = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    write_video(tmp_path / "a.mp4", frames, fps=8)
    (tmp_path / "list.txt").write_text("a.mp4 2\n\n", encoding="utf-8")
    data = video_data(tiny, tmp_path / "list.txt")
    assert data.clips.shape == (1, 3, 4, 8, 8) and data.labels.tolist() == [1]
    (tmp_path / "bad.txt").write_text("a.mp4 9\n", encoding="utf-8")
    with pytest.raises(Exception, match="outside the model's 4 classes"):
        video_data(tiny, tmp_path / "bad.txt")


def test_evaluate_help_documents_every_metric_with_its_reference(capsys):
    assert main(["evaluate", "--help"]) == 0
    text = capsys.readouterr().out
    for metric, reference in (
        ("AOPC", "Samek"),
        ("ABPC", "Blücher"),
        ("frame deletion", "Petsiuk"),
        ("pointing", "Zhang"),
        ("rank acc.", "Arras"),
        ("mass acc.", "Arras"),
        ("sanity", "Adebayo"),
    ):
        line = next(line for line in text.splitlines() if line.strip().startswith(metric))
        block = text[text.index(line) : text.index(line) + 200]
        assert reference in block, metric


def test_evaluate_errors_are_one_line(capsys, tmp_path):
    assert main(["evaluate", "--clips", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err  # argparse's usage, then one line naming the option
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("argument --clips: must be at least 1, got 0")
    assert main(["evaluate", "--arch", "c3d", "--out", str(tmp_path / "o")]) == 2
    assert "--weights is needed" in capsys.readouterr().err


def test_frozen_batch_size_grows_for_small_models_and_keeps_the_default_for_full_size_ones():
    from relgraph import load_architecture
    from relgraph.evaluation.suite import FROZEN_BUDGET, frozen_batch_size
    from relgraph.methods.discriminative import DEFAULT_BATCH_SIZE

    assert frozen_batch_size(load_architecture("c3d-tiny", init="none")) == 64
    assert frozen_batch_size(load_architecture("c3d", init="none")) == DEFAULT_BATCH_SIZE
    # in between, as many as the budget holds: each node's activation and its relevance,
    # counted here from the activations of one clip's forward pass
    middle = load_architecture("c3d-tiny", size=128)
    x = torch.zeros((1, *middle.input_shape))
    per_clip = 2 * sum(a.nbytes for a in middle.forward(x).activations.values())
    assert DEFAULT_BATCH_SIZE < FROZEN_BUDGET // per_clip < 64
    assert frozen_batch_size(middle) == FROZEN_BUDGET // per_clip
