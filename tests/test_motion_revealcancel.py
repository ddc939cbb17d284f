"""The ``revealcancel`` motion method: DeepLIFT's RevealCancel rule from the static clip.

References are computed another way: a plain numpy implementation of the paper's formulas
(Shrikumar et al. 2017, section 3.5.3), neuron by neuron, on small fully connected networks
with and without a residual sum; the logit difference of two forward passes for the
summation-to-delta property.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_motion_methods import clips_for, linear_video_graph, tiny_graph

import relgraph
from relgraph.methods.decomposed import static_part
from relgraph.methods.revealcancel import revealcancel_multipliers

# --------------------------------------------------------------------------- the paper's formulas


def relu(v):
    return np.maximum(v, 0.0)


def reveal(r, positive, negative):
    """Δy⁺, Δy⁻ of a ReLU with reference input r and contribution sums Δ⁺, Δ⁻ (eq. in 3.5.3)."""
    both = relu(r + positive + negative)
    up = 0.5 * (relu(r + positive) - relu(r)) + 0.5 * (both - relu(r + negative))
    down = 0.5 * (relu(r + negative) - relu(r)) + 0.5 * (both - relu(r + positive))
    return up, down


def neuron_multipliers(contributions, r, m_out):
    """Multipliers of each contribution of a neuron feeding a ReLU: m⁺ for positive, m⁻ for
    negative ones, 0 for zero ones; ``contributions`` (inputs,), r and m_out scalars."""
    positive = contributions[contributions > 0].sum()
    negative = contributions[contributions < 0].sum()
    up, down = reveal(r, positive, negative)
    m_up = up / positive if positive != 0 else 0.0
    m_down = down / negative if negative != 0 else 0.0
    falling = np.where(contributions < 0, m_out * m_down, 0.0)
    return np.where(contributions > 0, m_out * m_up, falling)


MLP_YAML = {
    "name": "mlp",
    "input": {"name": "input", "shape": [6]},
    "nodes": [
        {"name": "fc1", "op": "linear", "out_features": 5},
        {"name": "relu1", "op": "relu"},
        {"name": "fc2", "op": "linear", "out_features": 4},
        {"name": "relu2", "op": "relu"},
        {"name": "fc3", "op": "linear", "out_features": 3},
    ],
    "output": "fc3",
}

RESIDUAL_YAML = {
    "name": "residual-mlp",
    "input": {"name": "input", "shape": [5]},
    "nodes": [
        {"name": "fc1", "op": "linear", "out_features": 4},
        {"name": "relu1", "op": "relu"},
        {"name": "fc2", "op": "linear", "out_features": 4},
        {"name": "add", "op": "add", "inputs": ["fc2", "relu1"]},
        {"name": "relu2", "op": "relu"},
        {"name": "fc3", "op": "linear", "out_features": 3},
    ],
    "output": "fc3",
}


def numpy_mlp(tensors, x, r, target, residual: bool):
    """RevealCancel attribution of ``x − r`` for one sample, neuron by neuron."""
    w = {n: tensors[n]["weight"].numpy() for n in ("fc1", "fc2", "fc3")}
    b = {n: tensors[n]["bias"].numpy() for n in ("fc1", "fc2", "fc3")}
    z1x, z1r = w["fc1"] @ x + b["fc1"], w["fc1"] @ r + b["fc1"]
    h1x, h1r = relu(z1x), relu(z1r)
    z2x, z2r = w["fc2"] @ h1x + b["fc2"], w["fc2"] @ h1r + b["fc2"]
    if residual:
        z2x, z2r = z2x + h1x, z2r + h1r
    dx, dh1 = x - r, h1x - h1r
    m_h2 = w["fc3"][target]  # the last layer is linear: its weights are the multipliers
    m_h1 = np.zeros_like(h1x)
    for k in range(len(z2x)):
        # the contributions to neuron k: fc2's terms and, with the residual sum, h1_k itself
        terms = list(w["fc2"][k] * dh1)
        if residual:
            terms.append(dh1[k])
        m = neuron_multipliers(np.array(terms), z2r[k], m_h2[k])
        # each input's multiplier through neuron k: its contribution's multiplier × weight
        m_h1 += m[: len(dh1)] * w["fc2"][k]
        if residual:
            m_h1[k] += m[-1]
    m_x = np.zeros_like(x)
    for j in range(len(z1x)):
        m = neuron_multipliers(w["fc1"][j] * dx, z1r[j], m_h1[j])
        m_x += m * w["fc1"][j]
    return dx * m_x


@pytest.mark.parametrize("residual", [False, True])
def test_revealcancel_is_the_papers_formulas_neuron_by_neuron(residual):
    spec = RESIDUAL_YAML if residual else MLP_YAML
    g = relgraph.architecture_from_yaml(json.dumps(spec), dtype=torch.float64, seed=5)
    size = g.input_shape[0]
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(3, size, dtype=torch.float64, generator=generator)
    r = torch.randn(3, size, dtype=torch.float64, generator=generator)
    targets = torch.tensor([0, 2, 1])
    relevance, output, reference_output = revealcancel_multipliers(g, x, r, targets)
    tensors = {n: g.tensors(n) for n in ("fc1", "fc2", "fc3")}
    for i in range(3):
        expected = numpy_mlp(tensors, x[i].numpy(), r[i].numpy(), int(targets[i]), residual)
        np.testing.assert_allclose(relevance[i].numpy(), expected, rtol=1e-10, atol=1e-12)
        difference = float(output[i, targets[i]] - reference_output[i, targets[i]])
        assert relevance[i].sum().item() == pytest.approx(difference, rel=1e-10, abs=1e-12)


def test_revealcancel_reveals_evidence_that_cancels_below_the_threshold():
    """z = x₁ − x₂ − ½, y = ReLU(z), out = y, from r = 0 to x = (1, 1): Δz = 0 and Δy = 0,
    so Rescale hands nothing on; RevealCancel gives x₁ +¼ and x₂ −¼ (Δy⁺ = ½·ReLU(½) +
    ½·(ReLU(−½) − ReLU(−1½)) = ¼)."""
    spec = {
        "name": "cancel",
        "input": {"name": "input", "shape": [2]},
        "nodes": [
            {"name": "fc1", "op": "linear", "out_features": 1},
            {"name": "relu1", "op": "relu"},
            {"name": "fc2", "op": "linear", "out_features": 1},
        ],
        "output": "fc2",
    }
    g = relgraph.architecture_from_yaml(json.dumps(spec), dtype=torch.float64)
    g.load_weights(
        {
            "fc1.weight": torch.tensor([[1.0, -1.0]], dtype=torch.float64),
            "fc1.bias": torch.tensor([-0.5], dtype=torch.float64),
            "fc2.weight": torch.tensor([[1.0]], dtype=torch.float64),
            "fc2.bias": torch.tensor([0.0], dtype=torch.float64),
        }
    )
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    relevance, _, _ = revealcancel_multipliers(g, x, torch.zeros_like(x), torch.tensor([0]))
    torch.testing.assert_close(relevance, torch.tensor([[0.25, -0.25]], dtype=torch.float64))


# --------------------------------------------------------------------------- the method


@pytest.mark.parametrize("arch", ["c3d-tiny", "r2plus1d-tiny"])
def test_revealcancel_sums_to_the_logit_difference_to_the_static_clip(arch):
    g = tiny_graph(arch=arch)
    x = clips_for(g, batch=3)
    result = relgraph.discriminative(g, x, method="revealcancel", normalize="none")
    rows = torch.arange(3)
    difference = result.output[rows, result.target] - result.static_output[rows, result.target]
    assert float(difference.abs().min()) > 0
    torch.testing.assert_close(
        result.temporal_relevance.sum(dim=(1, 2, 3, 4)), difference, rtol=1e-9, atol=1e-12
    )
    # the static part is the median (the method's default), as a forward pass on it gives
    torch.testing.assert_close(result.static_output, g.forward(static_part(x, "median")).output)
    assert result.options["static"] == "median"


def test_revealcancel_takes_the_static_part_it_is_given():
    g = tiny_graph()
    x = clips_for(g)
    default = relgraph.discriminative(g, x, method="revealcancel")
    median = relgraph.discriminative(g, x, method="revealcancel", static="median")
    mean = relgraph.discriminative(g, x, method="revealcancel", static="mean")
    assert torch.equal(default.temporal, median.temporal)
    assert not torch.allclose(mean.temporal, median.temporal)
    assert mean.options["static"] == "mean"
    # the other methods keep the mean
    assert relgraph.discriminative(g, x, method="reference").options["static"] == "mean"


def test_revealcancel_differs_from_rescale_and_agrees_on_a_linear_model():
    g = tiny_graph()
    x = clips_for(g)
    reveal = relgraph.discriminative(g, x, method="revealcancel", static="mean")
    rescale = relgraph.discriminative(g, x, method="reference", static="mean")
    assert not torch.allclose(reveal.temporal, rescale.temporal)
    linear = linear_video_graph()
    generator = torch.Generator().manual_seed(2)
    clip = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64, generator=generator)
    targets = torch.tensor([0, 1])
    relevance, _, _ = revealcancel_multipliers(linear, clip, static_part(clip), targets)
    # no nonlinearity: the multipliers are the gradient (autograd as the reference)
    leaf = clip.clone().requires_grad_(True)
    conv, fc = linear.tensors("conv"), linear.tensors("fc")
    hidden = torch.nn.functional.conv3d(leaf, conv["weight"], conv["bias"])
    logits = hidden.flatten(1) @ fc["weight"].T + fc["bias"]
    (gradient,) = torch.autograd.grad(logits[[0, 1], targets].sum(), leaf)
    torch.testing.assert_close(relevance, (clip - static_part(clip)) * gradient)


def test_revealcancel_of_a_still_clip_hands_nothing_to_motion():
    g = tiny_graph()
    still = static_part(clips_for(g), "median")
    result = relgraph.discriminative(g, still, method="revealcancel")
    assert torch.equal(result.temporal, torch.zeros_like(result.temporal))
    assert bool(torch.isfinite(result.spatial).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", ["c3d-tiny", "r2plus1d-tiny"])
def test_revealcancel_is_finite_in_every_precision(arch, dtype):
    g = tiny_graph(dtype=dtype, arch=arch)
    x = clips_for(g)
    result = relgraph.discriminative(g, x, method="revealcancel")
    for name in ("spatiotemporal", "spatial", "temporal"):
        values = getattr(result, name)
        assert values.shape == (2, *g.input_shape[1:])
        assert bool(torch.isfinite(values).all()), name
    # nothing is lost on the way: motion relevance wherever the logits differ (a random
    # model in bfloat16 may round the clip's and the static clip's logits alike)
    rows = torch.arange(2)
    differs = result.output[rows, result.target] != result.static_output[rows, result.target]
    moved = result.temporal.abs().amax(dim=(1, 2, 3)) > 0
    assert torch.equal(moved, differs)


# --------------------------------------------------------------------------- transformers


def transformer(dtype=torch.float64):
    return relgraph.load_architecture("videomae-tiny", seed=3, dtype=dtype)


def test_revealcancel_sums_to_the_logit_difference_on_a_transformer():
    """Layer norms, softmax, attention's products and the token reshapes keep the sum."""
    g = transformer()
    x = clips_for(g, batch=2, seed=4) * 3
    result = relgraph.discriminative(g, x, method="revealcancel", normalize="none")
    rows = torch.arange(2)
    difference = result.output[rows, result.target] - result.static_output[rows, result.target]
    assert float(difference.abs().min()) > 0
    torch.testing.assert_close(
        result.temporal_relevance.sum(dim=(1, 2, 3, 4)), difference, rtol=1e-9, atol=1e-12
    )


