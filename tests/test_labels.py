"""Specification of relgraph.io.labels: UCF-101 label files and class look-up."""

from __future__ import annotations

import numpy as np
import pytest

from relgraph.errors import LabelError
from relgraph.io.labels import Labels

UCF_HEAD = "1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n4 BabyCrawling\n5 BalanceBeam\n"


@pytest.fixture
def ucf_file(tmp_path):
    path = tmp_path / "classInd.txt"
    path.write_text(UCF_HEAD)
    return path


def write(tmp_path, text: str, name: str = "labels.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_ucf_file_gives_names_in_id_order(ucf_file):
    labels = Labels.from_file(ucf_file)
    assert labels.names == [
        "ApplyEyeMakeup",
        "ApplyLipstick",
        "Archery",
        "BabyCrawling",
        "BalanceBeam",
    ]
    assert len(labels) == 5


def test_model_index_is_ucf_id_minus_one(ucf_file):
    labels = Labels.from_file(ucf_file)
    assert labels.index("ApplyEyeMakeup") == 0
    assert labels.name(2) == "Archery"


def test_windows_line_endings_bom_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"\xef\xbb\xbf1 Archery\r\n\r\n2 Bowling\r\n\r\n")
    assert Labels.from_file(path).names == ["Archery", "Bowling"]


def test_plain_file_with_one_name_per_line(tmp_path):
    labels = Labels.from_file(write(tmp_path, "MoveRight\nMoveLeft\nMove Down\n"))
    assert labels.names == ["MoveRight", "MoveLeft", "Move Down"]


def test_lookup_by_name_is_case_insensitive(ucf_file):
    assert Labels.from_file(ucf_file).index("archery") == 2


@pytest.mark.parametrize("given", [3, "3", " 3 ", np.int64(3)])
def test_numbers_and_digit_strings_are_model_indices(ucf_file, given):
    assert Labels.from_file(ucf_file).index(given) == 3


def test_unknown_name_suggests_close_names_and_names_the_file(ucf_file):
    with pytest.raises(LabelError, match=r"classInd\.txt: unknown class 'Archer'.*'Archery'"):
        Labels.from_file(ucf_file).index("Archer")


def test_out_of_range_index_is_a_label_error(ucf_file):
    with pytest.raises(LabelError, match=r"index 5 is out of range.*0\.\.4"):
        Labels.from_file(ucf_file).index(5)
    with pytest.raises(LabelError, match="out of range"):
        Labels.from_file(ucf_file).name(-1)


def test_check_size_accepts_the_matching_count(ucf_file):
    Labels.from_file(ucf_file).check_size(5)


def test_check_size_names_the_file_when_counts_differ(ucf_file):
    with pytest.raises(LabelError, match=r"classInd\.txt: .*5 classes.*101 outputs"):
        Labels.from_file(ucf_file).check_size(101)


def test_from_names_keeps_the_given_order():
    labels = Labels.from_names(["b", "a"])
    assert labels.names == ["b", "a"] and labels.index("a") == 1


def test_missing_file_is_a_label_error(tmp_path):
    with pytest.raises(LabelError, match=r"nothere\.txt: .*does not exist"):
        Labels.from_file(tmp_path / "nothere.txt")


def test_empty_file_is_a_label_error(tmp_path):
    with pytest.raises(LabelError, match=r"labels\.txt: .*empty"):
        Labels.from_file(write(tmp_path, "\n\n"))


def test_non_consecutive_ids_are_reported_with_their_line(tmp_path):
    path = write(tmp_path, "1 Archery\n2 Bowling\n4 Diving\n")
    with pytest.raises(LabelError, match=r"labels\.txt:3: .*expected 3, found 4"):
        Labels.from_file(path)


def test_ids_must_start_at_one(tmp_path):
    with pytest.raises(LabelError, match=r"labels\.txt:1: .*expected 1, found 0"):
        Labels.from_file(write(tmp_path, "0 Archery\n1 Bowling\n"))


def test_duplicate_names_are_reported_with_both_lines(tmp_path):
    path = write(tmp_path, "Archery\nBowling\narchery\n")
    with pytest.raises(LabelError, match=r"labels\.txt:3: duplicate class name 'archery'.*line 1"):
        Labels.from_file(path)


def test_a_line_without_id_in_a_numbered_file_is_reported(tmp_path):
    with pytest.raises(LabelError, match=r"labels\.txt:2: expected '<id> <name>'"):
        Labels.from_file(write(tmp_path, "1 Archery\nBowling\n"))


def test_a_numbered_line_in_a_plain_file_is_reported(tmp_path):
    with pytest.raises(LabelError, match=r"labels\.txt:2: "):
        Labels.from_file(write(tmp_path, "Archery\n2 Bowling\n"))


def test_binary_file_is_a_label_error(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"\x80\x02\xff\xfe" * 10)
    with pytest.raises(LabelError, match=r"weights\.pth: .*not UTF-8"):
        Labels.from_file(path)
