"""Every rule of the rule reference (docs/reference/rules.md) equals an
independent reference, on random single nodes in float64.

Affine rules are compared with autograd on modified weights (``tests/lrp_reference.py``, the
way hook-based LRP libraries compute them); pooling rules with explicit loops over the pooling
windows; merges with numpy. The last test explains the full-size C3D with the paper's rule set
and compares it with a functional C3D explained layer by layer with autograd.
"""

from __future__ import annotations

import dataclasses
import json

import lrp_reference as ref
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from relgraph.rules import NodeContext, make_rule

import relgraph
from relgraph.engine.ops import OPS

DTYPE = torch.float64
REFERENCE_SETTINGS = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------------------- helpers


def single_node_graph(fields: dict, input_shape: list[int], seed: int) -> relgraph.Graph:
    """A graph ``input → node`` with random float64 parameters (running variances > 0)."""
    spec = {
        "name": "single",
        "input": {"name": "input", "shape": input_shape},
        "nodes": [{"name": "node", **fields}],
        "output": "node",
    }
    graph = relgraph.architecture_from_yaml(json.dumps(spec), dtype=DTYPE)
    generator = torch.Generator().manual_seed(seed)
    tensors = graph.tensors("node")
    for name, tensor in tensors.items():
        values = torch.randn(tensor.shape, generator=generator, dtype=DTYPE)
        tensors[name] = values.abs() + 0.1 if name == "running_var" else values
    return graph


