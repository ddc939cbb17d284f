"""relgraph.load_pretrained on Hugging Face folders written here (tiny random models, no Hub):
transformers 5's layout and the Hub's older one, safetensors and pytorch_model.bin, logits
equal to transformers', class names from id2label, the input preset from the processor's
configuration, and every bad folder refused with one clear line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformer_reference import hf_logits, hf_model

import relgraph
from relgraph.errors import LabelError, RelgraphError, SpecError, WeightsError
from relgraph.io.preprocess import get_preprocess

NAMES = ["abseiling", "archery", "bowling", "juggling balls", "yoga"]


def _save(model, folder):
    model.config.id2label = dict(enumerate(NAMES))
    model.config.label2id = {name: i for i, name in enumerate(NAMES)}
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["videomae", "vivit", "timesformer"])
def saved(request, tmp_path_factory):
    model, _ = hf_model(request.param, dtype=torch.float32)
    folder = _save(model, tmp_path_factory.mktemp(request.param))
    return request.param, model, folder


def _clip(batch=2):
    return torch.randn(batch, 3, 4, 16, 16, generator=torch.Generator().manual_seed(5))


def _assert_same_logits(graph, model):
    x = _clip()
    with torch.no_grad():
        expected = hf_logits(model, x)
    got = graph.forward(x).output
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_transformers5_folder_gives_transformers_logits(saved):
    family, model, folder = saved
    g = relgraph.load_pretrained(folder)
    assert g.name == family
    assert g.input_shape == (3, 4, 16, 16)
    _assert_same_logits(g, model)
    assert g.labels.names == NAMES
    assert g.default_preprocess == family


def _old_layout(family, key):
    """The Hub's older name of a transformers 5 key (written independently of the loader)."""
    if family == "vivit":
        key = re.sub(r"^vivit\.layers\.", "vivit.encoder.layer.", key)
        for new, old in (
            ("attention.q_proj", "attention.attention.query"),
            ("attention.k_proj", "attention.attention.key"),
            ("attention.v_proj", "attention.attention.value"),
            ("attention.o_proj", "attention.output.dense"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
        ):
            key = key.replace(f".{new}.", f".{old}.")
    if family == "videomae":
        key = key.replace("attention.attention.query.bias", "attention.attention.q_bias")
        key = key.replace("attention.attention.value.bias", "attention.attention.v_bias")
    return key


_FAST_LAYOUTS = {
    ("videomae", "hub", "pytorch_model.bin"),
    ("videomae", "transformers-5", "model.safetensors"),
    ("vivit", "hub", "model.safetensors"),
    ("vivit", "transformers-5", "pytorch_model.bin"),
}
_LAYOUTS = [
    pytest.param(
        family,
        layout,
        file,
        marks=() if (family, layout, file) in _FAST_LAYOUTS else pytest.mark.slow,
    )
    for family in ("videomae", "vivit", "timesformer")
    for layout in ("transformers-5", "hub")
    for file in ("model.safetensors", "pytorch_model.bin")
]


@pytest.mark.parametrize("family, layout, file", _LAYOUTS)
def test_both_key_layouts_load(family, layout, file, tmp_path):
    model, _ = hf_model(family, dtype=torch.float32, seed=4)
    saved = _save(model, tmp_path / "saved")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    old = {_old_layout(family, k): v for k, v in state.items()}
    # save_pretrained writes the Hub's layout: the renaming above is the one transformers uses
    assert set(load_file(str(saved / "model.safetensors"))) == set(old)
    if family == "videomae":
        assert any(k.endswith("attention.attention.q_bias") for k in old)
        assert not any(k.endswith("key.bias") for k in old)
    if family == "vivit":
        assert "vivit.encoder.layer.1.attention.attention.query.weight" in old
        assert "vivit.encoder.layer.1.output.dense.bias" in old
    weights = state if layout == "transformers-5" else old
    target = tmp_path / "folder"
    target.mkdir()
    (target / "config.json").write_text((saved / "config.json").read_text())
    if file.endswith(".bin"):
        torch.save(weights, target / file)
    else:
        save_file(weights, str(target / file))
    _assert_same_logits(relgraph.load_pretrained(target), model)


def test_sharded_folder_loads(tmp_path):
    model, _ = hf_model("vivit", dtype=torch.float32)
    folder = _save(model, tmp_path / "one")
    state = load_file(str(folder / "model.safetensors"))
    keys = sorted(state)
    target = tmp_path / "sharded"
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text())
    halves = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2 :]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(target / name))
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_same_logits(relgraph.load_pretrained(target), model)


def test_videomae_cls_pooling_and_other_act(tmp_path):
    model, _ = hf_model(
        "videomae", dtype=torch.float32, use_mean_pooling=False, hidden_act="gelu_new"
    )
    g = relgraph.load_pretrained(_save(model, tmp_path / "m"))
    assert "videomae.layernorm" in g.graph and "fc_norm" not in g.graph
    _assert_same_logits(g, model)


