"""The rule protocol (what a rule needs from the forward pass), the registry, and memos that
follow the weights.

``Combine([(1.0, rule)])`` must equal ``rule`` for every registered rule on every op it
accepts: the pairs come from ``RULES`` and ``OPS``, so a new rule or op is covered (an op
without an example below fails ``test_every_op_has_an_example``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from relgraph.rules import (
    NEEDS,
    RULES,
    Combine,
    Epsilon,
    NodeContext,
    Pass,
    Rule,
    WinnerTakeAll,
    ZPlus,
    make_rule,
    register_rule,
)
from relgraph.rules.composite import preset

import relgraph
from relgraph.engine.ops import OPS
from relgraph.errors import RuleError

DTYPE = torch.float64

#: one small node per op: (input shape, the node's fields, extra nodes before it). Merges read
#: the input and a ReLU of it.
OP_EXAMPLES: dict[str, tuple[list[int], dict]] = {
    "conv1d": ([2, 7], {"out_channels": 3, "kernel_size": 3, "padding": 1}),
    "conv2d": ([2, 5, 4], {"out_channels": 3, "kernel_size": [3, 2], "stride": 2, "groups": 1}),
    "conv3d": ([2, 4, 4, 3], {"out_channels": 2, "kernel_size": 2}),
    "linear": ([6], {"out_features": 4}),
    "batchnorm1d": ([3, 5], {}),
    "batchnorm2d": ([3, 4, 4], {}),
    "batchnorm3d": ([2, 3, 3, 3], {}),
    "maxpool1d": ([2, 7], {"kernel_size": 3, "stride": 2}),
    "maxpool2d": ([2, 5, 5], {"kernel_size": 2, "padding": 1}),
    "maxpool3d": ([2, 4, 4, 4], {"kernel_size": [1, 2, 2]}),
    "avgpool1d": ([2, 7], {"kernel_size": 3, "stride": 2, "padding": 1}),
    "avgpool2d": ([2, 5, 5], {"kernel_size": 2, "ceil_mode": True}),
    "avgpool3d": ([2, 4, 4, 4], {"kernel_size": 2}),
    "adaptive_avgpool1d": ([2, 7], {"output_size": 3}),
    "adaptive_avgpool2d": ([2, 5, 5], {"output_size": [2, 3]}),
    "adaptive_avgpool3d": ([2, 4, 4, 4], {"output_size": 2}),
    "relu": ([3, 4], {}),
    "dropout": ([3, 4], {"p": 0.3}),
    "identity": ([3, 4], {}),
    "flatten": ([3, 4], {}),
    "reshape": ([3, 4], {"shape": [4, 3]}),
    "add": ([3, 4], {}),
    "concat": ([3, 4], {"dim": 1}),
    "sigmoid": ([3, 4], {}),
    "silu": ([3, 4], {}),
    "mean": ([2, 3, 4], {"dims": [2, 3], "keepdim": False}),
    "mul": ([3, 4], {}),
    # token ops: tokens (N, D), batched over the leading axes
    "layernorm": ([2, 3, 4], {"eps": 1e-5}),
    "gelu": ([3, 4], {}),
    "gelu_new": ([3, 4], {}),
    "gelu_fast": ([3, 4], {}),
    "gelu_pytorch_tanh": ([3, 4], {}),
    "scale": ([3, 4], {"factor": 0.5}),
    "softmax": ([2, 3, 4], {}),
    "matmul": ([2, 3, 4], {"transpose_b": True}),
    "attention": ([2, 3, 4], {}),
    "permute": ([2, 3, 4], {"dims": [0, 3, 1, 2]}),
    "transpose": ([2, 3, 4], {"dim0": 1, "dim1": 3}),
    "slice": ([5, 4], {"dim": 1, "start": 1, "stop": 4}),
    "select": ([5, 4], {"dim": 1, "index": 2}),
    "repeat": ([2, 1, 4], {"repeats": [1, 3, 1]}),
    "prepend_token": ([5, 4], {"dim": 1, "shape": [1, 1, 4]}),
    "add_param": ([5, 4], {"shape": [1, 5, 4]}),
    "add_sinusoid": ([5, 4], {}),
    "conv2d_frames": ([2, 3, 4, 4], {"out_channels": 3, "kernel_size": [2, 2], "stride": [2, 2]}),
}
#: two inputs: the input and its ReLU (matmul: the product of the two)
MERGES = ("add", "concat", "matmul")
#: three inputs: q, k, v of attention (the input, its ReLU, a copy of the input)
TRIPLES = ("attention",)
#: products read the input and a gate broadcast along its last dimension (mean over it)
PRODUCTS = ("mul",)

#: the parameters each rule is tried with (a rule missing here is tried with its defaults)
RULE_VARIANTS: dict[str, list[dict]] = {
    "epsilon": [{}, {"bias": False}, {"epsilon": 0.0}],
    "zplus": [{}, {"bias": True, "stabilizer": "epsilon"}],
    "alphabeta": [{}, {"bias": True}],
    "gamma": [{}, {"stabilizer": "epsilon"}],
    "zbeta": [{"low": -1.0, "high": 2.0}],
}


def example_graph(op_type: str) -> relgraph.Graph:
    """``input → node`` (merges: ``input, relu(input) → node``) with random weights."""
    input_shape, fields = OP_EXAMPLES[op_type]
    nodes = []
    inputs = ["input"]
    if op_type in MERGES:
        nodes.append({"name": "pre", "op": "relu", "inputs": ["input"]})
        inputs = ["input", "pre"]
    if op_type in TRIPLES:
        nodes.append({"name": "pre", "op": "relu", "inputs": ["input"]})
        nodes.append({"name": "copy", "op": "identity", "inputs": ["input"]})
        inputs = ["input", "pre", "copy"]
    if op_type in PRODUCTS:
        dim = len(input_shape)
        nodes.append({"name": "pre", "op": "mean", "inputs": ["input"], "dims": [dim]})
        nodes[-1]["keepdim"] = True
        inputs = ["input", "pre"]
    nodes.append({"name": "node", "op": op_type, "inputs": inputs, **fields})
    spec = {
        "name": f"example-{op_type}",
        "input": {"name": "input", "shape": input_shape},
        "nodes": nodes,
        "output": "node",
    }
    graph = relgraph.architecture_from_yaml(json.dumps(spec), dtype=DTYPE)
    generator = torch.Generator().manual_seed(len(op_type))
    tensors = graph.tensors("node")
    for name, tensor in tensors.items():
        values = torch.randn(tensor.shape, generator=generator, dtype=DTYPE)
        tensors[name] = values.abs() + 0.1 if name == "running_var" else values
    return graph


def rule_cases() -> list[tuple[str, dict]]:
    cases = []
    for name in sorted(RULES):
        if name == "combine":
            continue
        cases += [(name, params) for params in RULE_VARIANTS.get(name, [{}])]
    return cases


def rule_op_pairs() -> list[tuple[str, dict, str]]:
    """Every (rule, parameters, op) where the rule accepts the op (a capability it requires)."""
    return [
        (name, params, op_type)
        for name, params in rule_cases()
        for op_type in sorted(OP_EXAMPLES)
        if make_rule({"name": name, **params}).fits(shared_example(op_type).op("node"))
    ]


_EXAMPLES: dict[str, relgraph.Graph] = {}


def shared_example(op_type: str) -> relgraph.Graph:
    """``example_graph``, built once per op for the tests that do not change it."""
    if op_type not in _EXAMPLES:
        _EXAMPLES[op_type] = example_graph(op_type)
    return _EXAMPLES[op_type]


def explain_node(graph: relgraph.Graph, rule: Rule, seed: int = 0) -> relgraph.Explanation:
    """Explain with ``rule`` at ``node`` and ``pass`` elsewhere, from a random seed tensor."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((3, *graph.input_shape), generator=generator, dtype=DTYPE)
    start = torch.randn((3, *graph.output_shape), generator=generator, dtype=DTYPE)
    # pass (uniform on the products' gate, a mean, which pass does not fit)
    node_rules = {
        n: Pass() if Pass().fits(graph.op(n)) else make_rule("uniform") for n in graph.order[1:]
    }
    node_rules["node"] = rule
    return relgraph.explanation_with_rules(graph, x, node_rules, 0, start)


