"""The layer graph: compile a spec into a ``networkx.DiGraph``, run the cached forward pass.

Node attributes are plain data: ``op`` (an ``relgraph.engine.ops.Op``), ``shape`` (output shape,
batch left out), ``tensors`` (parameter tensors by name), ``tensor_shapes``, ``line`` (YAML
line) and ``index`` (declaration order). Edge attribute ``slot`` is the input position.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import yaml

from relgraph.engine import token_ops  # noqa: F401  (registers the token ops)
from relgraph.engine.interpreter import ForwardPass, check_keep
from relgraph.engine.ops import (
    OPS,
    Input,
    Op,
    OpDefinitionError,
    all_finite,
    infer_output_shape,
    onednn_runs,
)
from relgraph.engine.spec import ArchSpec, load_yaml, parse_spec, with_block_origin
from relgraph.engine.weights import (
    LoadReport,
    checked_state_dict,
    save_weights,
    split_key,
    tensor_key,
)
from relgraph.errors import (
    ArgumentError,
    GraphError,
    RelgraphError,
    ShapeError,
    SpecError,
    WeightsError,
    did_you_mean,
)
from relgraph.io.resources import shipped_names, shipped_path


@dataclass
class ForwardResult:
    """What the forward pass leaves: the output and every node's activation."""

    output: torch.Tensor
    activations: dict[str, torch.Tensor] = field(repr=False)
    #: what ops recorded for the reverse pass (``forward(record=...)``), e.g. max-pool indices
    records: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Node:
    """One compiled node, as ``Graph.node`` and ``Graph.nodes`` give it.

    The record is read-only; ``tensors`` is the graph's own dict of the node's weights (the
    one ``Graph.tensors`` returns), so weights assigned to the graph show here too.
    """

    name: str
    op: Op
    #: output shape without the batch dimension
    shape: tuple[int, ...]
    #: the nodes feeding it, in input-slot order
    inputs: tuple[str, ...]
    #: its line in the architecture's file (``None`` where not known)
    line: int | None
    #: the shape of each weight tensor the op needs
    tensor_shapes: Mapping[str, tuple[int, ...]] = field(repr=False)
    tensors: Mapping[str, torch.Tensor] = field(repr=False, compare=False)
    #: position among the nodes of the file, the tie-break of the topological order
    index: int = field(default=0, repr=False)


def digraph_of(nodes: Iterable[Node]) -> nx.DiGraph:
    """The networkx structure of ``Graph`` holding ``nodes`` (an edge per input slot)."""
    graph = nx.DiGraph()
    nodes = list(nodes)
    for node in nodes:
        graph.add_node(
            node.name,
            op=node.op,
            shape=node.shape,
            line=node.line,
            tensor_shapes=dict(node.tensor_shapes),
            tensors=node.tensors,
            index=node.index,
        )
    for node in nodes:
        for slot, source in enumerate(node.inputs):
            graph.add_edge(source, node.name, slot=slot)
    return graph


#: the values of ``Graph.cache_policy``
CACHE_POLICIES = ("weights", "none")


