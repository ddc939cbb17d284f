"""Relevance of a clip's motion as DeepLIFT's RevealCancel rule explains it, with the static
clip as the reference (Shrikumar, Greenside and Kundaje 2017, "Learning important features
through propagating activation differences", section 3.5.3).

Like ``relgraph.methods.reference`` (DeepLIFT's Rescale rule), the clip ``x`` is compared with
its static part ``s``: every node has an activation on each and their difference ``Δ``. The
rules here carry DeepLIFT's *multipliers* ``M = ∂ᴰ(f(x) − f(s)) / ∂ᴰΔ`` backwards (the
engine's reverse pass runs them; no autograd), and the temporal map is ``Δx ⊙ M_x``, which
sums to ``f(x) − f(s)`` for the target's logit (summation-to-delta).

RevealCancel treats the positive and the negative contributions to a nonlinearity's input
apart. For a neuron ``z = Σ_i c_i`` (``c_i = w_i Δa_i``, the contributions of the inputs'
differences) with reference ``r``:

- ``Δ⁺ = Σ_i [c_i > 0] c_i`` and ``Δ⁻ = Σ_i [c_i < 0] c_i``;
- after the nonlinearity ``f``, each part's effect is the mean of its effect added first and
  added second (the Shapley values of the two parts):
  ``Δy⁺ = ½(f(r + Δ⁺) − f(r)) + ½(f(r + Δ⁻ + Δ⁺) − f(r + Δ⁻))`` and
  ``Δy⁻ = ½(f(r + Δ⁻) − f(r)) + ½(f(r + Δ⁺ + Δ⁻) − f(r + Δ⁺))``, so that
  ``Δy⁺ + Δy⁻ = Δy``;
- the multipliers of the two parts are ``m⁺ = Δy⁺ / Δ⁺`` and ``m⁻ = Δy⁻ / Δ⁻`` (each in
  ``[0, 1]`` for a ReLU), and an input's multiplier is the sum over its outputs of
  ``w · M_y · m⁺`` where its contribution is positive, ``w · M_y · m⁻`` where negative.

Where negative evidence cancels positive evidence below a ReLU's threshold (``Δy = 0``),
Rescale hands neither anything; RevealCancel reveals both. A neuron is a group of linear
nodes: an affine layer, or an ``add`` of affine layers and other nodes (a residual block's
sum), whose members feed nothing else; its contributions are those of the group's inputs.
Every other node (pools, reshapes, a linear node that feeds something other than a
nonlinearity) runs the Rescale rule of ``relgraph.methods.reference`` with multipliers in
and out (``M_in = R_in / Δ_in``, 0 where ``Δ_in`` is 0: such an input contributes nothing).

A transformer's ops have exact multipliers too, so that the sum still holds: a product of
two activations (attention's ``q kᵀ`` and ``softmax · v``) splits its difference by the
Shapley values of its two factors, ``Δ(ab) = Δa b̄ + ā Δb`` (``ā`` the mean of the clip's and
the reference's value); layer norm and softmax are chains of such products, sums,
reciprocals and exponentials, each with its exact difference quotient (a fused ``attention``
op, ``softmax(c q kᵀ) v``, is the chain of the three); token reshapes,
transposes and constant shifts pass the multiplier through their own vector-Jacobian
product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from relgraph.engine.capabilities import Affine, Reshaping
from relgraph.engine.graph import Graph
from relgraph.engine.ops import Elementwise
from relgraph.engine.token_ops import IndexOp, LayerNorm, MatMul, Shift, Softmax
from relgraph.errors import RelgraphError
from relgraph.methods.reference import difference_rule
from relgraph.rules import NodeContext, Rule, Stabilizer, widened

__all__ = ["contribution_split", "nonlinear", "reveal_cancel_rules", "revealcancel_multipliers"]


def nonlinear(graph: Graph, node: str) -> bool:
    """Whether ``node`` is a pointwise nonlinearity: an elementwise op with a derivative of its
    own (ReLU, sigmoid, ...), not a reshape, dropout, identity or constant scale."""
    op = graph.op(node)
    return (
        isinstance(op, Elementwise) and type(op).vjp is not Elementwise.vjp and op.type != "scale"
    )


def _group_members(graph: Graph) -> set[str]:
    """The linear nodes whose contributions RevealCancel splits: affine layers of one input
    and ``add`` nodes that feed one node only, a nonlinearity or an ``add`` member."""
    consumers: dict[str, list[str]] = {n: [] for n in graph.order}
    for node in graph.order[1:]:
        for parent in graph.inputs_of(node):
            consumers[parent].append(node)
    members: set[str] = set()
    for node in reversed(graph.order[1:]):
        op = graph.op(node)
        linear = (isinstance(op, Affine) and len(graph.inputs_of(node)) == 1) or op.type == "add"
        if not linear or len(consumers[node]) != 1:
            continue
        (consumer,) = consumers[node]
        if nonlinear(graph, consumer) or consumer in members:
            members.add(node)
    return members


def _split(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return delta.clamp(min=0), delta.clamp(max=0)


def contribution_split(
    graph: Graph, activations: dict[str, torch.Tensor], references: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{node: (Δ⁺, Δ⁻)}`` for every member of a linear group (see the module docstring):
    the sums of the positive and of the negative contributions to its output, in float32
    (float64 for a float64 graph); ``Δ⁺ + Δ⁻`` is the output's difference to rounding."""
    members = _group_members(graph)
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for node in graph.order[1:]:
        if node not in members:
            continue
        op, inputs = graph.op(node), graph.inputs_of(node)
        if op.type == "add":
            positive = negative = 0
            for parent in inputs:
                if parent in parts:
                    p, n = parts[parent]
                else:
                    p, n = _split(widened(activations[parent]) - widened(references[parent]))
                positive, negative = positive + p, negative + n
            parts[node] = (positive, negative)
            continue
        (parent,) = inputs
        delta = widened(activations[parent]) - widened(references[parent])
        weight = widened(op.weight_and_bias(graph.tensors(node))[0]).to(delta.dtype)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        d_pos, d_neg = _split(delta)
        parts[node] = (
            op.linear_map(d_pos, w_pos) + op.linear_map(d_neg, w_neg),
            op.linear_map(d_pos, w_neg) + op.linear_map(d_neg, w_pos),
        )
    return parts


