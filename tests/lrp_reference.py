"""Independent references for the relevance rules, written from the formulas in
docs/reference/rules.md.

Nothing here imports relgraph. Affine rules are computed the way hook-based LRP libraries do
it: autograd on the layer with modified weights ("gradient × input"): ``z = A(x; W′)``,
``s = R / stab(z)`` held constant, ``c = ∂(z·s)/∂x``, ``R_in = x ⊙ c``. Pooling rules are
computed with explicit loops over the pooling windows (a dense 0/1 membership matrix per
layer), and merges with numpy. ``c3d_deep_taylor`` re-implements the full C3D functionally
and explains it layer by layer with the same trick (Montavon et al.'s LRP tutorial).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

AffineFn = Callable[..., torch.Tensor]

# --------------------------------------------------------------------------- safe division


def safe_divide(
    numerator: torch.Tensor, z: torch.Tensor, stabilizer: str = "zero", epsilon: float = 0.0
) -> torch.Tensor:
    """``numerator / stab(z)``: ``zero`` gives 0 where z == 0; ``epsilon`` adds ε·sign(z),
    with sign(0) = +1."""
    if stabilizer == "epsilon":
        z = z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    zero = z == 0
    return torch.where(zero, 0.0, numerator / torch.where(zero, 1.0, z)).to(z.dtype)


# --------------------------------------------------------------------------- affine maps


def affine_fn(fields: dict) -> AffineFn:
    """``f(x, W, b=None)``: the node's affine map written directly with torch.nn.functional
    from its YAML fields (every field given explicitly by the caller)."""
    op = fields["op"]
    if op.startswith("conv"):
        conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[op]

        def f(x, weight, bias=None):
            return conv(
                x,
                weight,
                bias,
                fields["stride"],
                fields["padding"],
                fields["dilation"],
                fields["groups"],
            )

        return f
    if op == "linear":
        return lambda x, weight, bias=None: F.linear(x, weight, bias)
    if op.startswith("batchnorm"):

        def f(x, scale, shift=None):
            view = (1, -1, *([1] * (x.dim() - 2)))
            out = x * scale.reshape(view)
            return out if shift is None else out + shift.reshape(view)

        return f
    raise ValueError(op)


def padded_conv_fn(fields: dict) -> AffineFn:
    """A convolution with its zero padding done by ``F.pad`` and the conv itself unpadded:
    the second way of writing ``A`` that makes padded positions explicit zeros."""
    op = fields["op"]
    conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[op]
    pads: list[int] = []
    for p in reversed(fields["padding"]):
        pads += [p, p]

    def f(x, weight, bias=None):
        return conv(
            F.pad(x, pads), weight, bias, fields["stride"], 0, fields["dilation"], fields["groups"]
        )

    return f


def batchnorm_scale_shift(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch norm at inference as ``x·scale + shift``."""
    scale = 1.0 / torch.sqrt(running_var + eps)
    shift = -running_mean * scale
    if weight is not None:
        scale, shift = scale * weight, shift * weight + bias
    return scale, shift


# --------------------------------------------------------------------------- affine rules


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _vjp(z: torch.Tensor, leaves: Sequence[torch.Tensor], s: torch.Tensor):
    """``Aᵀ(s)`` for each leaf: the gradient of ``(z · s).sum()`` with s held constant."""
    return torch.autograd.grad(z, list(leaves), grad_outputs=s.detach(), allow_unused=False)


def _pos(t):
    return t.clamp(min=0)


def _neg(t):
    return t.clamp(max=0)


def epsilon_reference(f, x, weight, bias, relevance, epsilon, use_bias):
    """``R_in = x ⊙ ∇ₓ(z · R/stab_ε(z))`` with ``z = A(x; W, b)``."""
    x = _leaf(x)
    z = f(x, weight, bias if use_bias else None)
    s = safe_divide(relevance, z.detach(), "epsilon", epsilon)
    (grad,) = _vjp(z, [x], s)
    return (x * grad).detach()


def _two_sided(f, x, w_for_positive, w_for_negative, bias, relevance, stab):
    """``z = A(x⁺; W_p, b) + A(x⁻; W_n)``; ``R_in = x⁺ ⊙ ∇_{x⁺} + x⁻ ⊙ ∇_{x⁻}``."""
    x_pos, x_neg = _leaf(_pos(x)), _leaf(_neg(x))
    z = f(x_pos, w_for_positive, bias) + f(x_neg, w_for_negative)
    s = safe_divide(relevance, z.detach(), *stab)
    grad_pos, grad_neg = _vjp(z, [x_pos, x_neg], s)
    return (x_pos * grad_pos + x_neg * grad_neg).detach()