def random_like(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def engine_relevance(graph: relgraph.Graph, rule, x: torch.Tensor, relevance: torch.Tensor):
    """The input relevance of ``rule`` at the graph's single node, seeded with ``relevance``."""
    return relgraph.explain_with_rules(
        graph, x, {"node": make_rule(rule)}, output_relevance=relevance
    )


def weight_and_bias(graph: relgraph.Graph, fields: dict):
    """The node's weight and bias as the reference sees them (batch norm folded by hand)."""
    tensors = graph.tensors("node")
    if fields["op"].startswith("batchnorm"):
        return ref.batchnorm_scale_shift(
            tensors["running_mean"],
            tensors["running_var"],
            tensors.get("weight"),
            tensors.get("bias"),
            fields["eps"],
        )
    return tensors["weight"], tensors.get("bias")


def assert_matches(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray):
    """Equal to 1e-10, relative to each element and to the largest reference value."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all()
    scale = max(float(expected.abs().max()), 1e-300)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10 * scale)


# --------------------------------------------------------------------------- strategies


@st.composite
def input_sizes(draw, kernel, padding, dilation, largest: int):
    """Spatial sizes from the smallest the (dilated) kernel fits in, padding included."""
    sizes = []
    for k, p, d in zip(kernel, padding, dilation):
        smallest = max(1, d * (k - 1) + 1 - 2 * p)
        sizes.append(draw(st.integers(smallest, smallest + largest)))
    return sizes


@st.composite
def conv_nodes(draw, min_padding: int = 0):
    """A conv1d/2d/3d node with random channels, groups, kernel, stride, padding, dilation."""
    dims = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    dilation = [draw(st.integers(1, 2)) for _ in range(dims)]
    padding = [draw(st.integers(min_padding, 2)) for _ in range(dims)]
    stride = [draw(st.integers(1, 3)) for _ in range(dims)]
    largest = {1: 9, 2: 7, 3: 5}[dims]
    sizes = draw(input_sizes(kernel, padding, dilation, largest))
    fields = {
        "op": f"conv{dims}d",
        "out_channels": groups * draw(st.integers(1, 2)),
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": draw(st.booleans()),
    }
    return fields, [groups * draw(st.integers(1, 2)), *sizes]


@st.composite
def linear_nodes(draw):
    fields = {"op": "linear", "out_features": draw(st.integers(1, 6)), "bias": draw(st.booleans())}
    return fields, [draw(st.integers(1, 7))]


@st.composite
def batchnorm_nodes(draw):
    dims = draw(st.integers(1, 3))
    channels = draw(st.integers(1, 4))
    spatial = draw(st.integers(0 if dims == 1 else dims, dims))  # batchnorm1d: (C,) or (C, L)
    fields = {
        "op": f"batchnorm{dims}d",
        "eps": draw(st.sampled_from([0.001, 0.1])),  # JSON writes 1e-05, which YAML reads as text
        "affine": draw(st.booleans()),
    }
    return fields, [channels, *[draw(st.integers(1, 4)) for _ in range(spatial)]]


affine_nodes = st.one_of(conv_nodes(), linear_nodes(), batchnorm_nodes())
seeds = st.integers(0, 2**31 - 1)


@st.composite
def pool_nodes(draw, kind: str):
    """A max or average pool node: overlapping or gapped windows, padding, ceil mode, and
    (max pools) dilation."""
    dims = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    stride = [draw(st.integers(1, 3)) for _ in range(dims)]
    padding = [draw(st.integers(0, k // 2)) for k in kernel]
    dilation = [draw(st.integers(1, 2)) if kind == "max" else 1 for _ in range(dims)]
    largest = {1: 8, 2: 6, 3: 4}[dims]
    # PyTorch's avg_pool3d refuses an input smaller than its kernel, padding or not
    window_padding = [0] * dims if kind == "avg" and dims == 3 else padding
    sizes = draw(input_sizes(kernel, window_padding, dilation, largest))
    fields = {
        "op": f"{kind}pool{dims}d",
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "ceil_mode": draw(st.booleans()),
    }
    if kind == "max":
        fields["dilation"] = dilation
    else:
        fields["count_include_pad"] = draw(st.booleans())
    # a dilated window can fall wholly into the padding, where PyTorch's max pool gives -inf
    membership, _ = ref.pool_windows(sizes, kernel, stride, padding, dilation, fields["ceil_mode"])
    assume(membership.sum(axis=1).min() > 0)
    return fields, [draw(st.integers(1, 3)), *sizes], dilation


def node_data(fields: dict, input_shape: list[int], seed: int, x_positive: bool = False):
    """Graph, input batch of two, output relevance of mixed sign, weight, bias, A."""
    graph = single_node_graph(fields, input_shape, seed)
    x = random_like((2, *input_shape), seed + 1)
    if x_positive:
        x = x.abs()
    relevance = random_like((2, *graph.output_shape), seed + 2)
    weight, bias = weight_and_bias(graph, fields)
    return graph, x, relevance, weight, bias, ref.affine_fn(fields)


# --------------------------------------------------------------------------- affine rules


@REFERENCE_SETTINGS
@given(
    node=affine_nodes,
    seed=seeds,
    epsilon=st.sampled_from([0.0, 1e-6, 0.5]),
    use_bias=st.booleans(),
)
def test_epsilon_rule_is_x_times_gradient_of_z_times_relevance_over_stabilised_z(
    node, seed, epsilon, use_bias
):
    fields, shape = node
    graph, x, relevance, weight, bias, f = node_data(fields, shape, seed)
    rule = {"name": "epsilon", "epsilon": epsilon, "bias": use_bias}
    expected = ref.epsilon_reference(f, x, weight, bias, relevance, epsilon, use_bias)
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


@REFERENCE_SETTINGS
@given(
    node=affine_nodes,
    seed=seeds,
    use_bias=st.booleans(),
    stab=st.sampled_from([("zero", 0.0), ("epsilon", 1e-3)]),
)
def test_zplus_rule_is_modified_gradient_with_positive_weights_on_positive_inputs(
    node, seed, use_bias, stab
):
    fields, shape = node
    graph, x, relevance, weight, bias, f = node_data(fields, shape, seed)
    rule = {"name": "zplus", "bias": use_bias, "stabilizer": stab[0], "epsilon": stab[1]}
    expected = ref.zplus_reference(f, x, weight, bias, relevance, use_bias, stab)
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


@REFERENCE_SETTINGS
@given(node=affine_nodes, seed=seeds, use_bias=st.booleans())
def test_zplus_rule_on_nonnegative_inputs_is_gradient_through_positive_weights(
    node, seed, use_bias
):
    """The ReLU-input case, where the engine takes its shortcut (no x⁻ terms)."""
    fields, shape = node
    graph, x, relevance, weight, bias, f = node_data(fields, shape, seed, x_positive=True)
    rule = {"name": "zplus", "bias": use_bias}
    expected = ref.zplus_reference(f, x, weight, bias, relevance, use_bias)
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


@REFERENCE_SETTINGS
@given(
    node=affine_nodes,
    seed=seeds,
    alpha_beta=st.sampled_from([(1.0, 0.0), (2.0, 1.0)]),
    use_bias=st.booleans(),
    stab=st.sampled_from([("zero", 0.0), ("epsilon", 1e-3)]),
)
def test_alphabeta_rule_is_alpha_positive_share_minus_beta_negative_share(
    node, seed, alpha_beta, use_bias, stab
):
    fields, shape = node
    graph, x, relevance, weight, bias, f = node_data(fields, shape, seed)
    alpha, beta = alpha_beta
    rule = {
        "name": "alphabeta",
        "alpha": alpha,
        "beta": beta,
        "bias": use_bias,
        "stabilizer": stab[0],
        "epsilon": stab[1],
    }
    expected = ref.alphabeta_reference(f, x, weight, bias, relevance, alpha, beta, use_bias, stab)
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


def _bounds_of_x_shape(bounds, x: torch.Tensor) -> torch.Tensor:
    """Scalar or per-channel bounds written out as a full tensor of x's shape."""
    values = torch.as_tensor(bounds, dtype=x.dtype)
    if values.dim() == 1:
        values = values.reshape(1, -1, *([1] * (x.dim() - 2)))
    return values.expand_as(x).clone()


@REFERENCE_SETTINGS
@given(node=affine_nodes, seed=seeds, low=st.floats(-3, -0.5), high=st.floats(0.5, 3))
def test_zbeta_rule_with_scalar_bounds_subtracts_bound_shares(node, seed, low, high):
    fields, shape = node
    graph, x, relevance, weight, _, f = node_data(fields, shape, seed)
    # strictly inside the bounds: at the bounds z can be 0 up to rounding, and the reference's
    # x⊙∇ₓ − l⊙∇_l form then cancels huge terms (the engine's (x−l)⊙… form does not)
    x = low + (high - low) * torch.sigmoid(x)
    rule = {"name": "zbeta", "low": low, "high": high}
    expected = ref.zbeta_reference(
        f, x, weight, _bounds_of_x_shape(low, x), _bounds_of_x_shape(high, x), relevance
    )
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


@pytest.mark.filterwarnings("ignore::relgraph.RelgraphWarning")  # x outside [l, h] on purpose
@REFERENCE_SETTINGS
@given(node=affine_nodes, seed=seeds)
def test_zbeta_rule_with_per_channel_bounds_uses_each_channels_bounds(node, seed):
    fields, shape = node
    graph, x, relevance, weight, _, f = node_data(fields, shape, seed)
    channels = shape[0]
    low = tuple(-1.0 - 0.5 * c for c in range(channels))
    high = tuple(0.5 + 0.25 * c for c in range(channels))
    rule = {"name": "zbeta", "low": list(low), "high": list(high), "stabilizer": "epsilon"}
    expected = ref.zbeta_reference(
        f,
        x,
        weight,
        _bounds_of_x_shape(low, x),
        _bounds_of_x_shape(high, x),
        relevance,
        ("epsilon", 1e-6),
    )
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


@pytest.mark.filterwarnings("ignore::relgraph.RelgraphWarning")  # x outside [l, h] on purpose
@REFERENCE_SETTINGS
@given(node=conv_nodes(min_padding=1), seed=seeds)
def test_zbeta_bounds_are_zero_on_zero_padded_positions(node, seed):
    """The reference pads x, l and h with explicit zeros (``F.pad``) and then convolves
    without padding: a padded position contributes neither x nor a bound."""
    fields, shape = node
    graph, x, relevance, weight, _, _ = node_data(fields, shape, seed)
    low, high = -2.0, 1.5
    expected = ref.zbeta_reference(
        ref.padded_conv_fn(fields),
        x,
        weight,
        _bounds_of_x_shape(low, x),
        _bounds_of_x_shape(high, x),
        relevance,
    )
    rule = {"name": "zbeta", "low": low, "high": high}
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


@REFERENCE_SETTINGS
@given(
    node=affine_nodes,
    seed=seeds,
    gamma=st.sampled_from([0.0, 0.25, 1.0]),
    stab=st.sampled_from([("zero", 0.0), ("epsilon", 1e-3)]),
    use_bias=st.booleans(),
)
def test_gamma_rule_shares_positive_outputs_by_w_up_and_negative_outputs_by_w_down(
    node, seed, gamma, stab, use_bias
):
    fields, shape = node
    graph, x, relevance, weight, bias, f = node_data(fields, shape, seed)
    rule = {
        "name": "gamma",
        "gamma": gamma,
        "stabilizer": stab[0],
        "epsilon": stab[1],
        "bias": use_bias,
    }
    expected = ref.gamma_reference(f, x, weight, bias, relevance, gamma, stab, use_bias)
    assert_matches(engine_relevance(graph, rule, x, relevance), expected)


@REFERENCE_SETTINGS
@given(node=affine_nodes, seed=seeds)
def test_flat_rule_is_gradient_of_all_ones_map(node, seed):
    fields, shape = node
    graph, x, relevance, weight, _, f = node_data(fields, shape, seed)
    expected = ref.flat_reference(f, x.shape, weight, relevance)
    assert_matches(engine_relevance(graph, "flat", x, relevance), expected)


@REFERENCE_SETTINGS
@given(node=affine_nodes, seed=seeds)
def test_wsquare_rule_is_gradient_of_squared_weight_map_on_ones(node, seed):
    fields, shape = node
    graph, x, relevance, weight, _, f = node_data(fields, shape, seed)
    expected = ref.wsquare_reference(f, x.shape, weight, relevance)
    assert_matches(engine_relevance(graph, "wsquare", x, relevance), expected)


@pytest.mark.filterwarnings("ignore::relgraph.RelgraphWarning")  # x outside [l, h] on purpose
@pytest.mark.parametrize(
    "rule",
    [
        {"name": "epsilon", "epsilon": 0.0, "bias": True},
        {"name": "zbeta", "low": -1.0, "high": 2.0},
        {"name": "gamma", "gamma": 0.5},
    ],
    ids=lambda r: r["name"],
)
def test_rules_that_read_the_cached_output_give_the_same_without_it(rule):
    """The engine reuses the node's forward output as z; without it the rule computes z."""
    fields = {
        "op": "conv2d",
        "out_channels": 4,
        "kernel_size": [3, 2],
        "stride": [2, 1],
        "padding": [1, 1],
        "dilation": [1, 2],
        "groups": 2,
        "bias": True,
    }
    graph, x, relevance, *_ = node_data(fields, [4, 7, 6], seed=3)
    built = make_rule(rule)
    context = NodeContext(
        node="node",
        op=graph.op("node"),
        inputs=[x],
        input_shapes=[x.shape],
        output=None,
        tensors=graph.tensors("node"),
        cache={},
    )
    assert_matches(built(context, relevance)[0], engine_relevance(graph, rule, x, relevance))


def test_zero_stabilizer_gives_zero_relevance_where_z_is_zero():
    """A unit whose weights are all zero has z = 0: it passes on nothing, and no NaN."""
    graph, x, relevance, *_ = node_data({"op": "linear", "out_features": 3, "bias": False}, [4], 5)
    graph.tensors("node")["weight"][1] = 0.0
    only_dead_unit = torch.zeros_like(relevance)
    only_dead_unit[:, 1] = relevance[:, 1]
    for rule in (
        "zplus",
        {"name": "alphabeta", "alpha": 2, "beta": 1},
        {"name": "epsilon", "epsilon": 0.0},
    ):
        assert_matches(engine_relevance(graph, rule, x, only_dead_unit), torch.zeros_like(x))


# --------------------------------------------------------------------------- structural


@pytest.mark.parametrize(
    ("fields", "shape"),
    [
        ({"op": "relu"}, [3, 4]),
        ({"op": "sigmoid"}, [3, 4]),
        ({"op": "silu"}, [2, 3, 4]),
        ({"op": "dropout", "p": 0.5}, [3, 4]),
        ({"op": "identity"}, [2, 3, 4]),
        ({"op": "flatten"}, [2, 3, 4]),
        ({"op": "reshape", "shape": [4, -1]}, [2, 3, 4]),
    ],
    ids=lambda v: v["op"] if isinstance(v, dict) else None,
)
def test_pass_rule_hands_relevance_on_reshaped_to_the_input(fields, shape):
    graph = single_node_graph(fields, shape, seed=11)
    x = random_like((2, *shape), 12)
    relevance = random_like((2, *graph.output_shape), 13)
    expected = np.reshape(relevance.numpy(), x.shape)  # C order, as torch lays out memory
    assert_matches(engine_relevance(graph, "pass", x, relevance), expected)


# --------------------------------------------------------------------------- pooling


def pool_membership(fields: dict, shape: list[int], dilation):
    return ref.pool_windows(
        shape[1:],
        fields["kernel_size"],
        fields["stride"],
        fields["padding"],
        dilation,
        fields["ceil_mode"],
    )


def pool_data(fields, shape, seed, x_positive=False):
    graph = single_node_graph(fields, shape, seed)
    x = random_like((2, *shape), seed + 1)
    if x_positive:
        x = x.abs()
    relevance = random_like((2, *graph.output_shape), seed + 2)
    return graph, x, relevance


@REFERENCE_SETTINGS
@given(node=st.one_of(pool_nodes("max"), pool_nodes("avg")), seed=seeds)
def test_reference_windows_are_the_windows_pytorch_pools(node, seed):
    """The window loops reproduce the forward pass: max of each window for a max pool, sum
    over the real inputs divided by their count for an average pool that excludes padding."""
    fields, shape, dilation = node
    graph, x, _ = pool_data(fields, shape, seed)
    membership, out_size = pool_membership(fields, shape, dilation)
    assert tuple(graph.output_shape[1:]) == out_size
    if fields["op"].startswith("max"):
        expected = ref.window_max(x, membership)[0]
    else:
        graph.op("node").attrs["count_include_pad"] = False
        values = x.numpy().reshape(2, shape[0], -1)
        expected = (values @ membership.T) / membership.sum(axis=1)
    output = graph.forward(x).output
    assert_matches(output.reshape(expected.shape), expected)


@REFERENCE_SETTINGS
@given(node=pool_nodes("max"), seed=seeds)
def test_winner_take_all_routes_each_window_to_its_argmax(node, seed):
    fields, shape, dilation = node
    graph, x, relevance = pool_data(fields, shape, seed)
    membership, _ = pool_membership(fields, shape, dilation)
    expected = ref.winner_take_all_reference(x, relevance, membership)
    assert_matches(engine_relevance(graph, "winner-take-all", x, relevance), expected)


@REFERENCE_SETTINGS
@given(node=st.one_of(pool_nodes("max"), pool_nodes("avg")), seed=seeds)
def test_proportional_rule_gives_each_input_its_share_of_every_window_sum(node, seed):
    fields, shape, dilation = node
    graph, x, relevance = pool_data(fields, shape, seed, x_positive=True)
    membership, _ = pool_membership(fields, shape, dilation)
    expected = ref.proportional_pool_reference(x, relevance, membership)
    assert_matches(engine_relevance(graph, "proportional", x, relevance), expected)


@REFERENCE_SETTINGS
@given(node=st.one_of(pool_nodes("max"), pool_nodes("avg")), seed=seeds)
def test_uniform_rule_divides_each_window_by_its_count_of_real_inputs(node, seed):
    fields, shape, dilation = node
    graph, x, relevance = pool_data(fields, shape, seed)
    membership, _ = pool_membership(fields, shape, dilation)
    expected = ref.uniform_pool_reference(x.shape, relevance, membership)
    assert_matches(engine_relevance(graph, "uniform", x, relevance), expected)


@st.composite
def adaptive_nodes(draw):
    sizes = [draw(st.integers(1, 7)) for _ in range(3)]
    out = [draw(st.integers(1, n + 2)) for n in sizes]  # bins may overlap when out > n/2
    return {"op": "adaptive_avgpool3d", "output_size": out}, [draw(st.integers(1, 3)), *sizes]


@REFERENCE_SETTINGS
@given(node=adaptive_nodes(), seed=seeds)
def test_adaptive_avgpool_reference_bins_are_pytorchs(node, seed):
    fields, shape = node
    graph, x, _ = pool_data(fields, shape, seed)
    membership, _ = ref.adaptive_windows(shape[1:], fields["output_size"])
    values = x.numpy().reshape(2, shape[0], -1)
    expected = (values @ membership.T) / membership.sum(axis=1)
    assert_matches(graph.forward(x).output.reshape(expected.shape), expected)


@REFERENCE_SETTINGS
@given(node=adaptive_nodes(), seed=seeds)
def test_uniform_rule_on_adaptive_avgpool_divides_each_bin_by_its_size(node, seed):
    fields, shape = node
    graph, x, relevance = pool_data(fields, shape, seed)
    membership, _ = ref.adaptive_windows(shape[1:], fields["output_size"])
    expected = ref.uniform_pool_reference(x.shape, relevance, membership)
    assert_matches(engine_relevance(graph, "uniform", x, relevance), expected)


@REFERENCE_SETTINGS
@given(node=adaptive_nodes(), seed=seeds)
def test_proportional_rule_on_adaptive_avgpool_shares_each_bin_sum(node, seed):
    fields, shape = node
    graph, x, relevance = pool_data(fields, shape, seed, x_positive=True)
    membership, _ = ref.adaptive_windows(shape[1:], fields["output_size"])
    expected = ref.proportional_pool_reference(x, relevance, membership)
    assert_matches(engine_relevance(graph, "proportional", x, relevance), expected)


# --------------------------------------------------------------------------- merges


def merge_context(op_name: str, inputs: list[torch.Tensor], **fields) -> NodeContext:
    return NodeContext(
        node=op_name,
        op=OPS[op_name](**fields),
        inputs=inputs,
        input_shapes=[t.shape for t in inputs],
        output=None,
        tensors={},
        cache={},
    )


@settings(max_examples=30, deadline=None)
@given(
    count=st.integers(2, 4), shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), seed=seeds
)
def test_split_rule_on_add_shares_relevance_by_each_addends_contribution(count, shape, seed):
    inputs = [random_like((2, *shape), seed + i) for i in range(count)]
    relevance = random_like((2, *shape), seed + count)
    expected = ref.add_split_reference(inputs, relevance)
    for actual, wanted in zip(
        make_rule("split")(merge_context("add", inputs), relevance), expected
    ):
        assert_matches(actual, wanted)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_epsilon_split_gives_signed_zero_sums_the_shares_of_sign_0_equal_plus_1(dtype):
    # the stabiliser forms ε·sign(z) as copysign(ε, z): z = −0 takes −ε, not +ε; the shares
    # must still be those of stab(z) = z + ε·sign(z) with sign(0) = +1, value for value
    zeros = [(-0.0, -0.0), (0.0, -0.0), (-0.0, 0.0), (0.0, 0.0), (1.0, -1.0), (-1.0, 1.0)]
    values = [(1.5, -0.25), (-3.0, 2.0), (1e-7, -2e-7), (0.0, 5e-7), (-0.0, -4e-7)]
    a = torch.tensor([[p for p, _ in zeros + values]], dtype=dtype)
    b = torch.tensor([[q for _, q in zeros + values]], dtype=dtype)
    relevance = torch.linspace(-2.0, 3.0, a.shape[1], dtype=dtype)[None]
    eps = 1e-6
    total = a.numpy() + b.numpy()
    stabilised = total + np.where(total >= 0, eps, -eps).astype(total.dtype)  # ±0 ≥ 0
    share = relevance.numpy() / stabilised
    rule = make_rule({"name": "split", "stabilizer": "epsilon", "epsilon": eps})
    shares = rule(merge_context("add", [a, b]), relevance)
    for actual, x in zip(shares, (a, b)):
        assert np.isfinite(actual.numpy()).all()
        np.testing.assert_array_equal(actual.numpy(), x.numpy() * share)


