"""The rule base class and the registry that lets YAML presets name rules."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from relgraph.engine.capabilities import op_has
from relgraph.engine.ops import Op
from relgraph.errors import RuleError, did_you_mean

from .context import NodeContext

#: What a rule can ask the forward pass for (``Rule.needs``):
#: ``inputs``: the activations of the node's inputs (``NodeContext.inputs``);
#: ``output``: the node's own activation (``NodeContext.output``);
#: ``record``: what the op recorded in the forward pass, e.g. max-pool indices (``record``).
#: The weights (``NodeContext.tensors``) and the input shapes are always there.
NEEDS = frozenset({"inputs", "output", "record"})

#: the protocol's names before ``needs``: a subclass that still sets one would be ignored
_LEGACY_NEEDS = ("needs_inputs", "needs_output", "needs_record")


class Rule:
    """Base class of relevance rules.

    Subclasses are dataclasses whose fields are the rule's parameters (settable from YAML),
    and implement ``relevance``. Class attributes (or properties, where they follow from the
    parameters):

    ``name``           the name used in YAML and by ``make_rule``
    ``requires``       the op capabilities the rule works with (any one suffices): Protocols
                       of ``relgraph.engine.capabilities`` (``Affine``, ``Windowed``, ...), or
                       their names (``"affine"``, ``"window"``, ...) as aliases
    ``needs``          what the rule reads from the forward pass: a frozenset of ``NEEDS``
                       (``inputs``, ``output``, ``record``). The reverse pass keeps exactly
                       that and asks nothing else; a rule built of parts (``Combine``) needs
                       the union of its parts' needs.
    ``conserving``     whether Σ R_in = Σ R holds (under the conditions in
                       docs/reference/rules.md)
    ``scans``          whether the rule reads its inputs' numeric scale (``scale_and_sign``),
                       which ``explain`` then takes as the forward pass makes them; a hint
                       only (a rule that scans anyway scans the tensor itself), ``True`` by
                       default
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[type | str, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset({"inputs"})
    conserving: ClassVar[bool] = True
    scans: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = [n for n in _LEGACY_NEEDS if n in vars(cls)]
        if legacy:
            raise RuleError(
                f"rule class {cls.__name__} sets {', '.join(legacy)}: declare "
                f"needs = frozenset({{...}}) with some of {sorted(NEEDS)} instead"
            )

    def relevance(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        """Relevance of each input, given the relevance of the node's output."""
        raise NotImplementedError

    def __call__(self, ctx: NodeContext, relevance: torch.Tensor) -> list[torch.Tensor]:
        return self.relevance(ctx, relevance)

    def bind(self, **context: Any) -> Rule:
        """This rule with context-dependent parameters resolved (e.g. zβ bounds from the
        preprocessing); most rules return themselves."""
        return self

    def fits(self, op: Op) -> bool:
        """Whether the op offers a capability this rule needs."""
        return any(op_has(op, c) for c in self.requires)

    def describe(self) -> str:
        """``name(param=value, ...)``."""
        if dataclasses.is_dataclass(self):
            params = ", ".join(
                f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
            )
            return f"{self.name}({params})" if params else self.name
        return self.name

    def __repr__(self) -> str:
        return self.describe()


RULES: dict[str, type[Rule]] = {}
"""Every registered rule class by name."""


def register_rule(cls: type[Rule] | None = None, *, name: str | None = None, replace: bool = False):
    """Register a rule class so YAML presets can name it. Use as a decorator.

    A name already registered (a built-in such as ``epsilon`` included) raises ``RuleError``:
    every preset naming it would silently change. Pass ``replace=True`` to mean it.

    Examples
    --------
    >>> @register_rule(name="halve-example", replace=True)
    ... @dataclass
    ... class Halve(Rule):
    ...     requires = ("reshape",)
    ...     needs = frozenset()
    ...     def relevance(self, ctx, relevance):
    ...         return [0.5 * relevance.reshape(ctx.input_shapes[0])]
    """

    def add(rule_cls: type[Rule]) -> type[Rule]:
        key = name or rule_cls.name
        existing = RULES.get(key)
        if existing is not None and existing is not rule_cls and not replace:
            raise RuleError(
                f"a rule named '{key}' is already registered ({existing.__module__}."
                f"{existing.__qualname__}); pass replace=True to replace it"
            )
        if not dataclasses.is_dataclass(rule_cls):
            rule_cls = dataclass(rule_cls)
        rule_cls.name = key
        RULES[key] = rule_cls
        return rule_cls

    return add(cls) if cls is not None else add


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert a YAML value for a rule parameter of the given annotation."""
    origin = typing.get_origin(annotation)
    options = (
        typing.get_args(annotation)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None))
        else (annotation,)
    )
    errors = []
    for option in options:
        if option is type(None):
            if value is None:
                return None
            continue
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is bool and isinstance(value, bool):
            return value
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) in (list, tuple, Sequence) and isinstance(
            value, (list, tuple)
        ):
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                return tuple(float(v) for v in value)
        if option is Any:
            return value
        errors.append(getattr(option, "__name__", str(option)))
    raise RuleError(f"{where} must be {' or '.join(errors) or 'valid'}, got {value!r}")


def make_rule(spec: Any, *, file: str | None = None, line: int | None = None) -> Rule:
    """Build a rule from a YAML spec: a name (``"zplus"``) or a mapping
    (``{name: epsilon, epsilon: 0.25}``), or pass a ``Rule`` through."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict):
        if "name" not in spec:
            raise RuleError(
                "a rule mapping needs 'name' (e.g. {name: epsilon, epsilon: 0.25})",
                file=file,
                line=line,
            )
        params = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
    else:
        raise RuleError(
            f"a rule must be a name or a mapping with 'name', got {spec!r}", file=file, line=line
        )
    if name not in RULES:
        raise RuleError(
            f"unknown rule '{name}'{did_you_mean(name, RULES)} (rules: {', '.join(sorted(RULES))})",
            file=file,
            line=line,
        )
    cls = RULES[name]
    if name == "combine":
        return cls.from_spec(params, file=file, line=line)  # type: ignore[attr-defined]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    kwargs = {}
    for key, value in params.items():
        if key not in fields:
            raise RuleError(
                f"rule '{name}' has no parameter '{key}'{did_you_mean(key, fields)} "
                f"(parameters: {', '.join(fields) or 'none'})",
                file=file,
                line=line,
            )
        try:
            kwargs[key] = _coerce(value, hints.get(key, Any), f"parameter '{key}' of rule '{name}'")
        except RuleError as exc:
            raise RuleError(exc.message, file=file, line=line) from None
    try:
        return cls(**kwargs)
    except RuleError as exc:
        raise RuleError(exc.message, file=file, line=line) from None
    except (TypeError, ValueError) as exc:
        raise RuleError(f"cannot build rule '{name}': {exc}", file=file, line=line) from None