def zplus_reference(f, x, weight, bias, relevance, use_bias, stab=("zero", 0.0)):
    """z⁺ with the positive bias part in z when ``use_bias``."""
    b = _pos(bias) if use_bias and bias is not None else None
    return _two_sided(f, x, _pos(weight), _neg(weight), b, relevance, stab)


def alphabeta_reference(f, x, weight, bias, relevance, alpha, beta, use_bias, stab=("zero", 0.0)):
    """``α·[positive share] − β·[negative share]``; b⁺ / b⁻ in zα / zβ when ``use_bias``."""
    b_pos = _pos(bias) if use_bias and bias is not None else None
    b_neg = _neg(bias) if use_bias and bias is not None else None
    positive_share = _two_sided(f, x, _pos(weight), _neg(weight), b_pos, relevance, stab)
    negative_share = _two_sided(f, x, _neg(weight), _pos(weight), b_neg, relevance, stab)
    return alpha * positive_share - beta * negative_share


def zbeta_reference(f, x, weight, low, high, relevance, stab=("zero", 0.0)):
    """``z = A(x;W) − A(l;W⁺) − A(h;W⁻)``; ``R_in = x⊙∇ₓ − l⊙∇_l − h⊙∇_h`` where each
    gradient is of its own term (``l``, ``h`` are full tensors of x's shape)."""
    x, low, high = _leaf(x), _leaf(low), _leaf(high)
    z_x = f(x, weight)
    z_low = f(low, _pos(weight))
    z_high = f(high, _neg(weight))
    z = z_x - z_low - z_high
    s = safe_divide(relevance, z.detach(), *stab)
    (grad_x,) = _vjp(z_x, [x], s)
    (grad_low,) = _vjp(z_low, [low], s)
    (grad_high,) = _vjp(z_high, [high], s)
    return (x * grad_x - low * grad_low - high * grad_high).detach()


def gamma_reference(f, x, weight, bias, relevance, gamma, stab=("zero", 0.0), use_bias=False):
    """γ: outputs with z > 0 share by ``W↑ = W + γW⁺`` on x⁺ (``W↓`` on x⁻), outputs with
    z < 0 by ``W↓`` on x⁺ (``W↑`` on x⁻); z is the layer's output. With ``use_bias`` the
    x⁺ terms carry ``b + γb⁺`` (``b + γb⁻``), as zennit's ``Gamma``."""
    z = f(x, weight, bias)
    w_up, w_down = weight + gamma * _pos(weight), weight + gamma * _neg(weight)
    b_up = b_down = None
    if use_bias and bias is not None:
        b_up, b_down = bias + gamma * _pos(bias), bias + gamma * _neg(bias)
    up = _two_sided(f, x, w_up, w_down, b_up, torch.where(z > 0, relevance, 0.0), stab)
    down = _two_sided(f, x, w_down, w_up, b_down, torch.where(z < 0, relevance, 0.0), stab)
    return up + down


def _all_ones_rule(f, x_shape, weight, relevance, stab):
    ones = _leaf(torch.ones(x_shape, dtype=relevance.dtype))
    z = f(ones, weight)
    s = safe_divide(relevance, z.detach(), *stab)
    (grad,) = _vjp(z, [ones], s)
    return grad.detach()


def flat_reference(f, x_shape, weight, relevance, stab=("zero", 0.0)):
    """``R_in = ∇₁(A(1;1) · R/A(1;1))``."""
    return _all_ones_rule(f, x_shape, torch.ones_like(weight), relevance, stab)


def wsquare_reference(f, x_shape, weight, relevance, stab=("zero", 0.0)):
    """``R_in = ∇₁(A(1;W²) · R/A(1;W²))``."""
    return _all_ones_rule(f, x_shape, weight**2, relevance, stab)


# --------------------------------------------------------------------------- pooling windows


