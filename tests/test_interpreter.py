"""The one interpreter skeleton: every pass names the node and its YAML line when an op or a
rule fails inside it, whatever the error's type."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from relgraph.rules import Rule

import relgraph
from relgraph.engine.interpreter import ForwardPass, ReversePass

YAML = """\
name: two-layers
input: {shape: [4]}
nodes:
  - {name: fc1, op: linear, out_features: 3}
  - {name: act, op: relu}
  - {name: fc2, op: linear, out_features: 2}
"""


@pytest.fixture
def graph(tmp_path) -> relgraph.Graph:
    path = tmp_path / "two-layers.yaml"
    path.write_text(YAML)
    return relgraph.load_architecture(str(path))


@dataclasses.dataclass
class RaisesTypeError(Rule):
    """Not registered: a rule object is passed as it is."""

    name = "raises-type-error"
    requires = ("affine",)

    def relevance(self, ctx, relevance):
        raise TypeError("a bug inside a rule")


def test_an_error_inside_a_rule_names_the_node_and_its_line(graph):
    x = torch.randn(2, 4)
    with pytest.raises(relgraph.RelgraphError) as info:
        relgraph.explain(graph, x, rules={"fc2": RaisesTypeError()})
    error = info.value
    assert (error.node, error.line) == ("fc2", 6)
    assert error.file.endswith("two-layers.yaml")
    assert "TypeError" in str(error) and "a bug inside a rule" in str(error)
    assert isinstance(error.__cause__, TypeError)


def test_an_error_inside_an_op_names_the_node_and_its_line(graph, monkeypatch):
    op = graph.op("act")

    def broken(inputs, tensors):
        raise RuntimeError("kernel failed\nwith a second line")

    monkeypatch.setattr(op, "forward", broken)
    with pytest.raises(relgraph.RelgraphError) as info:
        graph.forward(torch.randn(2, 4))
    assert (info.value.node, info.value.line) == ("act", 5)
    assert "\n" not in str(info.value) and "kernel failed" in str(info.value)


def test_a_relgraph_error_without_a_node_gets_one(graph, monkeypatch):
    op = graph.op("fc1")

    def refusing(inputs, tensors):
        raise relgraph.ShapeError("does not fit")

    monkeypatch.setattr(op, "forward", refusing)
    with pytest.raises(relgraph.ShapeError) as info:
        graph.forward(torch.randn(2, 4))
    assert (info.value.node, info.value.line) == ("fc1", 4)


def test_an_out_of_memory_error_keeps_its_type_and_names_the_node(graph, monkeypatch):
    op = graph.op("fc2")

    def exhausted(inputs, tensors):
        raise MemoryError("no memory")

    monkeypatch.setattr(op, "forward", exhausted)
    with pytest.raises(MemoryError) as info:
        graph.forward(torch.randn(2, 4))
    if hasattr(info.value, "__notes__"):
        assert any("node 'fc2'" in note for note in info.value.__notes__)


def test_the_reverse_passes_share_one_loop():
    # explain's pass and the frozen-clip shortcut's are hooks on one ReversePass; the forward
    # pass is a ForwardPass: no pass carries a loop of its own
    from relgraph.engine.reverse import ExplainPass
    from relgraph.methods.frozen import FrozenReversePass

    for cls in (ExplainPass, FrozenReversePass):
        assert issubclass(cls, ReversePass)
        assert "run" not in vars(cls) and "run_node" not in vars(cls)
    assert "run" not in vars(ForwardPass)
