"""Fuzzing the architecture loader: a mutated file loads, or fails with a ``RelgraphError``.

Valid architecture files are mutated at random, both as data (delete a key, put a random
value anywhere, rename an op, rewire inputs, duplicate or move nodes, add fields) and as text
(truncate, insert garbage, drop a span, duplicate a line, blow a number up), and loaded with
``init="none"`` so that only shapes are inferred. Nothing but a ``RelgraphError`` may escape:
no ``KeyError``, ``TypeError``, torch ``RuntimeError``, YAML error, ``OverflowError`` or a
hang computing something absurd.
"""

from __future__ import annotations

import copy
from importlib import resources

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import relgraph

SMALL_BRANCHED = """\
name: small-branched
params: {width: 2, classes: 3}
input: {shape: [2, 4, 6, 6]}
nodes:
  - name: conv
    op: conv3d
    out_channels: $width
    kernel_size: [1, 3, 3]
    padding: [0, 1, 1]
  - {name: bn, op: batchnorm3d}
  - {name: left, op: relu}
  - {name: right, op: avgpool3d, kernel_size: 3, stride: 1, padding: 1, inputs: bn}
  - {name: sum, op: add, inputs: [left, right]}
  - {name: both, op: concat, inputs: [sum, bn], dim: 1}
  - {name: pool, op: maxpool3d, kernel_size: 2, ceil_mode: true}
  - {name: gap, op: adaptive_avgpool3d, output_size: [1, 1, 1]}
  - {name: flat, op: reshape, shape: [-1]}
  - {name: fc, op: linear, out_features: "${classes * 2}"}
  - {name: drop, op: dropout, p: 0.1}
output: drop
"""

SOURCES = [
    resources.files("relgraph.architectures").joinpath(f"{name}.yaml").read_text()
    for name in ("c3d", "c3d-tiny", "resnet-tiny")
] + [SMALL_BRANCHED]

OP_NAMES = sorted(relgraph.engine.graph.OPS)  # every op the loader knows, "input" included

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------- random values

huge_numbers = st.sampled_from([0, -1, -(2**31), 2**31, 2**63, 2**64 + 1, 10**30, 10**400])
numbers = st.one_of(
    st.integers(-5, 70),
    st.integers(-(10**30), 10**30),
    huge_numbers,
    st.floats(allow_nan=True, allow_infinity=True),
)
strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(OP_NAMES),
    st.sampled_from(
        [
            "$width",
            "$num_classes",
            "$nope",
            "$",
            "${width * 2}",
            "${9**9**9}",
            "${1/0}",
            "${int(1e400)}",
            "${" + "(" * 300 + "1" + ")" * 300 + "}",
            "${" + "-" * 3000 + "1}",
            "${max()}",
            "${__import__('os')}",
            "conv1",
            "input",
            "",
        ]
    ),
)
scalars = st.one_of(numbers, strings, st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(strings, st.integers(-3, 3)), inner, max_size=3),
    ),
    max_leaves=8,
)

# ----------------------------------------------------------------------- data mutations


