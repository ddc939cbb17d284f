"""Architecture YAML: parameters, errors that name file, line and node, and the YAML round trip.

Each error test writes a small architecture with one thing wrong and checks that loading it
(before any data runs) raises a ``RelgraphError`` naming the file, the line of the offending
construct (found by searching the text, not taken from the implementation) and the node.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import relgraph

SMALL = """\
name: small
params:
  width: 4
input:
  shape: [3, 4, 8, 8]
nodes:
  - name: conv1
    op: conv3d
    out_channels: $width
    kernel_size: 3
    padding: 1
  - name: relu1
    op: relu
  - name: pool1
    op: maxpool3d
    kernel_size: 2
  - name: flatten
    op: flatten
  - name: fc
    op: linear
    out_features: 2
output: fc
"""
"""conv1 keeps 4 × 8 × 8, pool1 halves it to 4 × 2 × 4 × 4 = 128 features for fc."""


def line_containing(text: str, fragment: str, occurrence: int = 1) -> int:
    """1-based number of the line holding the ``occurrence``-th match of ``fragment``."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(hits) >= occurrence, f"{fragment!r} is not in the text"
    return hits[occurrence - 1]


def write(tmp_path: Path, text: str, name: str = "arch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, **params) -> relgraph.RelgraphError:
    with pytest.raises(relgraph.RelgraphError) as caught:
        relgraph.load_architecture(path, **params)
    return caught.value


def assert_names(error: relgraph.RelgraphError, path: Path, line: int, node: str | None):
    """The error and its one-paragraph message name the file, the line and the node."""
    message = str(error)
    assert error.file == str(path)
    assert error.line == line
    assert f"{path}:{line}" in message
    assert error.node == node
    if node is not None:
        assert f"node '{node}'" in message
    assert "\n" not in message


def test_small_architecture_compiles(tmp_path):
    graph = relgraph.load_architecture(write(tmp_path, SMALL))

    assert graph.graph.nodes["flatten"]["shape"] == (128,)
    assert graph.output_shape == (2,)


# ----------------------------------------------------------------------- parameters


def test_dollar_name_is_replaced_by_the_parameter_value(tmp_path):
    graph = relgraph.load_architecture(write(tmp_path, SMALL), width=6)

    assert graph.op("conv1").out_channels == 6


def test_dollar_expression_is_evaluated_over_the_parameters(tmp_path):
    text = SMALL.replace("out_channels: $width", 'out_channels: "${2 * width + 1}"')

    graph = relgraph.load_architecture(write(tmp_path, text))

    assert graph.op("conv1").out_channels == 9


def test_dollar_expression_may_use_min_max_and_integer_division(tmp_path):
    text = SMALL.replace("out_channels: $width", 'out_channels: "${max(1, width // 3)}"')

    graph = relgraph.load_architecture(write(tmp_path, text))

    assert graph.op("conv1").out_channels == 1


def test_undeclared_parameter_reference_names_line_node_and_suggestion(tmp_path):
    text = SMALL.replace("out_channels: $width", "out_channels: $widht")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert_names(error, path, line_containing(text, "$widht"), "conv1")
    assert "did you mean 'width'" in str(error)


def test_expression_with_names_beyond_the_parameters_is_refused(tmp_path):
    text = SMALL.replace("out_channels: $width", "out_channels: \"${__import__('os')}\"")
    path = write(tmp_path, text)

    error = load_error(path)

    assert_names(error, path, line_containing(text, "__import__"), "conv1")


def test_astronomically_large_power_is_refused_instead_of_computed(tmp_path):
    text = SMALL.replace("out_channels: $width", 'out_channels: "${9**9**9}"')
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert_names(error, path, line_containing(text, "9**9**9"), "conv1")
    assert "too large" in str(error)


def test_parameter_override_that_is_not_a_number_is_an_error(tmp_path):
    with pytest.raises(relgraph.SpecError, match="must be a number"):
        relgraph.load_architecture(write(tmp_path, SMALL), width="four")


# ----------------------------------------------------------------------- spec errors


def test_invalid_yaml_syntax_names_its_line_and_node(tmp_path):
    text = SMALL.replace("kernel_size: 3", "kernel_size: 3: 3")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert_names(error, path, line_containing(text, "kernel_size: 3: 3"), "conv1")
    assert "not valid YAML" in str(error)


def test_unclosed_bracket_is_a_yaml_error_with_a_line(tmp_path):
    text = SMALL.replace("shape: [3, 4, 8, 8]", "shape: [3, 4, 8, 8")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert error.file == str(path) and error.line is not None
    assert "not valid YAML" in str(error)


def test_duplicate_yaml_key_names_the_second_line(tmp_path):
    text = SMALL.replace("    padding: 1\n", "    padding: 1\n    padding: 0\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert error.line == line_containing(text, "padding: 0")
    assert f"first on line {line_containing(text, 'padding: 1')}" in str(error)


@pytest.mark.parametrize("typo", ["conv3D", "con3d", "conv_3d"])
def test_unknown_op_names_its_line_and_suggests_the_closest(tmp_path, typo):
    text = SMALL.replace("op: conv3d", f"op: {typo}")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert_names(error, path, line_containing(text, f"op: {typo}"), "conv1")
    assert "did you mean 'conv3d'" in str(error)


def test_missing_required_field_names_the_node_and_the_field(tmp_path):
    text = SMALL.replace("    out_channels: $width\n", "")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert_names(error, path, line_containing(text, "- name: conv1"), "conv1")
    assert "out_channels" in str(error)


def test_unknown_field_names_its_line_and_suggests_the_closest(tmp_path):
    text = SMALL.replace("kernel_size: 3", "kernel: 3")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert_names(error, path, line_containing(text, "kernel: 3"), "conv1")
    assert "did you mean 'kernel_size'" in str(error)


def test_field_on_an_op_without_fields_is_an_error(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: relu\n    inplace: true\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert_names(error, path, line_containing(text, "inplace: true"), "relu1")


@pytest.mark.parametrize("value", ['"three"', "3.5", "true", "[3, 3]", "{size: 3}"])
def test_wrong_field_type_names_its_line(tmp_path, value):
    text = SMALL.replace("kernel_size: 3", f"kernel_size: {value}")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert_names(error, path, line_containing(text, f"kernel_size: {value}"), "conv1")
    assert "kernel_size" in str(error)


def test_negative_channel_count_is_an_error_on_its_line(tmp_path):
    text = SMALL.replace("out_channels: $width", "out_channels: -4")
    path = write(tmp_path, text)

    error = load_error(path)

    assert_names(error, path, line_containing(text, "out_channels: -4"), "conv1")


def test_non_finite_float_field_is_an_error(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: dropout\n    p: .nan\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert_names(error, path, line_containing(text, "p: .nan"), "relu1")


def test_batchnorm_eps_must_be_positive(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: batchnorm3d\n    eps: 0\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert_names(error, path, line_containing(text, "eps: 0"), "relu1")


def test_duplicate_node_name_names_the_second_declaration(tmp_path):
    text = SMALL.replace("  - name: relu1", "  - name: conv1")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.GraphError)
    assert_names(error, path, line_containing(text, "- name: conv1", occurrence=2), "conv1")
    assert f"line {line_containing(text, '- name: conv1')}" in str(error)


def test_input_naming_no_node_names_its_line_and_suggests_the_closest(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: relu\n    inputs: [convl]\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.GraphError)
    assert_names(error, path, line_containing(text, "inputs: [convl]"), "relu1")
    assert "did you mean 'conv1'" in str(error)


def test_cycle_is_an_error_naming_a_node_on_it_and_its_line(tmp_path):
    # relu1 reads pool1 and pool1 reads relu1: a cycle that never reaches the input
    text = SMALL.replace("    op: relu\n", "    op: relu\n    inputs: pool1\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.GraphError)
    assert "cycle" in str(error)
    assert error.node in {"relu1", "pool1"}
    assert_names(error, path, line_containing(text, f"- name: {error.node}"), error.node)


def test_self_loop_is_a_cycle(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: relu\n    inputs: relu1\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.GraphError)
    assert_names(error, path, line_containing(text, "- name: relu1"), "relu1")


def test_output_naming_no_node_is_an_error_on_its_line(tmp_path):
    text = SMALL.replace("output: fc", "output: fc8")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.GraphError)
    assert error.line == line_containing(text, "output: fc8")
    assert "did you mean 'fc'" in str(error)


def test_node_that_does_not_lead_to_the_output_is_an_error(tmp_path):
    text = SMALL + "  # unused\n"
    text = text.replace(
        "output: fc\n", "  - name: spare\n    op: relu\n    inputs: conv1\noutput: fc\n"
    )
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.GraphError)
    assert_names(error, path, line_containing(text, "- name: spare"), "spare")


def test_merge_with_a_single_input_is_an_error(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: add\n    inputs: [conv1]\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert_names(error, path, line_containing(text, "- name: relu1"), "relu1")
    assert "two or more inputs" in str(error)


def test_unknown_top_level_field_suggests_the_closest(tmp_path):
    text = SMALL.replace("output: fc", "outputs: fc")
    path = write(tmp_path, text)

    error = load_error(path)

    assert error.line == line_containing(text, "outputs: fc")
    assert "did you mean 'output'" in str(error)


def test_missing_nodes_section_is_an_error(tmp_path):
    path = write(tmp_path, "name: empty\ninput:\n  shape: [3, 4, 8, 8]\n")

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert "'nodes'" in str(error)


def test_file_that_is_not_a_mapping_is_an_error(tmp_path):
    path = write(tmp_path, "- just\n- a list\n")

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert error.file == str(path)


def test_missing_architecture_file_is_an_error(tmp_path):
    with pytest.raises(relgraph.SpecError, match="not found"):
        relgraph.load_architecture(tmp_path / "absent.yaml")


# ----------------------------------------------------------------------- shape errors


def test_channel_count_that_does_not_fit_names_the_in_channels_line(tmp_path):
    text = SMALL.replace(
        "    out_channels: $width\n", "    in_channels: 5\n    out_channels: $width\n"
    )
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "in_channels: 5"), "conv1")
    assert "3 channels" in str(error)


def test_flatten_size_that_does_not_fit_the_linear_names_the_in_features_line(tmp_path):
    text = SMALL.replace("    out_features: 2\n", "    in_features: 8192\n    out_features: 2\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "in_features: 8192"), "fc")
    assert "128" in str(error)


def test_c3d_flatten_size_that_does_not_fit_fc6_is_found_at_load_time(tmp_path):
    shipped = relgraph.load_architecture("c3d", init="none").file
    text = Path(shipped).read_text().replace("padding: [0, 1, 1]", "padding: [0, 0, 0]")
    path = write(tmp_path, text, "c3d-unpadded.yaml")

    error = load_error(path, init="none")

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "in_features: 8192"), "fc6")
    assert "4608 features" in str(error)  # 512 × 1 × 3 × 3 without pool5's padding


def test_pool_larger_than_its_input_names_its_line(tmp_path):
    text = SMALL.replace("    kernel_size: 2\n", "    kernel_size: 16\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "kernel_size: 16"), "pool1")


def test_linear_on_an_unflattened_input_is_a_shape_error(tmp_path):
    text = SMALL.replace("  - name: flatten\n    op: flatten\n", "")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "- name: fc"), "fc")
    assert "flatten" in str(error)


