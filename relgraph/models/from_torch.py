"""Import a ``torch.nn`` model: trace it with ``torch.fx`` and build a relgraph ``Graph``.

``from_torch(module, input_shape)`` traces ``module`` symbolically (``torch.fx``), runs the
traced program once on an example batch to learn every value's shape, maps each fx node to
a relgraph op and compiles the result with the normal compiler, so every check of a YAML
architecture applies. Node names are module paths (``layer1.0.conv1.0``); the module's
parameters and buffers become the graph's weights under the same keys as its
``state_dict()``. Nothing is dropped silently: every fx node that has no relgraph op is a
``TorchImportError`` naming the fx node, its target and the user's source line.

Three patterns of library video models are recognised and mapped to what a hand-written
architecture says (the shipped ``x3d-*.yaml``):

- **A permute of a tensor with at most one dimension larger than 1 besides the batch**
  (pytorchvideo's head: ``x.permute(0, 2, 3, 4, 1)`` after its pool leaves 1×1×1) moves no
  values: it becomes a ``flatten`` node, and the channels-last value is held as
  (batch, features). On such a value the importer maps ``nn.Linear`` over its last dimension
  (a ``linear`` node), elementwise activations, a final softmax (below), permutes, flatten /
  view / reshape, and means or adaptive average pools over its size-1 dimensions (no node).
  Anything else on it is refused; a permute that moves values (two or more dimensions
  larger than 1) is refused.
- **A final softmax** over the classes (``nn.Softmax``, ``F.softmax``, ``torch.softmax``,
  ``Tensor.softmax``), followed by nothing but reshapes and pools to one, is left out with a
  ``RelgraphWarning``: relgraph explains the logits before it (as the shipped X3D YAML does);
  ``softmax(graph output, dim=1)`` is the module's output, and the import's own check
  compares exactly that. A softmax anything else computes from is refused.
- **Swish** ``x * sigmoid(x)`` (pytorchvideo's ``Swish``) becomes one ``silu`` node, so the
  product gets the activation's ``pass`` rule, not the gate rule of a ``mul``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import operator
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from relgraph.engine.graph import MAX_ELEMENTS, Graph, compile_spec
from relgraph.engine.memory import available_bytes, format_bytes
from relgraph.engine.ops import OPS
from relgraph.engine.spec import ArchSpec, NodeSpec, parse_key_values
from relgraph.engine.token_ops import PARAM
from relgraph.engine.weights import tensor_key
from relgraph.errors import RelgraphError, RelgraphWarning, TorchImportError

#: batch size of the example run that gives every fx value its shape; 2, so that a reshape
#: that mixes the batch into other dimensions shows up as a wrong batch size
EXAMPLE_BATCH = 2

#: relative tolerance of the import's own check: the compiled graph's output against the
#: module's on the example batch (a mapping error is orders of magnitude larger)
CHECK_RTOL = 1e-3


# --------------------------------------------------------------------------- modules

_CONV = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_BATCHNORM = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
_MAXPOOL = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_AVGPOOL = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_ADAPTIVE = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_PLAIN = {nn.ReLU: "relu", nn.Identity: "identity", nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}

#: every module class the importer maps (a subclass counts when it keeps the forward)
SUPPORTED_MODULES: tuple[type, ...] = (
    *_CONV,
    nn.Linear,
    *_BATCHNORM,
    *_MAXPOOL,
    *_AVGPOOL,
    *_ADAPTIVE,
    *_DROPOUT,
    *_PLAIN,
    nn.Flatten,
    nn.LayerNorm,
    nn.GELU,
    nn.MultiheadAttention,
)

_PARAM_OUTSIDE = (
    "a parameter or buffer used outside a supported module; relgraph takes weights only from "
    "the modules it maps, and a learned tensor read directly only as a token prepended with "
    "torch.cat([p.expand(B, -1, -1), x], dim) or added to the tokens (x + p)"
)

#: nn.GELU's ``approximate`` by the relgraph op that computes it
_GELUS = {"none": "gelu", "tanh": "gelu_pytorch_tanh"}


def _supported_base(module: nn.Module) -> type | None:
    """The supported class ``module`` is, when its forward is that class's own."""
    for base in SUPPORTED_MODULES:
        if isinstance(module, base) and type(module).forward is base.forward:
            return base
    return None


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with every supported module (and subclasses that keep its forward) a
    leaf, and stack traces recorded for error messages."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _supported_base(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


# --------------------------------------------------------------------------- errors

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in ([^\n]+)\n\s*([^\n]*)')


def _source_of(node: torch.fx.Node) -> tuple[str | None, int | None, str]:
    """The user's source line of an fx node: (file, line, code), from its stack trace."""
    frames = [
        f
        for f in _FRAME.findall(node.stack_trace or "")
        if "/torch/" not in f[0].replace("\\", "/")
    ]
    if not frames:
        return None, None, ""
    file, line, _, code = frames[-1]
    return file, int(line), code.strip()