def test_every_op_has_an_example():
    missing = sorted(set(OPS) - {"input"} - set(OP_EXAMPLES))
    assert not missing, f"add an example node for {missing} to OP_EXAMPLES"


def test_every_rule_accepts_some_op():
    accepted = {name for name, _, _ in rule_op_pairs()}
    assert accepted == {name for name, _ in rule_cases()}


@pytest.mark.parametrize(("name", "params", "op_type"), rule_op_pairs(), ids=str)
def test_a_rule_inside_combine_equals_the_rule_alone(name, params, op_type):
    graph = shared_example(op_type)
    rule = make_rule({"name": name, **params})
    assert rule.fits(graph.op("node"))
    combined = Combine([(1.0, rule)])
    assert combined.needs == rule.needs
    alone, inside = explain_node(graph, rule), explain_node(graph, combined)
    torch.testing.assert_close(inside.relevance, alone.relevance, rtol=0, atol=0)
    torch.testing.assert_close(inside.lost["node"], alone.lost["node"], rtol=0, atol=0)


def test_combine_on_a_max_pool_passes_on_that_its_part_needs_the_record():
    graph = example_graph("maxpool2d")
    rule = Combine([(1.0, WinnerTakeAll())])
    assert rule.needs == frozenset({"record"})
    explanation = explain_node(graph, rule)
    # winner-take-all conserves: every output's relevance lands on its window's maximum
    torch.testing.assert_close(explanation.lost["node"], torch.zeros(3, dtype=DTYPE))


