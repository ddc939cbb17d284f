"""The baseline: LRP rules computed the way hook-based libraries (zennit, captum) do it.

For each node, walking backwards: take its cached input ``a`` as a leaf that requires grad,
run the rule's *modified forward* (e.g. ``z = A(a⁺;W⁺) + A(a⁻;W⁻)`` for z⁺), and get
``c = ∂z/∂a · s`` with ``torch.autograd.grad`` for ``s = R / z``; then ``R_in = a ⊙ c``.
Like those libraries it always evaluates every branch of a rule (both sign halves of z⁺,
the three terms of zβ), with autograd doing the adjoints. Used by ``speed.py`` as the
baseline and checked there to give the same relevance as ``relgraph.explain``.

The model zoo's ops are covered too: the average pools and means (``proportional``: the
pool's own forward, or its window sums, as the modified forward, zennit's ``Norm``), the adds
(``split`` with its stabiliser), ReLU/SiLU/sigmoid (``pass``) and the squeeze-excitation
product (``signal-take-all``: the signal input keeps R, the gate gets none, as libraries
detach the gate). Batch norms are folded first where ``relgraph.explain`` folds them
(``relgraph.engine.canonize.canonical``), so both run the rules on the same layers.

Autograd lives here on purpose: this is the peers' method, not relgraph's engine.
"""

from __future__ import annotations

import torch
from relgraph.rules import (
    Epsilon,
    Pass,
    Proportional,
    SignalTakeAll,
    Split,
    WinnerTakeAll,
    ZBeta,
    ZPlus,
)

import relgraph
from relgraph.engine.canonize import canonical


def _safe_divide(numerator: torch.Tensor, z: torch.Tensor, epsilon: float) -> torch.Tensor:
    if epsilon:
        z = z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    return torch.where(z != 0, numerator / torch.where(z != 0, z, 1.0), 0.0)


def _stabilizer_epsilon(rule) -> float:
    if isinstance(rule, Epsilon):
        return rule.epsilon
    return rule.epsilon if getattr(rule, "stabilizer", "zero") == "epsilon" else 0.0


def node_rules_for(graph: relgraph.Graph, rules, canonize: bool | None = None):
    """``(graph the rules run on, each node's rule)`` as ``relgraph.explain`` resolves them."""
    from relgraph.rules import as_composite

    view = canonical(graph, canonize)
    return view, as_composite(rules, view).resolve(view)


def relevance_autograd(graph: relgraph.Graph, x: torch.Tensor, node_rules: dict, target=None):
    """Input relevance of ``x`` for ``node_rules`` (as from ``Composite.resolve``), computed
    with a modified forward per node and ``torch.autograd.grad``. Onehot seed at ``target``
    (default: the prediction). ``graph`` is the graph the rules run on (for a model with
    batch norms: ``node_rules_for(graph, rules)``, the canonized view)."""
    with torch.no_grad():
        activations = {graph.input: x}
        for node in graph.order[1:]:
            inputs = [activations[p] for p in graph.inputs_of(node)]
            activations[node] = graph.op(node).forward(inputs, graph.tensors(node))
    output = activations[graph.output]
    if target is None:
        target = output.argmax(dim=1)
    relevance = {graph.output: torch.zeros_like(output)}
    relevance[graph.output][torch.arange(output.shape[0]), target] = 1.0

    for node in reversed(graph.order[1:]):
        rule = node_rules[node]
        op = graph.op(node)
        preds = graph.inputs_of(node)
        R = relevance.pop(node)
        a = activations[preds[0]].detach().requires_grad_(True)
        if isinstance(rule, Pass):
            contributions = [R.reshape(a.shape)]
        elif isinstance(rule, Split):
            leaves = [activations[p].detach().requires_grad_(True) for p in preds]
            z = op.forward(leaves, {})
            s = _safe_divide(R, z, _stabilizer_epsilon(rule))
            grads = torch.autograd.grad(z, leaves, s)
            contributions = [leaf * g for leaf, g in zip(leaves, grads)]
        elif isinstance(rule, SignalTakeAll):  # the gate detached: R to the signal
            shapes = [activations[p].shape for p in preds]
            contributions = [torch.zeros(shape, dtype=R.dtype) for shape in shapes]
            signal = rule.signal
            if signal is None:
                signal = next(i for i, shape in enumerate(shapes) if shape == R.shape)
            contributions[signal] = R
        elif isinstance(rule, Proportional):
            # the modified forward: the window sums, or the pool itself (zennit's Norm)
            by_sum = rule.divide_by == "sum"
            z = op.window_sum(a) if by_sum else op.forward([a], graph.tensors(node))
            s = _safe_divide(R, z, _stabilizer_epsilon(rule))
            (grad,) = torch.autograd.grad(z, a, s)
            contributions = [a * grad]
        elif isinstance(rule, WinnerTakeAll):
            z = op.forward([a], {})
            (grad,) = torch.autograd.grad(z, a, _safe_divide(R, z, 0.0))
            contributions = [a * grad]
        elif isinstance(rule, ZBeta):
            weight, _ = op.weight_and_bias(graph.tensors(node))
            w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
            shape = (1, -1, *([1] * (a.dim() - 2)))
            low = torch.as_tensor(rule.low, dtype=a.dtype).reshape(shape).expand_as(a).clone()
            high = torch.as_tensor(rule.high, dtype=a.dtype).reshape(shape).expand_as(a).clone()
            low.requires_grad_(True)
            high.requires_grad_(True)
            z = op.linear_map(a, weight) - op.linear_map(low, w_pos) - op.linear_map(high, w_neg)
            s = _safe_divide(R, z, _stabilizer_epsilon(rule))
            g_a, g_low, g_high = torch.autograd.grad(z, (a, low, high), s)
            contributions = [a * g_a + low * g_low + high * g_high]
        elif isinstance(rule, ZPlus):
            weight, bias = op.weight_and_bias(graph.tensors(node))
            w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
            z = op.linear_map(a.clamp(min=0), w_pos) + op.linear_map(a.clamp(max=0), w_neg)
            if rule.bias and bias is not None:
                z = z + op.linear_map(torch.zeros_like(a), w_pos, bias.clamp(min=0))
            s = _safe_divide(R, z, _stabilizer_epsilon(rule))
            (grad,) = torch.autograd.grad(z, a, s)
            contributions = [a * grad]
        elif isinstance(rule, Epsilon):
            weight, bias = op.weight_and_bias(graph.tensors(node))
            z = op.linear_map(a, weight, bias if rule.bias else None)
            s = _safe_divide(R, z, rule.epsilon)
            (grad,) = torch.autograd.grad(z, a, s)
            contributions = [a * grad]
        else:
            raise NotImplementedError(f"no autograd baseline for rule {rule.name}")
        for pred, contribution in zip(preds, contributions):
            contribution = contribution.detach()
            relevance[pred] = relevance[pred] + contribution if pred in relevance else contribution
        del activations[node]
    return relevance[graph.input]
