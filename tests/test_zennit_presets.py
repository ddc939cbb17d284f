"""The presets named after zennit's composites compute zennit's numbers.

Each preset explains C3D (c3d-tiny by default, the full size under ``-m slow``) in float64
with random non-zero biases, and is compared
with the functional C3D explained layer by layer the way zennit 0.5.1's hooks compute its rules
(``tests/lrp_reference.py``: modified forwards and ``torch.autograd.grad``, no hooks). Smaller
tests check the parts C3D lacks: average pools and adds (zennit's ``Norm``), batch norms
(``Pass``).
"""

from __future__ import annotations

import json

import lrp_reference as ref
import pytest
import torch
import torch.nn.functional as F
from relgraph.rules import make_rule, preset

import relgraph
from relgraph.io.preprocess import get_preprocess

DTYPE = torch.float64


def with_random_biases(graph: relgraph.Graph, seed: int = 7) -> relgraph.Graph:
    generator = torch.Generator().manual_seed(seed)
    for node in graph.order[1:]:
        bias = graph.tensors(node).get("bias")
        if bias is not None:
            bias.copy_(0.05 * torch.randn(bias.shape, generator=generator, dtype=DTYPE))
    graph.cache.clear()
    return graph


def bgr_clip(graph: relgraph.Graph, seed: int = 8) -> torch.Tensor:
    """One clip of BGR pixels minus the c3d-ucf101 mean."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (1, *graph.input_shape), generator=generator).to(DTYPE)
    mean = torch.tensor(get_preprocess("c3d-ucf101").mean, dtype=DTYPE).reshape(1, 3, 1, 1, 1)
    return pixels - mean


@pytest.fixture(scope="module")
def c3d_with_biases():
    """The full C3D in float64 with every bias random and non-zero, and one clip."""
    graph = with_random_biases(relgraph.load_architecture("c3d", dtype=DTYPE))
    return graph, bgr_clip(graph)


@pytest.fixture(scope="module")
def c3d_tiny_with_biases():
    """C3D's topology at c3d-tiny's widths (the same layers, pools and padding)."""
    graph = with_random_biases(relgraph.load_architecture("c3d-tiny", dtype=DTYPE))
    return graph, bgr_clip(graph)


def assert_equals_zennit(graph: relgraph.Graph, x: torch.Tensor, name: str) -> None:
    low, high = (
        t.to(DTYPE).reshape(1, 3, 1, 1, 1)
        for t in get_preprocess("c3d-ucf101").zbeta_bounds(per_channel=True)
    )
    expected, logits = ref.c3d_zennit(graph.state_dict(), x, name, low, high)
    explanation = relgraph.explanation(
        graph, x, rules=name, preprocess="c3d-ucf101", node_relevance=True
    )
    torch.testing.assert_close(explanation.output, logits, rtol=1e-10, atol=1e-10)
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((explanation.relevance - expected).abs().max()) <= 1e-6 * scale


ZENNIT_PRESETS = ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"]


@pytest.mark.parametrize("name", ZENNIT_PRESETS)
def test_zennit_named_preset_equals_zennits_rules_on_c3d_tiny_with_biases(
    c3d_tiny_with_biases, name
):
    assert_equals_zennit(*c3d_tiny_with_biases, name)


@pytest.mark.slow  # a full-size model in float64, each
@pytest.mark.parametrize("name", ZENNIT_PRESETS)
def test_zennit_named_preset_equals_zennits_rules_on_full_size_c3d_with_biases(
    c3d_with_biases, name
):
    assert_equals_zennit(*c3d_with_biases, name)


def test_the_c3d_reference_sees_the_biases(c3d_tiny_with_biases):
    """Guard for the tests above: with biases the zennit numbers differ from bias-free z+."""
    graph, x = c3d_tiny_with_biases
    with_bias, _ = ref.c3d_zennit(graph.state_dict(), x, "epsilon-plus")
    weights = {
        k: (torch.zeros_like(v) if k.endswith("bias") else v) for k, v in graph.state_dict().items()
    }
    without, _ = ref.c3d_zennit(weights, x, "epsilon-plus")
    assert float((with_bias - without).abs().max()) > 1e-4 * float(with_bias.abs().max())


# --------------------------------------------------------------------------- parts C3D lacks


def single_node(fields: dict, shape: list[int], seed: int = 0) -> relgraph.Graph:
    spec = {
        "name": "single",
        "input": {"name": "input", "shape": shape},
        "nodes": [{"name": "node", **fields}],
        "output": "node",
    }
    graph = relgraph.architecture_from_yaml(json.dumps(spec), dtype=DTYPE)
    generator = torch.Generator().manual_seed(seed)
    for key, tensor in graph.tensors("node").items():
        values = torch.randn(tensor.shape, generator=generator, dtype=DTYPE)
        tensor.copy_(values.abs() + 0.1 if key == "running_var" else values)
    graph.cache.clear()
    return graph


POOLS = [
    (
        {"op": "avgpool3d", "kernel_size": [2, 3, 3], "stride": [1, 2, 2], "padding": [1, 1, 1]},
        F.avg_pool3d,
    ),
    (
        {
            "op": "avgpool3d",
            "kernel_size": [2, 3, 3],
            "stride": [1, 2, 2],
            "padding": [1, 1, 1],
            "count_include_pad": False,
            "ceil_mode": True,
        },
        F.avg_pool3d,
    ),
    ({"op": "adaptive_avgpool3d", "output_size": [2, 3, 2]}, F.adaptive_avg_pool3d),
]


@pytest.mark.parametrize("name", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"])
@pytest.mark.parametrize("pool", POOLS, ids=["padded", "exclude-pad-ceil", "adaptive"])
def test_average_pools_follow_zennits_norm(name, pool):
    """Norm: ``R_in = x ⊙ ∇ₓ(avg(x) · R / stab(avg(x)))`` with zennit's stabiliser: the
    window's mean, not its sum, is stabilised (the two differ by the divisor times ε)."""
    fields, fn = pool
    graph = single_node(fields, [3, 4, 7, 6])
    args = {k: v for k, v in fields.items() if k != "op"}
    x = torch.randn((2, 3, 4, 7, 6), dtype=DTYPE) * 1e-6  # ε matters at this scale
    relevance = torch.randn((2, *graph.output_shape), dtype=DTYPE)
    expected = ref.modified_terms([(x, lambda t: fn(t, **args))], relevance)
    rules = preset(name).resolve(graph, preprocess="c3d-ucf101")
    actual = relgraph.explain_with_rules(graph, x, rules, output_relevance=relevance)
    torch.testing.assert_close(
        actual, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max())
    )


