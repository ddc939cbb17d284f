"""The convolutions' map ``A`` and adjoint ``Aᵀ`` against ``torch.nn.functional.conv*d`` and
autograd's vector-Jacobian product of it, on every path ``ConvNd`` takes: grouped (depthwise)
convolutions as a flipped-kernel convolution (strided ones on the input spread out by zeros),
1×…×1 kernels as matrix products, everything else as a transposed convolution; in the default
and in the channels-last layout (``Graph.working_layout``), where the result keeps the layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from relgraph.engine.ops import OPS, _canonical_channels_last, _positions

CASES = [
    # dims, in, out, groups, kernel, stride, padding, dilation, size
    (3, 6, 6, 6, (3, 3, 3), 1, 1, 1, (5, 6, 7)),  # depthwise, X3D's conv_b
    (3, 4, 4, 4, (5, 1, 1), 1, (2, 0, 0), 1, (7, 3, 3)),  # X3D's temporal stem
    (3, 6, 12, 3, (3, 2, 1), 1, (1, 0, 0), (2, 1, 1), (6, 5, 4)),  # grouped, dilated
    (2, 4, 4, 2, (3, 3), 1, 0, 1, (6, 5)),  # no padding
    (1, 3, 3, 3, (2,), 1, 2, 1, (5,)),  # padding beyond d·(k−1): the transposed path
    (3, 6, 6, 6, (3, 3, 3), (1, 2, 2), 1, 1, (5, 7, 8)),  # strided depthwise: spread s
    (3, 6, 6, 6, (3, 3, 3), (2, 3, 2), 1, 1, (6, 8, 7)),  # odd sizes: output_padding zeros
    (3, 5, 7, 1, (3, 1, 3), 1, 1, 1, (4, 5, 6)),  # ungrouped
    (3, 6, 4, 1, (1, 1, 1), 1, 0, 1, (4, 5, 6)),  # 1×1×1: a matrix product (X3D's conv_a/c)
    (3, 6, 4, 1, (1, 1, 1), (1, 2, 2), 0, 1, (4, 5, 7)),  # strided 1×1×1 (X3D's shortcut)
    (2, 3, 5, 1, (1, 1), (2, 1), 0, 1, (5, 4)),  # 1×1 in 2-D
    (3, 4, 4, 1, (1, 1, 1), 1, 1, 1, (3, 3, 3)),  # 1×1×1 with padding: a convolution
    # padding past the kernel's extent on an axis, where oneDNN crashes in channels-last
    (3, 2, 3, 1, (2, 2, 1), (1, 2, 2), (0, 0, 1), (1, 2, 2), (5, 4, 1)),
    (3, 4, 6, 2, (3, 2, 1), (2, 2, 2), (1, 2, 1), (2, 2, 2), (3, 1, 1)),
    (3, 3, 2, 1, (1, 3, 1), (2, 1, 2), (2, 2, 1), (1, 2, 2), (2, 3, 3)),
]


#: channels-last is a layout of 5-D tensors: the 3-D cases run in both, and in channels-last
#: with a batch of one whose batch axis has a stride no kernel expects (element-wise results
#: often come so: a size-one axis may carry any stride)
LAYOUTS = [(case, "default") for case in CASES] + [
    (case, layout)
    for case in CASES
    if case[0] == 3
    for layout in ("channels-last", "channels-last, odd batch stride")
]


def _odd_batch_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a batch of one) channels-last, its batch axis given the stride of a channel."""
    t = t.contiguous(memory_format=torch.channels_last_3d)
    return t.as_strided(t.shape, (1, *t.stride()[1:]))


