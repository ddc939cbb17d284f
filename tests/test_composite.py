"""Composites: which rule each node gets, from selectors, presets, overrides and YAML files."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from relgraph.rules import (
    RULES,
    AlphaBeta,
    Combine,
    Epsilon,
    Pass,
    Proportional,
    Rule,
    Selector,
    Split,
    WinnerTakeAll,
    ZBeta,
    ZPlus,
    preset,
    register_rule,
)
from strategies import one_torch_thread  # noqa: F401

import relgraph
from relgraph.errors import RuleError
from relgraph.io.preprocess import get_preprocess

C3D_CONVS = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
C3D_POOLS = ("pool1", "pool2", "pool3", "pool4", "pool5")
C3D_PASS = (
    *(f"relu{i}" for i in ("1", "2", "3a", "3b", "4a", "4b", "5a", "5b", "6", "7")),
    "drop6",
    "drop7",
    "flatten",
)

#: two branches from the input, a pool before one of them, joined and classified
BRANCHES = """\
input: {shape: [2, 6]}
nodes:
  - {name: left, op: conv1d, out_channels: 2, kernel_size: 3, inputs: input}
  - {name: pool, op: maxpool1d, kernel_size: 2, inputs: input}
  - {name: right_bn, op: batchnorm1d, inputs: pool}
  - {name: right, op: conv1d, out_channels: 2, kernel_size: 2, inputs: right_bn}
  - {name: left_relu, op: relu, inputs: left}
  - {name: left_flat, op: flatten, inputs: left_relu}
  - {name: right_flat, op: flatten, inputs: right}
  - {name: join, op: concat, inputs: [left_flat, right_flat]}
  - {name: head_a, op: linear, out_features: 2, inputs: join}
  - {name: head_b, op: linear, out_features: 2, inputs: join}
  - {name: heads, op: add, inputs: [head_a, head_b]}
