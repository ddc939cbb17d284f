"""Hostile input: every bad argument, file or environment ends with one clear error (a
``RelgraphError``; on the command line one line and exit status 2), or with the right result,
and leaves nothing half-written behind.

Models are tiny (c3d-tiny at 32x32, or a few-node YAML) so that the whole file runs in
seconds; stores and damaged files are written by hand.
"""

from __future__ import annotations

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
from relgraph.errors import StoreError, WeightsError
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
    return load_demo_model()


# --------------------------------------------------------------------------- 1: layouts


@pytest.mark.parametrize("layout", ["channels_last_3d", "permuted", "sliced"])
def test_a_non_contiguous_input_gets_the_relevance_of_its_contiguous_copy(demo, layout):
    torch.manual_seed(0)
    if layout == "channels_last_3d":
        x = torch.randn(2, 3, 16, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    elif layout == "permuted":
        x = torch.randn(2, 32, 32, 16, 3).permute(0, 4, 3, 1, 2)
    else:
        x = torch.randn(2, 3, 16, 32, 64)[..., ::2]
    assert not x.is_contiguous()
    relevance = relgraph.explain(demo, x)
    expected = relgraph.explain(demo, x.contiguous())
    assert relevance.shape == x.shape
    torch.testing.assert_close(relevance, expected, rtol=0, atol=0)


def test_an_empty_batch_is_a_shape_error(demo):
    with pytest.raises(relgraph.ShapeError, match="empty batch"):
        relgraph.explain(demo, torch.zeros(0, 3, 16, 32, 32))


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
    assert {"/data/C/_z.mp4.mp4", "/data/C_/z.mp4.mp4"} == {
        next(path for path in ("/data/C/_z.mp4.mp4", "/data/C_/z.mp4.mp4") if path in p.read_text())
        for p in pages
    }


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
