"""Batch-norm canonization (relgraph.canonize): folding, weights that follow, switches, names,
and EpsilonPlus on the canonized zoo (every shipped video model) against an autograd
reference."""

from __future__ import annotations

import warnings

import lrp_reference as ref
import pytest
import torch
import zoo_reference as zoo

import relgraph
from relgraph.cli.main import main
from relgraph.engine.canonize import canonical, fold_batchnorm, fold_pairs
from relgraph.engine.graph import shipped_architectures
from relgraph.errors import RelgraphError

RESNETS = {"r3d-18": zoo.r3d_18, "mc3-18": zoo.mc3_18, "r2plus1d-18": zoo.r2plus1d_18}
"""Shipped architectures with a torch.nn reference and its EpsilonPlus reference."""

#: the default run checks R(2+1)D (the deepest: 37 folds); the other two are marked slow
ZOO_CASES = [
    pytest.param(name, marks=() if name == "r2plus1d-18" else pytest.mark.slow) for name in RESNETS
]

SMALL = {"frames": 4, "size": 32, "num_classes": 5}


def zoo_graph(name, dtype=torch.float64, seed=5):
    model = zoo.randomise(RESNETS[name](num_classes=5), seed=seed).to(dtype).eval()
    graph = relgraph.load_architecture(name, init="none", dtype=dtype, **SMALL)
    graph.load_weights(model.state_dict())
    return model, graph


def clip(dtype=torch.float64, batch=2, seed=1, shape=(3, 4, 32, 32)):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _resnet(factory):
    return lambda: factory(num_classes=5)


def _x3d(depth):
    return lambda: zoo.X3D(2, 32, depth, num_classes=5, return_logits=True)


X3D_SMALL = {"frames": 2, "size": 32, "num_classes": 5}
#: every shipped zoo model: (its torch.nn reference at 5 classes, small size params, its
#: EpsilonPlus reference in lrp_reference); S3D at 5 frames (its strides' smallest)
EPSILON_PLUS = {
    **{name: (_resnet(f), SMALL, ref.video_resnet_epsilon_plus) for name, f in RESNETS.items()},
    "r2plus1d-tiny": (
        lambda: zoo.R2Plus1DTiny(width=2, num_classes=5),
        {"width": 2, "size": 16, "num_classes": 5},
        ref.video_resnet_epsilon_plus,
    ),
    "s3d": (
        lambda: zoo.s3d_small(5, 5, 32),
        {"frames": 5, "size": 32, "num_classes": 5},
        ref.s3d_epsilon_plus,
    ),
    **{
        name: (_x3d(depth), X3D_SMALL, ref.x3d_epsilon_plus)
        for name, depth in (("x3d-xs", 2.2), ("x3d-s", 2.2), ("x3d-m", 2.2), ("x3d-l", 5.0))
    },
}
#: the default run: R(2+1)D (the deepest ResNet: 37 folds), the demo model r2plus1d-tiny,
#: S3D and X3D-S; at small params
#: X3D-XS and -M are X3D-S's very graph, X3D-L its blocks 55 times instead of 26
EPSILON_PLUS_DEFAULT = ("r2plus1d-18", "r2plus1d-tiny", "s3d", "x3d-s")


MIXED = """
name: mixed
input: {name: x, shape: [3, 4, 6, 6]}
nodes:
  - {name: bn_in, op: batchnorm3d, inputs: [x]}
  - {name: conv, op: conv3d, inputs: [bn_in], out_channels: 4, kernel_size: 3, padding: 1,
     bias: false}
  - {name: bn, op: batchnorm3d, inputs: [conv]}
  - {name: relu, op: relu, inputs: [bn]}
  - {name: side, op: conv3d, inputs: [relu], out_channels: 4, kernel_size: 1}
  - {name: add, op: add, inputs: [relu, side]}
  - {name: bn_add, op: batchnorm3d, inputs: [add]}
  - {name: pool, op: adaptive_avgpool3d, inputs: [bn_add], output_size: 1}
  - {name: flat, op: flatten, inputs: [pool]}
  - {name: fc, op: linear, inputs: [flat], out_features: 6}
  - {name: bn_fc, op: batchnorm1d, inputs: [fc]}
output: bn_fc
"""


