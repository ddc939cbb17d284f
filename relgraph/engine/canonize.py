"""Batch-norm canonization: fold each batch norm into the affine layer before it.

An inference-mode batch norm is the per-channel affine map ``y = x·s + t`` with
``s = γ / √(σ² + ε)`` and ``t = β − μ·s``. After a convolution or linear layer ``z = W x + b``
it can be folded into that layer, ``y = (s·W) x + (s·b + t)`` (a bias is created where the
layer had none), so that the rules see one affine layer, as zennit's canonizers arrange
(Anders et al. 2021, "Software for dataset-wide XAI", and Hui & Binder 2019 on BN in LRP).

``canonical(graph)`` returns a derived ``Graph`` (a view): the folded layers keep their
declared names (a composite's rule for ``layer1.0.conv1.0`` applies to the folded conv), the
batch norms they absorbed are gone from it, and every other node shares the original's
tensor dictionaries. The folded weight and bias are computed from the original tensors when
read and recomputed whenever those change (in-place edits, ``assign``/``load_weights``,
``to``), by the same identity-and-version check as the rules' memo. A batch norm is folded
only when its single input is a conv or linear node whose only consumer is that batch norm;
any other batch norm stays and keeps a rule of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import replace

import torch

from relgraph.engine.graph import Graph, Node, digraph_of
from relgraph.engine.ops import BatchNormNd, ConvNd, Linear, Op
from relgraph.engine.signature import same_tensors, tensor_signature
from relgraph.errors import RelgraphError


class CanonicalGraph(Graph):
    """A canonized view of a graph (``fold_batchnorm``): it runs and is explained like any
    graph, but its weights belong to the original, so it refuses to change them."""

    folded: dict[str, str]
    canonical_of: Graph

    def __init__(self, nodes: list[Node], original: Graph, folded: dict[str, str]) -> None:
        super().__init__(digraph_of(nodes), original.spec)
        self.output = folded.get(original.output, original.output)
        self._dtype, self._device = original.dtype, original.device
        self.canonize = True
        self.folded = folded
        self.canonical_of = original
        # one memo for the graph and its view (entries are checked against the tensors they
        # were derived from, so folded and unfolded layers never mix), cleared with the graph's
        self.cache = original.cache

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise RelgraphError(
            f"this is the canonized view of '{self.name}' (batch norms folded); its weights "
            "are the original graph's: call to/assign/load_weights on that graph"
        )

    to = assign = load_weights = _refuse  # type: ignore[assignment]

    @property
    def cache_policy(self) -> str:  # type: ignore[override]
        """The original graph's policy: a memory mode set there holds for its view too."""
        return self.canonical_of.cache_policy

    @property
    def channels_last(self) -> bool | None:  # type: ignore[override]
        """The original graph's layout setting: set there, it holds for its view too."""
        return self.canonical_of.channels_last


def fold_pairs(graph: Graph) -> dict[str, str]:
    """``{batch norm: affine node it folds into}`` for ``graph``, in graph order.

    A batch norm folds when its only input is a ``conv*d`` or ``linear`` node whose only
    consumer is that batch norm, and the channel counts match.
    """
    pairs: dict[str, str] = {}
    for node in graph.order[1:]:
        op = graph.op(node)
        if not isinstance(op, BatchNormNd):
            continue
        (source,) = graph.inputs_of(node)
        before = graph.op(source)
        if not isinstance(before, (ConvNd, Linear)) or graph.graph.out_degree(source) != 1:
            continue
        if source == graph.output:
            continue
        channels = before.out_channels if isinstance(before, ConvNd) else before.out_features
        if channels != op.num_features:
            continue
        pairs[node] = source
    return pairs