def test_combine_needs_the_union_of_its_parts():
    rule = Combine([(0.5, ZPlus()), (0.25, Epsilon(bias=True)), (0.25, WinnerTakeAll())])
    assert rule.needs == frozenset({"inputs", "output", "record"})
    assert Combine([(1.0, Pass())]).needs == frozenset()
    # every shipped rule declares only what the forward pass offers
    for name, params in rule_cases():
        assert make_rule({"name": name, **params}).needs <= NEEDS, name


def test_a_rule_gets_only_what_it_declared():
    """Even where another node's rule kept the activation, a rule that did not declare
    ``inputs`` sees ``None``: the protocol, not luck, decides what a rule may read."""
    seen = {}

    @dataclass
    class Spy(Rule):
        name = "spy-for-tests"
        requires = ("reshape",)
        needs = frozenset({"output"})

        def relevance(self, ctx, relevance):
            seen["inputs"], seen["output"] = ctx.inputs, ctx.output
            return [relevance.reshape(ctx.input_shapes[0])]

    graph = example_graph("relu")
    explain_node(graph, Spy())
    assert seen["inputs"] == [None] and seen["output"] is not None


def test_a_rule_that_needs_something_unknown_is_refused():
    @dataclass
    class Greedy(Rule):
        name = "greedy-for-tests"
        requires = ("reshape",)
        needs = frozenset({"inputs", "gradient"})

    with pytest.raises(RuleError, match="gradient"):
        explain_node(example_graph("relu"), Greedy())


def test_the_old_needs_flags_are_refused_at_class_definition():
    with pytest.raises(RuleError, match="needs = frozenset"):

        class Old(Rule):  # noqa: F841
            name = "old-for-tests"
            needs_record = True


# --------------------------------------------------------------------------- registry


def test_registering_an_existing_name_raises_unless_replace():
    @dataclass
    class MyEpsilon(Epsilon):
        name = "epsilon"

    with pytest.raises(RuleError, match="'epsilon' is already registered.*replace=True"):
        register_rule(MyEpsilon)
    assert RULES["epsilon"] is Epsilon
    try:
        assert register_rule(MyEpsilon, replace=True) is MyEpsilon
        assert RULES["epsilon"] is MyEpsilon
        assert isinstance(make_rule("epsilon"), MyEpsilon)
    finally:
        RULES["epsilon"] = Epsilon
    Epsilon.name = "epsilon"


