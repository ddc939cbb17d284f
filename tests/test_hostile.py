"""Hostile input: every bad argument, file or environment ends with one clear error (a
``RelgraphError``; on the command line one line and exit status 2), or with the right result,
and leaves nothing half-written behind.

Models are tiny (c3d-tiny at 32x32, or a few-node YAML) so that the whole file runs in
seconds; stores and damaged files are written by hand.
"""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import relgraph
from relgraph.cli.main import main
from relgraph.datasets.report import build_report_with_damage, read_rows
from relgraph.datasets.store import Store
from relgraph.errors import ArgumentError, StoreError, WeightsError
from relgraph.io.outputs import json_text, write_json
from relgraph.models.demo import DEMO_LABELS, DEMO_WEIGHTS, load_demo_model


def strict_json(path: Path):
    """Parse a file as strict JSON (RFC 8259): NaN and Infinity are refused."""

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def expect_cli_error(capsys, arguments, *fragments) -> str:
    """``main(arguments)`` exits 2 with one line on stderr holding every fragment."""
    assert main(arguments) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("relgraph: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def demo():
    """c3d-tiny at a quarter of its width and half its size (random weights): fast."""
    return relgraph.load_architecture("c3d-tiny", width=2, hidden=8, size=16, seed=1)


# --------------------------------------------------------------------------- 1: layouts


@pytest.mark.parametrize("layout", ["channels_last_3d", "permuted", "sliced"])
def test_a_non_contiguous_input_gets_the_relevance_of_its_contiguous_copy(demo, layout):
    torch.manual_seed(0)
    if layout == "channels_last_3d":
        x = torch.randn(2, 3, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    elif layout == "permuted":
        x = torch.randn(2, 16, 16, 16, 3).permute(0, 4, 3, 1, 2)
    else:
        x = torch.randn(2, 3, 16, 16, 32)[..., ::2]
    assert not x.is_contiguous()
    relevance = relgraph.explain(demo, x)
    expected = relgraph.explain(demo, x.contiguous())
    assert relevance.shape == x.shape
    torch.testing.assert_close(relevance, expected, rtol=0, atol=0)


def test_an_empty_batch_is_a_shape_error(demo):
    with pytest.raises(relgraph.ShapeError, match="empty batch"):
        relgraph.explain(demo, torch.zeros(0, 3, 16, 16, 16))


# --------------------------------------------------------------------------- 2: NaN, JSON


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_weights_with_nan_or_inf_are_refused_naming_the_tensor(bad):
    graph = relgraph.load_architecture("c3d-tiny")
    state = graph.state_dict()
    name = sorted(state)[3]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = bad
    before = {key: value.clone() for key, value in graph.state_dict().items()}
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        graph.load_weights(state)
    after = graph.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_json_is_strict_non_finite_numbers_become_null(tmp_path):
    path = write_json(
        tmp_path / "s.json",
        {"p": math.nan, "q": [math.inf, 1.5], "r": np.float32("-inf"), "t": torch.tensor(2.0)},
    )
    assert strict_json(path) == {"p": None, "q": [None, 1.5], "r": None, "t": 2.0}
    assert json.loads(json_text({"a": float("nan")}, compact=True)) == {"a": None}


# --------------------------------------------------------------------------- 3: store lock


def test_a_second_writer_is_refused_while_the_store_is_locked(tmp_path):
    store = Store(tmp_path / "store")
    with store.lock():
        with pytest.raises(StoreError, match="another run is writing this store"):
            with Store(tmp_path / "store").lock():
                pass
    with Store(tmp_path / "store").lock():  # released: the next writer gets it
        pass


def test_dataset_explain_on_a_locked_store_exits_2_and_keeps_the_writers_files(tmp_path, capsys):
    from relgraph.datasets.synthetic import write_video_folders

    source = tmp_path / "videos"
    write_video_folders(source, 1, seed=3, frames=(16, 17))
    store = Store(tmp_path / "store")
    arguments = [
        "dataset",
        "explain",
        str(source),
        "--arch",
        "c3d-tiny",
        "--weights",
        str(DEMO_WEIGHTS),
        "--labels",
        str(DEMO_LABELS),
        "--out",
        str(store.root),
        "--quiet",
    ]
    with store.lock():
        # the first writer's file of an atomic write in progress
        temporary = store.root / "videos" / "A" / ".relevance.npz.x1.tmp.npz"
        temporary.parent.mkdir(parents=True)
        temporary.write_bytes(b"half")
        expect_cli_error(capsys, arguments, "another run is writing this store", "pid")
        assert temporary.read_bytes() == b"half"


# --------------------------------------------------------------------------- 4, 5: report


def _row(folder: str, label: str, status: str = "failed") -> dict:
    return {
        "folder": folder,
        "key": folder,
        "label": label,
        "status": status,
        "path": f"/data/{folder}.mp4",
        "error": "too short" if status != "ok" else None,
        "frames": 3,
    }


def _store(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True)
    (root / "store.json").write_text(json.dumps({"format": 1, "fingerprint": "x"}))
    (root / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_report_pages_of_names_that_read_alike_do_not_collide(tmp_path):
    rows = [_row("C/_z.mp4", "A B"), _row("C_/z.mp4", "A_B")]
    root = _store(tmp_path / "store", rows)
    out, damaged = build_report_with_damage(root)
    assert damaged == []
    assert len(list((out / "classes").glob("*.html"))) == 2
    pages = sorted((out / "videos").glob("*.html"))
    assert len(pages) == 2
    shown = sorted(
        path
        for path in ("/data/C/_z.mp4.mp4", "/data/C_/z.mp4.mp4")
        for p in pages
        if path in p.read_text()
    )
    assert shown == ["/data/C/_z.mp4.mp4", "/data/C_/z.mp4.mp4"]  # one page each


def test_report_on_a_damaged_store_lists_the_damage_and_reports_the_rest(tmp_path, capsys):
    root = _store(tmp_path / "store", [_row("Run/a", "Run"), _row("Run/b", "Run")])
    with open(root / "index.jsonl", "a") as handle:
        handle.write('{"folder": "Run/c", "key": "Ru')  # truncated
    no_folder = root / "videos" / "Run" / "d" / "row.json"
    no_folder.parent.mkdir(parents=True)
    no_folder.write_text(
        json.dumps({k: v for k, v in _row("Run/d", "Run").items() if k != "folder"})
    )
    ok = _row("Run/e", "Run", "ok")
    ok.update(prediction="Run", probability=0.9, correct=True, frozen_accuracy=0.5)
    ok.update(temporal_share=0.4, clips=1, frozen_predictions=[["Run"] * 16])
    (root / "videos" / "Run" / "e").mkdir(parents=True)
    (root / "videos" / "Run" / "e" / "row.json").write_text(json.dumps(ok))
    (root / "videos" / "Run" / "e" / "relevance.npz").write_bytes(b"not a zip file")

    assert main(["dataset", "report", str(root)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    warned = captured.err.strip().splitlines()
    assert len(warned) == 3 and all(line.startswith("relgraph: warning: ") for line in warned)
    assert "index.jsonl:3" in captured.err and "has no folder" in captured.err
    assert "relevance.npz" in captured.err
    summary = strict_json(root / "report" / "summary.json")
    assert summary["overall"]["videos"] == 3
    assert len(summary["damaged"]) == 3
    assert "Damaged (3)" in (root / "report" / "index.html").read_text()


def test_report_on_a_store_with_nothing_readable_exits_2(tmp_path, capsys):
    root = _store(tmp_path / "store", [])
    (root / "index.jsonl").write_text("{not json\n")
    expect_cli_error(capsys, ["dataset", "report", str(root)], "nothing in the store is readable")
    rows, damaged = read_rows(root)
    assert rows == [] and len(damaged) == 1


# --------------------------------------------------------------------------- 6: memory


WIDE_YAML = """\
name: wide
input: {name: input, shape: [3, 16, 112, 112]}
nodes:
  - {name: conv1, op: conv3d, out_channels: 1000, kernel_size: 1}
  - {name: conv2, op: conv3d, out_channels: 1000, kernel_size: 1}
  - {name: conv3, op: conv3d, out_channels: 1000, kernel_size: 1}
  - {name: conv4, op: conv3d, out_channels: 1000, kernel_size: 1}
  - {name: pool, op: adaptive_avgpool3d, output_size: 1}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, out_features: 4}
output: fc
rules: deep-taylor-paper
preprocess: hara
"""


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide.yaml"
    path.write_text(WIDE_YAML)
    return path


def test_the_memory_estimate_counts_every_kept_activation(wide):
    from relgraph.engine.memory import estimate_peak

    graph = relgraph.load_architecture(wide, init="none")
    conv = 1000 * 16 * 112 * 112  # one 1000-channel activation, per sample
    clip = 3 * 16 * 112 * 112
    estimate = estimate_peak(graph, 2)
    # activations: the four convolutions, the input and the small tail, in float32
    assert estimate.activations >= 2 * 4 * (4 * conv + clip)
    assert estimate.activations < 2 * 4 * (4 * conv + clip) * 1.01
    # the reverse pass's working tensors at the widest node
    assert estimate.relevance == 2 * 4 * 4 * conv
    graph.cache_policy = "none"
    assert estimate_peak(graph, 2).memory_mode
    assert estimate_peak(graph, 2).total == estimate.total  # an upper bound in either mode


def test_explain_refuses_a_batch_beyond_the_memory_before_allocating(wide, monkeypatch):
    from relgraph.engine import memory

    graph = relgraph.load_architecture(wide)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * 10**9)
    allocated = []
    monkeypatch.setattr(graph, "forward", lambda *a, **k: allocated.append(1))
    x = torch.zeros(1, 3, 16, 112, 112)
    with pytest.raises(relgraph.ResourceError, match=r"estimated .* GB.*2\.0 GB is available"):
        relgraph.explain(graph, x)
    with pytest.raises(relgraph.ResourceError, match="memory_check=False"):
        relgraph.discriminative(graph, x)
    assert allocated == []


def test_the_memory_check_can_be_turned_off(demo, monkeypatch):
    from relgraph.engine import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    x = torch.randn(1, 3, 16, 16, 16)
    with pytest.raises(relgraph.ResourceError):
        relgraph.explain(demo, x)
    relevance = relgraph.explain(demo, x, memory_check=False)
    assert relevance.shape == x.shape


def test_explain_on_the_command_line_refuses_before_creating_out(tmp_path, monkeypatch, capsys):
    from relgraph.engine import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    video = _demo_video(tmp_path)
    out = tmp_path / "out"
    expect_cli_error(capsys, [*_explain_args(video, out)], "is available", "--no-memory-check")
    assert not out.exists()


# --------------------------------------------------------------------------- 7: evaluate


def test_evaluate_videos_decodes_only_the_first_clip(tmp_path, monkeypatch):
    from relgraph.evaluation import suite

    video = _demo_video(tmp_path, frames=40)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{video.name} 1\n")
    asked = []
    real = suite.read_video

    def spy(path, *, max_frames=None):
        asked.append(max_frames)
        return real(path, max_frames=max_frames)

    monkeypatch.setattr(suite, "read_video", spy)
    data = suite.video_data(load_demo_model(), listing)
    assert asked == [16]
    assert data.clips.shape == (1, 3, 16, 32, 32)


# --------------------------------------------------------------------------- 8, 15: outputs


def _demo_video(tmp_path: Path, frames: int = 20) -> Path:
    from relgraph.datasets.synthetic import make_clip
    from relgraph.io.video import write_video

    path = tmp_path / "clip.avi"
    if not path.exists():
        clip = make_clip(1, np.random.default_rng(0), frames=frames, size=32)
        write_video(path, clip.frames, fps=8)
    return path


def _explain_args(video: Path, out: Path, *extra: str) -> list[str]:
    return [
        "explain",
        str(video),
        "--arch",
        "c3d-tiny",
        "--weights",
        str(DEMO_WEIGHTS),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.fixture
def small(monkeypatch):
    """A small c3d-tiny, and the explanation and figures replaced by quick stand-ins: these
    tests are about which files appear where, not about the maps."""
    from relgraph.pipeline import video as pipeline

    def figures(model, result, folder, frames, maps, columns):
        paths = [folder / name for name in pipeline.FIGURE_FILES]
        for path in paths:
            path.write_bytes(b"figure of " + str(result.target).encode())
        return paths

    def explain_clips(model, clips, *, target="auto", **options):
        batch, channels, frames, height, width = clips.shape
        maps = np.zeros((frames, height, width), np.float32)
        chosen = 0 if target == "auto" else int(target)
        return [
            pipeline.ClipResult(
                spatiotemporal=maps,
                spatial=maps,
                temporal=maps,
                relevance=np.zeros((channels, frames, height, width), np.float32),
                frozen_relevance=np.zeros((frames, channels, frames, height, width), np.float32),
                prediction=chosen,
                probability=0.5,
                target=chosen,
                frozen_predictions=np.full(frames, chosen),
                frozen_probabilities=np.full(frames, 0.5),
                lost_fraction=0.0,
                frozen_lost_fraction=np.zeros(frames),
            )
            for _ in range(batch)
        ]

    monkeypatch.setattr(pipeline, "_draw_figures", figures)
    monkeypatch.setattr(pipeline, "explain_clips", explain_clips)
    return relgraph.load_architecture("c3d-tiny", width=2, hidden=8, size=16, seed=1)


def _run(small, video, out, **options):
    model = relgraph.load_model(small, preprocess="hara")
    return relgraph.explain_video(
        video, model, out, relgraph.VideoOptions(batch_size=17, **options)
    )


def test_a_full_disk_is_an_output_error_naming_the_file_and_leaves_out_as_it_was(
    tmp_path, monkeypatch, small
):
    from relgraph.io import outputs

    video = _demo_video(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.zipfile, "ZipFile", full)
    with pytest.raises(relgraph.OutputError, match="relevance.npz: the disk filled up") as error:
        _run(small, video, out)
    assert "No space left" in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no figure, no staging


def test_a_full_disk_on_the_command_line_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from relgraph.io.outputs import disk_full
    from relgraph.pipeline import video as pipeline

    out = tmp_path / "out"

    def full(*args, **kwargs):  # the first step after the model is loaded
        raise disk_full(out / "relevance.npz", OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(pipeline, "check_memory", full)
    line = expect_cli_error(capsys, _explain_args(_demo_video(tmp_path), out), "disk filled up")
    assert "relevance.npz" in line


def test_an_interrupted_explain_leaves_the_earlier_outputs_whole(tmp_path, monkeypatch, small):
    from relgraph.pipeline import video as pipeline

    video = _demo_video(tmp_path)
    out = tmp_path / "out"
    _run(small, video, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == sorted(pipeline.OUTPUT_FILES)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_npz", interrupted)  # after the figures
    with pytest.raises(KeyboardInterrupt):
        _run(small, video, out, target=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_rerun_removes_stale_clip_folders_and_keeps_the_users_files(tmp_path, small):
    video = _demo_video(tmp_path, frames=40)
    out = tmp_path / "out"
    _run(small, video, out, all_clips=True)
    assert {p.name for p in out.glob("clip-*")} == {"clip-000", "clip-001"}
    (out / "notes.txt").write_text("mine")
    result = _run(small, video, out, all_clips=True, stride=2)
    assert {p.name for p in out.glob("clip-*")} == {"clip-000"}
    assert (out / "notes.txt").read_text() == "mine"
    assert strict_json(out / "summary.json")["clips"][0]["folder"] == "clip-000"
    assert all(path.is_file() and out in path.parents for path in result.files)
    _run(small, video, out)  # one clip: no clip folder is left
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "figure.png", "animation.gif", "frames.png", "relevance.npz", "summary.json"]
    )


# --------------------------------------------------------------------------- 9, 10, 14: CLI


@pytest.mark.parametrize(
    "bad",
    [
        ["--cube", "0", "8", "8"],
        ["--batch-size", "0"],
        ["--sanity-clips", "-1"],
        ["--steps", "0"],
        ["--clips", "0"],
        ["--seed", "-1"],
    ],
)
def test_evaluate_refuses_bad_numbers_and_creates_no_out(tmp_path, capsys, bad):
    out = tmp_path / "out"
    assert main(["evaluate", "--out", str(out), "--clips", "2", *bad]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and bad[0] in captured.err
    assert not out.exists()


def test_evaluate_refuses_an_unknown_preset_before_creating_out(tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["evaluate", "--out", str(out), "--clips", "2", "--presets", "zenit-epsilon"]
    expect_cli_error(capsys, arguments, "unknown rule preset")
    assert not out.exists()


def test_check_evaluation_args_names_the_argument():
    from relgraph.evaluation.suite import check_evaluation_args

    with pytest.raises(ArgumentError, match="cube frames"):
        check_evaluation_args(cube=(0, 8, 8))
    with pytest.raises(ArgumentError, match="steps"):
        check_evaluation_args(steps=0)
    with pytest.raises(ArgumentError, match="sanity_clips"):
        check_evaluation_args(sanity_clips=-1)


def test_demo_refuses_a_negative_seed_and_creates_no_folder(tmp_path, capsys):
    from relgraph.models.demo import run_demo

    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), "--seed", "-5"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(ArgumentError, match="seed"):
        run_demo(out, seed=-5)
    assert not out.exists()


def _dataset_args(tmp_path: Path, *extra: str) -> list[str]:
    source = tmp_path / "videos"
    if not source.exists():
        from relgraph.datasets.synthetic import write_video_folders

        write_video_folders(source, 1, seed=3, frames=(16, 17))
    return [
        "dataset",
        "explain",
        str(source),
        "--arch",
        "c3d-tiny",
        "--weights",
        str(DEMO_WEIGHTS),
        "--labels",
        str(DEMO_LABELS),
        "--out",
        str(tmp_path / "store"),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--min-frames", "1000"], "--min-frames 1000"),
        (["--workers", "-1"], "--workers"),
        (["--stats", "{tmp}/a-file/stats.json"], "stats.json"),
        (["--clips", "0"], "--clips"),
    ],
)
def test_dataset_explain_checks_its_options_before_any_work(tmp_path, capsys, extra, fragment):
    (tmp_path / "a-file").write_text("not a folder")
    arguments = _dataset_args(tmp_path, *(e.replace("{tmp}", str(tmp_path)) for e in extra))
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and fragment in captured.err
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- 11: import


def test_import_refuses_a_huge_input_shape_before_the_example_batch(capsys):
    arguments = [
        "arch",
        "import",
        "torch.nn:Flatten",
        "--input-shape",
        "3,100000,100000,100000",
        "--out",
        "/nonexistent/x.yaml",
    ]
    expect_cli_error(capsys, arguments, "3,000,000,000,000,000 values")


def test_from_torch_refuses_a_meta_model():
    with torch.device("meta"):
        module = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.Flatten())
    with pytest.raises(relgraph.TorchImportError, match="meta device.*'0.weight'"):
        relgraph.from_torch(module, (3, 2, 4, 4))


class _Misshaped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return y.view(y.shape[0], 7, -1).sum(-1)


def test_an_import_failure_is_one_line_naming_the_users_source_line():
    with pytest.raises(relgraph.TorchImportError) as raised:
        relgraph.from_torch(_Misshaped(), (3, 2, 4, 4))
    message = str(raised.value)
    assert "\n" not in message and "Original traceback" not in message
    assert "test_hostile.py" in message and "y.view(y.shape[0], 7, -1)" in message


# --------------------------------------------------------------------------- 12: rules


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"name": "epsilon", "epsilon": math.nan}, "finite"),
        ({"name": "epsilon", "epsilon": math.inf}, "finite"),
        ({"name": "epsilon", "epsilon": "a"}, "must be"),
        ({"name": "alphabeta", "alpha": math.nan, "beta": math.nan}, "finite"),
        ({"name": "zplus", "epsilon": -math.inf}, "finite"),
        ({"name": "gamma", "gamma": math.inf}, "finite"),
        ({"name": "zbeta", "low": 10, "high": -10}, "low ≤ high"),
        ({"name": "zbeta", "low": [0, 0, math.nan], "high": 1}, "finite"),
        ({"name": "combine", "parts": [{"weight": math.inf, "rule": "zplus"}]}, "finite"),
    ],
)
def test_rule_parameters_must_be_finite_numbers(spec, fragment):
    from relgraph.rules import make_rule

    with pytest.raises(relgraph.RuleError, match=fragment):
        make_rule(spec)


def test_rule_objects_built_in_python_check_their_parameters_too():
    from relgraph.rules import RULES

    for build in (
        lambda: RULES["epsilon"]("a"),
        lambda: RULES["epsilon"](math.nan),
        lambda: RULES["alphabeta"](alpha=math.nan, beta=math.nan),
        lambda: RULES["zbeta"](low=10, high=-10),
    ):
        with pytest.raises(relgraph.RuleError):
            build()


def test_a_preset_file_with_epsilon_nan_is_refused(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "name: mine\nextends: deep-taylor-paper\nrules:\n"
        "  - {ops: [linear], rule: {name: epsilon, epsilon: .nan}}\n"
    )
    with pytest.raises(relgraph.RelgraphError, match="finite"):
        relgraph.explain(load_demo_model(), torch.randn(1, 3, 16, 32, 32), rules=str(preset))


# --------------------------------------------------------------------------- 13: Python API


@pytest.mark.parametrize(
    "keyword",
    [
        {"reduce": "max"},
        {"normalize": "l2"},
        {"batch_size": -1},
        {"stride": "2"},
        {"start": -1},
        {"target": 1.5},
        {"figures": "yes"},
    ],
)
def test_explain_video_refuses_bad_options_before_creating_out(tmp_path, keyword):
    out = tmp_path / "out"
    options = relgraph.VideoOptions(**keyword)
    with pytest.raises(ArgumentError, match=next(iter(keyword))):
        relgraph.explain_video(tmp_path / "missing.mp4", "c3d-tiny", out, options)
    assert not out.exists()


@pytest.mark.parametrize("keyword", [{"device": "tpu"}, {"precision": "fp8"}])
def test_load_model_refuses_a_bad_device_or_precision(keyword):
    with pytest.raises(ArgumentError, match=next(iter(keyword))):
        relgraph.load_model("c3d-tiny", **keyword)


def test_explain_video_refuses_options_that_are_not_video_options(tmp_path):
    with pytest.raises(ArgumentError, match="VideoOptions"):
        relgraph.explain_video(tmp_path / "missing.mp4", "c3d-tiny", tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- found by the fuzzer


@pytest.mark.parametrize(
    "arguments",
    [
        ["rules", "show", "x" * 300, "--arch", "c3d-tiny"],
        ["arch", "show", "y" * 300],
        ["arch", "check", "z" * 300 + ".yaml"],
    ],
)
def test_a_name_too_long_for_the_file_system_is_one_line(capsys, arguments):
    expect_cli_error(capsys, arguments)
