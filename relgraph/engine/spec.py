"""Architecture specs: YAML read with line numbers, parameters substituted, fields checked.

A spec is plain data (``ArchSpec`` holding ``NodeSpec``s); ``relgraph.compile_spec`` turns it
into a ``Graph``. Every error names the file, the YAML line and the node.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relgraph.errors import RelgraphError, SpecError, did_you_mean

ARCH_KEYS = (
    "name",
    "description",
    "params",
    "blocks",
    "input",
    "nodes",
    "output",
    "rules",
    "preprocess",
    "canonize",
)
NODE_KEYS = ("name", "op", "inputs")
#: keys of a block instantiation that are not block parameters
INSTANCE_KEYS = ("name", "block", "inputs", "repeat", "when")
BLOCK_KEYS = ("params", "input", "nodes", "output")
#: deepest nesting of blocks inside blocks (a block that instantiates itself hits it)
MAX_BLOCK_DEPTH = 16
#: most nodes one architecture may expand to
MAX_EXPANDED_NODES = 100_000


class _Located(dict):
    """A YAML mapping that remembers its line and the line of each key."""

    line: int = 0
    key_lines: dict[str, int]


class _Seq(list):
    line: int = 0


class _Loader(yaml.SafeLoader):
    """SafeLoader that records lines and rejects duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Located:
    loader.flatten_mapping(node)
    mapping = _Located()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise SpecError(
                f"mapping key {key!r} must be a plain name", file=loader.name, line=line
            )
        if key in mapping:
            raise SpecError(
                f"duplicate key '{key}' (first on line {mapping.key_lines[key]})",
                file=loader.name,
                line=line,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = line
    return mapping


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    seq = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    seq.line = node.start_mark.line + 1
    return seq


# YAML 1.1 reads ``1e-5`` (no dot) as a string; accept the exponent forms people write.
_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str, file: str) -> Any:
    """Parse YAML text; mappings come back as dicts carrying ``line`` and ``key_lines``."""
    loader = None
    try:
        # the reader checks the characters as it is built: keep it inside the try
        loader = _Loader(text)
        loader.name = file
        return loader.get_single_data()
    except SpecError:
        raise
    except RecursionError:
        raise SpecError("not valid YAML: nested too deeply", file=file) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML lets these out for e.g. "\U99999999" escapes or a date like 2001-02-30
        raise SpecError(f"not valid YAML: {exc}", file=file) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, yaml.reader.ReaderError):  # a bad character: only its offset is known
            line = text.count("\n", 0, exc.position) + 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        message = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
        raise SpecError(message, file=file, line=line) from None
    finally:
        if loader is not None:
            loader.dispose()


def line_of(mapping: Any, key: str | None = None) -> int | None:
    """Line of ``key`` in a located mapping (or of the mapping itself)."""
    if key is not None and isinstance(mapping, _Located) and key in mapping.key_lines:
        return mapping.key_lines[key]
    return getattr(mapping, "line", None) or None


# --------------------------------------------------------------------------- parameters

#: largest integer ``**`` computes, in bits: far beyond any size, small enough to stay instant
_MAX_POWER_BITS = 1024


def _power(base: Any, exponent: Any) -> Any:
    # 9**9**9 would hang the loader computing a number with millions of digits
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent * base.bit_length() > _MAX_POWER_BITS
    ):
        raise ValueError(f"{base}**{exponent} is too large")
    return operator.pow(base, exponent)


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCS = {"min": min, "max": max, "int": int, "round": round}
_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$|^\$\{(.+)\}$")