class FoldedTensors(Mapping):
    """The ``weight`` and ``bias`` of an affine layer with a batch norm folded in.

    Reads the two nodes' tensor dictionaries live; the folded pair is cached and recomputed
    when any source tensor is replaced or edited in place. Read-only: change the original
    graph's weights instead.
    """

    def __init__(
        self,
        affine: dict[str, torch.Tensor],
        norm: dict[str, torch.Tensor],
        norm_op: BatchNormNd,
        needed: tuple[str, ...],
    ) -> None:
        self._affine = affine
        self._norm = norm
        self._norm_op = norm_op
        self._needed = needed  # tensors the batch norm must have before anything is folded
        self._signature: tuple | None = None
        self._folded: dict[str, torch.Tensor] = {}

    def _sources(self) -> dict[str, torch.Tensor]:
        return {
            **{f"a.{k}": v for k, v in self._affine.items()},
            **{f"n.{k}": v for k, v in self._norm.items() if k != "num_batches_tracked"},
        }

    def _ready(self) -> bool:
        return "weight" in self._affine and all(k in self._norm for k in self._needed)

    def _current(self) -> dict[str, torch.Tensor]:
        if not self._ready():
            return {}
        sources = self._sources()
        if self._signature is not None and same_tensors(self._signature, sources):
            return self._folded
        folded = self._fold()
        signature = tensor_signature(sources)
        # inference-mode tensors cannot vouch for their values (no version counter): the
        # fold is recomputed on every read then, as the rules' memo does
        self._signature, self._folded = signature, (folded if signature is not None else {})
        return folded

    def _fold(self) -> dict[str, torch.Tensor]:
        weight = self._affine["weight"].detach()
        bias = self._affine.get("bias")
        dtype = weight.dtype
        # fold in at least float32 (bfloat16 weights get one rounding, at the end)
        work = torch.promote_types(dtype, torch.float32)
        with torch.inference_mode(False):  # a normal tensor: the rules' memo can vouch for it
            norm = {k: v.detach().to(work) for k, v in self._norm.items()}
            scale, shift = self._norm_op.weight_and_bias(norm)
            w = weight.to(work) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
            b = shift if bias is None else bias.detach().to(work) * scale + shift
            return {"weight": w.to(dtype), "bias": b.to(dtype)}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._current()[key]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """The folded ``weight`` and ``bias`` as they are now, checked once: a plain dict for
        one node of one pass (``Graph.current_tensors``), which reads them many times."""
        return dict(self._current())

    def __contains__(self, key: object) -> bool:
        # without folding: the folded pair is there once every source is (``_current``)
        return key in ("weight", "bias") and self._ready()

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        raise RelgraphError(
            "the weights of a folded layer are derived from the original graph's: change "
            "those (graph.assign, graph.load_weights, graph.to)"
        )


def _folded_op(op: Op) -> Op:
    """``op`` with a bias (a folded layer always has one)."""
    new = copy.copy(op)
    new.attrs = {**op.attrs, "bias": True}
    return new


def fold_batchnorm(graph: Graph) -> Graph:
    """A ``Graph`` computing the same function with each foldable batch norm folded into the
    affine layer before it (see the module docstring). ``graph`` itself is left unchanged.

    The result has ``folded`` (``{batch norm: layer}``) and ``canonical_of`` (``graph``).
    """
    pairs = fold_pairs(graph)
    absorbed = {layer: norm for norm, layer in pairs.items()}
    nodes = []
    for node in graph.nodes():
        if node.name in pairs:
            continue
        # a consumer of a folded batch norm now reads the layer
        inputs = tuple(pairs.get(source, source) for source in node.inputs)
        if node.name in absorbed:
            norm = graph.node(absorbed[node.name])
            needed = ("running_mean", "running_var") + (
                ("weight", "bias") if norm.op.affine else ()
            )
            node = replace(
                node,
                op=_folded_op(node.op),
                shape=norm.shape,
                tensor_shapes={**node.tensor_shapes, "bias": (node.tensor_shapes["weight"][0],)},
                tensors=FoldedTensors(node.tensors, norm.tensors, norm.op, needed),
            )
        nodes.append(replace(node, inputs=inputs))
    return CanonicalGraph(nodes, graph, pairs)


def canonical(graph: Graph, canonize: bool | None = None) -> Graph:
    """The graph the rules run on: ``graph`` canonized (batch norms folded) unless
    ``canonize`` is false (default: the architecture's ``canonize:``, true when absent).

    The canonized view is built once per graph and kept until its weights are replaced
    (``assign``, ``load_weights``, ``to``); in-place edits are followed without rebuilding.
    """
    if isinstance(graph, CanonicalGraph):
        return graph  # already a canonized view
    if canonize is None:
        canonize = getattr(graph, "canonize", True)
    if not canonize:
        return graph
    return graph.canonical_view(fold_batchnorm)


def fold_notes(graph: Graph) -> dict[str, str]:
    """For ``relgraph arch show``: a note per node that canonization folds or changes."""
    notes: dict[str, str] = {}
    for norm, layer in fold_pairs(graph).items():
        notes[norm] = f"folded into {layer}"
        bias = "" if getattr(graph.op(layer), "bias", True) else ", bias created"
        notes[layer] = f"absorbs {norm}{bias}"
    return notes
