"""A user's own small video transformer through relgraph.from_torch: tubelet embedding
(conv3d), CLS token, position embeddings, pre-norm blocks of nn.MultiheadAttention (batch
first or not, with or without bias) or q·kᵀ / scaled_dot_product_attention, GELU MLPs, CLS or
mean pooling. The imported graph gives the module's logits and explains with AttnLRP keeping
every share of relevance (at the input or recorded as lost); what it cannot map is named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relgraph
from relgraph import TorchImportError


class MHABlock(nn.Module):
    def __init__(self, dim, heads, batch_first=True, bias=True, approximate="none"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=batch_first)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.batch_first = batch_first

    def forward(self, x):
        y = self.norm1(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        y = self.attn(y, y, y, need_weights=False)[0]
        if not self.batch_first:
            y = y.transpose(0, 1)
        x = x + y
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class FunctionalBlock(nn.Module):
    """Fused qkv, heads by reshape and permute, q @ kᵀ softmax and scaled_dot_product_attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        qkv = qkv.permute(0, 2, 3, 1, 4)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        manual = F.softmax(scores, dim=-1) @ v
        fused = F.scaled_dot_product_attention(q, k, v)
        y = (manual + fused).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class TinyVideoTransformer(nn.Module):
    def __init__(self, pooling="cls", block="mha", **options):
        super().__init__()
        dim, heads = 16, 2
        self.embed = nn.Conv3d(3, dim, (2, 8, 8), (2, 8, 8))
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 9, dim))
        make = (
            (lambda: MHABlock(dim, heads, **options))
            if block == "mha"
            else (lambda: FunctionalBlock(dim, heads))
        )
        self.blocks = nn.Sequential(make(), make())
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)
        self.pooling = pooling

    def forward(self, x):  # (B, C, T, H, W) -> 2 x 2 x 2 tubelets + CLS
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0] if self.pooling == "cls" else x.mean(dim=1))


VARIANTS = {
    "mha-cls": {},
    "mha-mean-tanh": {"pooling": "mean", "approximate": "tanh"},
    "mha-sequence-first": {"batch_first": False},
    "mha-no-bias": {"bias": False},
    "functional-sdpa": {"block": "functional"},
}


def _model(name, seed=0):
    torch.manual_seed(seed)
    model = TinyVideoTransformer(**VARIANTS[name]).eval()
    with torch.no_grad():  # layer norms off their initial 1 and 0
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.3 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
    return model


def _clip(dtype=torch.float32):
    return torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_imported_transformer_gives_the_module_logits(name):
    model = _model(name)
    g = relgraph.from_torch(model, (3, 4, 16, 16))
    with torch.no_grad():
        expected = model(_clip())
    assert (g.forward(_clip()).output - expected).abs().max() <= 1e-5 * expected.abs().max()
    ops = {g.op(n).type for n in g.order}
    assert {"layernorm", "attention", "prepend_token", "add_param"} <= ops
    assert ops & {"gelu", "gelu_pytorch_tanh"}


@pytest.mark.parametrize("name", ["mha-cls", "functional-sdpa"])
def test_attnlrp_on_the_import_keeps_every_share(name):
    g = relgraph.from_torch(_model(name), (3, 4, 16, 16)).to(dtype=torch.float64)
    e = relgraph.explanation(g, _clip(torch.float64), target=1, rules="attnlrp")
    total = e.relevance.sum((1, 2, 3, 4)) + sum(e.lost.values())
    assert torch.allclose(total, e.output_relevance.sum(1), rtol=1e-9, atol=1e-12)
    assert e.relevance.abs().sum() > 0


def test_attnlrp_loses_only_at_attention_without_biases_and_constants():
    model = _model("mha-no-bias")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Conv3d)) and module.bias is not None:
                module.bias.zero_()
        model.cls.zero_()
        model.pos.zero_()
    g = relgraph.from_torch(model, (3, 4, 16, 16)).to(dtype=torch.float64)
    e = relgraph.explanation(g, _clip(torch.float64), target=3, rules="attnlrp")
    # the softmax's Taylor rule, alone or inside the fused attention op
    lossy = ("softmax", "attention")
    for node, lost in e.lost.items():
        if g.op(node).type not in lossy:
            assert lost.abs().max() < 1e-10, node
    assert any(g.op(node).type == "attention" for node in e.lost)
    softmax = sum(lost for node, lost in e.lost.items() if g.op(node).type in lossy)
    assert torch.allclose(e.relevance.sum((1, 2, 3, 4)) + softmax, e.output_relevance.sum(1))


class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv3d(3, 16, (2, 8, 8), (2, 8, 8))
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        y = self.attn(x, x * 2.0, x, need_weights=False)[0]  # marker: cross
        return self.head(y.mean(dim=1))


class AttentionWeights(CrossAttention):
    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        y, w = self.attn(x, x, x)  # marker: weights
        return self.head((y + w.sum(-1, keepdim=True)).mean(dim=1))


class MaskedSDPA(CrossAttention):
    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        y = F.scaled_dot_product_attention(x, x, x, is_causal=True)  # marker: causal
        return self.head(y.mean(dim=1))


@pytest.mark.parametrize(
    "model, marker, reason",
    [
        (CrossAttention, "cross", "key or value other than the query"),
        (AttentionWeights, "weights", "attention weights are used"),
        (MaskedSDPA, "causal", "is_causal"),
    ],
)
def test_what_cannot_be_mapped_names_node_and_line(model, marker, reason):
    with pytest.raises(TorchImportError) as caught:
        relgraph.from_torch(model().eval(), (3, 4, 16, 16))
    message = str(caught.value)
    assert "\n" not in message and reason in message and f"# marker: {marker}" in message
