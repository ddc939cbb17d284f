"""Op capabilities are Protocols: each op family has exactly the capabilities the ops module
documents, rules check them with ``isinstance``, and ``Rule.requires`` takes a Protocol or its
name."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from relgraph.rules import Rule

import relgraph
from relgraph.engine import capabilities as cap
from relgraph.engine.ops import OPS

# the families of relgraph.engine.ops' module docstring, typed in from it
FAMILY = {
    "conv": {"affine", "vjp"},
    "linear": {"affine", "vjp"},
    "batchnorm": {"affine", "channelwise", "vjp"},
    "maxpool": {"window", "max_route", "vjp"},
    "avgpool": {"window", "vjp"},
    "adaptive_avgpool": {"window", "vjp"},
    "mean": {"window", "vjp"},
    "add": {"split", "vjp"},
    "concat": {"split", "vjp"},
    "mul": {"product", "vjp"},
    "relu": {"reshape", "vjp"},
    "sigmoid": {"reshape", "vjp"},
    "silu": {"reshape", "vjp"},
    "dropout": {"reshape", "vjp"},
    "identity": {"reshape", "vjp"},
    "flatten": {"reshape", "vjp"},
    "reshape": {"reshape", "vjp"},
    "input": set(),
    "conv2d_frames": {"affine", "vjp"},
    "layernorm": {"normalize", "vjp"},
    "gelu": {"reshape", "vjp"},
    "gelu_new": {"reshape", "vjp"},
    "gelu_fast": {"reshape", "vjp"},
    "gelu_pytorch_tanh": {"reshape", "vjp"},
    "scale": {"reshape", "vjp"},
    "softmax": {"softmax", "vjp"},
    "matmul": {"bilinear", "vjp"},
    "attention": {"attention", "vjp"},
    "permute": {"index", "vjp"},
    "transpose": {"index", "vjp"},
    "slice": {"index", "vjp"},
    "select": {"index", "vjp"},
    "repeat": {"index", "vjp"},
    "prepend_token": {"index", "vjp"},
    "add_param": {"shift", "vjp"},
    "add_sinusoid": {"shift", "vjp"},
}
# families with no map of their own beyond vjp: declared by name, no Protocol
DECLARED = {"softmax", "index"}


def family(op_name: str) -> str:
    return op_name.rstrip("123d") if op_name[-2:] in ("1d", "2d", "3d") else op_name


def test_every_op_is_described():
    assert {family(name) for name in OPS} == set(FAMILY)


@pytest.fixture(scope="module")
def ops():
    """One op of every type, as compiled in shipped and test architectures."""
    found = {}
    for arch in ("resnet-tiny", "c3d-tiny", "x3d-xs", "s3d", "videomae-tiny"):
        graph = relgraph.load_architecture(arch, init="none")
        for node in graph.order:
            found.setdefault(graph.op(node).type, graph.op(node))
    return found


def test_each_compiled_op_has_its_familys_capabilities(ops):
    assert len(ops) >= 10
    for name, op in ops.items():
        assert op.capabilities == FAMILY[family(name)], name
        for alias, protocol in cap.CAPABILITIES.items():
            assert isinstance(op, protocol) == (alias in FAMILY[family(name)]), (name, alias)


def members(protocol: type) -> set[str]:
    """The public members a Protocol asks for, its bases' included."""
    names: set[str] = set()
    for klass in protocol.__mro__:
        if getattr(klass, "_is_protocol", False) and klass.__module__ == cap.__name__:
            names |= set(vars(klass)) | set(getattr(klass, "__annotations__", {}))
    return {n for n in names if not n.startswith("_")}


def test_every_registered_op_class_has_exactly_its_familys_members():
    for name, factory in OPS.items():
        cls = factory.func if isinstance(factory, functools.partial) else factory
        having = {
            alias
            for alias, protocol in cap.CAPABILITIES.items()
            if all(hasattr(cls, member) for member in members(protocol))
        }
        assert having == FAMILY[family(name)] - DECLARED, name


def test_a_new_op_gets_a_capability_by_having_its_members():
    class Doubling:
        def pass_relevance(self, relevance, x_shape):
            return relevance.reshape(x_shape)

    assert isinstance(Doubling(), cap.Reshaping)
    assert not isinstance(Doubling(), cap.Affine)
    assert cap.capabilities_of(Doubling()) == {"reshape"}


@dataclasses.dataclass
class Halving(Rule):
    name = "halving-test"

    def relevance(self, ctx, relevance):
        return [relevance.reshape(ctx.input_shapes[0]) / 2]


@pytest.mark.parametrize("requires", [(cap.Reshaping,), ("reshape",)], ids=["protocol", "alias"])
def test_requires_takes_a_protocol_or_its_name(ops, requires):
    rule = type("Custom", (Halving,), {"requires": requires})()
    assert rule.fits(ops["relu"]) and rule.fits(ops["flatten"])
    assert not rule.fits(ops["conv3d"])


def test_an_unknown_capability_name_is_an_argument_error_and_fits_no_op(ops):
    with pytest.raises(relgraph.ArgumentError, match="unknown op capability 'reshap'"):
        cap.capability("reshap")
    rule = type("Custom", (Halving,), {"requires": ("reshap",)})()
    assert not any(rule.fits(op) for op in ops.values())
