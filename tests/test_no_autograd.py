"""The engine never uses autograd: every backward step is an explicit tensor op.

With autograd's entry points made to raise, explanations still run; the relevance carries no
autograd history even when the weights require gradients; and the source of the engine
(``relgraph/`` and ``rules/``) never names autograd's API.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

import relgraph

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PACKAGES = ("relgraph", "rules")
#: text that names autograd's API (``torch.func`` but not ``torch.functional``)
FORBIDDEN = {
    "torch.autograd": r"\btorch\.autograd\b",
    ".backward(": r"\.backward\(",
    "requires_grad": r"requires_grad",
    "torch.func": r"\btorch\.func\b",
    "functorch": r"\bfunctorch\b",
}
#: modules whose import is autograd: ``import torch.func``, ``from torch import autograd``, ...
FORBIDDEN_MODULES = ("torch.autograd", "torch.func", "functorch")

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
    assert {"ops.py", "graph.py", "interpreter.py", "library.py", "numerics.py"} <= names


def mentions(path: Path) -> list[str]:
    """Every ``file:line: what`` at which ``path`` names or imports autograd's API."""
    text = path.read_text(encoding="utf-8")
    found = [
        f"{path.name}:{number}: {word}"
        for number, line in enumerate(text.splitlines(), 1)
        for word, pattern in FORBIDDEN.items()
        if re.search(pattern, line)
    ]

    def forbidden(module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in FORBIDDEN_MODULES)

    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [f"{path.name}:{node.lineno}: import {m}" for m in modules if forbidden(m)]
    return found


def test_engine_source_never_names_or_imports_autograd_api():
    found = [m for path in engine_sources() for m in mentions(path)]
    assert found == [], "autograd in the engine: " + "; ".join(found)


@pytest.mark.parametrize(
    "offender",
    [
        "import torch.autograd as ag",
        "from torch import autograd",
        "from torch import func as f",
        "from torch.func import vjp",
        "import torch.func",
        "import functorch",
        "from functorch import grad",
        "y = torch.func.vjp(f, x)",
        "x.requires_grad_(True)",
        "loss.backward()",
        "g = torch.autograd.grad(y, x)",
    ],
)
def test_a_planted_offender_is_caught(tmp_path, offender):
    planted = tmp_path / "planted.py"
    planted.write_text(f"import torch\n\n\ndef f(x, y, loss):\n    {offender}\n")
    assert mentions(planted), offender


def test_clean_code_is_not_flagged(tmp_path):
    clean = tmp_path / "clean.py"
    clean.write_text(
        "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n"
        "y = torch.functional.einsum('i->', torch.ones(2))\nfunc = F.relu\n"
    )
    assert mentions(clean) == []
