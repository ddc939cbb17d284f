"""Op capabilities: the adjoint maps an op offers to rules, as runtime-checkable Protocols.

A rule asks whether an op can do what its formula needs with ``isinstance(op, Affine)``, never
by the op's type or name; an op has a capability by having its members (``relgraph.engine.ops``
gives every built-in op those of its family, and a new op gets one by defining them). The
formulas that call these maps are those of Bach et al. (2015) and Montavon et al. (2017).

``CAPABILITIES`` names each Protocol for the YAML-facing text (``Rule.requires`` may list the
names as aliases of the classes; ``Op.capabilities`` lists the names an op has). A name with no
Protocol (``softmax``, ``index``: an op family with no map of its own beyond ``vjp``) is a
capability an op declares in its ``capabilities`` set; ``op_has`` checks either kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from relgraph.errors import ArgumentError


@runtime_checkable
class Affine(Protocol):
    """``A(x; W, b)`` and its adjoint ``Aᵀ(s; W)`` (conv1d/2d/3d, linear, batch norm)."""

    def weight_and_bias(
        self, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def linear_map(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def adjoint(
        self, s: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size
    ) -> torch.Tensor: ...


@runtime_checkable
class Channelwise(Affine, Protocol):
    """An affine map of each channel on its own, output shaped like the input (batch norm):
    monotone per channel, so relevance may pass it unchanged."""

    num_features: int | None


@runtime_checkable
class Sliceable(Protocol):
    """An affine map that may run a slice of its output channels at a time (``sliceable``
    says whether this op, with its fields, allows it)."""

    sliceable: bool


@runtime_checkable
class RowSliceable(Protocol):
    """An affine map that may also run a range of rows of its first spatial axis at a time."""

    def output_size(self, in_size: Sequence[int]) -> list[int]: ...

    def linear_map_rows(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        start: int,
        stop: int,
    ) -> torch.Tensor: ...


@runtime_checkable
class Windowed(Protocol):
    """The sum over each pooling window and its adjoint (every pool, mean)."""

    def window_sum(self, x: torch.Tensor) -> torch.Tensor: ...

    def window_sum_adjoint(self, s: torch.Tensor, x_shape: torch.Size) -> torch.Tensor: ...


@runtime_checkable
class MaxRouted(Protocol):
    """Routes relevance to the forward pass's argmax (max pools)."""

    def max_route(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...


@runtime_checkable
class Splitting(Protocol):
    """Hands relevance back to several inputs (add, concat)."""

    def split(
        self, inputs: Sequence[torch.Tensor], relevance: torch.Tensor, divide: Callable
    ) -> list[torch.Tensor]: ...


@runtime_checkable
class Product(Protocol):
    """An elementwise product of a signal and a gate that may broadcast (mul)."""

    def signal_slots(
        self, input_shapes: Sequence[Sequence[int]], output_shape: Sequence[int]
    ) -> Any: ...

    def to_input_shape(self, relevance: torch.Tensor, shape: Sequence[int]) -> torch.Tensor: ...


@runtime_checkable
class Reshaping(Protocol):
    """Relevance passes through unchanged, reshaped to the input's shape (relu, sigmoid, silu,
    dropout, identity, flatten, reshape)."""

    def pass_relevance(self, relevance: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor: ...


@runtime_checkable
class VectorJacobian(Protocol):
    """The explicit vector-Jacobian product of the forward (the gradient rule)."""

    def vjp(
        self,
        grad: torch.Tensor,
        inputs: Sequence[torch.Tensor],
        tensors: Mapping[str, torch.Tensor],
        input_shapes: Sequence[torch.Size],
        record: Any = None,
    ) -> list[torch.Tensor]: ...


@runtime_checkable
class Normalizing(Protocol):
    """Layer norm: the adjoint of the map with the standard deviation held constant."""

    def frozen_scale_adjoint(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...


@runtime_checkable
class Bilinear(Protocol):
    """The product of two inputs (matmul): the adjoint in one input, the other held constant."""

    def input_vjp(
        self, grad: torch.Tensor, inputs: Sequence[torch.Tensor], slot: int
    ) -> torch.Tensor: ...


@runtime_checkable
class Attending(Protocol):
    """Fused attention ``softmax(scale · q kᵀ) v``: its three input gradients, and the
    adjoint of the map from ``v`` with the probabilities held constant, never holding the
    probabilities of every query row at once (``logsumexp``: the forward's record)."""

    def attention_vjp(
        self,
        grad: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        output: torch.Tensor | None = None,
        logsumexp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def value_adjoint(
        self,
        grad: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        output: torch.Tensor | None = None,
        logsumexp: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class Shifting(Protocol):
    """The input plus a constant (position embeddings)."""

    def constant(self, tensors: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor: ...


#: each capability by the name the YAML-facing text and ``Rule.requires`` strings use
CAPABILITIES: dict[str, type] = {
    "affine": Affine,
    "channelwise": Channelwise,
    "window": Windowed,
    "max_route": MaxRouted,
    "split": Splitting,
    "product": Product,
    "reshape": Reshaping,
    "vjp": VectorJacobian,
    "normalize": Normalizing,
    "bilinear": Bilinear,
    "attention": Attending,
    "shift": Shifting,
}


def capability(name_or_protocol: str | type) -> type:
    """The Protocol of a capability, given it or its name in ``CAPABILITIES``."""
    if isinstance(name_or_protocol, str):
        try:
            return CAPABILITIES[name_or_protocol]
        except KeyError:
            known = ", ".join(CAPABILITIES)
            raise ArgumentError(
                f"unknown op capability {name_or_protocol!r} (known: {known})"
            ) from None
    if name_or_protocol in CAPABILITIES.values() or getattr(
        name_or_protocol, "_is_runtime_protocol", False
    ):
        return name_or_protocol
    raise ArgumentError(f"{name_or_protocol!r} is no capability: give a Protocol or its name")


def op_has(op: object, name_or_protocol: str | type) -> bool:
    """Whether ``op`` has a capability: a Protocol (or its name) it satisfies, or a name
    without a Protocol that its ``capabilities`` declare."""
    if isinstance(name_or_protocol, str) and name_or_protocol not in CAPABILITIES:
        return name_or_protocol in getattr(op, "capabilities", ())
    return isinstance(op, capability(name_or_protocol))


def capabilities_of(op: object) -> frozenset[str]:
    """The names of the capabilities ``op`` has."""
    return frozenset(name for name, protocol in CAPABILITIES.items() if isinstance(op, protocol))