def test_registering_under_a_new_name_and_again_the_same_class():
    @dataclass
    class Halve(Rule):
        requires = ("reshape",)
        needs = frozenset()

    try:
        register_rule(Halve, name="halve-registry-test")
        register_rule(Halve, name="halve-registry-test")  # the same class again: a no-op
        with pytest.raises(RuleError, match="already registered"):
            register_rule(name="halve-registry-test")(type("Other", (Halve,), {}))
    finally:
        RULES.pop("halve-registry-test", None)


# --------------------------------------------------------------------------- memos


def fresh_copy(graph: relgraph.Graph) -> relgraph.Graph:
    """The same architecture with copies of the weights and nothing memoised."""
    copy = example_graph("conv2d")
    for node in graph.order[1:]:
        copy.tensors(node).clear()
        copy.tensors(node).update({k: t.clone() for k, t in graph.tensors(node).items()})
    copy.cache.clear()
    return copy


def explain_all(graph: relgraph.Graph, rule: Rule) -> torch.Tensor:
    x = torch.randn((2, *graph.input_shape), generator=torch.Generator().manual_seed(1))
    rules = {"node": rule}
    return relgraph.explain_with_rules(graph, x.to(DTYPE), rules, 0, "onehot")


#: rules whose memo holds something derived from the weights (W⁺, W⁻, γ weights, W², bounds)
MEMO_RULES = [
    ZPlus(),
    make_rule({"name": "alphabeta", "alpha": 2.0, "beta": 1.0}),
    make_rule({"name": "gamma", "gamma": 0.5}),
    make_rule({"name": "zbeta", "low": -1.0, "high": 2.0}),
    make_rule("wsquare"),
    make_rule("flat"),
    Epsilon(),
]


