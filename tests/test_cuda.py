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