output: heads
"""


@pytest.fixture(scope="module")
def c3d():
    """Full C3D, structure only: resolving rules needs no weights."""
    return relgraph.load_architecture("c3d", init="none")


@pytest.fixture(scope="module")
def c3d_tiny():
    return relgraph.load_architecture("c3d-tiny", dtype=torch.float64, size=16, width=2, hidden=8)


@pytest.fixture(scope="module")
def clip(c3d_tiny):
    generator = torch.Generator().manual_seed(0)
    return (
        torch.rand((2, *c3d_tiny.input_shape), generator=generator, dtype=torch.float64) * 255 - 100
    )


@pytest.fixture(scope="module")
def branches():
    return relgraph.architecture_from_yaml(BRANCHES, file="branches.yaml", dtype=torch.float64)


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- selectors


def test_a_node_name_selects_that_node(c3d):
    assert Selector(nodes=("conv3b",)).matches(c3d) == {"conv3b"}


def test_a_glob_pattern_selects_every_node_whose_name_matches(c3d):
    assert Selector(nodes=("conv5*",)).matches(c3d) == {"conv5a", "conv5b"}
    assert Selector(nodes=("relu?",)).matches(c3d) == {"relu1", "relu2", "relu6", "relu7"}


def test_an_op_type_selects_every_node_of_that_op(c3d):
    assert Selector(ops=("maxpool3d",)).matches(c3d) == set(C3D_POOLS)
    assert Selector(ops=("conv*",)).matches(c3d) == set(C3D_CONVS)


def test_a_selector_with_names_and_ops_selects_the_nodes_matching_both(c3d):
    assert Selector(nodes=("*5*",), ops=("relu",)).matches(c3d) == {"relu5a", "relu5b"}


def test_the_input_node_is_never_selected(c3d):
    assert "input" not in Selector(nodes=("*",)).matches(c3d)


def test_first_selects_conv1_in_c3d(c3d):
    assert Selector(nodes=("first",)).matches(c3d) == {"conv1"}


def test_first_selects_every_conv_or_linear_node_with_none_before_it(branches):
    # right_bn (a batch norm, per channel) comes before right and does not count, nor does a pool
    assert Selector(nodes=("first",)).matches(branches) == {"left", "right"}


def test_before_first_selects_the_nodes_between_the_input_and_the_first_layers(branches):
    assert Selector(nodes=("before-first",)).matches(branches) == {"pool", "right_bn"}


def test_last_selects_fc8_in_c3d(c3d):
    assert Selector(nodes=("last",)).matches(c3d) == {"fc8"}


def test_last_selects_every_affine_node_with_no_affine_node_after_it(branches):
    assert Selector(nodes=("last",)).matches(branches) == {"head_a", "head_b"}


# --------------------------------------------------------------------------- composites


def test_a_later_entry_overrides_an_earlier_one(c3d):
    base = preset("base")
    convs_then_conv2 = base.override(ops="conv3d", rule=ZPlus()).override("conv2", Epsilon(0.5))
    conv2_then_convs = base.override("conv2", Epsilon(0.5)).override(ops="conv3d", rule=ZPlus())
    rules = convs_then_conv2.override(ops="linear", rule="zplus").resolve(c3d)
    assert rules["conv2"] == Epsilon(epsilon=0.5)
    assert all(rules[conv] == ZPlus() for conv in C3D_CONVS if conv != "conv2")
    rules = conv2_then_convs.override(ops="linear", rule="zplus").resolve(c3d)
    assert all(rules[conv] == ZPlus() for conv in C3D_CONVS)


def test_override_gives_one_node_a_new_rule_and_leaves_the_others(c3d):
    paper = preset("deep-taylor-paper").resolve(c3d)
    overridden = preset("deep-taylor-paper").override("conv5b", Epsilon(0.25)).resolve(c3d)
    assert overridden["conv5b"] == Epsilon(epsilon=0.25)
    assert {n: r for n, r in overridden.items() if n != "conv5b"} == {
        n: r for n, r in paper.items() if n != "conv5b"
    }


def test_a_dict_of_overrides_applies_on_top_of_the_architectures_preset(c3d_tiny, clip):
    composite = preset("deep-taylor-paper").override("conv5b", Epsilon(0.25))
    expected = relgraph.explain(c3d_tiny, clip, rules=composite)
    actual = relgraph.explain(c3d_tiny, clip, rules={"conv5b": Epsilon(0.25)})
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_an_architecture_names_its_default_preset(c3d):
    assert c3d.default_rules == "deep-taylor-paper"


def test_explain_without_rules_uses_the_architectures_preset(c3d_tiny, clip):
    assert c3d_tiny.default_rules == "deep-taylor-paper"
    expected = relgraph.explain(c3d_tiny, clip, rules="deep-taylor-paper")
    torch.testing.assert_close(relgraph.explain(c3d_tiny, clip), expected, rtol=0, atol=0)


def test_combine_hands_on_the_weighted_sum_of_its_rules_relevances(c3d_tiny, clip):
    def relevance_below_conv5b(rule):
        composite = preset("deep-taylor-paper").override("conv5b", rule)
        explanation = relgraph.explanation(c3d_tiny, clip, 0, composite, node_relevance=True)
        return explanation.node_relevance["relu5a"]  # conv5b's only input

    combined = relevance_below_conv5b(
        Combine(parts=[(0.3, ZPlus()), (0.7, AlphaBeta(alpha=2.0, beta=1.0))])
    )
    expected = 0.3 * relevance_below_conv5b(ZPlus()) + 0.7 * relevance_below_conv5b(
        AlphaBeta(alpha=2.0, beta=1.0)
    )
    torch.testing.assert_close(combined, expected)


# --------------------------------------------------------------------------- preset files


def test_a_preset_loads_from_a_yaml_file_path(tmp_path, branches):
    path = write(
        tmp_path,
        "mine.yaml",
        "name: mine\noutput_relevance: logit\nextends: base\nrules:\n"
        "  - {ops: ['conv*', linear, 'batchnorm*'], rule: {name: epsilon, epsilon: 0.5}}\n",
    )
    composite = preset(path)
    assert (composite.name, composite.output_relevance) == ("mine", "logit")
    rules = composite.resolve(branches)
    assert rules["left"] == Epsilon(epsilon=0.5) and rules["join"] == Split()


def test_explain_takes_a_preset_file_path(tmp_path, branches):
    path = write(
        tmp_path,
        "mine.yaml",
        "extends: base\nrules:\n  - {ops: ['conv*', linear, 'batchnorm*'], rule: zplus}\n",
    )
    x = torch.rand((2, 2, 6), dtype=torch.float64)
    expected = relgraph.explain(branches, x, rules=preset(path))
    torch.testing.assert_close(relgraph.explain(branches, x, rules=path), expected)


def test_a_later_entry_in_a_preset_file_overrides_an_earlier_one(tmp_path, branches):
    path = write(
        tmp_path,
        "order.yaml",
        "extends: base\nrules:\n"
        "  - {nodes: right, rule: flat}\n"
        "  - {ops: ['conv*', linear, 'batchnorm*'], rule: zplus}\n"
        "  - {nodes: head_b, rule: wsquare}\n",
    )
    rules = preset(path).resolve(branches)
    assert (rules["right"].name, rules["head_b"].name, rules["head_a"].name) == (
        "zplus",
        "wsquare",
        "zplus",
    )


def test_extends_puts_the_parents_entries_first_and_inherits_its_seed(tmp_path, c3d):
    path = write(
        tmp_path,
        "child.yaml",
        "extends: deep-taylor-paper\nrules:\n  - {nodes: fc8, rule: {name: epsilon}}\n",
    )
    child = preset(path)
    parent = preset("deep-taylor-paper")
    assert child.entries[: len(parent.entries)] == parent.entries
    assert child.output_relevance == "onehot"
    rules, parent_rules = child.resolve(c3d), parent.resolve(c3d)
    assert rules["fc8"] == Epsilon()
    assert {n: r for n, r in rules.items() if n != "fc8"} == {
        n: r for n, r in parent_rules.items() if n != "fc8"
    }


def test_extends_reads_a_relative_path_next_to_the_extending_preset(tmp_path, monkeypatch, c3d):
    write(
        tmp_path,
        "parent.yaml",
        "extends: deep-taylor-paper\nrules:\n  - {nodes: fc8, rule: flat}\n",
    )
    child = write(
        tmp_path, "child.yaml", "extends: parent.yaml\nrules:\n  - {nodes: fc7, rule: flat}\n"
    )
    monkeypatch.chdir(tmp_path.parent)  # not the presets' folder
    rules = preset(child).resolve(c3d)
    assert (rules["fc7"].name, rules["fc8"].name, rules["fc6"].name) == ("flat", "flat", "zplus")


def test_a_preset_output_relevance_other_than_onehot_or_logit_names_the_file_and_line(
    tmp_path,
):
    path = write(tmp_path, "start.yaml", "extends: base\noutput_relevance: one-hot\nrules: []\n")
    with pytest.raises(RuleError, match="output_relevance must be one of onehot, logit") as info:
        preset(path)
    assert (info.value.file, info.value.line) == (path, 2)


def test_a_preset_naming_the_old_seed_field_is_told_its_new_name(tmp_path):
    path = write(tmp_path, "old.yaml", "extends: base\nseed: logit\nrules: []\n")
    with pytest.raises(RuleError, match="'seed' is now called 'output_relevance'") as info:
        preset(path)
    assert (info.value.file, info.value.line) == (path, 2)


@pytest.fixture
def halve_rule():
    """A custom rule, registered by name for the test's duration."""

    @dataclass
    class Halve(Rule):
        """``R_in = factor · R``: relevance passed through, scaled."""

        name = "halve-for-tests"
        requires = ("reshape",)
        needs = frozenset()
        factor: float = 0.5

        def relevance(self, ctx, relevance):
            return [self.factor * relevance.reshape(ctx.input_shapes[0])]

    yield register_rule(Halve)
    RULES.pop("halve-for-tests")


