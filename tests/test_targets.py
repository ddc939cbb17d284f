"""The start of the reverse pass: which class each sample explains, and the seed placed there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategies import one_torch_thread  # noqa: F401

import relgraph
from relgraph.errors import TargetError
from relgraph.io.labels import Labels

NET = """\
input: {shape: [2, 5, 5]}
nodes:
  - {name: conv, op: conv2d, out_channels: 3, kernel_size: 3}
  - {name: relu, op: relu}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out_features: 4}
"""
NAMES = ["ApplyEyeMakeup", "Archery", "Basketball", "Biking"]


@pytest.fixture(scope="module")
def net():
    return relgraph.architecture_from_yaml(NET, dtype=torch.float64, seed=1)


@pytest.fixture(scope="module")
def batch(net):
    return torch.randn(
        (3, 2, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )


def explain(net, batch, target="auto", output_relevance="onehot", **kwargs):
    return relgraph.explanation(
        net,
        batch,
        target,
        rules="epsilon-plus",
        output_relevance=output_relevance,
        node_relevance=True,
        **kwargs,
    )


# --------------------------------------------------------------------------- seeds


def test_onehot_seed_is_one_at_each_samples_target_and_zero_elsewhere(net, batch):
    explanation = explain(net, batch, [0, 3, 1])
    expected = torch.zeros(3, 4, dtype=torch.float64)
    expected[[0, 1, 2], [0, 3, 1]] = 1.0
    assert torch.equal(explanation.output_relevance, expected)


def test_logit_seed_is_each_samples_target_logit_and_zero_elsewhere(net, batch):
    explanation = explain(net, batch, [2, 2, 0], output_relevance="logit")
    expected = torch.zeros(3, 4, dtype=torch.float64)
    for sample, target in enumerate([2, 2, 0]):
        expected[sample, target] = explanation.output[sample, target]
    assert torch.equal(explanation.output_relevance, expected)


def test_logit_seed_scales_each_samples_onehot_relevance_by_its_logit(net, batch):
    onehot = explain(net, batch, 1)
    logit = explain(net, batch, 1, output_relevance="logit")
    scale = onehot.output[:, 1].reshape(3, 1, 1, 1)
    torch.testing.assert_close(logit.relevance, onehot.relevance * scale)


def test_a_seed_tensor_is_where_the_reverse_pass_starts(net, batch):
    seed = torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    explanation = explain(net, batch, output_relevance=seed)
    assert torch.equal(explanation.output_relevance, seed)
    assert torch.equal(explanation.node_relevance["fc"], seed)


def test_a_onehot_seed_tensor_gives_the_relevance_of_that_target(net, batch):
    seed = torch.zeros(3, 4, dtype=torch.float64)
    seed[:, 2] = 1.0
    expected = explain(net, batch, 2).relevance
    torch.testing.assert_close(
        explain(net, batch, output_relevance=seed).relevance, expected, rtol=0, atol=0
    )


# --------------------------------------------------------------------------- targets


def test_auto_explains_each_samples_predicted_class(net, batch):
    explanation = explain(net, batch, "auto")
    assert torch.equal(explanation.target, explanation.output.argmax(dim=1))


def test_an_index_explains_that_class_for_every_sample(net, batch):
    assert explain(net, batch, 3).target.tolist() == [3, 3, 3]


def test_a_list_gives_each_sample_its_own_target(net, batch):
    assert explain(net, batch, [3, 0, 2]).target.tolist() == [3, 0, 2]


def test_a_tensor_of_indices_gives_each_sample_its_own_target(net, batch):
    assert explain(net, batch, torch.tensor([1, 2, 0])).target.tolist() == [1, 2, 0]


def test_numpy_integers_are_indices_like_python_ints(net, batch):
    assert explain(net, batch, np.int64(2)).target.tolist() == [2, 2, 2]
    assert explain(net, batch, np.array([3, 1, 0])).target.tolist() == [3, 1, 0]
    assert explain(net, batch, [np.int32(1), 0, "auto"]).target.tolist()[:2] == [1, 0]


def test_auto_in_a_list_explains_that_samples_prediction(net, batch):
    explanation = explain(net, batch, ["auto", 0, "auto"])
    predicted = explanation.output.argmax(dim=1).tolist()
    assert explanation.target.tolist() == [predicted[0], 0, predicted[2]]


def test_a_class_name_is_looked_up_in_the_labels(net, batch):
    labels = Labels.from_names(NAMES)
    assert explain(net, batch, "Basketball", labels=labels).target.tolist() == [2, 2, 2]


def test_class_names_per_sample_are_looked_up_in_a_plain_list_of_names(net, batch):
    explanation = explain(net, batch, ["Biking", "Archery", 0], labels=NAMES)
    assert explanation.target.tolist() == [3, 1, 0]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("target", [4, -1, [0, 1, 7]])
def test_an_index_beyond_the_classes_is_refused(net, batch, target):
    with pytest.raises(TargetError, match="out of range for 4 classes"):
        explain(net, batch, target)


def test_an_unknown_class_name_is_refused_with_the_closest_names(net, batch):
    with pytest.raises(TargetError, match="unknown class 'Basketbal'.*Did you mean 'Basketball'"):
        explain(net, batch, "Basketbal", labels=Labels.from_names(NAMES))


def test_a_class_name_without_labels_is_refused(net, batch):
    with pytest.raises(TargetError, match="no labels were given"):
        explain(net, batch, "Archery")


@pytest.mark.parametrize("target", [[0, 1], [0, 1, 2, 3]])
def test_a_list_of_targets_of_the_wrong_length_is_refused(net, batch, target):
    with pytest.raises(TargetError, match=r"one target per sample \(3\)"):
        explain(net, batch, target)


@pytest.mark.parametrize("shape", [(3, 5), (1, 4), (3, 4, 1), (4,)])
def test_a_seed_tensor_of_the_wrong_shape_is_refused(net, batch, shape):
    with pytest.raises(TargetError, match=r"output's shape \[3, 4\]"):
        explain(net, batch, output_relevance=torch.ones(shape, dtype=torch.float64))


def test_a_seed_tensor_with_nan_is_refused(net, batch):
    seed = torch.ones(3, 4, dtype=torch.float64)
    seed[1, 2] = float("nan")
    with pytest.raises(TargetError, match="NaN"):
        explain(net, batch, output_relevance=seed)


def test_an_unknown_seed_name_is_refused(net, batch):
    with pytest.raises(TargetError, match="output_relevance must be 'onehot', 'logit' or a tensor"):
        explain(net, batch, output_relevance="one-hot")