def test_add_of_different_shapes_is_a_shape_error(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: add\n    inputs: [conv1, input]\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "- name: relu1"), "relu1")


def test_absurd_channel_count_is_refused_at_compile_not_allocated(tmp_path):
    text = SMALL.replace("out_channels: $width", "out_channels: 100000000000")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "- name: conv1"), "conv1")


def test_absurd_input_size_is_refused_at_compile(tmp_path):
    text = SMALL.replace("shape: [3, 4, 8, 8]", "shape: [3, 4, 800000000, 800000000]")
    path = write(tmp_path, text)

    error = load_error(path, init="none")

    assert isinstance(error, relgraph.ShapeError)
    assert error.line == line_containing(text, "input:")


def test_too_many_parameters_to_create_is_refused_but_structure_compiles(tmp_path):
    # each 30000 × 30000 linear is under the per-tensor limit; together they are over it
    hidden = "\n".join(
        f"  - name: fc{i}\n    op: linear\n    out_features: 30000" for i in range(4)
    )
    text = SMALL.replace("  - name: fc\n", hidden + "\n  - name: fc\n")
    path = write(tmp_path, text)

    error = load_error(path)
    structure = relgraph.load_architecture(path, init="none")

    assert isinstance(error, relgraph.ShapeError)
    assert "init='none'" in str(error)
    assert structure.num_parameters() > 2**31


