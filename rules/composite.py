"""Composites: which rule each node gets. Selectors map nodes to rules; later entries win.

A preset is a YAML file::

    name: deep-taylor-paper
    extends: base                 # optional: entries of another preset come first
    output_relevance: onehot      # optional: where the reverse pass starts (onehot, logit)
    rules:
      - {ops: ["conv*", linear], rule: {name: zplus, stabilizer: zero}}
      - {nodes: first, rule: {name: zbeta, bounds: preprocess}}

Selector keys (all given must match): ``nodes`` (names or glob patterns; ``first``: the
mixing affine nodes (conv, linear; not batch norm) with no mixing affine node before them;
``before-first``: the nodes between the input and those, e.g. a batch norm on the raw input;
``last``: the affine nodes with no affine node after them) and ``ops`` (op types or glob
patterns).
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from relgraph.engine.canonize import canonical
from relgraph.engine.capabilities import Affine, Channelwise, op_has
from relgraph.engine.spec import line_of, load_yaml
from relgraph.errors import RuleError, did_you_mean
from relgraph.io.resources import shipped_names, shipped_path

from .registry import RULES, Rule, make_rule

if TYPE_CHECKING:
    from relgraph.engine.graph import Graph

SELECTOR_KEYS = ("nodes", "ops")
ENTRY_KEYS = (*SELECTOR_KEYS, "rule")
PRESET_KEYS = ("name", "description", "extends", "output_relevance", "rules")
OUTPUT_RELEVANCES = ("onehot", "logit")


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class Selector:
    """Which nodes an entry applies to; every given criterion must hold."""

    nodes: tuple[str, ...] | None = None
    ops: tuple[str, ...] | None = None

    def matches(self, graph: Graph, types: dict[str, str] | None = None) -> set[str]:
        """Names of the matching nodes (the input node never matches); ``types``: each
        node's op type where the caller has them (``Composite.resolve``, for every entry)."""
        candidates = set(graph.order[1:])
        if self.nodes is not None:
            chosen: set[str] = set()
            for pattern in self.nodes:
                if pattern == "first":
                    chosen |= _boundary_affine(graph, first=True)
                elif pattern == "before-first":
                    chosen |= _before_first(graph)
                elif pattern == "last":
                    chosen |= _boundary_affine(graph, first=False)
                else:
                    chosen |= {n for n in candidates if fnmatch.fnmatchcase(n, pattern)}
            candidates &= chosen
        if self.ops is not None:
            # the patterns tried on each op type once, not on each node
            ops = {n: graph.op(n).type if types is None else types[n] for n in candidates}
            wanted = {
                t for t in set(ops.values()) if any(fnmatch.fnmatchcase(t, p) for p in self.ops)
            }
            candidates = {n for n, t in ops.items() if t in wanted}
        return candidates

    def describe(self) -> str:
        parts = []
        if self.nodes is not None:
            parts.append("nodes " + ", ".join(self.nodes))
        if self.ops is not None:
            parts.append("ops " + ", ".join(self.ops))
        return "; ".join(parts) or "every node"


def _boundary_affine(graph: Graph, *, first: bool) -> set[str]:
    """``first``: the mixing affine nodes (conv, linear: affine but not ``channelwise``) with
    no mixing affine node before them, so that on input → batch norm → conv the conv is first
    (zennit's ``SpecialFirstLayerMapComposite`` likewise picks the first conv or linear layer).
    ``last``: the affine nodes (batch norm included) with no affine node after them."""
    affine = {n for n in graph.order if isinstance(graph.op(n), Affine)}
    if first:
        mixing = {n for n in affine if not isinstance(graph.op(n), Channelwise)}
        return {n for n in mixing if not (nx.ancestors(graph.graph, n) & mixing)}
    return {n for n in affine if not (nx.descendants(graph.graph, n) & affine)}


def _before_first(graph: Graph) -> set[str]:
    """The nodes between the input and the ``first`` nodes (their ancestors, input left out)."""
    ancestors: set[str] = set()
    for node in _boundary_affine(graph, first=True):
        ancestors |= nx.ancestors(graph.graph, node)
    return ancestors - {graph.order[0]}


@dataclass(frozen=True)
class Entry:
    """One line of a composite: a selector and the rule (or rule spec) it assigns."""

    selector: Selector
    rule: Any
    file: str | None = None
    line: int | None = None