def paths(data, prefix=()):
    """Every location in a nested YAML document, as a tuple of keys and indices."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths(value, (*prefix, index))
    return found


def at(data, path):
    for step in path:
        data = data[step]
    return data


def node_list(data):
    nodes = data.get("nodes") if isinstance(data, dict) else None
    return nodes if isinstance(nodes, list) and nodes else None


def node_names(data):
    return [n["name"] for n in node_list(data) or [] if isinstance(n, dict) and "name" in n]


@st.composite
def mutate_data(draw, data):
    kind = draw(
        st.sampled_from(
            [
                "delete",
                "replace",
                "rename_op",
                "rewire",
                "duplicate_node",
                "move_node",
                "add_field",
                "add_top_level",
            ]
        )
    )
    nodes = node_list(data)
    if kind == "delete":
        deletable = [p for p in paths(data) if p]
        if not deletable:
            return data
        path = draw(st.sampled_from(deletable))
        container = at(data, path[:-1])
        del container[path[-1]]
    elif kind == "replace":
        path = draw(st.sampled_from(paths(data)))
        if not path:
            return draw(values)
        at(data, path[:-1])[path[-1]] = draw(values)
    elif nodes is None:
        return data
    elif kind == "rename_op":
        node = draw(st.sampled_from(nodes))
        if isinstance(node, dict):
            node["op"] = draw(st.one_of(st.sampled_from(OP_NAMES), strings))
    elif kind == "rewire":
        node = draw(st.sampled_from(nodes))
        names = node_names(data) + ["input", "nowhere"]
        if isinstance(node, dict):
            node["inputs"] = draw(
                st.one_of(st.sampled_from(names), st.lists(st.sampled_from(names), max_size=3))
            )
    elif kind == "duplicate_node":
        index = draw(st.integers(0, len(nodes) - 1))
        nodes.insert(draw(st.integers(0, len(nodes))), copy.deepcopy(nodes[index]))
    elif kind == "move_node":
        node = nodes.pop(draw(st.integers(0, len(nodes) - 1)))
        nodes.insert(draw(st.integers(0, len(nodes))), node)
    elif kind == "add_field":
        node = draw(st.sampled_from(nodes))
        if isinstance(node, dict):
            field = draw(
                st.one_of(
                    st.sampled_from(
                        ["in_channels", "kernel_size", "stride", "padding", "dilation", "groups"]
                        + ["bias", "p", "eps", "dim", "shape", "output_size", "ceil_mode"]
                    ),
                    st.text(min_size=1, max_size=8),
                )
            )
            node[field] = draw(values)
    elif kind == "add_top_level":
        data[draw(st.text(max_size=8))] = draw(values)
    return data


# ----------------------------------------------------------------------- text mutations

garbage = st.text(
    alphabet=st.one_of(st.sampled_from(list(":{}[]-#&*!|>'\"%@`,?\n\t $\\")), st.characters()),
    min_size=1,
    max_size=6,
)


@st.composite
def mutate_text(draw, text):
    kind = draw(st.sampled_from(["truncate", "insert", "drop_span", "duplicate_line", "blow_up"]))
    position = draw(st.integers(0, len(text)))
    if kind == "truncate":
        return text[:position]
    if kind == "insert":
        return text[:position] + draw(garbage) + text[position:]
    if kind == "drop_span":
        return text[:position] + text[position + draw(st.integers(1, 40)) :]
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    index = draw(st.integers(0, len(lines) - 1))
    if kind == "duplicate_line":
        return "".join(lines[: index + 1] + lines[index:])
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    if not digits:
        return text
    spot = draw(st.sampled_from(digits))
    return text[:spot] + str(draw(huge_numbers)) + text[spot:]


@st.composite
def fuzzed_architectures(draw):
    """YAML text of a mutated architecture and parameter overrides to load it with."""
    text = draw(st.sampled_from(SOURCES))
    if draw(st.booleans()):
        data = yaml.safe_load(text)
        for _ in range(draw(st.integers(1, 3))):
            data = draw(mutate_data(data))
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            text = draw(mutate_text(text))
    overrides = draw(
        st.dictionaries(
            st.sampled_from(["num_classes", "width", "size", "hidden", "classes", "widht"]),
            st.one_of(numbers, strings, st.booleans()),
            max_size=2,
        )
    )
    return text, overrides


def load(text: str, overrides: dict):
    return relgraph.architecture_from_yaml(text, file="fuzzed.yaml", init="none", **overrides)


@FUZZ
@given(fuzzed_architectures())
def test_mutated_architecture_loads_or_raises_a_relgraph_error(case):
    text, overrides = case
    try:
        graph = load(text, overrides)
    except relgraph.RelgraphError as error:
        assert str(error).strip()
        assert error.file == "fuzzed.yaml"
        return
    assert all("shape" in graph.graph.nodes[node] for node in graph.order)


@FUZZ
@given(fuzzed_architectures())
def test_any_architecture_that_loads_writes_yaml_that_loads_back_the_same(case):
    text, overrides = case
    try:
        graph = load(text, overrides)
    except relgraph.RelgraphError:
        return

    again = relgraph.architecture_from_yaml(graph.to_yaml(), init="none")

    assert again.order == graph.order
    for node in graph.order:
        first, second = graph.graph.nodes[node], again.graph.nodes[node]
        assert first["op"] == second["op"], node
        assert first["shape"] == second["shape"], node
    assert set(again.graph.edges(data="slot")) == set(graph.graph.edges(data="slot"))