def test_errors_are_raised_at_load_time_for_yaml_given_as_text():
    text = SMALL.replace("op: conv3d", "op: conv3D")

    with pytest.raises(relgraph.SpecError, match="did you mean 'conv3d'") as caught:
        relgraph.architecture_from_yaml(text, file="given.yaml")

    assert caught.value.file == "given.yaml"
    assert caught.value.line == line_containing(text, "op: conv3D")


def test_flow_style_node_errors_point_at_the_nodes_line(tmp_path):
    text = textwrap.dedent(
        """\
        input:
          shape: [3, 4, 8, 8]
        nodes:
          - {name: conv1, op: conv3d, out_channels: 4, kernel_size: 3}
          - {name: fc, op: linear, out_features: two}
        """
    )
    path = write(tmp_path, text)

    error = load_error(path)

    assert_names(error, path, line_containing(text, "name: fc"), "fc")


# ----------------------------------------------------------------------- YAML round trip


def assert_same_graph(first: relgraph.Graph, second: relgraph.Graph) -> None:
    assert first.name == second.name
    assert first.order == second.order
    assert (first.input, first.output) == (second.input, second.output)
    assert first.params == second.params
    for node in first.order:
        a, b = first.graph.nodes[node], second.graph.nodes[node]
        assert type(a["op"]) is type(b["op"]), node
        assert a["op"].attrs == b["op"].attrs, node
        assert a["shape"] == b["shape"], node
        assert a["tensor_shapes"] == b["tensor_shapes"], node
    assert set(first.graph.edges(data="slot")) == set(second.graph.edges(data="slot"))
    assert (first.default_rules, first.default_preprocess) == (
        second.default_rules,
        second.default_preprocess,
    )