@settings(max_examples=30, deadline=None)
@given(
    count=st.integers(2, 4), shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), seed=seeds
)
def test_proportional_rule_on_add_equals_split(count, shape, seed):
    inputs = [random_like((2, *shape), seed + i) for i in range(count)]
    relevance = random_like((2, *shape), seed + count)
    expected = ref.add_split_reference(inputs, relevance)
    shares = make_rule("proportional")(merge_context("add", inputs), relevance)
    for actual, wanted in zip(shares, expected):
        assert_matches(actual, wanted)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), seed=seeds)
def test_split_rule_on_concat_slices_relevance_back_to_each_input(data, seed):
    rank = data.draw(st.integers(1, 4))
    shape = data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
    dim = data.draw(st.integers(1, rank))
    widths = data.draw(st.lists(st.integers(1, 3), min_size=2, max_size=4))
    inputs = []
    for i, width in enumerate(widths):
        input_shape = [2, *shape]
        input_shape[dim] = width
        inputs.append(random_like(input_shape, seed + i))
    relevance = random_like(torch.cat(inputs, dim=dim).shape, seed + len(widths))
    expected = ref.concat_split_reference(inputs, relevance, dim)
    shares = make_rule("split")(merge_context("concat", inputs, dim=dim), relevance)
    for actual, wanted in zip(shares, expected):
        assert_matches(actual, wanted)


