"""Compiled graphs: the shipped architectures, their structure, shapes and parameters."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

import relgraph
from relgraph.engine.canonize import canonical

# The layer table of /work/shared/c3d.md, typed in from the document: output shape (C, T, H, W)
# of every layer. Each conv and fc6/fc7 is followed by a ReLU (and fc6/fc7 by dropout) that
# keep its shape.
C3D_TABLE = {
    "conv1": (64, 16, 112, 112),
    "pool1": (64, 16, 56, 56),
    "conv2": (128, 16, 56, 56),
    "pool2": (128, 8, 28, 28),
    "conv3a": (256, 8, 28, 28),
    "conv3b": (256, 8, 28, 28),
    "pool3": (256, 4, 14, 14),
    "conv4a": (512, 4, 14, 14),
    "conv4b": (512, 4, 14, 14),
    "pool4": (512, 2, 7, 7),
    "conv5a": (512, 2, 7, 7),
    "conv5b": (512, 2, 7, 7),
    "pool5": (512, 1, 4, 4),
    "flatten": (8192,),
    "fc6": (4096,),
    "fc7": (4096,),
    "fc8": (101,),
}
C3D_FOLLOWERS = {
    "relu1": "conv1",
    "relu2": "conv2",
    "relu3a": "conv3a",
    "relu3b": "conv3b",
    "relu4a": "conv4a",
    "relu4b": "conv4b",
    "relu5a": "conv5a",
    "relu5b": "conv5b",
    "relu6": "fc6",
    "drop6": "fc6",
    "relu7": "fc7",
    "drop7": "fc7",
}
C3D_CONV_CHANNELS = [(3, 64), (64, 128), (128, 256), (256, 256)] + [(256, 512)] + [(512, 512)] * 3
C3D_LINEAR_FEATURES = [(8192, 4096), (4096, 4096), (4096, 101)]


@pytest.fixture(scope="module")
def c3d_structure() -> relgraph.Graph:
    return relgraph.load_architecture("c3d", init="none")


def test_shipped_architectures_include_c3d_tiny_c3d_and_resnet_tiny():
    assert {"c3d", "c3d-tiny", "resnet-tiny"} <= set(relgraph.shipped_architectures())


@pytest.mark.parametrize("name", relgraph.shipped_architectures())
def test_shipped_architecture_compiles_with_a_shape_for_every_node(name):
    graph = relgraph.load_architecture(name, init="none")

    assert nx.is_directed_acyclic_graph(graph.graph)
    assert all(len(graph.graph.nodes[n]["shape"]) >= 1 for n in graph.order)


def test_c3d_input_is_3_by_16_by_112_by_112(c3d_structure):
    assert c3d_structure.input_shape == (3, 16, 112, 112)


def test_c3d_every_node_has_the_output_shape_of_the_c3d_md_table(c3d_structure):
    expected = {"input": (3, 16, 112, 112), **C3D_TABLE}
    expected.update({node: C3D_TABLE[layer] for node, layer in C3D_FOLLOWERS.items()})

    actual = {node: c3d_structure.graph.nodes[node]["shape"] for node in c3d_structure.order}

    assert actual == expected


def test_c3d_layers_have_the_hyperparameters_of_the_c3d_md_table(c3d_structure):
    ops = {node: c3d_structure.op(node) for node in c3d_structure.order}
    convs = [n for n in c3d_structure.order if ops[n].type == "conv3d"]
    assert [(ops[n].in_channels, ops[n].out_channels) for n in convs] == C3D_CONV_CHANNELS
    for node in convs:
        assert ops[node].kernel_size == (3, 3, 3)
        assert ops[node].stride == (1, 1, 1)
        assert ops[node].padding == (1, 1, 1)
        assert ops[node].bias
    assert (ops["pool1"].kernel_size, ops["pool1"].stride) == ((1, 2, 2), (1, 2, 2))
    for node in ("pool2", "pool3", "pool4", "pool5"):
        assert (ops[node].kernel_size, ops[node].stride) == ((2, 2, 2), (2, 2, 2))
    assert ops["pool5"].padding == (0, 1, 1)
    assert ops["drop6"].p == ops["drop7"].p == 0.5
    linears = [n for n in c3d_structure.order if ops[n].type == "linear"]
    assert [(ops[n].in_features, ops[n].out_features) for n in linears] == C3D_LINEAR_FEATURES


def test_c3d_parameter_count_is_the_sum_over_its_layers_about_78_million(c3d_structure):
    conv_parameters = sum(27 * c_in * c_out + c_out for c_in, c_out in C3D_CONV_CHANNELS)
    linear_parameters = sum(f_in * f_out + f_out for f_in, f_out in C3D_LINEAR_FEATURES)

    count = c3d_structure.num_parameters()

    assert count == conv_parameters + linear_parameters
    assert 77.5e6 < count < 78.5e6


def test_num_classes_parameter_sets_the_output_size():
    graph = relgraph.load_architecture("c3d-tiny", num_classes=10)

    assert graph.output_shape == (10,)
    assert graph.num_classes == 10
    assert graph.tensors("fc8")["weight"].shape == (10, 64)
    assert graph.params["num_classes"] == 10


def test_num_classes_parameter_applies_to_full_size_c3d():
    graph = relgraph.load_architecture("c3d", init="none", num_classes=10)

    assert graph.output_shape == (10,)
    assert graph.graph.nodes["fc8"]["tensor_shapes"]["weight"] == (10, 4096)


def test_unknown_parameter_is_an_error_suggesting_the_declared_one():
    with pytest.raises(relgraph.SpecError, match=r"no parameter 'num_class'.*did you mean"):
        relgraph.load_architecture("c3d", init="none", num_class=10)


def test_unknown_parameter_error_names_the_architecture_file():
    with pytest.raises(relgraph.RelgraphError) as caught:
        relgraph.load_architecture("c3d-tiny", init="none", widht=4)

    assert caught.value.file.endswith("c3d-tiny.yaml")
    assert "did you mean 'width'" in str(caught.value)


def test_unknown_architecture_name_suggests_the_closest_shipped_one():
    with pytest.raises(relgraph.SpecError, match="did you mean 'c3d-tiny'"):
        relgraph.load_architecture("c3d_tiny")


def test_resnet_tiny_has_a_node_with_two_predecessors():
    graph = relgraph.load_architecture("resnet-tiny", init="none")

    merges = {n for n in graph.order if graph.graph.in_degree(n) == 2}

    assert merges == {"res_add", "join"}
    assert graph.inputs_of("res_add") == ["res_conv2", "stem_relu"]
    assert graph.inputs_of("join") == ["branch_a", "branch_b_pool"]


def test_resnet_tiny_has_nodes_with_two_successors():
    graph = relgraph.load_architecture("resnet-tiny", init="none")

    forks = {n for n in graph.order if graph.graph.out_degree(n) == 2}

    assert forks == {"stem_relu", "res_relu2"}
    assert set(graph.graph.successors("res_relu2")) == {"branch_a", "branch_b"}


def test_edges_record_the_input_slot_in_declaration_order():
    graph = relgraph.load_architecture("resnet-tiny", init="none")

    assert graph.graph.edges["branch_a", "join"]["slot"] == 0
    assert graph.graph.edges["branch_b_pool", "join"]["slot"] == 1


def test_concat_output_has_the_channels_of_both_branches():
    graph = relgraph.load_architecture("resnet-tiny", init="none", width=3)

    assert graph.graph.nodes["join"]["shape"] == (6, 8, 16, 16)


@pytest.mark.parametrize("name", ["c3d", "resnet-tiny"])
def test_order_puts_every_node_after_all_its_inputs(name):
    graph = relgraph.load_architecture(name, init="none")
    position = {node: i for i, node in enumerate(graph.order)}

    assert graph.order[0] == graph.input
    for source, target in graph.graph.edges:
        assert position[source] < position[target]


def test_summary_lists_every_node_once_and_the_total_parameter_count():
    graph = relgraph.load_architecture("resnet-tiny", init="none")

    summary = graph.summary()

    first_words = [line.split()[0] for line in summary.splitlines() if line.strip()]
    for node in graph.order:
        assert first_words.count(node) == 1
    total_line = next(line for line in summary.splitlines() if line.startswith("total"))
    assert total_line.split()[-1] == f"{graph.num_parameters():,}"


def test_summary_of_c3d_shows_each_nodes_parameter_count(c3d_structure):
    rows = {line.split()[0]: line.split() for line in c3d_structure.summary().splitlines()}

    assert rows["fc6"][-1] == f"{8192 * 4096 + 4096:,}"
    assert rows["conv1"][-1] == f"{27 * 3 * 64 + 64:,}"
    assert rows["relu1"][-1] == "0"


def test_init_none_creates_no_tensors_but_knows_their_shapes():
    graph = relgraph.load_architecture("c3d-tiny", init="none")

    assert graph.state_dict() == {}
    assert graph.graph.nodes["conv1"]["tensor_shapes"] == {"weight": (8, 3, 3, 3, 3), "bias": (8,)}


def test_same_seed_gives_the_same_initial_weights():
    first = relgraph.load_architecture("c3d-tiny", seed=7).state_dict()
    second = relgraph.load_architecture("c3d-tiny", seed=7).state_dict()

    assert all(torch.equal(first[k], second[k]) for k in first)


def test_different_seeds_give_different_initial_weights():
    first = relgraph.load_architecture("c3d-tiny", seed=7).state_dict()
    second = relgraph.load_architecture("c3d-tiny", seed=8).state_dict()

    assert not torch.equal(first["conv1.weight"], second["conv1.weight"])


def test_default_init_is_pytorchs_uniform_bound_one_over_sqrt_fan_in():
    graph = relgraph.load_architecture("c3d-tiny")
    weight = graph.tensors("conv2")["weight"]
    bound = 1 / math.sqrt(8 * 27)

    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.9 * bound


def test_unknown_init_is_an_error():
    with pytest.raises(relgraph.RelgraphError, match="init must be"):
        relgraph.load_architecture("c3d-tiny", init="random")


def test_load_architecture_with_dtype_float64_creates_float64_weights():
    graph = relgraph.load_architecture("resnet-tiny", dtype=torch.float64)

    assert graph.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in graph.state_dict().values())


def test_graph_without_weights_keeps_the_requested_dtype():
    graph = relgraph.load_architecture("c3d-tiny", init="none", dtype=torch.float64)

    assert graph.dtype == torch.float64


# ----------------------------------------------------------------------- bad input to forward


@pytest.fixture(scope="module")
def tiny() -> relgraph.Graph:
    return relgraph.load_architecture("c3d-tiny")


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 16, 32, 31), (1, 3, 8, 32, 32), (1, 1, 16, 32, 32), (3, 16, 32, 32), (1, 1, 3, 16, 32)],
)
def test_forward_refuses_an_input_of_the_wrong_shape(tiny, shape):
    with pytest.raises(relgraph.ShapeError, match=r"\[batch, 3, 16, 32, 32\]") as caught:
        tiny.forward(torch.zeros(shape))

    assert caught.value.node == "input"
    assert caught.value.file.endswith("c3d-tiny.yaml")


def test_forward_refuses_an_input_of_the_wrong_dtype(tiny):
    with pytest.raises(relgraph.ShapeError, match="torch.float64") as caught:
        tiny.forward(torch.zeros(1, 3, 16, 32, 32, dtype=torch.float64))

    assert caught.value.node == "input"


def test_forward_refuses_an_integer_input(tiny):
    with pytest.raises(relgraph.ShapeError, match="torch.uint8"):
        tiny.forward(torch.zeros(1, 3, 16, 32, 32, dtype=torch.uint8))


def test_forward_refuses_something_that_is_not_a_tensor(tiny):
    with pytest.raises(relgraph.ShapeError, match="torch.Tensor"):
        tiny.forward([[0.0]])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_refuses_an_input_with_nan_or_inf(bad, dtype):
    graph = relgraph.load_architecture("c3d-tiny", dtype=dtype)
    x = torch.zeros(2, 3, 16, 32, 32, dtype=dtype)
    x[1, 1, 2, 3, 4] = bad

    with pytest.raises(relgraph.ShapeError, match="NaN or Inf"):
        graph.forward(x)


def test_forward_refuses_a_graph_compiled_without_weights():
    graph = relgraph.load_architecture("c3d-tiny", init="none")

    with pytest.raises(relgraph.WeightsError, match="no weights for conv1.weight"):
        graph.forward(torch.zeros(1, 3, 16, 32, 32))


def test_forward_refuses_a_graph_whose_non_strict_load_left_a_tensor_out():
    source = relgraph.load_architecture("c3d-tiny").state_dict()
    del source["fc7.bias"]
    graph = relgraph.load_architecture("c3d-tiny", init="none")
    graph.load_weights(source, strict=False)

    with pytest.raises(relgraph.WeightsError, match=r"no weights for fc7\.bias \("):
        graph.forward(torch.zeros(1, 3, 16, 32, 32))


def test_the_canonized_view_refuses_a_folded_layer_whose_batch_norm_lacks_a_tensor():
    # the folded stem (stem_bn folded in) exists once the conv and every tensor of its
    # batch norm do: a non-strict load without the running variance leaves neither
    source = relgraph.load_architecture("resnet-tiny").state_dict()
    del source["stem_bn.running_var"]
    graph = relgraph.load_architecture("resnet-tiny", init="none")
    graph.load_weights(source, strict=False)
    view = canonical(graph)
    assert "stem" in view.folded.values()

    with pytest.raises(relgraph.WeightsError, match=r"no weights for stem\.weight, stem\.bias"):
        view.forward(torch.zeros(1, *graph.input_shape))
    graph.tensors("stem_bn")["running_var"] = torch.ones(graph.op("stem_bn").num_features)
    assert "weight" in view.tensors("stem") and "bias" in view.tensors("stem")
    assert "running_var" not in view.tensors("stem")
    view.forward(torch.zeros(1, *graph.input_shape))


# ----------------------------------------------------------------------- in-place forward ops


@pytest.mark.parametrize("name", ["c3d-tiny", "resnet-tiny", "r2plus1d-tiny", "x3d-xs"])
def test_forward_dropping_activations_gives_the_bits_of_the_forward_keeping_them(name):
    # keep=() lets relu, silu, sigmoid, add and mul write into an input nobody reads again;
    # keep=None runs every op out of place: the two must agree bit for bit, and x is untouched
    graph = relgraph.load_architecture(name, seed=3)
    x = torch.randn((2, *graph.input_shape), generator=torch.Generator().manual_seed(4))
    before = x.clone()
    kept = graph.forward(x).output
    dropped = graph.forward(x, keep=()).output
    assert torch.equal(kept, dropped)
    assert torch.equal(x, before)


SHARING = """
name: sharing
input: {name: input, shape: [4, 3]}
nodes:
  - {name: flat, op: flatten}
  - {name: act, op: relu}
  - {name: same, op: identity}
  - {name: view, op: reshape, shape: [12]}
  - {name: fc, op: linear, out_features: 5}
  - {name: relu_fc, op: relu}
  - {name: alias, op: identity}
  - {name: skip, op: add, inputs: [relu_fc, alias]}
  - {name: gate, op: sigmoid}
  - {name: gated, op: mul, inputs: [gate, skip]}
  - {name: out, op: add, inputs: [gated, alias]}
