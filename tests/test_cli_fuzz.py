"""The command line's argument space, fuzzed with hypothesis: whatever the arguments, a
command exits 0 or 2, and never prints a traceback.

Each example draws a command and a random subset of its options, each with a value from a
hostile pool (negative, zero and huge numbers, NaN, text where numbers belong, paths that are
missing, files where folders belong). The expensive step behind each command (the
explanation, the evaluation and its synthetic clips, the data-set run) is replaced by a stub
that raises ``WorkReached``: reaching it means every argument check passed, which counts as
a success, so the examples stay fast. The default run draws a few examples per command;
``-m slow`` runs a larger profile.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relgraph.cli.main import main
from relgraph.models.demo import DEMO_LABELS, DEMO_WEIGHTS

FAST = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
THOROUGH = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class WorkReached(Exception):
    """Raised by the stubs: the command got past every check to its real work."""


def _reached(*args, **kwargs):
    raise WorkReached


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, Path]:
    """Files and folders the paths are drawn from."""
    from relgraph.datasets.synthetic import make_clip, write_video_folders
    from relgraph.io.video import write_video

    root = tmp_path_factory.mktemp("fuzz")
    clip = make_clip(1, np.random.default_rng(0), frames=20, size=32)
    text = root / "text.txt"
    text.write_text("just text\n")
    binary = root / "noise.mp4"
    binary.write_bytes(bytes(range(256)) * 8)
    folder = root / "folder"
    folder.mkdir()
    videos = root / "videos"
    write_video_folders(videos, 1, seed=3, frames=(16, 17))
    arch = root / "arch.yaml"
    arch.write_text("name: broken\ninput: {name: input, shape: [3, 16, 32, 32]}\nnodes: [\n")
    store = root / "store"
    store.mkdir()
    (store / "store.json").write_text('{"format": 1, "fingerprint": "x"}')
    (store / "index.jsonl").write_text('{"folder": "a", "key": "a"\n')
    return {
        "video": write_video(root / "clip.avi", clip.frames, fps=8),
        "weights": DEMO_WEIGHTS,
        "labels": DEMO_LABELS,
        "text": text,
        "binary": binary,
        "folder": folder,
        "missing": root / "missing" / "nothing.mp4",
        "videos": videos,
        "arch": arch,
        "store": store,
        "root": root,
    }


NUMBERS = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([10**6, 2**31, 10**30]),
).map(str)
TEXT = st.sampled_from(
    [
        "",
        " ",
        "-1",
        "0",
        "nan",
        "inf",
        "-inf",
        "1e999",
        "abc",
        "ünïcødé",
        "1,2",
        "--",
        "a=b",
        "x" * 300,
    ]
)
HOSTILE = st.one_of(NUMBERS, TEXT)
_counter = itertools.count()


def _path(pool, *names: str):
    return st.sampled_from(names).map(lambda name: str(pool[name]))


def _new_out(pool):
    return st.sampled_from(["new", "text", "folder", "missing"]).map(
        lambda kind: (
            str(pool["root"] / f"out-{next(_counter)}") if kind == "new" else str(pool[kind])
        )
    )


def _options(draw, choices: dict) -> list[str]:
    """A random subset of ``choices`` (option -> strategy of its value, or None for a flag)."""
    argv: list[str] = []
    names = draw(st.lists(st.sampled_from(sorted(choices)), unique=True, max_size=5))
    for name in names:
        value = choices[name]
        argv.append(name)
        if value is not None:
            drawn = draw(value)
            argv.extend(drawn if isinstance(drawn, list) else [drawn])
    return argv


@st.composite
def explain_commands(draw, pool):
    video = draw(_path(pool, "video", "text", "binary", "folder", "missing"))
    argv = ["explain", video, "--weights", draw(_path(pool, "weights", "text", "missing"))]
    argv += ["--arch", draw(st.sampled_from(["c3d-tiny", "c3d-tiny", str(pool["arch"]), "c3"]))]
    argv += ["--out", draw(_new_out(pool)), "--quiet"]
    argv += _options(
        draw,
        {
            "--param": st.one_of(HOSTILE, st.sampled_from(["width=0", "size=-4", "width=nan"])),
            "--labels": _path(pool, "labels", "text", "binary", "missing"),
            "--rules": st.one_of(TEXT, st.sampled_from(["epsilon-plus", "gradient"])),
            "--target": st.one_of(HOSTILE, st.sampled_from(["auto", "MoveLeft"])),
            "--preprocess": st.sampled_from(["hara", "c3d-ucf101", "nope"]),
            "--start": HOSTILE,
            "--all-clips": None,
            "--stride": HOSTILE,
            "--device": st.sampled_from(["cpu", "cuda", "tpu"]),
            "--precision": st.sampled_from(["fp32", "bf16", "fp64", "fp8"]),
            "--columns": HOSTILE,
            "--reduce": st.sampled_from(["first", "mean", "max"]),
            "--normalize": st.sampled_from(["maxabs", "none", "l2"]),
            "--batch-size": HOSTILE,
            "--no-canonize": None,
            "--no-memory-check": None,
        },
    )
    return argv


@st.composite
def evaluate_commands(draw, pool):
    argv = ["evaluate", "--out", draw(_new_out(pool))]
    argv += _options(
        draw,
        {
            "--arch": st.sampled_from(["c3d-tiny", "r2plus1d-tiny", "c3d-tin", str(pool["arch"])]),
            "--weights": _path(pool, "weights", "text", "missing"),
            "--param": st.sampled_from(["num_classes=3", "width=0", "x"]),
            "--clips": HOSTILE,
            "--seed": HOSTILE,
            "--presets": st.one_of(TEXT, st.sampled_from(["all", "none", "epsilon-plus,x"])),
            "--no-variants": None,
            "--cube": st.lists(HOSTILE, min_size=3, max_size=3),
            "--steps": HOSTILE,
            "--replacements": st.sampled_from(["freeze", "blur", "nope"]),
            "--no-frames": None,
            "--batch-size": HOSTILE,
            "--sanity-clips": HOSTILE,
            "--videos": _path(pool, "text", "binary", "missing", "folder"),
            "--labels": _path(pool, "labels", "text", "missing"),
            "--no-memory-check": None,
        },
    )
    return argv


@st.composite
def dataset_commands(draw, pool):
    if draw(st.booleans()):
        source = draw(_path(pool, "videos", "text", "binary", "missing", "folder"))
        argv = ["dataset", "explain", source, "--arch", "c3d-tiny", "--quiet"]
        argv += ["--weights", draw(_path(pool, "weights", "text", "missing"))]
        argv += ["--labels", draw(_path(pool, "labels", "text", "missing"))]
        argv += ["--out", draw(_new_out(pool))]
        argv += _options(
            draw,
            {
                "--clips": st.one_of(HOSTILE, st.sampled_from(["first", "all"])),
                "--stride": HOSTILE,
                "--target": st.sampled_from(["auto", "true", "x"]),
                "--figures": st.sampled_from(["none", "summary", "all", "x"]),
                "--raw": st.sampled_from(["clip", "all", "x"]),
                "--min-frames": HOSTILE,
                "--clip-batch": HOSTILE,
                "--workers": HOSTILE,
                "--device": st.sampled_from(["cpu", "cuda"]),
                "--dry-run": None,
                "--stats": st.one_of(_new_out(pool), _path(pool, "folder", "missing")),
                "--batch-size": HOSTILE,
                "--reduce": st.sampled_from(["first", "max"]),
            },
        )
        return argv
    store = draw(_path(pool, "store", "folder", "missing", "text", "videos"))
    return ["dataset", "report", store, *_options(draw, {"--out": _new_out(pool)})]


@st.composite
def other_commands(draw, pool):
    kind = draw(st.sampled_from(["demo", "show", "check", "import", "rules"]))
    if kind == "demo":
        return ["demo", "--quiet", "--out", draw(_new_out(pool)), "--seed", draw(HOSTILE)]
    if kind in ("show", "check"):
        arch = draw(st.sampled_from(["c3d-tiny", "x3d-s", str(pool["arch"]), "nope"]))
        extra = _options(draw, {"--param": st.sampled_from(["width=0", "size=7", "q", "width=x"])})
        return ["arch", kind, arch, *extra]
    if kind == "import":
        shape = draw(
            st.one_of(
                st.lists(st.integers(-2, 9).map(str), min_size=0, max_size=5).map(",".join),
                TEXT,
                st.just("3,100000,100000,100000"),
            )
        )
        factory = draw(st.sampled_from(["torch.nn:Flatten", "torch.nn:Identity", "nope:x", "x"]))
        return ["arch", "import", factory, "--input-shape", shape, "--out", draw(_new_out(pool))]
    preset = draw(st.one_of(TEXT, st.sampled_from(["deep-taylor-paper", "epsilon-plus"])))
    return ["rules", "show", preset, "--arch", draw(st.sampled_from(["c3d-tiny", "nope"]))]


def run_one(argv: list[str], monkeypatch) -> None:
    """Run ``argv``: exit 0 or 2, or reach the stubbed work; never a traceback."""
    from relgraph.cli import dataset, evaluate
    from relgraph.pipeline import video

    monkeypatch.setattr(video, "explain_clips", _reached)
    monkeypatch.setattr(evaluate, "run_evaluation", _reached)
    monkeypatch.setattr(evaluate, "synthetic_data", _reached)  # made after every check
    monkeypatch.setattr(dataset, "run_dataset", _reached)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except WorkReached:
            code = 0
    assert code in (0, 2), (argv, code, stderr.getvalue())
    assert "Traceback" not in stderr.getvalue(), (argv, stderr.getvalue())
    if code == 2:
        lines = [line for line in stderr.getvalue().splitlines() if line.startswith("relgraph")]
        assert lines, (argv, stderr.getvalue())  # our one line, or argparse's usage error


STRATEGIES = {
    "explain": explain_commands,
    "evaluate": evaluate_commands,
    "dataset": dataset_commands,
    "other": other_commands,
}


@pytest.mark.parametrize("command", sorted(STRATEGIES))
def test_hostile_arguments_exit_0_or_2_without_a_traceback(command, pool, monkeypatch):
    @FAST
    @given(data=st.data())
    def check(data):
        run_one(data.draw(STRATEGIES[command](pool)), monkeypatch)

    check()


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(STRATEGIES))
def test_hostile_arguments_thorough(command, pool, monkeypatch):
    @THOROUGH
    @given(data=st.data())
    def check(data):
        run_one(data.draw(STRATEGIES[command](pool)), monkeypatch)

    check()
