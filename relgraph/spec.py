"""Architecture specs: YAML read with line numbers, parameters substituted, fields checked.

A spec is plain data (``ArchSpec`` holding ``NodeSpec``s); ``relgraph.compile`` turns it
into a ``Graph``. Every error names the file, the YAML line and the node.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError, did_you_mean

ARCH_KEYS = ("name", "description", "params", "input", "nodes", "output", "rules", "preprocess")
NODE_KEYS = ("name", "op", "inputs")


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
_FUNCS = {"min": min, "max": max, "int": int, "round": round}
_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$|^\$\{(.+)\}$")


def _evaluate(expr: str, params: dict[str, Any]) -> Any:
    """Evaluate a small arithmetic expression over the parameters (no names beyond them)."""

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
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            return _FUNCS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"unsupported expression element {ast.dump(node)[:40]}")

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
    nodes: list[NodeSpec] = []
    previous = input_name
    for index, item in enumerate(nodes_data):
        item_line = line_of(item) or getattr(nodes_data, "line", None)
        if not isinstance(item, dict):
            raise SpecError(
                f"node #{index + 1} must be a mapping with 'name' and 'op', got {item!r}",
                file=file,
                line=item_line,
            )
        node_name = item.get("name")
        if node_name is None:
            raise SpecError(f"node #{index + 1} has no 'name'", file=file, line=item_line)
        if not isinstance(node_name, str) or not node_name:
            raise SpecError(
                f"node #{index + 1}: 'name' must be a string, got {node_name!r}",
                file=file,
                line=line_of(item, "name"),
            )
        where = {"file": file, "node": node_name}
        if "op" not in item:
            raise SpecError("missing field 'op'", line=item_line, **where)
        op = item["op"]
        _expect(op, str, "'op'", line=line_of(item, "op"), **where)
        inputs_explicit = "inputs" in item
        inputs = item.get("inputs", [previous])
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) for i in inputs)
        ):
            raise SpecError(
                f"'inputs' must be a node name or a non-empty list of names, got {inputs!r}",
                line=line_of(item, "inputs"),
                **where,
            )
        fields = {}
        for key, value in item.items():
            if key in NODE_KEYS:
                continue
            if not isinstance(key, str):
                raise SpecError(
                    f"field name {key!r} must be a string", line=line_of(item, key), **where
                )
            fields[key] = substitute(value, params, {"line": line_of(item, key), **where})
        nodes.append(
            NodeSpec(
                name=node_name,
                op=op,
                inputs=list(inputs),
                fields=fields,
                line=item_line,
                field_lines=dict(getattr(item, "key_lines", {})),
                inputs_explicit=inputs_explicit,
            )
        )
        previous = node_name

    output = data.get("output", nodes[-1].name)
    _expect(output, str, "'output'", file=file, line=line_of(data, "output"))
    for key in ("rules", "preprocess"):
        if data.get(key) is not None:
            _expect(data[key], str, f"'{key}'", file=file, line=line_of(data, key))

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
        file=file,
        input_line=line_of(data, "input"),
        output_line=line_of(data, "output"),
    )
