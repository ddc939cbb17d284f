"""The command line, end to end on real video files written here with PyAV.

One test runs the full-size C3D (random weights saved as a DataParallel training checkpoint)
through ``relgraph explain``; the others use c3d-tiny to stay fast. Commands run in-process
through ``relgraph.cli.main.main``, and once as ``python -m relgraph``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import relgraph
from relgraph.cli.main import main

TINY_CLASSES = ["Walk", "Run", "Jump", "Swim"]
OUTPUT_FILES = ("figure.png", "animation.gif", "frames.png", "relevance.npz", "summary.json")


# --------------------------------------------------------------------------- inputs


def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Encode RGB frames with PyAV directly (MPEG-4 part 2, as UCF-101's files)."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for rgb in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode(None))
    container.close()
    return path


def moving_square_video(count: int, height: int = 128, width: int = 171) -> np.ndarray:
    """A textured background with a bright square moving right, 3 px per frame."""
    rng = np.random.default_rng(count)
    background = rng.integers(40, 200, (height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], count, axis=0)
    for t in range(count):
        left = 20 + 3 * t
        frames[t, 40:80, left : left + 40] = (250, 240, 30)
    return frames


def save_checkpoint(graph, path: Path) -> Path:
    """A training checkpoint as the common C3D code saves it, from a DataParallel model."""
    state = {f"module.{key}": value for key, value in graph.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": state, "opt_dict": {}}, path)
    return path


def write_labels(path: Path, names) -> Path:
    path.write_text("".join(f"{i} {name}\n" for i, name in enumerate(names, 1)))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-inputs")
    tiny = relgraph.load_architecture("c3d-tiny", seed=5)
    return {
        "video": write_video(folder / "square.avi", moving_square_video(20)),
        "long_video": write_video(folder / "long.avi", moving_square_video(40)),
        "short_video": write_video(folder / "short.avi", moving_square_video(10)),
        "tiny_weights": save_checkpoint(tiny, folder / "tiny.pth"),
        "tiny_labels": write_labels(folder / "tiny_labels.txt", TINY_CLASSES),
        "ucf_labels": write_labels(folder / "classInd.txt", [f"Action{i:03d}" for i in range(101)]),
        "folder": folder,
    }


def tiny_explain(files, out: Path, *extra: str) -> list[str]:
    return [
        "explain",
        str(files["video"]),
        "--arch",
        "c3d-tiny",
        "--weights",
        str(files["tiny_weights"]),
        "--labels",
        str(files["tiny_labels"]),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def read_summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def check_images(folder: Path, frames: int) -> None:
    with Image.open(folder / "figure.png") as figure:
        figure.load()
        assert figure.width > 200 and figure.height > 200
    with Image.open(folder / "frames.png") as totals:
        totals.load()
    with Image.open(folder / "animation.gif") as gif:
        assert gif.n_frames == frames
        gif.seek(frames - 1)
        gif.load()


# --------------------------------------------------------------------------- explain


def test_explain_full_size_c3d_from_a_dataparallel_checkpoint_end_to_end(files, tmp_path, capsys):
    c3d = relgraph.load_architecture("c3d")
    weights = save_checkpoint(c3d, tmp_path / "c3d-ucf101.pth")
    out = tmp_path / "out"
    status = main(
        [
            "explain",
            str(files["video"]),
            "--weights",
            str(weights),
            "--labels",
            str(files["ucf_labels"]),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    check_images(out, 16)

    with np.load(out / "relevance.npz", allow_pickle=False) as arrays:
        for name in ("spatiotemporal", "spatial", "temporal"):
            assert arrays[name].shape == (16, 112, 112)
            assert np.isfinite(arrays[name]).all()
        assert arrays["relevance"].shape == (3, 16, 112, 112)
        assert arrays["frozen_relevance"].shape == (16, 3, 16, 112, 112)
        assert arrays["frames"].shape == (16, 112, 112, 3)
        assert arrays["frame_indices"].tolist() == list(range(16))
        assert np.abs(arrays["spatiotemporal"]).max() == pytest.approx(1.0)
        np.testing.assert_allclose(
            arrays["temporal"], arrays["spatiotemporal"] - arrays["spatial"], atol=1e-6
        )
        map_prediction = int(arrays["prediction"])

    summary = read_summary(out)
    # The prediction is the model's on the clip, preprocessed the c3d-ucf101 way.
    from relgraph.io.preprocess import get_preprocess
    from relgraph.io.video import read_video

    clip = get_preprocess("c3d-ucf101")(read_video(files["video"])[:16])
    logits = c3d.forward(clip[None]).output[0]
    assert summary["prediction"]["index"] == int(logits.argmax()) == map_prediction
    assert summary["prediction"]["name"] == f"Action{int(logits.argmax()):03d}"
    assert summary["prediction"]["probability"] == pytest.approx(
        float(torch.softmax(logits, 0).max()), rel=1e-4
    )
    assert summary["target"]["index"] == summary["prediction"]["index"]
    assert len(summary["frozen_predictions"]) == 16
    assert all(p["name"].startswith("Action") for p in summary["frozen_predictions"])
    assert summary["clip"] == {"frame_indices": list(range(16)), "looped": False, "padding": None}
    assert summary["options"]["preprocess"] == "c3d-ucf101"
    assert summary["options"]["rules"] == "deep-taylor-paper"
    assert summary["options"]["reduce"] == "first"
    assert summary["options"]["normalize"] == "maxabs"
    assert summary["model"]["architecture"] == "c3d"
    assert summary["timings"]["explain_s"] > 0
    output = capsys.readouterr().out
    assert "predicted Action" in output


def test_explain_tiny_writes_every_output_with_class_names(files, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_explain(files, out, "--start", "2", "--stride", "1")) == 0
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    check_images(out, 16)
    summary = read_summary(out)
    assert summary["clip"]["frame_indices"] == list(range(2, 18))
    assert summary["prediction"]["name"] in TINY_CLASSES
    assert summary["options"]["preprocess"] == "hara"  # c3d-tiny's default
    with np.load(out / "relevance.npz") as arrays:
        assert arrays["spatiotemporal"].shape == (16, 32, 32)
        assert arrays["frozen_predictions"].shape == (16,)


def test_explain_for_a_class_name_explains_the_frozen_clips_for_it_too(files, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_explain(files, out, "--target", "swim", "--reduce", "mean")) == 0
    summary = read_summary(out)
    assert summary["target"] == {"index": 3, "name": "Swim", "label": "Swim"}
    assert summary["options"]["reduce"] == "mean"


def test_explain_for_a_model_index(files, tmp_path):
    out = tmp_path / "out"
    assert main(tiny_explain(files, out, "--target", "1", "--normalize", "sum")) == 0
    summary = read_summary(out)
    assert summary["target"]["index"] == 1
    with np.load(out / "relevance.npz") as arrays:
        assert arrays["spatiotemporal"].sum() == pytest.approx(1.0, abs=1e-4)


def test_a_video_shorter_than_the_clip_is_loop_padded_and_the_run_says_so(files, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = tiny_explain(files, out)
    arguments[1] = str(files["short_video"])
    arguments.remove("--quiet")
    assert main(arguments) == 0
    expected = [*range(10), *range(6)]
    summary = read_summary(out)
    assert summary["clip"]["looped"] is True
    assert summary["clip"]["frame_indices"] == expected
    assert "loop padding" in summary["clip"]["padding"]
    assert "loop padding" in capsys.readouterr().out


def test_all_clips_writes_one_folder_per_clip_and_a_top_summary(files, tmp_path):
    out = tmp_path / "out"
    arguments = tiny_explain(files, out, "--all-clips")
    arguments[1] = str(files["long_video"])  # 40 frames: clips 0..15 and 16..31
    assert main(arguments) == 0
    top = read_summary(out)
    assert [clip["folder"] for clip in top["clips"]] == ["clip-000", "clip-001"]
    assert top["clips"][1]["frame_indices"] == list(range(16, 32))
    for folder in ("clip-000", "clip-001"):
        for name in OUTPUT_FILES:
            assert (out / folder / name).is_file()
        assert (
            read_summary(out / folder)["prediction"] == top["clips"][int(folder[-1])]["prediction"]
        )
    assert top["options"]["all_clips"] is True


def test_columns_choose_the_frames_of_the_figure(files, tmp_path):
    assert main(tiny_explain(files, tmp_path / "out", "--columns", "1,16")) == 0
    assert (tmp_path / "out" / "figure.png").is_file()


def test_help_of_every_command_exits_0(capsys):
    for command in (
        [],
        ["explain"],
        ["demo"],
        ["arch"],
        ["arch", "show"],
        ["arch", "check"],
        ["rules"],
        ["rules", "list"],
        ["rules", "show"],
    ):
        assert main([*command, "--help"]) == 0
        assert "usage: relgraph" in capsys.readouterr().out


def test_python_dash_m_relgraph_runs_the_command_line():
    completed = subprocess.run(
        [sys.executable, "-m", "relgraph", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0
    for command in ("explain", "demo", "arch", "rules"):
        assert command in completed.stdout


# --------------------------------------------------------------------------- demo


def test_demo_writes_a_real_video_and_explains_it_with_the_shipped_model(tmp_path):
    import time

    out = tmp_path / "demo"
    started = time.perf_counter()
    assert main(["demo", "--out", str(out), "--seed", "3", "--quiet"]) == 0
    assert time.perf_counter() - started < 60
    assert (out / "demo.mp4").is_file()
    info = relgraph.io.video.video_info(out / "demo.mp4")
    assert (info.frames, info.width, info.height) == (16, 32, 32)
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    check_images(out, 16)
    summary = read_summary(out)
    assert summary["demo"]["true_class"]["name"] in relgraph.datasets.synthetic.CLASS_NAMES
    assert summary["prediction"]["name"] in relgraph.datasets.synthetic.CLASS_NAMES
    assert summary["options"]["preprocess"] == "hara"
    with np.load(out / "relevance.npz") as arrays:
        assert arrays["moving_mask"].shape == (16, 32, 32)
        assert arrays["static_mask"].shape == (16, 32, 32)
        assert arrays["moving_mask"].dtype == bool and arrays["moving_mask"].any()
        assert not (arrays["moving_mask"] & arrays["static_mask"]).any()
        assert arrays["spatiotemporal"].shape == (16, 32, 32)


# --------------------------------------------------------------------------- arch, rules


def test_arch_show_prints_the_layer_table_with_parameters(capsys):
    assert main(["arch", "show", "c3d-tiny", "--param", "num_classes=7"]) == 0
    output = capsys.readouterr().out
    assert "conv1" in output and "fc8" in output and "total" in output
    assert "7" in output.split("fc8")[-1].splitlines()[0]  # fc8's output shape


def test_arch_check_prints_ok_for_a_valid_file(capsys):
    from relgraph.engine.graph import architecture_path

    assert main(["arch", "check", str(architecture_path("c3d"))]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_arch_check_reports_a_broken_file_with_its_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "name: broken\ninput: {name: input, shape: [3, 16, 32, 32]}\nnodes:\n"
        "  - {name: conv1, op: conv3dd, out_channels: 4, kernel_size: 3}\noutput: conv1\n"
    )
    assert main(["arch", "check", str(broken)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("relgraph: error: ") and "broken.yaml:4" in error
    assert "conv3d" in error  # did you mean


def test_rules_list_prints_presets_and_rules_with_defaults(capsys):
    assert main(["rules", "list"]) == 0
    output = capsys.readouterr().out
    assert "deep-taylor-paper" in output and "Hiley" in output
    assert "zplus(bias=False" in output
    assert "gamma(" in output and "gamma=0.25" in output


def test_rules_show_prints_the_rule_of_every_node(capsys):
    assert main(["rules", "show", "deep-taylor-paper", "--arch", "c3d"]) == 0
    output = capsys.readouterr().out
    assert "zbeta" in output and "winner-take-all" in output
    assert "conv5b" in output


# --------------------------------------------------------------------------- bad input


def expect_one_line_error(capsys, arguments, *fragments) -> str:
    assert main(arguments) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("relgraph: error: ")
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_missing_video_is_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out")
    arguments[1] = str(tmp_path / "nowhere.mp4")
    expect_one_line_error(capsys, arguments, "nowhere.mp4", "does not exist")


def test_corrupt_video_is_exit_2_one_line(files, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    arguments = tiny_explain(files, tmp_path / "out")
    arguments[1] = str(corrupt)
    expect_one_line_error(capsys, arguments, "corrupt.mp4")


def test_file_without_video_stream_is_exit_2_one_line(files, tmp_path, capsys):
    audio = tmp_path / "sound.wav"
    container = av.open(str(audio), mode="w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    samples = np.zeros((1, 8000), dtype=np.int16)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = 8000
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    arguments = tiny_explain(files, tmp_path / "out")
    arguments[1] = str(audio)
    expect_one_line_error(capsys, arguments, "no video stream")


def test_class_name_not_in_labels_is_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out", "--target", "Dance")
    expect_one_line_error(capsys, arguments, "unknown class 'Dance'")


def test_class_name_without_labels_is_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out", "--target", "Swim")
    labels_at = arguments.index("--labels")
    del arguments[labels_at : labels_at + 2]
    expect_one_line_error(capsys, arguments, "--labels")


def test_target_index_out_of_range_is_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out", "--target", "4")
    expect_one_line_error(capsys, arguments, "out of range")


def test_label_file_of_the_wrong_size_is_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out")
    arguments[arguments.index("--labels") + 1] = str(files["ucf_labels"])
    expect_one_line_error(capsys, arguments, "101 classes", "4 outputs")


def test_output_folder_that_cannot_be_written_is_exit_2_one_line(files, tmp_path, capsys):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    arguments = tiny_explain(files, in_the_way / "out")
    expect_one_line_error(capsys, arguments, "output folder")


def test_weights_that_do_not_fit_are_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out", "--param", "num_classes=5")
    labels_at = arguments.index("--labels")
    del arguments[labels_at : labels_at + 2]
    expect_one_line_error(capsys, arguments, "fc8.weight")


def test_unknown_rule_preset_is_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out", "--rules", "deep-taylor-papr")
    expect_one_line_error(capsys, arguments, "deep-taylor-paper")


def test_columns_outside_the_clip_are_exit_2_one_line(files, tmp_path, capsys):
    arguments = tiny_explain(files, tmp_path / "out", "--columns", "1,17")
    expect_one_line_error(capsys, arguments, "1..16")


@pytest.mark.parametrize("bad", [["--target", "Dance"], ["--start", "25"]])
def test_no_output_folder_is_left_behind_by_an_error_before_the_explanation(
    files, tmp_path, capsys, bad
):
    arguments = tiny_explain(files, tmp_path / "out", *bad)
    assert main(arguments) == 2
    assert not (tmp_path / "out").exists()


def test_a_closed_stdout_pipe_ends_quietly(capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["rules", "list"]) == 1
    assert capsys.readouterr().err == ""


def test_keyboard_interrupt_exits_130_without_traceback(files, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("relgraph.cli.main.explain_video", interrupted)
    assert main(tiny_explain(files, tmp_path / "out")) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.strip() == "relgraph: interrupted"


def test_explain_in_bfloat16_writes_maps_close_to_float32(files, tmp_path):
    plain, half = tmp_path / "fp32", tmp_path / "bf16"
    assert main(tiny_explain(files, plain, "--target", "0")) == 0
    assert main(tiny_explain(files, half, "--target", "0", "--precision", "bf16")) == 0
    assert read_summary(half)["model"]["dtype"] == "bfloat16"
    assert read_summary(plain)["model"]["dtype"] == "float32"
    with np.load(plain / "relevance.npz") as a, np.load(half / "relevance.npz") as b:
        expected, actual = a["spatiotemporal"].ravel(), b["spatiotemporal"].ravel()
    assert np.isfinite(actual).all()
    assert np.corrcoef(expected, actual)[0, 1] > 0.99


def test_unknown_precision_is_exit_2_one_line(files, tmp_path, capsys):
    assert main(tiny_explain(files, tmp_path / "out", "--precision", "fp16")) == 2
    error = capsys.readouterr().err
    assert "--precision" in error and "fp16" in error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()
