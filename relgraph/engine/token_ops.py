"""Token ops: the primitives of a video transformer, on token tensors ``(B, ..., N, D)``.

Every op here is batched over all leading axes and carries its forward and its explicit
vector-Jacobian product (``vjp``, no autograd). The capabilities that rules ask for
(see ``relgraph.engine.ops`` for the protocol):

``normalize``  layer norm: ``frozen_scale_adjoint(s, x, tensors)`` = ``M[s ⊙ w / σ]``, the
               adjoint of the map with σ held constant (M the centring matrix)
``softmax``    softmax over the last axis (the rule reads input and output)
``bilinear``   the product of two inputs: ``input_vjp(g, inputs, slot)``, the adjoint of the
               map with the other input held constant
``attention``  fused ``softmax(scale · q kᵀ) v``: ``attention_vjp`` (the gradients of q, k and
               v) and ``value_adjoint`` (``Pᵀ g``), neither holding every row's probabilities
``index``      the output's entries are entries of the input or constants (permute, slice,
               select, repeat, a prepended token): relevance follows the adjoint, ``vjp``
``shift``      the input plus a constant: ``constant(tensors, like)`` (position embeddings)
``reshape``    relevance passes unchanged (GELU under the identity rule, a constant scale)

A node whose op holds one learned constant (``prepend_token``, ``add_param``: a
``torch.nn.Parameter`` in the library's module, not a module's weight) keeps it under the
node's own name (``PARAM``): its state-dict key is the node name, as the library writes it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from relgraph.engine.fields import Field, OpDefinitionError
from relgraph.engine.ops import Affine, Elementwise, Op, Shape, register_op, uniform_init

HIDDEN_ACTS = {"gelu": 0, "gelu_new": 1, "gelu_fast": 2, "gelu_pytorch_tanh": 3}
"""Hugging Face's ``hidden_act`` names by the number the transformer architectures' parameter
``hidden_act`` takes (architecture parameters are numbers); each is the op of that name."""

PARAM = ""
"""The tensor name of an op's single learned constant: its key is the node's name alone."""


def _axis(dim: int, rank: int, what: str = "dim") -> int:
    """A dimension counted with the batch as 0, checked against a rank without the batch."""
    if not 1 <= dim <= rank:
        raise OpDefinitionError(
            f"{what} {dim} is out of range for an input of rank {rank} (batch left out, so "
            f"dims run from 1 to {rank})",
            what,
        )
    return dim


# --------------------------------------------------------------------------- normalisation


@register_op("layernorm")
class LayerNorm(Op):
    """Layer normalisation over the last axis (``torch.nn.LayerNorm``):
    ``y = (x − μ) / σ ⊙ w + b`` with ``σ = sqrt(var(x) + eps)`` (biased variance)."""

    capabilities = frozenset({"normalize", "vjp"})
    eps = Field[float]("float", 1e-5)
    affine = Field[bool]("bool", True, "a learned weight and bias (elementwise_affine)")

    def _validate(self):
        if self.eps < 0:
            raise OpDefinitionError(f"eps must be ≥ 0, got {self.eps}", "eps")

    def tensor_shapes(self, in_shapes):
        if not self.affine:
            return {}
        features = in_shapes[0][-1]
        return {"weight": (features,), "bias": (features,)}

    def init_tensors(self, shapes, generator, dtype):
        made = {}
        for name, shape in shapes.items():
            made[name] = (
                torch.ones(shape, dtype=dtype)
                if name == "weight"
                else torch.zeros(shape, dtype=dtype)
            )
        return made

    def forward(self, inputs, tensors):
        x = inputs[0]
        return F.layer_norm(x, (x.shape[-1],), tensors.get("weight"), tensors.get("bias"), self.eps)

    def forward_record(self, inputs, tensors):
        """The output and ``1 / σ`` over the last axis (a size-1 axis), both from one
        ``torch.native_layer_norm``: what ``frozen_scale_adjoint`` reads, recorded in
        float32 and float64 (a half-precision graph's rule recomputes it from the widened
        input: ``inverse_sigma``)."""
        x = inputs[0]
        if x.dtype not in (torch.float32, torch.float64):
            return self.forward(inputs, tensors), None
        out, _, rstd = torch.native_layer_norm(
            x, (x.shape[-1],), tensors.get("weight"), tensors.get("bias"), self.eps
        )
        return out, rstd

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """``σ = sqrt(var(x) + eps)`` over the last axis, kept as a size-1 axis."""
        return self.inverse_sigma(x).reciprocal().to(x.dtype)

    def inverse_sigma(self, x: torch.Tensor) -> torch.Tensor:
        """``1 / σ`` over the last axis, kept as a size-1 axis: the layer norm's own
        statistics (``torch.native_layer_norm``, one pass; ``torch.var`` over the last axis
        is several times slower on the CPU), widened where x is in half precision."""
        x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
        return torch.native_layer_norm(x, (x.shape[-1],), None, None, self.eps)[2]

    def frozen_scale_adjoint(
        self,
        s: torch.Tensor,
        x: torch.Tensor,
        tensors: dict[str, torch.Tensor],
        inverse_sigma: torch.Tensor | None = None,
        *,
        into_s: bool = False,
    ) -> torch.Tensor:
        """``M[s ⊙ w / σ]``: the adjoint of ``x ↦ (x − μ)/σ ⊙ w`` with σ held constant
        (M removes the mean over the last axis; it is its own adjoint). ``inverse_sigma``:
        ``1 / σ`` of ``x`` as the forward recorded it (``forward_record``), else recomputed;
        ``into_s``: the result may be formed in ``s``'s memory."""
        weight = tensors.get("weight")
        scale = (self.inverse_sigma(x) if inverse_sigma is None else inverse_sigma).to(s.dtype)
        t = torch.mul(s, scale, out=s) if into_s else s * scale
        if weight is not None:
            t.mul_(weight.to(s.dtype))
        return t.sub_(t.mean(-1, keepdim=True))

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: with ``x̂ = (x − μ)/σ`` and ``h = g ⊙ w``,
        ``(h − mean(h) − x̂ ⊙ mean(h ⊙ x̂)) / σ``."""
        x = inputs[0]
        sigma = self.sigma(x)
        normed = (x - x.mean(-1, keepdim=True)) / sigma
        weight = tensors.get("weight")
        h = grad if weight is None else grad * weight
        return [
            (h - h.mean(-1, keepdim=True) - normed * (h * normed).mean(-1, keepdim=True)) / sigma
        ]


# --------------------------------------------------------------------------- activations


class _GELU(Elementwise):
    """GELU: relevance passes unchanged under the identity rule (Achtibat et al. 2024)."""

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g · gelu'(x)``."""
        return [grad * self.derivative(inputs[0])]