def _evaluate(expr: str, params: dict[str, Any]) -> Any:
    """Evaluate a small arithmetic expression over the parameters (no names beyond them).

    Numbers, parameter names, ``+ - * / // % **``, comparisons (1 if true, else 0),
    ``and``, ``or``, ``not`` (1 or 0), ``a if condition else b`` and ``min``, ``max``,
    ``int``, ``round``.
    """

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in params:
                raise KeyError(node.id)
            return params[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return 0 if ev(node.operand) else 1
        if isinstance(node, ast.BoolOp):  # short-circuit, as Python; the result is 1 or 0
            if isinstance(node.op, ast.And):
                return int(all(ev(v) for v in node.values))
            return int(any(ev(v) for v in node.values))
        if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = ev(right_node)
                if not _COMPARE[type(op)](left, right):
                    return 0
                left = right
            return 1
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            return _FUNCS[node.func.id](*(ev(a) for a in node.args))
        try:
            text = ast.unparse(node)
        except Exception:  # noqa: BLE001 - only for the message
            text = type(node).__name__
        raise ValueError(
            f"'{text}' is not allowed (numbers, parameters, + - * / // % **, comparisons, "
            "and/or/not, a if c else b, min/max/int/round)"
        )

    return ev(ast.parse(expr, mode="eval"))


def substitute(value: Any, params: dict[str, Any], where: dict[str, Any]) -> Any:
    """Replace ``$name`` and ``${expression}`` strings by their values, recursively."""
    if isinstance(value, list):
        return [substitute(v, params, where) for v in value]
    if not isinstance(value, str) or not value.startswith("$"):
        return value
    match = _REF.match(value.strip())
    if not match:
        raise SpecError(f"'{value}' is neither $name nor ${{expression}}", **where)
    expr = match.group(1) or match.group(2)
    try:
        result = _evaluate(expr, params)
    except KeyError as exc:
        name = exc.args[0]
        raise SpecError(
            f"'{value}' names the parameter '{name}', which the architecture does not declare"
            + did_you_mean(name, params)
            + f" (declared: {', '.join(params) or 'none'})",
            **where,
        ) from None
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError, OverflowError) as exc:
        raise SpecError(f"cannot evaluate '{value}': {exc}", **where) from None
    except (RecursionError, MemoryError):
        raise SpecError(f"cannot evaluate '{value}': nested too deeply", **where) from None
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return result


# --------------------------------------------------------------------------- specs


@dataclass
class NodeSpec:
    """One node as declared: its op, fields and inputs, with where it was declared."""

    name: str
    op: str
    inputs: list[str]
    fields: dict[str, Any]
    line: int | None = None
    field_lines: dict[str, int] = field(default_factory=dict)
    inputs_explicit: bool = True
    origin: str | None = None
    """For a node expanded from a block: the block and its instantiation, for error messages."""


