"""The Python API of ``relgraph explain``: ``relgraph.explain_video`` and its per-clip steps.

Videos are written with relgraph's own video writer; the model is c3d-tiny (random weights).
References go through the public building blocks (read_video, a preset, discriminative) by
hand, not through the pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import relgraph
from relgraph.cli.main import main
from relgraph.io.preprocess import get_preprocess
from relgraph.io.video import read_video, select_clip, write_video
from relgraph.methods.discriminative import discriminative
from relgraph.pipeline.video import (
    FIGURE_FILES,
    OUTPUT_FILES,
    ClipResult,
    explain_clips,
    load_model,
    lost_note,
    write_clip,
)

NAMES = ["Walk", "Run", "Jump", "Swim"]


def moving_square(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(count)
    frames = np.repeat(rng.integers(40, 200, (1, height, width, 3), dtype=np.uint8), count, 0)
    for t in range(count):
        frames[t, 10:26, 2 + 2 * t : 18 + 2 * t] = (250, 240, 30)
    return frames


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline-inputs")
    graph = relgraph.load_architecture("c3d-tiny", seed=3)
    graph.save_weights(folder / "tiny.safetensors")
    (folder / "labels.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(NAMES, 1)))
    return {
        "video": write_video(folder / "square.avi", moving_square(20)),
        "long_video": write_video(folder / "long.avi", moving_square(24)),
        "weights": folder / "tiny.safetensors",
        "labels": folder / "labels.txt",
    }


def tiny_graph(inputs) -> relgraph.Graph:
    graph = relgraph.load_architecture("c3d-tiny")
    graph.load_weights(inputs["weights"])
    return graph


def reference(graph, video: Path, start: int = 0, **options):
    """The clip's discriminative result, assembled by hand from the public building blocks."""
    selection = select_clip(read_video(video), start=start, length=16)
    clip = get_preprocess(graph.default_preprocess, size=32)(selection.frames)[None]
    return discriminative(graph, clip, **options), selection


def test_explain_video_on_a_graph_gives_the_discriminative_maps_and_writes_every_file(
    inputs, tmp_path
):
    graph = tiny_graph(inputs)
    result = relgraph.explain_video(
        inputs["video"], graph, tmp_path / "out", relgraph.VideoOptions(start=2)
    )
    expected, selection = reference(graph, inputs["video"], start=2)

    (clip,) = result.clips
    for name in ("spatiotemporal", "spatial", "temporal"):
        np.testing.assert_allclose(getattr(clip, name), getattr(expected, name)[0].numpy())
        assert getattr(result, name).shape == (1, 16, 32, 32)
    np.testing.assert_allclose(clip.frozen_relevance, expected.frozen_relevance[0].numpy())
    assert clip.prediction == int(expected.prediction[0]) == result.predictions[0]
    assert clip.frozen_predictions.tolist() == expected.frozen_predictions[0].tolist()
    assert result.selections[0].frame_indices == selection.frame_indices == list(range(2, 18))

    assert result.out == tmp_path / "out"
    assert sorted(path.name for path in result.files) == sorted(OUTPUT_FILES)
    assert all(path.is_file() for path in result.files)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(result.summary))
    assert on_disk["prediction"]["index"] == clip.prediction
    assert on_disk["options"]["preprocess"] == "hara"
    with np.load(tmp_path / "out" / "relevance.npz") as arrays:
        np.testing.assert_array_equal(arrays["temporal"], clip.temporal)
        assert arrays["frame_indices"].tolist() == list(range(2, 18))


def test_explain_video_without_out_writes_nothing_and_returns_the_maps(inputs, tmp_path):
    result = relgraph.explain_video(inputs["video"], tiny_graph(inputs))
    assert result.out is None and result.files == []
    assert result.clips[0].spatiotemporal.shape == (16, 32, 32)
    assert "files" not in result.summary
    assert list(tmp_path.iterdir()) == []


def test_figures_false_writes_only_the_arrays_and_the_summary(inputs, tmp_path):
    result = relgraph.explain_video(
        inputs["video"], tiny_graph(inputs), tmp_path / "out", relgraph.VideoOptions(figures=False)
    )
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == ["relevance.npz", "summary.json"]
    assert result.summary["files"] == ["relevance.npz", "summary.json"]