# --------------------------------------------------------------------------- means


@st.composite
def mean_nodes(draw):
    """A mean over a non-empty set of dimensions (batch = 0) of a rank 1-4 input."""
    rank = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    dims = draw(st.lists(st.integers(1, rank), min_size=1, max_size=rank, unique=True))
    return {"op": "mean", "dims": dims, "keepdim": draw(st.booleans())}, shape


@REFERENCE_SETTINGS
@given(node=mean_nodes(), seed=seeds)
def test_mean_forward_is_numpys_mean(node, seed):
    fields, shape = node
    graph = single_node_graph(fields, shape, seed)
    x = random_like((2, *shape), seed + 1)
    expected = np.mean(x.numpy(), axis=tuple(fields["dims"]), keepdims=fields["keepdim"])
    assert_matches(graph.forward(x).output, expected)


@REFERENCE_SETTINGS
@given(node=mean_nodes(), seed=seeds, x_positive=st.booleans())
def test_proportional_rule_on_mean_gives_each_input_its_share_of_the_sum(node, seed, x_positive):
    fields, shape = node
    graph = single_node_graph(fields, shape, seed)
    x = random_like((2, *shape), seed + 1)
    x = x.abs() if x_positive else x
    relevance = random_like((2, *graph.output_shape), seed + 2)
    expected = ref.mean_proportional_reference(x, relevance, fields["dims"], fields["keepdim"])
    assert_matches(engine_relevance(graph, "proportional", x, relevance), expected)


