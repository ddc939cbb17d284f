"""Tiny transformers models (random weights, no Hub) and AttnLRP / CP-LRP references computed
by autograd on transformers' own modules, the way LXT's efficient mode computes them:
gradient × input with the forward modified so that its gradient is the rule's (σ of every
layer norm held constant, GELU's gradient replaced by gelu(x)/x, the gradients of q, k and v
divided by 4, 4 and 2 for AttnLRP; q and k detached for CP-LRP). Independent of relgraph's
ops and rules: nothing here imports them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AttentionInterface,
    TimesformerConfig,
    TimesformerForVideoClassification,
    VideoMAEConfig,
    VideoMAEForVideoClassification,
    VivitConfig,
    VivitForVideoClassification,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.models.timesformer import modeling_timesformer  # noqa: E402

#: the tiny size every family is built at: hidden 16, 2 layers, 2 heads, 4 frames of 16 × 16
TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "num_frames": 4,
    "image_size": 16,
    "num_labels": 5,
}


def hf_model(family: str, dtype: torch.dtype = torch.float64, seed: int = 0, **config):
    """A transformers model of ``family`` at the tiny size, every parameter moved off its
    initial value (layer norms not 1 and 0, biases not 0, the CLS token and position
    embeddings not 0), in eval mode. Returns ``(model, relgraph parameters)``."""
    torch.manual_seed(seed)
    if family == "videomae":
        pooling = config.pop("use_mean_pooling", True)
        cfg = VideoMAEConfig(
            **TINY, patch_size=8, tubelet_size=2, use_mean_pooling=pooling, **config
        )
        model = VideoMAEForVideoClassification(cfg)
        params = {"patch_size": 8, "tubelet_size": 2, "use_mean_pooling": int(pooling)}
    elif family == "vivit":
        cfg = VivitConfig(**TINY, tubelet_size=[2, 8, 8], **config)
        model = VivitForVideoClassification(cfg)
        params = {"patch_size": 8, "tubelet_time": 2}
    elif family == "timesformer":
        cfg = TimesformerConfig(**TINY, patch_size=8, **config)
        model = TimesformerForVideoClassification(cfg)
        params = {"patch_size": 8}
    else:
        raise ValueError(family)
    act = getattr(cfg, "hidden_act", "gelu")
    params["hidden_act"] = {"gelu": 0, "gelu_new": 1, "gelu_fast": 2, "gelu_pytorch_tanh": 3}[act]
    params["layer_norm_eps"] = cfg.layer_norm_eps
    params.update({k: v for k, v in TINY.items()})
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
            if name.endswith("norm.weight") or "layernorm" in name and name.endswith("weight"):
                p.add_(1.0)
    if _uses_attention_interface(model):
        model.set_attn_implementation("sdpa")
    return model.to(dtype).eval(), params


def _uses_attention_interface(model) -> bool:
    """Whether the model's attention goes through transformers' ``AttentionInterface``
    (TimeSformer's computes its own)."""
    return not isinstance(model, TimesformerForVideoClassification)


def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The model's logits for a relgraph-layout clip ``(B, C, T, H, W)``."""
    return model(pixel_values=x.transpose(1, 2)).logits


class _DivideGradient(torch.autograd.Function):
    """The identity whose gradient is divided by ``factor`` (the uniform rule)."""

    @staticmethod
    def forward(ctx, t, factor):
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad / ctx.factor, None


def _attention_inputs(mode: str, q, k, v):
    if mode == "attnlrp":
        return (
            _DivideGradient.apply(q, 4.0),
            _DivideGradient.apply(k, 4.0),
            _DivideGradient.apply(v, 2.0),
        )
    return q.detach(), k.detach(), v


def _register(mode: str) -> str:
    name = f"relgraph-reference-{mode}"

    def attention(module, query, key, value, attention_mask, **kwargs):
        query, key, value = _attention_inputs(mode, query, key, value)
        kwargs["dropout"] = 0.0
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, attention)
    return name


def _layer_norm_frozen(self, x):
    """``torch.nn.LayerNorm`` with σ detached (the identity rule, AttnLRP Prop. 3.3)."""
    mean = x.mean(-1, keepdim=True)
    sigma = ((x - mean) ** 2).mean(-1, keepdim=True).add(self.eps).sqrt()
    y = (x - mean) / sigma.detach()
    return y * self.weight + self.bias if self.weight is not None else y


class _IdentityRule(torch.nn.Module):
    """``act`` whose gradient is ``act(x) / x``: gradient × input is then the output (the
    identity rule)."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        y = self.act(x)
        safe = torch.where(x == 0, torch.ones_like(x), x)
        ratio = torch.where(x == 0, torch.full_like(x, 0.5), y / safe)
        return x * ratio.detach()


def _timesformer_attention(mode: str):
    def forward(self, hidden_states, output_attentions: bool = False):
        batch, tokens, channels = hidden_states.shape
        qkv = (
            self.qkv(hidden_states)
            .reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        query, key, value = _attention_inputs(mode, qkv[0], qkv[1], qkv[2])
        probs = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        context = (probs @ value).transpose(1, 2).reshape(batch, tokens, channels)
        return (context,)

    return forward


@contextlib.contextmanager
def lxt_patched(model, mode: str) -> Iterator[None]:
    """Within the block, ``model``'s gradient × input is the ``mode`` ("attnlrp" or
    "cp-lrp") relevance."""
    saved_impl = model.config._attn_implementation
    activations = []
    for module in model.modules():
        for attribute in ("intermediate_act_fn", "activation_fn"):
            act = getattr(module, attribute, None)
            if act is not None:
                activations.append((module, attribute, act))
                setattr(module, attribute, _IdentityRule(act))
    saved_norm = torch.nn.LayerNorm.forward
    saved_tsf = modeling_timesformer.TimesformerSelfAttention.forward
    torch.nn.LayerNorm.forward = _layer_norm_frozen
    modeling_timesformer.TimesformerSelfAttention.forward = _timesformer_attention(mode)
    interface = _uses_attention_interface(model)
    if interface:
        model.set_attn_implementation(_register(mode))
    try:
        yield
    finally:
        torch.nn.LayerNorm.forward = saved_norm
        modeling_timesformer.TimesformerSelfAttention.forward = saved_tsf
        for module, attribute, act in activations:
            setattr(module, attribute, act)
        if interface:
            model.set_attn_implementation(saved_impl)


def reference_relevance(model, x: torch.Tensor, target: torch.Tensor, mode: str) -> torch.Tensor:
    """Input ⊙ gradient of the target logits under ``lxt_patched``: the reference relevance
    of a one-hot seed."""
    x = x.detach().clone().requires_grad_(True)
    with lxt_patched(model, mode):
        logits = hf_logits(model, x)
        logits.gather(1, target[:, None]).sum().backward()
    return (x * x.grad).detach()
