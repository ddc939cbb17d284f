"""The engine and every rule preset on CUDA give what they give on the CPU.

Marked ``cuda``: they run where a GPU is present (``python -m pytest -m cuda``); elsewhere
``tests/conftest.py`` deselects them. The references are the same computations on the CPU
in float64.
"""

from __future__ import annotations

import pytest
import torch
from relgraph.rules import preset_names

import relgraph

pytestmark = pytest.mark.cuda

PRESETS = [name for name in preset_names() if name != "base"]


def clip_for(graph: relgraph.Graph, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return (
        torch.rand((batch, *graph.input_shape), generator=generator, dtype=torch.float64) * 255
        - 102
    )


@pytest.mark.parametrize("name", ["c3d-tiny", "resnet-tiny"])
def test_forward_on_cuda_equals_forward_on_cpu(name):
    cpu = relgraph.load_architecture(name, dtype=torch.float64)
    gpu = relgraph.load_architecture(name, dtype=torch.float64, device="cuda")
    x = clip_for(cpu)

    expected = cpu.forward(x).output
    actual = gpu.forward(x.cuda()).output.cpu()

    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rules", PRESETS)
@pytest.mark.parametrize("name", ["c3d-tiny", "resnet-tiny"])
def test_explain_on_cuda_equals_explain_on_cpu(name, rules):
    cpu = relgraph.load_architecture(name, dtype=torch.float64)
    gpu = relgraph.load_architecture(name, dtype=torch.float64, device="cuda")
    x = clip_for(cpu)
    preprocess = "hara"

    expected = relgraph.explain(cpu, x, rules=rules, preprocess=preprocess)
    actual = relgraph.explain(gpu, x.cuda(), rules=rules, preprocess=preprocess)

    assert actual.device.type == "cuda"
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-7, atol=1e-9)


def test_discriminative_on_cuda_equals_discriminative_on_cpu():
    cpu = relgraph.load_architecture("c3d-tiny", dtype=torch.float64)
    gpu = relgraph.load_architecture("c3d-tiny", dtype=torch.float64, device="cuda")
    x = clip_for(cpu, batch=1)

    expected = relgraph.discriminative(cpu, x, progress=False)
    actual = relgraph.discriminative(gpu, x.cuda(), progress=False)

    for field in ("spatiotemporal", "spatial", "temporal"):
        torch.testing.assert_close(
            getattr(actual, field).cpu(), getattr(expected, field), rtol=1e-7, atol=1e-9
        )
    assert torch.equal(actual.frozen_predictions.cpu(), expected.frozen_predictions)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_bfloat16_explain_on_cuda_is_within_the_bounds_of_float32():
    gpu = relgraph.load_architecture("c3d-tiny", device="cuda")
    half = relgraph.load_architecture("c3d-tiny", init="none", device="cuda")
    half.assign(gpu.state_dict())
    half.to(dtype=torch.bfloat16)
    x = clip_for(gpu, batch=4).float().cuda()

    expected = relgraph.explanation(gpu, x, rules="deep-taylor-paper")
    actual = relgraph.explanation(
        half,
        x.bfloat16(),
        rules="deep-taylor-paper",
        target=expected.target,
    )

    assert actual.relevance.device.type == "cuda"
    assert actual.relevance.dtype == torch.float32
    for a, b in zip(expected.relevance, actual.relevance):
        assert _pearson(a, b) >= 0.999
        assert float((a - b).norm() / a.norm()) <= 0.02
        assert abs(float(b.sum()) - 1) <= 0.01  # one-hot seed


@pytest.mark.parametrize("reduce", ["first", "same", "mean"])
def test_frozen_shortcut_on_cuda_equals_the_plain_path(reduce):
    gpu = relgraph.load_architecture("c3d-tiny", dtype=torch.float64, device="cuda")
    x = clip_for(gpu, batch=1).cuda()

    plain = relgraph.discriminative(gpu, x, reduce=reduce, frozen_shortcut=False, progress=False)
    short = relgraph.discriminative(gpu, x, reduce=reduce, frozen_shortcut=True, progress=False)

    assert short.temporal.device.type == "cuda"
    for field in ("spatiotemporal", "spatial", "temporal"):
        torch.testing.assert_close(
            getattr(short, field), getattr(plain, field), rtol=1e-12, atol=1e-12
        )


def test_frozen_shortcut_in_bfloat16_on_cuda_is_close_to_float32():
    gpu = relgraph.load_architecture("c3d-tiny", device="cuda")
    half = relgraph.load_architecture("c3d-tiny", init="none", device="cuda")
    half.assign(gpu.state_dict())
    half.to(dtype=torch.bfloat16)
    x = clip_for(gpu, batch=1).float().cuda()

    expected = relgraph.discriminative(gpu, x, frozen_shortcut=True, progress=False)
    actual = relgraph.discriminative(half, x.bfloat16(), frozen_shortcut=True, progress=False)

    assert torch.equal(actual.frozen_predictions, expected.frozen_predictions)
    assert _pearson(expected.spatial, actual.spatial.float()) > 0.99
