"""Weight files: every format of c3d.md loads, mismatches list every tensor, bad files are refused.

The files are written the way their producers write them: a plain ``torch.nn`` C3D and its
optimizer for training checkpoints, ``nn.DataParallel`` for the ``module.`` prefix, an
``nn.Sequential`` shaped like the Sports-1M model for ``features.N`` / ``classifier.N``.
"""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from reference_models import C3D_CONVS, ResNetTiny, c3d_tiny_reference
from safetensors.torch import save_file
from torch import nn

import relgraph

CLIP_SHAPE = (3, 16, 32, 32)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(11)
    return c3d_tiny_reference().eval()


@pytest.fixture
def clip() -> torch.Tensor:
    return torch.rand((2, *CLIP_SHAPE), generator=torch.Generator().manual_seed(12)) * 255 - 100


def fresh_graph(seed: int = 99) -> relgraph.Graph:
    return relgraph.load_architecture("c3d-tiny", seed=seed)


def assert_graph_computes_like(graph: relgraph.Graph, model: nn.Module, clip: torch.Tensor):
    with torch.no_grad():
        expected = model(clip)
    torch.testing.assert_close(graph(clip).output, expected, rtol=1e-5, atol=1e-6)


def assert_holds_weights_of(graph: relgraph.Graph, state: dict[str, torch.Tensor]):
    loaded = graph.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


# ----------------------------------------------------------------------- formats


def test_training_checkpoint_with_epoch_state_dict_and_opt_dict_loads(tmp_path, model, clip):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model(clip).sum().backward()
    optimizer.step()  # the optimizer state now holds a momentum tensor per parameter
    model.eval()
    path = tmp_path / "c3d-ucf101_epoch-3.pth.tar"
    torch.save(
        {"epoch": 3, "state_dict": model.state_dict(), "opt_dict": optimizer.state_dict()}, path
    )
    graph = fresh_graph()

    report = graph.load_weights(path)

    assert_holds_weights_of(graph, model.state_dict())
    assert_graph_computes_like(graph, model, clip)
    assert len(report.loaded) == len(model.state_dict())


def test_module_prefix_of_data_parallel_is_stripped(tmp_path, model, clip):
    state = nn.DataParallel(model).state_dict()
    assert all(key.startswith("module.") for key in state)
    path = tmp_path / "parallel.pth"
    torch.save({"epoch": 1, "state_dict": state, "opt_dict": {}}, path)
    graph = fresh_graph()

    graph.load_weights(path)

    assert_graph_computes_like(graph, model, clip)


def test_plain_state_dict_file_loads(tmp_path, model, clip):
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)
    graph = fresh_graph()

    graph.load_weights(path)

    assert_graph_computes_like(graph, model, clip)


def test_state_dict_given_as_a_dict_loads(model, clip):
    graph = fresh_graph()

    graph.load_weights(model.state_dict())

    assert_graph_computes_like(graph, model, clip)


def test_safetensors_file_loads(tmp_path, model, clip):
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    graph = fresh_graph()

    graph.load_weights(path)

    assert_graph_computes_like(graph, model, clip)


def test_safetensors_content_is_recognised_whatever_the_file_suffix(tmp_path, model, clip):
    path = tmp_path / "weights.bin"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    graph = fresh_graph()

    graph.load_weights(path)

    assert_graph_computes_like(graph, model, clip)


def sports1m_shaped(model: nn.Module) -> nn.Module:
    """The Sports-1M C3D layout: ``features`` and ``classifier`` as ``nn.Sequential``
    (conv/ReLU/pool in order, so the convs land at 0, 3, 6, 8, 11, 13, 16, 18 and the two
    linears at 0, 3), holding the convolutions and fc6/fc7 of ``model``."""
    convs = [getattr(model, name) for name in C3D_CONVS]
    pool = nn.MaxPool3d(2)
    features = nn.Sequential(
        convs[0], nn.ReLU(), pool,
        convs[1], nn.ReLU(), pool,
        convs[2], nn.ReLU(), convs[3], nn.ReLU(), pool,
        convs[4], nn.ReLU(), convs[5], nn.ReLU(), pool,
        convs[6], nn.ReLU(), convs[7], nn.ReLU(), pool,
    )  # fmt: skip
    classifier = nn.Sequential(model.fc6, nn.ReLU(), nn.Dropout(), model.fc7, nn.ReLU())
    return nn.ModuleDict({"features": features, "classifier": classifier})


def test_sports1m_file_has_the_documented_key_layout(model):
    keys = set(sports1m_shaped(model).state_dict())

    assert {k.rsplit(".", 1)[0] for k in keys} == {
        *(f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)),
        "classifier.0",
        "classifier.3",
    }