@dataclass
class Composite:
    """An ordered list of (selector, rule) entries; for each node the last match wins.

    Build one from a preset (``preset("deep-taylor-paper")``), a YAML file, or in Python,
    and refine it with ``override``.
    """

    entries: list[Entry] = field(default_factory=list)
    name: str = "custom"
    description: str = ""
    output_relevance: str | None = None

    def override(
        self,
        nodes: str | Iterable[str] | None = None,
        rule: Rule | str | dict | None = None,
        *,
        ops: str | Iterable[str] | None = None,
    ) -> Composite:
        """A new composite with ``rule`` for the selected nodes on top of this one.

        Examples
        --------
        >>> composite = preset("deep-taylor-paper").override("conv5b", Epsilon(0.25))
        >>> composite = composite.override(ops="maxpool*", rule="proportional")
        """
        if rule is None:
            raise RuleError("override needs a rule")
        if nodes is None and ops is None:
            raise RuleError("override needs nodes=... or ops=...")
        try:
            built = make_rule(rule)
        except RuleError as exc:
            names = _as_tuple(nodes)
            raise RuleError(exc.message, node=", ".join(names) if names else None) from None
        entry = Entry(Selector(_as_tuple(nodes), _as_tuple(ops)), built)
        return Composite(
            [*self.entries, entry], self.name + "+override", self.description, self.output_relevance
        )

    def resolve(self, graph: Graph, *, preprocess: str | None = None) -> dict[str, Rule]:
        """The rule of every node of ``graph`` (input excluded), checked against its op.

        Parameters
        ----------
        preprocess
            The preprocessing preset in use (zβ bounds follow from it); defaults to the
            architecture's.
        """
        preprocess = preprocess or graph.default_preprocess
        chosen: dict[str, Entry] = {}
        types = {n: graph.op(n).type for n in graph.order[1:]}
        for entry in self.entries:
            for node in entry.selector.matches(graph, types):
                chosen[node] = entry
        _warn_folded(self, graph)
        rules: dict[str, Rule] = {}
        for node in graph.order[1:]:
            op = graph.op(node)
            line = graph.line_of(node)
            if node not in chosen:
                raise RuleError(
                    f"composite '{self.name}' gives no rule to this {op.type} node; add an "
                    f"entry for it (e.g. override('{node}', ...))",
                    file=graph.file,
                    line=line,
                    node=node,
                )
            entry = chosen[node]
            rule = make_rule(entry.rule, file=entry.file, line=entry.line)
            if not rule.fits(op):
                # a rule whose requirements depend on its parameters (combine) has a
                # property, not a tuple, as its class attribute: it is left out of the hint
                fitting = sorted(
                    n
                    for n, cls in RULES.items()
                    if isinstance(cls.requires, tuple) and any(op_has(op, c) for c in cls.requires)
                )
                where = f" ({entry.file}:{entry.line})" if entry.file else ""
                raise RuleError(
                    f"rule '{rule.name}'{where} does not fit a {op.type} node; rules that do: "
                    f"{', '.join(fitting)}",
                    file=graph.file,
                    line=line,
                    node=node,
                )
            try:
                rules[node] = rule.bind(preprocess=preprocess, graph=graph, node=node)
            except RuleError as exc:
                raise RuleError(
                    exc.message, file=entry.file or graph.file, line=entry.line, node=node
                ) from None
        return rules

    def table(
        self, graph: Graph, *, preprocess: str | None = None, canonize: bool | None = None
    ) -> str:
        """A table of which rule each node gets, on the graph the rules run on: batch norms
        folded (``relgraph.engine.canonize``) unless ``canonize`` is false (default: the
        architecture's). A folded batch norm is listed with the layer it was folded into: it
        has no rule of its own, and a rule aimed at it has no effect."""
        view = canonical(graph, canonize)
        rules = self.resolve(view, preprocess=preprocess)
        folded = getattr(view, "folded", {})
        rows = [("node", "op", "rule")]
        for n in graph.order[1:]:
            if n in folded:
                rows.append((n, graph.op(n).type, f"- (folded into {folded[n]})"))
            else:
                op = view.op(n).type + (" +bn" if n in folded.values() else "")
                rows.append((n, op, rules[n].describe()))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _warn_folded(composite: Composite, graph: Graph) -> None:
    """Warn about entries that name (not pattern-match) a batch norm the canonized ``graph``
    folded away: such a rule has no effect."""
    folded = getattr(graph, "folded", {})
    named = sorted(
        {
            n
            for entry in composite.entries
            for n in entry.selector.nodes or ()
            if n in folded and not any(c in n for c in "*?[")
        }
    )
    if named:
        warnings.warn(
            f"composite '{composite.name}' has a rule for {', '.join(named)}, folded into "
            f"{', '.join(folded[n] for n in named)} by canonization: it has no effect (aim it "
            "at the layer, or pass canonize=False / set 'canonize: false')",
            stacklevel=3,
        )


# --------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    """Names of the shipped rule presets."""
    return shipped_names("preset")


