"""Reusable blocks in the YAML format: expansion, ``repeat``, ``when``, errors, round trip.

Expansion is checked against the same graph written out node by node (the reference is the
hand-expanded YAML, not the expander). Error tests find the expected lines by searching the
text, as tests/test_spec.py does.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import relgraph

BLOCKS = """\
name: blocky
params:
  width: 4
input:
  shape: [3, 4, 8, 8]
blocks:
  unit:
    params: {planes: null, stride: 1}
    input: x
    nodes:
      - {name: conv1.0, op: conv3d, out_channels: $planes, kernel_size: 3, stride: $stride,
         padding: 1}
      - {name: conv1.1, op: relu}
      - {name: conv2, op: conv3d, out_channels: $planes, kernel_size: 3, padding: 1}
      - {name: down, op: conv3d, inputs: x, when: "${stride > 1}", out_channels: $planes,
         kernel_size: 1, stride: $stride}
      - {name: add, op: add, inputs: [conv2, down]}
      - {name: relu, op: relu}
  pair:
    params: {planes: null}
    nodes:
      - {name: 0, block: unit, planes: $planes, stride: 2}
      - {name: 1, block: unit, planes: $planes}
nodes:
  - {name: stem, op: conv3d, out_channels: $width, kernel_size: 1}
  - {name: layer1, block: unit, repeat: 2, planes: "${width * (i + 1)}", stride: "${i + 1}"}
  - {name: layer2, block: pair, planes: 8}
  - {name: gap, op: adaptive_avgpool3d, output_size: 1}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, out_features: 3}
"""

EXPANDED = """\
name: blocky
params:
  width: 4
input:
  shape: [3, 4, 8, 8]
nodes:
  - {name: stem, op: conv3d, out_channels: 4, kernel_size: 1}
  - {name: layer1.0.conv1.0, op: conv3d, out_channels: 4, kernel_size: 3, padding: 1}
  - {name: layer1.0.conv1.1, op: relu}
  - {name: layer1.0.conv2, op: conv3d, out_channels: 4, kernel_size: 3, padding: 1}
  - {name: layer1.0.add, op: add, inputs: [layer1.0.conv2, stem]}
  - {name: layer1.0.relu, op: relu}
  - {name: layer1.1.conv1.0, op: conv3d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}
  - {name: layer1.1.conv1.1, op: relu}
  - {name: layer1.1.conv2, op: conv3d, out_channels: 8, kernel_size: 3, padding: 1}
  - {name: layer1.1.down, op: conv3d, inputs: layer1.0.relu, out_channels: 8, kernel_size: 1,
     stride: 2}
  - {name: layer1.1.add, op: add, inputs: [layer1.1.conv2, layer1.1.down]}
  - {name: layer1.1.relu, op: relu}
  - {name: layer2.0.conv1.0, op: conv3d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}
  - {name: layer2.0.conv1.1, op: relu}
  - {name: layer2.0.conv2, op: conv3d, out_channels: 8, kernel_size: 3, padding: 1}
  - {name: layer2.0.down, op: conv3d, inputs: layer1.1.relu, out_channels: 8, kernel_size: 1,
     stride: 2}
  - {name: layer2.0.add, op: add, inputs: [layer2.0.conv2, layer2.0.down]}
  - {name: layer2.0.relu, op: relu}
  - {name: layer2.1.conv1.0, op: conv3d, out_channels: 8, kernel_size: 3, padding: 1}
  - {name: layer2.1.conv1.1, op: relu}
  - {name: layer2.1.conv2, op: conv3d, out_channels: 8, kernel_size: 3, padding: 1}
  - {name: layer2.1.add, op: add, inputs: [layer2.1.conv2, layer2.0.relu]}
  - {name: layer2.1.relu, op: relu}
  - {name: gap, op: adaptive_avgpool3d, output_size: 1}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, out_features: 3}