def test_a_custom_registered_rule_works_from_a_yaml_preset(tmp_path, halve_rule, c3d_tiny, clip):
    path = write(
        tmp_path,
        "custom.yaml",
        "extends: deep-taylor-paper\nrules:\n"
        "  - {nodes: relu6, rule: {name: halve-for-tests, factor: 0.25}}\n",
    )
    rules = preset(path).resolve(c3d_tiny)
    assert isinstance(rules["relu6"], halve_rule) and rules["relu6"].factor == 0.25
    # every rule below relu6 is linear in the relevance it gets
    expected = 0.25 * relgraph.explain(c3d_tiny, clip, 0, "deep-taylor-paper")
    torch.testing.assert_close(relgraph.explain(c3d_tiny, clip, 0, path), expected)


# --------------------------------------------------------------------------- errors


def test_an_unknown_rule_names_the_file_and_line_and_suggests_the_closest(tmp_path):
    path = write(
        tmp_path,
        "typo.yaml",
        "extends: base\nrules:\n  - {ops: ['conv*'], rule: zplsu}\n",
    )
    with pytest.raises(RuleError, match="unknown rule 'zplsu'.*did you mean 'zplus'") as info:
        preset(path)
    assert (info.value.file, info.value.line) == (path, 3)


def test_an_unknown_rule_parameter_names_the_file_and_line(tmp_path):
    path = write(
        tmp_path,
        "param.yaml",
        "extends: base\nrules:\n\n  - {ops: ['conv*'], rule: {name: zplus, bais: false}}\n",
    )
    with pytest.raises(RuleError, match="no parameter 'bais'.*did you mean 'bias'") as info:
        preset(path)
    assert (info.value.file, info.value.line) == (path, 4)


