"""Scale equivariance: on a bias-free graph every scale-invariant rule gives ``x·2^k`` the
relevance of ``x`` (onehot seed), for |k| ≤ 30 in float32 and |k| ≤ 200 in float64.

A network without biases is positively homogeneous (ReLU, max and average pools, batch norms
with zero mean and shift), so every z scales by 2^k and each ratio ``x·Aᵀ(R/z)`` is unchanged.
Which rules keep that, read off their formulas (docs/reference/rules.md):

- scale-invariant: LRP-0 (``epsilon`` with ε = 0), z⁺, αβ, γ with the ``zero`` stabiliser,
  flat and w² (they never read x), winner-take-all, uniform, proportional, split, pass;
- not: LRP-ε with ε > 0 and any ``stabilizer: epsilon`` with ε > 0 (ε does not scale with x),
  zβ with fixed bounds (l and h do not scale with x).

The samples' magnitudes reach 2^±34 (float32) and 2^±204 (float64), beyond the range
``sample_scale`` leaves alone (2^±32), so the per-sample rescaling is checked for its values.
One batch mixes samples that need rescaling with samples that do not.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from relgraph.rules import (
    AlphaBeta,
    Combine,
    Epsilon,
    Flat,
    Gamma,
    Pass,
    Proportional,
    Rule,
    Split,
    Uniform,
    WinnerTakeAll,
    WSquare,
    ZBeta,
    ZPlus,
)
from relgraph.rules.numerics import SAFE_EXPONENTS, Numerics, sample_scale, scale_and_sign
from strategies import graph_cases, one_torch_thread  # noqa: F401

import relgraph

#: rules for affine nodes that are scale-invariant (see the module docstring)
AFFINE = [
    Epsilon(epsilon=0.0),
    Epsilon(epsilon=0.0, bias=False),
    ZPlus(),
    ZPlus(stabilizer="epsilon", epsilon=0.0),
    AlphaBeta(alpha=2.0, beta=1.0),
    AlphaBeta(alpha=1.0, beta=0.0),
    Gamma(gamma=0.25),
    Flat(),
    WSquare(),
    Combine([(0.5, ZPlus()), (0.5, Gamma(gamma=1.0))]),
]
#: the same for pools: (max pools, average pools)
POOLS = [
    (WinnerTakeAll(), Uniform()),
    (Proportional(), Proportional()),
    (Combine([(1.0, WinnerTakeAll())]), Combine([(0.5, Uniform()), (0.5, Proportional())])),
]

#: the largest |k| per type, and the baseline magnitude 2^4 that pushes the samples past 2^±32
LIMITS = {torch.float32: 30, torch.float64: 200}
BASE_EXPONENT = 4


def bias_free(case, dtype: torch.dtype) -> relgraph.Graph:
    graph = case.build(dtype)
    for node in graph.order:
        tensors = graph.tensors(node)
        for name in ("bias", "running_mean"):
            if name in tensors:
                tensors[name] = torch.zeros_like(tensors[name])
    return graph


def rules_for(graph: relgraph.Graph, affine: Rule, pools: tuple[Rule, Rule]) -> dict[str, Rule]:
    rules = {}
    for node in graph.order[1:]:
        capabilities = graph.op(node).capabilities
        if "affine" in capabilities:
            rules[node] = affine
        elif "max_route" in capabilities:
            rules[node] = pools[0]
        elif "window" in capabilities:
            rules[node] = pools[1]
        elif "split" in capabilities:
            rules[node] = Split()
        else:
            rules[node] = Pass()
    return rules


def scaled_batch(x: torch.Tensor, limit: int) -> tuple[torch.Tensor, list[int]]:
    """``x`` (one sample, peak 1.5) times 2^e for exponents that reach ±(4 + limit)."""
    x = x / x.abs().max() * 1.5
    exponents = [
        BASE_EXPONENT,
        BASE_EXPONENT + limit,
        BASE_EXPONENT + limit // 2,
        0,
        -BASE_EXPONENT,
        -BASE_EXPONENT - limit,
        -BASE_EXPONENT - limit // 3,
    ]
    batch = torch.cat([x * 2.0**e for e in exponents])
    return batch, exponents


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@settings(max_examples=25, deadline=None)
@given(
    case=graph_cases(max_blocks=3, homogeneous=True),
    affine=st.sampled_from(AFFINE),
    pools=st.sampled_from(POOLS),
)
def test_relevance_of_a_power_of_two_multiple_equals_the_original(dtype, case, affine, pools):
    graph = bias_free(case, dtype)
    batch, exponents = scaled_batch(case.inputs(1, dtype), LIMITS[dtype])
    # the samples at 2^±(4 + limit) lie where the rules rescale them
    for e, sample in zip(exponents, batch):
        if abs(e) > 32:
            assert sample_scale(sample[None]) is not None
    relevance = relgraph.explain_with_rules(
        graph, batch, rules_for(graph, affine, pools), 0, "onehot"
    )
    assert torch.isfinite(relevance).all()
    reference = relevance[0]
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    peak = float(reference.abs().max())
    for e, sample_relevance in zip(exponents[1:], relevance[1:]):
        torch.testing.assert_close(
            sample_relevance,
            reference,
            rtol=tolerance.get("rtol", 1e-10),
            atol=tolerance.get("atol", 1e-12) * max(peak, 1.0),
            msg=lambda m, e=e: f"x·2^{e - BASE_EXPONENT} against x: {m}",
        )


def test_epsilon_and_fixed_zbeta_are_not_scale_invariant():
    """The split above is not vacuous: the rules left out do change with the scale."""
    graph = relgraph.architecture_from_yaml(
        "input: {shape: [3]}\nnodes:\n  - {name: fc, op: linear, out_features: 2, bias: false}\n",
        dtype=torch.float64,
    )
    graph.tensors("fc")["weight"].copy_(torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]]))
    x = torch.tensor([[0.5, -0.25, 1.0]], dtype=torch.float64)
    batch = torch.cat([x, x * 2.0**-10])
    for rule in (Epsilon(epsilon=0.1), ZBeta(low=-1.0, high=1.0)):
        relevance = relgraph.explain_with_rules(graph, batch, {"fc": rule}, 0, "onehot")
        assert not torch.allclose(relevance[0], relevance[1]), rule


@pytest.mark.parametrize("exponent", [-70, 0, 70])
def test_a_sign_known_by_construction_gives_the_scale_looked_for(exponent):
    # a ReLU's output (NodeContext.known_nonnegative): the peak is the maximum alone
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)).abs() * 2.0**exponent
    x[1] *= 2.0**-9
    looked_for, known = scale_and_sign(x), scale_and_sign(x, nonnegative=True)
    assert looked_for[1] is True and known[1] is True
    if exponent == 0:
        assert looked_for[0] is None and known[0] is None
    else:
        assert torch.equal(looked_for[0], known[0])
    assert scale_and_sign(x - x.mean())[1] is False


def _scale_by_reference(tensors, also=0.0):
    """The scale as the formula says it, with torch's frexp on the whole batch: the peak
    magnitude per sample, its exponent, and 2^(1 − e) where e lies outside SAFE_EXPONENTS."""
    peak = torch.stack([t.abs().flatten(1).amax(1) for t in tensors]).amax(0).clamp(min=also)
    exponent = torch.frexp(peak)[1]
    low, high = SAFE_EXPONENTS
    if bool(((exponent >= low) & (exponent <= high)).all()):
        return None
    return torch.pow(2.0, (1 - exponent).to(peak.dtype))


@pytest.mark.parametrize("seed", range(6))
def test_the_scale_read_on_the_host_matches_the_formula(seed):
    # scale_and_sign tests the exponents in Python after one transfer: the same decision and
    # factors as torch.frexp over the batch, at the edges of SAFE_EXPONENTS too
    generator = torch.Generator().manual_seed(seed)
    low, high = SAFE_EXPONENTS
    edges = [low - 1, low, high, high + 1, 0, -100, 100]
    tensors = []
    for _ in range(1 + seed % 2):
        t = torch.randn(4, 3, 5, generator=generator, dtype=torch.float64)
        t = t / t.abs().flatten(1).amax(1).reshape(-1, 1, 1)  # each sample's peak is 1
        picks = torch.randint(len(edges), (4,), generator=generator)
        # peak 2^(e−1)·1.5: frexp gives exactly the exponent e
        t = t * 0.75 * torch.tensor([2.0 ** edges[int(i)] for i in picks]).reshape(-1, 1, 1)
        tensors.append(t)
    expected = _scale_by_reference(tensors)
    got, no_negative = scale_and_sign(*tensors)
    assert no_negative is all(bool((t >= 0).all()) for t in tensors)
    if expected is None:
        assert got is None
    else:
        assert got is not None and torch.equal(got.flatten(), expected)


@pytest.mark.parametrize("exponent", [-70, 0, 70])
def test_a_sign_known_for_one_tensor_of_two_gives_the_scale_and_sign_of_the_pair(exponent):
    # a residual add of a ReLU output and a convolution's: the first one's minimum is not
    # looked for, the second one's is; the scale is the formula's on the pair
    generator = torch.Generator().manual_seed(exponent + 100)
    relu = torch.randn(3, 4, 5, generator=generator).abs() * 2.0**exponent
    signed = torch.randn(3, 4, 5, generator=generator) * 2.0**exponent
    signed[2] *= 2.0**12  # one sample's peak on the signed tensor's negative side
    signed[2].view(-1)[0] = -signed[2].abs().max() * 2
    scale, no_negative = scale_and_sign(relu, signed, nonnegative=[True, False])
    expected = _scale_by_reference([relu, signed])
    assert (scale is None) == (expected is None)
    if expected is not None:
        assert torch.equal(scale.flatten(), expected)
    assert no_negative is False
    assert scale_and_sign(relu, signed.abs(), nonnegative=(True, False))[1] is True


def test_the_sign_read_on_the_host_counts_negative_zero_and_nan_as_no_negative():
    x = torch.tensor([[0.0, 1.0, -0.0], [2.0, float("nan"), 3.0]])
    assert scale_and_sign(x)[1] is True
    assert scale_and_sign(torch.cat([x, -x.abs()[:1] - 1.0]))[1] is False


@pytest.mark.parametrize("layout", ["contiguous", "channels-last", "not dense"])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_the_scale_and_sign_do_not_depend_on_the_memory_layout(layout, nonnegative):
    # on CPU each sample of a dense tensor is reduced as one block of memory (one aminmax),
    # any other tensor over all but the batch axis: the same decision and factors either way
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 2, 3, 5, generator=generator)
    x = x / x.abs().flatten(1).amax(1).reshape(-1, 1, 1, 1, 1)  # each sample's peak is 1
    x = x * torch.tensor([2.0**-60, 1.0, 2.0**50]).reshape(-1, 1, 1, 1, 1)
    x[1, 2, 1, 1, 3] = -3.0  # one sample's peak is a negative entry
    if nonnegative:
        x = x.abs()
    if layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
        assert not x.is_contiguous()
    elif layout == "not dense":
        x = torch.stack([x, x], dim=-1)[..., 0]  # the same values, every other float
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last_3d)
    scale, no_negative = scale_and_sign(x, nonnegative=nonnegative)
    assert no_negative is nonnegative
    assert torch.equal(scale.flatten(), _scale_by_reference([x]))


@pytest.mark.parametrize("remembered_nonnegative", [False, True])
@pytest.mark.parametrize("asked_nonnegative", [False, True])
def test_remembered_extremes_give_the_scale_and_sign_of_a_scan(
    remembered_nonnegative, asked_nonnegative
):
    # explain takes each rule input's extremes as the forward pass makes it; a rule may ask
    # with or without the sign known, and a tensor remembered as ≥ 0 reports 0 as its least
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(3, 4, 5, generator=generator) * torch.tensor([2.0**-50, 1.0, 2.0**40]).reshape(
        -1, 1, 1
    )
    if not (remembered_nonnegative or asked_nonnegative):  # a rule asks so only of x ≥ 0
        x[1, 0, 0] = -7.0
    expected = scale_and_sign(x)  # scanned for both extremes
    numerics = Numerics(remembers_extremes=True)
    numerics.remember_extremes(x, remembered_nonnegative)
    scale, no_negative = scale_and_sign(x, nonnegative=asked_nonnegative, numerics=numerics)
    other = -x - 1.0  # another tensor: scanned, not read from x's entry
    assert scale_and_sign(other, numerics=numerics)[1] is False
    assert no_negative is expected[1]
    assert torch.equal(scale, expected[0])


def test_explain_reads_the_extremes_taken_in_the_forward_pass(monkeypatch):
    # resnet-tiny's residual block input is read by a convolution's rule and by the add's:
    # remembered as the forward pass makes it, it is scanned once; the relevance is the same
    import relgraph.rules.numerics as numerics

    graph = relgraph.load_architecture("resnet-tiny")
    x = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(6))
    scans = []
    scan = numerics._scan
    monkeypatch.setattr(numerics, "_scan", lambda t, n: scans.append(1) or scan(t, n))
    remembered = relgraph.explain(graph, x)
    count = len(scans)
    scans.clear()
    monkeypatch.setattr(numerics.Numerics, "remember_extremes", lambda self, t, n: None)
    scanned = relgraph.explain(graph, x)
    assert count < len(scans)
    assert torch.equal(remembered, scanned)
