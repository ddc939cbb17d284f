"""The evaluation metrics against references computed another way (loops, formulas)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relgraph.errors import RelgraphError, ShapeError
from relgraph.evaluation import metrics as ev
from relgraph.methods.baselines import frame_difference, random_map


def linear_model(weight: torch.Tensor):
    """logits[k] = Σ weight[k] · x: a model whose every output is easy to compute by hand."""

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bcthw,kcthw->bk", x.double(), weight.double())

    return model


@pytest.fixture
def setting():
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(3, 2, 4, 4, 6, generator=g, dtype=torch.float64)
    maps = torch.randn(3, 4, 4, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 2, 4, 4, 6, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 2, 1])
    return clips, maps, weight, targets


def _reference_curve(model, clip, relevance, target, cube, order, values, steps):
    """Region perturbation by explicit loops over the cubes of one clip."""
    t_size, h_size, w_size = relevance.shape
    cubes = []
    for t0, h0, w0 in itertools.product(
        range(0, t_size, cube[0]), range(0, h_size, cube[1]), range(0, w_size, cube[2])
    ):
        sl = (slice(t0, t0 + cube[0]), slice(h0, h0 + cube[1]), slice(w0, w0 + cube[2]))
        cubes.append((float(relevance[sl].sum()), sl))
    # stable sort by score: ties keep index order in both directions
    indices = sorted(
        range(len(cubes)),
        key=lambda i: -cubes[i][0] if order == "morf" else cubes[i][0],
    )
    logits, probs = [], []
    for k in range(steps + 1):
        count = round(k * len(cubes) / steps)
        x = clip.clone()
        for i in indices[:count]:
            sl = cubes[i][1]
            x[(slice(None), *sl)] = values[(slice(None), *sl)]
        out = model(x[None])[0]
        logits.append(float(out[target]))
        probs.append(float(out.softmax(0)[target]))
    return logits, probs


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("cube", [(2, 2, 3), (3, 4, 4)])
def test_region_perturbation_matches_a_loop_over_cubes(setting, order, cube):
    clips, maps, weight, targets = setting
    model = linear_model(weight)
    values = ev.replacement(clips, "freeze", cube_frames=cube[0])
    regions = math.ceil(4 / cube[0]) * math.ceil(4 / cube[1]) * math.ceil(6 / cube[2])
    steps = min(5, regions)
    curves = ev.region_perturbation(
        model, clips, maps, targets, cube=cube, order=order, steps=5, batch_size=4
    )
    for b in range(3):
        logits, probs = _reference_curve(
            model, clips[b], maps[b], int(targets[b]), cube, order, values[b], steps
        )
        torch.testing.assert_close(curves.logit[b], torch.tensor(logits, dtype=torch.float64))
        torch.testing.assert_close(curves.probability[b], torch.tensor(probs, dtype=torch.float64))
    assert curves.fraction[0] == 0 and curves.fraction[-1] == pytest.approx(1.0)


def test_freeze_is_the_mean_over_each_slab_of_frames():
    clips = torch.arange(2 * 1 * 6 * 2 * 2, dtype=torch.float64).reshape(2, 1, 6, 2, 2) ** 1.5
    frozen = ev.replacement(clips, "freeze", cube_frames=4)
    array = clips.numpy()
    expected = np.concatenate(
        [
            np.repeat(array[:, :, 0:4].mean(axis=2, keepdims=True), 4, axis=2),
            np.repeat(array[:, :, 4:6].mean(axis=2, keepdims=True), 2, axis=2),
        ],
        axis=2,
    )
    np.testing.assert_allclose(frozen.numpy(), expected)
    # a frozen clip has no motion: every frame of a slab is the same
    assert torch.equal(frozen[:, :, 0], frozen[:, :, 3])


def test_blur_equals_a_separable_gaussian_convolution_with_replicated_borders():
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(2, 3, 5, 7, 8, generator=g, dtype=torch.float64)
    sigma = (1.0, 2.0, 1.5)
    blurred = ev.replacement(clips, "blur", sigma=sigma)
    x = clips.reshape(6, 1, 5, 7, 8)
    for axis, s in enumerate(sigma):
        radius = max(1, math.ceil(3 * s))
        kernel = torch.tensor(
            [math.exp(-0.5 * (i / s) ** 2) for i in range(-radius, radius + 1)],
            dtype=torch.float64,
        )
        kernel = kernel / kernel.sum()
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), kernel.reshape(shape))
    torch.testing.assert_close(blurred, x.reshape(2, 3, 5, 7, 8))


def test_mean_replacement_fills_every_voxel_with_the_channel_mean():
    clips = torch.randn(2, 3, 2, 2, 2, dtype=torch.float64)
    values = ev.replacement(clips, "mean", mean=torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(values[:, 1], torch.full((2, 2, 2, 2), 2.0, dtype=torch.float64))
    default = ev.replacement(clips, "mean")
    torch.testing.assert_close(default[0, :, 0, 0, 0], clips.mean(dim=(0, 2, 3, 4)))
    with pytest.raises(RelgraphError, match="one of freeze, blur, mean"):
        ev.replacement(clips, "zeros")


def test_aopc_and_abpc_follow_their_formulas():
    morf = torch.tensor([[1.0, 0.5, 0.2, 0.1]], dtype=torch.float64)
    lerf = torch.tensor([[1.0, 0.9, 0.8, 0.1]], dtype=torch.float64)
    # Samek et al. (2017): 1/(L+1) Σ_{k=0..L} f(x0) − f(xk), L + 1 = 4 points
    assert ev.aopc(morf).item() == pytest.approx((0 + 0.5 + 0.8 + 0.9) / 4)
    assert ev.abpc(lerf, morf).item() == pytest.approx((0 + 0.4 + 0.6 + 0) / 4)


def test_a_map_that_orders_the_regions_as_the_model_does_has_the_largest_aopc(setting):
    clips, _, weight, targets = setting
    model = linear_model(weight)
    values = ev.replacement(clips, "mean", mean=torch.zeros(2))  # replace by zero
    # gradient × input of a linear model is its exact contribution per voxel
    exact = (weight[targets] * clips).sum(dim=1)
    good = ev.region_perturbation(model, clips, exact, targets, replace=values, cube=(1, 2, 2))
    bad = ev.region_perturbation(model, clips, -exact, targets, replace=values, cube=(1, 2, 2))
    assert (ev.aopc(good.logit) > ev.aopc(bad.logit)).all()


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_frame_perturbation_matches_a_loop_over_frames(setting, mode):
    clips, maps, weight, targets = setting
    model = linear_model(weight)
    values = ev.replacement(clips, "freeze")
    curves = ev.frame_perturbation(model, clips, maps, targets, mode=mode, batch_size=5)
    for b in range(3):
        order = sorted(range(4), key=lambda t: -float(maps[b, t].sum()))
        for k in range(5):
            x = clips[b].clone() if mode == "deletion" else values[b].clone()
            source = values[b] if mode == "deletion" else clips[b]
            for t in order[:k]:
                x[:, t] = source[:, t]
            logit = model(x[None])[0, targets[b]]
            assert curves.logit[b, k].item() == pytest.approx(logit.item())


def test_localisation_metrics_by_hand():
    maps = torch.zeros(2, 1, 2, 3, dtype=torch.float64)
    maps[0, 0] = torch.tensor([[5.0, 1.0, -2.0], [0.5, 3.0, 0.0]])
    maps[1, 0] = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    masks = torch.zeros(2, 1, 2, 3, dtype=torch.bool)
    masks[0, 0, 1, :] = True  # values 0.5, 3, 0: mass 3.5 of 9.5 positive
    found = ev.localisation(maps, masks)
    assert found["pointing"][0] == 0.0  # peak 5 is outside
    assert found["mass"][0].item() == pytest.approx(3.5 / 9.5)
    # top 3 voxels: 5, 3, 1 → one of them (3) in the mask
    assert found["rank"][0].item() == pytest.approx(1 / 3)
    assert all(math.isnan(found[m][1].item()) for m in ("pointing", "mass", "rank"))
    masks[0, 0, 0, 0] = True
    assert ev.localisation(maps, masks)["pointing"][0] == 1.0


def test_spearman_equals_the_rank_difference_formula_without_ties_and_handles_ties():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    rho = ev.spearman(a, b)
    for i in range(4):
        ra = a[i].argsort().argsort().double()
        rb = b[i].argsort().argsort().double()
        n = 50
        expected = 1 - 6 * ((ra - rb) ** 2).sum() / (n * (n * n - 1))
        assert rho[i].item() == pytest.approx(expected.item())
    # ties: [1, 2, 2, 3] has ranks [1, 2.5, 2.5, 4]; the same map correlates perfectly
    tied = torch.tensor([[1.0, 2.0, 2.0, 3.0]])
    assert ev.spearman(tied, tied).item() == pytest.approx(1.0)
    assert ev.spearman(tied, -tied).item() == pytest.approx(-1.0)
    assert math.isnan(ev.spearman(torch.ones(1, 4), tied).item())


TINY_VIDEO_MODEL = """
name: tiny-video
input: {name: input, shape: [3, 4, 8, 8]}
rules: deep-taylor-paper
preprocess: hara
nodes:
  - {name: conv1, op: conv3d, out_channels: 6, kernel_size: 3, padding: 1}
  - {name: relu1, op: relu}
  - {name: pool1, op: maxpool3d, kernel_size: 2, stride: 2}
  - {name: conv2, op: conv3d, out_channels: 6, kernel_size: 3, padding: 1}
  - {name: relu2, op: relu}
  - {name: flatten, op: flatten}
  - {name: fc1, op: linear, out_features: 16}
  - {name: relu3, op: relu}
  - {name: fc2, op: linear, out_features: 3}