def test_a_rule_that_does_not_fit_its_op_names_the_node_and_the_preset_line(tmp_path, branches):
    path = write(
        tmp_path,
        "misfit.yaml",
        "extends: base\nrules:\n"
        "  - {ops: ['conv*', linear, 'batchnorm*'], rule: zplus}\n"
        "  - {nodes: left, rule: winner-take-all}\n",
    )
    with pytest.raises(RuleError, match=r"'winner-take-all'.*misfit\.yaml:4.*conv1d") as info:
        preset(path).resolve(branches)
    assert (info.value.file, info.value.line, info.value.node) == ("branches.yaml", 3, "left")


def test_a_node_without_a_rule_is_named_with_its_file_and_line(branches):
    with pytest.raises(RuleError, match="gives no rule") as info:
        preset("base").resolve(branches)
    assert (info.value.file, info.value.line, info.value.node) == ("branches.yaml", 3, "left")


def test_a_preset_name_that_does_not_exist_suggests_the_closest():
    with pytest.raises(RuleError, match="did you mean 'deep-taylor-paper'"):
        preset("deep-taylor-papr")


# --------------------------------------------------------------------------- the paper's rule set


def assert_bounds(rule: Rule, low, high) -> None:
    """zβ bounds equal ``low``/``high`` (numbers, or one per input channel)."""
    torch.testing.assert_close(
        torch.as_tensor(rule.low, dtype=torch.float64).expand(len(torch.as_tensor(low).view(-1))),
        torch.as_tensor(low, dtype=torch.float64).view(-1),
    )
    torch.testing.assert_close(
        torch.as_tensor(rule.high, dtype=torch.float64).expand(len(torch.as_tensor(high).view(-1))),
        torch.as_tensor(high, dtype=torch.float64).view(-1),
    )