# ------------------------------------------------------------------------------ input presets
def _frames(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "processor, preset",
    [("VideoMAEImageProcessor", "videomae"), ("VivitImageProcessor", "vivit")],
)
def test_family_presets_equal_the_image_processors(processor, preset):
    transformers = pytest.importorskip("transformers")
    frames = _frames()
    kwargs = {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}}
    if preset == "videomae":  # the Hub's VideoMAE checkpoints: ImageNet's mean and std
        kwargs.update(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    proc = getattr(transformers, processor)(**kwargs, do_resize=False, do_center_crop=False)
    expected = proc(list(frames), return_tensors="pt")["pixel_values"][0]  # (T, C, H, W)
    got = get_preprocess(preset, size=16)(frames).permute(1, 0, 2, 3)
    assert torch.allclose(got, expected.float(), atol=1e-5)


def test_preprocessor_config_sets_the_preset(tmp_path):
    model, _ = hf_model("vivit", dtype=torch.float32)
    folder = _save(model, tmp_path / "m")
    config = {
        "image_processor_type": "VivitImageProcessor",
        "do_rescale": True,
        "rescale_factor": 1 / 127.5,
        "offset": True,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 16},
        "crop_size": {"height": 16, "width": 16},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    assert relgraph.load_pretrained(folder).default_preprocess == "vivit"
    config.update(image_mean=[0.4, 0.5, 0.6], offset=False, size={"shortest_edge": 20})
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    name = relgraph.load_pretrained(folder).default_preprocess
    preset = get_preprocess(name, size=16)
    assert preset.mean == pytest.approx((0.4, 0.5, 0.6))
    assert preset.scale == pytest.approx(1 / 127.5)
    assert preset.shorter_side == 20


# ------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def videomae_folder(tmp_path_factory):
    model, _ = hf_model("videomae", dtype=torch.float32)
    return _save(model, tmp_path_factory.mktemp("videomae") / "m")


@pytest.fixture()
def folder(videomae_folder, tmp_path):
    """A fresh copy of one saved VideoMAE folder, for each refusal test to spoil."""
    return Path(shutil.copytree(videomae_folder, tmp_path / "m"))


def _config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _refused(folder, error, *words):
    with pytest.raises(error) as info:
        relgraph.load_pretrained(folder)
    text = str(info.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


def test_refuses_missing_files(folder, tmp_path):
    _refused(tmp_path / "nowhere", WeightsError, "not a folder")
    (folder / "model.safetensors").unlink()
    _refused(folder, WeightsError, "model.safetensors or pytorch_model.bin")
    (folder / "config.json").unlink()
    _refused(folder, WeightsError, "config.json")


def test_refuses_unknown_model_type_and_bad_fields(folder):
    _config(folder, model_type="vit")
    _refused(folder, SpecError, "model_type", "'vit'")
    _config(folder, model_type="videomae", hidden_act="relu")
    _refused(folder, SpecError, "hidden_act", "relu")
    _config(folder, hidden_act="gelu", num_attention_heads=3)
    _refused(folder, SpecError, "num_attention_heads")
    _config(folder, num_attention_heads=2, hidden_size="16")
    _refused(folder, SpecError, "hidden_size")
    (folder / "config.json").write_text("{not json")
    _refused(folder, SpecError, "config.json", "JSON")


def test_refuses_timesformer_attention_types(tmp_path):
    model, _ = hf_model("timesformer", dtype=torch.float32)
    folder = _save(model, tmp_path / "m")
    _config(folder, attention_type="space_only")
    _refused(folder, SpecError, "attention_type", "space_only")


@pytest.mark.parametrize(
    "field, value, key",
    [
        ("hidden_size", 32, "projection.weight"),
        ("intermediate_size", 64, "intermediate.dense.weight"),
        ("num_hidden_layers", 1, "num_hidden_layers"),
        ("patch_size", 4, "projection.weight"),
    ],
)
def test_refuses_config_that_contradicts_the_weights(folder, field, value, key):
    _config(folder, **{field: value})
    _refused(folder, WeightsError, field, key)


def test_refuses_labels_that_contradict_the_weights(folder):
    _config(folder, id2label={str(i): f"c{i}" for i in range(7)}, label2id=None)
    _refused(folder, WeightsError, "num_labels", "classifier.weight")
    _config(folder, id2label={"0": "a", "1": "a", "2": "b", "3": "c", "4": "d"})
    _refused(folder, LabelError, "id2label", "twice")


def test_refuses_missing_and_unexpected_keys(folder):
    state = load_file(str(folder / "model.safetensors"))
    key = "videomae.encoder.layer.1.layernorm_after.bias"
    save_file({k: v for k, v in state.items() if k != key}, str(folder / "model.safetensors"))
    _refused(folder, WeightsError, "missing", key, "model.safetensors")
    save_file({**state, "extra.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    _refused(folder, WeightsError, "unexpected", "extra.weight")
    (folder / "model.safetensors").write_bytes(b"garbage")
    _refused(folder, RelgraphError, "model.safetensors")


@pytest.mark.parametrize("family", ["videomae", "vivit"])
def test_load_weights_takes_a_hub_state_dict(family):
    model, params = hf_model(family, dtype=torch.float32)
    old = {_old_layout(family, k): v for k, v in model.state_dict().items()}
    g = relgraph.load_architecture(family, init="none", **params)
    report = g.load_weights(old)
    assert report.naming == f"{family}-hub"
    _assert_same_logits(g, model)