def pool_output_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's documented pooling output size (with its ceil-mode correction)."""
    span = (n + 2 * p - d * (k - 1) - 1) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool_windows(
    in_size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Dense membership matrix ``M[j, k] = 1`` if input position k (flattened) lies in the
    window of output position j; positions in the padding belong to no input."""
    out_size = tuple(
        pool_output_size(n, k, s, p, d, ceil_mode)
        for n, k, s, p, d in zip(in_size, kernel, stride, padding, dilation)
    )
    membership = np.zeros((math.prod(out_size), math.prod(in_size)))
    for j, out_index in enumerate(np.ndindex(*out_size)):
        for offsets in np.ndindex(*kernel):
            position = [
                o * s - p + t * d
                for o, t, s, p, d in zip(out_index, offsets, stride, padding, dilation)
            ]
            if all(0 <= q < n for q, n in zip(position, in_size)):
                membership[j, np.ravel_multi_index(position, in_size)] = 1.0
    return membership, out_size


def adaptive_windows(
    in_size: Sequence[int], out_size: Sequence[int]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Membership matrix of adaptive pooling: bin i of n → o spans [⌊i·n/o⌋, ⌈(i+1)·n/o⌉)."""
    membership = np.zeros((math.prod(out_size), math.prod(in_size)))
    for j, out_index in enumerate(np.ndindex(*out_size)):
        ranges = [
            range(math.floor(i * n / o), math.ceil((i + 1) * n / o))
            for i, n, o in zip(out_index, in_size, out_size)
        ]
        for position in np.ndindex(*[len(r) for r in ranges]):
            absolute = [r[q] for r, q in zip(ranges, position)]
            membership[j, np.ravel_multi_index(absolute, in_size)] = 1.0
    return membership, tuple(out_size)


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(t.shape[0], t.shape[1], -1)


def window_max(x: torch.Tensor, membership: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window: the largest member and its flat input position, shapes (B, C, windows)."""
    values = _flat(x)
    batch, channels, _ = values.shape
    winners = np.zeros((batch, channels, membership.shape[0]), dtype=np.int64)
    for j, row in enumerate(membership):
        members = np.flatnonzero(row)
        winners[:, :, j] = members[np.argmax(values[:, :, members], axis=2)]
    return np.take_along_axis(values, winners, axis=2), winners


def winner_take_all_reference(x, relevance, membership) -> np.ndarray:
    """``R_in[k] = Σ_j [k = argmax of window j] R[j]``."""
    _, winners = window_max(x, membership)
    r = _flat(relevance)
    r_in = np.zeros(_flat(x).shape)
    for b, c, j in np.ndindex(*r.shape):
        r_in[b, c, winners[b, c, j]] += r[b, c, j]
    return r_in.reshape(x.shape)


def proportional_pool_reference(x, relevance, membership) -> np.ndarray:
    """``R_in[k] = x_k Σ_j M_jk R_j / Σ_i M_ji x_i`` (0 where a window sums to 0)."""
    values, r = _flat(x), _flat(relevance)
    sums = values @ membership.T
    share = np.divide(r, sums, out=np.zeros_like(r), where=sums != 0)
    return (values * (share @ membership)).reshape(x.shape)


def uniform_pool_reference(x_shape, relevance, membership) -> np.ndarray:
    """``R_in[k] = Σ_j M_jk R_j / N_j`` with ``N_j`` the number of real inputs of window j."""
    counts = membership.sum(axis=1)
    return ((_flat(relevance) / counts) @ membership).reshape(x_shape)


# --------------------------------------------------------------------------- merges


def add_split_reference(inputs: Sequence[torch.Tensor], relevance: torch.Tensor):
    """``R_i = x_i / Σ_k x_k · R`` (0 where the sum is 0)."""
    values = [t.numpy() for t in inputs]
    total = sum(values)
    r = relevance.numpy()
    share = np.divide(r, total, out=np.zeros_like(r), where=total != 0)
    return [v * share for v in values]


def concat_split_reference(inputs: Sequence[torch.Tensor], relevance: torch.Tensor, dim: int):
    """Each input's own slice of R along ``dim``."""
    bounds = np.cumsum([0] + [t.shape[dim] for t in inputs])
    r = relevance.numpy()
    return [r[(slice(None),) * dim + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:])]


def signal_take_all_reference(
    input_shapes: Sequence[Sequence[int]], relevance: torch.Tensor, signal: int
) -> list[torch.Tensor]:
    """Arras et al. 2017: the signal gets ``R`` through the adjoint of its broadcast to the
    output's shape (autograd of ``expand``), the gate gets 0."""
    handed = [torch.zeros(tuple(shape), dtype=relevance.dtype) for shape in input_shapes]
    leaf = _leaf(torch.zeros(tuple(input_shapes[signal]), dtype=relevance.dtype))
    (handed[signal],) = _vjp(leaf.expand(relevance.shape), [leaf], relevance)
    return handed


def mean_proportional_reference(x: torch.Tensor, relevance: torch.Tensor, dims, keepdim):
    """``z = Σ_dims x``, ``R_in = x ⊙ ∇ₓ(z · R/z)`` (0 where z == 0): gradient × input on the
    sum the mean is a multiple of."""
    x = _leaf(x)
    z = x.sum(dim=tuple(dims), keepdim=keepdim)
    (grad,) = _vjp(z, [x], safe_divide(relevance, z.detach()))
    return (x * grad).detach()


def mean_uniform_reference(x_shape, relevance: np.ndarray, dims, keepdim) -> np.ndarray:
    """``R_in[k] = R[j(k)] / N`` with N the number of averaged elements, by numpy broadcasting."""
    count = math.prod(x_shape[d] for d in dims)
    if not keepdim:
        relevance = np.expand_dims(relevance, tuple(sorted(dims)))
    return np.broadcast_to(relevance / count, x_shape).copy()


# --------------------------------------------------------------------------- full C3D

#: C3D as in the public code of Tran et al. / Hiley et al.: (kind, name, arguments)
C3D_LAYERS: tuple[tuple[str, str, dict], ...] = (
    ("conv", "conv1", {}),
    ("relu", "relu1", {}),
    ("maxpool", "pool1", {"kernel": (1, 2, 2), "stride": (1, 2, 2), "padding": 0}),
    ("conv", "conv2", {}),
    ("relu", "relu2", {}),
    ("maxpool", "pool2", {"kernel": 2, "stride": 2, "padding": 0}),
    ("conv", "conv3a", {}),
    ("relu", "relu3a", {}),
    ("conv", "conv3b", {}),
    ("relu", "relu3b", {}),
    ("maxpool", "pool3", {"kernel": 2, "stride": 2, "padding": 0}),
    ("conv", "conv4a", {}),
    ("relu", "relu4a", {}),
    ("conv", "conv4b", {}),
    ("relu", "relu4b", {}),
    ("maxpool", "pool4", {"kernel": 2, "stride": 2, "padding": 0}),
    ("conv", "conv5a", {}),
    ("relu", "relu5a", {}),
    ("conv", "conv5b", {}),
    ("relu", "relu5b", {}),
    ("maxpool", "pool5", {"kernel": 2, "stride": 2, "padding": (0, 1, 1)}),
    ("flatten", "flatten", {}),
    ("linear", "fc6", {}),
    ("relu", "relu6", {}),
    ("linear", "fc7", {}),
    ("relu", "relu7", {}),
    ("linear", "fc8", {}),
)


def _c3d_layer(kind: str, name: str, args: dict, weights: dict[str, torch.Tensor]):
    """The layer as a function of its input only (dropout is the identity at inference)."""
    if kind == "conv":
        return lambda t, w=None: F.conv3d(
            t,
            weights[f"{name}.weight"] if w is None else w,
            (weights[f"{name}.bias"] if w is None else None),
            padding=1,
        )
    if kind == "linear":
        return lambda t, w=None: F.linear(
            t,
            weights[f"{name}.weight"] if w is None else w,
            (weights[f"{name}.bias"] if w is None else None),
        )
    if kind == "maxpool":
        return lambda t: F.max_pool3d(t, args["kernel"], args["stride"], args["padding"])
    if kind == "relu":
        return F.relu
    if kind == "flatten":
        return lambda t: t.reshape(t.shape[0], -1)
    raise ValueError(kind)


def c3d_deep_taylor(
    weights: dict[str, torch.Tensor], x: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The paper's deep Taylor explanation of C3D, layer by layer with autograd.

    Rules: zβ at conv1 with scalar bounds ``(low, high)`` as tensors of x's shape; z⁺ with
    bias off at every other conv and linear layer (inputs are ReLU outputs ≥ 0, so
    ``z = A(x; W⁺)``); max pools route by their ordinary gradient (winner-take-all); ReLU
    and flatten pass relevance on unchanged (identity gradient). Seed: one-hot at the
    predicted class. Returns ``(input relevance, logits, predicted class)``.
    """
    layers = [
        (kind, name, _c3d_layer(kind, name, args, weights)) for kind, name, args in C3D_LAYERS
    ]
    activations = [x]
    with torch.no_grad():
        for _, _, layer in layers:
            activations.append(layer(activations[-1]))
    logits = activations[-1]
    predicted = int(logits[0].argmax())
    relevance = torch.zeros_like(logits)
    relevance[0, predicted] = 1.0
    for (kind, name, layer), a in reversed(list(zip(layers, activations[:-1]))):
        if kind in ("relu", "flatten"):
            relevance = relevance.reshape(a.shape)
            continue
        if kind == "maxpool":
            a = _leaf(a)
            (relevance,) = _vjp(layer(a), [a], relevance)
            continue
        weight = weights[f"{name}.weight"]
        if name == "conv1":
            a = _leaf(a)
            low_t, high_t = _leaf(torch.full_like(a, low)), _leaf(torch.full_like(a, high))
            z_x, z_low, z_high = (
                layer(a, weight),
                layer(low_t, _pos(weight)),
                layer(high_t, _neg(weight)),
            )
            s = safe_divide(relevance, (z_x - z_low - z_high).detach())
            (grad_x,) = _vjp(z_x, [a], s)
            (grad_low,) = _vjp(z_low, [low_t], s)
            (grad_high,) = _vjp(z_high, [high_t], s)
            relevance = (a * grad_x - low_t * grad_low - high_t * grad_high).detach()
        else:
            a = _leaf(a)
            z = layer(a, _pos(weight))
            (grad,) = _vjp(z, [a], safe_divide(relevance, z.detach()))
            relevance = (a * grad).detach()
    return relevance, logits, predicted


# --------------------------------------------------------------------------- video ResNets


class LeftNorm(torch.nn.Module):
    """What zennit 0.5.1's ``MergeBatchNorm`` leaves of a batch norm it merged: running mean 0,
    variance 1, weight 1 and bias 0 but its ``eps`` kept, so ``y = x / √(1 + eps)``, not the
    identity (zennit sets ``eps`` to 0 from 1.0.0 on, a release PyPI does not have)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.factor = (1.0 + eps) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def fold_batchnorms(
    modules: Sequence[torch.nn.Module], leave_eps: bool = False
) -> list[torch.nn.Module]:
    """The leaf modules of a chain with each conv/linear followed by a batch norm fused into
    one layer by torch's own ``torch.nn.utils.fusion`` (not relgraph's pass), in eval mode.
    ``leave_eps``: each fused batch norm leaves a ``LeftNorm`` behind it, as zennit 0.5.1's
    canonizer does."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    leaves: list[torch.nn.Module] = []
    for module in modules:
        leaves += [m for m in module.modules() if not list(m.children())]
    folded: list[torch.nn.Module] = []
    for leaf in leaves:
        previous = folded[-1] if folded else None
        fuse = None
        if isinstance(leaf, torch.nn.modules.batchnorm._BatchNorm) and previous is not None:
            if isinstance(previous, torch.nn.modules.conv._ConvNd):
                fuse = fuse_conv_bn_eval
            elif isinstance(previous, torch.nn.Linear):
                fuse = fuse_linear_bn_eval
        if fuse is None:
            folded.append(leaf)
            continue
        folded[-1] = fuse(previous.eval(), leaf.eval())
        if leave_eps:
            folded.append(LeftNorm(leaf.eps))
    return folded


def _ruled(z_true: torch.Tensor, z_rule: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The value ``z_true``, with the gradient of ``z_rule · (z_true / stab_ε(z_rule))`` (the
    quotient held constant). With the relevance written ``R = a ⊙ g`` (activation times the
    incoming gradient) at every layer, the gradient then carries LRP:
    ``R_in = x ⊙ Jᵀ_rule(R_out / stab_ε(z_rule))`` (Montavon et al.'s LRP tutorial trick)."""
    quotient = safe_divide(z_true.detach(), z_rule.detach(), "epsilon", epsilon)
    h = z_rule * quotient
    return z_true.detach() + h - h.detach()


def _zennit_layer(layer: torch.nn.Module, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One layer of zennit's EpsilonPlus on a canonized model, as its modified gradient."""
    if isinstance(layer, torch.nn.Conv3d):
        w, b = layer.weight, layer.bias
        conv = lambda inp, weight, bias: F.conv3d(  # noqa: E731
            inp, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups
        )
        z_true = conv(x, w, b)
        # zennit's ZPlus: z = A(x⁺;W⁺) + A(x⁻;W⁻) + b⁺
        bias_pos = None if b is None else _pos(b).detach()
        z_rule = conv(_pos(x), _pos(w).detach(), bias_pos) + conv(_neg(x), _neg(w).detach(), None)
        return _ruled(z_true, z_rule, epsilon)
    if isinstance(layer, torch.nn.Linear):  # epsilon, bias kept
        z = F.linear(x, layer.weight.detach(), layer.bias.detach())
        return _ruled(z, z, epsilon)
    if isinstance(layer, torch.nn.ReLU):  # pass: ReLU's own gradient keeps R = a ⊙ g
        return F.relu(x)
    if isinstance(layer, torch.nn.MaxPool3d):  # no rule in zennit: the gradient (to the argmax)
        return F.max_pool3d(
            x, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode
        )
    if isinstance(layer, torch.nn.Dropout):  # the identity in eval mode
        return x
    if isinstance(layer, LeftNorm):  # zennit's Pass: a constant factor keeps R = a ⊙ g
        return layer(x)
    raise TypeError(type(layer))


def video_resnet_epsilon_plus(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int,
    epsilon: float = 1e-6,
    *,
    nodes: dict[str, torch.Tensor] | None = None,
    leave_eps: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """zennit's EpsilonPlus on a torchvision-style video ResNet (tests/zoo_reference.py),
    canonized with ``fold_batchnorms``, by autograd through a modified-gradient forward.

    Rules: conv: z⁺ with b⁺ (zennit's ZPlus); linear: epsilon with the bias; ReLU: pass;
    residual add and the global average pool: zennit's Norm, ``R_i = x_i R / stab_ε(z)``.
    Seed: one-hot at ``target``. Returns ``(input relevance, logits)``.

    ``nodes``: filled with the relevance of each block's output (``"layer3.0"``) and of the
    two inputs of its residual add (``"layer3.0:main"``, ``"layer3.0:shortcut"``), read as
    ``R = a ⊙ g`` at those tensors. ``leave_eps``: canonized as zennit 0.5.1's
    ``SequentialMergeBatchNorm`` does it (``LeftNorm``); the logits are then not the model's.
    """
    x = _leaf(x)
    recorded: dict[str, torch.Tensor] = {}

    def chain(modules, a):
        for layer in fold_batchnorms(modules, leave_eps):
            a = _zennit_layer(layer, a, epsilon)
        return a

    a = chain([model.stem], x)
    index = 1
    while hasattr(model, f"layer{index}"):  # four stages (two in relgraph's r2plus1d-tiny)
        for number, block in enumerate(getattr(model, f"layer{index}")):
            name = f"layer{index}.{number}"
            main = chain([block.conv1, block.conv2], a)
            shortcut = a
            if block.downsample is not None:
                shortcut = chain([block.downsample], a)
            total = main + shortcut
            a = F.relu(_ruled(total, total, epsilon))
            recorded.update({f"{name}:main": main, f"{name}:shortcut": shortcut, name: a})
        index += 1
    pooled = a.mean(dim=(2, 3, 4))
    features = _ruled(pooled, pooled, epsilon)
    (fc,) = fold_batchnorms([model.fc])
    logits = _zennit_layer(fc, features, epsilon)
    seed = torch.zeros_like(logits)
    seed[:, target] = 1.0
    # R = a ⊙ g at the output: start the gradient at seed / logits
    wanted = [x] + (list(recorded.values()) if nodes is not None else [])
    grads = torch.autograd.grad(logits, wanted, grad_outputs=safe_divide(seed, logits.detach()))
    if nodes is not None:
        for (name, t), grad in zip(recorded.items(), grads[1:]):
            nodes[name] = (t * grad).detach()
    return (x * grads[0]).detach(), logits.detach()


def _seeded_relevance(logits: torch.Tensor, x: torch.Tensor, target: int):
    """``R = a ⊙ g`` at the output with a one-hot seed at ``target``: start the gradient at
    seed / logits; the input relevance is ``x ⊙ ∂/∂x``. Returns ``(relevance, logits)``."""
    seed = torch.zeros_like(logits)
    seed[:, target] = 1.0
    (grad,) = torch.autograd.grad(logits, [x], grad_outputs=safe_divide(seed, logits.detach()))
    return (x * grad).detach(), logits.detach()


def _chain(modules: Sequence[torch.nn.Module], a: torch.Tensor, epsilon: float) -> torch.Tensor:
    """A chain of leaf modules, batch norms folded, each layer as its modified gradient."""
    for layer in fold_batchnorms(modules):
        a = _zennit_layer(layer, a, epsilon)
    return a


def _fused(conv: torch.nn.Conv3d, norm: torch.nn.Module | None) -> torch.nn.Conv3d:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return conv if norm is None else fuse_conv_bn_eval(conv.eval(), norm.eval())


def _split_add(a: torch.Tensor, b: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Residual add, zennit's Norm: ``R_i = x_i · R / stab_ε(a + b)``."""
    total = a + b
    return _ruled(total, total, epsilon)


def _avg_pool_norm(x: torch.Tensor, pool: torch.nn.AvgPool3d, epsilon: float) -> torch.Tensor:
    """Average pool, zennit's Norm: ``R_in = x ⊙ Aᵀ(R / stab_ε(avg(x)))``, A the pool."""
    pooled = F.avg_pool3d(
        x, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad
    )
    return _ruled(pooled, pooled, epsilon)


def _mean_proportional(x: torch.Tensor, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    """A mean, relevance in proportion to the contributions: ``R_in = x ⊙ R / Σ x`` (0 where
    the sum is 0, the zero stabiliser)."""
    return _ruled(x.mean(dim=dims, keepdim=keepdim), x.sum(dim=dims, keepdim=keepdim), 0.0)


def _swish_pass(x: torch.Tensor) -> torch.Tensor:
    """silu with relevance passed through (``R_in = R``): ``x · sigmoid(x)`` with the sigmoid
    held constant, so ``x ⊙ ∂/∂x = x · sigmoid(x) · g = R``."""
    return x * torch.sigmoid(x).detach()


def _gated_signal_take_all(x: torch.Tensor, se: torch.nn.Module) -> torch.Tensor:
    """The squeeze-excitation product ``x · gate(x)``, signal-take-all (Arras et al. 2017):
    the gate held constant, so the signal x gets ``R`` and the gate branch nothing."""
    with torch.no_grad():
        conv_1, relu, conv_2, sigmoid = se.block
        gate = sigmoid(conv_2(relu(conv_1(x.mean(dim=(2, 3, 4), keepdim=True)))))
    return x * gate


def s3d_epsilon_plus(
    model: torch.nn.Module, x: torch.Tensor, target: int, epsilon: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """zennit's EpsilonPlus on torchvision's S3D (``zoo_reference.S3D``), batch norms folded,
    by autograd through a modified-gradient forward.

    Rules: conv z⁺ with b⁺, ReLU pass, max pools by their gradient (winner-take-all), each
    inception branch its slice of the concat (the gradient of ``torch.cat``), the head's
    average pool zennit's Norm, dropout the identity, the classifier conv z⁺ with b⁺, the
    final mean over T, H, W proportional (zero stabiliser). Returns ``(relevance, logits)``.
    """
    x = _leaf(x)
    a = x
    for module in model.features:
        if hasattr(module, "branch0"):  # an inception block: four chains, concatenated
            branches = (module.branch0, module.branch1, module.branch2, module.branch3)
            a = torch.cat([_chain([branch], a, epsilon) for branch in branches], dim=1)
        else:
            a = _chain([module], a, epsilon)
    a = _avg_pool_norm(a, model.avgpool, epsilon)
    a = _chain([model.classifier], a, epsilon)
    return _seeded_relevance(_mean_proportional(a, (2, 3, 4), False), x, target)


def x3d_epsilon_plus(
    model: torch.nn.Module, x: torch.Tensor, target: int, epsilon: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """zennit's EpsilonPlus, with the rules relgraph's presets add for X3D's ops, on
    pytorchvideo's X3D (``zoo_reference.X3D``), batch norms folded, by autograd through a
    modified-gradient forward; explains the logits before the head's softmax.

    Rules: conv (depthwise included) z⁺ with b⁺, ReLU pass, swish pass, the SE product
    signal-take-all (the gate gets nothing), residual add and the head's average pool
    zennit's Norm, dropout and flatten the identity, the projection epsilon with its bias.
    Returns ``(relevance, logits)``.
    """
    x = _leaf(x)

    def conv(layer, a, norm=None):
        return _zennit_layer(_fused(layer, norm), a, epsilon)

    stem = model.blocks[0]
    a = conv(stem.conv.conv_t, x)
    a = F.relu(conv(stem.conv.conv_xy, a, stem.norm))
    for stage in model.blocks[1:5]:
        for block in stage.res_blocks:
            shortcut = a
            if block.branch1_conv is not None:
                shortcut = conv(block.branch1_conv, a, block.branch1_norm)
            b = block.branch2
            h = F.relu(conv(b.conv_a, a, b.norm_a))
            h = conv(b.conv_b, h, b.norm_b[0])
            if not isinstance(b.norm_b[1], torch.nn.Identity):
                h = _gated_signal_take_all(h, b.norm_b[1])
            h = conv(b.conv_c, _swish_pass(h), b.norm_c)
            a = F.relu(_split_add(shortcut, h, epsilon))
    head = model.blocks[5]
    a = F.relu(conv(head.pool.pre_conv, a, head.pool.pre_norm))
    a = _avg_pool_norm(a, head.pool.pool, epsilon)
    a = F.relu(conv(head.pool.post_conv, a))
    # dropout (eval) and the 1×1×1 → features flatten: identities; then the projection
    logits = _zennit_layer(head.proj, a.flatten(1), epsilon)
    return _seeded_relevance(logits, x, target)


# --------------------------------------------------------------------------- zennit's composites


def zennit_stabilize(z: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """zennit's ``stabilize``: ``z + ε·sign(z)`` with sign(0) = +1 (zennit 0.5.1, core.py)."""
    return z + epsilon * ((z == 0).to(z.dtype) + z.sign())


def modified_terms(terms, relevance: torch.Tensor, mask=None) -> torch.Tensor:
    """zennit's ``BasicHook`` for one z: ``z = Σ_k f_k(x_k)`` over modified forwards
    ``f_k`` of modified inputs ``x_k``, ``s = R / stab(z)`` (times ``mask``), ``R_in =
    Σ_k x_k ⊙ ∂(z·s)/∂x_k``. ``terms`` lists ``(x_k, f_k)``; ``f_k`` holds its own weights."""
    terms = [(x, f) for x, f in terms if bool(x.any())]  # an all-zero x⁻ adds nothing
    leaves = [_leaf(x) for x, _ in terms]
    outputs = [f(leaf) for leaf, (_, f) in zip(leaves, terms)]
    z = sum(outputs)
    s = relevance / zennit_stabilize(z.detach())
    if mask is not None:
        s = s * mask
    grads = torch.autograd.grad(outputs, leaves, grad_outputs=[s] * len(outputs))
    return sum(leaf * grad for leaf, grad in zip(leaves, grads)).detach()


def zennit_affine_rule(
    name: str, layer, weight, bias, a, relevance, low=None, high=None, gamma=0.25
):
    """One conv or linear layer under zennit 0.5.1's rules, written from zennit's rules.py:
    ``layer(x, W, b)`` is the layer's functional form with the weights passed in."""

    def f(w, b=None):
        return lambda t: layer(t, w, b)

    pos, neg = _pos(a), _neg(a)
    if name == "epsilon":  # Epsilon: z = Wx + b
        return modified_terms([(a, f(weight, bias))], relevance)
    if name == "zplus":  # ZPlus: z = W⁺x⁺ + b⁺ + W⁻x⁻
        return modified_terms(
            [(pos, f(_pos(weight), _pos(bias))), (neg, f(_neg(weight)))], relevance
        )
    if name == "alphabeta":  # AlphaBeta(2, 1): zα with b⁺, zβ with b⁻
        alpha = modified_terms(
            [(pos, f(_pos(weight), _pos(bias))), (neg, f(_neg(weight)))], relevance
        )
        beta = modified_terms(
            [(pos, f(_neg(weight), _neg(bias))), (neg, f(_pos(weight)))], relevance
        )
        return 2.0 * alpha - 1.0 * beta
    if name == "gamma":  # Gamma: W + γW±, b + γb± on the biased terms; sides by sign(Wx + b)
        up_w, down_w = weight + gamma * _pos(weight), weight + gamma * _neg(weight)
        up_b, down_b = bias + gamma * _pos(bias), bias + gamma * _neg(bias)
        with torch.no_grad():
            z = layer(a, weight, bias)
        up = modified_terms(
            [(pos, f(up_w, up_b)), (neg, f(down_w))], relevance, (z > 0).to(z.dtype)
        )
        down = modified_terms(
            [(pos, f(down_w, down_b)), (neg, f(up_w))], relevance, (z < 0).to(z.dtype)
        )
        return up + down
    if name == "zbox":  # ZBox: z = (Wx + b) − (W⁺l + b⁺) − (W⁻h + b⁻)
        low_t, high_t = low.expand_as(a).clone(), high.expand_as(a).clone()
        return modified_terms(
            [
                (a, f(weight, bias)),
                (low_t, lambda t: -layer(t, _pos(weight), _pos(bias))),
                (high_t, lambda t: -layer(t, _neg(weight), _neg(bias))),
            ],
            relevance,
        )
    raise ValueError(name)


def c3d_zennit(
    weights: dict[str, torch.Tensor],
    x: torch.Tensor,
    composite: str,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The functional C3D explained as zennit 0.5.1's ``EpsilonPlus``, ``EpsilonAlpha2Beta1``
    or ``EpsilonGammaBox`` would (``composite``: ``epsilon-plus``, ``epsilon-alpha2-beta1``,
    ``epsilon-gamma-box``): ReLU ``Pass``, max pools by their gradient, linear layers
    ``Epsilon(1e-6)``, convolutions ``ZPlus``/``AlphaBeta(2, 1)``/``Gamma(0.25)``, the first
    convolution ``ZBox(low, high)`` in the last. Seed: one-hot at the predicted class.
    Returns ``(input relevance, logits)``."""
    conv_rule = {"epsilon-plus": "zplus", "epsilon-alpha2-beta1": "alphabeta"}.get(
        composite, "gamma"
    )
    layers = [(kind, name, args) for kind, name, args in C3D_LAYERS]
    activations = [x]
    with torch.no_grad():
        for kind, name, args in layers:
            activations.append(_c3d_layer(kind, name, args, weights)(activations[-1]))
    logits = activations[-1]
    relevance = torch.zeros_like(logits)
    relevance[0, int(logits[0].argmax())] = 1.0
    for (kind, name, args), a in reversed(list(zip(layers, activations[:-1]))):
        if kind in ("relu", "flatten"):
            relevance = relevance.reshape(a.shape)
            continue
        if kind == "maxpool":
            leaf = _leaf(a)
            pooled = F.max_pool3d(leaf, args["kernel"], args["stride"], args["padding"])
            (relevance,) = _vjp(pooled, [leaf], relevance)
            continue
        weight, bias = weights[f"{name}.weight"], weights[f"{name}.bias"]
        if kind == "linear":
            relevance = zennit_affine_rule("epsilon", F.linear, weight, bias, a, relevance)
            continue

        def conv(t, w, b=None):
            return F.conv3d(t, w, b, padding=1)

        rule = "zbox" if name == "conv1" and composite == "epsilon-gamma-box" else conv_rule
        relevance = zennit_affine_rule(rule, conv, weight, bias, a, relevance, low, high)
    return relevance, logits