def randomise_graph(graph, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for node in graph.order:
        for name, t in graph.tensors(node).items():
            if name == "running_var":
                t.copy_(torch.rand(t.shape, generator=generator) * 0.5 + 0.75)
            elif name == "weight" and graph.op(node).type.startswith("batchnorm"):
                t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=generator) * 0.5)
    return graph


# ------------------------------------------------------------------ the pass


def test_folds_only_a_batch_norm_after_an_affine_layer_with_no_other_consumer():
    graph = relgraph.architecture_from_yaml(MIXED)
    assert fold_pairs(graph) == {"bn": "conv", "bn_fc": "fc"}
    view = canonical(graph)
    assert "bn" not in view.graph and "bn_fc" not in view.graph
    # no affine layer before: input, add (and the conv 'side' has another consumer)
    assert {"bn_in", "bn_add"} <= set(view.graph)
    assert view.output == "fc" and view.inputs_of("relu") == ["conv"]
    assert view.op("conv").bias and not graph.op("conv").bias  # a bias is created
    assert set(view.tensors("conv")) == {"weight", "bias"}
    assert graph.op("conv").bias is False and "bn" in graph.graph  # the original is unchanged


def test_forward_is_unchanged(tmp_path):
    graph = randomise_graph(relgraph.architecture_from_yaml(MIXED))
    x = torch.randn(3, 3, 4, 6, 6)
    expected, got = graph(x).output, canonical(graph)(x).output
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_forward_is_unchanged_in_float32(name):
    _, graph = zoo_graph(name, torch.float32)
    x = clip(torch.float32)
    view = canonical(graph)
    assert len(view.folded) >= 20
    expected, got = graph(x).output, view(x).output
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_folded_weights_follow_in_place_edits_assign_load_weights_and_to(tmp_path):
    graph = randomise_graph(relgraph.architecture_from_yaml(MIXED), seed=1)
    x = torch.randn(2, 3, 4, 6, 6)
    view = canonical(graph)
    before = view(x).output.clone()
    relgraph.explain(graph, x, target=0)  # fills the rules' memo of the view
    graph.tensors("bn")["running_var"].mul_(4.0)  # in place: the view sees it
    assert canonical(graph) is view
    torch.testing.assert_close(view(x).output, graph(x).output)
    assert not torch.allclose(view(x).output, before)
    reference = relgraph.explain(graph, x, target=0, canonize=True)
    fresh = fold_batchnorm(graph)  # built anew from the edited weights
    torch.testing.assert_close(reference, relgraph.explain(fresh, x, target=0))

    state = {k: v * 1.5 for k, v in graph.state_dict().items()}
    graph.assign({"bn.weight": state["bn.weight"]})
    torch.testing.assert_close(canonical(graph)(x).output, graph(x).output)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    graph.load_weights(path)
    torch.testing.assert_close(canonical(graph)(x).output, graph(x).output)

    graph.to(dtype=torch.float64)
    view = canonical(graph)
    assert view.tensors("conv")["weight"].dtype == torch.float64
    torch.testing.assert_close(view(x.double()).output, graph(x.double()).output)


def test_the_view_refuses_to_change_weights():
    view = canonical(relgraph.architecture_from_yaml(MIXED))
    with pytest.raises(RelgraphError, match="canonized view"):
        view.to(dtype=torch.float64)
    with pytest.raises(RelgraphError, match="canonized view"):
        view.assign({})
    with pytest.raises(RelgraphError, match="derived"):
        view.tensors("conv")["weight"] = torch.zeros(4, 3, 3, 3, 3)