@REFERENCE_SETTINGS
@given(node=mean_nodes(), seed=seeds)
def test_uniform_rule_on_mean_divides_relevance_by_the_count_averaged(node, seed):
    fields, shape = node
    graph = single_node_graph(fields, shape, seed)
    x = random_like((2, *shape), seed + 1)
    relevance = random_like((2, *graph.output_shape), seed + 2)
    expected = ref.mean_uniform_reference(
        tuple(x.shape), relevance.numpy(), fields["dims"], fields["keepdim"]
    )
    assert_matches(engine_relevance(graph, "uniform", x, relevance), expected)


# --------------------------------------------------------------------------- products


@st.composite
def product_inputs(draw, seed):
    """A signal of rank 1-4 and a gate of its rank, broadcast along some dimensions (size 1
    there; may be none, then the two have one shape), in either slot order."""
    rank = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    broadcast = draw(st.lists(st.booleans(), min_size=rank, max_size=rank))
    gate_shape = [1 if b else n for n, b in zip(shape, broadcast)]
    signal = draw(st.integers(0, 1))
    shapes = [shape, gate_shape] if signal == 0 else [gate_shape, shape]
    inputs = [random_like((2, *s), seed + i) for i, s in enumerate(shapes)]
    return inputs, signal


@REFERENCE_SETTINGS
@given(data=st.data(), seed=seeds)
def test_signal_take_all_gives_the_signal_all_relevance_and_the_gate_none(data, seed):
    inputs, signal = data.draw(product_inputs(seed))
    ctx = merge_context("mul", inputs)
    relevance = random_like((inputs[0] * inputs[1]).shape, seed + 2)
    expected = ref.signal_take_all_reference([x.shape for x in inputs], relevance, signal)
    if inputs[0].shape == inputs[1].shape:  # nothing broadcast: the rule cannot tell
        with pytest.raises(relgraph.RuleError, match="signal: 0 or signal: 1"):
            make_rule("signal-take-all")(ctx, relevance)
        handed = make_rule({"name": "signal-take-all", "signal": signal})(ctx, relevance)
    else:
        handed = make_rule("signal-take-all")(ctx, relevance)
    assert len(handed) == 2
    for actual, wanted in zip(handed, expected):
        assert_matches(actual, wanted)
    assert not handed[1 - signal].any()


