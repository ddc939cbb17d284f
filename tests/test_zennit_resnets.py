"""epsilon-plus on torchvision's video ResNets equals zennit's EpsilonPlus, node by node.

The reference is zennit 0.5.1's EpsilonPlus with its ResNet canonizers (batch norms merged into
the convolutions, each residual add a ``Sum``) on the plain-torch r3d_18, mc3_18 and
r2plus1d_18 of ``tests/zoo_reference.py``, written as modified gradients
(``lrp_reference.video_resnet_epsilon_plus``); beside torchvision it reproduces zennit 0.5.1
itself to 1e-14 of the peak. relgraph must match it in float64 to 1e-8 of each tensor's peak:
the input, every block's output and the inputs of every residual add.

zennit 0.5.1's merge leaves each batch norm computing ``x/√(1 + eps)`` instead of the identity
(docs/presets.md, "zennit 0.5.1's batch-norm merge"), so zennit 0.5.1 itself departs from both
by about 1e-5, and by far more at an add that nearly cancels. The last tests show that with the
reference canonized the way 0.5.1 does it (``leave_eps=True``).
"""

from __future__ import annotations

import re

import lrp_reference as ref
import pytest
import torch
import zoo_reference as zoo

import relgraph
from relgraph.engine.canonize import canonical
from relgraph.engine.graph import architecture_path

DTYPE = torch.float64
RESNETS = {"r3d-18": zoo.r3d_18, "mc3-18": zoo.mc3_18, "r2plus1d-18": zoo.r2plus1d_18}
SMALL = {"frames": 4, "size": 16, "num_classes": 5}
#: the near-cancelling add's test: a larger layer3 (2×4² positions per channel)
CANCEL = {"frames": 8, "size": 32, "num_classes": 5}
#: the default run's channel widths: torchvision's over 8 (R(2+1)D's stem: 45 → 5)
NARROW = {45: 5, 64: 8, 128: 16, 256: 32, 512: 64}
TARGET = 2


def narrowed_graph(name: str, **params) -> relgraph.Graph:
    """The shipped architecture with every channel width of its node list narrowed by
    ``NARROW`` (the blocks' definitions, strides and kernels as shipped)."""
    text = architecture_path(name).read_text(encoding="utf-8")
    head, nodes = text.split("\nnodes:\n")
    nodes = re.sub(r"\b(45|64|128|256|512)\b", lambda m: str(NARROW[int(m[1])]), nodes)
    return relgraph.architecture_from_yaml(
        f"{head}\nnodes:\n{nodes}", init="none", dtype=DTYPE, **params
    )


def model_and_graph(name, seed=3, narrow=False, **params):
    kwargs = {"num_classes": params.get("num_classes", 400)}
    if narrow:
        kwargs["widths"] = tuple(NARROW[w] for w in zoo.WIDTHS)
        if name == "r2plus1d-18":
            kwargs["stem_mid"] = NARROW[45]
    model = zoo.randomise(RESNETS[name](**kwargs), seed=seed).to(DTYPE).eval()
    if narrow:
        graph = narrowed_graph(name, **params)
    else:
        graph = relgraph.load_architecture(name, init="none", dtype=DTYPE, **params)
    graph.load_weights(model.state_dict())
    return model, graph


def clip(graph, seed=4, batch=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *graph.input_shape, generator=generator, dtype=DTYPE)


def relgraph_nodes(graph, x):
    """relgraph's relevance at the input and, under the reference's names, at every block
    output and the inputs of every residual add (the shortcut where it is a node of its own,
    the downsample)."""
    explanation = relgraph.explanation(
        graph, x, target=TARGET, rules="epsilon-plus", node_relevance=True
    )
    view = canonical(graph)
    got = {"input": explanation.relevance}
    for node in view.order:
        if not node.endswith(".add"):
            continue
        block = node.removesuffix(".add")
        main, shortcut = view.inputs_of(node)
        got[block] = explanation.node_relevance[f"{block}.relu"]
        got[f"{block}:main"] = explanation.node_relevance[main]
        if shortcut.startswith(f"{block}.downsample"):
            got[f"{block}:shortcut"] = explanation.node_relevance[shortcut]
    return got, explanation.output


def reference_nodes(model, x, leave_eps=False):
    nodes = {}
    relevance, logits = ref.video_resnet_epsilon_plus(
        model, x, TARGET, nodes=nodes, leave_eps=leave_eps
    )
    return {"input": relevance, **nodes}, logits


def departures(got, expected):
    """``{name: max |got − expected| / max |expected|}`` over the names both have."""
    out = {}
    for name in got.keys() & expected.keys():
        scale = float(expected[name].abs().max())
        assert scale > 0, name
        out[name] = float((got[name] - expected[name]).abs().max()) / scale
    return out


def assert_equals_zennit(model, graph, x):
    got, output = relgraph_nodes(graph, x)
    expected, logits = reference_nodes(model, x)
    torch.testing.assert_close(output, logits, rtol=1e-10, atol=1e-12)
    # the input, 8 block outputs, 8 main branches, 3 downsample shortcuts
    assert len(got.keys() & expected.keys()) == 20
    worst = departures(got, expected)
    assert max(worst.values()) <= 1e-8, worst
    return got