def test_sports1m_naming_loads_convs_and_fc6_fc7_in_order(tmp_path, model):
    path = tmp_path / "c3d-pretrained.pth"
    torch.save(sports1m_shaped(model).state_dict(), path)
    graph = fresh_graph()

    with pytest.warns(UserWarning, match="fc8"):
        graph.load_weights(path)

    for name in (*C3D_CONVS, "fc6", "fc7"):
        layer = getattr(model, name)
        assert torch.equal(graph.tensors(name)["weight"], layer.weight.detach()), name
        assert torch.equal(graph.tensors(name)["bias"], layer.bias.detach()), name


def test_sports1m_naming_leaves_fc8_as_initialised_and_reports_it(tmp_path, model):
    path = tmp_path / "c3d-pretrained.pth"
    torch.save(sports1m_shaped(model).state_dict(), path)
    graph = fresh_graph()
    fc8_before = {k: v.clone() for k, v in graph.tensors("fc8").items()}

    with pytest.warns(UserWarning, match="no weights for fc8") as caught:
        report = graph.load_weights(path)

    assert all(torch.equal(graph.tensors("fc8")[k], fc8_before[k]) for k in fc8_before)
    assert report.not_in_file == ["fc8"]
    assert "Sports-1M" in report.naming
    assert "fc8" in str(report)
    assert str(path) in str(caught[0].message)


def test_sports1m_naming_gives_the_full_c3d_outputs_of_the_same_layers(tmp_path, model, clip):
    path = tmp_path / "c3d-pretrained.pth"
    torch.save(sports1m_shaped(model).state_dict(), path)
    graph = fresh_graph()
    with pytest.warns(UserWarning, match="fc8"):
        graph.load_weights(path)
    with torch.no_grad():
        expected = model.activations(clip)

    for node in ("pool5", "fc7", "drop7"):
        torch.testing.assert_close(graph(clip).activations[node], expected[node])


def test_load_report_lists_every_loaded_tensor(model):
    graph = fresh_graph()

    report = graph.load_weights(model.state_dict())

    assert sorted(report.loaded) == sorted(model.state_dict())
    assert report.not_in_file == [] and report.skipped == []


def test_batchnorm_num_batches_tracked_is_accepted_and_ignored():
    torch.manual_seed(0)
    state = ResNetTiny().state_dict()
    assert "stem_bn.num_batches_tracked" in state
    graph = relgraph.load_architecture("resnet-tiny")

    report = graph.load_weights(state)

    assert "stem_bn.num_batches_tracked" not in graph.state_dict()
    assert "stem_bn.running_var" in report.loaded


def test_weights_are_cast_to_the_graphs_dtype(model):
    graph = relgraph.load_architecture("c3d-tiny", init="none", dtype=torch.float64)

    graph.load_weights(model.state_dict())

    assert {t.dtype for t in graph.state_dict().values()} == {torch.float64}


# ----------------------------------------------------------------------- mismatches


def test_mismatch_error_lists_every_missing_unexpected_and_misshaped_tensor(model):
    state = dict(model.state_dict())
    del state["fc7.bias"]
    del state["conv3a.weight"]
    state["fc9.weight"] = torch.zeros(3, 3)
    state["conv2.weight"] = torch.zeros(16, 8, 3, 3, 1)
    state["fc8.bias"] = torch.zeros(101)

    with pytest.raises(relgraph.WeightsError) as caught:
        fresh_graph().load_weights(state)

    message = str(caught.value)
    assert "fc7.bias [64]" in message
    assert "conv3a.weight [32, 16, 3, 3, 3]" in message
    assert "fc9.weight [3, 3]" in message
    assert "conv2.weight is [16, 8, 3, 3, 1] in the file, [16, 8, 3, 3, 3]" in message
    assert "fc8.bias is [101] in the file, [4]" in message
    assert "\n" not in message


def test_refused_weights_leave_the_graph_unchanged(model):
    graph = fresh_graph()
    before = {k: v.clone() for k, v in graph.state_dict().items()}
    state = dict(model.state_dict())
    state["fc8.weight"] = torch.zeros(101, 64)

    with pytest.raises(relgraph.WeightsError):
        graph.load_weights(state)

    assert all(torch.equal(graph.state_dict()[k], before[k]) for k in before)


def test_non_strict_loading_takes_what_fits_and_reports_the_rest(model):
    state = dict(model.state_dict())
    del state["fc7.bias"]
    state["fc8.weight"] = torch.zeros(101, 64)
    graph = fresh_graph()

    report = graph.load_weights(state, strict=False)

    assert torch.equal(graph.tensors("conv1")["weight"], model.conv1.weight.detach())
    assert "fc8.weight" in report.skipped
    assert "fc7.bias (missing)" in report.skipped
    assert "fc8.weight" not in report.loaded


