"""Batches: explaining a batch gives each sample the relevance it gets on its own.

No rule may mix samples: the relevance of a batch equals the per-sample relevances stacked,
for random graphs, batch sizes, presets, targets and seeds.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from relgraph.rules import preset, preset_names
from strategies import graph_cases, one_torch_thread  # noqa: F401

import relgraph

PROPERTY = settings(max_examples=30, deadline=None)
PRESETS = {name: preset(name) for name in preset_names() if name != "base"}


def stacked(graph, x, **kwargs) -> torch.Tensor:
    """Each sample explained on its own, the results stacked."""
    return torch.cat([relgraph.explain(graph, x[i : i + 1], **kwargs) for i in range(len(x))])


def assert_same_relevance(batched: torch.Tensor, one_by_one: torch.Tensor) -> None:
    scale = one_by_one.abs().amax().item()
    torch.testing.assert_close(batched, one_by_one, rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.parametrize("name", sorted(PRESETS))
@PROPERTY
@given(case=graph_cases(dims=(1, 2, 3), channels=3, first_conv=True), batch=st.integers(2, 4))
def test_batch_relevance_is_the_per_sample_relevances_stacked(name, case, batch):
    graph = case.build()
    x = case.inputs(batch)
    kwargs = {"rules": PRESETS[name], "preprocess": "c3d-ucf101"}
    assert_same_relevance(relgraph.explain(graph, x, **kwargs), stacked(graph, x, **kwargs))


@PROPERTY
@given(case=graph_cases(), batch=st.integers(2, 4), data=st.data())
def test_batch_relevance_with_a_target_per_sample_is_the_per_sample_relevances_stacked(
    case, batch, data
):
    graph = case.build()
    x = case.inputs(batch)
    classes = graph.num_classes
    targets = data.draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch))
    batched = relgraph.explain(graph, x, targets, "epsilon-plus", "logit")
    one_by_one = torch.cat(
        [
            relgraph.explain(graph, x[i : i + 1], targets[i], "epsilon-plus", "logit")
            for i in range(batch)
        ]
    )
    assert_same_relevance(batched, one_by_one)


@PROPERTY
@given(case=graph_cases(), batch=st.integers(2, 4))
def test_every_node_relevance_of_a_batch_is_the_per_sample_node_relevances_stacked(case, batch):
    graph = case.build()
    x = case.inputs(batch)
    batched = relgraph.explanation(graph, x, rules="epsilon-alpha2-beta1", node_relevance=True)
    singles = [
        relgraph.explanation(graph, x[i : i + 1], rules="epsilon-alpha2-beta1", node_relevance=True)
        for i in range(batch)
    ]
    for node, relevance in batched.node_relevance.items():
        assert_same_relevance(relevance, torch.cat([s.node_relevance[node] for s in singles]))


def test_a_sample_gets_the_same_relevance_whichever_samples_share_its_batch():
    graph = relgraph.load_architecture("resnet-tiny", dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((1, *graph.input_shape), generator=generator, dtype=torch.float64)
    others = torch.randn((3, *graph.input_shape), generator=generator, dtype=torch.float64)
    alone = relgraph.explain(graph, sample, target=1)
    in_company = relgraph.explain(graph, torch.cat([others[:2], sample, others[2:]]), target=1)
    assert_same_relevance(in_company[2:3], alone)