"""
"""BLOCKS written out by hand: what the expansion must give."""


def write(tmp_path: Path, text: str, name: str = "arch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_containing(text: str, fragment: str, occurrence: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(hits) >= occurrence, f"{fragment!r} is not in the text"
    return hits[occurrence - 1]


def load_error(path: Path, **params) -> relgraph.RelgraphError:
    with pytest.raises(relgraph.RelgraphError) as caught:
        relgraph.load_architecture(path, **params)
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


def structure(graph: relgraph.Graph) -> dict:
    data = graph.to_dict()
    data.pop("name")
    return data


def test_blocks_expand_into_the_hand_written_graph(tmp_path):
    graph = relgraph.load_architecture(write(tmp_path, BLOCKS))
    reference = relgraph.architecture_from_yaml(EXPANDED)

    assert structure(graph) == structure(reference)
    assert graph.order == reference.order
    for node in graph.order:
        assert graph.graph.nodes[node]["shape"] == reference.graph.nodes[node]["shape"]


def test_expanded_graph_computes_what_the_hand_written_one_does(tmp_path):
    graph = relgraph.load_architecture(write(tmp_path, BLOCKS), seed=5, dtype=torch.float64)
    reference = relgraph.architecture_from_yaml(EXPANDED, seed=5, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)

    assert set(graph.state_dict()) == set(reference.state_dict())
    torch.testing.assert_close(graph(x).output, reference(x).output, rtol=0, atol=0)


def test_instance_name_stands_for_the_block_output(tmp_path):
    text = BLOCKS.replace(
        "  - {name: gap, op: adaptive_avgpool3d, output_size: 1}",
        "  - {name: gap, op: adaptive_avgpool3d, output_size: 1, inputs: layer2}",
    ).replace("output_size: 1}\n  - {name: flatten", "output_size: 1}\n  - {name: flatten")
    graph = relgraph.load_architecture(write(tmp_path, text))
    assert graph.inputs_of("gap") == ["layer2.1.relu"]
    assert graph.inputs_of("layer2.0.conv1.0") == ["layer1.1.relu"]


def test_output_may_name_an_instance(tmp_path):
    text = textwrap.dedent(
        """\
        input:
          shape: [2, 2, 4, 4]
        blocks:
          twice:
            nodes:
              - {name: a, op: relu}
              - {name: b, op: identity}
        nodes:
          - {name: first, block: twice}
          - {name: second, block: twice, repeat: 3}
        output: second
        """
    )
    graph = relgraph.load_architecture(write(tmp_path, text))
    assert graph.output == "second.2.b"
    assert graph.order == [
        "input",
        "first.a",
        "first.b",
        *[f"second.{k}.{n}" for k in range(3) for n in "ab"],
    ]
    assert graph.inputs_of("second.0.a") == ["first.b"]
    assert graph.inputs_of("second.1.a") == ["second.0.b"]


def test_expressions_may_compare_and_choose(tmp_path):
    text = textwrap.dedent(
        """\
        params: {k: 3}
        input:
          shape: [2, 2, 4, 4]
        nodes:
          - {name: c, op: conv3d, out_channels: "${5 if k == 3 else 7}", kernel_size: 1,
             stride: "${1 + (k > 2)}"}
        """
    )
    graph = relgraph.load_architecture(write(tmp_path, text))
    assert graph.graph.nodes["c"]["shape"] == (5, 1, 2, 2)
    graph = relgraph.load_architecture(write(tmp_path, text), k=1)
    assert graph.graph.nodes["c"]["shape"] == (7, 2, 4, 4)


@pytest.mark.parametrize(
    ("a", "b", "kept"),
    [(1, 1, {"both", "either"}), (1, 0, {"either", "not_b"}), (0, 0, {"neither", "not_b"})],
)
def test_when_takes_and_or_not(tmp_path, a, b, kept):
    text = textwrap.dedent(
        """\
        params: {a: 1, b: 1}
        input:
          shape: [2, 2, 4, 4]
        nodes:
          - {name: both, op: relu, when: "${a == 1 and b == 1}"}
          - {name: either, op: relu, when: "${a > 0 or b > 0}"}
          - {name: neither, op: relu, when: "${not (a or b)}"}
          - {name: not_b, op: relu, when: "${not b}"}
          - {name: last, op: relu}
        """
    )
    graph = relgraph.load_architecture(write(tmp_path, text), a=a, b=b)
    assert set(graph.order) - {graph.order[0], "last"} == kept


def test_a_disallowed_expression_says_what_is_allowed_in_plain_words(tmp_path):
    text = textwrap.dedent(
        """\
        params: {k: 3}
        input:
          shape: [2, 2, 4, 4]
        nodes:
          - {name: c, op: conv3d, kernel_size: 1,
             out_channels: "${[k][0]}"}
        """
    )
    error = load_error(write(tmp_path, text))
    assert "'[k][0]' is not allowed" in str(error)
    assert "and/or/not" in str(error) and "Subscript" not in str(error)
    assert error.line == line_containing(text, "out_channels")


def test_a_left_out_node_stands_for_its_input(tmp_path):
    graph = relgraph.load_architecture(write(tmp_path, BLOCKS))
    # layer1 has stride 1: no 'down' node, the add takes the block input
    assert "layer1.0.down" not in graph.graph
    assert graph.inputs_of("layer1.0.add") == ["layer1.0.conv2", "stem"]
    assert graph.inputs_of("layer2.0.add") == ["layer2.0.conv2", "layer2.0.down"]


def test_to_yaml_writes_the_expanded_graph_which_loads_back_identical(tmp_path):
    graph = relgraph.load_architecture(write(tmp_path, BLOCKS), seed=2)
    text = graph.to_yaml()
    assert "blocks:" not in text and "layer2.1.conv2" in text
    again = relgraph.architecture_from_yaml(text, seed=2)
    assert again.to_dict() == graph.to_dict()
    assert again.to_yaml() == text
    for key, value in graph.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


# ---------------------------------------------------------------------------------- errors


def block_error(tmp_path, text, **params):
    path = write(tmp_path, text)
    return path, load_error(path, **params)


def assert_block_error(error, path, text, def_fragment, inst_fragment, node, words):
    """The error names the file, the line in the block definition, the node and the
    instantiation's line."""
    def_line = line_containing(text, def_fragment)
    inst_line = line_containing(text, inst_fragment)
    message = str(error)
    assert error.file == str(path)
    assert error.line == def_line
    assert f"{path}:{def_line}" in message
    assert error.node == node
    assert f"node '{node}'" in message
    assert f"on line {inst_line}" in message
    for word in words:
        assert word in message