@REFERENCE_SETTINGS
@given(data=st.data(), seed=seeds)
def test_signal_take_all_forced_onto_the_broadcast_input_sums_relevance_over_the_broadcast(
    data, seed
):
    inputs, signal = data.draw(product_inputs(seed))
    gate = 1 - signal
    relevance = random_like((inputs[0] * inputs[1]).shape, seed + 2)
    handed = make_rule({"name": "signal-take-all", "signal": gate})(
        merge_context("mul", inputs), relevance
    )
    expected = ref.signal_take_all_reference([x.shape for x in inputs], relevance, gate)
    for actual, wanted in zip(handed, expected):
        assert_matches(actual, wanted)
    # the total is kept: the adjoint of a broadcast is a sum
    torch.testing.assert_close(handed[gate].flatten(1).sum(1), relevance.flatten(1).sum(1))


def test_signal_take_all_refuses_a_slot_other_than_0_or_1():
    with pytest.raises(relgraph.RuleError, match="signal must be the slot 0 or 1, got 2"):
        make_rule({"name": "signal-take-all", "signal": 2})


def test_signal_take_all_where_neither_input_has_the_output_shape_says_so():
    inputs = [random_like((2, 3, 1), 1), random_like((2, 1, 4), 2)]
    ctx = merge_context("mul", inputs)
    with pytest.raises(relgraph.RuleError, match="neither of the inputs .* is shaped like"):
        make_rule("signal-take-all")(ctx, random_like((2, 3, 4), 3))