@register_op("gelu")
class GELU(_GELU):
    """The exact GELU, ``x Φ(x)`` (Hugging Face's ``gelu``: ``torch.nn.functional.gelu``)."""

    def forward(self, inputs, tensors):
        return F.gelu(inputs[0])

    def derivative(self, x):
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return cdf + x * pdf


def _tanh_gelu_derivative(x: torch.Tensor, k: float) -> torch.Tensor:
    """Derivative of ``0.5 x (1 + tanh(k (x + 0.044715 x³)))``."""
    t = torch.tanh(k * (x + 0.044715 * x * x * x))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)


@register_op("gelu_new")
class GELUNew(_GELU):
    """Hugging Face's ``gelu_new``: ``0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))``."""

    def forward(self, inputs, tensors):
        x = inputs[0]
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
        return 0.5 * x * (1.0 + torch.tanh(inner))

    def derivative(self, x):
        return _tanh_gelu_derivative(x, math.sqrt(2.0 / math.pi))


@register_op("gelu_fast")
class GELUFast(_GELU):
    """Hugging Face's ``gelu_fast``: ``0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x²)))``."""

    def forward(self, inputs, tensors):
        x = inputs[0]
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))

    def derivative(self, x):
        return _tanh_gelu_derivative(x, 0.7978845608)