def test_error_inside_a_block_names_definition_and_instantiation_lines(tmp_path):
    text = BLOCKS.replace(
        "conv2, op: conv3d, out_channels: $planes, kernel_size: 3",
        "conv2, op: conv3d, out_channels: $planes, kernel_size: x3",
    )
    path, error = block_error(tmp_path, text)
    assert_block_error(
        error,
        path,
        text,
        "kernel_size: x3",
        "name: layer1, block",
        "layer1.0.conv2",
        ["kernel_size", "block 'unit'"],
    )


def test_shape_error_inside_a_block_names_both_lines(tmp_path):
    text = BLOCKS.replace(
        "- {name: conv2, op: conv3d, out_channels: $planes,",
        "- {name: conv2, op: conv3d, in_channels: 99, out_channels: $planes,",
    )
    path, error = block_error(tmp_path, text)
    assert isinstance(error, relgraph.RelgraphError)
    assert_block_error(
        error,
        path,
        text,
        "in_channels: 99",
        "name: layer1, block",
        "layer1.0.conv2",
        ["99"],
    )


def test_nested_block_error_names_every_instantiation(tmp_path):
    text = BLOCKS.replace("         padding: 1}", "         padding: 1, bias: maybe}", 1)
    text = text.replace("repeat: 2, planes", "repeat: 2, when: 0, planes")
    path, error = block_error(tmp_path, text)
    # layer1 is left out: the first use is layer2.0 inside 'pair'
    assert_block_error(
        error,
        path,
        text,
        "bias: maybe",
        "- {name: 0, block: unit",
        "layer2.0.conv1.0",
        ["block 'pair'", f"on line {line_containing(text, 'name: layer2, block')}"],
    )


