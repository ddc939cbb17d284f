"""The fused ``attention`` op: its forward against the explicit softmax(scale · q kᵀ) v, its
block-wise adjoints against autograd, and its AttnLRP and CP-LRP rules against the unfused
four-node chain (q·kᵀ, scale, softmax, attention·v) under the existing rules."""

from __future__ import annotations

import pytest
import torch
import yaml

import relgraph
import relgraph.engine.token_ops as token_ops
from relgraph.engine.token_ops import Attention
from relgraph.errors import RelgraphError

SHAPES = {
    "heads": (2, 3, 7, 4),  # (B, H, N, d)
    "timesformer": (2, 5, 2, 6, 4),  # (B, P, H, T, d)
    "single-head": (3, 9, 4),  # (B, N, d)
}


def _qkv(shape, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(3)]


def _explicit(q, k, v, scale):
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1) @ v


def _op(shape, scale=None):
    op = Attention() if scale is None else Attention(scale=scale)
    op.resolve([shape[1:]] * 3)
    return op


def _build(spec):
    return relgraph.architecture_from_yaml(yaml.safe_dump(spec, sort_keys=False))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so that the explicit adjoints run over several blocks."""
    monkeypatch.setattr(token_ops, "ATTENTION_BLOCK_ELEMENTS", 40)


@pytest.fixture(params=["cpu-kernels", "blockwise"])
def adjoints(request, monkeypatch, small_blocks):
    """Either path of the adjoints: torch's fused CPU kernels, or the explicit block-wise
    formulas that run on every other device."""
    monkeypatch.setattr(token_ops, "USE_CPU_KERNELS", request.param == "cpu-kernels")
    return request.param


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("scale", [None, 0.3])
def test_forward_equals_the_explicit_formula_in_float64(shape, scale):
    q, k, v = _qkv(shape)
    op = _op(shape, scale)
    expected_scale = shape[-1] ** -0.5 if scale is None else scale
    assert op.scale == pytest.approx(expected_scale)
    got = op.forward([q, k, v], {})
    expected = _explicit(q, k, v, expected_scale)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-12


def test_forward_takes_transposed_head_views():
    q, k, v = (t.transpose(1, 2) for t in _qkv((2, 7, 3, 4)))  # (B, N, H, d) -> (B, H, N, d)
    got = _op(q.shape).forward([q, k, v], {})
    assert (got - _explicit(q, k, v, 0.5)).abs().max() <= 1e-12


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_vjp_equals_autograd(shape, adjoints):
    q, k, v = (t.requires_grad_() for t in _qkv(shape))
    op = _op(shape)
    out = _explicit(q, k, v, op.scale)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out.backward(grad)
    assert len(op._blocks(*(t.detach() for t in (q, k)))) > 1
    inputs = [q.detach(), k.detach(), v.detach()]
    out, record = op.forward_record(inputs, {})
    assert (record is not None) == (adjoints == "cpu-kernels")
    for got in (
        op.vjp(grad, inputs, {}, None),
        op.attention_vjp(grad, *inputs, out, record),
    ):
        for mine, leaf in zip(got, (q, k, v)):
            assert mine.shape == leaf.shape
            assert (mine - leaf.grad).abs().max() <= 1e-12 * leaf.grad.abs().max().clamp(min=1)
    probabilities = torch.softmax(inputs[0] @ inputs[1].transpose(-1, -2) * op.scale, dim=-1)
    value = op.value_adjoint(grad, *inputs, out, record)
    assert (value - probabilities.transpose(-1, -2) @ grad).abs().max() <= 1e-12


def test_blocks_cover_every_row_once_within_the_budget(monkeypatch):
    monkeypatch.setattr(token_ops, "ATTENTION_BLOCK_ELEMENTS", 200)
    q, k, _ = _qkv((2, 3, 11, 4))
    blocks = _op(q.shape)._blocks(q, k)
    assert len(blocks) == 4  # 3 rows of 2 · 3 · 11 probabilities each (198 ≤ 200)
    assert [b for a, b in blocks][-1] == 11 and blocks[0][0] == 0
    assert all(a == b for (_, a), (b, _) in zip(blocks, blocks[1:]))
    assert all((stop - start) * 2 * 3 * 11 <= 200 for start, stop in blocks)


def test_bfloat16_forward_and_adjoints_stay_close_to_float64(adjoints):
    q, k, v = _qkv((1, 2, 16, 8))
    op = _op(q.shape)
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    out = op.forward(low, {})
    assert out.dtype == torch.bfloat16
    expected = _explicit(q, k, v, op.scale)
    assert (out.double() - expected).abs().max() <= 0.05 * expected.abs().max()
    grad = torch.ones_like(expected, dtype=torch.float32)
    got = op.attention_vjp(grad, *low, out)
    want = op.attention_vjp(grad.double(), q, k, v)
    for mine, exact in zip(got, want):
        assert mine.dtype == torch.float32 and torch.isfinite(mine).all()
        assert (mine.double() - exact).abs().max() <= 0.05 * exact.abs().max()


# --------------------------------------------------------------------------- rules


def _graphs(heads=2, tokens=6, width=3, classes=4):
    """Two graphs on one input ``(3, H, N, d)`` (q, k, v stacked): attention as the fused op
    and as the four-node chain, then a linear classifier."""
    stem = [
        {"name": f"{part}", "op": "select", "inputs": "x", "dim": 1, "index": index}
        for index, part in enumerate("qkv")
    ]
    tail = [
        {"name": "merged", "op": "reshape", "shape": [-1]},
        {"name": "fc", "op": "linear", "out_features": classes},
    ]
    fused = [{"name": "context", "op": "attention", "inputs": ["q", "k", "v"]}]
    chain = [
        {"name": "scores", "op": "matmul", "inputs": ["q", "k"], "transpose_b": True},
        {"name": "scaled", "op": "scale", "factor": width**-0.5},
        {"name": "probs", "op": "softmax"},
        {"name": "context", "op": "matmul", "inputs": ["probs", "v"]},
    ]
    made = []
    for middle in (fused, chain):
        spec = {
            "name": "attention-test",
            "input": {"name": "x", "shape": [3, heads, tokens, width]},
            "nodes": stem + middle + tail,
            "output": "fc",
        }
        made.append(_build(spec))
    fused_graph, chain_graph = made
    chain_graph.load_weights(
        {
            "fc.weight": fused_graph.tensors("fc")["weight"],
            "fc.bias": fused_graph.tensors("fc")["bias"],
        }
    )
    return fused_graph.to(dtype=torch.float64), chain_graph.to(dtype=torch.float64)


@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_rule_equals_the_unfused_chain(preset, seed, adjoints):
    fused, chain = _graphs()
    torch.testing.assert_close(fused.tensors("fc")["weight"], chain.tensors("fc")["weight"])
    x = torch.randn(
        2, 3, 2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    torch.testing.assert_close(fused.forward(x).output, chain.forward(x).output, rtol=0, atol=1e-12)
    seed_relevance = torch.randn(
        2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9)
    )
    got = relgraph.explanation(
        fused, x, rules=preset, output_relevance=seed_relevance, node_relevance=True
    )
    want = relgraph.explanation(
        chain, x, rules=preset, output_relevance=seed_relevance, node_relevance=True
    )
    assert (
        got.rules["context"].name
        == {"attnlrp": "attention-uniform", "cp-lrp": "attention-constant"}[preset]
    )
    scale = want.relevance.abs().max()
    assert (got.relevance - want.relevance).abs().max() <= 1e-10 * scale
    for part in "qkv":
        difference = got.node_relevance[part] - want.node_relevance[part]
        assert difference.abs().max() <= 1e-10 * scale, part
    if preset == "cp-lrp":
        assert got.relevance[:, :2].abs().max() == 0  # q and k get nothing


def test_fused_attnlrp_equals_gradient_times_input_with_the_quarter_half_factors(adjoints):
    """AttnLRP on the block is autograd's gradient × input of ``Σ (R/O) ⊙ O``, with q and k
    scaled by ¼ and v by ½ (LXT's efficient mode), computed here with autograd from the
    relevance that reached the node."""
    fused, _ = _graphs()
    x = torch.randn(2, 3, 2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    e = relgraph.explanation(fused, x, rules="attnlrp", target=2, node_relevance=True)
    relevance = e.node_relevance["context"]
    q, k, v = (x[:, i].clone().requires_grad_() for i in range(3))
    out = _explicit(q, k, v, fused.op("context").scale)
    (out * (relevance / out.detach())).sum().backward()
    for part, leaf, factor in zip("qkv", (q, k, v), (0.25, 0.25, 0.5)):
        expected = leaf.detach() * leaf.grad * factor
        got = e.node_relevance[part]
        assert (got - expected).abs().max() <= 1e-12 * expected.abs().max(), part


def test_mismatched_heads_are_refused_naming_the_node():
    spec = {
        "name": "bad",
        "input": {"name": "x", "shape": [3, 2, 6, 4]},
        "nodes": [
            {"name": "q", "op": "select", "inputs": "x", "dim": 1, "index": 0},
            {"name": "k", "op": "slice", "inputs": "q", "dim": 3, "start": 1},
            {"name": "context", "op": "attention", "inputs": ["q", "k", "k"]},
            {"name": "out", "op": "reshape", "shape": [-1]},
        ],
        "output": "out",
    }
    with pytest.raises(RelgraphError, match="context") as info:
        _build(spec)
    assert "\n" not in str(info.value)


def test_fused_attnlrp_loses_the_softmax_taylor_bias(adjoints):
    """What the fused node does not hand on is the softmax rule's loss in the chain:
    ``Σ R_P − Σ R_Z`` with ``R_P = P ⊙ ½ dP`` and ``R_Z = Z ⊙ ½ dS``, formed here from the
    full probability matrix (``dP = (R/O) vᵀ``, ``dS = P ⊙ (dP − rowsum(P ⊙ dP))``)."""
    fused, _ = _graphs()
    x = torch.randn(2, 3, 2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    e = relgraph.explanation(fused, x, rules="attnlrp", node_relevance=True, target=1)
    q, k, v = x[:, 0], x[:, 1], x[:, 2]
    z = q @ k.transpose(-1, -2) * fused.op("context").scale
    p = torch.softmax(z, dim=-1)
    relevance = e.node_relevance["context"]
    dp = (relevance / (p @ v)) @ v.transpose(-1, -2)
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    expected = (p * dp / 2).sum((1, 2, 3)) - (z * ds / 2).sum((1, 2, 3))
    assert (e.lost["context"] - expected).abs().max() <= 1e-10 * relevance.abs().sum()


def test_the_fused_op_is_found_as_attention_by_the_head_readout_and_the_frozen_shortcut():
    from relgraph.methods.frozen import temporal_cropping_applies
    from relgraph.methods.heads import attention_nodes

    fused, chain = _graphs()
    assert attention_nodes(fused) == ["context"] == attention_nodes(chain)
    assert not temporal_cropping_applies(fused)
    x = torch.randn(2, 3, 2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    e = relgraph.explanation(fused, x, rules="attnlrp", target=0, node_relevance=True)
    heads = relgraph.head_relevance(fused, e)["context"]
    assert heads.shape == (2, 2)
    torch.testing.assert_close(heads, e.node_relevance["context"].sum((-2, -1)))