def test_integer_tensor_is_refused_and_leaves_the_graph_unchanged(model):
    graph = fresh_graph()
    before = {k: v.clone() for k, v in graph.state_dict().items()}
    state = dict(model.state_dict())
    state["fc8.bias"] = torch.zeros(4, dtype=torch.int64)

    with pytest.raises(relgraph.WeightsError, match=r"fc8.bias \(torch.int64\)"):
        graph.load_weights(state)

    assert all(torch.equal(graph.state_dict()[k], before[k]) for k in before)


def test_file_with_no_tensors_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, path)

    with pytest.raises(relgraph.WeightsError, match="no tensors") as caught:
        fresh_graph().load_weights(path)

    assert caught.value.file == str(path)


# ----------------------------------------------------------------------- unsafe or broken files

UNPICKLED = []


def record_that_pickle_code_ran():
    UNPICKLED.append("ran")
    return "code ran"


class CodeOnLoad:
    """An object whose unpickling calls a function: what a malicious checkpoint does."""

    def __reduce__(self):
        return (record_that_pickle_code_ran, ())


def test_pickle_with_a_python_object_is_refused_without_running_it(tmp_path, model):
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": model.state_dict(), "hook": CodeOnLoad()}, path)

    with pytest.raises(relgraph.WeightsError, match="weights_only") as caught:
        fresh_graph().load_weights(path)

    assert UNPICKLED == []
    assert caught.value.file == str(path)
    assert "record_that_pickle_code_ran" in str(caught.value)


def test_plain_pickle_of_a_custom_object_is_refused(tmp_path):
    path = tmp_path / "object.pkl"
    path.write_bytes(pickle.dumps({"conv1.weight": CodeOnLoad()}))

    with pytest.raises(relgraph.WeightsError, match="weights_only"):
        fresh_graph().load_weights(path)

    assert UNPICKLED == []


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", bytes(range(256)) * 4],
    ids=["empty", "text", "binary"],
)
def test_corrupt_file_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(content)

    with pytest.raises(relgraph.WeightsError) as caught:
        fresh_graph().load_weights(path)

    assert caught.value.file == str(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_weight_file_is_an_error_naming_the_file(tmp_path, model, suffix):
    whole = tmp_path / f"whole{suffix}"
    fresh_graph().save_weights(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(relgraph.WeightsError) as caught:
        fresh_graph().load_weights(cut)

    assert caught.value.file == str(cut)


def test_missing_weight_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "absent.pth"

    with pytest.raises(relgraph.WeightsError, match="not found") as caught:
        fresh_graph().load_weights(path)

    assert caught.value.file == str(path)


def test_reading_a_weight_file_raises_no_warnings_of_its_own(tmp_path, model):
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh_graph().load_weights(path)


# ----------------------------------------------------------------------- saving


def test_state_dict_uses_node_dot_tensor_names(model):
    graph = fresh_graph()

    assert set(graph.state_dict()) == set(model.state_dict())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_saved_weights_load_into_a_fresh_graph_with_identical_outputs(tmp_path, clip, suffix):
    graph = fresh_graph(seed=1)
    path = tmp_path / f"saved{suffix}"

    graph.save_weights(path)
    other = fresh_graph(seed=2)
    other.load_weights(path)

    assert_holds_weights_of(other, graph.state_dict())
    assert torch.equal(other(clip).output, graph(clip).output)


def test_saved_safetensors_file_is_readable_by_the_safetensors_library(tmp_path):
    from safetensors.torch import load_file

    graph = fresh_graph(seed=1)
    path = tmp_path / "saved.safetensors"

    graph.save_weights(path)

    assert_holds_weights_of(graph, load_file(str(path)))


def test_assign_sets_cast_copies_and_drops_the_caches():
    graph = fresh_graph()
    graph.cache["stale"] = torch.zeros(1)
    new = torch.full(graph.tensors("fc8")["bias"].shape, 2.0, dtype=torch.float64)

    graph.assign({"fc8.bias": new})

    assert graph.tensors("fc8")["bias"].dtype == graph.dtype
    assert torch.equal(graph.tensors("fc8")["bias"], new.to(graph.dtype))
    new.zero_()  # a copy, not the caller's tensor
    assert graph.tensors("fc8")["bias"].eq(2).all()
    assert graph.cache == {}


@pytest.mark.parametrize(
    "key, shape, match",
    [("fc9.bias", (1,), "names no tensor"), ("fc8.bias", (3,), r"is \[3\], the graph needs")],
)
def test_assign_refuses_a_bad_key_or_shape_and_changes_nothing(key, shape, match):
    graph = fresh_graph()
    before = graph.tensors("conv1")["weight"].clone()
    state = {"conv1.weight": torch.zeros_like(before), key: torch.zeros(shape)}

    with pytest.raises(relgraph.WeightsError, match=match):
        graph.assign(state)
    assert torch.equal(graph.tensors("conv1")["weight"], before)