def test_unknown_block_is_named_with_a_suggestion(tmp_path):
    text = BLOCKS.replace("block: pair", "block: pear")
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "block: pear")
    assert error.node == "layer2"
    assert "'pear'" in str(error) and "did you mean 'pair'" in str(error)


def test_unknown_block_parameter_is_named(tmp_path):
    text = BLOCKS.replace("block: pair, planes: 8", "block: pair, planes: 8, plane: 3")
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "plane: 3")
    assert "no parameter 'plane'" in str(error)


def test_missing_required_block_parameter_is_named(tmp_path):
    text = BLOCKS.replace("block: pair, planes: 8", "block: pair")
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "block: pair")
    assert "'planes'" in str(error) and error.node == "layer2"


def test_input_naming_no_node_of_the_block_is_an_error(tmp_path):
    text = BLOCKS.replace("inputs: [conv2, down]", "inputs: [conv2, stem]")
    path, error = block_error(tmp_path, text)
    assert_block_error(
        error,
        path,
        text,
        "inputs: [conv2, stem]",
        "name: layer1, block",
        "layer1.0.add",
        ["'stem'", "block 'unit'"],
    )


def test_block_that_instantiates_itself_is_refused(tmp_path):
    text = BLOCKS.replace(
        "- {name: 1, block: unit, planes: $planes}", "- {name: 1, block: pair, planes: $planes}"
    )
    path, error = block_error(tmp_path, text)
    assert "nested more than" in str(error)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "[2]"])
def test_repeat_must_be_a_positive_integer(tmp_path, value):
    text = BLOCKS.replace("repeat: 2", f"repeat: {value}")
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "repeat:")
    assert "repeat" in str(error)


def test_huge_repeat_is_refused_before_expanding(tmp_path):
    text = BLOCKS.replace("repeat: 2", "repeat: ${10**9}")
    path, error = block_error(tmp_path, text)
    assert "repeat" in str(error)


def test_block_output_naming_no_node_is_an_error(tmp_path):
    text = BLOCKS.replace(
        "    params: {planes: null}\n", "    params: {planes: null}\n    output: nothing\n"
    )
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "output: nothing")
    assert "'nothing'" in str(error)


def test_instance_name_colliding_with_a_node_is_an_error(tmp_path):
    text = BLOCKS.replace("name: layer2, block: pair", "name: stem, block: pair")
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "name: stem, block: pair")
    assert "duplicate" in str(error)


def test_unknown_field_in_a_block_definition_is_named(tmp_path):
    text = BLOCKS.replace("    input: x\n", "    inputs: x\n")
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "    inputs: x")
    assert "did you mean 'input'" in str(error)


def test_node_named_like_an_earlier_instance_is_an_error(tmp_path):
    text = BLOCKS.replace("{name: gap, op: adaptive", "{name: layer2, op: adaptive")
    text = text.replace(
        "{name: flatten, op: flatten}", "{name: flatten, op: flatten, inputs: layer2}"
    )
    path, error = block_error(tmp_path, text)
    assert error.line == line_containing(text, "{name: layer2, op: adaptive")
    assert "duplicate name" in str(error)
    assert f"line {line_containing(text, 'name: layer2, block')}" in str(error)


def test_block_node_named_like_its_placeholder_is_an_error(tmp_path):
    text = BLOCKS.replace("{name: conv1.1, op: relu}", "{name: x, op: relu}")
    path, error = block_error(tmp_path, text)
    assert "placeholder" in str(error)
    assert error.line == line_containing(text, "{name: x, op: relu}")