def _by_sign(delta: torch.Tensor, rising: torch.Tensor, falling: torch.Tensor) -> torch.Tensor:
    """``rising`` where ``Δ > 0``, ``falling`` where ``Δ < 0``, 0 where ``Δ = 0``: an input
    that does not change contributes neither positively nor negatively (the paper's
    ``1{w Δx > 0}`` and ``1{w Δx < 0}``)."""
    return torch.where(delta > 0, rising, torch.where(delta < 0, falling, 0.0))


def _quotient(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, 0 where the denominator is 0 or subnormal."""
    tiny = torch.finfo(denominator.dtype).tiny
    usable = denominator.abs() >= tiny
    safe = torch.where(usable, denominator, torch.ones_like(denominator))
    return torch.where(usable, numerator / safe, 0.0)


@dataclass
class _Handed:
    """The multipliers ``(M⁺, M⁻)`` of the positive and negative contributions that a
    nonlinearity or an ``add`` hands to the member of a linear group that feeds it."""

    pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


@dataclass
class RevealNonlinear(Rule):
    """RevealCancel at a pointwise nonlinearity fed by a linear group member: hands
    ``(M·m⁺, M·m⁻)`` to the member and returns 0 on the edge."""

    name = "reveal-nonlinear"
    requires = (Reshaping,)
    needs = frozenset()

    producer: str
    reference: torch.Tensor  # the producer's activation on the static clip
    positive: torch.Tensor
    negative: torch.Tensor
    handed: _Handed

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        r, p, n = widened(self.reference), self.positive, self.negative
        multiplier = widened(relevance).to(p.dtype)

        def f(t: torch.Tensor) -> torch.Tensor:
            return widened(ctx.op.forward([t], ctx.tensors))

        base, with_p, with_n, both = f(r), f(r + p), f(r + n), f(r + p + n)
        up = 0.5 * (with_p - base) + 0.5 * (both - with_n)
        down = 0.5 * (with_n - base) + 0.5 * (both - with_p)
        self.handed.pending[self.producer] = (
            multiplier * _quotient(up, p),
            multiplier * _quotient(down, n),
        )
        return [torch.zeros(ctx.input_shapes[0], dtype=multiplier.dtype, device=multiplier.device)]


@dataclass
class RevealAffine(Rule):
    """An affine member of a linear group: ``M_a = Aᵀ(M⁺; W⁺) + Aᵀ(M⁻; W⁻)`` where
    ``Δa > 0``, ``Aᵀ(M⁺; W⁻) + Aᵀ(M⁻; W⁺)`` where ``Δa < 0`` and 0 where ``Δa = 0``."""

    name = "reveal-affine"
    requires = (Affine,)
    needs = frozenset()

    delta: torch.Tensor  # the input's difference
    handed: _Handed
    node: str

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        up, down = self.handed.pending.pop(self.node)
        # what other consumers hand (none: a member feeds one node) applies to both parts
        up, down = up + widened(relevance), down + widened(relevance)
        weight = widened(ctx.weight_and_bias()[0]).to(up.dtype)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        shape = ctx.input_shapes[0]

        def back(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return ctx.op.adjoint(s, w, shape)

        rising = back(up, w_pos) + back(down, w_neg)
        falling = back(up, w_neg) + back(down, w_pos)
        return [_by_sign(self.delta, rising, falling)]


@dataclass
class RevealAdd(Rule):
    """An ``add`` member of a linear group: a member input gets ``(M⁺, M⁻)`` handed on,
    any other input ``M⁺`` where its ``Δ > 0``, ``M⁻`` where it is negative (0 where 0)."""

    name = "reveal-add"
    requires = ()
    needs = frozenset()

    deltas: list[torch.Tensor]
    members: list[str | None]  # per input: its name where it is a member, else None
    handed: _Handed
    node: str

    def fits(self, op) -> bool:
        return op.type == "add"

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        up, down = self.handed.pending.pop(self.node)
        up, down = up + widened(relevance), down + widened(relevance)
        out = []
        for delta, member in zip(self.deltas, self.members):
            if member is not None:
                self.handed.pending[member] = (up, down)
                out.append(torch.zeros_like(up))
            else:
                out.append(_by_sign(delta, up, down))
        return out


@dataclass
class _Multiplied(Rule):
    """A Rescale difference rule run on multipliers: ``R = Δ_out ⊙ M`` in, ``R_in / Δ_in``
    out (0 where ``Δ_in`` is 0)."""

    name = "rescale-multiplier"
    needs = frozenset({"inputs"})

    inner: Rule
    out_delta: torch.Tensor
    in_deltas: list[torch.Tensor]

    def fits(self, op) -> bool:
        return self.inner.fits(op)

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        flowing = widened(relevance) * self.out_delta.reshape(relevance.shape)
        parts = self.inner(ctx, flowing)
        return [_quotient(widened(p), d) for p, d in zip(parts, self.in_deltas)]


def reveal_cancel_rules(
    graph: Graph,
    activations: dict[str, torch.Tensor],
    references: dict[str, torch.Tensor],
    reveal: bool = True,
) -> dict[str, Rule]:
    """The RevealCancel rule of every node, working on multipliers: run with the seed 1 at
    the target's logit, the reverse pass returns the input's multiplier ``M_x``, and
    ``(x − s) ⊙ M_x`` sums to the logit difference ``f(x) − f(s)``. ``activations`` and
    ``references``: every node's activation on the clip and on the reference (the input's
    included). ``reveal=False``: every nonlinearity takes the Rescale rule instead (the
    ``reference`` method on models whose ops its difference rules do not cover).

    Raises
    ------
    RelgraphError
        For an op with neither a RevealCancel nor a Rescale rule (``difference_rules``).
    """
    stab = Stabilizer("zero")
    parts = contribution_split(graph, activations, references) if reveal else {}
    handed = _Handed()

    def delta(node: str) -> torch.Tensor:
        return widened(activations[node]) - widened(references[node])

    rules: dict[str, Rule] = {}
    for node in graph.order[1:]:
        op, inputs = graph.op(node), graph.inputs_of(node)
        if nonlinear(graph, node) and inputs[0] in parts:
            (producer,) = inputs
            positive, negative = parts[producer]
            rules[node] = RevealNonlinear(
                producer, references[producer], positive, negative, handed
            )
        elif node in parts and op.type == "add":
            rules[node] = RevealAdd(
                [delta(p) for p in inputs],
                [p if p in parts else None for p in inputs],
                handed,
                node,
            )
        elif node in parts:
            rules[node] = RevealAffine(delta(inputs[0]), handed, node)
        elif isinstance(op, Affine) and len(inputs) == 1:
            rules[node] = _LinearMultiplier()
        elif op.type == "add":
            rules[node] = _AddMultiplier()
        elif isinstance(op, LayerNorm):
            rules[node] = _LayerNormMultiplier(references[inputs[0]])
        elif isinstance(op, Softmax):
            rules[node] = _SoftmaxMultiplier(references[inputs[0]])
        elif isinstance(op, MatMul):
            rules[node] = _ProductMultiplier([references[p] for p in inputs])
        elif op.type == "attention":
            rules[node] = _AttentionMultiplier([references[p] for p in inputs])
        elif isinstance(op, (IndexOp, Shift)) or op.type == "scale":
            rules[node] = _LinearVJP()
        else:
            try:
                inner = difference_rule(graph, node, references, stab)
            except RelgraphError:
                line = graph.line_of(node)
                raise RelgraphError(
                    f"the revealcancel method has no rule for '{node}' ({op.type})",
                    file=graph.file,
                    line=line,
                    node=node,
                ) from None
            rules[node] = _Multiplied(inner, delta(node), [delta(p) for p in inputs])
    return rules


# --------------------------------------------------------------------------- attention's ops


def _mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 0.5 * (widened(a) + widened(b))


@dataclass
class _LinearVJP(Rule):
    """A linear map with no parameters (transpose, permute, select, a constant shift or
    scale): ``M_x = Jᵀ M``, the op's own vector-Jacobian product (exact: the map is
    linear)."""

    name = "linear-vjp"
    needs = frozenset({"inputs"})

    def fits(self, op) -> bool:
        return True

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        multiplier = widened(relevance)
        inputs = [widened(x) for x in ctx.inputs]
        return ctx.op.vjp(multiplier, inputs, ctx.tensors, ctx.input_shapes)


@dataclass
class _ProductMultiplier(Rule):
    """A product of two activations ``a b`` (matmul): ``Δ(ab) = Δa b̄ + ā Δb`` exactly, with
    ``ā``, ``b̄`` the means of the clip's and the reference's values (each factor's Shapley
    value in the two-player game of the product), so ``M_a = M b̄ᵀ`` and ``M_b = āᵀ M``:
    the product's vector-Jacobian product at the midpoint."""

    name = "product-multiplier"
    needs = frozenset({"inputs"})

    references: list[torch.Tensor]

    def fits(self, op) -> bool:
        return True

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        midpoints = [_mean(x, r) for x, r in zip(ctx.inputs, self.references)]
        return ctx.op.vjp(widened(relevance), midpoints, ctx.tensors, ctx.input_shapes)


