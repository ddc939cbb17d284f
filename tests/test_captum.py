"""relgraph agrees with a peer library, captum's ``captum.attr.LRP``, where both have a rule.

captum (0.9) implements LRP with hooks on ``torch.nn`` modules: for a layer with a rule it
divides the incoming gradient by ``z + ε·sign(z)`` (sign(0) = +1, z = the layer's output under
the rule's modified weights, bias included unless ``set_bias_to_zero``), lets autograd apply
``Aᵀ``, and multiplies by the layer's original input. ReLU and dropout pass the relevance on
unchanged. It starts from the gradient of the target logit (a one-hot seed) and, at the end,
multiplies the attribution by the target's output score. Its rules, and the relgraph rule each
is matched to here:

- ``EpsilonRule(ε)`` on a conv/linear layer = ``epsilon`` with that ε and ``bias: true``
  (captum's default ε is 1e-9);
- ``Alpha1_Beta0_Rule(set_bias_to_zero=True)`` = ``zplus`` with ``bias: false`` and the
  ``epsilon`` stabiliser at 1e-9: captum uses ``z = A(x; W⁺)``, which is z⁺ for inputs ≥ 0
  (ReLU outputs; captum has no x⁻ term, so it is only matched after a ReLU). With the bias
  kept captum adds all of b, relgraph only b⁺, so that variant is not matched;
- ``GammaRule(γ, set_bias_to_zero=True)`` = ``gamma`` with that γ and the ``epsilon``
  stabiliser at 1e-9 after a ReLU: captum shares every output by ``W + γW⁺``; relgraph does
  the same for outputs with z > 0 and uses ``W + γW⁻`` where z < 0, but there the relevance
  is zero in these nets (the next layer multiplies by the ReLU output, which is 0);
- ``EpsilonRule`` on ``MaxPool3d`` = ``winner-take-all``: the max-pool gradient routes
  ``R/(x_max + ε)`` to the argmax, which is then multiplied by ``x_max``; we give captum's pool
  rule ε = 1e-30 so that factor is 1 to float64 precision (with its default 1e-9 it deviates
  by about 1e-9/x_max);
- ``IdentityRule`` has no counterpart needed here (relgraph's ``pass`` covers ReLU, which
  captum handles without a rule).

captum's final multiplication by the output score is relgraph's ``logit`` seed (every rule is
linear in the relevance it is given). Everything runs in float64 and agrees to 1e-6 relative.
"""

from __future__ import annotations

import json

import pytest
import torch
from captum.attr import LRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
from relgraph.rules import make_rule
from torch import nn

import relgraph

CAPTUM_EPSILON = 1e-9  # PropagationRule.STABILITY_FACTOR, captum's default ε


class SmallVideoNet(nn.Module):
    """A small sequential 3D CNN of layers captum supports (each module used once)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 4, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2))
        self.conv2 = nn.Conv3d(4, 6, kernel_size=3, padding=1, stride=(1, 1, 1))
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool3d(kernel_size=2)
        self.conv3 = nn.Conv3d(6, 8, kernel_size=(2, 3, 3), padding=(0, 1, 1))
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(8 * 1 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


SMALL_VIDEO_NET_YAML = {
    "name": "small-video-net",
    "input": {"name": "input", "shape": [3, 4, 8, 8]},
    "nodes": [
        {"name": "conv1", "op": "conv3d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"name": "relu1", "op": "relu"},
        {"name": "pool1", "op": "maxpool3d", "kernel_size": [1, 2, 2]},
        {"name": "conv2", "op": "conv3d", "out_channels": 6, "kernel_size": 3, "padding": 1},
        {"name": "relu2", "op": "relu"},
        {"name": "pool2", "op": "maxpool3d", "kernel_size": 2},
        {
            "name": "conv3",
            "op": "conv3d",
            "out_channels": 8,
            "kernel_size": [2, 3, 3],
            "padding": [0, 1, 1],
        },
        {"name": "relu3", "op": "relu"},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 5},
    ],
    "output": "fc",
}

STRUCTURAL_RULES = {
    "relu1": "pass",
    "relu2": "pass",
    "relu3": "pass",
    "flatten": "pass",
    "pool1": "winner-take-all",
    "pool2": "winner-take-all",
}
EPSILON = {"name": "epsilon", "epsilon": CAPTUM_EPSILON, "bias": True}


@pytest.fixture
def models():
    """The torch.nn net (float64, random weights) and the same net compiled by relgraph."""
    torch.manual_seed(7)
    net = SmallVideoNet().double().eval()
    graph = relgraph.architecture_from_yaml(json.dumps(SMALL_VIDEO_NET_YAML), dtype=torch.float64)
    graph.load_weights({name: t.detach().clone() for name, t in net.state_dict().items()})
    return net, graph


@pytest.fixture
def clips() -> torch.Tensor:
    return torch.randn(
        2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )


def captum_lrp(net: SmallVideoNet, x: torch.Tensor, rules: dict, target: list[int]):
    """captum's attribution with the given module rules (captum removes them afterwards)."""
    for name, rule in rules.items():
        getattr(net, name).rule = rule
    for pool in (net.pool1, net.pool2):
        pool.rule = EpsilonRule(epsilon=1e-30)  # winner-take-all, see the module docstring
    return LRP(net).attribute(x.clone().requires_grad_(True), target=target).detach()