def _preset_path(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise RuleError("rule preset file not found", file=text)
        return path
    return shipped_path("preset", text)


#: parsed presets by file: (the files it was read from with their stat, the composite)
_PRESET_CACHE: dict[str, tuple[tuple[tuple[str, int, int], ...], Composite]] = {}


def _stat(file: str) -> tuple[str, int, int]:
    try:
        info = os.stat(file)
    except OSError:
        return (file, -1, -1)
    return (file, info.st_mtime_ns, info.st_size)


def preset(name_or_path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> Composite:
    """Load a rule preset by name (``"deep-taylor-paper"``) or from a YAML file.

    A preset is parsed once and kept while its file (and every file it extends) is unchanged
    (same modification time and size): ``explain(graph, x, rules="epsilon-plus")`` called clip
    after clip does not read and check the YAML again each time. Each call returns a new
    ``Composite`` (its list of entries is its own)."""

    file = str(_preset_path(name_or_path))
    if file in _seen:
        raise RuleError(
            "presets extend each other in a circle: " + " → ".join([*_seen, file]), file=file
        )
    cached = _PRESET_CACHE.get(file)
    if cached is None or any(_stat(entry[0]) != entry for entry in cached[0]):
        cached = _PRESET_CACHE[file] = _read_preset(file, _seen)
    composite = cached[1]
    return Composite(
        list(composite.entries),
        composite.name,
        composite.description,
        composite.output_relevance,
    )


def _read_preset(
    file: str, _seen: tuple[str, ...]
) -> tuple[tuple[tuple[str, int, int], ...], Composite]:
    """Parse and check a preset file: (the files read with their stat, the composite)."""
    path = Path(file)
    files = [_stat(file)]
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), file)
    except OSError as exc:
        raise RuleError(f"cannot read the preset: {exc}", file=file) from None
    except Exception as exc:  # SpecError from the YAML reader: same message, rule error class
        raise RuleError(
            getattr(exc, "message", str(exc)), file=file, line=getattr(exc, "line", None)
        ) from None
    if not isinstance(data, dict) or "rules" not in data:
        raise RuleError(
            "a rule preset must be a mapping with a 'rules' list", file=file, line=line_of(data)
        )
    for key in data:
        if key == "seed":  # the name this field had before
            raise RuleError(
                "the field 'seed' is now called 'output_relevance' (onehot or logit)",
                file=file,
                line=line_of(data, key),
            )
        if key not in PRESET_KEYS:
            raise RuleError(
                f"unknown field '{key}'{did_you_mean(key, PRESET_KEYS)} "
                f"(allowed: {', '.join(PRESET_KEYS)})",
                file=file,
                line=line_of(data, key),
            )
    entries: list[Entry] = []
    output_relevance = data.get("output_relevance")
    if output_relevance is not None and output_relevance not in OUTPUT_RELEVANCES:
        raise RuleError(
            f"output_relevance must be one of {', '.join(OUTPUT_RELEVANCES)}, "
            f"got {output_relevance!r}",
            file=file,
            line=line_of(data, "output_relevance"),
        )
    extends = data.get("extends")
    if extends:
        if not isinstance(extends, str):
            raise RuleError(
                f"'extends' must be a preset name or a YAML path, got {extends!r}",
                file=file,
                line=line_of(data, "extends"),
            )
        # a path is read relative to the preset that names it, not to the working directory
        sibling = path.parent / extends
        is_path = extends.endswith((".yaml", ".yml")) or os.sep in extends
        parent_file = str(_preset_path(sibling if is_path and sibling.is_file() else extends))
        parent = preset(parent_file, (*_seen, file))
        files += _PRESET_CACHE[parent_file][0]
        entries += parent.entries
        output_relevance = output_relevance or parent.output_relevance
    if not isinstance(data["rules"], list):
        raise RuleError("'rules' must be a list of entries", file=file, line=line_of(data, "rules"))
    for item in data["rules"]:
        line = line_of(item)
        if not isinstance(item, dict) or "rule" not in item:
            raise RuleError(
                "each entry needs 'rule' and a selector ('nodes' and/or 'ops')",
                file=file,
                line=line,
            )
        for key in item:
            if key not in ENTRY_KEYS:
                raise RuleError(
                    f"unknown field '{key}' in a rule entry{did_you_mean(key, ENTRY_KEYS)} "
                    f"(allowed: {', '.join(ENTRY_KEYS)})",
                    file=file,
                    line=line_of(item, key),
                )
        if not any(k in item for k in SELECTOR_KEYS):
            raise RuleError("a rule entry needs 'nodes' or 'ops'", file=file, line=line)
        values = {}
        for key in SELECTOR_KEYS:
            value = item.get(key)
            if value is not None and not (
                isinstance(value, str)
                or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            ):
                raise RuleError(
                    f"'{key}' must be a name or a list of names, got {value!r}",
                    file=file,
                    line=line_of(item, key),
                )
            values[key] = _as_tuple(value)
        rule = make_rule(item["rule"], file=file, line=line_of(item, "rule"))  # checked now
        entries.append(Entry(Selector(**values), rule, file, line))
    composite = Composite(
        entries, data.get("name", path.stem), data.get("description", ""), output_relevance
    )
    return tuple(files), composite


def as_composite(rules: Composite | str | os.PathLike | dict | None, graph: Graph) -> Composite:
    """Accept a composite, a preset name or path, or ``{node or pattern: rule}`` on top of the
    graph's default preset."""
    if isinstance(rules, Composite):
        return rules
    if rules is None:
        return preset(graph.default_rules or "epsilon-plus")
    if isinstance(rules, dict):
        composite = preset(graph.default_rules or "epsilon-plus")
        for target, rule in rules.items():
            composite = composite.override(target, rule)
        return composite
    return preset(rules)