@register_op("gelu_pytorch_tanh")
class GELUPytorchTanh(_GELU):
    """Hugging Face's ``gelu_pytorch_tanh``: ``torch.nn.functional.gelu(x, approximate="tanh")``."""

    def forward(self, inputs, tensors):
        return F.gelu(inputs[0], approximate="tanh")

    def derivative(self, x):
        return _tanh_gelu_derivative(x, math.sqrt(2.0 / math.pi))


@register_op("scale")
class Scale(Elementwise):
    """Multiplication by a constant (attention's ``1/√d``); relevance passes unchanged."""

    factor = Field[float]("float")

    def forward(self, inputs, tensors):
        return inputs[0] * self.factor

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``factor · g``."""
        return [grad * self.factor]


@register_op("softmax")
class Softmax(Op):
    """Softmax over the last axis."""

    capabilities = frozenset({"softmax", "vjp"})
    sign = "nonnegative"

    def forward(self, inputs, tensors):
        return torch.softmax(inputs[0], dim=-1)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``a ⊙ (g − Σ a ⊙ g)``, a the softmax."""
        a = torch.softmax(inputs[0], dim=-1)
        return [a * (grad - (a * grad).sum(-1, keepdim=True))]


# --------------------------------------------------------------------------- products


@register_op("matmul")
class MatMul(Op):
    """``a @ b`` (or ``a @ bᵀ`` with ``transpose_b``), batched over the leading axes:
    q·kᵀ and attention·v."""

    arity = 2
    capabilities = frozenset({"bilinear", "vjp"})
    transpose_b = Field[bool]("bool", False, "multiply by the second input's transpose")

    def resolve(self, in_shapes):
        a, b = in_shapes
        if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2]:
            raise OpDefinitionError(
                f"matmul needs inputs of one rank ≥ 2 (batch left out) with equal leading "
                f"axes, got {list(a)} and {list(b)}"
            )
        inner = b[-1] if self.transpose_b else b[-2]
        if a[-1] != inner:
            raise OpDefinitionError(
                f"matmul of {list(a)} and {list(b)}"
                f"{' transposed' if self.transpose_b else ''}: {a[-1]} ≠ {inner}"
            )

    def _second(self, b: torch.Tensor) -> torch.Tensor:
        return b.transpose(-1, -2) if self.transpose_b else b

    def forward(self, inputs, tensors):
        return torch.matmul(inputs[0], self._second(inputs[1]))

    def input_vjp(self, grad: torch.Tensor, inputs: Sequence[torch.Tensor], slot: int):
        """The adjoint of the map from input ``slot`` with the other held constant."""
        a, b = inputs
        if slot == 0:
            return torch.matmul(grad, self._second(b).transpose(-1, -2).to(grad.dtype))
        back = torch.matmul(a.transpose(-1, -2).to(grad.dtype), grad)
        return back.transpose(-1, -2) if self.transpose_b else back

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g bᵀ`` and ``aᵀ g`` (transposed back for ``bᵀ``)."""
        return [self.input_vjp(grad, inputs, 0), self.input_vjp(grad, inputs, 1)]


#: the most elements one block of attention probabilities may hold (``Attention``'s
#: explicit adjoints: a block of query rows against every key, over all heads and leading
#: axes at once)
ATTENTION_BLOCK_ELEMENTS = 1 << 22

#: whether ``Attention`` runs torch's fused CPU attention kernels (forward with the
#: log-sum-exp of each row, and their backward) where they apply
USE_CPU_KERNELS = True

_CPU_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _heads4(t: torch.Tensor) -> torch.Tensor:
    """``(…, N, d)`` as four axes ``(B', H', N, d)``: the leading axes flattened into the
    first (a view where the layout allows), a single one given a head axis of 1."""
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        return t.unsqueeze(1)
    return t.reshape(-1, *t.shape[-3:])


def _cpu_kernels_apply(*tensors: torch.Tensor) -> bool:
    """Whether torch's fused CPU attention kernels take ``tensors`` (q, k, v, …): on the CPU,
    one format they support, q and v of one width, and the kernels present in this torch."""
    q, k, v = tensors[:3]
    return (
        USE_CPU_KERNELS
        and all(t.device.type == "cpu" and t.dtype == q.dtype for t in tensors)
        and q.dtype in _CPU_KERNEL_DTYPES
        and q.shape[-1] == v.shape[-1]
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")
    )


@register_op("attention")
class Attention(Op):
    """Fused attention (Vaswani et al. 2017): ``softmax(scale · q kᵀ) v`` on head tensors
    ``q, k, v`` of shape ``(…, H, N, d)`` (any leading axes, e.g. TimeSformer's
    ``(B, P, H, T, d)``), output ``(…, H, N, d)``.

    The forward is ``torch.nn.functional.scaled_dot_product_attention``, which never forms
    the ``N × N`` probabilities of every row at once. The adjoints (``attention_vjp``,
    ``value_adjoint``) run torch's fused CPU attention backward on the CPU (its forward
    records each row's log-sum-exp for it, ``forward_record``), and elsewhere recompute the
    probabilities a block of query rows at a time (``ATTENTION_BLOCK_ELEMENTS``); neither
    holds the probabilities of every row at once.
    """

    arity = 3
    capabilities = frozenset({"attention", "vjp"})
    scale = Field[float | None](
        "float?", None, "the factor of q kᵀ; default d^-1/2, d = q's last axis"
    )

    def resolve(self, in_shapes):
        q, k, v = in_shapes
        if len(q) < 2 or not (len(q) == len(k) == len(v)):
            raise OpDefinitionError(
                f"attention needs q, k, v of one rank ≥ 2 (…, N, d), batch left out, got "
                f"{list(q)}, {list(k)} and {list(v)}"
            )
        if q[:-2] != k[:-2] or q[:-2] != v[:-2] or q[-1] != k[-1] or k[-2] != v[-2]:
            raise OpDefinitionError(
                f"attention of q {list(q)}, k {list(k)}, v {list(v)}: q and k need the same "
                "features, k and v the same tokens, and all three the same leading axes"
            )
        if self.scale is None:
            self.scale = q[-1] ** -0.5

    def _scale(self, q: torch.Tensor) -> float:
        return q.shape[-1] ** -0.5 if self.scale is None else self.scale

    def forward(self, inputs, tensors):
        q, k, v = inputs
        out = F.scaled_dot_product_attention(
            _heads4(q), _heads4(k), _heads4(v), scale=self._scale(q)
        )
        return out.reshape(*q.shape[:-1], v.shape[-1])

    def _kernel_forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's fused CPU attention on four-axis tensors: the output and each row's
        log-sum-exp of ``scale · q kᵀ``."""
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=None, scale=self._scale(q)
        )
        return out, lse

    def forward_record(self, inputs, tensors):
        """The output and, where the CPU kernels apply, each row's log-sum-exp of
        ``scale · q kᵀ`` (what their backward reads; ``None`` elsewhere)."""
        if not _cpu_kernels_apply(*inputs):
            return self.forward(inputs, tensors), None
        q, k, v = inputs
        out, lse = self._kernel_forward(_heads4(q), _heads4(k), _heads4(v))
        return out.reshape(*q.shape[:-1], v.shape[-1]), lse

    def _blocks(self, q: torch.Tensor, k: torch.Tensor):
        """Row ranges of the queries such that a block of probabilities holds at most
        ``ATTENTION_BLOCK_ELEMENTS`` elements."""
        rows = q.shape[-2]
        per_row = max(1, q.numel() // (q.shape[-1] * rows) * k.shape[-2])
        step = max(1, min(rows, ATTENTION_BLOCK_ELEMENTS // per_row))
        return [(start, min(rows, start + step)) for start in range(0, rows, step)]

    def probabilities(self, q_block: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``softmax(scale · q_b kᵀ)`` of a block of query rows ``q_b``."""
        return torch.softmax(
            torch.matmul(q_block, k.transpose(-1, -2)).mul_(self._scale(q_block)), dim=-1
        )

    def value_adjoint(
        self,
        grad: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        output: torch.Tensor | None = None,
        logsumexp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``Pᵀ g``: the adjoint of ``v ↦ P v`` with the probabilities ``P`` held constant, in
        ``grad``'s format (the value gradient of ``attention_vjp``; block by block over query
        rows where the CPU kernels do not apply)."""
        q4, k4, v4 = (_heads4(t).to(grad.dtype) for t in (q, k, v))
        if _cpu_kernels_apply(q4, k4, v4, grad):
            return self.attention_vjp(grad, q, k, v, output, logsumexp)[2]
        g = _heads4(grad)
        back = None
        for start, stop in self._blocks(q4, k4):
            p = self.probabilities(q4[..., start:stop, :], k4)
            part = torch.matmul(p.transpose(-1, -2), g[..., start:stop, :])
            back = part if back is None else back.add_(part)
        return back.reshape(v.shape[:-1] + grad.shape[-1:])

    def attention_vjp(
        self,
        grad: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        output: torch.Tensor | None = None,
        logsumexp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gradients of q, k and v for the output's gradient ``grad``, in ``grad``'s
        format. ``output`` is the forward's ``O`` and ``logsumexp`` its record
        (``forward_record``); either is recomputed where not given (the record only where
        the CPU kernels apply).

        On the CPU, torch's fused attention backward; elsewhere the same formulas block by
        block over query rows (the backward of Dao et al. 2022, FlashAttention): with
        ``S = scale · q_b kᵀ``, ``P = softmax(S)``, ``dP = g_b vᵀ``,
        ``D = rowsum(g_b ⊙ O_b)``, ``dS = P ⊙ (dP − D)``: ``dq_b = scale · dS k``,
        ``dk = Σ_b scale · dSᵀ q_b``, ``dv = Σ_b Pᵀ g_b``."""
        scale = self._scale(q)
        q4, k4, v4 = (_heads4(t).to(grad.dtype) for t in (q, k, v))
        g = _heads4(grad)
        out = None if output is None else _heads4(output).to(grad.dtype)
        if _cpu_kernels_apply(q4, k4, v4, g):
            if out is None or logsumexp is None:
                out, logsumexp = self._kernel_forward(q4, k4, v4)
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                g, q4, k4, v4, out, logsumexp, 0.0, False, attn_mask=None, scale=scale
            )
            return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)
        if out is None:
            out = F.scaled_dot_product_attention(q4, k4, v4, scale=scale)
        dq = torch.empty_like(q4, memory_format=torch.contiguous_format)
        dk = dv = None
        for start, stop in self._blocks(q4, k4):
            q_b, g_b = q4[..., start:stop, :], g[..., start:stop, :]
            p = self.probabilities(q_b, k4)
            d = (g_b * out[..., start:stop, :]).sum(-1, keepdim=True)
            ds = torch.matmul(g_b, v4.transpose(-1, -2)).sub_(d).mul_(p)
            part_v = torch.matmul(p.transpose(-1, -2), g_b)
            del p
            dq[..., start:stop, :] = torch.matmul(ds, k4)
            part_k = torch.matmul(ds.transpose(-1, -2), q_b)
            dk = part_k if dk is None else dk.add_(part_k)
            dv = part_v if dv is None else dv.add_(part_v)
        dq.mul_(scale)
        dk.mul_(scale)
        return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``attention_vjp`` (the output recomputed)."""
        q, k, v = inputs
        return list(self.attention_vjp(grad, q, k, v))


# --------------------------------------------------------------------------- index maps


class IndexOp(Op):
    """An op whose output entries are input entries (or constants): relevance follows the
    adjoint of the index map (``vjp``), which sums where an entry was copied."""

    capabilities = frozenset({"index", "vjp"})
    sign = "keeps"


@register_op("permute")
class Permute(IndexOp):
    """``x.permute(dims)``; ``dims`` counts the batch as 0 and keeps it first."""

    dims = Field[Shape]("shape", doc="the new order of every dimension, batch (0) first")

    def resolve(self, in_shapes):
        rank = len(in_shapes[0]) + 1
        if sorted(self.dims) != list(range(rank)) or self.dims[0] != 0:
            raise OpDefinitionError(
                f"dims must order 0..{rank - 1} with the batch (0) first, got {list(self.dims)}",
                "dims",
            )

    def forward(self, inputs, tensors):
        return inputs[0].permute(self.dims)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: the inverse permutation."""
        inverse = [0] * len(self.dims)
        for position, dim in enumerate(self.dims):
            inverse[dim] = position
        return [grad.permute(inverse)]


@register_op("transpose")
class Transpose(IndexOp):
    """``x.transpose(dim0, dim1)``; dims count the batch as 0."""

    dim0 = Field[int]("int")
    dim1 = Field[int]("int")

    def resolve(self, in_shapes):
        _axis(self.dim0, len(in_shapes[0]), "dim0")
        _axis(self.dim1, len(in_shapes[0]), "dim1")

    def forward(self, inputs, tensors):
        return inputs[0].transpose(self.dim0, self.dim1)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: the same transpose."""
        return [grad.transpose(self.dim0, self.dim1)]


@register_op("slice")
class Slice(IndexOp):
    """``x[..., start:stop, ...]`` along ``dim`` (counting the batch as 0); ``stop`` null:
    to the end."""

    dim = Field[int]("int")
    start = Field[int]("int", 0)
    stop = Field[int | None]("int?", None)

    def resolve(self, in_shapes):
        size = in_shapes[0][_axis(self.dim, len(in_shapes[0])) - 1]
        stop = size if self.stop is None else self.stop
        if not 0 <= self.start < stop <= size:
            raise OpDefinitionError(
                f"slice {self.start}:{self.stop} of a dimension of size {size} is empty or out "
                "of range",
                "start",
            )

    def _stop(self, size: int) -> int:
        return size if self.stop is None else self.stop

    def forward(self, inputs, tensors):
        x = inputs[0]
        return x.narrow(self.dim, self.start, self._stop(x.shape[self.dim]) - self.start)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g`` in place of the slice, zero elsewhere."""
        shape = input_shapes[0]
        full = grad.new_zeros(shape)
        full.narrow(self.dim, self.start, self._stop(shape[self.dim]) - self.start).copy_(grad)
        return [full]


@register_op("select")
class Select(IndexOp):
    """``x.select(dim, index)``: one token (the CLS token, or q, k or v of a fused qkv)."""

    dim = Field[int]("int")
    index = Field[int]("int")

    def resolve(self, in_shapes):
        size = in_shapes[0][_axis(self.dim, len(in_shapes[0])) - 1]
        if not 0 <= self.index < size:
            raise OpDefinitionError(f"index {self.index} out of range 0..{size - 1}", "index")

    def forward(self, inputs, tensors):
        return inputs[0].select(self.dim, self.index)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g`` at the index, zero elsewhere."""
        full = grad.new_zeros(input_shapes[0])
        full.select(self.dim, self.index).copy_(grad)
        return [full]


@register_op("repeat")
class Repeat(IndexOp):
    """``x.repeat(1, *repeats)``: copies along each non-batch dimension (TimeSformer's CLS
    token, once per frame)."""

    repeats = Field[Shape]("shape", doc="copies per dimension, batch left out (each ≥ 1)")

    def resolve(self, in_shapes):
        if len(self.repeats) != len(in_shapes[0]) or min(self.repeats) < 1:
            raise OpDefinitionError(
                f"repeats needs one count ≥ 1 per dimension of {list(in_shapes[0])}, got "
                f"{list(self.repeats)}",
                "repeats",
            )

    def forward(self, inputs, tensors):
        return inputs[0].repeat(1, *self.repeats)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: the copies summed."""
        shape = input_shapes[0]
        split = [grad.shape[0]]
        for count, size in zip(self.repeats, shape[1:]):
            split += [count, size]
        dims = tuple(range(1, 2 * len(self.repeats), 2))
        return [grad.reshape(split).sum(dims)]


class _LearnedConstant:
    """An op that owns one learned tensor of its field ``shape``, stored under the node's own
    name (``PARAM``), initialised as transformers initialises such tokens (normal, σ 0.02)."""

    def tensor_shapes(self, in_shapes):
        return {PARAM: tuple(self.shape)}

    def init_tensors(self, shapes, generator, dtype):
        return {
            name: 0.02 * torch.randn(shape, generator=generator).to(dtype)
            for name, shape in shapes.items()
        }


@register_op("prepend_token")
class PrependToken(_LearnedConstant, IndexOp):
    """A learned token put before the tokens along ``dim`` (the CLS token): the constant,
    stored as the library stores it (``[1, 1, D]``), broadcast over the other axes. Its
    share of relevance is lost (it is a constant)."""

    sign = "any"  # the token may be negative whatever the input
    dim = Field[int]("int", 1, "the token axis, counting the batch as 0")
    shape = Field[Shape]("shape", doc="the stored parameter's shape, e.g. [1, 1, D]")

    def resolve(self, in_shapes):
        x = in_shapes[0]
        _axis(self.dim, len(x))
        if self.dim == len(x):
            raise OpDefinitionError("dim must not be the feature (last) axis", "dim")
        if math.prod(self.shape) != x[-1]:
            raise OpDefinitionError(
                f"the token {list(self.shape)} holds {math.prod(self.shape)} values, the "
                f"tokens have {x[-1]} features",
                "shape",
            )

    def forward(self, inputs, tensors):
        x = inputs[0]
        token_shape = (*x.shape[: self.dim], 1, *x.shape[self.dim + 1 :])
        token = tensors[PARAM].reshape(x.shape[-1]).to(x.dtype).expand(token_shape)
        return torch.cat([token, x], dim=self.dim)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g`` without the token."""
        return [grad.narrow(self.dim, 1, grad.shape[self.dim] - 1)]


# --------------------------------------------------------------------------- constants


class Shift(Op):
    """``x + c`` for a constant ``c`` broadcast over ``x``: the constant's share of
    relevance is lost."""

    capabilities = frozenset({"shift", "vjp"})

    def constant(self, tensors: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """``c``, broadcastable to ``like``, in its format and on its device."""
        raise NotImplementedError

    def forward(self, inputs, tensors):
        x = inputs[0]
        return x + self.constant(tensors, x)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g``."""
        return [grad]


@register_op("add_param")
class AddParam(_LearnedConstant, Shift):
    """``x`` plus a learned constant (position or time embeddings), stored as the library
    stores it (``shape``, e.g. ``[1, N, D]``) and broadcast over ``x`` from the right."""

    shape = Field[Shape]("shape", doc="the stored parameter's shape, e.g. [1, N, D]")

    def resolve(self, in_shapes):
        x = in_shapes[0]
        stored = [v for v in self.shape]
        while len(stored) > len(x) and stored[0] == 1:
            stored.pop(0)
        if len(stored) > len(x) or any(
            s != 1 and s != d for s, d in zip(reversed(stored), reversed(x))
        ):
            raise OpDefinitionError(
                f"a parameter of shape {list(self.shape)} does not broadcast over an input of "
                f"shape {list(x)} (batch left out)",
                "shape",
            )

    def constant(self, tensors, like):
        c = tensors[PARAM].to(like.dtype)
        while c.dim() > like.dim():
            c = c.squeeze(0)
        return c


@functools.cache
def sinusoid_table(positions: int, features: int) -> torch.Tensor:
    """The fixed sinusoid position table of Vaswani et al. (2017) as VideoMAE builds it:
    angle ``p / 10000^(2⌊j/2⌋/D)`` in float64 (NumPy), sine on even features, cosine on odd,
    then rounded to float32 (Hugging Face stores it so, whatever the model's format)."""
    # the powers one by one, as NumPy scalars (their rounding is the scalar path's); the
    # divisions at once (IEEE division: the same value either way)
    powers = np.array([np.power(10000, 2 * (j // 2) / features) for j in range(features)])
    angles = np.arange(positions, dtype=np.float64)[:, None] / powers[None, :]
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)


@register_op("add_sinusoid")
class AddSinusoid(Shift):
    """``x`` plus the fixed sinusoid position table over its tokens ``(…, N, D)``
    (``sinusoid_table``: not a weight, computed from the shape)."""

    def resolve(self, in_shapes):
        if len(in_shapes[0]) < 2:
            raise OpDefinitionError(
                f"add_sinusoid needs tokens (N, D), got shape {list(in_shapes[0])}"
            )

    def constant(self, tensors, like):
        table = sinusoid_table(like.shape[-2], like.shape[-1])
        return table.to(device=like.device).to(like.dtype)


# --------------------------------------------------------------------------- embeddings


@register_op("conv2d_frames")
class Conv2dFrames(Affine):
    """A 2-D convolution applied to every frame of a clip ``(B, C, T, H, W)`` (TimeSformer's
    patch embedding), with the library's 2-D kernel ``[out, in, kh, kw]``: the 3-D
    convolution whose kernel spans one frame."""

    out_channels = Field[int]("int")
    kernel_size = Field[Shape]("shape", doc="[kh, kw]")
    stride = Field[Shape]("shape", doc="[sh, sw]")
    bias = Field[bool]("bool", True)

    def resolve(self, in_shapes):
        if len(in_shapes[0]) != 4:
            raise OpDefinitionError(
                f"conv2d_frames takes clips (C, T, H, W), got shape {list(in_shapes[0])}"
            )
        if len(self.kernel_size) != 2 or len(self.stride) != 2:
            raise OpDefinitionError("kernel_size and stride take two values each", "kernel_size")

    def tensor_shapes(self, in_shapes):
        shapes = {"weight": (self.out_channels, in_shapes[0][0], *self.kernel_size)}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init_tensors(self, shapes, generator, dtype):
        fan_in = math.prod(shapes["weight"][1:])
        bound = 1.0 / math.sqrt(fan_in)
        return {
            name: uniform_init(shape, bound, generator, dtype) for name, shape in shapes.items()
        }

    def linear_map(self, x, weight, bias=None):
        return F.conv3d(x, weight.unsqueeze(2), bias, (1, *self.stride))

    def adjoint(self, s, weight, x_shape):
        kernel = weight.unsqueeze(2)
        out_pad = [
            x - ((o - 1) * k + kernel.shape[2 + i])
            for i, (x, o, k) in enumerate(zip(x_shape[2:], s.shape[2:], (1, *self.stride)))
        ]
        return F.conv_transpose3d(s, kernel.to(s.dtype), None, (1, *self.stride), 0, tuple(out_pad))
