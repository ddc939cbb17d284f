"""The one skeleton of every pass over a graph: a loop over nodes with per-node hooks.

Modelled on ``torch.fx.Interpreter``: a pass walks the nodes in its order (topological for a
forward pass, reversed for a reverse pass) and hands each to ``run_node``, keeping its
values in an environment keyed by node. ``ForwardPass`` runs the ops; ``ReversePass`` hands
each node's relevance to its rule and the result on to the node's inputs. Passes that
differ (the frozen-clip shortcut's compact activations and temporal crops, for instance)
override the hooks, not the loop. Any exception raised by an op or a rule leaves the pass
naming the node and its line in the architecture's file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from relgraph.engine.hostmemory import release_freed
from relgraph.errors import GraphError, RelgraphError, RuleError, did_you_mean
from relgraph.rules.context import NodeContext
from relgraph.rules.numerics import PLAIN, Numerics
from relgraph.rules.registry import NEEDS, Rule

if TYPE_CHECKING:
    from relgraph.engine.graph import Graph

#: exceptions that keep their type when they leave a pass (the node is added as a note)
_KEEP_TYPE = (MemoryError, torch.OutOfMemoryError, KeyboardInterrupt)


def at_node(graph: Graph, node: str, exc: BaseException) -> BaseException:
    """``exc`` as it should leave a pass that was at ``node``: a relgraph error that names no
    node is raised again naming the node and its line in the graph's file; any other error
    becomes a ``RelgraphError`` of the same stage that names them and the original type
    (chained to the original); an out-of-memory error or an interrupt keeps its type, with
    the node in a note."""
    line = graph.line_of(node)
    if isinstance(exc, RelgraphError):
        if exc.node is not None:
            return exc
        return type(exc)(exc.message, file=exc.file or graph.file, line=line, node=node)
    if isinstance(exc, _KEEP_TYPE):
        where = f"{graph.file}:{line}" if graph.file and line else graph.file or "<graph>"
        if hasattr(exc, "add_note"):
            exc.add_note(f"at {where}: node '{node}'")
        return exc
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return RelgraphError(
        f"{type(exc).__name__} in node '{node}' ({graph.op(node).type}): {message}",
        file=graph.file,
        line=line,
        node=node,
    )


class Interpreter:
    """A pass over ``graph``'s nodes: ``run`` calls ``run_node`` on each node of ``nodes()``
    in turn, under ``torch.inference_mode``, then returns ``result()``."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def nodes(self) -> Iterable[str]:
        """The nodes the pass visits, in order."""
        raise NotImplementedError

    def run_node(self, node: str) -> None:
        """Visit one node."""
        raise NotImplementedError

    def result(self) -> Any:
        """What ``run`` returns."""
        return None

    def run(self) -> Any:
        with torch.inference_mode():
            for node in self.nodes():
                try:
                    self.run_node(node)
                except BaseException as exc:
                    located = at_node(self.graph, node, exc)
                    if located is exc:
                        raise
                    raise located from exc
            return self.result()


