"""zβ bounds: from the preprocessing, through batch norms before the first layer, and checked.

``first`` selects the conv/linear nodes with no conv/linear before them, so on input → batch
norm → conv the conv is first; its box is the preprocessing's, mapped through the batch norm
channel by channel, and the batch norm passes relevance on (``before-first``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from relgraph.rules import ZBeta, make_rule, preset

import relgraph
from relgraph.io.preprocess import get_preprocess

DTYPE = torch.float64

BN_FIRST = """
name: bn-first
preprocess: kinetics
input: {name: input, shape: [3, 2, 6, 6]}
nodes:
  - {name: bn, op: batchnorm3d}
  - {name: relu0, op: relu}
  - {name: conv, op: conv3d, out_channels: 4, kernel_size: [1, 3, 3], padding: [0, 1, 1]}
  - {name: relu, op: relu}
  - {name: bn2, op: batchnorm3d}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out_features: 3}
"""


@pytest.fixture
def bn_first():
    graph = relgraph.architecture_from_yaml(BN_FIRST, dtype=DTYPE)
    tensors = graph.tensors("bn")
    tensors["running_mean"].copy_(torch.tensor([0.1, -0.2, 0.3], dtype=DTYPE))
    tensors["running_var"].copy_(torch.tensor([0.5, 2.0, 1.5], dtype=DTYPE))
    tensors["weight"].copy_(torch.tensor([2.0, -0.5, 1.0], dtype=DTYPE))  # one decreasing
    tensors["bias"].copy_(torch.tensor([0.25, 0.0, -1.0], dtype=DTYPE))
    graph.cache.clear()
    return graph


def hand_box(graph, per_channel: bool):
    """The preprocessing's box mapped through y = (x − μ)/√(σ² + eps)·γ + β, then ReLU."""
    low, high = get_preprocess("kinetics").zbeta_bounds(per_channel)
    t = graph.tensors("bn")
    scale = t["weight"] / torch.sqrt(t["running_var"] + 1e-5)
    shift = t["bias"] - t["running_mean"] * scale
    a, b = low * scale + shift, high * scale + shift
    return torch.minimum(a, b).clamp(min=0), torch.maximum(a, b).clamp(min=0)


def test_first_is_the_conv_after_a_batch_norm_on_the_input(bn_first):
    composite = preset("deep-taylor-paper")
    assert composite.entries[-2].selector.matches(bn_first) == {"conv"}
    rules = composite.resolve(bn_first)
    assert isinstance(rules["conv"], ZBeta)
    # the batch norm before the first layer passes relevance on; the one after gets z+
    assert rules["bn"] == make_rule("pass")
    assert rules["bn2"].name == "zplus"


@pytest.mark.parametrize("per_channel", [False, True])
def test_the_box_is_mapped_through_the_batch_norm_per_channel(bn_first, per_channel):
    name = "deep-taylor-per-channel" if per_channel else "deep-taylor-paper"
    rule = preset(name).resolve(bn_first)["conv"]
    low, high = hand_box(bn_first, per_channel)
    torch.testing.assert_close(torch.tensor(rule.low, dtype=DTYPE), low, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.tensor(rule.high, dtype=DTYPE), high, rtol=1e-12, atol=0)


def test_every_preprocessed_input_lies_in_the_mapped_box(bn_first):
    frames = torch.randint(0, 256, (2, 40, 60, 3), dtype=torch.uint8).numpy()
    frames[0] = 0
    frames[1] = 255
    clip = get_preprocess("kinetics")(frames).to(DTYPE)
    clip = clip[:, :, 0:6, 0:6].unsqueeze(0)  # any 6x6 window of the preprocessed clip
    after = bn_first.forward(clip).activations["relu0"]
    rule = preset("deep-taylor-per-channel").resolve(bn_first)["conv"]
    low = torch.tensor(rule.low, dtype=DTYPE).reshape(1, 3, 1, 1, 1)
    high = torch.tensor(rule.high, dtype=DTYPE).reshape(1, 3, 1, 1, 1)
    assert ((after >= low - 1e-6) & (after <= high + 1e-6)).all()


def test_the_zennit_box_preset_maps_the_box_too(bn_first):
    rule = preset("epsilon-gamma-box").resolve(bn_first)["conv"]
    low, high = hand_box(bn_first, per_channel=True)
    torch.testing.assert_close(torch.tensor(rule.low, dtype=DTYPE), low, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.tensor(rule.high, dtype=DTYPE), high, rtol=1e-12, atol=0)


def test_a_per_channel_box_cannot_be_mapped_through_a_mixing_of_channels():
    graph = relgraph.architecture_from_yaml(
        "preprocess: c3d-ucf101\ninput: {name: input, shape: [3, 4, 4]}\nnodes:\n"
        "  - {name: flat, op: flatten}\n  - {name: fc, op: linear, out_features: 2}\n",
        dtype=DTYPE,
    )
    rules = preset("deep-taylor-paper").resolve(graph)  # one box for all: flatten keeps it
    assert rules["fc"].low == -102.0 and rules["fc"].high == 165.0
    with pytest.raises(relgraph.RuleError, match="node 'fc'.*cannot carry.*'flat'"):
        preset("deep-taylor-per-channel").resolve(graph)


def test_inputs_outside_the_box_warn_once_per_call(bn_first):
    composite = preset("deep-taylor-paper").override(
        "conv", {"name": "zbeta", "low": -10.0, "high": 10.0}
    )
    inside = torch.rand((2, 3, 2, 6, 6), dtype=DTYPE) - 0.5  # |bn(x)| < 4 here
    with warnings.catch_warnings():
        warnings.simplefilter("error", relgraph.RelgraphWarning)
        relgraph.explain(bn_first, inside, rules=composite)
    with pytest.warns(relgraph.RelgraphWarning, match="node 'conv'.*outside the bounds") as record:
        relgraph.explain(bn_first, inside * 1000, rules=composite)
    assert len([w for w in record if issubclass(w.category, relgraph.RelgraphWarning)]) == 1


def test_c3d_inputs_from_the_preprocessing_raise_no_warning():
    """Frames holding 0 and 255 lie on the box's edges, not outside it."""
    graph = relgraph.load_architecture("c3d-tiny")
    frames = torch.randint(0, 256, (graph.input_shape[1], 128, 171, 3), dtype=torch.uint8).numpy()
    frames[0] = 0
    frames[-1] = 255
    clip = get_preprocess("c3d-ucf101")(frames)[
        :, :, : graph.input_shape[2], : graph.input_shape[3]
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", relgraph.RelgraphWarning)
        for name in ("deep-taylor-paper", "deep-taylor-per-channel", "epsilon-gamma-box"):
            relgraph.explain(graph, clip[None].contiguous(), rules=name, preprocess="c3d-ucf101")