def relgraph_lrp(graph, x, rules: dict, target: list[int], seed: str = "logit"):
    node_rules = {node: make_rule(rule) for node, rule in {**STRUCTURAL_RULES, **rules}.items()}
    return relgraph.explain_with_rules(graph, x, node_rules, target=target, output_relevance=seed)


def assert_agrees(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * scale)


def predicted(net: SmallVideoNet, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return net(x).argmax(dim=1).tolist()


def test_captum_epsilon_rule_equals_relgraph_epsilon_with_bias(models, clips):
    """captum ``EpsilonRule()`` on conv1-3 and fc ↔ relgraph ``epsilon`` (ε = 1e-9, bias)."""
    net, graph = models
    target = predicted(net, clips)
    expected = captum_lrp(
        net, clips, {n: EpsilonRule() for n in ("conv1", "conv2", "conv3", "fc")}, target
    )
    actual = relgraph_lrp(
        graph, clips, dict.fromkeys(("conv1", "conv2", "conv3", "fc"), EPSILON), target
    )
    assert_agrees(actual, expected)


def test_captum_alpha1_beta0_without_bias_equals_relgraph_zplus_without_bias(models, clips):
    """captum ``EpsilonRule()`` on conv1 and ``Alpha1_Beta0_Rule(set_bias_to_zero=True)`` on
    conv2, conv3, fc ↔ relgraph ``epsilon`` on conv1 and ``zplus`` (bias off, ε-stabiliser
    1e-9) on the layers after a ReLU."""
    net, graph = models
    target = predicted(net, clips)
    deeper = ("conv2", "conv3", "fc")
    expected = captum_lrp(
        net,
        clips,
        {"conv1": EpsilonRule(), **{n: Alpha1_Beta0_Rule(set_bias_to_zero=True) for n in deeper}},
        target,
    )
    zplus = {"name": "zplus", "bias": False, "stabilizer": "epsilon", "epsilon": CAPTUM_EPSILON}
    actual = relgraph_lrp(graph, clips, {"conv1": EPSILON, **dict.fromkeys(deeper, zplus)}, target)
    assert_agrees(actual, expected)


def test_captum_gamma_without_bias_equals_relgraph_gamma_after_relu(models, clips):
    """captum ``GammaRule(0.25, set_bias_to_zero=True)`` on conv2 and conv3 ↔ relgraph
    ``gamma`` (γ = 0.25, ε-stabiliser 1e-9); ``epsilon`` on conv1 and fc in both."""
    net, graph = models
    target = predicted(net, clips)
    gamma_layers = ("conv2", "conv3")
    expected = captum_lrp(
        net,
        clips,
        {
            "conv1": EpsilonRule(),
            "fc": EpsilonRule(),
            **{n: GammaRule(gamma=0.25, set_bias_to_zero=True) for n in gamma_layers},
        },
        target,
    )
    gamma = {"name": "gamma", "gamma": 0.25, "stabilizer": "epsilon", "epsilon": CAPTUM_EPSILON}
    actual = relgraph_lrp(
        graph,
        clips,
        {"conv1": EPSILON, "fc": EPSILON, **dict.fromkeys(gamma_layers, gamma)},
        target,
    )
    assert_agrees(actual, expected)


def test_captum_multiplies_the_attribution_by_the_target_output_score(models, clips):
    """captum = target logit × relgraph's one-hot explanation (the paper authors' code and
    zennit start from one-hot and do not multiply)."""
    net, graph = models
    target = predicted(net, clips)
    layers = ("conv1", "conv2", "conv3", "fc")
    expected = captum_lrp(net, clips, {n: EpsilonRule() for n in layers}, target)
    onehot = relgraph_lrp(graph, clips, dict.fromkeys(layers, EPSILON), target, seed="onehot")
    with torch.no_grad():
        scores = net(clips)[torch.arange(2), target]
    assert_agrees(onehot * scores.reshape(-1, 1, 1, 1, 1), expected)