class Graph:
    """A compiled architecture: a ``networkx.DiGraph`` of ops with shapes and weights.

    Build one with ``relgraph.load_architecture``. ``graph`` is the DiGraph; ``order`` the
    nodes in topological order; ``input`` and ``output`` the names of those nodes.
    """

    def __init__(self, graph: nx.DiGraph, spec: ArchSpec) -> None:
        self.graph = graph
        self.spec = spec
        self.name = spec.name
        self.input = spec.input_name
        self.output = spec.output
        self.params = dict(spec.params)
        self.default_rules = spec.rules
        self.default_preprocess = spec.preprocess
        #: class names of the outputs (``relgraph.io.labels.Labels``) where the model carries
        #: them (``relgraph.load_pretrained``: ``id2label``); the video commands use them when
        #: no label file is given
        self.labels: Any = None
        self.file = spec.file
        #: fold batch norms into the layer before them before the rules run
        #: (``relgraph.engine.canonize``); ``canonize: false`` in the YAML turns it off
        self.canonize: bool = spec.canonize
        self._canonical: Graph | None = None  # that canonized view, built on first use
        self._channels_last_ops: str | None = None  # see runs_channels_last
        self._channels_last: bool | None = None  # see channels_last
        self._nonnegative: frozenset[str] | None = None  # see nonnegative_nodes
        self._inputs: dict[str, list[str]] | None = None  # see inputs_of
        self._ops: dict[str, Op] | None = None  # see op
        index = nx.get_node_attributes(graph, "index")
        self.order: list[str] = list(
            nx.lexicographical_topological_sort(graph, key=index.__getitem__)
        )
        #: per-graph memo for rules (e.g. W⁺, W⁻): each node's entry checks that its tensors
        #: are the same, unedited (``NodeContext.memo``); ``to`` clears it to free memory
        self.cache: dict[Any, torch.Tensor] = {}
        self._cache_policy = "weights"
        # what weights get when none exist yet (init="none"): set by compile_spec and to()
        self._dtype = torch.float32
        self._device = torch.device("cpu")

    # ------------------------------------------------------------------ memory
    @property
    def cache_policy(self) -> str:
        """What the reverse pass keeps between explanations: ``"weights"`` (default) keeps
        what the rules derive from the weights alone (W⁺, W⁻, γ-weights, stacked pairs,
        zβ offsets) in ``cache``, so the next explanation reuses them; ``"none"`` derives
        them at each node and drops them when the pass leaves the node, for memory-bound
        users (C3D: about one more copy of the weights kept otherwise; the time it costs is
        in docs/benchmarks/memory.md). ``"none"`` is the memory mode: the rules also
        run big affine maps a slice of channels at a time and make W⁺ slice by slice (the
        same values), and the passes hand freed memory back to the system after each node
        (``relgraph.engine.hostmemory``). Setting it clears ``cache``."""
        return self._cache_policy

    @cache_policy.setter
    def cache_policy(self, value: str) -> None:
        if value not in CACHE_POLICIES:
            raise GraphError(
                f"cache_policy must be one of {', '.join(map(repr, CACHE_POLICIES))}, "
                f"got {value!r}",
                file=self.file,
            )
        self._cache_policy = value
        self.cache.clear()

    @property
    def channels_last(self) -> bool | None:
        """The memory layout of the passes on CPU: ``None`` (default) relgraph's choice
        (``working_layout``), ``True`` channels-last, ``False`` the default layout, for every
        5-D float32 or bfloat16 input. The values are the same either way, to rounding; for
        measuring (``benchmarks/layout.py``) and for CPUs where the choice is the slower one."""
        return self._channels_last

    @channels_last.setter
    def channels_last(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise GraphError(
                f"channels_last must be None, True or False, got {value!r}", file=self.file
            )
        self._channels_last = value

    # ------------------------------------------------------------------ structure
    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape_of(self.input)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shape_of(self.output)

    def node(self, name: str) -> Node:
        """The compiled node ``name`` (a ``GraphError`` naming the graph if there is none)."""
        if name not in self.graph:
            raise GraphError(
                f"'{self.name}' has no node '{name}'{did_you_mean(name, self.order)}",
                file=self.file,
            )
        data = self.graph.nodes[name]
        return Node(
            name=name,
            op=data["op"],
            shape=tuple(data["shape"]),
            inputs=tuple(self.inputs_of(name)),
            line=data.get("line"),
            tensor_shapes=dict(data["tensor_shapes"]),
            tensors=data["tensors"],
            index=data.get("index", 0),
        )

    def nodes(self) -> list[Node]:
        """Every node, in topological order (``order``)."""
        return [self.node(name) for name in self.order]

    def shape_of(self, node: str) -> tuple[int, ...]:
        """The output shape of ``node``, without the batch dimension."""
        return self.graph.nodes[node]["shape"]

    def tensor_shapes_of(self, node: str) -> dict[str, tuple[int, ...]]:
        """The shape of each weight tensor ``node``'s op needs."""
        return dict(self.graph.nodes[node]["tensor_shapes"])

    @property
    def num_classes(self) -> int:
        return math.prod(self.output_shape)

    def op(self, node: str) -> Op:
        """The op of ``node`` (looked up in a dict made once: the nodes are fixed once
        compiled, and networkx's node views cost microseconds a read)."""
        if self._ops is None:
            self._ops = dict(self.graph.nodes(data="op"))
        return self._ops[node]

    def working_layout(self, x: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
        """``x`` in the memory layout the passes run in: channels-last for a graph with 3-D
        convolutions on CPU (``ConvNd.prefers_channels_last``): with grouped ones (X3D's
        depthwise convolutions) in float32 or bfloat16, where oneDNN's grouped kernels run
        much faster in that layout; with ungrouped ones only where oneDNN takes the dtype
        (float32; bfloat16 on CPUs with the instructions), where the zoo's models run their
        forward pass faster and their explanation at least as fast
        (docs/benchmarks/model-speed.md). Every other op keeps the layout.
        ``x`` itself otherwise. ``channels_last=True`` asks for that layout on CPU whatever
        the ops (see ``forward``). The values are the same either way."""
        if self.runs_channels_last(x, channels_last):
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def runs_channels_last(self, x: torch.Tensor, channels_last: bool | None = None) -> bool:
        """Whether the passes over ``x`` run channels-last (see ``working_layout``): as
        ``channels_last`` says where given, else as the graph's ``channels_last`` says where
        set, else relgraph's choice."""
        if channels_last is None:
            channels_last = self.channels_last
        return (
            x.dim() == 5
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16)
            and (self._prefers_channels_last(x.dtype) if channels_last is None else channels_last)
        )

    def nonnegative_nodes(self) -> frozenset[str]:
        """The nodes whose activation is ≥ 0 for any input, by construction: a ReLU's or a
        sigmoid's, or one pooled, reshaped, summed, multiplied or joined from such only
        (``Op.sign``). Rules need not look for negative entries there (``NodeContext``)."""
        if self._nonnegative is None:
            found: set[str] = set()
            for node in self.order[1:]:
                sign = self.op(node).sign
                if sign == "nonnegative" or (
                    sign == "keeps" and all(p in found for p in self.inputs_of(node))
                ):
                    found.add(node)
            self._nonnegative = frozenset(found)
        return self._nonnegative

    def _prefers_channels_last(self, dtype: torch.dtype) -> bool:
        """Whether the ops prefer channels-last for ``dtype`` (``ConvNd.prefers_channels_last``);
        the node set is fixed once compiled, so it is looked up once, not on every pass."""
        if self._channels_last_ops is None:
            wanted = {getattr(self.op(n), "prefers_channels_last", None) for n in self.order[1:]}
            self._channels_last_ops = next((w for w in ("always", "onednn") if w in wanted), "")
        return self._channels_last_ops == "always" or (
            self._channels_last_ops == "onednn" and onednn_runs(dtype)
        )

    def inputs_of(self, node: str) -> list[str]:
        """Predecessors of ``node`` in input-slot order (a new list: the caller may keep it).
        The edges are fixed once compiled, so they are sorted once, not on every pass."""
        if self._inputs is None:
            self._inputs = {
                n: [p for p, _, _ in sorted(self.graph.in_edges(n, data="slot"), key=_slot)]
                for n in self.graph.nodes
            }
        return list(self._inputs[node])

    def line_of(self, node: str) -> int | None:
        """The line of ``node`` in the architecture's file (``None`` where not known)."""
        return self.graph.nodes[node].get("line")

    def tensors(self, node: str) -> dict[str, torch.Tensor]:
        return self.graph.nodes[node]["tensors"]

    def current_tensors(self, node: str) -> dict[str, torch.Tensor]:
        """``tensors(node)`` as they are now, for one node of one pass: a folded layer's
        (``canonize.FoldedTensors``) checks its sources on every read, so a pass takes a
        plain dict of them once (``snapshot``) and reads that."""
        tensors = self.tensors(node)
        snapshot = getattr(tensors, "snapshot", None)
        return tensors if snapshot is None else snapshot()

    def num_parameters(self, node: str | None = None) -> int:
        """Parameter count of one node, or of the whole graph."""
        nodes = [node] if node is not None else self.order
        return sum(
            math.prod(shape)
            for n in nodes
            for shape in self.graph.nodes[n]["tensor_shapes"].values()
        )

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, {len(self.order)} nodes, input {list(self.input_shape)}, "
            f"output {list(self.output_shape)}, {self.num_parameters():,} parameters)"
        )

    def summary(self, notes: Mapping[str, str] | None = None) -> str:
        """A table: node, op, inputs, output shape, parameter count, and the total.

        ``notes`` (per node, e.g. ``canonize.fold_notes``) are added to the op column.
        """
        notes = notes or {}
        rows = [("node", "op", "inputs", "output shape", "parameters")]
        for node in self.order:
            data = self.graph.nodes[node]
            rows.append(
                (
                    node,
                    data["op"].type + (f" [{notes[node]}]" if node in notes else ""),
                    ", ".join(self.inputs_of(node)) or "-",
                    "×".join(map(str, data["shape"])),
                    f"{self.num_parameters(node):,}",
                )
            )
        rows.append(("total", "", "", "", f"{self.num_parameters():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for i, row in enumerate(rows):
            cells = [
                c.ljust(w) if j < 4 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    # ------------------------------------------------------------------ tensors
    @property
    def device(self) -> torch.device:
        for node in self.order:
            for t in self.tensors(node).values():
                return t.device
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        for node in self.order:
            for t in self.tensors(node).values():
                return t.dtype
        return self._dtype

    def to(self, *args: Any, **kwargs: Any) -> Graph:
        """Move and/or cast every weight in place, as ``torch.nn.Module.to``; returns the graph.

        Called as ``to(device)``, ``to(dtype)``, ``to(device, dtype)``, ``to(tensor)`` (its
        device and dtype) or with the keywords ``device=`` and ``dtype=``. The dtype must be
        a floating-point one (``float32``, ``float64``, ``bfloat16``, ``float16``).

        Raises
        ------
        ArgumentError
            For an argument that is no device, floating-point dtype or tensor.
        """
        device, dtype = _parse_to(args, kwargs)
        for node in self.order:
            tensors = self.tensors(node)
            for name, t in tensors.items():
                tensors[name] = t.to(device=device, dtype=dtype)
        if device is not None:
            self._device = device
        if dtype is not None:
            self._dtype = dtype
        self.cache.clear()
        self._canonical = None
        return self

    def canonical_view(self, build: Callable[[Graph], Graph]) -> Graph:
        """The view ``build(self)`` (``relgraph.engine.canonize``), built on first use and kept
        until the weights, dtype or device change (``assign``, ``load_weights``, ``to``)."""
        if self._canonical is None:
            self._canonical = build(self)
        return self._canonical

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight as ``{"node.tensor": tensor}`` (PyTorch naming)."""
        return {
            tensor_key(node, name): t
            for node in self.order
            for name, t in self.tensors(node).items()
        }

    def assign(self, state: Mapping[str, torch.Tensor]) -> None:
        """Set weights from ``{"node.tensor": tensor}`` (each cast to and copied onto the
        graph's dtype and device) and drop every cache built from the old ones.

        Every key must name a tensor of the graph, with its shape; nothing is assigned
        otherwise. ``load_weights`` reads, renames and checks a file and calls this.
        """
        targets = []
        for key, value in state.items():
            node, tname = split_key(key, self.graph)
            shapes = self.graph.nodes[node]["tensor_shapes"] if node in self.graph else {}
            if tname not in shapes:
                raise WeightsError(f"'{key}' names no tensor of the graph", file=self.file)
            if tuple(value.shape) != tuple(shapes[tname]):
                raise WeightsError(
                    f"'{key}' is {list(value.shape)}, the graph needs {list(shapes[tname])}",
                    file=self.file,
                )
            if not value.is_floating_point():
                raise WeightsError(f"'{key}' is {value.dtype}, not floating point", file=self.file)
            targets.append((node, tname, value))
        for node, tname, value in targets:
            current = self.tensors(node).get(tname)
            dtype = current.dtype if current is not None else self.dtype
            device = current.device if current is not None else self.device
            self.tensors(node)[tname] = value.detach().to(dtype=dtype, device=device).clone()
        self.cache.clear()
        self._canonical = None

    def load_weights(self, source: str | os.PathLike | dict, *, strict: bool = True) -> LoadReport:
        """Load weights from a file or a state dict and return what was loaded.

        The file is read, renamed and checked by ``relgraph.engine.weights.checked_state_dict`` (see
        there for the formats and ``strict``), then assigned (``assign``). Nodes a Sports-1M
        file cannot hold (``fc8``) keep their values, with a warning.
        """
        state, report = checked_state_dict(self, source, strict=strict)
        self.assign(state)
        if report.not_in_file:
            warnings.warn(
                f"{report.source}: the file has no weights for {', '.join(report.not_in_file)}; "
                "they keep their initial (random) values. Fine-tune or load them before "
                "explaining.",
                stacklevel=2,
            )
        return report

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the weights: safetensors for ``.safetensors``, else a torch state dict."""
        save_weights(self, path)

    # ------------------------------------------------------------------ forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is a batch that fits the graph's input."""
        if not isinstance(x, torch.Tensor):
            raise ShapeError(
                f"input must be a torch.Tensor, got {type(x).__name__}", node=self.input
            )
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise ShapeError(
                f"input has shape {list(x.shape)} but the graph takes "
                f"[batch, {', '.join(map(str, self.input_shape))}]",
                file=self.file,
                node=self.input,
            )
        if x.shape[0] == 0:
            raise ShapeError("input is an empty batch (B = 0)", node=self.input)
        if x.dtype != self.dtype or x.device != self.device:
            raise ShapeError(
                f"input is {x.dtype} on {x.device} but the weights are {self.dtype} on "
                f"{self.device}; convert the input or call graph.to(...)",
                node=self.input,
            )
        if not all_finite(x):
            raise ShapeError("input contains NaN or Inf", node=self.input)
        missing = [
            tensor_key(node, name)
            for node in self.order
            for name in self.graph.nodes[node]["tensor_shapes"]
            if name not in self.tensors(node)
        ]
        if missing:
            raise WeightsError(
                f"the graph has no weights for {', '.join(missing[:6])}"
                + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
                + " (compiled with init='none', or a non-strict load skipped them); "
                "load weights before running it",
                file=self.file,
            )

    def forward(
        self,
        x: torch.Tensor,
        *,
        keep: Iterable[str] | None = None,
        record: Iterable[str] = (),
        channels_last: bool | None = None,
        made: Callable[[str, torch.Tensor], None] | None = None,
    ) -> ForwardResult:
        """Run the graph on a batch ``x`` and keep each node's activation.

        Parameters
        ----------
        x
            Input batch, shaped ``(B, *input_shape)``, on the graph's device and dtype.
        keep
            Names of the nodes whose activation to keep; ``None`` keeps all. The output's
            activation is always kept.
        record
            Nodes whose op should also record what its forward alone knows (max pools:
            the argmax indices) in ``ForwardResult.records``, for the reverse pass.
        channels_last
            ``None``: the layout of ``working_layout``. ``True``: run a 5-D input
            channels-last on CPU in float32 or bfloat16 whatever the ops: for a forward pass
            alone, where it is faster on every shipped 3-D model (the perturbation metrics'
            forward passes: ``evaluation.metrics.model_function``); the values are the same.
        made
            Called with each kept node and its activation as soon as it is made, while it is
            still in the cache (``explain`` takes the rules' per-sample extremes there).
        """
        self.check_input(x)
        keep_set = None if keep is None else set(keep) | {self.output}
        if keep_set is not None:
            check_keep(self, keep_set)
        run = ForwardPass(
            self, x, keep=keep_set, record=record, made=made, channels_last=channels_last
        )
        run.run()
        return ForwardResult(
            output=run.activations[self.output], activations=run.activations, records=run.records
        )

    __call__ = forward

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        """The resolved architecture as plain data (every field explicit)."""
        nodes = []
        for node in self.order[1:]:
            op = self.op(node)
            nodes.append(
                {"name": node, "op": op.type, "inputs": self.inputs_of(node), **op.yaml_fields()}
            )
        data: dict[str, Any] = {"name": self.name}
        if self.spec.description:
            data["description"] = self.spec.description
        if self.params:
            data["params"] = dict(self.params)
        data["input"] = {"name": self.input, "shape": list(self.input_shape)}
        data["nodes"] = nodes
        data["output"] = self.output
        if self.default_rules:
            data["rules"] = self.default_rules
        if self.default_preprocess:
            data["preprocess"] = self.default_preprocess
        if not self.canonize:
            data["canonize"] = False
        return data

    def to_yaml(self) -> str:
        """YAML that ``load_architecture`` reads back into an identical graph.

        Parameter references are written as their values; ``params`` records them.
        """

        class _Dumper(yaml.SafeDumper):
            pass

        def short_list(dumper, value):
            flow = all(not isinstance(v, (list, dict)) for v in value)
            return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

        _Dumper.add_representer(list, short_list)
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- compile

#: most elements one activation (per clip) or one parameter tensor may have, and most
#: parameters ``init="default"`` creates: 2³¹ (8 GiB in float32). C3D needs 2²⁶ at most; a
#: typo such as ``out_channels: 5120000`` must be refused here, not kill the process later.
MAX_ELEMENTS = 2**31


def _parse_to(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and dtype of ``Graph.to``'s arguments (``torch.nn.Module.to``'s forms)."""
    unknown = sorted(set(kwargs) - {"device", "dtype"})
    if unknown:
        raise ArgumentError(f"to() takes device= and dtype=, not {unknown[0]}=")
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    if len(args) > 2:
        raise ArgumentError(f"to() takes at most a device and a dtype, got {len(args)} arguments")
    for arg in args:
        if isinstance(arg, torch.Tensor):
            device, dtype = arg.device, arg.dtype
        elif isinstance(arg, torch.dtype):
            dtype = arg
        else:
            device = arg
    if device is not None and not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ArgumentError(
                f"to() takes a device ('cpu', 'cuda', 'cuda:N', a torch.device), a dtype or a "
                f"tensor; got {device!r}"
            ) from None
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ArgumentError(f"to() takes a floating-point dtype, got {dtype!r}")
    return device, dtype


def _check_size(what: str, shape: tuple[int, ...]) -> None:
    if math.prod(shape) > MAX_ELEMENTS:
        raise OpDefinitionError(
            f"{what} would have shape {list(shape)}: {math.prod(shape):,} values, more than "
            f"the {MAX_ELEMENTS:,} relgraph accepts; check the sizes in this node"
        )


def _field_line(node_spec, field_name: str | None) -> int | None:
    if field_name and field_name in node_spec.field_lines:
        return node_spec.field_lines[field_name]
    return node_spec.line


def compile_spec(
    spec: ArchSpec,
    *,
    init: str = "default",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Graph:
    """Compile an ``ArchSpec`` into a ``Graph``: structure, ops, shapes, weights.

    Parameters
    ----------
    init
        ``"default"`` draws PyTorch's default initialisation (seeded by ``seed``);
        ``"none"`` creates no tensors (for inspecting structure only).
    """
    try:
        return _compile_spec(spec, init=init, seed=seed, dtype=dtype, device=device)
    except RelgraphError as exc:
        raise with_block_origin(exc, spec) from None


def _compile_spec(spec: ArchSpec, *, init, seed, dtype, device) -> Graph:
    if init not in ("default", "none"):
        raise ArgumentError(f"init must be 'default' or 'none', got {init!r}")
    file = spec.file
    if math.prod(spec.input_shape) > MAX_ELEMENTS:
        raise ShapeError(
            f"the input shape {list(spec.input_shape)} has {math.prod(spec.input_shape):,} "
            f"values per clip, more than the {MAX_ELEMENTS:,} relgraph accepts",
            file=file,
            line=spec.input_line,
            node=spec.input_name,
        )
    graph = nx.DiGraph()
    graph.add_node(
        spec.input_name, op=Input(shape=list(spec.input_shape)), line=spec.input_line, index=0
    )
    by_name = {spec.input_name: None}
    for index, node_spec in enumerate(spec.nodes, start=1):
        where = {"file": file, "line": node_spec.line, "node": node_spec.name}
        if node_spec.name in by_name:
            first = by_name[node_spec.name]
            first_line = spec.input_line if first is None else first.line
            raise GraphError(f"duplicate node name (first declared on line {first_line})", **where)
        by_name[node_spec.name] = node_spec
        op_cls = OPS.get(node_spec.op)
        if op_cls is None or op_cls is Input:
            choices = [k for k in OPS if k != "input"]
            raise SpecError(
                f"unknown op '{node_spec.op}'{did_you_mean(node_spec.op, choices)} "
                f"(known ops: {', '.join(choices)})",
                file=file,
                line=_field_line(node_spec, "op"),
                node=node_spec.name,
            )
        try:
            op = op_cls(**node_spec.fields)
        except OpDefinitionError as exc:
            raise SpecError(
                str(exc), file=file, line=_field_line(node_spec, exc.field), node=node_spec.name
            ) from None
        n_inputs = len(node_spec.inputs)
        if op.arity is None and n_inputs < 2:
            raise SpecError(f"{op.type} needs two or more inputs, got {node_spec.inputs}", **where)
        if op.arity is not None and n_inputs != op.arity:
            raise SpecError(
                f"{op.type} takes exactly {op.arity} input{'' if op.arity == 1 else 's'}, "
                f"got {node_spec.inputs}",
                **where,
            )
        if len(set(node_spec.inputs)) != n_inputs:
            raise SpecError(f"an input is named twice in {node_spec.inputs}", **where)
        graph.add_node(node_spec.name, op=op, line=node_spec.line, index=index)

    for node_spec in spec.nodes:
        line = _field_line(node_spec, "inputs")
        for slot, source in enumerate(node_spec.inputs):
            if source not in by_name:
                raise GraphError(
                    f"input '{source}' names no node{did_you_mean(source, by_name)}",
                    file=file,
                    line=line,
                    node=node_spec.name,
                )
            graph.add_edge(source, node_spec.name, slot=slot)

    if not nx.is_directed_acyclic_graph(graph):
        cycle = [u for u, _ in nx.find_cycle(graph)]
        first = by_name[cycle[0]]
        raise GraphError(
            "the graph has a cycle: " + " → ".join([*cycle, cycle[0]]),
            file=file,
            line=first.line if first else spec.input_line,
            node=cycle[0],
        )
    if spec.output not in by_name:
        raise GraphError(
            f"'output' names no node: '{spec.output}'{did_you_mean(spec.output, by_name)}",
            file=file,
            line=spec.output_line,
        )
    feeding = nx.ancestors(graph, spec.output) | {spec.output}
    for node_spec in spec.nodes:
        if node_spec.name not in feeding:
            raise GraphError(
                f"node does not lead to the output '{spec.output}'; remove it or connect it",
                file=file,
                line=node_spec.line,
                node=node_spec.name,
            )
    for node in graph.nodes:
        if node != spec.input_name and spec.input_name not in nx.ancestors(graph, node):
            node_spec = by_name[node]
            raise GraphError(
                "node is not reached from the input", file=file, line=node_spec.line, node=node
            )

    compiled = Graph(graph, spec)
    compiled._dtype = dtype
    generator = torch.Generator().manual_seed(seed)
    total_parameters = 0
    graph.nodes[spec.input_name].update(shape=tuple(spec.input_shape), tensor_shapes={})
    for node in compiled.order[1:]:
        data = graph.nodes[node]
        op = data["op"]
        in_shapes = [graph.nodes[p]["shape"] for p in compiled.inputs_of(node)]
        try:
            op.resolve(in_shapes)
            tensor_shapes = op.tensor_shapes(in_shapes)
            for tensor_name, shape in tensor_shapes.items():
                _check_size(f"its {tensor_name} tensor", shape)
            data["shape"] = infer_output_shape(op, in_shapes, tensor_shapes)
            _check_size("its output", data["shape"])
        except OpDefinitionError as exc:
            raise ShapeError(
                str(exc), file=file, line=_field_line(by_name[node], exc.field), node=node
            ) from None
        data["tensor_shapes"] = tensor_shapes
        total_parameters += sum(math.prod(shape) for shape in tensor_shapes.values())
        if init == "default" and total_parameters > MAX_ELEMENTS:
            # refused before any weight exists: nothing is allocated for a graph this large
            raise ShapeError(
                f"the graph has more than {MAX_ELEMENTS:,} parameters up to this node, too many "
                "to create; check the channel and feature counts (init='none' compiles the "
                "structure without creating weights)",
                file=file,
                line=by_name[node].line,
                node=node,
            )
    for node in compiled.order:
        data = graph.nodes[node]
        data["tensors"] = (
            {}
            if init == "none"
            else data["op"].init_tensors(data["tensor_shapes"], generator, dtype)
        )
    if device is not None:
        compiled.to(device=device)
    return compiled


# --------------------------------------------------------------------------- loading


def shipped_architectures() -> list[str]:
    """Names of the architectures shipped with relgraph."""
    return shipped_names("architecture")


def architecture_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file for a shipped architecture name, or the given path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text or Path(text).exists():
        path = Path(text)
        if not path.is_file():
            raise SpecError("architecture file not found", file=text)
        return path
    return shipped_path("architecture", text)


_NODE_ITEM = re.compile(r"""^\s*-\s*\{?\s*name\s*:\s*["']?([^"',}\s]+)""")
_TOP_LEVEL_KEY = re.compile(r"^[A-Za-z_][\w-]*\s*:")


def _node_around(text: str, line: int) -> str | None:
    """The node whose YAML lines contain ``line``, read off the text (it did not parse)."""
    lines = text.splitlines()
    for number in range(min(line, len(lines)), 0, -1):
        found = _NODE_ITEM.match(lines[number - 1])
        if found:
            return found.group(1)
        if _TOP_LEVEL_KEY.match(lines[number - 1]):
            return None  # reached 'nodes:' or another section: not inside a node
    return None


def parse_architecture(text: str, file: str = "<string>", **params: Any) -> ArchSpec:
    """Parse YAML text into an ``ArchSpec`` with ``params`` applied."""
    try:
        data = load_yaml(text, file)
    except SpecError as exc:
        if exc.node is None and exc.line is not None:
            node = _node_around(text, exc.line)
            if node is not None:
                raise SpecError(exc.message, file=exc.file, line=exc.line, node=node) from None
        raise
    return parse_spec(data, file, params)


def _slot(edge: tuple[str, str, int]) -> int:
    return edge[2]


def load_architecture(
    name_or_path: str | os.PathLike,
    *,
    init: str = "default",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    **params: Any,
) -> Graph:
    """Load a shipped architecture by name (``"c3d"``) or a YAML file, and compile it.

    Parameters
    ----------
    name_or_path
        A shipped name (see ``shipped_architectures()``) or a path to a YAML file.
    init, seed, dtype, device
        How to create the initial weights (see ``compile_spec``).
    **params
        Values for the parameters the architecture declares, e.g. ``num_classes=10``.

    Raises
    ------
    RelgraphError
        With file, line and node for anything wrong in the file.
    """
    path = architecture_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the architecture file: {exc}", file=str(path)) from None
    spec = parse_architecture(text, str(path), **params)
    return compile_spec(spec, init=init, seed=seed, dtype=dtype, device=device)


def architecture_from_yaml(text: str, *, file: str = "<string>", **kwargs: Any) -> Graph:
    """Compile an architecture given as YAML text (see ``load_architecture``)."""
    compile_kwargs = {k: kwargs.pop(k) for k in ("init", "seed", "dtype", "device") if k in kwargs}
    return compile_spec(parse_architecture(text, file, **kwargs), **compile_kwargs)