def test_an_architecture_name_with_weights_labels_and_options_is_loaded_for_the_call(inputs):
    graph = tiny_graph(inputs)
    result = relgraph.explain_video(
        inputs["video"],
        relgraph.load_model(
            "c3d-tiny",
            weights=inputs["weights"],
            labels=inputs["labels"],
            rules="deep-taylor-paper",
        ),
        options=relgraph.VideoOptions(target="swim", reduce="mean", normalize="sum"),
    )
    expected, _ = reference(
        graph, inputs["video"], target=3, reduce="mean", normalize="sum", rules="deep-taylor-paper"
    )
    np.testing.assert_allclose(result.clips[0].spatial, expected.spatial[0].numpy())
    assert result.summary["target"] == {"index": 3, "name": "Swim", "label": "Swim"}
    assert result.summary["model"]["weights"] == str(inputs["weights"])


def test_all_clips_explains_every_clip_into_its_own_folder(inputs, tmp_path):
    result = relgraph.explain_video(
        inputs["long_video"],
        tiny_graph(inputs),
        tmp_path / "out",
        relgraph.VideoOptions(all_clips=True, stride=1),
    )
    # 24 frames: one whole clip of 16 (the rest is too short for a second one).
    assert [s.frame_indices for s in result.selections] == [list(range(16))]
    assert (tmp_path / "out" / "clip-000" / "summary.json").is_file()
    assert result.summary["clips"][0]["folder"] == "clip-000"


def test_the_log_gets_the_cli_lines(inputs):
    lines: list[str] = []
    relgraph.explain_video(inputs["video"], tiny_graph(inputs), log=lines.append)
    assert lines[0].startswith("model: Graph('c3d-tiny'")
    assert "square.avi: 64x48" in lines[1]
    assert lines[2].startswith("clip (frames 0..15): predicted class ")


def test_a_loaded_model_is_used_as_it_is(inputs):
    model = load_model(tiny_graph(inputs), rules="deep-taylor-paper")
    result = relgraph.explain_video(inputs["video"], model)
    assert result.model is model
    assert result.summary["options"]["rules"] == "deep-taylor-paper"


def test_bad_input_is_refused_before_anything_is_written(inputs, tmp_path):
    graph = tiny_graph(inputs)
    with pytest.raises(relgraph.TargetError, match="no label file"):
        relgraph.explain_video(
            inputs["video"], graph, tmp_path / "out", relgraph.VideoOptions(target="Swim")
        )
    with pytest.raises(relgraph.RelgraphError, match=r"1\.\.16"):
        relgraph.explain_video(
            inputs["video"], graph, tmp_path / "out", relgraph.VideoOptions(columns=[1, 17])
        )
    with pytest.raises(relgraph.VideoError):
        relgraph.explain_video(
            inputs["video"], graph, tmp_path / "out", relgraph.VideoOptions(start=25)
        )
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- point 6: no fallback


def test_an_architecture_without_preprocess_needs_one(inputs, tmp_path):
    graph = relgraph.load_architecture("resnet-tiny")
    assert graph.default_preprocess is None
    with pytest.raises(relgraph.RelgraphError) as error:
        relgraph.explain_video(inputs["video"], graph, tmp_path / "out")
    message = str(error.value)
    assert "resnet-tiny.yaml" in message and "preprocess" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()

    result = relgraph.explain_video(inputs["video"], relgraph.load_model(graph, preprocess="hara"))
    assert result.summary["options"]["preprocess"] == "hara"
    assert result.clips[0].spatiotemporal.shape == (8, 16, 16)


