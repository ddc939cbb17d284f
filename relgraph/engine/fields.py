"""The field schema of ops: declaring a YAML field, checking its value, defaults, YAML round trip.

An op declares each field as a typed class attribute::

    class Linear(Affine):
        out_features = Field[int]("int")
        bias = Field[bool]("bool", True)

``Field`` is a descriptor: ``op.out_features`` reads the checked value (typed ``int`` for a
type checker), and ``Op.__init_subclass__`` gathers the class's fields, in declaration order,
into ``cls.fields``. The values live in ``op.attrs`` (a plain dict, the YAML round trip).
This module knows nothing of the ops' maths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, overload

from relgraph.errors import OpDefinitionError, did_you_mean

T = TypeVar("T")

Ints = tuple[int, ...]

REQUIRED: Any = object()
"""Default of a field that the YAML node must give."""

KINDS = ("int", "int?", "ints", "bool", "float", "float?", "shape")
"""``int``; ``int?`` (an int or null); ``ints`` (one int per spatial dimension, a single int
repeated); ``bool``; ``float`` (finite); ``float?`` (finite or null); ``shape`` (a non-empty
list of ints)."""


class Field(Generic[T]):
    """One YAML field of an op: its kind (see ``KINDS``), default and a short description.

    Used as a class attribute it is a descriptor reading (and writing) ``op.attrs[name]``.
    """

    def __init__(self, kind: str, default: Any = REQUIRED, doc: str = "") -> None:
        if kind not in KINDS:
            raise OpDefinitionError(f"unknown field kind {kind!r}: one of {', '.join(KINDS)}")
        self.kind = kind
        self.default = default
        self.doc = doc
        self.name = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Field[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> Field[T] | T:
        if obj is None:
            return self
        try:
            return obj.__dict__["attrs"][self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: object, value: T) -> None:
        obj.__dict__["attrs"][self.name] = value

    def __repr__(self) -> str:
        default = "required" if self.required else repr(self.default)
        return f"Field({self.kind!r}, {default})"


def fields_of(cls: type) -> dict[str, Field]:
    """Every ``Field`` of ``cls`` and its bases, base classes' first, in declaration order."""
    found: dict[str, Field] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Field):
                found.pop(name, None)
                found[name] = value
    return found


def show(value: Any) -> str:
    """``repr(value)``, shortened: a fuzzed file may hold a 400-digit number."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_value(op: str, name: str, field: Field, value: Any, dims: int) -> Any:
    """Validate one field value and return it in canonical form (tuples for ``ints``)."""
    kind = field.kind
    if kind == "int?" and value is None:
        return None
    if kind in ("int", "int?"):
        if not _is_int(value):
            raise OpDefinitionError(
                f"field '{name}' of {op} must be an integer, got {show(value)}", name
            )
        return value
    if kind == "ints":
        if _is_int(value):
            return (value,) * dims
        if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
            if len(value) != dims:
                raise OpDefinitionError(
                    f"field '{name}' of {op} needs {dims} values (one per spatial dimension), "
                    f"got {len(value)}: {list(value)}",
                    name,
                )
            return tuple(value)
        raise OpDefinitionError(
            f"field '{name}' of {op} must be an integer or a list of {dims} integers, "
            f"got {show(value)}",
            name,
        )
    if kind == "bool":
        # 0 and 1 too: what a parameter expression gives (``${qv_bias != 0}``), since
        # architecture parameters are numbers
        if type(value) is int and value in (0, 1):
            return bool(value)
        if not isinstance(value, bool):
            raise OpDefinitionError(
                f"field '{name}' of {op} must be true or false (or 0 or 1), got {show(value)}", name
            )
        return value
    if kind == "float?" and value is None:
        return None
    if kind in ("float", "float?"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OpDefinitionError(
                f"field '{name}' of {op} must be a number, got {show(value)}", name
            )
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise OpDefinitionError(
                f"field '{name}' of {op} must be a finite number, got {show(value)}", name
            )
        return number
    if kind == "shape":
        if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
            return tuple(value)
        raise OpDefinitionError(
            f"field '{name}' of {op} must be a non-empty list of integers, got {show(value)}", name
        )
    raise AssertionError(kind)  # pragma: no cover


def check_fields(
    op: str, fields: Mapping[str, Field], given: Mapping[str, Any], dims: int
) -> dict[str, Any]:
    """Every field's checked value: given ones checked, missing ones defaulted; an unknown or
    missing required field raises ``OpDefinitionError`` naming it."""
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise OpDefinitionError(
            f"unknown field '{unknown[0]}' for op {op}"
            f"{did_you_mean(unknown[0], fields)} "
            f"(allowed: {', '.join(fields) or 'none'})",
            unknown[0],
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name in given:
            values[name] = check_value(op, name, field, given[name], dims)
        elif field.required:
            raise OpDefinitionError(f"op {op} needs the field '{name}'", name)
        elif field.default is None:
            values[name] = None
        else:
            values[name] = check_value(op, name, field, field.default, dims)
    return values


def to_yaml(values: Mapping[str, Any]) -> dict[str, Any]:
    """Field values as YAML writes them: tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