@pytest.mark.parametrize("name", relgraph.shipped_architectures())
def test_to_yaml_loads_back_into_an_identical_graph(name):
    graph = relgraph.load_architecture(name, init="none")

    again = relgraph.architecture_from_yaml(graph.to_yaml(), init="none")

    assert_same_graph(graph, again)


def test_to_yaml_keeps_parameter_overrides(tmp_path):
    graph = relgraph.load_architecture("c3d-tiny", init="none", num_classes=10, width=4)
    path = write(tmp_path, graph.to_yaml(), "tiny10.yaml")

    again = relgraph.load_architecture(path, init="none")

    assert_same_graph(graph, again)
    assert again.output_shape == (10,)


def test_to_yaml_round_trip_with_the_same_seed_gives_the_same_weights():
    graph = relgraph.load_architecture("resnet-tiny", seed=3)

    again = relgraph.architecture_from_yaml(graph.to_yaml(), seed=3)

    first, second = graph.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_to_yaml_is_stable_under_a_second_round_trip():
    text = relgraph.load_architecture("resnet-tiny", init="none").to_yaml()

    again = relgraph.architecture_from_yaml(text, init="none").to_yaml()

    assert again == text


# ----------------------------------------------------------------------- found by fuzzing


def test_control_character_is_a_yaml_error_on_its_line(tmp_path):
    text = SMALL.replace("    op: relu\n", "    op: relu\x1f\n")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert error.line == line_containing(text, "relu\x1f")
    assert "not valid YAML" in str(error)


@pytest.mark.parametrize(
    "value", ['"\\U99999999"', "2001-02-30", "!!int 0x", "!!float nine"], ids=str
)
def test_scalar_the_yaml_library_cannot_build_is_a_spec_error(tmp_path, value):
    text = SMALL.replace("name: small", f"name: {value}")
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert error.file == str(path)


def test_deeply_nested_yaml_is_a_spec_error(tmp_path):
    text = SMALL.replace("shape: [3, 4, 8, 8]", "shape: " + "[" * 3000 + "]" * 3000)
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.SpecError)
    assert "nested too deeply" in str(error)


# ----------------------------------------------------------------------- later fixes


def test_exponent_without_a_dot_is_a_number_not_a_string(tmp_path):
    text = SMALL.replace(
        "    op: relu\n", "    op: relu\n  - name: bn\n    op: batchnorm3d\n    eps: 1e-3\n"
    )

    graph = relgraph.load_architecture(write(tmp_path, text))

    assert graph.op("bn").eps == pytest.approx(0.001)


def test_pool_window_that_covers_only_padding_is_refused_at_its_padding_line(tmp_path):
    text = """\
input: {shape: [1, 1]}
nodes:
  - name: pool
    op: maxpool1d
    kernel_size: 2
    dilation: 2
    stride: 1
    padding: 1
"""
    path = write(tmp_path, text)

    error = load_error(path)

    assert isinstance(error, relgraph.ShapeError)
    assert_names(error, path, line_containing(text, "padding: 1"), "pool")
    assert "only padding" in str(error)
