"""``relgraph dataset explain|report``: sources, store, resumability, torchrun, report.

A tiny data set of synthetic videos (c3d-tiny, 32x32, the shipped demo weights): seven
readable videos of 16-40 frames, one too short, one corrupt file. One uninterrupted
single-process run is the reference every other run is compared with.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from relgraph.cli.main import main
from relgraph.datasets.distributed import shard
from relgraph.datasets.sources import load_source
from relgraph.datasets.store import read_index
from relgraph.datasets.synthetic import CLASS_NAMES, make_clip, write_video_folders
from relgraph.errors import DatasetError
from relgraph.io.video import write_video
from relgraph.models.demo import DEMO_LABELS, DEMO_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "videos"
    write_video_folders(folder, 5, seed=3, frames=(16, 40))
    short = make_clip(0, np.random.default_rng(1)).frames[:3]
    write_video(folder / "MoveRight" / "v_short.avi", short, fps=8)
    (folder / "MoveLeft" / "v_corrupt.avi").write_bytes(b"not a video at all" * 50)
    return folder


def explain_args(source, store, *extra) -> list[str]:
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
        str(store),
        "--quiet",
        *extra,
    ]


def run_cli(args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relgraph", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("ref") / "store"
    assert main(explain_args(source, store, "--clips", "2", "--figures", "summary")) == 0
    return store


def comparable(store: Path) -> dict:
    """Rows without timings, and every array of every npz."""
    rows = [
        {k: v for k, v in row.items() if k != "timings"}
        for row in read_index(store / "index.jsonl")
    ]
    arrays = {}
    for npz in sorted((store / "videos").rglob("relevance.npz")):
        with np.load(npz, allow_pickle=False) as data:
            arrays[npz.relative_to(store).as_posix()] = {k: data[k] for k in data.files}
    return {"rows": rows, "arrays": arrays}


def assert_same_store(a: Path, b: Path) -> None:
    left, right = comparable(a), comparable(b)
    assert left["rows"] == right["rows"]
    assert left["arrays"].keys() == right["arrays"].keys()
    for name, arrays in left["arrays"].items():
        assert arrays.keys() == right["arrays"][name].keys(), name
        for key, value in arrays.items():
            other = right["arrays"][name][key]
            assert value.dtype == other.dtype and value.shape == other.shape, (name, key)
            assert np.array_equal(value, other), f"{name}:{key} differs"


# --------------------------------------------------------------------------- sources


def test_three_source_layouts_give_the_same_videos(source, tmp_path):
    from_folders = load_source(source)
    assert len(from_folders) == 7
    assert {item.label for item in from_folders} <= set(CLASS_NAMES)
    assert all(item.label == item.key.split("/")[0] for item in from_folders)

    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CLASS_NAMES, 1)))
    (lists / "testlist01.txt").write_text("".join(f"{item.key}\n" for item in from_folders))
    split = load_source(lists / "testlist01.txt", root=source)
    csv = tmp_path / "videos.csv"
    csv.write_text("path,label\n" + "".join(f"{item.path},{item.label}\n" for item in from_folders))
    from_csv = load_source(csv)
    assert [(i.path, i.label) for i in split] == [(i.path, i.label) for i in from_folders]
    assert sorted((i.path, i.label) for i in from_csv) == [(i.path, i.label) for i in from_folders]

    # trainlist style with class ids, relative to the UCF-101 layout beside the lists
    ucf = tmp_path / "UCF-101"
    ucf.symlink_to(source)
    ids = {n: i for i, n in enumerate(CLASS_NAMES, 1)}
    (lists / "trainlist01.txt").write_text(
        "".join(f"{i.key} {ids[i.label]}\n" for i in from_folders)
    )
    train = load_source(lists / "trainlist01.txt")
    assert [i.label for i in train] == [i.label for i in from_folders]
    assert all(i.path.exists() for i in train)


def test_source_errors_name_file_and_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no video"):
        load_source(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("a.avi,MoveUp\nonly-one-cell\n")
    with pytest.raises(DatasetError, match=r"bad.csv:2: expected 'path,label'"):
        load_source(bad)
    lst = tmp_path / "testlist01.txt"
    lst.write_text("MoveUp/v.avi\n")
    with pytest.raises(DatasetError, match="classInd.txt"):
        load_source(lst)


def test_shard_is_deterministic_and_balanced():
    rng = np.random.default_rng(0)
    costs = list(rng.integers(1, 100, size=200).astype(float))
    ranks = shard(costs, 3)
    assert ranks == shard(costs, 3)
    loads = [sum(c for c, r in zip(costs, ranks) if r == k) for k in range(3)]
    assert max(loads) - min(loads) <= max(costs)
    assert set(shard([5.0], 4)) == {0}


# --------------------------------------------------------------------------- the run


def test_store_index_and_failures(reference, source):
    rows = read_index(reference / "index.jsonl")
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    assert len(rows) == 7
    failed = {r["key"]: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == {"MoveLeft/v_corrupt.avi", "MoveRight/v_short.avi"}
    assert "too short: 3 frame(s)" in failed["MoveRight/v_short.avi"]
    assert "v_corrupt.avi" in failed["MoveLeft/v_corrupt.avi"]
    ok = [r for r in rows if r["status"] == "ok"]
    for row in ok:
        assert 0.0 <= row["temporal_share"] <= 1.0
        assert row["correct"] == (row["prediction"] == row["label"])
        assert len(row["frozen_predictions"]) == row["clips"]
        frozen = [name for clip in row["frozen_predictions"] for name in clip]
        assert row["frozen_accuracy"] == pytest.approx(np.mean([n == row["label"] for n in frozen]))
        folder = reference / "videos" / row["folder"]
        assert (folder / "grid.png").is_file() and (folder / "animation.gif").is_file()
    assert any(r["clips"] == 2 for r in ok)  # 30-frame videos give two clips
    assert not list(reference.rglob(".*.tmp*"))


def test_maps_equal_a_direct_discriminative_call(reference, source):
    """The stored maps of a video are relgraph.discriminative on its clip, computed alone."""
    from relgraph.io.preprocess import get_preprocess
    from relgraph.io.video import read_video, select_clip
    from relgraph.methods.discriminative import discriminative
    from relgraph.models.demo import load_demo_model

    row = next(r for r in read_index(reference / "index.jsonl") if r["status"] == "ok")
    graph = load_demo_model()
    frames = read_video(source / row["key"])
    clip = get_preprocess("hara", size=32)(select_clip(frames, length=16).frames)[None]
    result = discriminative(graph, clip)
    with np.load(reference / "videos" / row["folder"] / "relevance.npz") as data:
        assert data["frame_indices"][0].tolist() == list(range(16))
        for name in ("spatiotemporal", "spatial", "temporal"):
            np.testing.assert_allclose(data[name][0], getattr(result, name)[0].numpy(), atol=1e-5)
        assert int(data["prediction"][0]) == int(result.prediction[0])
    # the true labels are the class folders, the prediction is the demo model's
    assert row["label"] == row["key"].split("/")[0]


def test_resumes_after_sigkill_at_several_points(reference, source, tmp_path):
    store = tmp_path / "store"
    args = explain_args(source, store, "--clips", "2", "--figures", "summary")
    # killed inside the atomic npz write, between a video's files and its row, and after
    # every row but before the index
    for point in ("npz:2", "files:3", "index:1"):
        killed = run_cli(args, env={"RELGRAPH_TEST_KILL": point})
        assert killed.returncode == -9, (point, killed.stderr)
        if point == "npz:2":
            assert list(store.rglob(".*.tmp*"))  # a temporary file was left ...
            assert len(list(store.rglob("row.json"))) == 1
    finished = run_cli(args)
    assert finished.returncode == 0, finished.stderr
    assert not list(store.rglob(".*.tmp*"))  # ... which the next run removed
    assert_same_store(reference, store)


def test_changed_options_are_refused_and_nothing_is_lost(reference, source, capsys):
    before = comparable(reference)
    options = (
        (["--clips", "first"], 'clips: 2 -> "first"'),
        (["--clips", "2", "--rules", "epsilon-plus"], "rules: "),
        (["--clips", "2", "--reduce", "mean"], 'reduce: "first" -> "mean"'),
        (["--clips", "2", "--min-frames", "2"], "min_frames: 8 -> 2"),
    )
    for extra, change in options:
        assert main(explain_args(source, reference, *extra)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("relgraph: error: ")
        assert "other options" in lines[0] and change in lines[0]
    from safetensors.torch import save_file

    from relgraph.models.demo import load_demo_model

    state = {k: v.clone().contiguous() for k, v in load_demo_model().state_dict().items()}
    first = sorted(state)[0]
    state[first] = state[first] * 1.01
    weights = reference.parent / "other.safetensors"
    save_file(state, weights)
    args = explain_args(source, reference, "--clips", "2")
    args[args.index("--weights") + 1] = str(weights)
    assert main(args) == 2
    assert "weights_sha256" in capsys.readouterr().err
    after = comparable(reference)
    assert before["rows"] == after["rows"]


def test_bad_input_is_one_line_and_exit_2(source, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(explain_args(empty, tmp_path / "s1")) == 2
    assert "holds no video" in capsys.readouterr().err
    labels = tmp_path / "labels.txt"
    labels.write_text("1 A\n2 B\n3 C\n4 D\n")
    args = explain_args(source, tmp_path / "s2")
    args[args.index("--labels") + 1] = str(labels)
    assert main(args) == 2
    assert "are not classes of the model" in capsys.readouterr().err
    not_store = tmp_path / "not-store"
    not_store.mkdir()
    (not_store / "precious.txt").write_text("keep me")
    assert main(explain_args(source, not_store)) == 2
    assert "not a relgraph store" in capsys.readouterr().err
    assert (not_store / "precious.txt").read_text() == "keep me"
    other_version = tmp_path / "other-version"
    other_version.mkdir()
    manifest = {"format": 99, "relgraph": "9.9", "fingerprint": "x", "options": {}}
    (other_version / "store.json").write_text(json.dumps(manifest))
    assert main(explain_args(source, other_version)) == 2
    err = capsys.readouterr().err
    assert "format 99 (relgraph 9.9)" in err and len(err.strip().splitlines()) == 1


def test_unwritable_store_is_refused(source, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's folder would be")
    assert main(explain_args(source, blocker / "store")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("relgraph: error: ")


def test_dry_run_lists_and_writes_nothing(reference, source, tmp_path, capsys):
    args = explain_args(source, tmp_path / "new", "--clips", "2", "--dry-run")
    args.remove("--quiet")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "new").exists()
    assert out.count("todo  ") == 7 and "2 will fail" in out
    args = explain_args(source, reference, "--clips", "2", "--dry-run")
    args.remove("--quiet")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("done  ") == 7 and "0 videos to do" in out


def test_torchrun_two_processes_give_the_same_store(reference, source, tmp_path):
    """Rank 1 dies mid-run; the rerun completes its share; the store equals 1 process's."""

    def torchrun(store, env):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        args = explain_args(source, store, "--clips", "2", "--figures", "summary")
        args.remove("--quiet")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--nnodes=1",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            "-m",
            "relgraph",
            *args,
        ]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **env}
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)

    store = tmp_path / "store"
    died = torchrun(store, {"RELGRAPH_TEST_KILL": "files:2", "RELGRAPH_TEST_KILL_RANK": "1"})
    assert died.returncode != 0
    assert not (store / "index.jsonl").exists()
    assert list(store.rglob("row.json"))  # rank 1 committed its first video before dying
    result = torchrun(store, {})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ETA" in result.stdout  # progress, from rank 0 only:
    assert result.stdout.count("to do on 2 process(es)") == 1
    assert "done already" in result.stdout and ", 0 done already" not in result.stdout
    assert_same_store(reference, store)


