"""Errors: every error class is exported, argument errors are also ``ValueError``s, and the
package raises no bare built-in error where a ``RelgraphError`` should say what went wrong."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import relgraph
from relgraph import errors
from relgraph.datasets.synthetic import make_clip
from relgraph.evaluation.metrics import region_perturbation, replacement
from relgraph.io.plots import paper_columns
from relgraph.io.preprocess import get_preprocess

ROOT = Path(__file__).resolve().parent.parent
BUILTIN = {"ValueError", "TypeError", "IndexError", "RuntimeError"}
# raised and caught inside the module, never seen by a caller
ALLOWED_BUILTIN = {
    ("relgraph/engine/spec.py", "ValueError"),  # caught by substitute and re-raised as SpecError
}


def test_every_error_class_is_exported_from_the_package():
    classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, (errors.RelgraphError, Warning))
    }
    assert classes <= set(relgraph.__all__)
    assert all(getattr(relgraph, name) is getattr(errors, name) for name in classes)


def test_argument_errors_are_value_errors_too():
    assert issubclass(relgraph.ArgumentError, relgraph.RelgraphError)
    assert issubclass(relgraph.ArgumentError, ValueError)


@pytest.mark.parametrize(
    "call",
    [
        lambda: make_clip(0, np.random.default_rng(0), frames=1),
        lambda: make_clip(99, np.random.default_rng(0)),
        lambda: get_preprocess("no-such-preset"),
        lambda: paper_columns(0),
        lambda: relgraph.compile_spec(relgraph.load_architecture("c3d-tiny").spec, init="zeros"),
        lambda: region_perturbation(
            lambda x: torch.zeros(x.shape[0], 2),
            torch.zeros(1, 3, 2, 8, 8),
            torch.zeros(1, 2, 8, 8),
            torch.zeros(1, dtype=torch.long),
            order="sideways",
        ),
        lambda: replacement(torch.zeros(1, 3, 2, 8, 8), "paint"),
    ],
    ids=["frames", "label", "preset", "columns", "init", "order", "replacement"],
)
def test_a_bad_argument_raises_an_argument_error(call):
    with pytest.raises(relgraph.ArgumentError) as caught:
        call()
    assert "\n" not in str(caught.value)


def raised_builtins():
    for folder in ("relgraph", "rules"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    called = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                    if isinstance(called, ast.Name) and called.id in BUILTIN:
                        yield path.relative_to(ROOT).as_posix(), called.id, node.lineno


def test_no_public_path_raises_a_bare_builtin_error():
    found = [
        f"{path}:{line} raises {name}"
        for path, name, line in raised_builtins()
        if (path, name) not in ALLOWED_BUILTIN
    ]
    assert found == []


def test_op_definition_errors_are_relgraph_errors_and_value_errors():
    from relgraph.engine.fields import Field
    from relgraph.engine.ops import Elementwise, register_op

    assert issubclass(relgraph.OpDefinitionError, relgraph.RelgraphError)
    assert issubclass(relgraph.OpDefinitionError, ValueError)
    with pytest.raises(relgraph.OpDefinitionError, match="unknown field kind 'colour'"):
        Field("colour")
    with pytest.raises(relgraph.OpDefinitionError, match="not a Spatial op"):
        register_op("never{dims}d_test", dims=(2,))(type("Never", (Elementwise,), {}))


def test_a_value_json_cannot_hold_is_an_output_error_naming_its_type(tmp_path):
    from relgraph.io.outputs import json_text, write_json

    with pytest.raises(relgraph.OutputError, match="type object is not JSON serializable"):
        json_text({"a": object()})
    with pytest.raises(relgraph.OutputError, match="type object") as caught:
        write_json(tmp_path / "x.json", [object()])
    assert caught.value.file == str(tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