output: out
"""


def test_forward_in_place_never_writes_into_the_input_or_a_tensor_still_read():
    # act's input is a view of the caller's x; same and view share act's memory while act is
    # kept; relu_fc shares its memory with alias, read again by out; skip is read by gate
    # and by gated. Written in place, any of them would change the output
    graph = relgraph.architecture_from_yaml(SHARING, seed=0)
    x = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    reference = graph.forward(x)
    result = graph.forward(x, keep=("act",))
    assert torch.equal(x, before)
    assert torch.equal(result.activations["act"], torch.relu(before.flatten(1)))
    assert torch.equal(result.output, reference.output)
    r = torch.relu(reference.activations["fc"])
    torch.testing.assert_close(result.output, torch.sigmoid(2 * r) * 2 * r + r)


# ----------------------------------------------------------------------- signs by construction


@pytest.mark.parametrize("name", ["c3d-tiny", "resnet-tiny", "r2plus1d-tiny", "x3d-xs", "s3d"])
def test_nodes_nonnegative_by_construction_are_nonnegative_on_any_input(name):
    graph = relgraph.load_architecture(name, seed=5)
    x = 3 * torch.randn((1, *graph.input_shape), generator=torch.Generator().manual_seed(6))
    activations = graph.forward(x).activations
    found = graph.nonnegative_nodes()
    assert found, "every shipped model has ReLUs"
    for node in found:
        assert activations[node].min() >= 0, node
    # and the nodes left out can go negative here (convs, batch norms, swish, the logits)
    signed = [n for n in graph.order[1:] if graph.op(n).type.startswith(("conv", "linear"))]
    assert signed and not set(signed) & found


SIGNS = """
name: signs
input: {name: input, shape: [2, 8]}
nodes:
  - {name: flat, op: flatten}
  - {name: lin, op: linear, out_features: 8}
  - {name: act, op: relu, inputs: [lin]}
  - {name: gate, op: sigmoid, inputs: [lin]}
  - {name: both, op: mul, inputs: [act, gate]}
  - {name: mixed, op: add, inputs: [both, lin]}
  - {name: kept, op: add, inputs: [both, act]}
  - {name: pooled, op: identity, inputs: [kept]}
  - {name: swish, op: silu, inputs: [pooled]}
  - {name: out, op: add, inputs: [mixed, swish]}
output: out
"""


def test_nonnegative_nodes_follow_relu_and_sigmoid_through_ops_that_keep_signs():
    graph = relgraph.architecture_from_yaml(SIGNS)
    assert graph.nonnegative_nodes() == {"act", "gate", "both", "kept", "pooled"}