# --------------------------------------------------------------------------- full-size C3D


def test_deep_taylor_paper_on_full_size_c3d_equals_layerwise_autograd_reference():
    """The paper's rule set on the full C3D (one 3×16×112×112 clip of preprocessed values)
    equals the functional C3D explained layer by layer with autograd: in float64 to rounding;
    in float32 (the default) to 1e-4 of the float64 reference's total, by L1.

    The float32 comparison is by L1, not entry by entry: a max pool's winner is decided by
    rounding where a window's two largest entries differ by less than float32 resolves, and
    two float32 computations that round differently (in different memory layouts) may route
    that window's relevance to different inputs, a large difference at a few entries.
    Measured on this clip against float64: the default layout's float32 relevance is off by
    0.6 % of the peak at its worst entry and 1.0e-5 of the total by L1; channels-last's
    (relgraph's choice on CPU) by 8.8e-7 and 3.0e-7."""
    torch.manual_seed(0)
    graph = relgraph.load_architecture("c3d")
    x = torch.empty(1, 3, 16, 112, 112).uniform_(-102.0, 153.0)
    explanation = relgraph.explanation(graph, x, rules="deep-taylor-paper", node_relevance=True)
    weights = {name: w.double() for name, w in graph.state_dict().items()}
    expected, logits, predicted = ref.c3d_deep_taylor(weights, x.double(), low=-102.0, high=165.0)
    assert int(explanation.target[0]) == predicted
    torch.testing.assert_close(
        explanation.output.double(), logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max())
    )
    total = float(expected.abs().sum())
    float32_error = float((explanation.relevance.double() - expected).abs().sum())
    assert float32_error <= 1e-4 * total
    assert abs(float(explanation.relevance.sum()) - float(expected.sum())) <= 1e-5 * total

    exact = relgraph.load_architecture("c3d", dtype=torch.float64, init="none")
    exact.load_weights(weights)
    actual = relgraph.explain(exact, x.double(), rules="deep-taylor-paper", target=predicted)
    assert float((actual - expected).abs().max()) <= 1e-10 * float(expected.abs().max())


