"""Hypothesis strategies that generate whole random graphs for the property tests.

``graph_cases()`` draws a random DAG (1-D to 3-D, or a plain MLP) of convolutions (random
kernel, stride, padding, dilation, groups), pools, means, ReLU, sigmoid, SiLU, batch norm,
dropout, linear layers, residual ``add`` branches, ``concat`` branches and squeeze-excitation
gates (``mul``). Every shape is computed while drawing, so
each drawn graph compiles; sizes stay tiny so that one example runs in milliseconds.

A ``GraphCase`` carries the architecture as plain data (``spec``) and as YAML text (``yaml``),
and builds the compiled graph with random weights and random batch-norm statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import yaml
from hypothesis import strategies as st

import relgraph
from relgraph.engine.graph import compile_spec
from relgraph.engine.spec import parse_spec


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch on one thread: on a busy machine the thread pool's hand-offs cost more
    than the microseconds these tiny graphs need. Import it into a test module to use it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


AFFINE_OPS = ("conv1d", "conv2d", "conv3d", "linear", "batchnorm1d", "batchnorm2d", "batchnorm3d")


@dataclass
class GraphCase:
    """A drawn architecture and the seed of its weights and inputs."""

    spec: dict[str, Any]
    seed: int
    #: (C, *spatial) of each node as the strategy computed it
    shapes: dict[str, tuple[int, ...]] = field(repr=False, default_factory=dict)

    @property
    def yaml(self) -> str:
        return yaml.safe_dump(self.spec, sort_keys=False)

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"GraphCase(seed={self.seed}, yaml=\n{self.yaml})"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.spec["input"]["shape"])

    def build(self, dtype: torch.dtype = torch.float64) -> relgraph.Graph:
        """The compiled graph: PyTorch's default init, random batch-norm statistics."""
        # from the plain data, not the YAML text: the YAML reader would take most of the time
        graph = compile_spec(parse_spec(self.spec, "<drawn>"), dtype=dtype, seed=self.seed)
        generator = torch.Generator().manual_seed(self.seed + 1)
        for node in graph.order:
            if graph.op(node).type.startswith("batchnorm"):
                tensors = graph.tensors(node)
                channels = tensors["running_mean"].shape
                tensors["running_mean"] = torch.randn(channels, generator=generator).to(dtype)
                tensors["running_var"] = (torch.rand(channels, generator=generator) + 0.5).to(dtype)
                if "weight" in tensors:
                    tensors["weight"] = torch.randn(channels, generator=generator).to(dtype)
                    tensors["bias"] = torch.randn(channels, generator=generator).to(dtype) * 0.1
            elif graph.op(node).type == "layernorm":  # off its init: weight 1, bias 0
                tensors = graph.tensors(node)
                for name, t in tensors.items():
                    noise = torch.randn(t.shape, generator=generator).to(dtype)
                    tensors[name] = t + noise * (0.5 if name == "weight" else 0.1)
        return graph

    def inputs(self, batch: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """A random standard-normal input batch."""
        generator = torch.Generator().manual_seed(self.seed + 2)
        return torch.randn((batch, *self.input_shape), generator=generator).to(dtype)


# --------------------------------------------------------------------------- shapes


def conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size, ceil mode included."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


class _Builder:
    """Adds nodes to a spec while tracking the shape of each."""

    def __init__(self, draw, input_shape: tuple[int, ...]) -> None:
        self.draw = draw
        self.nodes: list[dict[str, Any]] = []
        self.shapes: dict[str, tuple[int, ...]] = {"input": input_shape}
        self.current = "input"
        self.count = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self.shapes[self.current]

    def add(self, op: str, out_shape: tuple[int, ...], /, inputs=None, **fields) -> str:
        self.count += 1
        name = f"{op}_{self.count}"
        node = {"name": name, "op": op, "inputs": inputs or [self.current], **fields}
        self.nodes.append(node)
        self.shapes[name] = out_shape
        self.current = name
        return name

    # ---- layers on a (C, *spatial) tensor
    def conv(self, source: str | None = None, same: bool = False, out_channels=None) -> str:
        draw = self.draw
        source = source or self.current
        channels, *spatial = self.shapes[source]
        dims = len(spatial)
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
        out_channels = out_channels or groups * draw(st.integers(1, 2))
        if out_channels % groups:
            groups = 1
        kernel, stride, padding, dilation, out = [], [], [], [], []
        for n in spatial:
            if same:  # odd kernel, stride 1, padding that keeps the size
                d = draw(st.integers(1, 2))
                k = draw(st.sampled_from([1, 3]))
                s, p = 1, d * (k - 1) // 2
            else:
                d = draw(st.integers(1, 2))
                p = draw(st.integers(0, 1))
                k_max = max(1, min(3, (n + 2 * p - 1) // d + 1))
                k = draw(st.integers(1, k_max))
                s = draw(st.integers(1, 2))
            kernel.append(k)
            stride.append(s)
            padding.append(p)
            dilation.append(d)
            out.append(conv_out(n, k, s, p, d))
        return self.add(
            f"conv{dims}d",
            (out_channels, *out),
            inputs=[source],
            out_channels=out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=draw(st.booleans()),
        )

    def maxpool(self) -> str:
        draw = self.draw
        channels, *spatial = self.shape
        ceil_mode = draw(st.booleans())
        kernel, stride, padding, dilation, out = [], [], [], [], []
        for n in spatial:
            d = draw(st.integers(1, 2))
            k = draw(st.integers(1, max(1, min(3, (n - 1) // d + 1))))
            p = draw(st.integers(0, k // 2))
            s = draw(st.integers(1, 2))
            kernel.append(k)
            stride.append(s)
            padding.append(p)
            dilation.append(d)
            out.append(pool_out(n, k, s, p, d, ceil_mode))
        return self.add(
            f"maxpool{len(spatial)}d",
            (channels, *out),
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            ceil_mode=ceil_mode,
        )

    def avgpool(self) -> str:
        draw = self.draw
        channels, *spatial = self.shape
        if draw(st.booleans()):
            out = [draw(st.integers(1, n)) for n in spatial]
            return self.add(f"adaptive_avgpool{len(spatial)}d", (channels, *out), output_size=out)
        ceil_mode = draw(st.booleans())
        kernel, stride, padding, out = [], [], [], []
        for n in spatial:
            k = draw(st.integers(1, min(3, n)))
            p = draw(st.integers(0, k // 2))
            s = draw(st.integers(1, 2))
            kernel.append(k)
            stride.append(s)
            padding.append(p)
            out.append(pool_out(n, k, s, p, 1, ceil_mode))
        return self.add(
            f"avgpool{len(spatial)}d",
            (channels, *out),
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            ceil_mode=ceil_mode,
            count_include_pad=draw(st.booleans()),
        )

    def batchnorm(self) -> str:
        dims = max(1, len(self.shape) - 1)
        return self.add(f"batchnorm{dims}d", self.shape, affine=self.draw(st.booleans()))

    def relu(self) -> str:
        return self.add("relu", self.shape)

    def sigmoid(self) -> str:
        return self.add("sigmoid", self.shape)

    def silu(self) -> str:
        return self.add("silu", self.shape)

    def mean(self) -> str:
        """The mean over some spatial dimensions, kept as size 1 (the rank stays)."""
        spatial = list(range(2, len(self.shape) + 1))
        dims = self.draw(st.lists(st.sampled_from(spatial), min_size=1, unique=True))
        shape = tuple(1 if d in dims else n for d, n in enumerate(self.shape, start=1))
        return self.add("mean", shape, dims=sorted(dims), keepdim=True)

    def gate(self) -> str:
        """Squeeze-excitation: ``mul(x, sigmoid(f(mean(x))))``, the gate broadcast along the
        spatial dimensions (or, where those are all 1, along the channels too; for features,
        a single gate value), the product's inputs in either order. Where every size is 1
        the gate could not be told from the signal: a plain sigmoid instead."""
        source = self.current
        shape = self.shape
        if math.prod(shape) == 1:
            return self.sigmoid()
        channels = shape[0] if math.prod(shape[1:]) > 1 else 1
        if len(shape) == 1:
            self.linear(out_features=1)
        else:
            spatial = list(range(2, len(shape) + 1))
            self.add("mean", (shape[0], *[1] * len(spatial)), dims=spatial, keepdim=True)
            self.conv(same=True, out_channels=channels)
            if self.draw(st.booleans()):
                self.relu()
                self.conv(same=True, out_channels=channels)
        gate = self.sigmoid()
        inputs = [source, gate] if self.draw(st.booleans()) else [gate, source]
        return self.add("mul", shape, inputs=inputs)

    def dropout(self) -> str:
        return self.add("dropout", self.shape, p=0.5)

    def linear(self, out_features: int | None = None, source: str | None = None) -> str:
        out_features = out_features or self.draw(st.integers(1, 4))
        return self.add(
            "linear",
            (out_features,),
            inputs=[source or self.current],
            out_features=out_features,
            bias=self.draw(st.booleans()),
        )

    def residual(self) -> str:
        """``add(branch(x), x)``, sometimes with a second branch: three addends."""
        source = self.current
        channels = self.shape[0]
        addends = [source]
        for _ in range(self.draw(st.integers(1, 2))):
            self.current = source
            if len(self.shape) == 1:
                self.linear(out_features=channels)
            else:
                self.conv(same=True, out_channels=channels)
            if self.draw(st.booleans()):
                self.relu()
            addends.insert(0, self.current)
        return self.add("add", self.shapes[source], inputs=addends)

    def concat(self) -> str:
        """``concat(branch(x), x)`` along the channels (or, for 1-D features, the features)."""
        source = self.current
        branches = []
        for _ in range(self.draw(st.integers(1, 2))):
            self.current = source
            if len(self.shape) == 1:
                self.linear()
            else:
                self.conv(same=True)
            branches.append(self.current)
        if self.draw(st.booleans()):
            branches.append(source)
        if len(branches) == 1:
            branches.append(source)
        shape = list(self.shapes[source])
        shape[0] = sum(self.shapes[b][0] for b in branches)
        return self.add("concat", tuple(shape), inputs=branches, dim=1)

    def attention(self) -> str:
        """An attention block on a (C, L) tensor read as L tokens of C features: a CLS token
        and position embeddings, layer norm, q·kᵀ over 1 or 2 heads, scale, softmax,
        attention·v (as four nodes or the fused ``attention`` op), the heads merged, a
        projection, GELU, a residual add, the CLS token dropped again and the tokens back to
        (C, L)."""
        draw = self.draw
        channels, length = self.shape
        heads = draw(st.integers(1, 2))
        width = 2 * heads  # the q, k, v features: heads of 2
        self.add("transpose", (length, channels), dim0=1, dim1=2)
        self.add("prepend_token", (length + 1, channels), dim=1, shape=[1, 1, channels])
        tokens = self.add("add_param", (length + 1, channels), shape=[1, length + 1, channels])
        normed = self.add("layernorm", (length + 1, channels))
        split = {}
        for part in ("q", "k", "v"):
            self.current = normed
            self.add(
                "linear",
                (length + 1, width),
                in_features=channels,
                out_features=width,
                bias=draw(st.booleans()),
            )
            self.add("reshape", (length + 1, heads, 2), shape=[length + 1, heads, 2])
            split[part] = self.add("transpose", (heads, length + 1, 2), dim0=1, dim1=2)
        if draw(st.booleans()):  # the fused op
            self.add("attention", (heads, length + 1, 2), inputs=[split[p] for p in "qkv"])
        else:  # the same as four nodes
            square = (heads, length + 1, length + 1)
            self.add("matmul", square, inputs=[split["q"], split["k"]], transpose_b=True)
            self.add("scale", square, factor=2**-0.5)
            probs = self.add("softmax", square)
            self.add("matmul", (heads, length + 1, 2), inputs=[probs, split["v"]])
        self.add("transpose", (length + 1, heads, 2), dim0=1, dim1=2)
        self.add("reshape", (length + 1, width), shape=[length + 1, width])
        self.add("linear", (length + 1, channels), in_features=width, out_features=channels)
        self.add(draw(st.sampled_from(["gelu", "gelu_new", "gelu_fast"])), self.shape)
        self.add("add", self.shape, inputs=[self.current, tokens])
        self.add("slice", (length, channels), dim=1, start=1)
        return self.add("transpose", (channels, length), dim0=1, dim1=2)


SPATIAL_BLOCKS = (
    "conv",
    "conv",
    "relu",
    "maxpool",
    "avgpool",
    "batchnorm",
    "dropout",
    "sigmoid",
    "silu",
    "mean",
)
MERGE_BLOCKS = ("residual", "concat", "gate")


@st.composite
def graph_cases(
    draw,
    *,
    dims: int | tuple[int, ...] = (0, 1, 2, 3),
    channels: int | None = None,
    merges: bool = True,
    max_blocks: int = 4,
    first_conv: bool = False,
    homogeneous: bool = False,
    attention: bool = False,
) -> GraphCase:
    """A random architecture that compiles.

    Parameters
    ----------
    dims
        Number of spatial dimensions (1 to 3), or 0 for an MLP on a feature vector;
        drawn from them when a tuple.
    channels
        Input channels (or features); drawn when ``None``.
    merges
        Whether to draw residual ``add`` and ``concat`` branches.
    max_blocks
        Most blocks before the classifier head.
    first_conv
        Start with a convolution on the input (then it is the only ``first`` affine node,
        as in C3D); needs ``dims`` ≥ 1.
    homogeneous
        Leave out the ops that are not positively homogeneous (sigmoid, SiLU, gates), so the
        graph's output scales with its input (bias-free) as scale-equivariance needs.
    attention
        Draw attention blocks too, at least one (on 1-D inputs, read as tokens: give
        ``dims=1``).
    """
    dims = draw(st.sampled_from(dims)) if isinstance(dims, tuple) else dims
    channels = channels or draw(st.integers(1, 3))
    if dims == 0:
        input_shape: tuple[int, ...] = (draw(st.integers(1, 5)),)
    else:
        largest = {1: 7, 2: 5, 3: 4}[dims]
        input_shape = (channels, *(draw(st.integers(2, largest)) for _ in range(dims)))
    builder = _Builder(draw, input_shape)
    blocks = ("relu", "batchnorm", "dropout", "linear", "silu") if dims == 0 else SPATIAL_BLOCKS
    if merges:
        blocks = blocks + MERGE_BLOCKS
    if homogeneous:
        blocks = tuple(b for b in blocks if b not in ("sigmoid", "silu", "gate"))
    if attention and dims == 1:
        blocks = blocks + ("attention", "attention")
    if first_conv:
        builder.conv()
    if attention and dims == 1:
        builder.attention()
    for _ in range(draw(st.integers(1, max_blocks))):
        getattr(builder, draw(st.sampled_from(blocks)))()
    if len(builder.shape) > 1 and draw(st.booleans()):  # X3D, S3D: a mean over space and time
        spatial = list(range(2, len(builder.shape) + 1))
        builder.add("mean", builder.shape[:1], dims=spatial)
    if len(builder.shape) > 1:
        builder.add("flatten", (math.prod(builder.shape),))
    if draw(st.booleans()):
        builder.linear()
        builder.relu()
        if draw(st.booleans()):
            builder.dropout()
    builder.linear(out_features=draw(st.integers(2, 4)))
    spec = {
        "name": "drawn",
        "input": {"name": "input", "shape": list(input_shape)},
        "nodes": builder.nodes,
        "output": builder.current,
    }
    return GraphCase(spec=spec, seed=draw(st.integers(0, 2**16)), shapes=builder.shapes)