@pytest.mark.parametrize("name", list(RESNETS))
def test_epsilon_plus_equals_zennit_node_by_node(name):
    model, graph = model_and_graph(name, narrow=True, **SMALL)
    assert_equals_zennit(model, graph, clip(graph))


@pytest.mark.slow  # float64 at the published input, 16×112², 400 classes
@pytest.mark.parametrize("name", list(RESNETS))
def test_epsilon_plus_equals_zennit_node_by_node_at_full_size(name):
    model, graph = model_and_graph(name)
    assert_equals_zennit(model, graph, clip(graph))


def test_zennit_051_merge_changes_the_model_and_the_relevance():
    """zennit 0.5.1's merged batch norms scale by 1/√(1 + 1e-5): the canonized model's
    logits move by ~1e-5, and so does its relevance, where relgraph's (exact folding) does not
    move at all."""
    model, graph = model_and_graph("r3d-18", narrow=True, **SMALL)
    x = clip(graph)
    got, output = relgraph_nodes(graph, x)
    expected, logits = reference_nodes(model, x, leave_eps=True)
    with torch.no_grad():
        true_logits = model(x)
    torch.testing.assert_close(output, true_logits, rtol=1e-10, atol=1e-12)
    moved = float((logits - true_logits).abs().max() / true_logits.abs().max())
    assert 1e-6 < moved < 1e-3
    worst = departures(got, expected)
    assert 1e-7 < worst["input"] < 1e-3, worst


def pre_relu_sums(model, x, leave_eps):
    """Each block's residual sum (the input of its last ReLU), the model's batch norms merged
    exactly (``leave_eps=False``) or as zennit 0.5.1 merges them."""

    def chain(modules, a):
        for layer in ref.fold_batchnorms(modules, leave_eps):
            a = layer(a)
        return a

    sums = {}
    with torch.no_grad():
        a = chain([model.stem], x)
        for index in range(1, 5):
            for number, block in enumerate(getattr(model, f"layer{index}")):
                main = chain([block.conv1, block.conv2], a)
                shortcut = a if block.downsample is None else chain([block.downsample], a)
                sums[f"layer{index}.{number}"] = main + shortcut
                a = torch.relu(main + shortcut)
    return sums


def nearly_cancel(model, x, block="layer3.0"):
    """Shift one channel's bias in ``block``'s downsample batch norm so that one position of
    its residual sum lies just above 0 in the model and just below 0 in zennit 0.5.1's
    canonized model: the position with the largest shortcut value where 0.5.1's sum lies below
    the true one. Returns that position."""
    exact, left = pre_relu_sums(model, x, False), pre_relu_sums(model, x, True)
    stage, number = block.split(".")
    norm = getattr(model, stage)[int(number)].downsample[1]
    factor = (1 + norm.eps) ** -0.5  # 0.5.1's sum moves by factor·δ for a shift δ of β
    gap = left[block] - factor * exact[block]
    score = torch.where(gap < 0, shortcuts(model, x)[block].abs(), torch.zeros_like(gap))
    position = torch.unravel_index(score.argmax(), score.shape)
    above = float(-gap[position]) / (2 * factor)  # the true sum after the shift
    with torch.no_grad():
        norm.bias[int(position[1])] += above - float(exact[block][position])
    return position


def shortcuts(model, x):
    """Each block's shortcut (downsampled or not), in the model itself."""
    out = {}
    with torch.no_grad():
        a = model.stem(x)
        for index in range(1, 5):
            for number, block in enumerate(getattr(model, f"layer{index}")):
                out[f"layer{index}.{number}"] = (
                    a if block.downsample is None else block.downsample(a)
                )
                a = block(a)
    return out


def test_zennit_051_merge_moves_relevance_across_a_nearly_cancelling_add():
    """One position of layer3.0's add made to nearly cancel (``nearly_cancel``): its ReLU
    passes in the model and blocks in zennit 0.5.1's canonized one, and the add hands its two
    inputs large shares of opposite sign in one and nothing in the other. relgraph still equals
    the reference at every node to 1e-8; the 0.5.1 merge departs from it at layer3.0's output
    and at layer4.0's add about as much as anywhere, but far more at layer3.0's two inputs."""
    model, graph = model_and_graph("r3d-18", narrow=True, **CANCEL)
    x = clip(graph)
    position = nearly_cancel(model, x)
    graph.load_weights(model.state_dict())
    exact, left = pre_relu_sums(model, x, False), pre_relu_sums(model, x, True)
    assert float(exact["layer3.0"][position]) > 0 > float(left["layer3.0"][position])

    got = assert_equals_zennit(model, graph, x)
    zennit_051, _ = reference_nodes(model, x, leave_eps=True)
    moved = departures(got, zennit_051)
    base = max(moved["layer3.0"], moved["layer4.0:main"], moved["layer4.0:shortcut"])
    assert base < 1e-3, moved
    assert min(moved["layer3.0:main"], moved["layer3.0:shortcut"]) > 10 * base, moved