@dataclass
class _SoftmaxMultiplier(Rule):
    """Softmax ``p = e ⊙ v`` with ``e = exp(x − c)``, ``v = 1 / Σ e`` (``c`` the larger of
    the clip's and the reference's maximum, per row), each step exact: the product by its
    Shapley split (``M_e = M v̄``, ``M_v = Σ M ē``), the reciprocal by its difference
    quotient ``Δv / ΔS = −v v_ref``, the sum linearly, and the exponential by Rescale
    (``Δe / Δx = e_ref · (e^Δx − 1) / Δx``, which is ``e`` where ``Δx = 0``)."""

    name = "softmax-multiplier"
    needs = frozenset({"inputs"})

    reference: torch.Tensor

    def fits(self, op) -> bool:
        return True

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        return [
            _softmax_multiplier(widened(ctx.inputs[0]), widened(self.reference), widened(relevance))
        ]


def _softmax_multiplier(x: torch.Tensor, r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The input's multiplier of a softmax over the last axis (see ``_SoftmaxMultiplier``)."""
    c = torch.maximum(x.amax(-1, keepdim=True), r.amax(-1, keepdim=True))
    e_x, e_r = torch.exp(x - c), torch.exp(r - c)
    v_x, v_r = 1 / e_x.sum(-1, keepdim=True), 1 / e_r.sum(-1, keepdim=True)
    m_e = m * 0.5 * (v_x + v_r)
    m_v = (m * 0.5 * (e_x + e_r)).sum(-1, keepdim=True)
    m_e = m_e + m_v * (-v_x * v_r)  # through S = Σ e
    delta = x - r
    moved = delta != 0
    slope = torch.where(moved, torch.expm1(delta) / torch.where(moved, delta, 1.0), 1.0)
    return m_e * e_r * slope


@dataclass
class _AttentionMultiplier(Rule):
    """Fused attention ``softmax(c · q kᵀ) v``: the chain of its parts, each exact: the
    products ``q kᵀ`` and ``P v`` by their Shapley splits (the midpoints ``q̄``, ``k̄``, ``P̄``,
    ``v̄``), the softmax as ``_SoftmaxMultiplier``. Forms every row's probabilities at once."""

    name = "attention-multiplier"
    needs = frozenset({"inputs"})

    references: list[torch.Tensor]

    def fits(self, op) -> bool:
        return True

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        (q, k, v), (q_r, k_r, v_r) = (
            [widened(t) for t in ctx.inputs],
            [widened(t) for t in self.references],
        )
        m = widened(relevance)
        scale = getattr(ctx.op, "scale", None)
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        s_x, s_r = scale * q @ k.transpose(-1, -2), scale * q_r @ k_r.transpose(-1, -2)
        p_mid = 0.5 * (torch.softmax(s_x, dim=-1) + torch.softmax(s_r, dim=-1))
        m_p = m @ (0.5 * (v + v_r)).transpose(-1, -2)
        m_v = p_mid.transpose(-1, -2) @ m
        m_s = scale * _softmax_multiplier(s_x, s_r, m_p)
        m_q = m_s @ (0.5 * (k + k_r))
        m_k = m_s.transpose(-1, -2) @ (0.5 * (q + q_r))
        return [m_q, m_k, m_v]


@dataclass
class _LayerNormMultiplier(Rule):
    """Layer norm ``y = w ⊙ u v + b`` with ``u = x − mean(x)`` and ``v = (mean(u²) + ε)^−½``,
    each step exact: the product ``u v`` by its Shapley split (``M_u = h v̄``, ``M_v = Σ h ū``,
    ``h = M ⊙ w``), ``v(q)`` by its difference quotient ``Δv / Δq = −1 / (√q √q_ref (√q +
    √q_ref))``, ``q = mean(u²)`` by ``Δu² = 2 ū Δu``, and the centring linearly."""

    name = "layernorm-multiplier"
    needs = frozenset({"inputs"})

    reference: torch.Tensor

    def fits(self, op) -> bool:
        return True

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        x, r = widened(ctx.inputs[0]), widened(self.reference)
        h = widened(relevance)
        weight = ctx.tensors.get("weight")
        if weight is not None:
            h = h * widened(weight)
        u_x, u_r = x - x.mean(-1, keepdim=True), r - r.mean(-1, keepdim=True)
        eps = float(ctx.op.eps)
        root_x = (u_x.square().mean(-1, keepdim=True) + eps).sqrt()
        root_r = (u_r.square().mean(-1, keepdim=True) + eps).sqrt()
        v_x, v_r = 1 / root_x, 1 / root_r
        u_mid = 0.5 * (u_x + u_r)
        m_u = h * 0.5 * (v_x + v_r)
        m_v = (h * u_mid).sum(-1, keepdim=True)
        m_q = m_v * (-1 / (root_x * root_r * (root_x + root_r)))
        m_u = m_u + m_q * 2 * u_mid / x.shape[-1]
        return [m_u - m_u.mean(-1, keepdim=True)]


@dataclass
class _LinearMultiplier(Rule):
    """An affine layer outside a group: ``M_x = Aᵀ(M; W)`` (exact: the layer is linear)."""

    name = "linear-multiplier"
    requires = (Affine,)
    needs = frozenset()

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        multiplier = widened(relevance)
        weight = widened(ctx.weight_and_bias()[0]).to(multiplier.dtype)
        return [ctx.op.adjoint(multiplier, weight, ctx.input_shapes[0])]


@dataclass
class _AddMultiplier(Rule):
    """An ``add`` outside a group: every input gets ``M`` (the sum is linear)."""

    name = "add-multiplier"
    requires = ()
    needs = frozenset()

    def fits(self, op) -> bool:
        return op.type == "add"

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        return [widened(relevance).reshape(shape) for shape in ctx.input_shapes]


def revealcancel_multipliers(
    graph: Graph,
    clip: torch.Tensor,
    reference: torch.Tensor,
    target: torch.Tensor,
    reveal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(relevance, logits on the clip, logits on the reference)``: DeepLIFT RevealCancel's
    relevance ``(x − s) ⊙ M_x`` of each clip ``x`` from its ``reference`` ``s`` for the
    target class, ``(B, C, T, H, W)`` in float32 (float64 for a float64 graph); with
    ``reveal=False`` the Rescale rule's."""
    from relgraph.engine.reverse import explain_with_rules

    activations = graph.forward(clip).activations
    references = graph.forward(reference).activations
    output = activations[graph.output].reshape(len(clip), -1)
    static_output = references[graph.output].reshape(len(clip), -1)
    rules = reveal_cancel_rules(graph, activations, references, reveal)
    seed = torch.zeros_like(output)
    seed[torch.arange(len(clip), device=clip.device), target] = 1
    multiplier = explain_with_rules(
        graph, clip, rules, target, seed.reshape(activations[graph.output].shape)
    )
    relevance = (widened(clip) - widened(reference)) * widened(multiplier)
    return relevance, output, static_output
