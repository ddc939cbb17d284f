"""Typed nodes: ``Graph.node`` and ``Graph.nodes`` give read-only ``Node`` records, and only
the graph module reads the networkx attribute dicts behind them."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import relgraph
from relgraph.engine.canonize import canonical
from relgraph.engine.graph import Node

ROOT = Path(__file__).resolve().parent.parent

BRANCHES = """
name: branches
input: {name: input, shape: [2, 4, 6, 6]}
nodes:
  - {name: conv, op: conv3d, out_channels: 3, kernel_size: 3, padding: 1}
  - {name: norm, op: batchnorm3d}
  - {name: relu, op: relu}
  - {name: left, op: conv3d, out_channels: 5, kernel_size: 1, inputs: [relu]}
  - {name: right, op: conv3d, out_channels: 2, kernel_size: 1, inputs: [relu]}
  - {name: join, op: concat, inputs: [left, right]}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out_features: 4}
output: fc
"""


@pytest.fixture(scope="module")
def graph() -> relgraph.Graph:
    return relgraph.architecture_from_yaml(BRANCHES, seed=0)


def test_a_node_carries_its_op_shape_inputs_line_and_weights(graph):
    join = graph.node("join")
    assert (join.name, join.op.type, join.shape, join.inputs) == (
        "join",
        "concat",
        (7, 4, 6, 6),
        ("left", "right"),
    )
    assert (
        join.line
        == BRANCHES.splitlines().index("  - {name: join, op: concat, inputs: [left, right]}") + 1
    )
    conv = graph.node("conv")
    assert conv.tensor_shapes == {"weight": (3, 2, 3, 3, 3), "bias": (3,)}
    assert conv.tensors["weight"] is graph.tensors("conv")["weight"]


def test_nodes_come_in_topological_order_each_after_its_inputs(graph):
    nodes = graph.nodes()
    assert [n.name for n in nodes] == graph.order
    seen: set[str] = set()
    for node in nodes:
        assert set(node.inputs) <= seen
        seen.add(node.name)


def test_a_node_is_read_only(graph):
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.node("fc").shape = (5,)


def test_shape_of_agrees_with_a_forward_run(graph):
    x = torch.randn(3, 2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    result = graph.forward(x)
    for node in graph.order:
        assert graph.shape_of(node) == tuple(result.activations[node].shape[1:]), node


def test_an_unknown_node_is_a_graph_error_with_a_suggestion(graph):
    with pytest.raises(relgraph.GraphError, match="did you mean 'join'"):
        graph.node("jion")


def test_the_canonized_view_drops_the_folded_norm_and_rewires_its_consumer(graph):
    view = canonical(graph)
    assert "norm" not in view.order
    assert view.node("relu").inputs == ("conv",)
    assert view.node("conv").tensor_shapes == {"weight": (3, 2, 3, 3, 3), "bias": (3,)}
    assert isinstance(view.node("conv"), Node)


def _attribute_reads(path: Path):
    """Reads of networkx attribute dicts: ``x.nodes[...]``, ``x.edges[...]``,
    ``x.nodes(data=...)``, ``x.edges(data=...)``, ``get_node_attributes``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("nodes", "edges")
        ):
            yield node.lineno, ast.unparse(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("nodes", "edges", "in_edges", "out_edges") and any(
                k.arg == "data" for k in node.keywords
            ):
                yield node.lineno, ast.unparse(node)
            if node.func.attr in ("get_node_attributes", "get_edge_attributes"):
                yield node.lineno, ast.unparse(node)
        if isinstance(node, ast.Name) and node.id in ("get_node_attributes", "get_edge_attributes"):
            yield node.lineno, node.id


def test_only_the_graph_module_reads_the_networkx_attribute_dicts():
    owner = ROOT / "relgraph" / "engine" / "graph.py"
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for folder in ("relgraph", "rules", "benchmarks", "scripts")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != owner
        for line, text in _attribute_reads(path)
    ]
    assert found == []