def test_adds_follow_zennits_norm():
    graph = relgraph.architecture_from_yaml(
        "input: {name: input, shape: [2, 5]}\nnodes:\n"
        "  - {name: a, op: relu}\n  - {name: b, op: identity, inputs: [input]}\n"
        "  - {name: sum, op: add, inputs: [a, b]}\n",
        dtype=DTYPE,
    )
    x = torch.randn((3, 2, 5), dtype=DTYPE) * 1e-6
    relevance = torch.randn((3, 2, 5), dtype=DTYPE)
    # the add's two addends as two terms of one z; ReLU and identity pass relevance on
    expected = ref.modified_terms([(x.clamp(min=0), lambda t: t), (x, lambda t: t)], relevance)
    rules = preset("epsilon-plus").resolve(graph, preprocess="c3d-ucf101")
    actual = relgraph.explain_with_rules(graph, x, rules, output_relevance=relevance)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-22)


@pytest.mark.parametrize("name", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"])
def test_batch_norms_left_unfolded_pass_relevance_on(name):
    graph = single_node({"op": "batchnorm3d"}, [3, 2, 4, 4])
    rules = preset(name).resolve(graph, preprocess="c3d-ucf101")
    assert rules["node"] == make_rule("pass")
    relevance = torch.randn((2, *graph.output_shape), dtype=DTYPE)
    x = torch.randn((2, 3, 2, 4, 4), dtype=DTYPE)
    assert torch.equal(
        relgraph.explain_with_rules(graph, x, rules, output_relevance=relevance), relevance
    )