@pytest.mark.parametrize(
    "spec",
    [{"name": "zbeta", "low": -1.0, "high": 1.0}, {"name": "flat"}, {"name": "wsquare"}],
    ids=lambda spec: spec["name"],
)
def test_rules_without_a_bias_term_refuse_bias_true(spec):
    """Their formulas have no bias (zβ's cancels), so ``bias: true`` would be ignored."""
    with pytest.raises(relgraph.RuleError, match="no bias term"):
        make_rule({**spec, "bias": True})


def test_bias_true_is_refused_naming_the_preset_file_and_line_or_the_node(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nextends: base\nrules:\n"
        "  - {ops: [linear], rule: {name: zbeta, low: -1, high: 1, bias: true}}\n"
    )
    with pytest.raises(relgraph.RuleError, match=r"mine\.yaml:4: .*no bias term"):
        relgraph.rules.preset(path)
    with pytest.raises(relgraph.RuleError, match=r"node 'conv1'.*no bias term"):
        relgraph.rules.preset("epsilon-plus").override("conv1", {"name": "flat", "bias": True})


#: every rule with a ``bias`` parameter, and what bias: true means (tested above)
BIAS_OPTIONS = {
    "epsilon": "b in z",
    "zplus": "b⁺ in z",
    "alphabeta": "b⁺ in zα, b⁻ in zβ",
    "gamma": "b + γb⁺ in z↑, b + γb⁻ in z↓",
    "zbeta": "refused",
    "flat": "refused",
    "wsquare": "refused",
}


def test_every_rule_with_a_bias_parameter_is_covered():
    from relgraph.rules.registry import RULES

    with_bias = {
        name
        for name, cls in RULES.items()
        if any(f.name == "bias" for f in dataclasses.fields(cls))
    }
    assert with_bias == set(BIAS_OPTIONS)
