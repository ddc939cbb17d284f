"""The forward pass equals independent plain ``torch.nn`` models, node by node."""

from __future__ import annotations

import copy

import pytest
import torch
from reference_models import C3D, ResNetTiny, c3d_tiny_reference, relative_error

import relgraph


def clip_batch(batch: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
    """Clips with values like preprocessed video: 0..255 minus a mean of about 100."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *shape), generator=generator, dtype=dtype) * 255 - 100


@pytest.fixture(scope="module")
def full_c3d_reference() -> C3D:
    torch.manual_seed(0)
    return C3D().eval()


def reference_activations(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.activations(x)


def test_full_c3d_every_activation_matches_plain_torch_in_float64(full_c3d_reference):
    model = copy.deepcopy(full_c3d_reference).double()
    graph = relgraph.load_architecture("c3d", init="none", dtype=torch.float64)
    graph.load_weights(model.state_dict())
    x = clip_batch(1, (3, 16, 112, 112), torch.float64)

    expected = reference_activations(model, x)
    actual = graph.forward(x).activations

    assert actual.keys() == expected.keys()
    errors = {node: relative_error(actual[node], expected[node]) for node in expected}
    assert max(errors.values()) <= 1e-10, errors
    assert all(actual[n].dtype == torch.float64 for n in actual)


def test_full_c3d_output_matches_plain_torch_in_float32(full_c3d_reference):
    graph = relgraph.load_architecture("c3d", init="none")
    graph.load_weights(full_c3d_reference.state_dict())
    x = clip_batch(1, (3, 16, 112, 112), torch.float32, seed=1)

    expected = reference_activations(full_c3d_reference, x)
    actual = graph.forward(x).activations

    assert actual.keys() == expected.keys()
    errors = {node: relative_error(actual[node], expected[node]) for node in expected}
    assert max(errors.values()) <= 1e-4, errors
    assert actual["fc8"].shape == (1, 101)


def test_c3d_tiny_every_activation_matches_plain_torch():
    torch.manual_seed(1)
    model = c3d_tiny_reference().eval()
    graph = relgraph.load_architecture("c3d-tiny")
    graph.load_weights(model.state_dict())
    x = clip_batch(2, (3, 16, 32, 32), torch.float32)

    expected = reference_activations(model, x)
    actual = graph.forward(x).activations

    assert actual.keys() == expected.keys()
    for node in expected:
        assert relative_error(actual[node], expected[node]) <= 1e-5, node


@pytest.fixture
def resnet_tiny_reference() -> ResNetTiny:
    """``ResNetTiny`` whose batch norm has running statistics far from (0, 1)."""
    torch.manual_seed(2)
    model = ResNetTiny()
    model.train()
    with torch.no_grad():
        for _ in range(3):  # real running statistics, from batches with an offset and scale
            model(torch.randn(4, 3, 8, 16, 16) * 3 + 2)
        model.stem_bn.weight.uniform_(0.5, 2.0)
        model.stem_bn.bias.uniform_(-1.0, 1.0)
    return model.eval()


def test_resnet_tiny_reference_has_non_trivial_batchnorm_statistics(resnet_tiny_reference):
    bn = resnet_tiny_reference.stem_bn
    assert bn.running_mean.abs().min() > 0.01
    assert (bn.running_var - 1).abs().min() > 0.01


def test_resnet_tiny_every_activation_matches_hand_written_module(resnet_tiny_reference):
    model = resnet_tiny_reference.double()
    graph = relgraph.load_architecture("resnet-tiny", dtype=torch.float64)
    graph.load_weights(model.state_dict())
    x = clip_batch(3, (3, 8, 16, 16), torch.float64, seed=3) / 50

    expected = reference_activations(model, x)
    actual = graph.forward(x).activations

    assert actual.keys() == expected.keys()
    for node in expected:
        assert relative_error(actual[node], expected[node]) <= 1e-12, node


def test_batch_of_three_equals_three_single_clips():
    graph = relgraph.load_architecture("c3d-tiny", dtype=torch.float64, seed=4)
    batch = clip_batch(3, (3, 16, 32, 32), torch.float64, seed=4)

    together = graph.forward(batch).activations
    singles = [graph.forward(batch[i : i + 1]).activations for i in range(3)]

    for node, value in together.items():
        stacked = torch.cat([single[node] for single in singles])
        assert relative_error(value, stacked) <= 1e-12, node


def test_graph_to_float64_casts_every_weight_and_computes_in_float64():
    graph = relgraph.load_architecture("c3d-tiny", seed=5)
    same_weights_in_64 = relgraph.load_architecture("c3d-tiny", init="none", dtype=torch.float64)
    same_weights_in_64.load_weights(graph.state_dict())
    x = clip_batch(1, (3, 16, 32, 32), torch.float64, seed=5)

    graph.to(dtype=torch.float64)

    assert graph.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in graph.state_dict().values())
    assert graph(x).output.dtype == torch.float64
    assert torch.equal(graph(x).output, same_weights_in_64(x).output)


def test_forward_keep_holds_only_the_named_nodes_and_the_output():
    graph = relgraph.load_architecture("c3d-tiny")
    x = clip_batch(1, (3, 16, 32, 32), torch.float32)

    kept = graph.forward(x, keep=["conv1", "pool5"])

    assert set(kept.activations) == {"conv1", "pool5", "fc8"}


def test_forward_keep_does_not_change_the_values():
    graph = relgraph.load_architecture("resnet-tiny")
    x = clip_batch(2, (3, 8, 16, 16), torch.float32) / 50

    everything = graph.forward(x).activations
    kept = graph.forward(x, keep=["stem_relu", "join"]).activations

    for node in ("stem_relu", "join", "fc"):
        assert torch.equal(kept[node], everything[node])


def test_forward_keep_with_an_unknown_node_is_an_error():
    graph = relgraph.load_architecture("c3d-tiny")
    x = clip_batch(1, (3, 16, 32, 32), torch.float32)

    with pytest.raises(relgraph.GraphError, match="did you mean 'conv1'"):
        graph.forward(x, keep=["conv_1"])