@pytest.mark.parametrize("rule", MEMO_RULES, ids=repr)
@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t["weight"].mul_(2),  # the example: a uniform scale
        lambda t: t["weight"][0].neg_(),
        lambda t: t["weight"].add_(torch.linspace(-1, 1, t["weight"].numel()).view_as(t["weight"])),
        lambda t: t["bias"].add_(1.0),
    ],
    ids=["mul_", "neg_ a slice", "add_", "bias add_"],
)
def test_an_in_place_edit_of_a_weight_is_seen_without_clearing(rule, edit):
    graph = example_graph("conv2d")
    explain_all(graph, rule)
    with torch.no_grad():
        edit(graph.tensors("node"))
    after = explain_all(graph, rule)
    torch.testing.assert_close(after, explain_all(fresh_copy(graph), rule), rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule", MEMO_RULES, ids=repr)
def test_replacing_a_weight_is_seen_without_clearing(rule):
    graph = example_graph("conv2d")
    tensors = graph.tensors("node")
    explain_all(graph, rule)
    # twice before explaining again: the second tensor may reuse the first's id and memory
    tensors["weight"] = tensors["weight"].flip(0) * 3
    tensors["weight"] = tensors["weight"].flip(1) - 0.5
    after = explain_all(graph, rule)
    torch.testing.assert_close(after, explain_all(fresh_copy(graph), rule), rtol=1e-12, atol=0)


def test_an_edit_changes_a_relevance_that_the_stale_memo_would_have_kept():
    """The test above could fail: with the old memo (no check) the result is stale."""
    graph = example_graph("conv2d")
    rule = ZPlus()
    before = explain_all(graph, rule)
    graph.tensors("node")["weight"][0].neg_()
    after = explain_all(graph, rule)
    assert not torch.allclose(before, after)


def test_the_memo_is_computed_once_while_the_weights_stay():
    graph = example_graph("linear")
    calls = []

    def context(tensors):
        return NodeContext(
            node="node",
            op=graph.op("node"),
            inputs=[None],
            input_shapes=[torch.Size((1, 6))],
            output=None,
            tensors=tensors,
            cache=graph.cache,
        )

    tensors = graph.tensors("node")
    for _ in range(3):
        context(tensors).memo("key", lambda: calls.append(1) or len(calls))
    assert len(calls) == 1
    tensors["bias"].zero_()
    assert context(tensors).memo("key", lambda: calls.append(1) or len(calls)) == 2
    # a weight without a version counter (made in inference mode) is never memoised
    with torch.inference_mode():
        tensors["weight"] = tensors["weight"] * 1
    for _ in range(2):
        context(tensors).memo("key", lambda: calls.append(1) or len(calls))
    assert len(calls) == 4


def _conv3d_graph(relu: bool, groups: int) -> relgraph.Graph:
    """``input (→ relu) → conv3d`` in float32, which runs channels-last on CPU: the adjoint is
    a convolution with the flipped kernel, which the node's memo keeps."""
    nodes = [{"name": "pre", "op": "relu" if relu else "identity", "inputs": ["input"]}]
    nodes.append(
        {
            "name": "node",
            "op": "conv3d",
            "inputs": ["pre"],
            "out_channels": 4,
            "kernel_size": 3,
            "padding": 1,
            "groups": groups,
        }
    )
    # not the output: the relevance reaching the conv is then in the pass's layout
    nodes.append({"name": "post", "op": "identity", "inputs": ["node"]})
    spec = {
        "name": "conv3d-memo",
        "input": {"name": "input", "shape": [4, 3, 5, 6]},
        "nodes": nodes,
        "output": "post",
    }
    graph = relgraph.architecture_from_yaml(json.dumps(spec))
    generator = torch.Generator().manual_seed(9 + groups)
    for name, tensor in graph.tensors("node").items():
        graph.tensors("node")[name] = torch.randn(tensor.shape, generator=generator)
    return graph


def _explain_conv3d(graph: relgraph.Graph) -> torch.Tensor:
    x = torch.randn((2, *graph.input_shape), generator=torch.Generator().manual_seed(3))
    assert graph.runs_channels_last(x)
    rules = {"pre": make_rule("pass"), "node": ZPlus(), "post": make_rule("pass")}
    return relgraph.explain_with_rules(graph, x, rules, 0, "onehot")


@pytest.mark.parametrize("relu", [True, False], ids=["x >= 0", "signed x"])
@pytest.mark.parametrize("groups", [1, 4], ids=["dense", "depthwise"])
def test_the_flipped_kernel_is_made_once_while_the_weights_stay(monkeypatch, relu, groups):
    import relgraph.engine.ops

    made = []
    flip = relgraph.engine.ops._adjoint_kernel
    monkeypatch.setattr(
        relgraph.engine.ops, "_adjoint_kernel", lambda w, g: made.append(1) or flip(w, g)
    )
    graph = _conv3d_graph(relu, groups)
    first = _explain_conv3d(graph)
    assert made, "the adjoint ran no flipped-kernel convolution"
    count = len(made)
    for _ in range(2):
        assert torch.equal(_explain_conv3d(graph), first)
    assert len(made) == count
    # the kept kernels and W± are laid out as the pass runs (channels-last), which oneDNN
    # would otherwise copy into on every call
    kept = [v for v in graph.cache["node"][1].values() if isinstance(v, torch.Tensor)]
    kept += [v[1] for v in graph.cache["node"][1].values() if isinstance(v, tuple)]
    five_d = [t for t in kept if isinstance(t, torch.Tensor) and t.dim() == 5]
    assert five_d and all(t.is_contiguous(memory_format=torch.channels_last_3d) for t in five_d)
    # an edit of the weight drops them: the result is a fresh graph's
    with torch.no_grad():
        graph.tensors("node")["weight"][0].neg_()
    after = _explain_conv3d(graph)
    assert len(made) > count
    fresh = _conv3d_graph(relu, groups)
    for name, tensor in graph.tensors("node").items():
        fresh.tensors("node")[name] = tensor.clone()
    torch.testing.assert_close(after, _explain_conv3d(fresh), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(after, first)


def _relu_conv_graph() -> relgraph.Graph:
    """``input → relu → conv2d`` with a bias: z⁺ at the conv sees inputs ≥ 0 by construction
    and forms z + ε with the map's own bias (b⁺ + ε, memoised per node)."""
    spec = {
        "name": "relu-conv",
        "input": {"name": "input", "shape": [2, 5, 5]},
        "nodes": [
            {"name": "pre", "op": "relu", "inputs": ["input"]},
            {
                "name": "node",
                "op": "conv2d",
                "inputs": ["pre"],
                "out_channels": 3,
                "kernel_size": 3,
                "bias": True,
            },
        ],
        "output": "node",
    }
    graph = relgraph.architecture_from_yaml(json.dumps(spec), dtype=DTYPE)
    generator = torch.Generator().manual_seed(5)
    for tensor in graph.tensors("node").values():
        tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=DTYPE))
    with torch.no_grad():  # b⁺ ≠ 0 in two channels: the bias shows in z⁺
        graph.tensors("node")["bias"].copy_(torch.tensor([0.8, -0.4, 0.3], dtype=DTYPE))
    return graph