# ------------------------------------------------------------------ switches and names


def test_on_by_default_and_off_by_argument_or_yaml():
    graph = randomise_graph(relgraph.architecture_from_yaml(MIXED), seed=2)
    x = torch.randn(2, 3, 4, 6, 6)
    rules = "epsilon-plus"
    folded = relgraph.explanation(graph, x, target=1, rules=rules)
    plain = relgraph.explanation(graph, x, target=1, rules=rules, canonize=False)
    assert "bn" not in folded.rules and "bn" in plain.rules
    assert not torch.allclose(folded.relevance, plain.relevance)
    off = relgraph.architecture_from_yaml(MIXED + "canonize: false\n")
    off.assign(graph.state_dict())
    assert off.canonize is False and canonical(off) is off
    torch.testing.assert_close(relgraph.explain(off, x, target=1, rules=rules), plain.relevance)
    # the switch survives the YAML round trip
    again = relgraph.architecture_from_yaml(off.to_yaml())
    assert again.canonize is False
    assert "canonize" not in graph.to_yaml()
    with pytest.raises(RelgraphError, match="'canonize' must be true or false"):
        relgraph.architecture_from_yaml(MIXED + "canonize: 'no'\n")


def test_discriminative_canonizes_too():
    graph = randomise_graph(relgraph.architecture_from_yaml(MIXED), seed=3)
    video = torch.randn(1, 3, 4, 6, 6)
    on = relgraph.discriminative(graph, video, target=0, rules="epsilon-plus")
    off = relgraph.discriminative(graph, video, target=0, rules="epsilon-plus", canonize=False)
    direct = relgraph.explain(graph, video, target=0, rules="epsilon-plus")
    torch.testing.assert_close(on.relevance, direct)
    assert not torch.allclose(on.relevance, off.relevance)


def test_composites_address_folded_layers_by_their_declared_names():
    graph = randomise_graph(relgraph.architecture_from_yaml(MIXED), seed=4)
    x = torch.randn(2, 3, 4, 6, 6)
    base = relgraph.explanation(graph, x, target=0, rules="epsilon-plus")
    moved = relgraph.explanation(graph, x, target=0, rules={"conv": "flat"})
    assert moved.rules["conv"].name == "flat" and base.rules["conv"].name != "flat"
    assert not torch.allclose(moved.relevance, base.relevance)


AT_BN = {"bn": {"name": "epsilon", "epsilon": 5.0}}


