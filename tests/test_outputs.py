"""Specification of relgraph.outputs: files appear complete at their path, or not at all."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from relgraph.errors import OutputError
from relgraph.io.outputs import (
    atomic_path,
    atomic_write_bytes,
    ensure_out_dir,
    write_json,
    write_npz,
)


class WriterFailed(Exception):
    """Raised by test writers halfway through."""


def test_atomic_write_bytes_writes_exactly_the_data(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"\x00relevance\xff")
    assert target.read_bytes() == b"\x00relevance\xff"


def test_atomic_write_leaves_only_the_target_in_the_folder(tmp_path):
    atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


def test_atomic_path_keeps_the_old_file_when_the_writer_raises_midway(tmp_path):
    target = tmp_path / "figure.png"
    target.write_bytes(b"old figure")
    with pytest.raises(WriterFailed), atomic_path(target) as temporary:
        temporary.write_bytes(b"half a fig")
        raise WriterFailed
    assert target.read_bytes() == b"old figure"


def test_atomic_path_removes_the_temporary_file_when_the_writer_raises(tmp_path):
    with pytest.raises(WriterFailed), atomic_path(tmp_path / "figure.png") as temporary:
        temporary.write_bytes(b"half")
        raise WriterFailed
    assert os.listdir(tmp_path) == []


def test_atomic_path_yields_a_file_in_the_same_folder_with_the_same_suffix(tmp_path):
    with atomic_path(tmp_path / "clip.frames.png") as temporary:
        assert temporary.parent == tmp_path
        assert temporary.suffix == ".png"
        assert temporary.exists()
        assert temporary != tmp_path / "clip.frames.png"


def test_atomic_path_gives_the_result_the_permissions_of_a_plain_new_file(tmp_path):
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    target = tmp_path / "atomic.txt"
    atomic_write_bytes(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_atomic_path_creates_missing_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"


def test_atomic_path_beneath_a_regular_file_raises_output_error_naming_the_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    target = blocker / "out.bin"
    with pytest.raises(OutputError) as raised:
        atomic_write_bytes(target, b"data")
    assert raised.value.file == str(target)


def test_atomic_path_onto_an_existing_folder_raises_output_error_and_cleans_up(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputError):
        atomic_write_bytes(tmp_path / "taken", b"data")
    assert os.listdir(tmp_path) == ["taken"]


def test_write_json_converts_numpy_scalars_arrays_and_torch_tensors(tmp_path):
    target = tmp_path / "result.json"
    write_json(
        target,
        {
            "probability": np.float32(0.5),
            "class_index": np.int64(7),
            "flag": np.bool_(True),
            "logits": np.array([[1.0, 2.0]]),
            "frozen": torch.tensor([3, 4]),
            "grad": torch.ones(2, requires_grad=True),
            "shape": (16, 112, 112),
        },
    )
    assert json.loads(target.read_text(encoding="utf-8")) == {
        "probability": 0.5,
        "class_index": 7,
        "flag": True,
        "logits": [[1.0, 2.0]],
        "frozen": [3, 4],
        "grad": [1.0, 1.0],
        "shape": [16, 112, 112],
    }


def test_write_json_accepts_numpy_integer_keys(tmp_path):
    target = tmp_path / "labels.json"
    write_json(target, {np.int64(3): "ApplyLipstick"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"3": "ApplyLipstick"}


def test_write_json_of_an_unserialisable_value_raises_output_error_and_writes_nothing(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(OutputError, match="object"):
        write_json(target, {"bad": object()})
    assert os.listdir(tmp_path) == []


def test_write_npz_round_trips_numpy_and_torch_arrays(tmp_path):
    target = tmp_path / "maps.npz"
    spatial = np.arange(12, dtype=np.float32).reshape(3, 4)
    temporal = torch.linspace(-2, 2, 6, requires_grad=True)
    write_npz(target, spatial=spatial, temporal=temporal)
    with np.load(target, allow_pickle=False) as stored:
        assert sorted(stored.files) == ["spatial", "temporal"]
        np.testing.assert_array_equal(stored["spatial"], spatial)
        np.testing.assert_array_equal(stored["temporal"], temporal.detach().numpy())


def test_write_npz_stores_bfloat16_tensors_as_float32(tmp_path):
    target = tmp_path / "maps.npz"
    write_npz(target, relevance=torch.tensor([0.5, -1.0], dtype=torch.bfloat16))
    with np.load(target) as stored:
        assert stored["relevance"].dtype == np.float32
        np.testing.assert_array_equal(stored["relevance"], [0.5, -1.0])


def test_write_npz_writes_exactly_at_the_path_without_adding_a_suffix(tmp_path):
    target = tmp_path / "maps.data"
    write_npz(target, relevance=np.zeros(2))
    assert os.listdir(tmp_path) == ["maps.data"]


def test_write_npz_accepts_array_names_that_are_np_savez_keywords(tmp_path):
    target = tmp_path / "maps.npz"
    write_npz(target, file=np.ones(1), allow_pickle=np.zeros(1))
    with np.load(target) as stored:
        assert sorted(stored.files) == ["allow_pickle", "file"]


def test_write_npz_refuses_object_arrays_naming_the_array(tmp_path):
    with pytest.raises(OutputError, match="'labels'"):
        write_npz(tmp_path / "maps.npz", labels=np.array([{"a": 1}], dtype=object))


def test_ensure_out_dir_creates_nested_folders_and_returns_the_path(tmp_path):
    folder = ensure_out_dir(tmp_path / "runs" / "clip1")
    assert folder == tmp_path / "runs" / "clip1"
    assert folder.is_dir()


def test_ensure_out_dir_accepts_an_existing_folder_and_leaves_no_probe_behind(tmp_path):
    ensure_out_dir(tmp_path)
    assert os.listdir(tmp_path) == []


def test_ensure_out_dir_beneath_a_regular_file_raises_output_error_naming_the_folder(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    folder = blocker / "out"
    with pytest.raises(OutputError) as raised:
        ensure_out_dir(folder)
    assert raised.value.file == str(folder)
    assert str(folder) in str(raised.value)


def test_ensure_out_dir_on_a_regular_file_raises_output_error_naming_it(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("I am a file")
    with pytest.raises(OutputError, match="not a folder") as raised:
        ensure_out_dir(blocker)
    assert raised.value.file == str(blocker)