def _z_plus_by_hand(graph: relgraph.Graph, x: torch.Tensor, bias: bool, epsilon: float):
    """z⁺ with b⁺ (or no bias) and z + ε at the conv, from its formula and autograd."""
    weight, b = graph.tensors("node")["weight"], graph.tensors("node")["bias"]
    a = x.clamp(min=0).requires_grad_(True)
    z = torch.nn.functional.conv2d(a, weight.clamp(min=0), b.clamp(min=0) if bias else None)
    seed = torch.zeros_like(z).flatten(1)
    seed[:, 0] = 1.0  # the one-hot seed of output 0: channel 0, first position
    (grad,) = torch.autograd.grad(z, a, (seed.view_as(z) / (z.detach() + epsilon)))
    return a.detach() * grad


@pytest.mark.parametrize("bias", [True, False])
def test_the_memoised_bias_plus_epsilon_follows_the_rule_and_the_weights(bias):
    graph = _relu_conv_graph()
    x = torch.randn((2, *graph.input_shape), generator=torch.Generator().manual_seed(2))
    x = x.to(DTYPE)

    def explained(use_bias: bool, epsilon: float) -> torch.Tensor:
        rule = make_rule(
            {"name": "zplus", "bias": use_bias, "stabilizer": "epsilon", "epsilon": epsilon}
        )
        return relgraph.explain_with_rules(graph, x, {"node": rule, "pre": make_rule("pass")}, 0)

    # the other rule first: its memo entries must not leak into this one's
    explained(not bias, 0.5)
    explained(bias, 0.25)
    for epsilon in (0.5, 1e-3):
        torch.testing.assert_close(
            explained(bias, epsilon), _z_plus_by_hand(graph, x, bias, epsilon), rtol=1e-10, atol=0
        )
    with torch.no_grad():
        graph.tensors("node")["bias"].add_(0.75)  # an in-place edit is followed
    torch.testing.assert_close(
        explained(bias, 0.5), _z_plus_by_hand(graph, x, bias, 0.5), rtol=1e-10, atol=0
    )


@pytest.mark.parametrize("raise_at_call", [1, 2])
def test_a_rule_error_names_the_node_and_its_line_in_every_pass(raise_at_call):
    """A ``RuleError`` a rule raises without naming a node is raised again naming it and its
    line in the architecture's file: in the clip's explanation (call 1) and in the frozen
    clips' (call 2, the frozen-clip shortcut of ``discriminative``)."""
    calls = []

    @dataclass
    class Boom(Rule):
        name = "boom-for-tests"
        requires = ("affine",)
        needs = frozenset()

        def relevance(self, ctx, relevance):
            calls.append(ctx.node)
            if len(calls) == raise_at_call:
                raise relgraph.RuleError("boom")
            return [torch.zeros(ctx.input_shapes[0], dtype=relevance.dtype)]

    graph = relgraph.load_architecture("c3d-tiny")
    line = next(
        number
        for number, text in enumerate(Path(graph.file).read_text().splitlines(), 1)
        if "name: conv2," in text
    )
    rules = preset(graph.default_rules).override("conv2", Boom())
    x = torch.randn(1, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(relgraph.RuleError) as raised:
        relgraph.discriminative(graph, x, rules=rules, progress=False)
    assert str(raised.value) == f"{graph.file}:{line}: node 'conv2': boom"
    assert len(calls) == raise_at_call