def _op(case):
    """The convolution op of a case, resolved for its input."""
    dims, cin, cout, groups, kernel, stride, padding, dilation, size = case
    op = OPS[f"conv{dims}d"](
        out_channels=cout,
        kernel_size=list(kernel),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
    )
    op.resolve([(cin, *size)])
    return op


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case,layout", LAYOUTS)
def test_conv_adjoint_is_the_vector_jacobian_product(case, layout, dtype):
    dims, cin, cout, groups, kernel, stride, padding, dilation, size = case
    op = _op(case)
    generator = torch.Generator().manual_seed(dims * 100 + cin)
    weight = torch.randn(cout, cin // groups, *kernel, generator=generator, dtype=dtype)
    batch = 1 if "odd" in layout else 2
    x = torch.randn(batch, cin, *size, generator=generator, dtype=dtype, requires_grad=True)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    z = conv(x, weight, None, op.stride, op.padding, op.dilation, groups)
    s = torch.randn(z.shape, generator=generator, dtype=dtype)
    (expected,) = torch.autograd.grad(z, x, s)
    bias = torch.randn(cout, generator=generator, dtype=dtype)
    with torch.no_grad():
        expected_map = conv(x, weight, bias, op.stride, op.padding, op.dilation, groups)
        x_in, s_in = x.detach(), s
        if layout == "channels-last":
            x_in = x_in.contiguous(memory_format=torch.channels_last_3d)
            s_in = s.contiguous(memory_format=torch.channels_last_3d)
        elif "odd" in layout:
            x_in, s_in = _odd_batch_stride(x_in), _odd_batch_stride(s)
        got = op.adjoint(s_in, weight, x.shape)
        got_map = op.linear_map(x_in, weight, bias)
    assert got.shape == x.shape
    assert got_map.shape == expected_map.shape
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got_map, expected_map, rtol=tolerance, atol=tolerance)
    if layout != "default":  # the passes keep running channels-last
        for t in (got, got_map):
            assert t.is_contiguous(memory_format=torch.channels_last_3d)


def test_channels_last_strides_are_made_canonical_without_a_copy():
    # oneDNN reads the strides to pick its layout: an odd stride on the batch of one (which
    # addresses nothing) made it fall back to the default layout and a far slower kernel
    x = _odd_batch_stride(torch.randn(1, 5, 3, 4, 6, generator=torch.Generator().manual_seed(2)))
    assert x.is_contiguous(memory_format=torch.channels_last_3d) and x.stride(0) == 1
    canonical = _canonical_channels_last(x)
    assert canonical.stride() == (5 * 3 * 4 * 6, 1, 4 * 6 * 5, 6 * 5, 5)
    assert canonical.data_ptr() == x.data_ptr() and torch.equal(canonical, x)
    plain = torch.randn(2, 5, 3, 4, 6, generator=torch.Generator().manual_seed(3))
    made = _canonical_channels_last(plain)
    assert made.is_contiguous(memory_format=torch.channels_last_3d) and torch.equal(made, plain)


def test_the_positions_of_a_channels_last_tensor_are_rows_without_a_copy():
    # torch.matmul runs one small product per row of positions on a (B, T, H, W, C) view
    # whose batch of one carries an odd stride: the view is given contiguous strides
    x = _odd_batch_stride(torch.randn(1, 5, 3, 4, 6, generator=torch.Generator().manual_seed(4)))
    rows = _positions(x)
    assert rows.shape == (1, 3, 4, 6, 5) and rows.is_contiguous()
    assert rows.data_ptr() == x.data_ptr()
    assert torch.equal(rows, x.permute(0, 2, 3, 4, 1))


@pytest.mark.parametrize(
    "case,layout",
    [(case, layout) for case, layout in LAYOUTS if case[3] == 1 and "odd" not in layout],
)
def test_rows_of_the_map_are_those_of_the_whole_map(case, layout):
    # the memory mode computes a convolution a range of output rows (first spatial axis) at a
    # time; padding past the kernel's extent makes whole ranges read padding alone
    dims, cin, cout, groups, kernel, stride, padding, dilation, size = case
    op = _op(case)
    generator = torch.Generator().manual_seed(cin * 10 + cout)
    weight = torch.randn(cout, cin, *kernel, generator=generator, dtype=torch.float64)
    bias = torch.randn(cout, generator=generator, dtype=torch.float64)
    x = torch.randn(2, cin, *size, generator=generator, dtype=torch.float64)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    expected = conv(x, weight, bias, op.stride, op.padding, op.dilation, groups)
    if layout == "channels-last":  # oneDNN's layout, in float32
        x, weight, bias = (x.float(), weight.float(), bias.float())
        x = x.contiguous(memory_format=torch.channels_last_3d)
    rows = expected.shape[2]
    for start in range(rows):
        for stop in range(start + 1, rows + 1):
            got = op.linear_map_rows(x, weight, bias, start, stop)
            torch.testing.assert_close(
                got.double(), expected[:, :, start:stop], rtol=1e-5, atol=1e-5
            )


