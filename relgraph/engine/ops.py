"""Ops: what a graph node computes, and the explicit adjoint maps that relevance rules call.

Each op is a small object built from the fields of its YAML node. It knows

- its fields, declared as typed ``Field`` class attributes (checking, defaults and the YAML
  round trip live in ``relgraph.engine.fields``),
- the shapes of its parameter tensors and its output, given its input shapes,
- its forward computation,
- the adjoint maps its family offers to rules. Each capability is a Protocol of
  ``relgraph.engine.capabilities`` (named here by its alias); an op has it by having its
  members, and rules check ``isinstance(op, Affine)``, never an op type:

  ``affine``      ``linear_map(x, W, b)`` = A(x; W, b) and ``adjoint(s, W, x_shape)`` = Aᵀ(s; W)
                  (conv1d/2d/3d, linear, batch-norm as a per-channel affine map)
  ``window``      ``window_sum(x)`` and ``window_sum_adjoint(s, x_shape)``: the sum over each
                  pooling window and its adjoint (every pool, mean)
  ``max_route``   ``max_route(x, R)``: route R to the forward's argmax (max pools)
  ``split``       ``split(inputs, R, divide)``: hand R back to several inputs (add, concat)
  ``product``     ``signal_slots(input_shapes, output_shape)`` and ``to_input_shape(R, shape)``:
                  an elementwise product of a signal and a gate that may broadcast (mul)
  ``reshape``     ``pass_relevance(R, x_shape)``: relevance passes through unchanged, reshaped
                  (relu, sigmoid, silu, dropout, flatten, ...)
  ``vjp``         ``vjp(grad, inputs, tensors, input_shapes)``: the explicit vector-Jacobian
                  product (the gradient rule)
  ``channelwise`` affine with ``num_features``: a monotone map of each channel on its own,
                  output shaped like the input (batch norm): relevance may pass it unchanged
  ``attention``   ``attention_vjp(g, q, k, v, output, logsumexp)`` and
                  ``value_adjoint(g, q, k, v, output, logsumexp)``: fused attention's input
                  gradients, and the adjoint from v with the probabilities held constant

A new op is one class decorated with ``@register_op("name")``: its fields as ``Field``
attributes, its ``forward``, and the capability methods of its family. Ops over 1, 2 or 3
spatial dimensions subclass ``Spatial`` and register once for all
(``@register_op("conv{dims}d", dims=(1, 2, 3))``); their ``dims`` is a constructor value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F

from relgraph.engine.capabilities import capabilities_of
from relgraph.engine.fields import Field, Ints, OpDefinitionError, check_fields, fields_of, to_yaml
from relgraph.errors import ArgumentError

Shape = tuple[int, ...]

OPS: dict[str, Callable[..., Op]] = {}
"""Every op by its YAML name: a class, or for ``conv3d`` and its kin the class with its number
of spatial dimensions bound (``OPS["conv3d"](**fields)`` builds the op). Filled by
``register_op``."""

OpClass = TypeVar("OpClass", bound="type[Op]")


def register_op(name: str, *, dims: Sequence[int] = ()) -> Callable[[OpClass], OpClass]:
    """Class decorator: make an op known to the YAML loader under ``name``.

    With ``dims`` the op is a ``Spatial`` one and ``name`` holds ``{dims}``: it is registered
    once per number of spatial dimensions (``@register_op("conv{dims}d", dims=(1, 2, 3))``
    gives ``conv1d``, ``conv2d`` and ``conv3d``).
    """

    def register(cls: OpClass) -> OpClass:
        if dims:
            if not issubclass(cls, Spatial):
                raise OpDefinitionError(f"{cls.__name__} takes no dims: it is not a Spatial op")
            names = {name.format(dims=d): functools.partial(cls, d) for d in dims}
            cls.type_template = name
        else:
            names = {name: cls}
            cls.type = name
        for key, factory in names.items():
            if key in OPS:
                raise ArgumentError(f"op '{key}' is registered twice")
            OPS[key] = factory
        return cls

    return register


class Op:
    """Base class: one node's computation. Subclasses declare their YAML fields as ``Field``
    class attributes (``relgraph.engine.fields``) and register with ``register_op``."""

    type: str = ""
    #: every YAML field, gathered from the class attributes (see ``relgraph.engine.fields``)
    fields: ClassVar[dict[str, Field]] = {}
    #: number of spatial dimensions (``Spatial`` ops take it at construction; ``mean`` has a
    #: field of this name instead, the dimensions it averages)
    dims: int = 1
    #: number of inputs; ``None`` means two or more
    arity: ClassVar[int | None] = 1
    #: parameter tensors that a weight file may carry but the op does not need
    optional_tensors: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.fields = fields_of(cls)

    @property
    def capabilities(self) -> frozenset[str]:
        """The names of the capabilities this op has: the Protocols of
        ``relgraph.engine.capabilities`` it satisfies (for messages and tables; rules check
        ``isinstance(op, Affine)``)."""
        return capabilities_of(self)

    def __init__(self, **attrs: Any) -> None:
        # ``ints`` fields take one value per spatial dimension; an op that is not Spatial has
        # none to speak of (and may name a field ``dims`` itself, as ``mean`` does)
        spatial = self.dims if isinstance(self, Spatial) else 1
        self.attrs: dict[str, Any] = check_fields(self.type, self.fields, attrs, spatial)
        self._validate()

    def _args(self) -> list[str]:
        return [f"{k}={v!r}" for k, v in self.attrs.items()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._args())})"

    def __eq__(self, other: object) -> bool:
        return (
            type(self) is type(other)
            and self.type == other.type  # type: ignore[attr-defined]
            and self.attrs == other.attrs  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash((type(self), self.type, tuple(sorted(self.attrs.items()))))

    def _validate(self) -> None:
        """Check field values against each other."""

    def resolve(self, in_shapes: Sequence[Shape]) -> None:
        """Fill inferred fields (e.g. ``in_channels``) and check the input shapes."""

    def tensor_shapes(self, in_shapes: Sequence[Shape]) -> dict[str, Shape]:
        """Shapes of the parameter tensors this op owns."""
        return {}

    def init_tensors(
        self, shapes: dict[str, Shape], generator: torch.Generator, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Initial parameter values (PyTorch's default initialisation)."""
        return {}

    def forward(
        self, inputs: Sequence[torch.Tensor], tensors: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        raise NotImplementedError

    #: whether ``forward_in_place`` may write the result into the first input's memory
    in_place: ClassVar[bool] = False
    #: what the op does to signs: ``"nonnegative"``, its output is ≥ 0 whatever its input
    #: (relu, sigmoid); ``"keeps"``, its output is ≥ 0 where every input is (pools, means,
    #: reshapes, sums, products, joins); ``"any"`` otherwise (``Graph.nonnegative_nodes``)
    sign: ClassVar[str] = "any"

    def forward_in_place(
        self, inputs: Sequence[torch.Tensor], tensors: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``forward``, written into ``inputs[0]`` where the result's shape and type are its
        own (ops with ``in_place``; the graph calls it only when nobody reads that input
        again); the same values as ``forward``."""
        return self.forward(inputs, tensors)

    def forward_record(
        self, inputs: Sequence[torch.Tensor], tensors: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Any]:
        """``forward`` plus what only the forward knows and a rule may need later
        (``None`` for most ops; max pools return their argmax indices)."""
        return self.forward(inputs, tensors), None

    def yaml_fields(self) -> dict[str, Any]:
        """Fields to write back to YAML: every field, tuples as lists."""
        return to_yaml(self.attrs)


class Spatial(Op):
    """An op over 1, 2 or 3 spatial dimensions. The number is a constructor value
    (``ConvNd(3, out_channels=64, kernel_size=3)``) and part of the YAML name (``conv3d``),
    never a YAML field."""

    #: the YAML name with ``{dims}`` (set by ``register_op``)
    type_template: ClassVar[str] = ""

    def __init__(self, dims: int, /, **attrs: Any) -> None:
        if dims not in (1, 2, 3):
            raise OpDefinitionError(f"{type(self).__name__} takes 1, 2 or 3 dims, got {dims!r}")
        self.dims = dims
        self.type = self.type_template.format(dims=dims)
        super().__init__(**attrs)

    def _args(self) -> list[str]:
        return [str(self.dims), *super()._args()]


# --------------------------------------------------------------------------- helpers


def _conv_fn(dims: int) -> Callable:
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]


def _conv_transpose_fn(dims: int) -> Callable:
    return {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]


def _output_padding(
    x_shape: Sequence[int],
    out_shape: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """``output_padding`` that makes a transposed convolution restore ``x_shape`` exactly."""
    return tuple(
        x - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
        for x, o, k, s, p, d in zip(x_shape, out_shape, kernel, stride, padding, dilation)
    )


def _pointwise_map(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int]
) -> torch.Tensor:
    """A convolution with a 1×…×1 kernel (no padding, no groups) as one matrix product over
    the positions it reads: on CPU the transposed kernels of such convolutions are slow."""
    channels_last = _channels_last(x)
    if max(stride) > 1:
        x = x[(slice(None), slice(None), *(slice(None, None, k) for k in stride))]
        if channels_last:
            # the positions read, gathered first: one matrix product, not one per row of
            # them (faster at X3D's strided shortcuts)
            x = x.contiguous(memory_format=torch.channels_last_3d)
    batch, channels, *size = x.shape
    matrix = weight.reshape(weight.shape[0], channels)
    if channels_last:  # positions × channels: one product, the result channels-last too
        y = torch.nn.functional.linear(_positions(x), matrix)
        # the bias added after the product: the product with a bias first copies the bias
        # to every position, a pass slower than this addition (MKL, X3D's shapes)
        return _channels_first(y if bias is None else y.add_(bias))
    flat = x.reshape(batch, channels, -1)
    if bias is None:
        out = torch.matmul(matrix, flat)
    else:
        out = torch.baddbmm(bias.reshape(1, -1, 1), matrix.expand(batch, *matrix.shape), flat)
    return out.reshape(batch, matrix.shape[0], *size)


def _pointwise_adjoint(
    s: torch.Tensor, weight: torch.Tensor, x_shape: Sequence[int], stride: Sequence[int]
) -> torch.Tensor:
    """The adjoint of ``_pointwise_map``: ``Wᵀ s`` at the positions the map read, zero
    elsewhere."""
    batch, out_channels, *size = s.shape
    matrix = weight.reshape(out_channels, -1)
    if _channels_last(s):
        back = _channels_first(torch.matmul(_positions(s), matrix))
    else:
        back = torch.matmul(matrix.t(), s.reshape(batch, out_channels, -1))
        back = back.reshape(batch, matrix.shape[1], *size)
    if max(stride) == 1:
        return back
    full = _zeros_like_layout(back, x_shape)
    full[(slice(None), slice(None), *(slice(None, None, k) for k in stride))] = back
    return full


def _patch_adjoint(s: torch.Tensor, weight: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """The adjoint of a convolution whose stride equals its kernel (no padding, dilation or
    groups: a patch or tubelet embedding): one matrix product ``sᵀ W`` per patch, the patches
    put back in place, zero where the input's extent is not a multiple of the kernel.

    ``conv_transpose`` runs such a kernel far slower than the matrix product on CPU."""
    batch, out_channels, *grid = s.shape
    kernel = weight.shape[2:]
    dims = len(grid)
    rows = s.permute(0, *range(2, 2 + dims), 1).reshape(-1, out_channels)
    patches = torch.matmul(rows, weight.reshape(out_channels, -1).to(s.dtype))
    patches = patches.reshape(batch, *grid, weight.shape[1], *kernel)
    # (B, n1..nd, C, k1..kd) -> (B, C, n1, k1, ..., nd, kd)
    order = [0, 1 + dims]
    for axis in range(dims):
        order += [1 + axis, 2 + dims + axis]
    back = patches.permute(order).reshape(
        batch, weight.shape[1], *(n * k for n, k in zip(grid, kernel, strict=True))
    )
    if list(back.shape[2:]) != list(x_shape[2:]):
        full = back.new_zeros(batch, weight.shape[1], *x_shape[2:])
        full[(slice(None), slice(None), *(slice(0, n) for n in back.shape[2:]))] = back
        back = full
    return _same_layout(back, s)


def _spread(s: torch.Tensor, stride: Sequence[int], out_pad: Sequence[int]) -> torch.Tensor:
    """``s`` with ``stride − 1`` zeros between neighbouring entries along each spatial axis
    and ``out_pad`` zeros after the last: what a transposed convolution with that stride
    convolves."""
    size = [(n - 1) * k + 1 + q for n, k, q in zip(s.shape[2:], stride, out_pad)]
    spread = _zeros_like_layout(s, (*s.shape[:2], *size))
    index = tuple(slice(0, (n - 1) * k + 1, k) for n, k in zip(s.shape[2:], stride))
    spread[(slice(None), slice(None), *index)] = s
    return spread


def _conv(
    op: Any,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
) -> torch.Tensor:
    """``conv{dims}d`` with the result in ``x``'s layout. A 3-D one on CPU, grouped or on a
    channels-last input, runs oneDNN's kernel in channels-last layout: grouped ones run
    much faster than in the default layout (``Graph.working_layout`` runs graphs with 3-D
    convolutions channels-last throughout), and torch's dispatch sends a channels-last input
    with few channels to a slower kernel (X3D's stem)."""
    conv = _conv_fn(op.dims)
    if _padded_past_kernel(op, x, weight.shape[2:], padding, dilation):
        return _same_layout(
            conv(x.contiguous(), weight, bias, stride, padding, dilation, groups), x
        )
    if (
        (groups > 1 or _channels_last(x))
        and op.dims == 3
        and x.device.type == "cpu"
        and onednn_runs(x.dtype)
    ):
        plain = not _channels_last(x)
        x = _canonical_channels_last(x)
        # called directly: with one thread torch's dispatch picks a far slower kernel
        # for kernels of one spatial extent (X3D's 5×1×1 temporal stem)
        y = torch.ops.aten.mkldnn_convolution(
            x,
            weight.to(x.dtype),
            None if bias is None else bias.to(x.dtype),
            _triple(padding),
            _triple(stride),
            _triple(dilation),
            groups,
        )
        return y.contiguous() if plain else _same_layout(y, x)
    return _same_layout(conv(x, weight, bias, stride, padding, dilation, groups), x)


def _padded_past_kernel(
    op: Any, x: torch.Tensor, kernel: Sequence[int], padding: Any, dilation: Any
) -> bool:
    """A 3-D convolution on CPU whose padding reaches past the kernel's extent on some axis:
    oneDNN crashes (SIGSEGV) there in channels-last layout, through torch's own ``conv3d``
    and ``conv_transpose3d`` too (torch 2.13, with a bias or grouped), so such a convolution
    runs in the default layout, by torch's dispatch."""
    return (
        op.dims == 3
        and x.device.type == "cpu"
        and any(p > d * (k - 1) for p, d, k in zip(_triple(padding), _triple(dilation), kernel))
    )


@functools.cache
def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's CPU convolution takes ``dtype``: float32 always, bfloat16 only on a
    CPU with the instructions for it (it raises elsewhere)."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def _canonical_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` channels-last with the strides oneDNN recognises: a dimension of size one may
    carry any stride, and elementwise results often give the batch of one a stride that
    makes oneDNN fall back to the default layout and a far slower kernel."""
    x = x.contiguous(memory_format=torch.channels_last_3d)
    batch, channels, *size = x.shape
    strides = [channels * math.prod(size), 1]
    step = channels
    for n in reversed(size):
        strides.insert(2, step)
        step *= n
    if list(x.stride()) != strides:
        x = x.as_strided(x.shape, strides)
    return x


def _triple(value: Any) -> list[int]:
    """A 3-D convolution's stride, padding or dilation as three integers."""
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


def _same_layout(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` channels-last where ``x`` is (some CPU kernels return the default layout)."""
    if (
        _channels_last(x)
        and y.dim() == 5
        and not y.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        return y.contiguous(memory_format=torch.channels_last_3d)
    return y


def _zeros_like_layout(like: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zeros of ``shape`` in ``like``'s format, device and layout (channels-last or not)."""
    layout = torch.channels_last_3d if _channels_last(like) else torch.contiguous_format
    zeros = torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=layout)
    return zeros.zero_()


def _channels_last(x: torch.Tensor) -> bool:
    """Whether a 5-D ``x`` is laid out channels-last (and not also plain contiguous)."""
    return (
        x.dim() == 5
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and not x.is_contiguous()
    )


def _positions(x: torch.Tensor) -> torch.Tensor:
    """A channels-last ``(B, C, *size)`` as the ``(B, *size, C)`` tensor it is in memory,
    with the strides of a contiguous tensor: a dimension of size one (a batch of one) may
    carry another stride in ``x`` (results of oneDNN and of in-place quotients), and
    ``torch.matmul`` then runs one small product per row of positions instead of one
    (X3D-S's 1×1×1 adjoints: 10-row products)."""
    positions = x.permute(0, *range(2, x.dim()), 1)
    return positions.as_strided(positions.shape, _contiguous_strides(positions.shape))


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _channels_first(y: torch.Tensor) -> torch.Tensor:
    """``(B, *size, C)`` seen as ``(B, C, *size)``: channels-last, no copy."""
    return y.permute(0, y.dim() - 1, *range(1, y.dim() - 1))


def _adjoint_kernel(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel whose stride-1 convolution is the adjoint of the convolution with
    ``weight``: in and out channels swapped within each group, spatially flipped."""
    out_channels, per_group, *kernel = weight.shape
    swapped = weight.reshape(groups, out_channels // groups, per_group, *kernel).transpose(1, 2)
    flipped = swapped.reshape(groups * per_group, out_channels // groups, *kernel)
    return flipped.flip(list(range(2, weight.dim())))


def uniform_init(
    shape: Shape, bound: float, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound


def _channels_of(op: Op, shape: Shape, want_rank: int, what: str) -> int:
    if len(shape) != want_rank:
        raise OpDefinitionError(
            f"{op.type} expects input of shape {what} (batch left out), "
            f"got {list(shape)} ({len(shape)} dimensions)"
        )
    return shape[0]


# --------------------------------------------------------------------------- input


@register_op("input")
class Input(Op):
    """The graph's input; its activation is the tensor given to ``forward``."""

    shape = Field[Shape]("shape", doc="shape without batch, e.g. [3, 16, 112, 112]")
    arity = 0


# --------------------------------------------------------------------------- affine ops


class Affine(Op):
    """An affine map ``A(x; W) + b``; rules use ``linear_map`` and ``adjoint``."""

    def weight_and_bias(
        self, tensors: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The map's weight and bias, as ``linear_map`` takes them."""
        return tensors["weight"], tensors.get("bias")

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``Aᵀ(g; W)``."""
        return [self.adjoint(grad, self.weight_and_bias(tensors)[0], input_shapes[0])]

    def linear_map(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``A(x; W) + b``."""
        raise NotImplementedError

    def adjoint(self, s: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """``Aᵀ(s; W)``, shaped like the input ``x``. An op whose ``adjoint_kernel`` gives a
        tensor also takes it as ``kernel=``, in place of deriving it from ``weight``."""
        raise NotImplementedError

    def broadcast_bias(self, bias: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``bias`` shaped to add to the map's output ``z``: one value per channel (axis 1)."""
        return bias.reshape(1, -1, *([1] * (z.dim() - 2)))

    def adjoint_kernel(self, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor | None:
        """What ``adjoint(s, weight, x_shape)`` derives from ``weight`` on every call (a
        convolution's flipped kernel), for the caller to keep and hand back as ``kernel=``;
        ``None`` where it derives nothing (the default)."""
        return None

    @property
    def sliceable(self) -> bool:
        """Whether the map runs slice by slice of its weight: output channels ``k`` of
        ``A(x; W[k])`` are those of ``A(x; W)``, and input channels ``j`` of ``Aᵀ(s; W[:, j])``
        those of ``Aᵀ(s; W)`` (the memory mode computes big maps so, see
        ``relgraph.rules.slicing.sliced_map``)."""
        return False

    def stack_inputs(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor | None:
        """One weight whose adjoint gives ``Aᵀ(s; first)`` and ``Aᵀ(s; second)`` side by side
        along the input channels, or ``None`` where the op cannot (see ``adjoint_pair``)."""
        return None

    def adjoint_pair(
        self,
        s: torch.Tensor,
        first: torch.Tensor,
        second: torch.Tensor,
        x_shape: torch.Size,
        stacked: torch.Tensor | None = None,
        kernel_of: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Aᵀ(s; first), Aᵀ(s; second))`` in one pass where the op allows it (the weights
        stacked along the input channels, ``stacked`` from ``stack_inputs``); ``kernel_of``
        gives the kept ``adjoint_kernel`` of a weight (or ``None``)."""
        if stacked is None:
            return (
                self.adjoint_kept(s, first, x_shape, kernel_of),
                self.adjoint_kept(s, second, x_shape, kernel_of),
            )
        doubled = torch.Size((x_shape[0], 2 * x_shape[1], *x_shape[2:]))
        both = self.adjoint_kept(s, stacked, doubled, kernel_of)
        return both[:, : x_shape[1]], both[:, x_shape[1] :]

    def adjoint_kept(
        self,
        s: torch.Tensor,
        weight: torch.Tensor,
        x_shape: torch.Size,
        kernel_of: Callable[[torch.Tensor], torch.Tensor | None] | None,
    ) -> torch.Tensor:
        """``adjoint(s, weight, x_shape)`` with the kept ``adjoint_kernel`` that ``kernel_of``
        gives for ``weight`` (``kernel=`` only where there is one)."""
        kernel = None if kernel_of is None else kernel_of(weight)
        if kernel is None:
            return self.adjoint(s, weight, x_shape)
        return self.adjoint(s, weight, x_shape, kernel=kernel)

    def forward(self, inputs, tensors):
        weight, bias = self.weight_and_bias(tensors)
        return self.linear_map(inputs[0], weight, bias)


@register_op("conv{dims}d", dims=(1, 2, 3))
class ConvNd(Spatial, Affine):
    """Convolution over ``dims`` spatial dimensions (``torch.nn.Conv3d`` and kin)."""

    in_channels = Field[int | None]("int?", None, "inferred from the input when left out")
    out_channels = Field[int]("int")
    kernel_size = Field[Ints]("ints")
    stride = Field[Ints]("ints", 1)
    padding = Field[Ints]("ints", 0)
    dilation = Field[Ints]("ints", 1)
    groups = Field[int]("int", 1)
    bias = Field[bool]("bool", True)

    def _validate(self) -> None:
        for name in ("kernel_size", "stride", "dilation"):
            if min(self.attrs[name]) < 1:
                raise OpDefinitionError(
                    f"{name} must be at least 1, got {list(self.attrs[name])}", name
                )
        if min(self.padding) < 0:
            raise OpDefinitionError(f"padding must be ≥ 0, got {list(self.padding)}", "padding")
        if self.out_channels < 1:
            raise OpDefinitionError("out_channels must be at least 1", "out_channels")
        if self.groups < 1 or self.out_channels % self.groups:
            raise OpDefinitionError(
                f"out_channels ({self.out_channels}) must be divisible by groups ({self.groups})",
                "groups",
            )

    def resolve(self, in_shapes):
        channels = _channels_of(self, in_shapes[0], self.dims + 1, f"(C, {self.dims} spatial dims)")
        if self.in_channels is None:
            self.in_channels = channels
        elif self.in_channels != channels:
            raise OpDefinitionError(
                f"in_channels is {self.in_channels} but its input has {channels} channels "
                f"(input shape {list(in_shapes[0])})",
                "in_channels",
            )
        if channels % self.groups:
            raise OpDefinitionError(
                f"in_channels ({channels}) must be divisible by groups ({self.groups})", "groups"
            )
        for size, k, p, d in zip(in_shapes[0][1:], self.kernel_size, self.padding, self.dilation):
            if size + 2 * p < d * (k - 1) + 1:
                raise OpDefinitionError(
                    f"kernel {list(self.kernel_size)} (dilation {list(self.dilation)}) is larger "
                    f"than its padded input {list(in_shapes[0][1:])} "
                    f"(padding {list(self.padding)})",
                    "kernel_size",
                )

    def tensor_shapes(self, in_shapes):
        shapes = {"weight": (self.out_channels, self.in_channels // self.groups, *self.kernel_size)}
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
        if self._pointwise:
            return _pointwise_map(x, weight, bias, self.stride)
        return _conv(self, x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    @property
    def prefers_channels_last(self) -> str | None:
        """Where a 3-D convolution runs faster channels-last on CPU (``Graph.working_layout``):
        ``"always"`` grouped (oneDNN's grouped kernels; torch's own kernels too),
        ``"onednn"`` ungrouped, where oneDNN takes the dtype (the zoo's full-size models: the
        forward faster, the explanation at least as fast; docs/benchmarks/model-speed.md);
        ``None`` for other convolutions."""
        if self.dims != 3:
            return None
        return "always" if self.groups > 1 else "onednn"

    @property
    def _pointwise(self) -> bool:
        """A 1×…×1 kernel without padding or groups: a matrix product at each position."""
        return self.groups == 1 and max(self.kernel_size) == 1 and max(self.padding) == 0

    @property
    def _patches(self) -> bool:
        """Non-overlapping patches (stride = kernel, no padding, dilation or groups): a patch
        or tubelet embedding, whose adjoint is one matrix product per patch."""
        return (
            self.groups == 1
            and list(self.stride) == list(self.kernel_size)
            and max(self.padding) == 0
            and max(self.dilation) == 1
        )

    @property
    def sliceable(self) -> bool:
        return self.groups == 1

    def output_size(self, in_size: Sequence[int]) -> list[int]:
        """The output's spatial size for an input of spatial size ``in_size``."""
        return [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(
                in_size, self.kernel_size, self.stride, self.padding, self.dilation
            )
        ]

    def linear_map_rows(self, x, weight, bias, start: int, stop: int) -> torch.Tensor:
        """``A(x; W) + b`` at output positions ``[start, stop)`` of the first spatial axis
        alone: the convolution of the input rows they read, zero-padded explicitly where the
        op's padding lies (the memory mode's slices; each output as in one go)."""
        k, s, p, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        n = x.shape[2]
        # rows [low, high) of the input padded by p on both ends; those outside [0, n) are
        # padding (all of them, where the padding reaches past the kernel's extent)
        low, high = start * s - p, (stop - 1) * s - p + d * (k - 1) + 1
        first, last = min(max(low, 0), n), max(min(high, n), 0)
        rows = x[:, :, first:last] if first < last else x[:, :, :0]
        before = max(0, min(high, 0) - low)
        after = (high - low) - before - rows.shape[2]
        if before or after:
            rows = F.pad(rows, [0, 0] * (self.dims - 1) + [before, after])
        if self._pointwise:
            return _pointwise_map(rows, weight, bias, self.stride)
        padding = (0, *self.padding[1:])
        return _conv(self, rows, weight, bias, self.stride, padding, self.dilation, self.groups)

    def stack_inputs(self, first, second):
        # a 1×…×1 kernel's adjoints are matrix products: two of the input's width run
        # faster than one of twice its width (X3D-S's shapes, MKL),
        # and each gives a tensor of its own, where the rule forms its products in place
        if self.groups > 1 or self._pointwise:
            return None
        return torch.cat([first, second], dim=1)

    def _flipped(self, s: torch.Tensor) -> bool:
        """Whether the adjoint runs as a convolution with the flipped kernel (see ``adjoint``)."""
        if self._pointwise:
            return False
        full = [d * (k - 1) - p for k, p, d in zip(self.kernel_size, self.padding, self.dilation)]
        return (self.groups > 1 or (_channels_last(s) and max(self.stride) == 1)) and min(full) >= 0

    def adjoint_kernel(self, weight, s):
        # the flipped kernel is a transposed copy of the weight (R(2+1)-D 18's last layers:
        # 21 MB each, a slow copy): the rules keep it (NodeContext.adjoint_kernel)
        return _adjoint_kernel(weight, self.groups) if self._flipped(s) else None

    def adjoint(self, s, weight, x_shape, kernel=None):
        if self._pointwise:
            return _pointwise_adjoint(s, weight, x_shape, self.stride)
        if self._patches:
            return _patch_adjoint(s, weight, x_shape)
        full = [d * (k - 1) - p for k, p, d in zip(self.kernel_size, self.padding, self.dilation)]
        out_pad = _output_padding(
            x_shape[2:], s.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation
        )
        if self._flipped(s):
            # Grouped (depthwise) transposed convolutions run far slower than the forward
            # kernels on CPU: the adjoint is the stride-1 convolution of s, spread out by the
            # stride (zeros between its entries, and output_padding zeros at the end), with
            # each group's kernel transposed and flipped, padded by d·(k−1) − p.
            if max(self.stride) > 1:
                s = _spread(s, self.stride, out_pad)
            return _conv(
                self,
                s,
                _adjoint_kernel(weight, self.groups) if kernel is None else kernel,
                None,
                1,
                full,
                self.dilation,
                self.groups,
            )
        plain = (
            s.contiguous()
            if _padded_past_kernel(self, s, self.kernel_size, self.padding, self.dilation)
            else s
        )
        return _same_layout(
            _conv_transpose_fn(self.dims)(
                plain, weight, None, self.stride, self.padding, out_pad, self.groups, self.dilation
            ),
            s,
        )


@register_op("linear")
class Linear(Affine):
    in_features = Field[int | None]("int?", None, "inferred from the input when left out")
    out_features = Field[int]("int")
    bias = Field[bool]("bool", True)

    def _validate(self):
        if self.out_features < 1:
            raise OpDefinitionError("out_features must be at least 1", "out_features")

    #: the input has axes before its features (tokens ``(N, D)``): the map acts on the last
    #: axis, and the channel-sliced maps and stacked adjoints (along axis 1) do not apply
    tokens: bool = False

    def resolve(self, in_shapes):
        shape = in_shapes[0]
        self.tokens = len(shape) > 1
        if self.tokens and self.in_features is None:
            # inferred, a feature map that lacks its flatten would pass as tokens
            raise OpDefinitionError(
                f"linear expects a flat input (features,), got shape {list(shape)}; add a "
                "flatten node before it, or give in_features to map the last axis of tokens "
                "(…, features)",
                "in_features",
            )
        if self.in_features is None:
            self.in_features = shape[-1]
        elif self.in_features != shape[-1]:
            raise OpDefinitionError(
                f"in_features is {self.in_features} but its input has {shape[-1]} features "
                f"(its last axis; input shape {list(shape)})",
                "in_features",
            )

    def tensor_shapes(self, in_shapes):
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def init_tensors(self, shapes, generator, dtype):
        bound = 1.0 / math.sqrt(self.in_features)
        return {
            name: uniform_init(shape, bound, generator, dtype) for name, shape in shapes.items()
        }

    def linear_map(self, x, weight, bias=None):
        return F.linear(x, weight, bias)

    @property
    def sliceable(self) -> bool:
        return not self.tokens

    def broadcast_bias(self, bias, z):
        return bias if self.tokens else super().broadcast_bias(bias, z)

    def stack_inputs(self, first, second):
        return None if self.tokens else torch.cat([first, second], dim=1)

    def adjoint(self, s, weight, x_shape):
        return s @ weight


@register_op("batchnorm{dims}d", dims=(1, 2, 3))
class BatchNormNd(Spatial, Affine):
    """Batch norm in inference mode, seen by rules as the affine map ``x·scale + shift``."""

    num_features = Field[int | None]("int?", None, "inferred from the input when left out")
    eps = Field[float]("float", 1e-5)
    affine = Field[bool]("bool", True)
    optional_tensors = frozenset({"num_batches_tracked"})

    def _validate(self):
        # eps ≤ 0 divides by zero (or takes the root of a negative) where a variance is 0
        if self.eps <= 0:
            raise OpDefinitionError(f"eps must be positive, got {self.eps}", "eps")

    def resolve(self, in_shapes):
        shape = in_shapes[0]
        ranks = (1, 2) if self.dims == 1 else (self.dims + 1,)
        if len(shape) not in ranks:
            raise OpDefinitionError(
                f"{self.type} expects input of rank {' or '.join(map(str, ranks))} "
                f"(batch left out), got shape {list(shape)}"
            )
        if self.num_features is None:
            self.num_features = shape[0]
        elif self.num_features != shape[0]:
            raise OpDefinitionError(
                f"num_features is {self.num_features} but its input has {shape[0]} channels",
                "num_features",
            )

    def tensor_shapes(self, in_shapes):
        c = (self.num_features,)
        shapes = {"running_mean": c, "running_var": c}
        if self.affine:
            shapes.update(weight=c, bias=c)
        return shapes

    def init_tensors(self, shapes, generator, dtype):
        c = shapes["running_mean"]
        tensors = {
            "running_mean": torch.zeros(c, dtype=dtype),
            "running_var": torch.ones(c, dtype=dtype),
        }
        if self.affine:
            tensors.update(weight=torch.ones(c, dtype=dtype), bias=torch.zeros(c, dtype=dtype))
        return tensors

    def weight_and_bias(self, tensors):
        scale = torch.rsqrt(tensors["running_var"] + self.eps)
        shift = -tensors["running_mean"] * scale
        if self.affine:
            scale = scale * tensors["weight"]
            shift = shift * tensors["weight"] + tensors["bias"]
        return scale, shift

    @staticmethod
    def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.reshape(1, -1, *([1] * (like.dim() - 2)))

    def linear_map(self, x, weight, bias=None):
        out = x * self._per_channel(weight, x)
        return out if bias is None else out + self._per_channel(bias, x)

    def adjoint(self, s, weight, x_shape):
        return s * self._per_channel(weight, s)


# --------------------------------------------------------------------------- pooling


class PoolNd(Spatial):
    """A pooling op. ``window_sum`` is a depthwise convolution with a kernel of ones over
    the zero-padded input, so its adjoint is the matching transposed convolution."""

    kernel_size = Field[Ints]("ints")
    stride = Field[Ints]("ints", None, "defaults to kernel_size")
    padding = Field[Ints]("ints", 0)

    def _validate(self):
        if self.attrs["stride"] is None:
            self.stride = self.kernel_size
        for name in ("kernel_size", "stride", "dilation"):
            if name in self.attrs and min(self.attrs[name]) < 1:
                raise OpDefinitionError(
                    f"{name} must be at least 1, got {list(self.attrs[name])}", name
                )
        if min(self.padding) < 0:
            raise OpDefinitionError(f"padding must be ≥ 0, got {list(self.padding)}", "padding")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise OpDefinitionError(
                f"padding {list(self.padding)} must be at most half of kernel_size "
                f"{list(self.kernel_size)}",
                "padding",
            )

    @property
    def _dilation(self) -> tuple[int, ...]:
        return self.attrs.get("dilation", (1,) * self.dims)

    def resolve(self, in_shapes):
        shape = in_shapes[0]
        if len(shape) != self.dims + 1:
            raise OpDefinitionError(
                f"{self.type} expects input of shape (C, {self.dims} spatial dims) "
                f"(batch left out), got {list(shape)}"
            )
        for size, k, p, d in zip(shape[1:], self.kernel_size, self.padding, self._dilation):
            if size + 2 * p < d * (k - 1) + 1:
                raise OpDefinitionError(
                    f"kernel {list(self.kernel_size)} is larger than its padded input "
                    f"{list(shape[1:])} (padding {list(self.padding)})",
                    "kernel_size",
                )
        for axis, (n, o, k, s, p, d) in enumerate(
            zip(
                shape[1:],
                self._out_size(shape[1:]),
                self.kernel_size,
                self.stride,
                self.padding,
                self._dilation,
            )
        ):
            # a (dilated) window that falls wholly into the padding has no input to pool; a
            # window starting inside the input holds its start, so only left-padding starts
            for start in range(-p, min(0, (o - 1) * s - p + 1), s):
                if not any(0 <= start + d * i < n for i in range(k)):
                    raise OpDefinitionError(
                        f"along spatial axis {axis} a pooling window starting at {start} covers "
                        f"only padding (kernel {k}, dilation {d}, padding {p}, input {n}); "
                        "reduce padding or dilation",
                        "padding",
                    )

    def _ones_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones((x.shape[1], 1, *self.kernel_size), dtype=x.dtype, device=x.device)

    def _extra_padding(self, in_size: Sequence[int], out_size: Sequence[int]) -> list[int]:
        # ceil_mode lets a last window start inside the input and run past its padded end
        return [
            max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
            for n, o, k, s, p, d in zip(
                in_size, out_size, self.kernel_size, self.stride, self.padding, self._dilation
            )
        ]

    def _out_size(self, in_size: Sequence[int]) -> list[int]:
        sizes = []
        for n, k, s, p, d in zip(
            in_size, self.kernel_size, self.stride, self.padding, self._dilation
        ):
            span = n + 2 * p - d * (k - 1) - 1
            o = (-(-span // s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (o - 1) * s >= n + p:
                o -= 1  # the last window must start inside the input or the left padding
            sizes.append(o)
        return sizes

    def _padded(self, x: torch.Tensor, extra: Sequence[int]) -> torch.Tensor:
        pads: list[int] = []
        for p, e in zip(reversed(self.padding), reversed(extra)):
            pads += [p, p + e]
        return F.pad(x, pads)

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of each pooling window (padding counts as zero)."""
        extra = self._extra_padding(x.shape[2:], self._out_size(x.shape[2:]))
        return _conv_fn(self.dims)(
            self._padded(x, extra),
            self._ones_kernel(x),
            None,
            self.stride,
            0,
            self._dilation,
            x.shape[1],
        )

    def window_sum_adjoint(self, s: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """Adjoint of ``window_sum``: each window's value added to every element it covers."""
        in_size = x_shape[2:]
        extra = self._extra_padding(in_size, s.shape[2:])
        padded = [n + 2 * p + e for n, p, e in zip(in_size, self.padding, extra)]
        zeros = (0,) * self.dims
        out_pad = _output_padding(
            padded, s.shape[2:], self.kernel_size, self.stride, zeros, self._dilation
        )
        full = _conv_transpose_fn(self.dims)(
            s, self._ones_kernel(s), None, self.stride, 0, out_pad, s.shape[1], self._dilation
        )
        index = tuple(slice(p, p + n) for p, n in zip(self.padding, in_size))
        return full[(..., *index)]


@register_op("maxpool{dims}d", dims=(1, 2, 3))
class MaxPoolNd(PoolNd):
    sign = "keeps"
    dilation = Field[Ints]("ints", 1)
    ceil_mode = Field[bool]("bool", False)

    def _pool(self, x: torch.Tensor, return_indices: bool = False):
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[self.dims]
        return fn(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=return_indices,
        )

    def forward(self, inputs, tensors):
        return self._pool(inputs[0])

    def forward_record(self, inputs, tensors):
        return self._pool(inputs[0], return_indices=True)

    def max_route(
        self,
        x: torch.Tensor | None,
        relevance: torch.Tensor,
        indices: torch.Tensor | None = None,
        x_shape: torch.Size | None = None,
    ) -> torch.Tensor:
        """Each output's relevance to the input position that won its window (summed where
        windows overlap). ``indices`` are the forward's argmax (``forward_record``); without
        them they are recomputed from ``x``."""
        if indices is None:
            _, indices = self._pool(x, return_indices=True)
        shape = x.shape if x_shape is None else x_shape
        routed = relevance.new_zeros((*shape[:2], math.prod(shape[2:])))
        routed.scatter_add_(2, indices.flatten(2), relevance.flatten(2))
        return routed.view(shape)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: each window's gradient to its argmax."""
        return [self.max_route(inputs[0], grad, indices=record, x_shape=input_shapes[0])]


@register_op("avgpool{dims}d", dims=(1, 2, 3))
class AvgPoolNd(PoolNd):
    sign = "keeps"
    ceil_mode = Field[bool]("bool", False)
    count_include_pad = Field[bool]("bool", True)

    def forward(self, inputs, tensors):
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[self.dims]
        x = inputs[0]
        # torch's CPU avg_pool3d has no bfloat16 kernel: pool in float32, round once
        narrow = x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
        out = fn(
            x.float() if narrow else x,
            self.kernel_size,
            self.stride,
            self.padding,
            ceil_mode=self.ceil_mode,
            count_include_pad=self.count_include_pad,
        )
        return out.to(x.dtype) if narrow else out

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: the window adjoint of ``g`` divided by each window's
        count (valid elements over the mean of ones: the divisor the forward used)."""
        ones = grad.new_ones(input_shapes[0])
        divisor = self.window_sum(ones) / self.forward([ones], {})
        return [self.window_sum_adjoint(grad / divisor, input_shapes[0])]


@register_op("adaptive_avgpool{dims}d", dims=(1, 2, 3))
class AdaptiveAvgPoolNd(Spatial):
    """Adaptive average pooling. Its windows are separable bins, so ``window_sum`` is a
    product of one 0/1 bin matrix per spatial dimension, and the adjoint their transposes."""

    sign = "keeps"

    output_size = Field[Ints]("ints")

    def resolve(self, in_shapes):
        shape = in_shapes[0]
        if len(shape) != self.dims + 1:
            raise OpDefinitionError(
                f"{self.type} expects input of shape (C, {self.dims} spatial dims) "
                f"(batch left out), got {list(shape)}"
            )
        if min(self.output_size) < 1:
            raise OpDefinitionError("output_size must be at least 1", "output_size")

    def forward(self, inputs, tensors):
        fn = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
        return fn[self.dims](inputs[0], self.output_size)

    @staticmethod
    def _bins(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
        # PyTorch's adaptive bins: [floor(i*n/o), ceil((i+1)*n/o))
        rows = torch.arange(n_out, device=like.device)
        start = (rows * n_in) // n_out
        end = -((-(rows + 1) * n_in) // n_out)
        cols = torch.arange(n_in, device=like.device)
        return ((cols >= start[:, None]) & (cols < end[:, None])).to(like.dtype)

    def _contract(
        self, t: torch.Tensor, sizes_from: Sequence[int], sizes_to: Sequence[int], transpose: bool
    ):
        for axis, (n_from, n_to) in enumerate(zip(sizes_from, sizes_to)):
            bins = self._bins(n_to, n_from, t) if transpose else self._bins(n_from, n_to, t)
            matrix = bins.T if transpose else bins
            t = torch.movedim(torch.movedim(t, axis + 2, -1) @ matrix.T, -1, axis + 2)
        return t

    def window_sum(self, x):
        return self._contract(x, x.shape[2:], self.output_size, transpose=False)

    def window_sum_adjoint(self, s, x_shape):
        return self._contract(s, s.shape[2:], x_shape[2:], transpose=True)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: the bin adjoint of ``g`` divided by each bin's size."""
        count = self.window_sum(grad.new_ones(input_shapes[0]))
        return [self.window_sum_adjoint(grad / count, input_shapes[0])]


@register_op("mean")
class Mean(Op):
    """The mean over some dimensions (``x.mean(dims, keepdim)``; the squeeze-excitation
    squeeze, S3D's head). Its one window per output is the whole reduced extent, so
    ``window_sum`` is the sum over ``dims`` and its adjoint broadcasts back."""

    sign = "keeps"

    dims = Field[Shape]("shape", doc="dimensions to average, counting the batch as 0 (each ≥ 1)")
    keepdim = Field[bool]("bool", False)

    def _validate(self):
        if min(self.dims) < 1:
            raise OpDefinitionError(
                f"dims must be ≥ 1 (dimension 0 is the batch), got {list(self.dims)}", "dims"
            )
        if len(set(self.dims)) != len(self.dims):
            raise OpDefinitionError(f"dims names a dimension twice: {list(self.dims)}", "dims")

    def resolve(self, in_shapes):
        rank = len(in_shapes[0])
        if max(self.dims) > rank:
            raise OpDefinitionError(
                f"dims {list(self.dims)} out of range for an input of shape "
                f"{list(in_shapes[0])} (batch left out, so dims run from 1 to {rank})",
                "dims",
            )

    def forward(self, inputs, tensors):
        return inputs[0].mean(dim=self.dims, keepdim=self.keepdim)

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ``dims``."""
        return x.sum(dim=self.dims, keepdim=self.keepdim)

    def window_sum_adjoint(self, s: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
        """``s`` broadcast back over ``dims`` (a new tensor, not an expanded view)."""
        if not self.keepdim:
            for dim in sorted(self.dims):
                s = s.unsqueeze(dim)
        return s.expand(x_shape).contiguous()

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g`` broadcast back, divided by the count averaged."""
        count = math.prod(input_shapes[0][d] for d in self.dims)
        return [self.window_sum_adjoint(grad / count, input_shapes[0])]


# --------------------------------------------------------------------------- shape-preserving


class Elementwise(Op):
    """Ops whose relevance passes straight through (reshaped to the input's shape)."""

    def pass_relevance(self, relevance: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
        """The relevance of the input: the output's, reshaped to the input's shape."""
        return relevance.reshape(x_shape)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product of a reshape, dropout at inference or identity: pass."""
        return [grad.reshape(input_shapes[0])]


@register_op("relu")
class ReLU(Elementwise):
    sign = "nonnegative"
    in_place = True

    def forward(self, inputs, tensors):
        return F.relu(inputs[0])

    def forward_in_place(self, inputs, tensors):
        return inputs[0].relu_()

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g · [x > 0]``."""
        return [grad * (inputs[0] > 0)]


@register_op("sigmoid")
class Sigmoid(Elementwise):
    """The logistic function ``1 / (1 + e⁻ˣ)`` (the squeeze-excitation gate)."""

    sign = "nonnegative"
    in_place = True

    def forward(self, inputs, tensors):
        return torch.sigmoid(inputs[0])

    def forward_in_place(self, inputs, tensors):
        return inputs[0].sigmoid_()

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g · σ(x)(1 − σ(x))``."""
        sigma = torch.sigmoid(inputs[0])
        return [grad * sigma * (1 - sigma)]


@register_op("silu")
class SiLU(Elementwise):
    """SiLU, also called swish: ``x · sigmoid(x)`` (X3D's bottleneck activation)."""

    in_place = True

    def forward(self, inputs, tensors):
        return F.silu(inputs[0])

    def forward_in_place(self, inputs, tensors):
        return F.silu(inputs[0], inplace=True)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g · σ(x)(1 + x(1 − σ(x)))``."""
        x = inputs[0]
        sigma = torch.sigmoid(x)
        return [grad * sigma * (1 + x * (1 - sigma))]


@register_op("dropout")
class Dropout(Elementwise):
    """Dropout at inference: the identity."""

    sign = "keeps"

    p = Field[float]("float", 0.5)

    def _validate(self):
        if not 0.0 <= self.p < 1.0:
            raise OpDefinitionError(f"p must be in [0, 1), got {self.p}", "p")

    def forward(self, inputs, tensors):
        return inputs[0]


@register_op("identity")
class Identity(Elementwise):
    sign = "keeps"

    def forward(self, inputs, tensors):
        return inputs[0]


@register_op("flatten")
class Flatten(Elementwise):
    """Flatten every dimension but the batch."""

    sign = "keeps"

    def forward(self, inputs, tensors):
        return inputs[0].flatten(1)


@register_op("reshape")
class Reshape(Elementwise):
    sign = "keeps"
    shape = Field[Shape]("shape", doc="new shape without batch; one entry may be -1")

    def resolve(self, in_shapes):
        known = [v for v in self.shape if v != -1]
        if len(known) < len(self.shape) - 1 or any(v < 1 for v in known):
            raise OpDefinitionError(f"invalid shape {list(self.shape)}", "shape")
        total = math.prod(in_shapes[0])
        if (-1 not in self.shape and math.prod(known) != total) or total % math.prod(known):
            raise OpDefinitionError(
                f"cannot reshape input {list(in_shapes[0])} ({total} values) to {list(self.shape)}"
            )

    def forward(self, inputs, tensors):
        return inputs[0].reshape(inputs[0].shape[0], *self.shape)


# --------------------------------------------------------------------------- merges


def all_finite(t: torch.Tensor) -> bool:
    """Whether no entry of ``t`` is NaN or ±Inf: its two extremes are NaN where any entry is,
    ±Inf where any entry is (faster than ``isfinite(t).all()`` on CPU: no mask as
    large as ``t``)."""
    return not t.numel() or bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())


def keeps_shape(shape: Sequence[int], other: Sequence[int]) -> bool:
    """Whether broadcasting a tensor shaped ``other`` against ``shape`` leaves ``shape`` as
    it is: the test ``torch.broadcast_shapes(shape, other) == shape``, without its cost (a
    few microseconds, which count on graphs of hundreds of nodes)."""
    if len(other) > len(shape):
        return False
    return all(o == 1 or o == s for s, o in zip(reversed(shape), reversed(other)))


def _fits_in_first(inputs: Sequence[torch.Tensor]) -> bool:
    """Whether a binary op's result has the first input's shape and type (no broadcast of it,
    no promotion), so that it can be written there."""
    first, second = inputs
    return keeps_shape(first.shape, second.shape) and (
        torch.result_type(first, second) == first.dtype
    )


class Merge(Op):
    arity = None

    def split(
        self,
        inputs: Sequence[torch.Tensor],
        relevance: torch.Tensor,
        divide: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """Hand ``relevance`` back to the inputs (``divide`` is the rule's safe division; the
        quotient it returns is the split's own, to overwrite)."""
        raise NotImplementedError


@register_op("add")
class Add(Merge):  # no "window": add has no window_sum; rules reach its inputs through split
    sign = "keeps"

    def resolve(self, in_shapes):
        if len(set(in_shapes)) != 1:
            raise OpDefinitionError(
                "add needs inputs of one shape, got " + ", ".join(str(list(s)) for s in in_shapes)
            )

    in_place = True

    def forward(self, inputs, tensors):
        return torch.stack(list(inputs)).sum(0) if len(inputs) > 2 else inputs[0] + inputs[1]

    def forward_in_place(self, inputs, tensors):
        if len(inputs) == 2 and _fits_in_first(inputs):
            return inputs[0].add_(inputs[1])
        return self.forward(inputs, tensors)

    def split(self, inputs, relevance, divide):
        share = divide(relevance, self.forward(inputs, {}))
        *others, last = inputs
        shares = [x * share for x in others]
        if share.shape == last.shape and torch.result_type(share, last) == share.dtype:
            return [*shares, share.mul_(last)]  # the quotient is the split's own
        return [*shares, last * share]

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: a copy of ``g`` for each input."""
        return [grad for _ in input_shapes]


@register_op("concat")
class Concat(Merge):
    sign = "keeps"
    dim = Field[int]("int", 1, "dimension to join along, counting the batch as 0")

    def _validate(self):
        if self.dim < 1:
            raise OpDefinitionError("dim must be ≥ 1 (dimension 0 is the batch)", "dim")

    def resolve(self, in_shapes):
        rank = len(in_shapes[0])
        if self.dim > rank:
            raise OpDefinitionError(
                f"dim {self.dim} is out of range for inputs of rank {rank}", "dim"
            )
        axis = self.dim - 1
        for shape in in_shapes:
            if len(shape) != rank or any(
                a != b for i, (a, b) in enumerate(zip(shape, in_shapes[0])) if i != axis
            ):
                raise OpDefinitionError(
                    f"concat along dim {self.dim} needs inputs equal in every other dimension, got "
                    + ", ".join(str(list(s)) for s in in_shapes)
                )

    def forward(self, inputs, tensors):
        return torch.cat(list(inputs), dim=self.dim)

    def split(self, inputs, relevance, divide):
        return list(torch.split(relevance, [x.shape[self.dim] for x in inputs], dim=self.dim))

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g`` sliced back into the inputs."""
        return list(torch.split(grad, [s[self.dim] for s in input_shapes], dim=self.dim))


# --------------------------------------------------------------------------- products


@register_op("mul")
class Mul(Op):
    """The elementwise product of two inputs of one rank; one may broadcast to the other
    (a size-1 dimension against any size), e.g. the squeeze-excitation gate (C, 1, 1, 1)
    times the signal (C, T, H, W)."""

    sign = "keeps"

    arity = 2
    gate = Field[int | None](
        "int?",
        None,
        "the input slot (0 or 1) of a gate, such as a squeeze-excitation's sigmoid: "
        "signal-take-all hands all relevance to the other; left out, the signal is the input "
        "shaped like the output",
    )

    def _validate(self):
        if self.gate is not None and self.gate not in (0, 1):
            raise OpDefinitionError(f"gate must be the slot 0 or 1, got {self.gate}", "gate")

    def resolve(self, in_shapes):
        first, second = in_shapes
        if len(first) != len(second) or any(
            a != b and 1 not in (a, b) for a, b in zip(first, second)
        ):
            raise OpDefinitionError(
                f"mul needs inputs of one rank whose sizes agree or are 1 (broadcast), got "
                f"{list(first)} and {list(second)} (batch left out)"
            )
        if self.gate is not None:
            signal = in_shapes[1 - self.gate]
            if any(a < b for a, b in zip(signal, in_shapes[self.gate])):
                raise OpDefinitionError(
                    f"gate {self.gate} makes slot {1 - self.gate} the signal, but it is "
                    f"broadcast ({list(signal)} against the gate's "
                    f"{list(in_shapes[self.gate])})",
                    "gate",
                )

    in_place = True

    def forward(self, inputs, tensors):
        return inputs[0] * inputs[1]

    def forward_in_place(self, inputs, tensors):
        if _fits_in_first(inputs):
            return inputs[0].mul_(inputs[1])
        return self.forward(inputs, tensors)

    def vjp(self, grad, inputs, tensors, input_shapes, record=None):
        """Vector-Jacobian product: ``g`` times the other input, summed over the dimensions
        along which this one was broadcast."""
        first, second = inputs
        return [
            self.to_input_shape(grad * second, input_shapes[0]),
            self.to_input_shape(grad * first, input_shapes[1]),
        ]

    def signal_slots(self, input_shapes: Sequence[Sequence[int]], output_shape: Sequence[int]):
        """The slot of the signal where the op names its ``gate``; else the slots of the
        inputs that are not broadcast: shaped like the output."""
        if self.gate is not None:
            return [1 - self.gate]
        return [i for i, shape in enumerate(input_shapes) if tuple(shape) == tuple(output_shape)]

    @staticmethod
    def to_input_shape(relevance: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """``relevance`` summed over the dimensions along which an input of ``shape`` was
        broadcast (the adjoint of the broadcast), so that its total is kept."""
        dims = [d for d, (r, n) in enumerate(zip(relevance.shape, shape)) if n == 1 and r != 1]
        return relevance.sum(dim=dims, keepdim=True) if dims else relevance


# --------------------------------------------------------------------------- shapes


def infer_output_shape(
    op: Op, in_shapes: Sequence[Shape], tensor_shapes: dict[str, Shape]
) -> Shape:
    """Run ``op`` on meta tensors (no data, no memory) and return its output shape."""
    try:
        inputs = [torch.empty((1, *s), device="meta") for s in in_shapes]
        tensors = {k: torch.empty(s, device="meta") for k, s in tensor_shapes.items()}
        out = op.forward(inputs, tensors)
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shapes = ", ".join(str(list(s)) for s in in_shapes)
        message = f"{op.type} cannot take input of shape {shapes}: {first_line}"
        raise OpDefinitionError(message) from None
    shape = tuple(out.shape[1:])
    if any(d < 1 for d in shape):
        raise OpDefinitionError(f"{op.type} would produce an empty output of shape {list(shape)}")
    return shape
