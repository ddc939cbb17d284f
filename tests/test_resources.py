"""relgraph.io.resources: one lookup of shipped files (architectures, rule presets)."""

from pathlib import Path

import pytest
from relgraph.rules import preset_names

import relgraph
from relgraph.engine.graph import architecture_path
from relgraph.errors import RuleError, SpecError
from relgraph.io.resources import shipped_names, shipped_path

REPO = Path(__file__).resolve().parents[1]


def test_names_are_the_yaml_files_of_each_folder():
    on_disk = sorted(p.stem for p in (REPO / "architectures").glob("*.yaml"))
    assert shipped_names("architecture") == on_disk == relgraph.shipped_architectures()
    presets = sorted(p.stem for p in (REPO / "rules" / "presets").glob("*.yaml"))
    assert shipped_names("preset") == presets == preset_names()


def test_a_shipped_name_resolves_to_its_file_for_both_callers():
    path = shipped_path("architecture", "c3d")
    assert path.read_bytes() == (REPO / "architectures" / "c3d.yaml").read_bytes()
    assert architecture_path("c3d") == path
    name = shipped_names("preset")[0]
    assert (
        shipped_path("preset", name).read_bytes()
        == (REPO / "rules" / "presets" / f"{name}.yaml").read_bytes()
    )


def test_unknown_names_raise_the_kind_s_error_with_a_suggestion():
    with pytest.raises(SpecError, match=r"no architecture named 'c3e'.*did you mean 'c3d'"):
        shipped_path("architecture", "c3e")
    with pytest.raises(RuleError, match="no rule preset named 'nope'"):
        shipped_path("preset", "nope")
    with pytest.raises(ValueError, match="unknown kind"):
        shipped_names("model")