class ForwardPass(Interpreter):
    """Run the ops in topological order, keeping each node's activation (``Graph.forward``).

    Parameters
    ----------
    keep
        The nodes whose activation to keep (the output's always is); ``None`` keeps all.
        With ``keep`` given, an op with ``in_place`` writes into its first input's memory
        when that input dies with it: nobody else reads it, it is not kept, and no other live
        activation (a view, an identity's output) or the caller's ``x`` shares it.
    record
        Nodes whose op also records what its forward alone knows (max pools: the argmax
        indices), for the reverse pass.
    made
        Called with each kept node and its activation as soon as it is made.
    channels_last
        The layout to run in (``Graph.working_layout``).
    """

    def __init__(
        self,
        graph: Graph,
        x: torch.Tensor,
        *,
        keep: set[str] | None = None,
        record: Iterable[str] = (),
        made: Callable[[str, torch.Tensor], None] | None = None,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__(graph)
        self.keep = keep
        self.record = set(record)
        self.made = made
        self.low_memory = graph.cache_policy == "none"
        self.remaining = {n: graph.graph.out_degree(n) for n in graph.order}
        self.records: dict[str, Any] = {}
        # the caller's x is never written, whatever layout the pass runs in
        self.sharing = _StorageUse(x) if keep is not None else None
        with torch.inference_mode():
            x = graph.working_layout(x, channels_last)
            self.activations: dict[str, torch.Tensor] = {graph.input: x}
            if self.sharing is not None:
                self.sharing.add(x)
            if made is not None and (keep is None or graph.input in keep):
                made(graph.input, x)

    def nodes(self) -> Iterable[str]:
        return self.graph.order[1:]

    def run_node(self, node: str) -> None:
        graph, activations, keep = self.graph, self.activations, self.keep
        preds = graph.inputs_of(node)
        inputs = [activations[p] for p in preds]
        op = graph.op(node)
        tensors = graph.current_tensors(node)
        sharing = self.sharing
        if node in self.record:
            output, self.records[node] = op.forward_record(inputs, tensors)
        elif (
            sharing is not None
            and op.in_place
            and self.remaining[preds[0]] == 1
            and preds[0] not in keep
            and sharing.alone(inputs[0])
        ):
            output = op.forward_in_place(inputs, tensors)
        else:
            output = op.forward(inputs, tensors)
        activations[node] = output
        if sharing is not None:
            sharing.add(output)
        if self.made is not None and (keep is None or node in keep):
            self.made(node, output)
        if keep is not None:
            for p in preds:
                self.remaining[p] -= 1
                if self.remaining[p] == 0 and p not in keep:
                    sharing.remove(activations.pop(p))
        if self.low_memory:
            del inputs
            release_freed()


class _StorageUse:
    """How many live activations use each storage, and whether a tensor's is shared with the
    caller's input (which is never written)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.protected = self._key(x)
        self.counts: dict[int, int] = {}

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def add(self, t: torch.Tensor) -> None:
        key = self._key(t)
        self.counts[key] = self.counts.get(key, 0) + 1

    def remove(self, t: torch.Tensor) -> None:
        key = self._key(t)
        self.counts[key] -= 1
        if self.counts[key] == 0:
            del self.counts[key]

    def alone(self, t: torch.Tensor) -> bool:
        key = self._key(t)
        return key != self.protected and self.counts.get(key, 0) == 1


def rule_needs(rule: Rule) -> frozenset[str]:
    """What ``rule`` declares it reads from the forward pass (``Rule.needs``), checked."""

    needs = rule.needs
    unknown = set(needs) - NEEDS
    if unknown:
        raise RuleError(
            f"rule {rule.describe()} needs {sorted(unknown)}, which the forward pass does not "
            f"offer (it offers {sorted(NEEDS)})"
        )
    return frozenset(needs)


@dataclass
class Visit:
    """What a reverse pass hands a node's rule: the relevance of its output and what the rule
    reads of the forward pass, plus what the pass itself needs to hand the result on."""

    relevance: torch.Tensor
    input_shapes: list[torch.Size]
    inputs: list[torch.Tensor | None]
    output: torch.Tensor | None = None
    record: Any = None
    #: the pass will not read ``relevance`` again and no other tensor shares its memory
    owned: bool = False
    #: the pass's own bookkeeping for this node (crops, totals)
    extra: dict[str, Any] = field(default_factory=dict)


class ReversePass(Interpreter):
    """Walk the graph in reverse topological order, one rule per node.

    A subclass says what reaches a node (``arrive``: ``None`` when nothing does, else a
    ``Visit``) and what becomes of the relevance the rule hands on (``depart``); the rule's
    context is built here alone (``context``).
    """

    def __init__(
        self,
        graph: Graph,
        node_rules: dict[str, Rule],
        numerics: Numerics = PLAIN,
        *,
        channels_last: bool = False,
    ) -> None:
        super().__init__(graph)
        self.node_rules = node_rules
        self.numerics = numerics
        self.channels_last = channels_last
        self.needs = {node: rule_needs(rule) for node, rule in node_rules.items()}
        self.nonnegative = graph.nonnegative_nodes()
        self.low_memory = graph.cache_policy == "none"
        # cache_policy "none": a memo that lives for one node only (see Graph.cache_policy)
        self.cache = {} if self.low_memory else graph.cache

    def nodes(self) -> Iterable[str]:
        return reversed(self.graph.order[1:])

    def arrive(self, node: str) -> Visit | None:
        raise NotImplementedError

    def depart(self, node: str, visit: Visit, contributions: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def context(self, node: str, visit: Visit) -> NodeContext:
        """The rule's view of ``node`` (the one place a ``NodeContext`` is made)."""
        needs = self.needs[node]
        preds = self.graph.inputs_of(node)
        return NodeContext(
            node=node,
            op=self.graph.op(node),
            inputs=visit.inputs if "inputs" in needs else [None] * len(preds),
            input_shapes=visit.input_shapes,
            output=visit.output if "output" in needs else None,
            tensors=self.graph.current_tensors(node),
            cache=self.cache,
            record=visit.record,
            low_memory=self.low_memory,
            nonnegative_inputs=tuple(p in self.nonnegative for p in preds),
            channels_last=self.channels_last,
            relevance_owned=visit.owned,
            numerics=self.numerics,
        )

    def run_node(self, node: str) -> None:
        visit = self.arrive(node)
        if visit is None:
            return
        ctx = self.context(node, visit)
        contributions = self.node_rules[node](ctx, visit.relevance)
        del ctx
        self.depart(node, visit, contributions)
        del visit, contributions
        if self.low_memory:  # the memory mode: hand what the node freed back to the system
            release_freed()


def check_keep(graph: Graph, keep: set[str]) -> None:
    """Refuse a ``keep`` that names no node."""
    unknown = sorted(keep - set(graph.graph))
    if unknown:
        raise GraphError(
            f"keep names no node: '{unknown[0]}'{did_you_mean(unknown[0], graph.order)}",
            file=graph.file,
        )