output: fc2
"""


def test_cascading_randomisation_lowers_the_correlation_and_restores_the_model():
    from relgraph import architecture_from_yaml
    from relgraph.methods.discriminative import discriminative

    graph = architecture_from_yaml(TINY_VIDEO_MODEL)
    before = {k: v.clone() for k, v in graph.state_dict().items()}
    clips = 50 * torch.randn(3, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2])

    def explain_maps(g):
        result = discriminative(g, clips, targets)
        return {"spatiotemporal": result.spatiotemporal, "frames": frame_difference(clips)}

    rows = list(ev.cascading_randomisation(graph, explain_maps, seed=123))
    assert [layer for layer, _ in rows] == ["fc2", "fc1", "conv2", "conv1"]
    assert ev.randomisable_layers(graph) == ["fc2", "fc1", "conv2", "conv1"]
    # a map that ignores the model survives every randomisation: a failed sanity check
    assert all(
        torch.allclose(rho["frames"], torch.ones(3, dtype=rho["frames"].dtype)) for _, rho in rows
    )
    last = rows[-1][1]["spatiotemporal"]
    # NaN: the randomised model's map is constant (all zero), no correlation left either
    assert not (last >= 0.9).any() and torch.isfinite(last).any()
    after = graph.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_baselines():
    clips = torch.zeros(1, 3, 3, 2, 2)
    clips[0, :, 1, 0, 0] = 1.0  # pixel (0, 0) lights up in frame 1 only
    difference = frame_difference(clips)
    assert difference[0, 1, 0, 0] == 3.0 and difference[0, 2, 0, 0] == 3.0
    assert difference[0, 0, 0, 0] == 3.0  # frame 0 takes frame 1's
    assert difference[0, :, 1, 1].abs().sum() == 0
    first, second = random_map(clips, seed=5), random_map(clips, seed=5)
    assert torch.equal(first, second) and first.shape == (1, 3, 2, 2)
    assert not torch.equal(first, random_map(clips, seed=6))


def test_bad_shapes_are_clear_errors(setting):
    clips, maps, weight, targets = setting
    with pytest.raises(ShapeError, match=r"maps must be shaped \(B, T, H, W\)"):
        ev.region_perturbation(linear_model(weight), clips, maps[:, :2], targets)
    with pytest.raises(ShapeError, match="clips must be a batch"):
        ev.replacement(clips[0], "freeze")
    with pytest.raises(RelgraphError, match="order must be morf or lerf"):
        ev.region_perturbation(linear_model(weight), clips, maps, targets, order="best")


def test_a_shared_memo_runs_each_distinct_perturbed_clip_once(setting):
    """With one ForwardMemo across MoRF, LeRF, a second map that ranks the regions alike, and
    frame deletion and insertion, every curve equals its memo-free one, and the model sees each
    distinct perturbed clip once: counted by a model that records what it is given."""
    clips, maps, weight, targets = setting
    seen: list[torch.Tensor] = []

    def counting(x):
        seen.extend(x.unbind(0))
        return linear_model(weight)(x)

    memo = ev.ForwardMemo()
    cube = (2, 2, 3)
    got, expected = [], []
    for m in (maps, 3.0 * maps):  # a positive multiple ranks the regions alike
        for order in ("morf", "lerf"):
            kwargs = dict(cube=cube, order=order, steps=5, batch_size=4)
            got.append(ev.region_perturbation(counting, clips, m, targets, memo=memo, **kwargs))
            expected.append(
                ev.region_perturbation(linear_model(weight), clips, m, targets, **kwargs)
            )
    for mode in ("deletion", "insertion"):
        got.append(ev.frame_perturbation(counting, clips, maps, targets, mode=mode, memo=memo))
        expected.append(
            ev.frame_perturbation(linear_model(weight), clips, maps, targets, mode=mode)
        )
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.logit, b.logit)
        torch.testing.assert_close(a.probability, b.probability)
    distinct = {tuple(x.flatten().tolist()) for x in seen}
    assert len(seen) == len(distinct) == memo.runs
    jobs = 4 * 3 * 6 + 2 * 3 * 5  # (maps × orders) × clips × steps, frames: modes × clips × 5
    assert memo.runs + memo.hits == jobs
    # the second map adds nothing; step 0 is one clip each; deletion's last step is the
    # clip fully frozen, insertion's first; LeRF and MoRF end on the fully replaced clip
    assert memo.runs <= jobs // 2
