"""Adding an op is one decorated class (engine.ops.register_op); fields are typed attributes."""

from __future__ import annotations

import pytest
import torch

import relgraph
from relgraph.engine.fields import Field
from relgraph.engine.ops import OPS, ConvNd, Elementwise, Spatial, register_op


@pytest.fixture
def registry():
    saved = dict(OPS)
    yield OPS
    OPS.clear()
    OPS.update(saved)


YAML = """
name: scaled
input: {name: x, shape: [2, 3]}
nodes:
  - {name: s, op: scale_test, factor: 3.0}
output: s
"""


def test_one_decorated_class_is_a_usable_op(registry):
    @register_op("scale_test")
    class Scale(Elementwise):
        factor = Field[float]("float", 1.0)

        def forward(self, inputs, tensors):
            return inputs[0] * self.factor

    graph = relgraph.architecture_from_yaml(YAML)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(graph(x).output, 3 * x)
    assert "factor: 3.0" in graph.to_yaml()
    assert relgraph.architecture_from_yaml(graph.to_yaml()).op("s") == graph.op("s")
    with pytest.raises(relgraph.SpecError, match="field 'factor' of scale_test must be a number"):
        relgraph.architecture_from_yaml(YAML.replace("3.0", "three"))


def test_a_name_is_registered_once(registry):
    with pytest.raises(ValueError, match="'relu' is registered twice"):

        @register_op("relu")
        class Other(Elementwise):
            pass


def test_a_spatial_op_registers_once_per_dimension_count(registry):
    @register_op("pad{dims}d_test", dims=(2, 3))
    class Pad(Spatial, Elementwise):
        pass

    assert {"pad2d_test", "pad3d_test"} <= set(OPS) and "pad1d_test" not in OPS
    op = OPS["pad3d_test"]()
    assert (op.type, op.dims) == ("pad3d_test", 3)
    with pytest.raises(relgraph.OpDefinitionError, match="not a Spatial op"):
        register_op("flat{dims}d_test", dims=(1,))(type("Flat", (Elementwise,), {}))


def test_fields_are_attributes_of_the_checked_values():
    conv = OPS["conv3d"](out_channels=4, kernel_size=3, padding=[0, 1, 1])
    assert isinstance(conv, ConvNd)
    assert (conv.type, conv.dims) == ("conv3d", 3)
    assert conv.kernel_size == (3, 3, 3) and conv.padding == (0, 1, 1) and conv.bias is True
    assert conv.attrs["kernel_size"] == conv.kernel_size
    assert list(ConvNd.fields)[:3] == ["in_channels", "out_channels", "kernel_size"]
    assert conv != OPS["conv2d"](out_channels=4, kernel_size=3)
    with pytest.raises(AttributeError):
        conv.count_include_pad  # noqa: B018 - a field of another op