def _describe_target(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    target = node.target
    if node.op == "call_module":
        return f"module '{target}' ({type(modules[target]).__qualname__})"
    if node.op == "call_method":
        return f"method Tensor.{target}"
    if node.op == "get_attr":
        return f"attribute '{target}'"
    if callable(target):
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
        return f"function {module + '.' if module else ''}{name}"
    return repr(target)


def _node_error(
    node: torch.fx.Node, modules: dict[str, nn.Module], reason: str
) -> TorchImportError:
    file, line, code = _source_of(node)
    where = f"; at {file}:{line}: {code}" if file else "; no source line recorded"
    return TorchImportError(
        f"cannot import fx node '{node.name}' ({_describe_target(node, modules)}): {reason}" + where
    )


# --------------------------------------------------------------------------- signatures

# Python signatures of the functions and methods the importer maps, to bind their
# arguments by name (the bodies are never run).


def _s_one(input, inplace=False): ...  # noqa: ANN001, ANN202


def _s_binary(input, other, *, alpha=1, out=None): ...  # noqa: ANN001, ANN202


def _s_cat(tensors, dim=0, *, out=None): ...  # noqa: ANN001, ANN202


def _s_flatten(input, start_dim=0, end_dim=-1): ...  # noqa: ANN001, ANN202


def _s_flatten_method(start_dim=0, end_dim=-1): ...  # noqa: ANN202


def _s_mean(input, dim=None, keepdim=False, *, dtype=None, out=None): ...  # noqa: ANN001, ANN202


def _s_mean_method(dim=None, keepdim=False, *, dtype=None): ...  # noqa: ANN001, ANN202


def _s_dropout(input, p=0.5, training=True, inplace=False): ...  # noqa: ANN001, ANN202


def _s_adaptive(input, output_size): ...  # noqa: ANN001, ANN202


def _s_permute(input, dims): ...  # noqa: ANN001, ANN202


def _s_softmax(input, dim=None, _stacklevel=3, dtype=None): ...  # noqa: ANN001, ANN202


def _bind(signature_of: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = inspect.signature(signature_of).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


# --------------------------------------------------------------------------- the import


@dataclass
class _Value:
    """What an fx node stands for: a graph node's name (tensors), or a Python value.

    ``axis``: the value is channels-last (made by a permute that moves no values): the graph
    node holds it as (batch, features), the features being the traced value's dimension
    ``axis`` (every other one but the batch is 1). ``final``: the value is the output of a
    final softmax left out (that fx node), or a reshape of it; the graph node holds the logits.
    """

    node: str | None
    example: Any
    axis: int | None = None
    final: torch.fx.Node | None = None


class _Unsupported(Exception):
    """Raised inside the mapping; turned into a ``TorchImportError`` naming the fx node."""


def _ints(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)]


def _feature_axis(shape: Sequence[int]) -> int | None:
    """Where a channels-last value of traced ``shape`` holds its features (its one dimension
    larger than 1 besides the batch; the last when there is none); None for (batch, features),
    which the graph holds as it is."""
    if len(shape) <= 2:
        return None
    large = [d for d in range(1, len(shape)) if shape[d] != 1]
    return large[0] if large else len(shape) - 1


#: relgraph ops that act elementwise and keep the shape: they may take channels-last values
_ELEMENTWISE_OPS = frozenset({"relu", "sigmoid", "silu", "identity", "dropout", "add", "mul"})


class _Importer:
    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], name: str) -> None:
        self.module = module
        self.input_shape = input_shape
        self.name = name
        self.modules = dict(module.named_modules())
        self.nodes: list[NodeSpec] = []
        self.fx_of: dict[str, torch.fx.Node] = {}
        self.values: dict[torch.fx.Node, _Value] = {}
        self.used: set[str] = set()
        #: module paths: a function's node never takes one (its module's weights need it)
        self.reserved: set[str] = {path for path in self.modules if path}
        self.weights: dict[str, torch.Tensor] = {}
        self.weighted_calls: dict[str, str] = {}
        self.input_name = "input"
        self.output: str | None = None
        #: the final softmax left out (relgraph explains the logits before it)
        self.softmax: torch.fx.Node | None = None
        #: sigmoid(x) nodes of a swish x * sigmoid(x) -> x (mapped at the product, as silu)
        self.swish_gates: dict[torch.fx.Node, torch.fx.Node] = {}
        #: learned tensors read outside a module (a CLS token, position embeddings), by the
        #: fx node that reads (or expands) them: their path and value
        self.params: dict[torch.fx.Node, tuple[str, torch.Tensor]] = {}
        #: token values a (sequence, batch, features) transpose made: held batch-first
        self.seq_first: set[torch.fx.Node] = set()
        #: graph nodes inside one fx node's expansion (attention): no traced shape of their own
        self.internal: set[str] = set()
        #: nn.MultiheadAttention calls: their output tuple's item 0 is the graph node
        self.attention_outputs: set[torch.fx.Node] = set()

    # ---------------------------------------------------------------- tracing
    def trace(self) -> torch.fx.GraphModule:
        tracer = _Tracer()
        try:
            graph = tracer.trace(self.module)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is the user's model
            raise TorchImportError(_trace_failure(exc)) from None
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise TorchImportError(
                f"the model's forward takes {len(placeholders)} arguments "
                f"({', '.join(n.name for n in placeholders)}); relgraph imports models with "
                "exactly one input"
            )
        return torch.fx.GraphModule(tracer.root, graph)

    def run_example(self, gm: torch.fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the traced program once and keep every node's value (for shapes)."""
        dtype, device = _dtype_device(self.module)
        example = torch.randn(
            (EXAMPLE_BATCH, *self.input_shape),
            generator=torch.Generator().manual_seed(0),
            dtype=dtype,
        ).to(device)
        values = self.values
        importer = self

        class _Recorder(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                try:
                    result = super().run_node(n)
                except Exception as exc:  # noqa: BLE001 - the user's model failed on the input
                    raise importer.error(
                        n,
                        f"the traced model fails on an input of shape "
                        f"{[EXAMPLE_BATCH, *importer.input_shape]}: "
                        f"{_first_line(exc)}",
                    ) from None
                values[n] = _Value(None, result)
                return result

        with torch.inference_mode():
            try:
                return _Recorder(gm).run(example), example
            except TorchImportError as exc:
                # fx's interpreter appends the traced graph's node and stack to the message:
                # raised again as the one line that names the user's source line
                raise TorchImportError(
                    exc.message, file=exc.file, line=exc.line, node=exc.node
                ) from None

    def error(self, node: torch.fx.Node, reason: str) -> TorchImportError:
        return _node_error(node, self.modules, reason)

    # ---------------------------------------------------------------- naming
    def _unique(self, base: str, own: bool = False) -> str:
        """``base``, or ``base_1``, ``base_2``, ...: the first name no node has yet and no
        module path reserves (``own``: ``base`` is the module's own path)."""
        name, index = base, 0
        while name in self.used or (name in self.reserved and not (own and index == 0)):
            index += 1
            name = f"{base}_{index}"
        self.used.add(name)
        return name

    def _scope(self, node: torch.fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [value[0] if isinstance(value, tuple) else key for key, value in stack.items()]
        return paths[-1] if paths else ""

    def _name_for(self, node: torch.fx.Node, op: str) -> str:
        if node.op == "call_module":
            return self._unique(str(node.target), own=True)
        scope = self._scope(node)
        return self._unique(f"{scope}.{op}" if scope else op)

    # ---------------------------------------------------------------- building
    def tensor_input(
        self, node: torch.fx.Node, arg: Any, what: str = "input", seq_first: bool = False
    ) -> str:
        if arg in self.seq_first and not seq_first:
            raise _Unsupported(
                f"its {what} '{arg.name}' is (sequence, batch, features): relgraph maps such "
                "a value only into nn.MultiheadAttention(batch_first=False) and the "
                "transpose(0, 1) back"
            )
        if arg in self.params:
            raise _Unsupported(_PARAM_OUTSIDE)
        if not isinstance(arg, torch.fx.Node):
            raise _Unsupported(
                f"its {what} is a constant ({type(arg).__name__}), not a tensor the graph computes"
            )
        value = self.values[arg]
        if value.node is None:
            raise _Unsupported(f"its {what} '{arg.name}' is not a tensor the graph computes")
        return value.node

    def add(self, node: torch.fx.Node, op: str, inputs: list[str], **fields: Any) -> None:
        axis = self.output_axis(node, op)
        name = self._name_for(node, op)
        self.nodes.append(NodeSpec(name=name, op=op, inputs=inputs, fields=fields))
        self.fx_of[name] = node
        finals = [self.values[a].final for a in node.all_input_nodes if a in self.values]
        final = next((f for f in finals if f is not None), None)  # a reshape of the logits
        self.values[node] = _Value(name, self.values[node].example, axis, final)

    def number_of(self, arg: Any) -> Any:
        """The number a size computation gave (``head ** -0.5``), else ``arg`` itself."""
        if isinstance(arg, torch.fx.Node) and arg in self.values:
            example = self.values[arg].example
            if _number(example) and self.values[arg].node is None:
                return example
        return arg

    def add_internal(
        self, node: torch.fx.Node, base: str, op: str, inputs: list[str], **fields: Any
    ) -> str:
        """A graph node inside ``node``'s expansion (attention); returns its name."""
        name = self._unique(base)
        self.nodes.append(NodeSpec(name=name, op=op, inputs=inputs, fields=fields))
        self.fx_of[name] = node
        self.internal.add(name)
        return name

    def output_axis(self, node: torch.fx.Node, op: str) -> int | None:
        """Refuse an op on a left-out softmax's output, or one a channels-last input does not
        allow; the output's ``axis`` (a linear or elementwise op on channels-last values)."""
        args = [a for a in node.all_input_nodes if a in self.values]
        for arg in args:
            final = self.values[arg].final
            if final is not None and op not in ("flatten", "reshape"):
                raise _Unsupported(
                    f"it computes from the softmax at fx node '{final.name}', which relgraph "
                    "leaves out (it explains the logits before a final softmax): only "
                    "reshapes and pools to one may follow that softmax"
                )
        squeezed = [a for a in args if self.values[a].axis is not None]
        if not squeezed:
            return None
        out_shape = self.out_shape(node)
        if op == "linear":
            return _feature_axis(out_shape)
        tensors = [a for a in args if isinstance(self.values[a].example, torch.Tensor)]
        if (
            op in _ELEMENTWISE_OPS
            and len(squeezed) == len(tensors)
            and all(self.in_shape(a) == out_shape for a in tensors)
        ):
            return _feature_axis(out_shape)
        first = squeezed[0]
        raise _Unsupported(
            f"its input '{first.name}' is a channels-last value of shape "
            f"{list(self.in_shape(first))}, which relgraph holds as (batch, features); on "
            "such a value it maps nn.Linear over the last dimension, elementwise "
            "activations, a final softmax, permute, flatten/view/reshape, and means or "
            "adaptive average pools over its size-1 dimensions"
        )

    def alias(self, node: torch.fx.Node, arg: torch.fx.Node) -> None:
        """``node`` computes no new values: it stands for its input ``arg``'s graph node (a
        channels-last input gives a channels-last value, its features where they now lie)."""
        source = self.values[arg]
        example = self.values[node].example
        axis = None if source.axis is None else _feature_axis(tuple(example.shape))
        self.values[node] = _Value(source.node, example, axis, source.final)

    def is_channels_last(self, arg: Any) -> bool:
        value = self.values.get(arg) if isinstance(arg, torch.fx.Node) else None
        return value is not None and value.axis is not None

    def is_squeezed(self, arg: Any) -> bool:
        """Channels-last, or the logits of a left-out softmax: every dimension but the batch
        and one is 1, so a pool or mean over them keeps the values (no node)."""
        value = self.values.get(arg) if isinstance(arg, torch.fx.Node) else None
        return value is not None and (value.axis is not None or value.final is not None)

    def out_shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        value = self.values[node].example
        if not isinstance(value, torch.Tensor):
            raise _Unsupported(f"it gives a {type(value).__name__}, not a tensor")
        return tuple(value.shape)

    def in_shape(self, arg: torch.fx.Node) -> tuple[int, ...]:
        return tuple(self.values[arg].example.shape)

    # ---------------------------------------------------------------- mapping
    def map_graph(self, gm: torch.fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            try:
                self.map_node(node)
            except _Unsupported as exc:
                raise self.error(node, str(exc)) from None
        self.check_shape_only_values(gm)

    def map_node(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            self.used.add(self.input_name)
            self.values[node] = _Value(self.input_name, self.values[node].example)
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, torch.fx.Node):
                raise _Unsupported(
                    "the model returns a "
                    f"{type(result).__name__}; relgraph imports models returning one tensor"
                )
            self.output = self.tensor_input(node, result, "output")
            if self.is_channels_last(result):  # named by the node that makes the output
                raise self.error(
                    result,
                    f"the model returns this channels-last value of shape "
                    f"{list(self.in_shape(result))}; relgraph's graph would give (batch, "
                    "features): end the model with a flatten (x.flatten(1))",
                )
        elif node.op == "call_module":
            self.map_module(node)
        elif node.op in ("call_function", "call_method"):
            self.map_function(node)
        elif node.op == "get_attr":
            value = self.values[node].example
            if isinstance(value, torch.Tensor):  # mapped where used (CLS token, positions)
                self.params[node] = (str(node.target), value.detach())
        else:
            raise _Unsupported(f"fx op '{node.op}' is not supported")

    def map_module(self, node: torch.fx.Node) -> None:
        module = self.modules[node.target]
        base = _supported_base(module)
        if isinstance(module, nn.Softmax) and type(module).forward is nn.Softmax.forward:
            if len(node.args) != 1 or node.kwargs:
                raise _Unsupported("a module called with more than one argument")
            self.drop_softmax(node, node.args[0], module.dim)
            return
        if base is None:
            raise _Unsupported(
                f"{type(module).__qualname__} has no relgraph op (supported: "
                + ", ".join(sorted({c.__name__ for c in SUPPORTED_MODULES}))
                + ")"
            )
        if base is nn.MultiheadAttention:
            _multihead_attention(self, node, module)
            return
        if len(node.args) != 1 or node.kwargs:
            raise _Unsupported("a module called with more than one argument")
        arg = node.args[0]
        source = self.tensor_input(node, arg)
        in_shape = self.in_shape(arg)
        if base is nn.Sigmoid and self.swish_gate(node, arg):
            return
        if base in _ADAPTIVE and self.is_squeezed(arg) and self.out_shape(node) == in_shape:
            self.alias(node, arg)  # a pool over size-1 dimensions
            return
        if self.is_channels_last(arg):
            if base is nn.Flatten:
                self.alias(node, arg)  # (batch, features) either way: no values move
                return
            if base is nn.Linear:
                axis = self.values[arg].axis
                if axis != len(in_shape) - 1:
                    raise _Unsupported(
                        f"nn.Linear over the last dimension of {list(in_shape)}, whose "
                        f"features are at dimension {axis}"
                    )
                in_shape = (in_shape[0], in_shape[axis])
        op, fields, tensors = _module_op(module, base, in_shape, self.out_shape(node))
        if tensors:
            path = str(node.target)
            if path in self.weighted_calls:
                raise _Unsupported(
                    f"module '{path}' is called a second time (first: fx node "
                    f"'{self.weighted_calls[path]}'); a relgraph node owns its weights, so "
                    "shared weights cannot be imported"
                )
            self.weighted_calls[path] = node.name
        self.add(node, op, [source], **fields)
        name = self.values[node].node
        for key, tensor in tensors.items():
            self.weights[f"{name}.{key}"] = tensor

    def map_function(self, node: torch.fx.Node) -> None:
        target = node.target
        args, kwargs = node.args, dict(node.kwargs)
        method = node.op == "call_method"
        example = self.values[node].example
        if not isinstance(example, torch.Tensor):
            # shape arithmetic (x.size(0), x.shape[1], ...): allowed where only reshapes use
            # it, which take their shape from the traced output (checked at the end)
            if (method and target in ("size", "dim")) or target in _SHAPE_MATH:
                return
            raise _Unsupported(f"it gives a {type(example).__name__}, which relgraph cannot use")
        handler = (_METHODS if method else _FUNCTIONS).get(target)
        if handler is None and any(a in self.params for a in node.all_input_nodes):
            raise _Unsupported(_PARAM_OUTSIDE)
        if handler is None:
            raise _Unsupported("no relgraph op for it")
        handler(self, node, args, kwargs)

    def swish_gate(self, node: torch.fx.Node, arg: Any) -> bool:
        """``node`` is the sigmoid of a swish ``x * sigmoid(x)`` (its one user the product
        with its own input): it gets no node; the product becomes ``silu``."""
        users = list(node.users)
        if len(users) != 1 or not isinstance(arg, torch.fx.Node):
            return False
        (product,) = users
        is_mul = (product.op == "call_function" and product.target in _MULS) or (
            product.op == "call_method" and product.target in ("mul", "mul_")
        )
        if not is_mul or product.kwargs or len(product.args) != 2:
            return False
        if set(product.args) != {node, arg} or self.is_channels_last(arg):
            return False
        self.swish_gates[node] = arg
        return True

    def drop_softmax(self, node: torch.fx.Node, arg: Any, dim: Any) -> None:
        """Leave out a final softmax over the classes: ``node`` stands for the logits."""
        if not isinstance(arg, torch.fx.Node) or self.values[arg].node is None:
            raise _Unsupported("a softmax of something that is not a tensor the graph computes")
        if dim is None:
            raise _Unsupported("a softmax without dim (PyTorch guesses one)")
        shape = self.in_shape(arg)
        dim = int(dim) + len(shape) if int(dim) < 0 else int(dim)
        if dim == 0 or shape[dim] != math.prod(shape[1:]):
            raise _Unsupported(
                f"a softmax over dimension {dim} of shape {list(shape)}; relgraph leaves out "
                "only a final softmax over the classes (every other dimension but the batch "
                "of size 1) and explains the logits before it"
            )
        if self.softmax is not None:
            raise _Unsupported(f"a second softmax (the first: fx node '{self.softmax.name}')")
        self.softmax = node
        self.alias(node, arg)
        self.values[node].final = node

    def check_shape_only_values(self, gm: torch.fx.GraphModule) -> None:
        """Shape arithmetic (``x.size(0)``) may only feed more shape arithmetic and reshapes,
        which take their shape from the traced output."""
        for node in gm.graph.nodes:
            value = self.values.get(node)
            if (
                value is None
                or value.node is not None
                or isinstance(value.example, torch.Tensor)
                or node.op in ("placeholder", "output", "get_attr")
            ):
                continue
            for user in node.users:
                used = self.values.get(user)
                shape_math = used is not None and used.node is None
                if not shape_math and user.target not in _SHAPE_USERS:
                    raise self.error(
                        node,
                        f"a shape value used by fx node '{user.name}' "
                        f"({_describe_target(user, self.modules)}); only reshapes may use one",
                    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _trace_failure(exc: BaseException) -> str:
    """Message for a model fx cannot trace, with the user's source line from the traceback."""
    frames = [
        f
        for f in inspect.getinnerframes(exc.__traceback__)
        if "/torch/" not in f.filename.replace("\\", "/")
    ]
    where = ""
    if frames:
        frame = frames[-1]
        code = (frame.code_context or [""])[0].strip()
        where = f"; at {frame.filename}:{frame.lineno}: {code}"
    return (
        f"torch.fx cannot trace the model ({type(exc).__name__}: {_first_line(exc)})"
        + where
        + "; data-dependent control flow or Python on tensor values cannot become a graph"
    )


def _dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.float32, torch.device("cpu")


def _module_op(
    module: nn.Module,
    base: type,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """The relgraph op, fields and weights of one supported module."""
    if base in _CONV:
        if module.padding_mode != "zeros":
            raise _Unsupported(f"padding_mode='{module.padding_mode}' (only 'zeros' is supported)")
        padding = module.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0,) * _CONV[base]
            else:  # 'same': PyTorch pads asymmetrically where the total is odd
                totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
                if any(t % 2 for t in totals):
                    raise _Unsupported(
                        "padding='same' with an even kernel pads unevenly; relgraph's conv "
                        "pads both sides alike"
                    )
                padding = tuple(t // 2 for t in totals)
        fields = {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": list(padding),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
        }
        return f"conv{_CONV[base]}d", fields, _tensors(module, ("weight", "bias"))
    if base is nn.LayerNorm:
        if len(module.normalized_shape) != 1:
            raise _Unsupported(
                f"layer norm over the last {len(module.normalized_shape)} dimensions; relgraph's "
                "layernorm normalises the last one"
            )
        affine = bool(module.elementwise_affine)
        if affine and module.bias is None:
            raise _Unsupported("layer norm with a weight but no bias (bias=False)")
        names = ("weight", "bias") if affine else ()
        return "layernorm", {"eps": float(module.eps), "affine": affine}, _tensors(module, names)
    if base is nn.GELU:
        return _GELUS[module.approximate], {}, {}
    if base is nn.Linear:
        if len(in_shape) < 2:
            raise _Unsupported(
                f"linear over the last dimension of a rank-{len(in_shape)} input "
                f"{list(in_shape)}; relgraph's linear takes (batch, features): flatten first"
            )
        fields = {
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
        return "linear", fields, _tensors(module, ("weight", "bias"))
    if base in _BATCHNORM:
        if module.running_mean is None or module.running_var is None:
            raise _Unsupported(
                "batch norm without running statistics (track_running_stats=False) "
                "normalises with each batch's own statistics, which is not an affine map"
            )
        fields = {"num_features": module.num_features, "eps": module.eps, "affine": module.affine}
        names = ("running_mean", "running_var") + (("weight", "bias") if module.affine else ())
        return f"batchnorm{_BATCHNORM[base]}d", fields, _tensors(module, names)
    if base in _MAXPOOL:
        if module.return_indices:
            raise _Unsupported("return_indices=True")
        dims = _MAXPOOL[base]
        fields = {
            "kernel_size": _ints_n(module.kernel_size, dims),
            "stride": _ints_n(module.stride or module.kernel_size, dims),
            "padding": _ints_n(module.padding, dims),
            "dilation": _ints_n(module.dilation, dims),
            "ceil_mode": bool(module.ceil_mode),
        }
        return f"maxpool{dims}d", fields, {}
    if base in _AVGPOOL:
        if getattr(module, "divisor_override", None) is not None:
            raise _Unsupported(f"divisor_override={module.divisor_override}")
        dims = _AVGPOOL[base]
        fields = {
            "kernel_size": _ints_n(module.kernel_size, dims),
            "stride": _ints_n(module.stride or module.kernel_size, dims),
            "padding": _ints_n(module.padding, dims),
            "ceil_mode": bool(module.ceil_mode),
            "count_include_pad": bool(module.count_include_pad),
        }
        return f"avgpool{dims}d", fields, {}
    if base in _ADAPTIVE:
        dims = _ADAPTIVE[base]
        return f"adaptive_avgpool{dims}d", {"output_size": list(out_shape[2:])}, {}
    if base in _DROPOUT:
        return "dropout", {"p": float(module.p)}, {}
    if base is nn.Flatten:
        return _flatten_op(in_shape, out_shape)
    return _PLAIN[base], {}, {}


def _ints_n(value: Any, dims: int) -> list[int]:
    values = _ints(value)
    return values * dims if len(values) == 1 else values


def _tensors(module: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        tensor = getattr(module, name, None)
        if tensor is not None:
            out[name] = tensor.detach()
    return out


def _flatten_op(
    in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``flatten`` when the result is (batch, everything), else ``reshape`` to the traced
    shape; a reshape that moves the batch is refused."""
    if out_shape[0] != in_shape[0] or len(out_shape) < 2:
        raise _Unsupported(
            f"it reshapes {list(in_shape)} to {list(out_shape)}, mixing the batch dimension "
            "(the example batch is "
            f"{EXAMPLE_BATCH}); relgraph keeps dimension 0 as the batch"
        )
    if len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
        return "flatten", {}, {}
    return "reshape", {"shape": list(out_shape[1:])}, {}


# --------------------------------------------------------------------------- handlers


def _elementwise(op: str) -> Callable:
    def handle(self: _Importer, node, args, kwargs) -> None:
        bound = _bind(_s_one, args, kwargs)
        if op == "sigmoid" and self.swish_gate(node, bound["input"]):
            return
        self.add(node, op, [self.tensor_input(node, bound["input"])])

    return handle


def _binary(op: str) -> Callable:
    def handle(self: _Importer, node, args, kwargs) -> None:
        bound = _bind(_s_binary, args, kwargs)
        if bound["alpha"] != 1:
            raise _Unsupported(f"alpha={bound['alpha']} is not supported")
        if _constant_operand(self, node, op, bound["input"], bound["other"]):
            return
        for gate, signal in ((bound["other"], bound["input"]), (bound["input"], bound["other"])):
            if op == "mul" and self.swish_gates.get(gate) is signal:  # x * sigmoid(x)
                self.add(node, "silu", [self.tensor_input(node, signal)])
                return
        inputs = [
            self.tensor_input(node, bound["input"], "first operand"),
            self.tensor_input(node, bound["other"], "second operand"),
        ]
        shapes = [self.in_shape(bound["input"]), self.in_shape(bound["other"])]
        if op == "add" and shapes[0] != shapes[1]:
            raise _Unsupported(
                f"add of shapes {list(shapes[0])} and {list(shapes[1])}: relgraph's add takes "
                "inputs of one shape"
            )
        if inputs[0] == inputs[1]:
            raise _Unsupported(f"both operands of {op} are the same tensor '{inputs[0]}'")
        fields = {}
        if op == "mul":  # a sigmoid times a signal shaped like the product: a gate (SE)
            made_by = {spec.name: spec.op for spec in self.nodes}
            out = tuple(self.out_shape(node))
            gates = [
                slot
                for slot in (0, 1)
                if made_by.get(inputs[slot]) == "sigmoid" and tuple(shapes[1 - slot]) == out
            ]
            if len(gates) == 1:
                fields["gate"] = gates[0]
        self.add(node, op, inputs, **fields)

    return handle


def _reshape(self: _Importer, node, args, kwargs) -> None:
    source = args[0] if args else kwargs.get("input")
    op, fields, _ = _flatten_op(self.in_shape(source), self.out_shape(node))
    if self.is_channels_last(source):  # (batch, features) either way: no values move
        self.alias(node, source)
        return
    self.add(node, op, [self.tensor_input(node, source)], **fields)


def _flatten(signature: Callable) -> Callable:
    def handle(self: _Importer, node, args, kwargs) -> None:
        if signature is _s_flatten_method:
            source, args = args[0], args[1:]
        else:
            source = None
        bound = _bind(signature, args, kwargs)
        source = bound.get("input", source)
        op, fields, _ = _flatten_op(self.in_shape(source), self.out_shape(node))
        if self.is_channels_last(source):  # (batch, features) either way: no values move
            self.alias(node, source)
            return
        self.add(node, op, [self.tensor_input(node, source)], **fields)

    return handle


def _cat(self: _Importer, node, args, kwargs) -> None:
    bound = _bind(_s_cat, args, kwargs)
    tensors = bound["tensors"]
    if not isinstance(tensors, (list, tuple)) or len(tensors) < 2:
        raise _Unsupported("concatenation needs a list of two or more tensors")
    if len(tensors) == 2 and tensors[0] in self.params and tensors[1] not in self.params:
        _prepend_token(self, node, tensors[0], tensors[1], int(bound["dim"]))
        return
    inputs = [self.tensor_input(node, t, f"tensor #{i + 1}") for i, t in enumerate(tensors)]
    if len(set(inputs)) != len(inputs):
        raise _Unsupported("one tensor is concatenated twice")
    rank = len(self.out_shape(node))
    dim = int(bound["dim"])
    dim = dim + rank if dim < 0 else dim
    if dim == 0:
        raise _Unsupported("concatenation along the batch dimension")
    self.add(node, "concat", inputs, dim=dim)


def _mean(self: _Importer, node, args, kwargs) -> None:
    if node.op == "call_method":
        source, args = args[0], args[1:]
        bound = _bind(_s_mean_method, args, kwargs)
    else:
        bound = _bind(_s_mean, args, kwargs)
        source = bound["input"]
    if bound.get("dtype") is not None:
        raise _Unsupported(f"dtype={bound['dtype']}")
    rank = len(self.in_shape(source))
    dims = bound["dim"]
    dims = list(range(rank)) if dims is None else _ints(dims)
    dims = sorted(d + rank if d < 0 else d for d in dims)
    if 0 in dims:
        raise _Unsupported("a mean over the batch dimension")
    ones = all(self.in_shape(source)[d] == 1 for d in dims)
    kept = self.in_shape(source) == self.out_shape(node)  # the graph node's shape still fits
    if ones and (self.is_channels_last(source) or (self.is_squeezed(source) and kept)):
        self.alias(node, source)  # over size-1 dimensions: the values stay
        return
    self.add(
        node, "mean", [self.tensor_input(node, source)], dims=dims, keepdim=bool(bound["keepdim"])
    )


def _dropout(self: _Importer, node, args, kwargs) -> None:
    bound = _bind(_s_dropout, args, kwargs)
    if bound["training"] is not False:
        raise _Unsupported(
            "F.dropout with training=True drops at random even in eval mode; pass "
            "training=self.training"
        )
    self.add(node, "dropout", [self.tensor_input(node, bound["input"])], p=float(bound["p"]))


def _adaptive(dims: int) -> Callable:
    def handle(self: _Importer, node, args, kwargs) -> None:
        bound = _bind(_s_adaptive, args, kwargs)
        source = bound["input"]
        if self.is_squeezed(source) and self.in_shape(source) == self.out_shape(node):
            self.alias(node, source)  # a pool over size-1 dimensions
            return
        self.add(
            node,
            f"adaptive_avgpool{dims}d",
            [self.tensor_input(node, bound["input"])],
            output_size=list(self.out_shape(node)[2:]),
        )

    return handle


def _noop(self: _Importer, node, args, kwargs) -> None:
    """``x.contiguous()``: the same values; the node stands for its input."""
    if len(args) != 1 or kwargs:
        raise _Unsupported("arguments to a no-op method")
    self.tensor_input(node, args[0])
    self.alias(node, args[0])


def _permute(self: _Importer, node, args, kwargs) -> None:
    """A permute that moves no values (at most one dimension besides the batch larger than
    1): a ``flatten`` to (batch, features), or nothing on a value already held so."""
    if node.op == "call_method":
        source, rest = args[0], args[1:]
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        dims = kwargs.get("dims", dims)
    else:
        bound = _bind(_s_permute, args, kwargs)
        source, dims = bound["input"], bound["dims"]
    self.tensor_input(node, source)
    in_shape = self.in_shape(source)
    rank = len(in_shape)
    dims = [int(d) + rank if int(d) < 0 else int(d) for d in dims]
    if dims[:1] != [0]:
        raise _Unsupported(f"permute {dims} moves the batch dimension")
    if dims == list(range(rank)) or self.is_channels_last(source):
        self.alias(node, source)
        return
    if sum(size != 1 for size in in_shape[1:]) > 1:
        self.add(node, "permute", [self.tensor_input(node, source)], dims=dims)
        return
    self.add(node, "flatten", [self.tensor_input(node, source)])
    self.values[node].axis = _feature_axis(self.out_shape(node))


def _softmax(self: _Importer, node, args, kwargs) -> None:
    if node.op == "call_method":
        source = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
    else:
        bound = _bind(_s_softmax, args, kwargs)
        source, dim = bound["input"], bound["dim"]
    if isinstance(source, torch.fx.Node) and source in self.values and dim is not None:
        shape = self.in_shape(source)
        axis = int(dim) + len(shape) if int(dim) < 0 else int(dim)
        if axis == len(shape) - 1 and 0 < axis and shape[axis] != math.prod(shape[1:]):
            # inside the model (attention probabilities), not a final softmax over classes
            self.add(node, "softmax", [self.tensor_input(node, source)])
            return
    self.drop_softmax(node, source, dim)


# --------------------------------------------------------------------------- token handlers


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _constant_operand(self: _Importer, node, op: str, a: Any, b: Any) -> bool:
    """``x * c`` / ``x / c`` for a number ``c`` (``scale``), ``x + p`` for a learned tensor
    ``p`` read outside a module (``add_param``: position embeddings). True when mapped."""
    a, b = self.number_of(a), self.number_of(b)
    if op in ("mul", "div") and (_number(a) or _number(b)):
        if op == "div" and _number(a):
            raise _Unsupported("a number divided by a tensor")
        tensor, factor = (b, a) if _number(a) else (a, b)
        factor = 1.0 / float(factor) if op == "div" else float(factor)
        self.add(node, "scale", [self.tensor_input(node, tensor)], factor=factor)
        return True
    if op == "add" and (a in self.params) != (b in self.params):
        tensor, param = (b, a) if a in self.params else (a, b)
        _, value = self.params[param]
        self.add(node, "add_param", [self.tensor_input(node, tensor)], shape=list(value.shape))
        self.weights[tensor_key(self.values[node].node, PARAM)] = value
        return True
    return False


def _div(self: _Importer, node, args, kwargs) -> None:
    if len(args) != 2 or kwargs:
        raise _Unsupported("a division other than tensor / number")
    if not _constant_operand(self, node, "div", args[0], args[1]):
        raise _Unsupported("a division by a tensor (only by a number)")


def _prepend_token(self: _Importer, node, param: torch.fx.Node, tokens: Any, dim: int) -> None:
    """``torch.cat([cls.expand(B, -1, -1), x], dim)``: a learned token before the tokens."""
    _, value = self.params[param]
    rank = len(self.out_shape(node))
    dim = dim + rank if dim < 0 else dim
    if value.dim() != rank or value.shape[0] != 1 or value.shape[dim] != 1:
        raise _Unsupported(
            f"a concatenation of the learned tensor {list(value.shape)} before the tokens; "
            "relgraph maps one token of shape [1, ..., 1, ..., D] expanded over the batch"
        )
    self.add(
        node, "prepend_token", [self.tensor_input(node, tokens)], dim=dim, shape=list(value.shape)
    )
    self.weights[tensor_key(self.values[node].node, PARAM)] = value


def _expand(self: _Importer, node, args, kwargs) -> None:
    """``param.expand(B, -1, -1)``: the learned tensor over the batch (mapped where used)."""
    source = args[0]
    if source not in self.params or kwargs:
        raise _Unsupported("expand of a tensor the graph computes (only of a learned token)")
    path, value = self.params[source]
    if tuple(self.out_shape(node)[1:]) != tuple(value.shape[1:]) or value.shape[0] != 1:
        raise _Unsupported(f"expand of {list(value.shape)} other than over the batch")
    self.params[node] = (path, value)


def _transpose(self: _Importer, node, args, kwargs) -> None:
    """``x.transpose(a, b)`` / ``torch.transpose``: a ``transpose`` node; (0, 1) of tokens
    marks a (sequence, batch, features) value, which only nn.MultiheadAttention takes."""
    source = args[0]
    dims = list(args[1:]) + [kwargs[k] for k in ("dim0", "dim1") if k in kwargs]
    if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        raise _Unsupported("transpose needs two integer dimensions")
    rank = len(self.in_shape(source))
    d0, d1 = sorted(d + rank if d < 0 else d for d in dims)
    if d0 == d1:
        self.tensor_input(node, source)
        self.alias(node, source)
        return
    if (d0, d1) == (0, 1) and rank == 3 and not self.is_channels_last(source):
        # (batch, sequence, features) <-> (sequence, batch, features): relgraph keeps the
        # batch first, so the values stay and the value is marked
        self.tensor_input(node, source, seq_first=True)
        self.alias(node, source)
        if source not in self.seq_first:
            self.seq_first.add(node)
        return
    if d0 == 0:
        raise _Unsupported(f"transpose {d0} {d1} moves the batch dimension")
    if self.is_channels_last(source):
        raise _Unsupported("transpose of a channels-last value")
    self.add(node, "transpose", [self.tensor_input(node, source)], dim0=d0, dim1=d1)


def _matmul(self: _Importer, node, args, kwargs) -> None:
    if len(args) != 2 or kwargs:
        raise _Unsupported("matmul needs two tensors")
    a = self.tensor_input(node, args[0], "first operand")
    b = self.tensor_input(node, args[1], "second operand")
    if self.in_shape(args[0])[:-2] != self.in_shape(args[1])[:-2]:
        raise _Unsupported(
            f"matmul of {list(self.in_shape(args[0]))} and {list(self.in_shape(args[1]))}: "
            "relgraph's matmul takes operands with the same leading dimensions"
        )
    self.add(node, "matmul", [a, b])


def _gelu(self: _Importer, node, args, kwargs) -> None:
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    if approximate not in _GELUS:
        raise _Unsupported(f"gelu with approximate={approximate!r}")
    self.add(node, _GELUS[approximate], [self.tensor_input(node, args[0])])


def _getitem(self: _Importer, node, args, kwargs) -> None:
    """``x[:, 0]`` (select) or ``x[:, a:b]`` (slice) on one dimension; ``mha(...)[0]``."""
    source, index = args
    if source in self.attention_outputs:
        if index != 0:
            raise _Unsupported("nn.MultiheadAttention's attention weights are used")
        self.alias(node, source)
        if source in self.seq_first:
            self.seq_first.add(node)
        return
    index = index if isinstance(index, tuple) else (index,)
    rank = len(self.in_shape(source))
    if Ellipsis in index or len(index) > rank or not index or index[0] != slice(None):
        raise _Unsupported(f"indexing {index!r}: relgraph maps x[:, i] and x[:, a:b]")
    picked = [(d, i) for d, i in enumerate(index) if i != slice(None)]
    if len(picked) != 1:
        raise _Unsupported(f"indexing {index!r}: one dimension at a time")
    (dim, item), source_name = picked[0], self.tensor_input(node, source)
    if isinstance(item, int):
        self.add(node, "select", [source_name], dim=dim, index=item)
    elif isinstance(item, slice) and item.step in (None, 1):
        fields = {"dim": dim, "start": item.start or 0}
        if item.stop is not None:
            fields["stop"] = item.stop
        self.add(node, "slice", [source_name], **fields)
    else:
        raise _Unsupported(f"indexing {index!r}")


def _attention_core(
    self: _Importer, node, q: str, k: str, v: str, scale: float, prefix: str
) -> str:
    """softmax(q·kᵀ · scale)·v as one fused ``attention`` node, which is returned (internal
    to ``node``)."""
    return self.add_internal(node, f"{prefix}.context", "attention", [q, k, v], scale=scale)


def _sdpa(self: _Importer, node, args, kwargs) -> None:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args)) | kwargs
    if bound.get("attn_mask") is not None or bound.get("is_causal") or bound.get("enable_gqa"):
        raise _Unsupported("scaled_dot_product_attention with a mask, is_causal or enable_gqa")
    if bound.get("dropout_p", 0.0):
        raise _Unsupported("scaled_dot_product_attention with dropout_p > 0")
    q, k, v = (self.tensor_input(node, bound[n], n) for n in ("query", "key", "value"))
    shapes = [self.in_shape(bound[n]) for n in ("query", "key", "value")]
    if len({s[:-2] for s in shapes}) != 1:
        raise _Unsupported(f"query, key and value of shapes {[list(s) for s in shapes]}")
    scale = self.number_of(bound.get("scale")) or shapes[0][-1] ** -0.5
    prefix = self._scope(node) + ".attention" if self._scope(node) else "attention"
    last = _attention_core(self, node, q, k, v, float(scale), prefix)
    self.internal.discard(last)
    self.values[node] = _Value(last, self.values[node].example)


def _multihead_attention(self: _Importer, node, module: nn.MultiheadAttention) -> None:
    """nn.MultiheadAttention as self-attention: q, k, v projections (slices of in_proj),
    heads, softmax(q·kᵀ/√d)·v, heads merged, out_proj (Vaswani et al. 2017)."""
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    bound = dict(zip(names, node.args)) | dict(node.kwargs)
    x = bound.get("query")
    if bound.get("key") is not x or bound.get("value") is not x:
        raise _Unsupported("nn.MultiheadAttention with key or value other than the query")
    for name in ("key_padding_mask", "attn_mask"):
        if bound.get(name) is not None:
            raise _Unsupported(f"nn.MultiheadAttention with {name}")
    if bound.get("is_causal"):
        raise _Unsupported("nn.MultiheadAttention with is_causal=True")
    if module.bias_k is not None or module.add_zero_attn or not module._qkv_same_embed_dim:
        raise _Unsupported("nn.MultiheadAttention with add_bias_kv, add_zero_attn, kdim or vdim")
    seq_first = not module.batch_first
    if seq_first != (x in self.seq_first):
        raise _Unsupported(
            "nn.MultiheadAttention(batch_first="
            f"{module.batch_first}) on a value that is not "
            + ("(sequence, batch, features)" if seq_first else "(batch, sequence, features)")
        )
    source = self.tensor_input(node, x, seq_first=True)
    shape = self.in_shape(x)
    if len(shape) != 3:
        raise _Unsupported(f"nn.MultiheadAttention on a rank-{len(shape)} input")
    tokens = shape[0] if seq_first else shape[1]
    embed, heads = module.embed_dim, module.num_heads
    head = embed // heads
    path = str(node.target)
    weight, bias = module.in_proj_weight.detach(), module.in_proj_bias
    split = []
    for i, part in enumerate("qkv"):
        name = self.add_internal(
            node,
            f"{path}.{part}_proj",
            "linear",
            [source],
            in_features=embed,
            out_features=embed,
            bias=bias is not None,
        )
        self.weights[f"{name}.weight"] = weight[i * embed : (i + 1) * embed]
        if bias is not None:
            self.weights[f"{name}.bias"] = bias.detach()[i * embed : (i + 1) * embed]
        heads_name = self.add_internal(
            node, f"{path}.{part}_heads", "reshape", [name], shape=[tokens, heads, head]
        )
        split.append(
            self.add_internal(
                node, f"{path}.{part}_transposed", "transpose", [heads_name], dim0=1, dim1=2
            )
        )
    context = _attention_core(self, node, *split, head**-0.5, path)
    merge = self.add_internal(node, f"{path}.merge", "transpose", [context], dim0=1, dim1=2)
    merged = self.add_internal(node, f"{path}.merged", "reshape", [merge], shape=[tokens, embed])
    out = module.out_proj
    name = self.add_internal(
        node,
        f"{path}.out_proj",
        "linear",
        [merged],
        in_features=embed,
        out_features=embed,
        bias=out.bias is not None,
    )
    self.weights[f"{name}.weight"] = out.weight.detach()
    if out.bias is not None:
        self.weights[f"{name}.bias"] = out.bias.detach()
    self.values[node] = _Value(name, self.values[node].example)
    self.attention_outputs.add(node)
    if seq_first:
        self.seq_first.add(node)


_RELU = _elementwise("relu")
_SIGMOID = _elementwise("sigmoid")
_SILU = _elementwise("silu")
_ADD = _binary("add")
_MUL = _binary("mul")
_MULS = (operator.mul, operator.imul, torch.mul)

_FUNCTIONS: dict[Any, Callable] = {
    torch.relu: _RELU,
    torch.relu_: _RELU,
    F.relu: _RELU,
    torch.sigmoid: _SIGMOID,
    F.sigmoid: _SIGMOID,
    F.silu: _SILU,
    operator.add: _ADD,
    operator.iadd: _ADD,
    torch.add: _ADD,
    operator.mul: _MUL,
    operator.imul: _MUL,
    torch.mul: _MUL,
    torch.cat: _cat,
    torch.permute: _permute,
    torch.softmax: _softmax,
    F.softmax: _softmax,
    torch.concat: _cat,
    torch.flatten: _flatten(_s_flatten),
    torch.reshape: _reshape,
    torch.mean: _mean,
    F.dropout: _dropout,
    F.adaptive_avg_pool1d: _adaptive(1),
    F.adaptive_avg_pool2d: _adaptive(2),
    F.adaptive_avg_pool3d: _adaptive(3),
    F.gelu: _gelu,
    F.scaled_dot_product_attention: _sdpa,
    torch.matmul: _matmul,
    torch.bmm: _matmul,
    operator.matmul: _matmul,
    torch.transpose: _transpose,
    operator.getitem: _getitem,
    operator.truediv: _div,
    torch.div: _div,
}

_METHODS: dict[str, Callable] = {
    "relu": _RELU,
    "relu_": _RELU,
    "sigmoid": _SIGMOID,
    "add": _ADD,
    "add_": _ADD,
    "mul": _MUL,
    "mul_": _MUL,
    "flatten": _flatten(_s_flatten_method),
    "view": _reshape,
    "reshape": _reshape,
    "mean": _mean,
    "contiguous": _noop,
    "permute": _permute,
    "softmax": _softmax,
    "transpose": _transpose,
    "matmul": _matmul,
    "expand": _expand,
    "div": _div,
}

#: fx targets whose shape argument may come from shape arithmetic
_RESHAPES = (torch.reshape, "view", "reshape")

#: arithmetic on sizes (``D // heads``, ``head ** -0.5``): a number, no node
_SHAPE_MATH = (
    getattr,
    operator.getitem,
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.truediv,
    operator.pow,
)

#: fx targets that may take a number computed from sizes: reshapes, an expand of a learned
#: token, a scale (``x * head ** -0.5``) and attention's scale
_SHAPE_USERS = (
    *_RESHAPES,
    "expand",
    *_MULS,
    "mul",
    "div",
    operator.truediv,
    torch.div,
    F.scaled_dot_product_attention,
)


# --------------------------------------------------------------------------- public


def from_torch(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    name: str | None = None,
    check: bool = True,
) -> Graph:
    """Import a ``torch.nn`` model as a relgraph ``Graph`` by tracing it with ``torch.fx``.

    Parameters
    ----------
    module
        The model. It is traced in eval mode (dropout the identity, batch norm on its running
        statistics) and put back in the mode it was in.
    input_shape
        The input's shape without the batch, e.g. ``(3, 16, 112, 112)``.
    name
        The architecture's name (default: the module's class name).
    check
        Compare the compiled graph's output with the module's on a random example batch and
        raise if they differ by more than ``CHECK_RTOL`` relative.

    Returns
    -------
    Graph
        Node names are module paths (``layer1.0.conv1.0``); ops called as functions or
        methods inside module ``m`` are named ``m.<op>`` (``layer1.0.add``), a second call of
        one module or op gets ``_1``, ``_2`` appended. The weights are the module's (the
        graph's dtype and device are the module's), so ``g.state_dict()`` has the module's
        keys. ``g.to_yaml()`` writes the architecture out. A final softmax over the classes
        (pytorchvideo's heads in eval mode) is left out with a ``RelgraphWarning``: the graph
        ends at the logits, which relgraph explains; ``softmax(output, dim=1)`` is the
        module's output. The patterns recognised (permute to channels-last before a linear,
        the final softmax, swish) are listed in the module's docstring.

    Raises
    ------
    TorchImportError
        For each construct relgraph cannot represent: a custom function or module, an
        unsupported argument, data-dependent control flow; the message names the fx node,
        its target and the source line.
    """
    if not isinstance(module, nn.Module):
        raise TorchImportError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    shape = tuple(input_shape)
    if not shape or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape
    ):
        raise TorchImportError(
            f"input_shape must be positive integers (batch left out), got {list(input_shape)}"
        )
    _check_importable(module, shape)
    name = name or type(module).__name__
    importer = _Importer(module, shape, name)
    was_training = module.training
    module.eval()
    try:
        gm = importer.trace()
        expected, example = importer.run_example(gm)
        importer.map_graph(gm)
    finally:
        module.train(was_training)
    graph = _compile(importer)
    if check:
        _check_forward(graph, importer, example, expected)
    if importer.softmax is not None:
        file, line, code = _source_of(importer.softmax)
        where = f" at {file}:{line} ({code})" if file else ""
        warnings.warn(
            f"from_torch: the final softmax (fx node '{importer.softmax.name}', "
            f"{_describe_target(importer.softmax, importer.modules)}){where} is left "
            f"out: the graph ends at the logits before it ('{graph.output}'), which relgraph "
            "explains; softmax(output, dim=1) is the module's output",
            RelgraphWarning,
            stacklevel=2,
        )
    return graph


def _check_importable(module: nn.Module, shape: tuple[int, ...]) -> None:
    """Refuse, before the example batch is made, a module without values (weights on the
    meta device) and an input too large for relgraph or for the memory there is."""
    on_meta = [
        name
        for name, tensor in (*module.named_parameters(), *module.named_buffers())
        if tensor.is_meta
    ]
    if on_meta:
        raise TorchImportError(
            f"the model's tensors are on the meta device (they have no values), e.g. "
            f"'{on_meta[0]}': materialise them first, e.g. module.to_empty(device='cpu') and "
            "load_state_dict(...)"
        )
    values = math.prod(shape)
    if values > MAX_ELEMENTS:
        raise TorchImportError(
            f"input_shape {list(shape)} has {values:,} values per sample, more than the "
            f"{MAX_ELEMENTS:,} relgraph accepts"
        )
    dtype, device = _dtype_device(module)
    needed = EXAMPLE_BATCH * values * torch.empty((), dtype=dtype).element_size()
    available = available_bytes(device)
    if available is not None and needed > available:
        raise TorchImportError(
            f"the example batch of input_shape {list(shape)} needs {format_bytes(needed)}, "
            f"more than the {format_bytes(available)} available on {device}; import at a "
            "smaller input size"
        )


def _compile(importer: _Importer) -> Graph:
    dtype, device = _dtype_device(importer.module)
    cls = type(importer.module)
    spec = ArchSpec(
        name=importer.name,
        description=f"imported from {cls.__module__}.{cls.__qualname__} by relgraph.from_torch",
        input_name=importer.input_name,
        input_shape=importer.input_shape,
        nodes=importer.nodes,
        output=importer.output or importer.input_name,
        file=f"<from_torch {cls.__qualname__}>",
    )
    unknown = sorted({n.op for n in importer.nodes} - set(OPS))
    if unknown:
        node = next(n for n in importer.nodes if n.op == unknown[0])
        raise importer.error(
            importer.fx_of[node.name],
            f"maps to op '{unknown[0]}', which this relgraph version does not have",
        )
    try:
        graph = compile_spec(spec, init="none", dtype=dtype, device=device)
    except RelgraphError as exc:
        fx_node = importer.fx_of.get(exc.node or "")
        if fx_node is None:
            raise TorchImportError(exc.message) from None
        raise importer.error(fx_node, exc.message) from None
    for node in graph.order[1:]:
        if node in importer.internal:
            continue
        value = importer.values[importer.fx_of[node]]
        traced = tuple(value.example.shape)
        traced = traced[1:] if value.axis is None else (traced[value.axis],)
        if graph.shape_of(node) != traced:
            raise importer.error(
                importer.fx_of[node],
                f"relgraph's op gives shape {list(graph.shape_of(node))}, the model {list(traced)}",
            )
    graph.assign(importer.weights)
    return graph


def _check_forward(
    graph: Graph, importer: _Importer, example: torch.Tensor, expected: torch.Tensor
) -> None:
    actual = graph.forward(example.to(graph.dtype), keep=()).output
    if importer.softmax is not None:  # left out: the module's output is its softmax
        actual = torch.softmax(actual, dim=1)
    scale = expected.abs().max().item()
    difference = (actual - expected).abs().max().item()
    if not difference <= CHECK_RTOL * max(scale, 1e-12):
        raise TorchImportError(
            f"the imported graph's output differs from the module's by {difference:.3g} "
            f"(largest output {scale:.3g}); the model does something relgraph does not see",
            file=graph.file,
        )


def load_factory(target: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build a model from ``"package.module:factory"`` (a class or function, dotted
    attributes allowed) called with ``kwargs``. The current folder is searched first, as
    ``python -m`` does.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TorchImportError(
            f"'{target}' is not package.module:factory (e.g. torchvision.models.video:r3d_18)"
        )
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise TorchImportError(
            f"cannot import '{module_name}': {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise TorchImportError(f"'{module_name}' has no attribute '{attr}'")
        factory = getattr(factory, part)
    if not callable(factory):
        raise TorchImportError(f"'{target}' is not callable")
    try:
        model = factory(**(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise TorchImportError(
            f"'{target}' failed with arguments {kwargs or {}}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise TorchImportError(
            f"'{target}' returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def parse_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """The CLI's ``--kwarg key=value`` items (keyword arguments of the factory: each key a
    Python identifier); values are read as YAML scalars (``10`` is an int, ``true`` a bool,
    ``r3d`` a string)."""
    return parse_key_values(items, "--kwarg", TorchImportError, identifiers=True)
