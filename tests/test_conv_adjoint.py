"""The convolutions' adjoint ``Aᵀ`` against autograd's vector-Jacobian product of
``torch.nn.functional.conv*d``, on the paths ``ConvNd.adjoint`` takes: grouped (depthwise)
stride-1 convolutions as a flipped-kernel convolution, everything else as a transposed one."""

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
    (3, 6, 6, 6, (3, 3, 3), (1, 2, 2), 1, 1, (5, 7, 8)),  # strided: the transposed path
    (3, 5, 7, 1, (3, 1, 3), 1, 1, 1, (4, 5, 6)),  # ungrouped
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_conv_adjoint_is_the_vector_jacobian_product(case, dtype):
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
    with torch.no_grad():
        got = op.adjoint(s, weight, x.shape)
    assert got.shape == x.shape
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)