def test_cli_explain_of_an_architecture_without_preprocess_is_exit_2_one_line(
    inputs, tmp_path, capsys
):
    graph = relgraph.load_architecture("resnet-tiny", seed=0)
    graph.save_weights(tmp_path / "resnet.safetensors")
    arguments = [
        "explain",
        str(inputs["video"]),
        "--arch",
        "resnet-tiny",
        "--weights",
        str(tmp_path / "resnet.safetensors"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("relgraph: error: ")
    assert "resnet-tiny.yaml" in error[0] and "--preprocess" in error[0]
    assert not (tmp_path / "out").exists()

    assert main([*arguments, "--preprocess", "hara"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["options"]["preprocess"] == "hara"


# --------------------------------------------------------------------------- the per-clip core


def test_explain_clips_of_a_batch_equal_each_clip_explained_alone(inputs):
    model = load_model(tiny_graph(inputs))
    frames = read_video(inputs["long_video"])
    clips = torch.stack(
        [model.preprocess(frames[0:16]), model.preprocess(frames[8:24].copy()[:, ::-1])]
    )
    together = explain_clips(model, clips, target=[1, 2])
    for row, clip in enumerate(clips):
        (alone,) = explain_clips(model, clip[None], target=[1, 2][row])
        assert together[row].target == alone.target == [1, 2][row]
        np.testing.assert_allclose(together[row].temporal, alone.temporal, atol=1e-6)
        np.testing.assert_allclose(
            together[row].frozen_probabilities, alone.frozen_probabilities, atol=1e-6
        )


def test_write_clip_without_figures_and_with_a_summary(inputs, tmp_path):
    model = load_model(tiny_graph(inputs))
    selection = select_clip(read_video(inputs["video"]), length=16)
    (result,) = explain_clips(model, model.preprocess(selection.frames)[None])
    written = write_clip(
        model,
        result,
        tmp_path / "clip",
        model.preprocess.display_frames(selection.frames),
        selection.frame_indices,
        figures=False,
        npz_extra={"label": np.int64(7)},
        summary={"video": "v.avi"},
    )
    assert [path.name for path in written] == ["relevance.npz", "summary.json"]
    assert not any((tmp_path / "clip" / name).exists() for name in FIGURE_FILES)
    assert json.loads(written[1].read_text()) == {
        "video": "v.avi",
        "files": ["relevance.npz", "summary.json"],
    }
    with np.load(written[0]) as arrays:
        assert int(arrays["label"]) == 7
        np.testing.assert_array_equal(arrays["spatial"], result.spatial)


def test_write_clip_of_several_clips_stacks_them_in_one_npz_and_draws_quick_figures(
    inputs, tmp_path
):
    model = load_model(tiny_graph(inputs))
    frames = read_video(inputs["long_video"])
    selections = [select_clip(frames, start=start, length=16) for start in (0, 8)]
    clips = torch.stack([model.preprocess(s.frames) for s in selections])
    results = explain_clips(model, clips, frozen_relevance=False)
    assert all(result.frozen_relevance is None for result in results)
    display = np.stack([model.preprocess.display_frames(s.frames) for s in selections])
    indices = [list(s.frame_indices) for s in selections]
    timings: dict[str, float] = {}
    written = write_clip(
        model, results, tmp_path / "v", display, indices, figures="quick", timings=timings
    )
    assert [p.relative_to(tmp_path / "v").as_posix() for p in written] == [
        "grid.png",
        "animation.gif",
        "clip-001/grid.png",
        "clip-001/animation.gif",
        "relevance.npz",
    ]
    assert set(timings) == {"figures_s", "npz_s"}
    with np.load(tmp_path / "v" / "relevance.npz") as arrays:
        assert "frozen_relevance" not in arrays.files
        assert arrays["frame_indices"].tolist() == indices
        assert arrays["frames"].shape == display.shape
        for k, result in enumerate(results):
            assert arrays["spatial"][k].tolist() == result.spatial.tolist()
            assert arrays["output"][k].tolist() == result.output.astype(np.float32).tolist()
            assert int(arrays["prediction"][k]) == result.prediction
        assert arrays["probability"].dtype == arrays["relevance"].dtype == np.float32
    only_first = write_clip(
        model, results, tmp_path / "w", display, indices, figures="all", figure_clips=1
    )
    assert [p.name for p in only_first] == [
        "grid.png",
        "animation.gif",
        "figure.png",
        "frames.png",
        "relevance.npz",
    ]
    assert not (tmp_path / "w" / "clip-001").exists()
    with pytest.raises(relgraph.ArgumentError, match="figures must be"):
        write_clip(model, results[0], tmp_path / "x", display[0], indices[0], figures="fancy")


def test_select_clips_spreads_a_count_over_the_video_and_refuses_a_short_one(inputs):
    every = relgraph.VideoOptions(all_clips=True, stride=1)
    _, selections = relgraph.select_clips(inputs["long_video"], 4, every)
    starts = [s.frame_indices[0] for s in selections]
    assert starts == list(range(0, 24, 4))
    _, spread = relgraph.select_clips(inputs["long_video"], 4, every, count=3)
    assert [s.frame_indices[0] for s in spread] == [starts[0], starts[2], starts[-1]]
    with pytest.raises(relgraph.VideoError, match="too short: 20 frame"):
        relgraph.select_clips(inputs["video"], 16, every, min_frames=21)
    info, (first,) = relgraph.select_clips(
        inputs["video"], 16, relgraph.VideoOptions(start=2), min_frames=16
    )
    assert info.frames == 20 and list(first.frame_indices) == list(range(2, 18))


# --------------------------------------------------------------------------- lost relevance


def clip_result(lost: float | None, frozen_lost: list[float] | None) -> ClipResult:
    maps = np.zeros((4, 2, 2), dtype=np.float32)
    return ClipResult(
        spatiotemporal=maps,
        spatial=maps,
        temporal=maps,
        relevance=np.zeros((3, 4, 2, 2)),
        frozen_relevance=np.zeros((4, 3, 4, 2, 2)),
        prediction=0,
        probability=0.5,
        target=0,
        frozen_predictions=np.zeros(4, dtype=np.int64),
        frozen_probabilities=np.full(4, 0.5),
        lost_fraction=lost,
        frozen_lost_fraction=None if frozen_lost is None else np.asarray(frozen_lost),
    )


def test_lost_note_only_above_one_percent_of_the_clip_or_worst_frozen_clip():
    assert lost_note(clip_result(None, None)) is None
    assert lost_note(clip_result(0.01, [0.0, 0.005, 0.01, 0.0])) is None
    note = lost_note(clip_result(0.002, [0.0, 0.03, 0.01, 0.0]))
    assert note is not None and "3.0 % of frozen frame 2's" in note and "0.2 %" in note
    assert "12.5 %" in lost_note(clip_result(0.125, [0.0] * 4))


def test_cli_explain_prints_the_lost_relevance_note_and_the_summary_records_it(
    inputs, tmp_path, capsys, monkeypatch
):
    import relgraph.pipeline.video as pipeline

    real = pipeline.discriminative_with_rules

    def losing(*args, **kwargs):
        # Stand-in for an engine that reports what its reverse passes lost.
        result = real(*args, **kwargs)
        result.lost_fraction = torch.tensor([0.004])
        result.frozen_lost_fraction = torch.linspace(0.0, 0.03, 16)[None]
        return result

    monkeypatch.setattr(pipeline, "discriminative_with_rules", losing)
    arguments = [
        "explain",
        str(inputs["video"]),
        "--arch",
        "c3d-tiny",
        "--weights",
        str(inputs["weights"]),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(arguments) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "lost relevance" in line]
    assert len(notes) == 1 and "3.0 % of frozen frame 16's" in notes[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["lost_relevance"]["clip"] == pytest.approx(0.004)
    assert summary["lost_relevance"]["frozen"][-1] == pytest.approx(0.03)


def test_the_engine_reports_what_the_rules_lost_and_a_large_loss_gets_a_note(inputs):
    """A large ε on every linear layer keeps relevance back at each of them: the clip's lost
    share is what the explanation did not hand on to the input (1 − Σ R_in for a onehot seed),
    and the log gets the note. The paper's rules on this ReLU net lose (almost) nothing."""
    graph = tiny_graph(inputs)
    lines: list[str] = []
    lossy = relgraph.explain_video(
        inputs["video"],
        relgraph.load_model(graph, rules={"fc*": {"name": "epsilon", "epsilon": 10.0}}),
        log=lines.append,
    )
    clip = lossy.clips[0]
    clip_tensor = get_preprocess(graph.default_preprocess, size=graph.input_shape[-1])(
        select_clip(read_video(inputs["video"]), start=0, stride=1, length=16).frames
    )[None]
    reference = relgraph.explain(
        graph, clip_tensor, rules={"fc*": {"name": "epsilon", "epsilon": 10.0}}
    )
    assert clip.lost_fraction == pytest.approx(1 - float(reference.sum()), abs=1e-5)
    assert clip.lost_fraction > 0.01
    assert any("lost relevance" in line for line in lines)

    plain = relgraph.explain_video(
        inputs["video"], relgraph.load_model(graph, rules="deep-taylor-paper")
    )
    assert abs(plain.clips[0].lost_fraction) < 1e-4
    assert plain.clips[0].frozen_lost_fraction.shape == (16,)
