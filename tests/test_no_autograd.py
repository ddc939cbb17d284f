"""The engine never uses autograd: every backward step is an explicit tensor op.

With autograd's entry points made to raise, explanations still run; the relevance carries no
autograd history even when the weights require gradients; and the source of the engine
(``relgraph/`` and ``rules/``) never names autograd's API.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import relgraph

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PACKAGES = ("relgraph", "rules")
FORBIDDEN = ("torch.autograd", ".backward(", "requires_grad")

CASES = [
    ("c3d-tiny", "deep-taylor-paper"),
    ("c3d-tiny", "deep-taylor-2020"),
    ("c3d-tiny", "deep-taylor-per-channel"),
    ("c3d-tiny", "epsilon-gamma-box"),
    ("c3d-tiny", "epsilon-alpha2-beta1"),
    ("resnet-tiny", "epsilon-plus"),
    ("resnet-tiny", "epsilon-alpha2-beta1"),
    ("resnet-tiny", "epsilon-gamma-box"),
]


@pytest.fixture
def autograd_forbidden(monkeypatch):
    """Make ``torch.autograd.grad``, ``torch.autograd.backward`` and ``Tensor.backward``
    raise for as long as the test runs."""

    def refusing(name: str):
        # one function per entry point: torch's tracing tables reject one object in two roles
        def refuse(*args, **kwargs):
            raise AssertionError(f"the engine called {name}")

        return refuse

    monkeypatch.setattr(torch.autograd, "grad", refusing("torch.autograd.grad"))
    monkeypatch.setattr(torch.autograd, "backward", refusing("torch.autograd.backward"))
    monkeypatch.setattr(torch.Tensor, "backward", refusing("torch.Tensor.backward"))


def clip_for(graph: relgraph.Graph) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand((2, *graph.input_shape), generator=generator) * 255 - 100


@pytest.mark.parametrize(("architecture", "rules"), CASES)
def test_explain_runs_with_autograd_disabled(autograd_forbidden, architecture, rules):
    graph = relgraph.load_architecture(architecture)
    clip = clip_for(graph)
    assert not clip.requires_grad
    relevance = relgraph.explain(graph, clip, rules=rules, preprocess="c3d-ucf101")
    assert relevance.shape == clip.shape
    assert torch.isfinite(relevance).all()
    assert relevance.abs().sum() > 0


@pytest.mark.parametrize(("architecture", "rules"), CASES[:1] + CASES[-3:-2])
def test_relevance_has_no_autograd_history_even_when_weights_require_grad(architecture, rules):
    graph = relgraph.load_architecture(architecture)
    for node in graph.order:
        for tensor in graph.tensors(node).values():
            if tensor.is_floating_point():
                tensor.requires_grad_(True)
    with torch.enable_grad():
        relevance = relgraph.explain(graph, clip_for(graph), rules=rules, preprocess="c3d-ucf101")
    assert relevance.grad_fn is None
    assert not relevance.requires_grad


def engine_sources() -> list[Path]:
    return sorted(path for package in ENGINE_PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_engine_sources_are_found():
    names = {path.name for path in engine_sources()}
    assert {"ops.py", "graph.py", "library.py", "base.py"} <= names


@pytest.mark.parametrize("word", FORBIDDEN)
def test_engine_source_never_mentions_autograd_api(word):
    mentions = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in engine_sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if word in line
    ]
    assert mentions == [], f"{word!r} appears in the engine at {', '.join(mentions)}"
