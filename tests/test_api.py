"""The public API follows torch's conventions: ``Graph.to`` as ``nn.Module.to``, one return
type per function, one meaning per parameter name."""

from __future__ import annotations

import inspect

import pytest
import torch

import relgraph


@pytest.fixture
def graph() -> relgraph.Graph:
    return relgraph.load_architecture("c3d-tiny")


def weights(graph: relgraph.Graph) -> list[torch.Tensor]:
    return [t for node in graph.order for t in graph.tensors(node).values()]


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((torch.float64,), {}),
        (("cpu", torch.float64), {}),
        ((torch.device("cpu"),), {"dtype": torch.float64}),
        ((), {"device": "cpu", "dtype": torch.float64}),
        ((torch.zeros(1, dtype=torch.float64),), {}),
    ],
)
def test_to_takes_the_forms_of_module_to_and_casts_as_module_to_does(graph, args, kwargs):
    module = torch.nn.Linear(2, 2)
    assert module.to(*args, **kwargs).weight.dtype == torch.float64  # the forms torch takes
    before = [t.clone() for t in weights(graph)]
    assert graph.to(*args, **kwargs) is graph
    assert graph.dtype == torch.float64
    for old, new in zip(before, weights(graph)):
        assert new.dtype == torch.float64
        assert torch.equal(new, old.to(torch.float64))


def test_to_with_a_device_alone_keeps_the_dtype(graph):
    graph.to(torch.float64)
    graph.to("cpu")
    assert graph.dtype == torch.float64 and graph.device == torch.device("cpu")


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (("tpu",), {}, "device"),
        ((torch.int64,), {}, "floating-point"),
        (("cpu", torch.float32, "x"), {}, "at most"),
        ((), {"memory": 1}, "device= and dtype="),
    ],
)
def test_to_refuses_what_module_to_refuses_with_an_argument_error(graph, args, kwargs, message):
    with pytest.raises(relgraph.ArgumentError, match=message) as info:
        graph.to(*args, **kwargs)
    assert isinstance(info.value, ValueError)


def test_explain_returns_a_tensor_and_explanation_an_explanation(graph):
    x = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    relevance = relgraph.explain(graph, x)
    full = relgraph.explanation(graph, x)
    kept = relgraph.explanation(graph, x, node_relevance=True)
    assert isinstance(relevance, torch.Tensor) and relevance.shape == x.shape
    assert isinstance(full, relgraph.Explanation) and full.node_relevance == {}
    assert set(kept.node_relevance) == set(graph.order)
    torch.testing.assert_close(full.relevance, relevance)
    torch.testing.assert_close(kept.relevance, relevance)


def test_explain_and_explanation_take_the_same_arguments():
    explain = inspect.signature(relgraph.explain).parameters
    explanation = inspect.signature(relgraph.explanation).parameters
    assert list(explanation) == [*explain, "node_relevance"]


def test_seed_means_a_random_seed_only():
    # the relevance the reverse pass starts from is named output_relevance wherever it is taken
    for function in (
        relgraph.explain,
        relgraph.explanation,
        relgraph.explain_with_rules,
        relgraph.explanation_with_rules,
        relgraph.discriminative,
    ):
        parameters = inspect.signature(function).parameters
        assert "seed" not in parameters, function.__name__
        assert "output_relevance" in parameters, function.__name__


def test_every_public_name_is_listed_once_and_resolves():
    assert len(relgraph.__all__) == len(set(relgraph.__all__))
    for name in relgraph.__all__:
        assert hasattr(relgraph, name), name


def test_argument_errors_are_value_errors_too():
    assert issubclass(relgraph.ArgumentError, relgraph.RelgraphError)
    assert issubclass(relgraph.ArgumentError, ValueError)


def test_every_public_name_is_in_the_api_page():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "reference" / "api.md").read_text()
    missing = [
        name
        for name in relgraph.__all__
        if f"relgraph.{name}`" not in page and f"`{name}`" not in page
    ]
    assert missing == []


def test_the_data_set_runner_runs_the_video_pipeline_steps():
    from relgraph.datasets import runner

    for step in ("select_clips", "explain_clips", "write_clip"):
        assert getattr(runner, step) is getattr(relgraph, step)
