"""Video transformers (VideoMAE, ViViT, TimeSformer): logits equal to transformers' own,
AttnLRP and CP-LRP equal to LXT-style gradient × input references on transformers' modules,
what is lost to constants, bfloat16, the per-head readout and the discriminative method."""

from __future__ import annotations

import pytest
import torch
from transformer_reference import hf_logits, hf_model, reference_relevance

import relgraph
from relgraph.engine.weights import tensor_key
from relgraph.methods.frozen import temporal_cropping_applies
from relgraph.methods.heads import attention_nodes, discriminative_heads, head_relevance

FAMILIES = ["videomae", "vivit", "timesformer"]


def _graph(family, model, params, dtype=torch.float64):
    g = relgraph.load_architecture(family, **params)
    g.load_weights(model.state_dict())
    return g.to(dtype=dtype)


def _clip(dtype=torch.float64, batch=2, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 4, 16, 16, generator=generator).to(dtype)


@pytest.fixture(scope="module", params=FAMILIES)
def family_models(request):
    model, params = hf_model(request.param)
    return request.param, model, params, _graph(request.param, model, params)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_logits_equal_transformers(family_models, dtype, tolerance):
    family, model, params, _ = family_models
    g = _graph(family, model, params, dtype)
    x = _clip(dtype)
    with torch.no_grad():
        expected = hf_logits(model.to(dtype), x)
    model.to(torch.float64)
    got = g.forward(x).output
    assert (got - expected).abs().max() <= tolerance * expected.abs().max()


