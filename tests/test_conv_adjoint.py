"""The convolutions' map ``A`` and adjoint ``Aᵀ`` against ``torch.nn.functional.conv*d`` and
autograd's vector-Jacobian product of it, on every path ``ConvNd`` takes: grouped (depthwise)
convolutions as a flipped-kernel convolution (strided ones on the input spread out by zeros),
1×…×1 kernels as matrix products, everything else as a transposed convolution; in the default
and in the channels-last layout (``Graph.working_layout``), where the result keeps the layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from relgraph.ops import OPS

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
]


#: channels-last is a layout of 5-D tensors: the 3-D cases run in both
LAYOUTS = [(case, "default") for case in CASES] + [
    (case, "channels-last") for case in CASES if case[0] == 3
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case,layout", LAYOUTS)
def test_conv_adjoint_is_the_vector_jacobian_product(case, layout, dtype):
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
    generator = torch.Generator().manual_seed(dims * 100 + cin)
    weight = torch.randn(cout, cin // groups, *kernel, generator=generator, dtype=dtype)
    x = torch.randn(2, cin, *size, generator=generator, dtype=dtype, requires_grad=True)
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
        got = op.adjoint(s_in, weight, x.shape)
        got_map = op.linear_map(x_in, weight, bias)
    assert got.shape == x.shape
    assert got_map.shape == expected_map.shape
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got_map, expected_map, rtol=tolerance, atol=tolerance)
    if layout == "channels-last":  # the passes keep running channels-last
        for t in (got, got_map):
            assert t.is_contiguous(memory_format=torch.channels_last_3d)