def test_a_rule_aimed_at_a_folded_batch_norm_has_no_effect_and_warns():
    graph = randomise_graph(relgraph.architecture_from_yaml(MIXED), seed=5)
    x = torch.randn(2, 3, 4, 6, 6)
    base = relgraph.explain(graph, x, target=0)
    with pytest.warns(UserWarning, match="bn, folded into conv by canonization: it has no"):
        aimed = relgraph.explain(graph, x, target=0, rules=AT_BN)
    torch.testing.assert_close(aimed, base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unfolded, the rule applies and nothing is said
        unfolded = relgraph.explain(graph, x, target=0, rules=AT_BN, canonize=False)
    assert not torch.allclose(unfolded, relgraph.explain(graph, x, target=0, canonize=False))


@pytest.mark.parametrize("rules", [n for n in relgraph.rules.preset_names() if n != "base"])
@pytest.mark.parametrize("canonize", [True, False], ids=["folded", "unfolded"])
def test_every_preset_covers_the_folded_and_the_unfolded_zoo(rules, canonize):
    for name in RESNETS:
        graph = relgraph.load_architecture(name, init="none", **SMALL)
        view = canonical(graph, canonize)
        chosen = relgraph.rules.preset(rules).resolve(view, preprocess="kinetics")
        assert set(chosen) == set(view.order[1:])
        assert any(n.endswith(".1") for n in chosen) is (not canonize)  # batch norms


# ------------------------------------------------------------------ the CLI


def test_arch_show_marks_folded_nodes(capsys):
    assert main(["arch", "show", "r3d-18", "--param", "frames=4", "--param", "size=32"]) == 0
    out = capsys.readouterr().out
    assert "batchnorm3d [folded into stem.0]" in out
    assert "conv3d [absorbs stem.1, bias created]" in out
    assert "canonization: 20 batch norm(s) folded" in out
    assert main(["arch", "show", "r3d-18", "--no-canonize"]) == 0
    out = capsys.readouterr().out
    assert "folded" not in out.split("canonization")[0] and "canonization: off" in out


def test_rules_show_says_a_folded_batch_norm_has_no_rule(capsys):
    assert main(["rules", "show", "epsilon-plus", "--arch", "r2plus1d-18"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("stem.1 "))
    assert "folded into stem.0" in row
    assert main(["rules", "show", "epsilon-plus", "--arch", "r2plus1d-18", "--no-canonize"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("stem.1 "))
    assert "pass" in row


# ------------------------------------------------------------------ EpsilonPlus on the zoo


def test_every_shipped_zoo_model_with_batch_norms_has_a_relevance_reference():
    # a shipped model that folds batch norms must have a reference in EPSILON_PLUS; the C3Ds
    # (no batch norm) and resnet-tiny are checked by the rules' own tests, the transformers
    # (layer norms, no batch norm, videomae-tiny the shipped demo one) by tests/test_transformers.py
    others = ("c3d", "c3d-tiny", "resnet-tiny", "videomae", "videomae-tiny", "vivit", "timesformer")
    zoo_models = [n for n in shipped_architectures() if n not in others]
    assert sorted(zoo_models) == sorted(EPSILON_PLUS)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if n in EPSILON_PLUS_DEFAULT else pytest.mark.slow)
        for n in EPSILON_PLUS
    ],
)
def test_epsilon_plus_equals_the_autograd_reference_on_the_canonized_model(name):
    factory, params, reference = EPSILON_PLUS[name]
    model = zoo.randomise(factory(), seed=5)
    assert_epsilon_plus_is_the_reference(name, model, reference, batch=2, **params)


def assert_epsilon_plus_is_the_reference(name, model, reference, batch, **params):
    if name.startswith("x3d"):
        zoo.calm_branches(model)  # activations of a moderate size through the blocks
    model = model.to(torch.float64).eval()
    graph = relgraph.load_architecture(name, init="none", dtype=torch.float64, **params)
    graph.load_weights(model.state_dict())
    x = clip(batch=batch, shape=graph.input_shape)
    got = relgraph.explanation(graph, x, target=2, rules="epsilon-plus")
    expected, logits = reference(model, x, target=2)
    torch.testing.assert_close(got.output, logits, rtol=1e-10, atol=1e-12)
    scale = expected.abs().max()
    assert scale > 0
    assert (got.relevance - expected).abs().max() <= 1e-6 * scale
    # folding matters: the unfolded graph (batch norms pass relevance) gives another answer
    unfolded = relgraph.explain(graph, x, target=2, rules="epsilon-plus", canonize=False)
    assert (unfolded - expected).abs().max() > 1e-3 * scale


@pytest.mark.slow  # float64 at the published input: S3D 16×224², X3D-XS 4×160², X3D-S 13×160²
@pytest.mark.parametrize(
    ("name", "factory"),
    [("s3d", zoo.s3d), ("x3d-xs", lambda: zoo.x3d("xs")), ("x3d-s", lambda: zoo.x3d("s"))],
    ids=["s3d", "x3d-xs", "x3d-s"],
)
def test_epsilon_plus_equals_the_autograd_reference_at_full_size(name, factory):
    model = factory()
    if name.startswith("x3d"):
        model.blocks[-1].return_logits = True
    reference = EPSILON_PLUS[name][2]
    assert_epsilon_plus_is_the_reference(name, zoo.randomise(model, seed=5), reference, batch=1)