@pytest.mark.parametrize("pooling", [0, 1])
def test_videomae_pooling_follows_use_mean_pooling(pooling):
    model, params = hf_model("videomae", use_mean_pooling=bool(pooling))
    g = _graph("videomae", model, params)
    assert ("fc_norm" in g.graph) == bool(pooling)
    assert ("videomae.layernorm" in g.graph) != bool(pooling)
    x = _clip()
    with torch.no_grad():
        expected = hf_logits(model, x)
    assert torch.allclose(g.forward(x).output, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rules", ["attnlrp", "cp-lrp"])
def test_relevance_equals_lxt_reference(family_models, rules):
    family, model, params, g = family_models
    x = _clip()
    target = torch.tensor([1, 3])
    expected = reference_relevance(model, x, target, rules)
    got = relgraph.explain(g, x, target=target, rules=rules)
    assert expected.abs().max() > 0
    assert (got - expected).abs().max() <= 1e-8 * expected.abs().max()


def test_epsilon_override_changes_the_chosen_linear_layers_only():
    family = "vivit"
    model, params = hf_model(family)
    g = _graph(family, model, params)
    x = _clip()
    plain = relgraph.explanation(g, x, target=1, rules="attnlrp")
    dense = "*.fc2" if family == "vivit" else "*output.dense"
    composite = relgraph.rules.preset("attnlrp").override(
        dense, {"name": "epsilon", "epsilon": 0.5}
    )
    damped = relgraph.explanation(g, x, target=1, rules=composite)
    changed = [n for n, r in damped.rules.items() if r != plain.rules[n]]
    assert changed and all(damped.rules[n].epsilon == 0.5 for n in changed)
    assert not torch.allclose(damped.relevance, plain.relevance)


def _zero_constants(model):
    """Every bias, the CLS token and the position and time embeddings set to 0."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "embeddings" in name and "projection" not in name:
                p.zero_()


@pytest.mark.parametrize("family", ["vivit", "timesformer"])
def test_cp_lrp_conserves_without_constants(family):
    model, params = hf_model(family)
    _zero_constants(model)
    g = _graph(family, model, params)
    e = relgraph.explanation(g, _clip(), target=2, rules="cp-lrp")
    assert torch.allclose(
        e.relevance.sum((1, 2, 3, 4)), e.output_relevance.sum(1), rtol=1e-9, atol=0
    )


def test_attnlrp_loses_only_at_attention_without_constants():
    """The fused attention op holds the softmax's Taylor rule, the one lossy rule left."""
    model, params = hf_model("vivit")
    _zero_constants(model)
    g = _graph("vivit", model, params)
    e = relgraph.explanation(g, _clip(), target=2, rules="attnlrp")
    for node, lost in e.lost.items():
        if g.op(node).type != "attention":
            assert lost.abs().max() < 1e-12, node
    softmax_lost = sum(lost for n, lost in e.lost.items() if g.op(n).type == "attention")
    assert torch.allclose(e.relevance.sum((1, 2, 3, 4)) + softmax_lost, e.output_relevance.sum(1))


def test_constants_keep_their_share_in_lost(family_models):
    family, model, params, g = family_models
    e = relgraph.explanation(g, _clip(), target=0, rules="cp-lrp")
    total = e.relevance.sum((1, 2, 3, 4)) + sum(e.lost.values())
    assert torch.allclose(total, e.output_relevance.sum(1))
    constants = [n for n in e.lost if g.op(n).type in ("add_param", "add_sinusoid")]
    assert constants and all(e.lost[n].abs().max() > 0 for n in constants)


@pytest.mark.parametrize(
    "family, rules",
    [
        ("vivit", "attnlrp"),
        ("timesformer", "cp-lrp"),
        pytest.param("videomae", "attnlrp", marks=pytest.mark.slow),
        pytest.param("videomae", "cp-lrp", marks=pytest.mark.slow),
        pytest.param("vivit", "cp-lrp", marks=pytest.mark.slow),
        pytest.param("timesformer", "attnlrp", marks=pytest.mark.slow),
    ],
)
def test_bfloat16_is_finite_and_close(family, rules):
    model, params = hf_model(family)
    g = _graph(family, model, params)
    x = _clip()
    reference = relgraph.explain(g, x, target=1, rules=rules)
    low = _graph(family, model, params, torch.bfloat16)
    got = relgraph.explain(low, x.to(torch.bfloat16), target=1, rules=rules)
    assert torch.isfinite(got).all()
    cosine = torch.nn.functional.cosine_similarity(got.double().flatten(), reference.flatten(), 0)
    assert cosine > 0.9


def test_head_relevance_sums_the_attention_output_per_head(family_models):
    family, model, params, g = family_models
    e = relgraph.explanation(g, _clip(), target=1, rules="cp-lrp", node_relevance=True)
    heads = head_relevance(g, e)
    nodes = attention_nodes(g)
    assert list(heads) == nodes and len(nodes) == (4 if family == "timesformer" else 2)
    for node in nodes:
        relevance = e.node_relevance[node]
        assert heads[node].shape == (2, 2)
        # summed another way: the heads' halves of the merged context (…, N, D)
        merged = relevance.transpose(-3, -2).flatten(-2)
        halves = merged.unflatten(-1, (2, -1)).sum(-1)
        assert torch.allclose(heads[node], halves.flatten(1, -2).sum(1))


def test_discriminative_skips_the_frozen_shortcut_on_attention():
    model, params = hf_model("vivit")
    g = _graph("vivit", model, params)
    clip = _clip(batch=1)
    res = relgraph.discriminative(g, clip, target=1, rules="cp-lrp")
    assert not temporal_cropping_applies(g)
    frames = clip.shape[2]
    for t in range(frames):
        frozen = clip[:, :, t : t + 1].expand_as(clip).contiguous()
        plain = relgraph.explain(g, frozen, target=1, rules="cp-lrp")
        assert torch.allclose(res.frozen_relevance[:, t], plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("positions, features", [(392, 384), (8, 16), (10, 33)])
def test_sinusoid_table_is_bit_equal_to_transformers(positions, features):
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    from relgraph.engine.token_ops import sinusoid_table

    expected = get_sinusoid_encoding_table(positions, features)[0]
    assert torch.equal(sinusoid_table(positions, features), expected)


def test_discriminative_heads_of_a_still_clip_have_no_temporal_part():
    model, params = hf_model("vivit")
    g = _graph("vivit", model, params)
    moving = _clip(batch=1)
    still = moving[:, :, :1].expand_as(moving).contiguous()
    heads = discriminative_heads(g, torch.cat([moving, still]), target=2, rules="attnlrp")
    for node, temporal in heads.temporal.items():
        assert temporal.shape == (2, 4, 2)
        assert temporal[1].abs().max() == 0
        assert temporal[0].abs().max() > 0
        frozen = moving[:, :, 3:4].expand_as(moving).contiguous()
        alone = head_relevance(
            g, relgraph.explanation(g, frozen, 2, "attnlrp", node_relevance=True)
        )
        assert torch.allclose(heads.spatial[node][0, 3], alone[node][0], rtol=1e-12, atol=0)


def test_a_registered_key_map_renames_a_checkpoint_in_another_layout(monkeypatch):
    from relgraph.engine import weights

    model, params = hf_model("vivit")
    g = relgraph.load_architecture("vivit", **params)
    older = {
        k.replace("vivit.layers.", "vivit.encoder.layer."): v for k, v in model.state_dict().items()
    }

    def encoder_layers(graph, state):
        if not any(".encoder.layer." in k for k in state):
            return None
        return {k.replace("vivit.encoder.layer.", "vivit.layers."): v for k, v in state.items()}

    monkeypatch.setattr(weights, "KEY_MAPS", {})
    weights.register_key_map("vivit 4.x layers")(encoder_layers)
    report = g.load_weights(older)
    assert report.naming == "vivit 4.x layers" and not report.skipped
    assert torch.equal(
        g.tensors("vivit.layers.1.mlp.fc2")["weight"], model.vivit.layers[1].mlp.fc2.weight
    )
    assert g.load_weights(model.state_dict()).naming == "node"  # its own keys: no map tried


BASE_MODELS = {
    "videomae": (
        "VideoMAEConfig",
        "VideoMAEForVideoClassification",
        {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
        {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    ),
    "vivit": ("VivitConfig", "VivitForVideoClassification", {}, {}),
    "timesformer": ("TimesformerConfig", "TimesformerForVideoClassification", {}, {}),
}


@pytest.mark.parametrize(
    "family",
    ["vivit", *(pytest.param(f, marks=pytest.mark.slow) for f in ("videomae", "timesformer"))],
)
def test_full_size_keys_and_shapes_are_transformers_own(family):
    """VideoMAE-Small, ViViT-B 16x2 and TimeSformer-base (400 classes): the graph's tensors
    are the state dict transformers writes, key for key and shape for shape."""
    import transformers

    config_name, model_name, config, params = BASE_MODELS[family]
    intermediate = {"intermediate_size": 4 * config["hidden_size"]} if config else {}
    with torch.device("meta"):
        config_object = getattr(transformers, config_name)(num_labels=400, **config, **intermediate)
        model = getattr(transformers, model_name)(config_object)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    g = relgraph.load_architecture(family, init="none", num_labels=400, **params, **intermediate)
    got = {
        tensor_key(node, name): tuple(shape)
        for node in g.order
        for name, shape in g.graph.nodes[node]["tensor_shapes"].items()
    }
    assert got == expected


@pytest.mark.parametrize("rule", ["zplus", pytest.param("alphabeta", marks=pytest.mark.slow)])
def test_token_linear_keeps_its_bias_per_feature_in_bfloat16(rule):
    """z⁺ with its bias on token linear layers: bfloat16 adds the bias to the widened z, one
    value per feature (the last axis), and stays close to float64."""
    model, params = hf_model("vivit")
    composite = relgraph.rules.preset("cp-lrp").override(
        ops="linear", rule={"name": rule, "bias": True, "stabilizer": "epsilon"}
    )
    g = _graph("vivit", model, params)
    x = _clip()
    reference = relgraph.explain(g, x, target=1, rules=composite)
    low = _graph("vivit", model, params, torch.bfloat16)
    got = relgraph.explain(low, x.to(torch.bfloat16), target=1, rules=composite)
    assert torch.isfinite(got).all()
    cosine = torch.nn.functional.cosine_similarity(got.double().flatten(), reference.flatten(), 0)
    assert cosine > 0.9
