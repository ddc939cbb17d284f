"""The ops of squeeze-excitation and swish: mul, sigmoid, silu, mean. Forward passes against
torch.nn written out by hand, YAML errors that name the line and the field, the round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relgraph

SE = """\
name: se
input: {name: input, shape: [4, 3, 5, 5]}
nodes:
  - {name: conv, op: conv3d, out_channels: 6, kernel_size: 3, padding: 1}
  - {name: act, op: silu}
  - {name: squeeze, op: mean, dims: [2, 3, 4], keepdim: true}
  - {name: fc1, op: conv3d, out_channels: 2, kernel_size: 1}
  - {name: relu, op: relu}
  - {name: fc2, op: conv3d, out_channels: 6, kernel_size: 1}
  - {name: gate, op: sigmoid}
  - {name: scale, op: mul, inputs: [act, gate]}
  - {name: pool, op: mean, dims: [2, 3, 4]}
  - {name: fc, op: linear, out_features: 3}
output: fc
"""


class SEReference(nn.Module):
    """The same network as ``SE`` in torch.nn, SiLU and sigmoid written out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(4, 6, 3, padding=1)
        self.fc1 = nn.Conv3d(6, 2, 1)
        self.fc2 = nn.Conv3d(2, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        act = z / (1 + torch.exp(-z))
        squeezed = act.mean(dim=(2, 3, 4), keepdim=True)
        gate = 1 / (1 + torch.exp(-self.fc2(torch.relu(self.fc1(squeezed)))))
        return self.fc((act * gate).mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squeeze_excitation_network_equals_its_torch_nn_reference(dtype):
    graph = relgraph.architecture_from_yaml(SE, dtype=dtype, seed=1)
    reference = SEReference().to(dtype)
    reference.load_state_dict(graph.state_dict(), strict=True)
    x = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        expected = reference(x)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(graph(x).output, expected, rtol=tolerance, atol=tolerance)
    assert graph.graph.nodes["squeeze"]["shape"] == (6, 1, 1, 1)
    assert graph.graph.nodes["pool"]["shape"] == (6,)


def test_gate_ops_round_trip_through_yaml():
    graph = relgraph.architecture_from_yaml(SE, seed=1)
    again = relgraph.architecture_from_yaml(graph.to_yaml(), seed=1)
    for node in graph.order:
        assert again.op(node) == graph.op(node)
    assert graph.op("pool").attrs == {"dims": (2, 3, 4), "keepdim": False}
    assert graph.op("scale").attrs == {"gate": None}


def test_every_preset_gives_the_gate_ops_their_rules():
    graph = relgraph.architecture_from_yaml(SE)
    for name in relgraph.rules.preset_names():
        if name == "gradient":  # a baseline, not relevance: the gradient everywhere
            continue
        composite = relgraph.rules.preset(name)
        if name == "base":  # structural rules only: affine nodes need a rule of their own
            composite = composite.override(ops=["conv*", "linear"], rule="epsilon")
        rules = composite.resolve(graph, preprocess="c3d-ucf101")
        assert rules["act"].name == rules["gate"].name == "pass", name
        assert rules["squeeze"].name == rules["pool"].name == "proportional", name
        assert rules["scale"].name == "signal-take-all", name


def test_the_gate_branch_gets_no_relevance_and_the_signal_all():
    graph = relgraph.architecture_from_yaml(SE, dtype=torch.float64, seed=1)
    x = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    explanation = relgraph.explanation(graph, x, rules="epsilon-plus", node_relevance=True)
    relevance = explanation.node_relevance
    for node in ("gate", "fc2", "relu", "fc1", "squeeze"):
        assert not relevance[node].any(), node
    torch.testing.assert_close(relevance["act"], relevance["scale"])


def test_the_gate_branch_is_not_run_and_the_relevance_is_the_same():
    """Signal-take-all hands the gate a broadcast zero (``no_relevance``): the reverse pass
    runs no rule on the nodes only it reaches, with the same input relevance as a gate given
    zeros of its own memory, on which every rule of the branch runs."""
    from relgraph.rules import SignalTakeAll
    from relgraph.rules.composite import preset

    graph = relgraph.architecture_from_yaml(SE, dtype=torch.float64, seed=1)
    x = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rules = preset("epsilon-plus").resolve(graph)
    ran = []

    class Spy:
        def __init__(self, node, rule):
            self.node, self.rule, self.needs = node, rule, rule.needs

        def __call__(self, ctx, relevance):
            ran.append(self.node)
            return self.rule(ctx, relevance)

    class ZerosOfItsOwn(SignalTakeAll):
        def relevance(self, ctx, relevance):
            handed = super().relevance(ctx, relevance)
            return [h.contiguous() for h in handed]  # memory of its own: not recognised

    spied = {node: Spy(node, rule) for node, rule in rules.items()}
    skipped = relgraph.explanation_with_rules(graph, x, spied, 0, "onehot", node_relevance=True)
    gate_branch = {"gate", "fc2", "relu", "fc1", "squeeze"}
    assert not gate_branch & set(ran)
    assert set(ran) == set(rules) - gate_branch
    ran.clear()
    spied["scale"] = Spy("scale", ZerosOfItsOwn())
    full = relgraph.explanation_with_rules(graph, x, spied, 0, "onehot", node_relevance=True)
    assert gate_branch <= set(ran)
    torch.testing.assert_close(skipped.relevance, full.relevance, rtol=0, atol=0)
    for node in gate_branch:
        kept = skipped.node_relevance[node]
        assert kept.shape == full.node_relevance[node].shape and not kept.any(), node
        # what is handed back has memory of its own, not a broadcast zero
        assert kept.untyped_storage().nbytes() == kept.numel() * kept.element_size(), node
        assert float(skipped.lost[node].abs().max()) == 0.0, node
    torch.testing.assert_close(skipped.lost["scale"], full.lost["scale"], rtol=0, atol=0)


def load_error(text: str) -> relgraph.RelgraphError:
    with pytest.raises(relgraph.RelgraphError) as caught:
        relgraph.architecture_from_yaml(text, file="se.yaml")
    return caught.value


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if fragment in line)


@pytest.mark.parametrize(
    ("old", "new", "node", "message"),
    [
        (
            "dims: [2, 3, 4], keepdim: true",
            "dims: [0, 3, 4], keepdim: true",
            "squeeze",
            "dims must be ≥ 1 (dimension 0 is the batch)",
        ),
        ("dims: [2, 3, 4]}", "dims: [2, 2, 4]}", "pool", "dims names a dimension twice"),
        ("dims: [2, 3, 4]}", "dims: [2, 5]}", "pool", "out of range for an input of shape [6,"),
        ("dims: [2, 3, 4]}", "dims: []}", "pool", "must be a non-empty list of integers"),
    ],
    ids=["batch", "twice", "range", "empty"],
)
def test_bad_mean_dims_name_the_node_and_line(old, new, node, message):
    text = SE.replace(old, new)
    error = load_error(text)
    assert (error.node, error.line) == (node, line_of(text, new))
    assert message in str(error)


TWO_BRANCHES = """name: product
input: {name: input, shape: [2, 3, 4]}
nodes:
  - {name: a, op: conv2d, out_channels: 2, kernel_size: 1}
  - {name: b, op: conv2d, out_channels: 2, kernel_size: [2, 1], inputs: [input]}
  - {name: scale, op: mul, inputs: [a, b]}
  - {name: flatten, op: flatten}
output: flatten
"""


def test_mul_of_shapes_that_do_not_broadcast_is_a_compile_error():
    error = load_error(TWO_BRANCHES)
    assert (error.node, error.line) == ("scale", line_of(TWO_BRANCHES, "name: scale"))
    assert "sizes agree or are 1 (broadcast), got [2, 3, 4] and [2, 2, 4]" in str(error)


def test_mul_of_different_ranks_is_a_compile_error():
    text = TWO_BRANCHES.replace(
        "{name: b, op: conv2d, out_channels: 2, kernel_size: [2, 1], inputs: [input]}",
        "{name: b, op: mean, dims: [2], inputs: [a]}",
    )
    error = load_error(text)
    assert error.node == "scale"
    assert "mul needs inputs of one rank" in str(error) and "[2, 3, 4] and [2, 4]" in str(error)


@pytest.mark.parametrize("order", ["a, b", "b, a"])
def test_mul_broadcasts_a_size_one_dimension_of_either_input(order):
    text = TWO_BRANCHES.replace(
        "{name: b, op: conv2d, out_channels: 2, kernel_size: [2, 1], inputs: [input]}",
        "{name: b, op: mean, dims: [3], keepdim: true, inputs: [a]}",
    ).replace("inputs: [a, b]", f"inputs: [{order}]")
    graph = relgraph.architecture_from_yaml(text)
    out = graph.forward(torch.randn(3, 2, 3, 4), keep={"a", "b"})
    a, b = out.activations["a"], out.activations["b"]
    assert b.shape == (3, 2, 3, 1)
    torch.testing.assert_close(out.output, (a * b.expand(3, 2, 3, 4)).flatten(1))


def test_mul_takes_exactly_two_inputs():
    text = SE.replace("inputs: [act, gate]", "inputs: [act, gate, conv]")
    error = load_error(text)
    assert error.node == "scale"
    assert "mul takes exactly 2 inputs" in str(error)


def test_gradient_preset_through_the_gate_ops_equals_autograd():
    """Each new op's explicit vjp (sigmoid, silu, mean, a broadcasting mul) against autograd."""
    graph = relgraph.architecture_from_yaml(SE, dtype=torch.float64, seed=1)
    x = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    targets = torch.tensor([1, 2])
    ours = relgraph.explain(graph, x, targets, rules="gradient")
    reference = SEReference().to(torch.float64)
    reference.load_state_dict(graph.state_dict())
    leaf = x.clone().requires_grad_(True)
    reference(leaf)[torch.arange(2), targets].sum().backward()
    torch.testing.assert_close(ours, leaf.grad, rtol=1e-10, atol=1e-12)


# a signal squeezed to one position: the signal and the gate are both (C, 1, 1, 1)
SE_AT_ONE_POSITION = """\
name: se1
input: {name: input, shape: [4, 1, 1, 1]}
nodes:
  - {name: conv, op: conv3d, out_channels: 6, kernel_size: 1}
  - {name: act, op: silu}
  - {name: squeeze, op: mean, dims: [2, 3, 4], keepdim: true}
  - {name: fc1, op: conv3d, out_channels: 6, kernel_size: 1}
  - {name: gate, op: sigmoid}
  - {name: scale, op: mul, inputs: [act, gate]GATE}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out_features: 3}
output: fc
"""


def test_a_named_gate_tells_the_signal_where_both_are_shaped_like_the_output():
    x = torch.randn(2, 4, 1, 1, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    unnamed = relgraph.architecture_from_yaml(
        SE_AT_ONE_POSITION.replace("GATE", ""), dtype=torch.float64, seed=1
    )
    with pytest.raises(relgraph.RuleError, match=r":9: node 'scale'.*mul node gate: 0 or 1"):
        relgraph.explain(unnamed, x, rules="epsilon-plus")
    named = relgraph.architecture_from_yaml(
        SE_AT_ONE_POSITION.replace("GATE", ", gate: 1"), dtype=torch.float64, seed=1
    )
    explanation = relgraph.explanation(named, x, rules="epsilon-plus", node_relevance=True)
    relevance = explanation.node_relevance
    assert not relevance["gate"].any() and not relevance["fc1"].any()
    torch.testing.assert_close(relevance["act"], relevance["scale"])
    assert relevance["scale"].abs().sum() > 0
    again = relgraph.architecture_from_yaml(named.to_yaml(), dtype=torch.float64, seed=1)
    assert again.op("scale").gate == 1


@pytest.mark.parametrize(
    ("gate", "message"),
    [(", gate: 2", "gate must be the slot 0 or 1"), (", gate: 0", "slot 1 the signal, but it is")],
)
def test_a_gate_that_is_not_one_is_refused_naming_its_line(gate, message):
    # in SE, slot 0 is the signal (C, T, H, W) and slot 1 the gate (C, 1, 1, 1): gate 0
    # would make the broadcast gate the signal
    spec = SE.replace("inputs: [act, gate]}", "inputs: [act, gate]" + gate + "}")
    with pytest.raises(relgraph.RelgraphError, match=rf":11: node .scale.: .*{message}"):
        relgraph.architecture_from_yaml(spec)