# --------------------------------------------------------------------------- the report


def test_report_summary_and_pages(reference, tmp_path):
    out = tmp_path / "report"
    assert main(["dataset", "report", str(reference), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = read_index(reference / "index.jsonl")
    assert summary["overall"]["videos"] == 7 and summary["overall"]["failed"] == 2
    for name, stats in summary["classes"].items():
        ok = [r for r in rows if r["label"] == name and r["status"] == "ok"]
        if ok:
            assert stats["clip_accuracy"] == pytest.approx(np.mean([r["correct"] for r in ok]))
            assert stats["temporal_share"] == pytest.approx(
                np.mean([r["temporal_share"] for r in ok])
            )
    for name in ("index.html", "motion.png", "histograms.png", "static/report.js"):
        assert (out / name).is_file()
    assert len(list((out / "videos").glob("*.html"))) == 7
    assert len(list((out / "classes").glob("*.html"))) == len(summary["classes"])
    assert len(list((out / "media").rglob("thumb.png"))) == 5


def test_quick_figures_colours_and_layout(tmp_path):
    from PIL import Image

    from relgraph.io import quickfig

    values = np.array([-1.0, 0.0, 1.0, 5.0], np.float32)
    colours = quickfig.colorize(values)
    assert colours[1].min() >= 250  # white at zero
    assert colours[2][0] > 100 and colours[2][2] < 10  # red positive
    assert colours[0][2] > 60 and colours[0][0] < 10  # blue negative
    assert np.array_equal(colours[3], colours[2])  # clipped at the limit
    frames = np.full((16, 32, 32, 3), 7, np.uint8)
    maps = np.random.default_rng(0).uniform(-1, 1, (3, 16, 32, 32)).astype(np.float32)
    grid = quickfig.grid(frames, *maps)
    tile = 32 * 4  # 32 px frames are enlarged to about 112 px
    assert grid.shape == (4 * tile + 6, 4 * tile + 6, 3)
    assert np.array_equal(grid[0, 0], [7, 7, 7])
    assert np.array_equal(grid[tile + 2, tile + 2], quickfig.colorize(maps[0][5, 0, 0]))
    assert np.array_equal(
        grid[3 * (tile + 2), 3 * (tile + 2)], quickfig.colorize(maps[2][15, 0, 0])
    )
    quickfig.save_animation(tmp_path / "a.gif", frames, *maps)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 16 and gif.size == ((4 * 32 + 6) * 4, tile)