def test_deep_taylor_paper_on_c3d_is_the_rule_set_of_the_paper(c3d):
    rules = preset("deep-taylor-paper").resolve(c3d, preprocess="c3d-ucf101")
    conv1 = rules["conv1"]
    assert isinstance(conv1, ZBeta) and conv1.stabilizer == "zero"
    # −max(mean), 255 − min(mean) for the C3D mean (90, 98, 102)
    assert_bounds(conv1, -102.0, 165.0)
    zplus = ZPlus(bias=False, stabilizer="zero")
    assert {n: rules[n] for n in (*C3D_CONVS[1:], "fc6", "fc7", "fc8")} == {
        n: zplus for n in (*C3D_CONVS[1:], "fc6", "fc7", "fc8")
    }
    assert all(rules[n] == Pass() for n in C3D_PASS)
    assert all(rules[n] == WinnerTakeAll() for n in C3D_POOLS)
    assert set(rules) == set(c3d.order[1:])


def test_deep_taylor_paper_takes_its_bounds_from_the_architectures_preprocessing(c3d):
    assert c3d.default_preprocess == "c3d-ucf101"
    assert_bounds(preset("deep-taylor-paper").resolve(c3d)["conv1"], -102.0, 165.0)


def test_deep_taylor_paper_starts_from_a_onehot_seed():
    assert preset("deep-taylor-paper").output_relevance == "onehot"


def test_deep_taylor_2020_shares_max_pools_in_proportion(c3d):
    rules = preset("deep-taylor-2020").resolve(c3d)
    paper = preset("deep-taylor-paper").resolve(c3d)
    assert all(rules[n] == Proportional() for n in C3D_POOLS)
    assert {n: r for n, r in rules.items() if n not in C3D_POOLS} == {
        n: r for n, r in paper.items() if n not in C3D_POOLS
    }


def test_deep_taylor_per_channel_bounds_are_minus_mean_to_255_minus_mean_in_bgr_order(c3d):
    rules = preset("deep-taylor-per-channel").resolve(c3d, preprocess="c3d-ucf101")
    # c3d-ucf101 feeds B, G, R and subtracts 90, 98, 102 from them
    assert_bounds(rules["conv1"], [-90.0, -98.0, -102.0], [165.0, 157.0, 153.0])
    low, high = get_preprocess("c3d-ucf101").zbeta_bounds(per_channel=True)
    assert_bounds(rules["conv1"], low, high)
    assert rules["conv2"] == ZPlus(bias=False, stabilizer="zero")


def test_the_papers_scalar_bounds_fit_a_first_layer_of_any_width():
    graph = relgraph.architecture_from_yaml(
        "input: {shape: [5, 4]}\nnodes:\n"
        "  - {name: conv, op: conv1d, out_channels: 2, kernel_size: 3}\n"
        "  - {name: flat, op: flatten}\n  - {name: fc, op: linear, out_features: 2}\n",
        dtype=torch.float64,
    )
    x = torch.rand((1, 5, 4), dtype=torch.float64) * 255 - 100
    relevance = relgraph.explain(graph, x, rules="deep-taylor-paper", preprocess="c3d-ucf101")
    assert torch.isfinite(relevance).all()


def test_a_preset_is_read_again_when_it_or_the_preset_it_extends_changes(tmp_path):
    child, parent = tmp_path / "child.yaml", tmp_path / "parent.yaml"
    child.write_text("name: child\nextends: parent.yaml\nrules:\n  - {ops: [relu], rule: pass}\n")
    parent.write_text("name: parent\nrules:\n  - {ops: [linear], rule: epsilon}\n")
    first = preset(child)
    assert [e.selector.ops for e in first.entries] == [("linear",), ("relu",)]
    first.entries.append(first.entries[0])  # each call's composite is its own
    assert len(preset(child).entries) == 2
    parent.write_text(
        "name: parent\noutput_relevance: logit\nrules:\n  - {ops: [linear], rule: {name: epsilon, "
        "epsilon: 0.5}}\n  - {ops: [flatten], rule: pass}\n"
    )
    edited = preset(child)
    assert [e.selector.ops for e in edited.entries] == [("linear",), ("flatten",), ("relu",)]
    assert edited.entries[0].rule.epsilon == 0.5 and edited.output_relevance == "logit"
    child.write_text("name: child\nrules:\n  - {ops: [relu], rule: pass}\n")
    assert [e.selector.ops for e in preset(child).entries] == [("relu",)]