def test_transformer_multipliers_approach_the_gradient_for_a_small_difference():
    """For a clip a small step from its reference, every exact difference quotient tends to
    the derivative: the input's multipliers are the gradient, which the engine's explicit
    vector-Jacobian products (the ``gradient`` preset) compute another way."""
    g = transformer()
    r = clips_for(g, batch=2, seed=5)
    step = torch.randn(r.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x = r + 1e-7 * step
    targets = torch.tensor([0, 3])
    relevance, _, _ = revealcancel_multipliers(g, x, r, targets)
    gradient = relgraph.explain(g, x, targets, rules="gradient")
    expected = (x - r) * gradient
    scale = float(expected.abs().max())
    torch.testing.assert_close(relevance, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_revealcancel_on_a_transformer_is_finite_in_low_precision(dtype):
    g = transformer(dtype)
    result = relgraph.discriminative(g, clips_for(g), method="revealcancel")
    assert bool(torch.isfinite(result.temporal).all())
    assert bool(torch.isfinite(result.spatial).all())


def test_reference_runs_on_a_transformer_with_rescale_on_multipliers():
    """The reference method's difference rules do not cover attention's ops; it takes the
    Rescale rule on multipliers there, and still sums to the logit difference."""
    g = transformer()
    x = clips_for(g, batch=2, seed=4) * 3
    rescale = relgraph.discriminative(g, x, method="reference", normalize="none")
    rows = torch.arange(2)
    difference = rescale.output[rows, rescale.target] - rescale.static_output[rows, rescale.target]
    torch.testing.assert_close(
        rescale.temporal_relevance.sum(dim=(1, 2, 3, 4)), difference, rtol=1e-9, atol=1e-12
    )
    reveal = relgraph.discriminative(g, x, method="revealcancel", static="mean")
    assert not torch.allclose(reveal.temporal, rescale.temporal)


def test_fused_attention_multipliers_sum_to_the_output_difference():
    """``softmax(c q kᵀ) v`` as one op: Σ Δq M_q + Σ Δk M_k + Σ Δv M_v = Σ M ⊙ ΔO, and a
    small difference gives the gradient (autograd)."""
    from types import SimpleNamespace

    from relgraph.methods.revealcancel import _AttentionMultiplier

    generator = torch.Generator().manual_seed(8)

    def draw():
        return torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=generator)

    def attention(q, k, v, scale=0.7):
        return torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1) @ v

    clip, reference, m = [draw() for _ in range(3)], [draw() for _ in range(3)], draw()
    ctx = SimpleNamespace(inputs=clip, op=SimpleNamespace(scale=0.7))
    multipliers = _AttentionMultiplier(reference).relevance(ctx, m)
    total = sum(((x - r) * mx).sum() for x, r, mx in zip(clip, reference, multipliers))
    expected = (m * (attention(*clip) - attention(*reference))).sum()
    assert float(total) == pytest.approx(float(expected), rel=1e-10)

    near = [r + 1e-7 * d for r, d in zip(reference, [draw() for _ in range(3)])]
    ctx = SimpleNamespace(inputs=near, op=SimpleNamespace(scale=0.7))
    multipliers = _AttentionMultiplier(reference).relevance(ctx, m)
    leaves = [t.clone().requires_grad_(True) for t in near]
    gradients = torch.autograd.grad((m * attention(*leaves)).sum(), leaves)
    for found, gradient in zip(multipliers, gradients):
        torch.testing.assert_close(found, gradient, rtol=1e-5, atol=1e-6)


def test_explain_command_takes_revealcancel_with_its_default_static_part(tmp_path):
    from test_cli import moving_square_video, write_video

    from relgraph.cli.main import main

    video = write_video(tmp_path / "square.avi", moving_square_video(18))
    out = tmp_path / "out"
    argv = ["explain", str(video), "--arch", "c3d-tiny", "--out", str(out), "--quiet"]
    argv += ["--weights", str(relgraph.models.demo.DEMO_MODELS["c3d-tiny"])]
    assert main([*argv, "--method", "revealcancel"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["method"] == "revealcancel"
    assert summary["options"]["static"] == "median"
    with np.load(out / "relevance.npz") as arrays:
        assert np.isfinite(arrays["temporal"]).all()
        assert np.abs(arrays["temporal"]).max() > 0