@dataclass
class ArchSpec:
    """A whole architecture as declared, parameters already substituted."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]
    nodes: list[NodeSpec]
    output: str
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    rules: str | None = None
    preprocess: str | None = None
    #: fold batch norms before the rules run (``relgraph.engine.canonize``)
    canonize: bool = True
    file: str = "<string>"
    input_line: int | None = None
    output_line: int | None = None


def _expect(value: Any, kind: type | tuple, what: str, **where: Any) -> Any:
    if (
        isinstance(value, bool)
        and kind is not bool
        and bool not in (kind if isinstance(kind, tuple) else (kind,))
    ):
        raise SpecError(f"{what} must be {_kind_name(kind)}, got {value!r}", **where)
    if not isinstance(value, kind):
        raise SpecError(f"{what} must be {_kind_name(kind)}, got {value!r}", **where)
    return value


def _kind_name(kind: type | tuple) -> str:
    names = {
        str: "a string",
        dict: "a mapping",
        list: "a list",
        int: "an integer",
        bool: "true or false",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


# --------------------------------------------------------------------------- blocks


@dataclass
class BlockSpec:
    """A reusable sub-graph: parameters, input placeholders, nodes and an output."""

    name: str
    params: dict[str, Any]
    """Defaults; ``None`` marks a parameter every instantiation must give."""
    inputs: list[str]
    nodes: list[Any]
    output: str | None
    line: int | None
    output_line: int | None


def _parse_blocks(data: Any, file: str, line: int | None) -> dict[str, BlockSpec]:
    """Check the ``blocks`` section: ``{name: {params, input, nodes, output}}``."""
    if data is None:
        return {}
    _expect(data, dict, "'blocks'", file=file, line=line)
    blocks = {}
    for name, body in data.items():
        where = {"file": file, "line": line_of(data, name)}
        if not isinstance(name, str) or not name:
            raise SpecError(f"block name {name!r} must be a string", **where)
        if not isinstance(body, dict):
            raise SpecError(
                f"block '{name}' must be a mapping with 'nodes' (and 'params', 'input', "
                f"'output'), got {body!r}",
                **where,
            )
        for key in body:
            if key not in BLOCK_KEYS:
                raise SpecError(
                    f"unknown field '{key}' in block '{name}'{did_you_mean(key, BLOCK_KEYS)} "
                    f"(allowed: {', '.join(BLOCK_KEYS)})",
                    file=file,
                    line=line_of(body, key),
                )
        params_data = body.get("params", {}) or {}
        _expect(
            params_data, dict, f"block '{name}': 'params'", file=file, line=line_of(body, "params")
        )
        params: dict[str, Any] = {}
        for key, value in params_data.items():
            key_where = {"file": file, "line": line_of(params_data, key)}
            if not isinstance(key, str) or not key.isidentifier() or key in INSTANCE_KEYS:
                raise SpecError(
                    f"block '{name}': parameter name {key!r} must be an identifier other than "
                    f"{', '.join(INSTANCE_KEYS)}",
                    **key_where,
                )
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise SpecError(
                    f"block '{name}': parameter '{key}' must have a number as default, or "
                    f"null if every instantiation gives it, got {value!r}",
                    **key_where,
                )
            params[key] = value
        inputs = body.get("input", "input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) and i for i in inputs)
            or len(set(inputs)) != len(inputs)
        ):
            raise SpecError(
                f"block '{name}': 'input' must be a placeholder name or a list of distinct "
                f"names, got {inputs!r}",
                file=file,
                line=line_of(body, "input"),
            )
        if "nodes" not in body:
            raise SpecError(f"block '{name}' has no 'nodes'", **where)
        nodes = body["nodes"]
        _expect(nodes, list, f"block '{name}': 'nodes'", file=file, line=line_of(body, "nodes"))
        if not nodes:
            raise SpecError(
                f"block '{name}': 'nodes' is empty", file=file, line=line_of(body, "nodes")
            )
        output = body.get("output")
        if output is not None and not isinstance(output, (str, int)) or isinstance(output, bool):
            raise SpecError(
                f"block '{name}': 'output' must be a node name, got {output!r}",
                file=file,
                line=line_of(body, "output"),
            )
        blocks[name] = BlockSpec(
            name=name,
            params=params,
            inputs=list(inputs),
            nodes=nodes,
            output=None if output is None else str(output),
            line=line_of(data, name),
            output_line=line_of(body, "output"),
        )
    return blocks


class _Expander:
    """Expands a node list, instantiating blocks, into ``NodeSpec``s with full names.

    Inside a block, names resolve to the block's own earlier nodes and its input
    placeholders; a node ``n`` of an instance named ``p`` becomes ``p.n``. The instance name
    stands for the block's output. A node or instance whose ``when`` is false is left out
    and stands for its (single) input.
    """

    def __init__(self, file: str, blocks: dict[str, BlockSpec], arch_params: dict[str, Any]):
        self.file = file
        self.blocks = blocks
        self.arch_params = arch_params
        self.count = 0

    def error(self, message: str, line: int | None, node: str | None, origin: str | None):
        suffix = f" ({origin})" if origin else ""
        return SpecError(message + suffix, file=self.file, line=line, node=node)

    def subst(self, value: Any, params: dict[str, Any], line, node, origin) -> Any:
        try:
            return substitute(value, params, {"file": self.file, "line": line, "node": node})
        except SpecError as exc:
            raise self.error(exc.message, line, node, origin) from None

    def expand(
        self,
        items: list[Any],
        params: dict[str, Any],
        prefix: str,
        previous: str,
        local: dict[str, str],
        block: BlockSpec | None,
        origin: str | None,
        depth: int,
    ) -> tuple[list[NodeSpec], str]:
        """Expand ``items``; ``local`` maps the names declared so far to full node names.

        Returns the nodes and the full name of the last item's output.
        """
        out: list[NodeSpec] = []
        declared: dict[str, int | None] = {}
        for index, item in enumerate(items):
            item_line = line_of(item) or getattr(items, "line", None)
            if not isinstance(item, dict):
                raise self.error(
                    f"node #{index + 1} must be a mapping with 'name' and 'op', got {item!r}",
                    item_line,
                    None,
                    origin,
                )
            name = item.get("name")
            if name is None:
                raise self.error(f"node #{index + 1} has no 'name'", item_line, None, origin)
            if block is not None and isinstance(name, int) and not isinstance(name, bool):
                name = str(name)  # "- {name: 0, ...}" inside a block, as torch.nn.Sequential
            if not isinstance(name, str) or not name:
                raise self.error(
                    f"node #{index + 1}: 'name' must be a string, got {name!r}",
                    line_of(item, "name"),
                    None,
                    origin,
                )
            full = prefix + name
            is_instance = "block" in item
            # a name stands for one thing; two plain top-level nodes of one name are left to
            # the compiler, whose message names both lines
            if name in local and (block is not None or is_instance or local[name] != name):
                first = declared.get(name)
                placeholder = block is not None and name in block.inputs
                raise self.error(
                    "duplicate name"
                    + (f" (first declared on line {first})" if first else "")
                    + (" (it is an input placeholder of the block)" if placeholder else ""),
                    item_line,
                    full,
                    origin,
                )
            declared[name] = item_line
            inputs_explicit = "inputs" in item
            inputs = item.get("inputs", [previous])
            if isinstance(inputs, str):
                inputs = [inputs]
            if (
                not isinstance(inputs, list)
                or not inputs
                or not all(isinstance(i, str) for i in inputs)
            ):
                raise self.error(
                    f"'inputs' must be a node name or a non-empty list of names, got {inputs!r}",
                    line_of(item, "inputs"),
                    full,
                    origin,
                )
            if inputs_explicit:
                inputs = [self.resolve(i, local, block, item, full, origin) for i in inputs]
            keep = True
            if "when" in item:
                keep = self.subst(item["when"], params, line_of(item, "when"), full, origin)
                if isinstance(keep, list) or isinstance(keep, str):
                    raise self.error(
                        f"'when' must be a number or an expression, got {item['when']!r}",
                        line_of(item, "when"),
                        full,
                        origin,
                    )
            if not keep:
                if len(inputs) != 1:
                    raise self.error(
                        "a node left out by 'when' stands for its input, so it must have "
                        f"exactly one, got {inputs}",
                        line_of(item, "when"),
                        full,
                        origin,
                    )
                local[name] = inputs[0]
                previous = inputs[0]
                continue
            if is_instance:
                nodes, last = self.instantiate(
                    item, name, full, inputs, params, local, origin, depth
                )
                out.extend(nodes)
                local[name] = last
                previous = last
                continue
            where = {"line": item_line, "node": full, "origin": origin}
            if "op" not in item:
                raise self.error("missing field 'op'", **where)
            op = item["op"]
            if not isinstance(op, str) or isinstance(op, bool):
                raise self.error(
                    f"'op' must be a string, got {op!r}", line_of(item, "op"), full, origin
                )
            fields = {}
            for key, value in item.items():
                if key in NODE_KEYS or key == "when":
                    continue
                if not isinstance(key, str):
                    raise self.error(
                        f"field name {key!r} must be a string", line_of(item, key), full, origin
                    )
                fields[key] = self.subst(value, params, line_of(item, key), full, origin)
            self.count += 1
            if self.count > MAX_EXPANDED_NODES:
                raise self.error(
                    f"the architecture expands to more than {MAX_EXPANDED_NODES:,} nodes",
                    item_line,
                    full,
                    origin,
                )
            out.append(
                NodeSpec(
                    name=full,
                    op=op,
                    inputs=list(inputs),
                    fields=fields,
                    line=item_line,
                    field_lines=dict(getattr(item, "key_lines", {})),
                    inputs_explicit=inputs_explicit,
                    origin=origin,
                )
            )
            if block is not None or name != full:
                local[name] = full
            else:
                local.setdefault(name, full)
            previous = full
        return out, previous

    def resolve(self, name, local, block, item, full, origin) -> str:
        if name in local:
            return local[name]
        if block is None:
            return name  # the compiler checks it (a later node, or an error naming it)
        known = [k for k in local]
        raise self.error(
            f"input '{name}' names no earlier node of block '{block.name}' nor one of its "
            f"inputs{did_you_mean(name, known)} (known here: {', '.join(known)})",
            line_of(item, "inputs"),
            full,
            origin,
        )

    def instantiate(self, item, name, full, inputs, params, local, origin, depth):
        line = line_of(item)
        block_name = item["block"]
        if not isinstance(block_name, str) or block_name not in self.blocks:
            raise self.error(
                f"no block named {block_name!r}{did_you_mean(str(block_name), self.blocks)} "
                f"(blocks: {', '.join(self.blocks) or 'none; declare them under blocks:'})",
                line_of(item, "block"),
                full,
                origin,
            )
        block = self.blocks[block_name]
        if depth >= MAX_BLOCK_DEPTH:
            raise self.error(
                f"blocks nested more than {MAX_BLOCK_DEPTH} deep (does block '{block_name}' "
                "instantiate itself?)",
                line,
                full,
                origin,
            )
        for key in item:
            if key not in INSTANCE_KEYS and key not in block.params:
                raise self.error(
                    f"block '{block_name}' has no parameter '{key}'"
                    f"{did_you_mean(str(key), block.params)} "
                    f"(parameters: {', '.join(block.params) or 'none'})",
                    line_of(item, key),
                    full,
                    origin,
                )
        repeated = "repeat" in item
        copies = 1
        if repeated:
            copies = self.subst(item["repeat"], params, line_of(item, "repeat"), full, origin)
            if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
                raise self.error(
                    f"'repeat' must be a positive integer, got {copies!r}",
                    line_of(item, "repeat"),
                    full,
                    origin,
                )
            if copies > MAX_EXPANDED_NODES:
                raise self.error(
                    f"'repeat' is {copies:,}, more than the {MAX_EXPANDED_NODES:,} nodes an "
                    "architecture may expand to",
                    line_of(item, "repeat"),
                    full,
                    origin,
                )
        if len(inputs) != len(block.inputs):
            raise self.error(
                f"block '{block_name}' takes {len(block.inputs)} input(s) "
                f"({', '.join(block.inputs)}), got {inputs}",
                line_of(item, "inputs") or line,
                full,
                origin,
            )
        if copies > 1 and len(block.inputs) != 1:
            raise self.error(
                f"'repeat' chains copies output to input, so block '{block_name}' must take "
                f"one input, not {len(block.inputs)}",
                line_of(item, "repeat"),
                full,
                origin,
            )
        nodes: list[NodeSpec] = []
        last = inputs[0]
        for copy in range(copies):
            copy_name = f"{full}.{copy}" if repeated else full
            outer = dict(params)
            if repeated:
                outer["i"] = copy
            values = {}
            for key, value in item.items():
                if key not in INSTANCE_KEYS:
                    values[key] = self.subst(value, outer, line_of(item, key), copy_name, origin)
                    if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
                        raise self.error(
                            f"block parameter '{key}' must be a number, got {values[key]!r}",
                            line_of(item, key),
                            copy_name,
                            origin,
                        )
            missing = [k for k, v in block.params.items() if v is None and k not in values]
            if missing:
                raise self.error(
                    f"block '{block_name}' needs a value for {', '.join(map(repr, missing))}",
                    line,
                    copy_name,
                    origin,
                )
            inner_params = {**self.arch_params, **block.params, **values}
            inner_origin = (
                f"in block '{block_name}' (line {block.line}) instantiated as '{copy_name}' "
                f"on line {line}" + (f", {origin}" if origin else "")
            )
            inner_local = dict(zip(block.inputs, inputs))
            copy_nodes, copy_last = self.expand(
                block.nodes,
                inner_params,
                copy_name + ".",
                inputs[0],
                inner_local,
                block,
                inner_origin,
                depth + 1,
            )
            if block.output is not None:
                if block.output not in inner_local:
                    raise self.error(
                        f"block '{block_name}': 'output' names no node of the block: "
                        f"'{block.output}'{did_you_mean(block.output, inner_local)}",
                        block.output_line,
                        copy_name,
                        inner_origin,
                    )
                copy_last = inner_local[block.output]
            nodes.extend(copy_nodes)
            if repeated:
                local[f"{name}.{copy}"] = copy_last
            inputs = [copy_last]
            last = copy_last
        return nodes, last


def parse_spec(data: Any, file: str, overrides: dict[str, Any] | None = None) -> ArchSpec:
    """Check a parsed YAML document and build an ``ArchSpec``.

    Parameters
    ----------
    data
        The document from ``load_yaml``.
    file
        Its file name, for error messages.
    overrides
        Values for declared parameters (``load_architecture(..., num_classes=10)``).
    """
    if not isinstance(data, dict):
        raise SpecError(
            "an architecture file must be a YAML mapping with 'input' and 'nodes'",
            file=file,
            line=line_of(data),
        )
    for key in data:
        if key not in ARCH_KEYS:
            raise SpecError(
                f"unknown top-level field '{key}'{did_you_mean(key, ARCH_KEYS)} "
                f"(allowed: {', '.join(ARCH_KEYS)})",
                file=file,
                line=line_of(data, key),
            )
    for key in ("input", "nodes"):
        if key not in data:
            raise SpecError(f"missing top-level field '{key}'", file=file, line=line_of(data))

    name = data.get("name", Path(file).stem)
    _expect(name, str, "'name'", file=file, line=line_of(data, "name"))
    description = data.get("description", "") or ""
    _expect(description, str, "'description'", file=file, line=line_of(data, "description"))

    params_data = data.get("params", {}) or {}
    _expect(params_data, dict, "'params'", file=file, line=line_of(data, "params"))
    params: dict[str, Any] = {}
    for key, value in params_data.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise SpecError(
                f"parameter name {key!r} must be an identifier",
                file=file,
                line=line_of(params_data, key),
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(
                f"parameter '{key}' must have a number as default, got {value!r}",
                file=file,
                line=line_of(params_data, key),
            )
        params[key] = value
    for key, value in (overrides or {}).items():
        if key not in params:
            raise SpecError(
                f"architecture '{name}' has no parameter '{key}'{did_you_mean(key, params)} "
                f"(parameters: {', '.join(params) or 'none'})",
                file=file,
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"parameter '{key}' must be a number, got {value!r}", file=file)
        params[key] = value

    input_data = data["input"]
    where = {"file": file, "line": line_of(data, "input")}
    _expect(input_data, dict, "'input'", **where)
    for key in input_data:
        if key not in ("name", "shape"):
            raise SpecError(
                f"unknown field '{key}' in 'input' (allowed: name, shape)",
                file=file,
                line=line_of(input_data, key),
            )
    if "shape" not in input_data:
        raise SpecError("'input' needs a 'shape' (channels, frames, height, width)", **where)
    input_name = input_data.get("name", "input")
    _expect(input_name, str, "the input's name", file=file, line=line_of(input_data, "name"))
    shape_where = {"file": file, "line": line_of(input_data, "shape"), "node": input_name}
    shape = substitute(input_data["shape"], params, shape_where)
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        raise SpecError(
            "the input's shape must be a list of positive integers (batch left out), "
            f"got {shape!r}",
            **shape_where,
        )

    nodes_data = data["nodes"]
    _expect(nodes_data, list, "'nodes'", file=file, line=line_of(data, "nodes"))
    if not nodes_data:
        raise SpecError("'nodes' is empty", file=file, line=line_of(data, "nodes"))
    blocks = _parse_blocks(data.get("blocks"), file, line_of(data, "blocks"))
    expander = _Expander(file, blocks, params)
    local: dict[str, str] = {input_name: input_name}
    nodes, last = expander.expand(nodes_data, params, "", input_name, local, None, None, 0)
    if not nodes:
        raise SpecError(
            "'nodes' expands to no node (every one is left out by 'when')",
            file=file,
            line=line_of(data, "nodes"),
        )
    # top-level inputs may name a later node, an instance or a left-out node
    for node in nodes:
        if node.origin is None:
            node.inputs = [local.get(i, i) for i in node.inputs]
    output = data.get("output", last)
    _expect(output, str, "'output'", file=file, line=line_of(data, "output"))
    output = local.get(output, output)
    for key in ("rules", "preprocess"):
        if data.get(key) is not None:
            _expect(data[key], str, f"'{key}'", file=file, line=line_of(data, key))
    canonize = data.get("canonize", True)
    _expect(canonize, bool, "'canonize'", file=file, line=line_of(data, "canonize"))

    return ArchSpec(
        name=name,
        description=description,
        params=params,
        input_name=input_name,
        input_shape=tuple(shape),
        nodes=nodes,
        output=output,
        rules=data.get("rules"),
        preprocess=data.get("preprocess"),
        canonize=canonize,
        file=file,
        input_line=line_of(data, "input"),
        output_line=line_of(data, "output"),
    )


def with_block_origin(exc: RelgraphError, spec: ArchSpec) -> RelgraphError:
    """``exc`` with the block instantiation of its node appended, if the node came from one.

    Compile errors (shapes, unknown ops, duplicates) carry the line in the block definition;
    this adds the instantiation (``... (in block 'basic' (line 12) instantiated as 'layer1.0'
    on line 40)``).
    """
    if exc.node is None:
        return exc
    origin = next((n.origin for n in spec.nodes if n.name == exc.node and n.origin), None)
    if origin is None or origin in exc.message:
        return exc
    new = type(exc).__new__(type(exc))
    RelgraphError.__init__(
        new, f"{exc.message} ({origin})", file=exc.file, line=exc.line, node=exc.node
    )
    return new


def parse_key_values(
    items: Sequence[str] | None,
    option: str,
    error: type[RelgraphError] = RelgraphError,
    *,
    identifiers: bool = False,
) -> dict[str, Any]:
    """``key=value`` items of the option ``option`` (``--param``, ``--kwarg``), values read as
    YAML scalars (``10`` is an int, ``true`` a bool, ``r3d`` a string; text YAML cannot read
    stays text).
    A malformed item (no ``=``, an empty key, or with ``identifiers`` a key that is no
    Python identifier) raises ``error`` naming the option."""
    values: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or (identifiers and not key.isidentifier()):
            raise error(f"{option} takes key=value, e.g. num_classes=10; got {item!r}")
        try:
            values[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            values[key] = value
    return values
