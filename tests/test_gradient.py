"""The ``gradient`` preset (each op's explicit vjp) against torch.autograd (allowed in tests)."""

from __future__ import annotations

import pytest
import torch

from relgraph import architecture_from_yaml, explain
from relgraph.methods.baselines import gradient_times_input

ALL_OPS = """
name: every-op
input: {name: input, shape: [3, 4, 9, 9]}
rules: deep-taylor-paper
preprocess: hara
nodes:
  - {name: conv1, op: conv3d, out_channels: 4, kernel_size: 3, padding: 1}
  - {name: bn1, op: batchnorm3d}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool3d, kernel_size: [1, 3, 3], stride: [1, 2, 2], padding: [0, 1, 1]}
  - {name: avg, op: avgpool3d, kernel_size: [1, 2, 2], stride: 1, padding: [0, 1, 1],
     ceil_mode: true, count_include_pad: false}
  - {name: convb, op: conv3d, out_channels: 4, kernel_size: 1, inputs: [pool1]}
  - {name: add, op: add, inputs: [pool1, convb]}
  - {name: adaptive, op: adaptive_avgpool3d, output_size: [2, 3, 3], inputs: [add]}
  - {name: adaptive2, op: adaptive_avgpool3d, output_size: [2, 3, 3], inputs: [avg]}
  - {name: cat, op: concat, dim: 1, inputs: [adaptive, adaptive2]}
  - {name: drop, op: dropout}
  - {name: flatten, op: flatten}
  - {name: fc1, op: linear, out_features: 6}
  - {name: relu2, op: relu}
  - {name: id, op: identity}
  - {name: fc2, op: linear, out_features: 3}
output: fc2
"""


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_preset_equals_autograd_on_every_op(dtype):
    graph = architecture_from_yaml(ALL_OPS, seed=1, dtype=dtype)
    x = torch.randn(2, 3, 4, 9, 9, generator=torch.Generator().manual_seed(0), dtype=dtype)
    targets = torch.tensor([2, 0])
    ours = explain(graph, x, targets, rules="gradient")

    leaf = x.clone().requires_grad_(True)
    activations = {graph.input: leaf}
    for node in graph.order[1:]:
        inputs = [activations[p] for p in graph.inputs_of(node)]
        activations[node] = graph.op(node).forward(inputs, graph.tensors(node))
    logits = activations[graph.output]
    logits[torch.arange(2), targets].sum().backward()
    tolerance = {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {}
    torch.testing.assert_close(ours, leaf.grad, **tolerance)
    torch.testing.assert_close(
        gradient_times_input(graph, x, targets), (leaf.grad * x).sum(dim=1), **tolerance
    )


TOKEN_OPS = """
name: every-token-op
input: {name: input, shape: [3, 4, 8, 8]}
nodes:
  - {name: frames, op: conv2d_frames, out_channels: 4, kernel_size: [4, 4], stride: [4, 4]}
  - {name: tokens.frames, op: permute, dims: [0, 2, 3, 4, 1]}
  - {name: tokens, op: reshape, shape: [4, 4, 4]}
  - {name: cls, op: prepend_token, dim: 2, shape: [1, 1, 4]}
  - {name: positions, op: add_param, shape: [1, 5, 4]}
  - {name: flat, op: reshape, shape: [20, 4]}
  - {name: sinusoid, op: add_sinusoid}
  - {name: norm, op: layernorm}
  - {name: q, op: linear, in_features: 4, out_features: 4, inputs: [norm]}
  - {name: q.heads, op: reshape, shape: [20, 2, 2]}
  - {name: q.t, op: transpose, dim0: 1, dim1: 2}
  - {name: k, op: linear, in_features: 4, out_features: 4, inputs: [norm]}
  - {name: k.heads, op: reshape, shape: [20, 2, 2]}
  - {name: k.t, op: transpose, dim0: 1, dim1: 2}
  - {name: scores, op: matmul, inputs: [q.t, k.t], transpose_b: true}
  - {name: scaled, op: scale, factor: 0.7}
  - {name: probs, op: softmax}
  - {name: context, op: matmul, inputs: [probs, q.t]}
  - {name: merged, op: transpose, dim0: 1, dim1: 2}
  - {name: merged.flat, op: reshape, shape: [20, 4]}
  - {name: act1, op: gelu}
  - {name: act2, op: gelu_new}
  - {name: act3, op: gelu_fast}
  - {name: act4, op: gelu_pytorch_tanh}
  - {name: first, op: slice, dim: 1, start: 1, stop: 6}
  - {name: copies, op: repeat, repeats: [2, 1]}
  - {name: token, op: select, dim: 1, index: 3}
  - {name: fc, op: linear, out_features: 3}
output: fc
"""


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_preset_equals_autograd_on_every_token_op(dtype):
    graph = architecture_from_yaml(TOKEN_OPS, seed=1, dtype=dtype)
    generator = torch.Generator().manual_seed(2)
    for node in graph.order:  # the layer norm off its init: weight 1, bias 0
        for name, t in graph.tensors(node).items():
            graph.tensors(node)[name] = t + 0.3 * torch.randn(t.shape, generator=generator).to(
                dtype
            )
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    targets = torch.tensor([1, 2])
    ours = explain(graph, x, targets, rules="gradient")

    leaf = x.clone().requires_grad_(True)
    activations = {graph.input: leaf}
    for node in graph.order[1:]:
        inputs = [activations[p] for p in graph.inputs_of(node)]
        activations[node] = graph.op(node).forward(inputs, graph.tensors(node))
    activations[graph.output][torch.arange(2), targets].sum().backward()
    tolerance = {"atol": 1e-10, "rtol": 1e-8} if dtype == torch.float64 else {}
    torch.testing.assert_close(ours, leaf.grad, **tolerance)