@st.composite
def _random_conv3d(draw):
    """A 3-D convolution case with every parameter drawn, its output at least one wide."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel, stride, padding, dilation, size = (
        tuple(draw(st.integers(low, high)) for _ in range(3))
        for low, high in ((1, 3), (1, 2), (0, 2), (1, 2), (1, 5))
    )
    out = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation)
    ]
    if min(out) < 1:
        return draw(_random_conv3d())
    return (3, cin, cout, groups, kernel, stride, padding, dilation, size)


@settings(max_examples=150, deadline=None)
@given(
    case=_random_conv3d(),
    layout=st.sampled_from(["default", "channels-last"]),
    batch=st.integers(1, 3),
    bias=st.booleans(),
)
def test_any_3d_convolution_runs_in_either_layout(case, layout, batch, bias):
    # every path ConvNd may take on CPU (oneDNN directly, torch's dispatch, the default
    # layout where oneDNN would crash), against torch's own convolution in the default
    # layout. oneDNN's crash on padding past the kernel is an out-of-bounds read that kills
    # the process only now and then (a scratch fuzzer needed 100–1,500 convolutions), so
    # this checks the values on all paths; CASES hold three such convolutions for every run
    dims, cin, cout, groups, kernel, stride, padding, dilation, size = case
    op = _op(case)
    generator = torch.Generator().manual_seed(batch * 7 + cin)
    weight = torch.randn(cout, cin // groups, *kernel, generator=generator)
    b = torch.randn(cout, generator=generator) if bias else None
    x = torch.randn(batch, cin, *size, generator=generator)
    expected = F.conv3d(x, weight, b, op.stride, op.padding, op.dilation, groups)
    s = torch.randn(expected.shape, generator=generator)
    out_pad = [
        n - ((o - 1) * st_ - 2 * p + d * (k - 1) + 1)
        for n, o, k, st_, p, d in zip(
            size, expected.shape[2:], kernel, op.stride, op.padding, op.dilation
        )
    ]
    expected_adjoint = F.conv_transpose3d(
        s, weight, None, op.stride, op.padding, out_pad, groups, op.dilation
    )
    if layout == "channels-last":
        x, s = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, s))
    torch.testing.assert_close(op.linear_map(x, weight, b), expected, rtol=1e-4, atol=1e-4)
    got = op.adjoint(s, weight, torch.Size((batch, cin, *size)))
    torch.testing.assert_close(got, expected_adjoint, rtol=1e-4, atol=1e-4)
    if groups == 1:
        rows = expected.shape[2]
        torch.testing.assert_close(
            op.linear_map_rows(x, weight, b, rows // 2, rows),
            expected[:, :, rows // 2 :],
            rtol=1e-4,
            atol=1e-4,
        )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("size", "kernel"),
    [((8, 16, 16), (2, 8, 8)), ((9, 20, 18), (2, 8, 8)), ((4, 12, 8), (1, 4, 4))],
)
def test_a_patch_embedding_adjoint_is_the_transposed_convolution(size, kernel, channels_last):
    """stride = kernel (a tubelet embedding) takes the per-patch matrix product; it equals
    the transposed convolution, zeros where the input's extent is not a multiple of the
    kernel included, and keeps the layout of s."""
    op = OPS["conv3d"](out_channels=5, kernel_size=list(kernel), stride=list(kernel))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=generator)
    w = torch.randn(5, 3, *kernel, dtype=torch.float64, generator=generator)
    y = F.conv3d(x, w, stride=kernel)
    s = torch.randn(y.shape, dtype=torch.float64, generator=generator)
    if channels_last:
        s = s.contiguous(memory_format=torch.channels_last_3d)
    pad = [n - m * k for n, m, k in zip(size, y.shape[2:], kernel, strict=True)]
    expected = F.conv_transpose3d(s.contiguous(), w, stride=kernel, output_padding=pad)
    got = op.adjoint(s, w, x.shape)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
    # the adjoint identity <A x, s> = <x, Aᵀ s>
    assert torch.isclose((y * s).sum(), (x * got).sum(), rtol=1e-12)
