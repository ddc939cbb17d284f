"""Hugging Face model folders (``config.json`` and weights) as relgraph graphs.

``load_pretrained(folder)`` reads what ``save_pretrained`` writes, or what a Hub download
holds, for the three video transformers relgraph ships: VideoMAE (Tong et al. 2022), ViViT
(Arnab et al. 2021) and TimeSformer (Bertasius et al. 2021). The configuration picks and sizes
the shipped YAML (``architectures/videomae.yaml``, ``vivit.yaml``, ``timesformer.yaml``), the
weights are renamed from the Hub's older key layout where needed and loaded strictly, the
class names come from ``id2label`` and the input preset from ``preprocessor_config.json``
(else the family's default).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from relgraph.engine.graph import Graph, load_architecture
from relgraph.engine.token_ops import HIDDEN_ACTS
from relgraph.engine.weights import read_state_dict, register_key_map
from relgraph.errors import LabelError, RelgraphError, SpecError, WeightsError
from relgraph.io.labels import Labels
from relgraph.io.preprocess import PRESETS, Preprocess

__all__ = ["FAMILIES", "is_pretrained_folder", "load_pretrained", "pretrained_params"]

#: ``model_type`` values of ``config.json`` this module reads (the shipped YAML of each)
FAMILIES = ("videomae", "vivit", "timesformer")

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# the Hub's older key layouts, renamed to the one transformers 5 writes (the YAMLs' names);
# transformers 5 applies the same renamings when it loads such a checkpoint
_OLD_LAYOUT: dict[str, list[tuple[re.Pattern, str]]] = {
    "videomae": [
        (re.compile(r"\.attention\.attention\.q_bias$"), ".attention.attention.query.bias"),
        (re.compile(r"\.attention\.attention\.v_bias$"), ".attention.attention.value.bias"),
    ],
    "vivit": [
        (re.compile(r"^vivit\.encoder\.layer\.(\d+)\."), r"vivit.layers.\1."),
        (re.compile(r"\.attention\.attention\.query\."), ".attention.q_proj."),
        (re.compile(r"\.attention\.attention\.key\."), ".attention.k_proj."),
        (re.compile(r"\.attention\.attention\.value\."), ".attention.v_proj."),
        (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
        (re.compile(r"^(vivit\.layers\.\d+)\.intermediate\.dense\."), r"\1.mlp.fc1."),
        (re.compile(r"^(vivit\.layers\.\d+)\.output\.dense\."), r"\1.mlp.fc2."),
    ],
    "timesformer": [],
}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a ``config.json`` (a Hugging Face model folder)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file()


def load_pretrained(
    folder: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> Graph:
    """Load a Hugging Face video-transformer folder as a relgraph graph.

    Parameters
    ----------
    folder
        A folder with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (or
        their sharded ``*.index.json``), as ``save_pretrained`` writes it or the Hub holds it;
        ``preprocessor_config.json`` is read if present.
    dtype, device
        The graph's format and device.

    Returns
    -------
    Graph
        The shipped architecture of ``model_type`` (``videomae``, ``vivit``, ``timesformer``)
        at the configuration's sizes, with the folder's weights, ``graph.labels`` from
        ``id2label`` and ``graph.default_preprocess`` from the preprocessor configuration (else
        the family's preset: ``videomae``, ``vivit`` or ``timesformer``). Its input is
        ``(B, C, T, H, W)``, as for every relgraph model.

    Raises
    ------
    WeightsError
        The folder, ``config.json`` or the weight file is missing or unreadable, or the weights'
        keys or shapes do not match the configuration (the key or field is named).
    SpecError
        ``config.json`` has an unknown ``model_type``, a field of the wrong type, or a setting
        that relgraph does not build (TimeSformer attention other than divided space-time).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError("not a folder (a Hugging Face model folder was expected)", file=folder)
    config_path = folder / "config.json"
    config = _read_json(config_path, required=True)
    family, params = pretrained_params(config, file=config_path)
    state, weight_path = _read_weights(folder)
    state = _new_layout(family, state)
    _check_against_config(family, params, state, weight_path)
    graph = load_architecture(family, init="none", dtype=dtype, device=device, **params)
    try:
        graph.load_weights(state)
    except WeightsError as exc:
        raise WeightsError(exc.message, file=weight_path) from None
    graph.labels = _labels(config, config_path)
    graph.default_preprocess = _preprocess(family, folder, params["image_size"])
    return graph


def pretrained_params(
    config: Mapping[str, Any], *, file: str | os.PathLike = "config.json"
) -> tuple[str, dict[str, Any]]:
    """The shipped architecture and its parameters for a Hugging Face ``config.json``.

    Returns
    -------
    family, params
        ``"videomae"``, ``"vivit"`` or ``"timesformer"``, and the YAML's parameters.
    """
    if not isinstance(config, Mapping):
        raise SpecError("config.json must hold a JSON object", file=file)
    family = config.get("model_type")
    if family not in FAMILIES:
        raise SpecError(
            f"field 'model_type' is {family!r}; relgraph loads {', '.join(FAMILIES)} folders "
            "(other models: write a YAML or import the module with relgraph.from_torch)",
            file=file,
        )
    field = _Fields(config, file)
    params: dict[str, Any] = {
        "hidden_size": field.positive("hidden_size", 768),
        "num_hidden_layers": field.positive("num_hidden_layers", 12),
        "num_attention_heads": field.positive("num_attention_heads", 12),
        "intermediate_size": field.positive("intermediate_size", 3072),
        "num_channels": field.positive("num_channels", 3),
        "image_size": field.square("image_size", 224),
        "num_labels": _num_labels(config, file),
    }
    act = config.get("hidden_act", "gelu_fast" if family == "vivit" else "gelu")
    if act not in HIDDEN_ACTS:
        raise SpecError(
            f"field 'hidden_act' is {act!r}; the transformer YAMLs build {', '.join(HIDDEN_ACTS)}",
            file=file,
        )
    params["hidden_act"] = HIDDEN_ACTS[act]
    eps_default = 1e-12 if family == "videomae" else 1e-6
    params["layer_norm_eps"] = field.positive_float("layer_norm_eps", eps_default)
    if family == "videomae":
        params["patch_size"] = field.square("patch_size", 16)
        params["tubelet_size"] = field.positive("tubelet_size", 2)
        params["num_frames"] = field.positive("num_frames", 16)
        # transformers 5 calls it qv_bias; older configs qkv_bias (query and value biases)
        name = "qv_bias" if "qv_bias" in config else "qkv_bias"
        params["qv_bias"] = int(field.boolean(name, True))
        params["use_mean_pooling"] = int(field.boolean("use_mean_pooling", True))
        time_step = params["tubelet_size"]
    elif family == "vivit":
        tubelet = config.get("tubelet_size", [2, 16, 16])
        if (
            not isinstance(tubelet, (list, tuple))
            or len(tubelet) != 3
            or not all(_is_int(v) and v > 0 for v in tubelet)
        ):
            raise SpecError(
                f"field 'tubelet_size' must be three positive integers [t, h, w], not {tubelet!r}",
                file=file,
            )
        if tubelet[1] != tubelet[2]:
            raise SpecError(
                f"field 'tubelet_size' {list(tubelet)}: only square tubelets (h = w) are built",
                file=file,
            )
        params["tubelet_time"], params["patch_size"] = int(tubelet[0]), int(tubelet[1])
        params["num_frames"] = field.positive("num_frames", 32)
        params["qkv_bias"] = int(field.boolean("qkv_bias", True))
        time_step = params["tubelet_time"]
    else:
        attention = config.get("attention_type", "divided_space_time")
        if attention != "divided_space_time":
            raise SpecError(
                f"field 'attention_type' is {attention!r}; only TimeSformer's "
                "'divided_space_time' attention is built (space_only and joint_space_time are "
                "not)",
                file=file,
            )
        params["patch_size"] = field.square("patch_size", 16)
        params["num_frames"] = field.positive("num_frames", 8)
        params["qkv_bias"] = int(field.boolean("qkv_bias", True))
        time_step = 1
    if params["hidden_size"] % params["num_attention_heads"]:
        raise SpecError(
            f"field 'hidden_size' ({params['hidden_size']}) is not a multiple of "
            f"'num_attention_heads' ({params['num_attention_heads']})",
            file=file,
        )
    if params["image_size"] % params["patch_size"]:
        raise SpecError(
            f"field 'image_size' ({params['image_size']}) is not a multiple of the patch size "
            f"({params['patch_size']})",
            file=file,
        )
    if params["num_frames"] % time_step:
        raise SpecError(
            f"field 'num_frames' ({params['num_frames']}) is not a multiple of the tubelet's "
            f"length ({time_step})",
            file=file,
        )
    return family, params


class _Fields:
    """Typed reads of config fields, each refused with the field's name."""

    def __init__(self, config: Mapping[str, Any], file: str | os.PathLike) -> None:
        self.config, self.file = config, file

    def _bad(self, name: str, value: Any, what: str) -> SpecError:
        return SpecError(f"field '{name}' must be {what}, not {value!r}", file=self.file)

    def positive(self, name: str, default: int) -> int:
        value = self.config.get(name, default)
        if not _is_int(value) or value < 1:
            raise self._bad(name, value, "a positive integer")
        return int(value)

    def square(self, name: str, default: int) -> int:
        value = self.config.get(name, default)
        if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]
        if not _is_int(value) or value < 1:
            raise self._bad(name, value, "a positive integer (or a square [n, n])")
        return int(value)

    def positive_float(self, name: str, default: float) -> float:
        value = self.config.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise self._bad(name, value, "a positive number")
        if not math.isfinite(value):
            raise self._bad(name, value, "a finite number")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.config.get(name, default)
        if not isinstance(value, bool):
            raise self._bad(name, value, "true or false")
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num_labels(config: Mapping[str, Any], file: str | os.PathLike) -> int:
    id2label = config.get("id2label")
    count = config.get("num_labels")
    if id2label is not None:
        if not isinstance(id2label, Mapping) or not id2label:
            raise SpecError(
                f"field 'id2label' must be a non-empty object, not {id2label!r}", file=file
            )
        if count is not None and count != len(id2label):
            raise SpecError(
                f"field 'num_labels' is {count!r} but 'id2label' names {len(id2label)} classes",
                file=file,
            )
        return len(id2label)
    if count is None:
        raise SpecError("neither 'id2label' nor 'num_labels' says how many classes", file=file)
    if not _is_int(count) or count < 1:
        raise SpecError(f"field 'num_labels' must be a positive integer, not {count!r}", file=file)
    return int(count)


def _labels(config: Mapping[str, Any], file: Path) -> Labels | None:
    """Class names from ``id2label`` in index order (keys ``"0"`` … ``"N-1"``)."""
    id2label = config.get("id2label")
    if not id2label:
        return None
    by_index: dict[int, str] = {}
    for key, name in id2label.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise SpecError(
                f"field 'id2label' has a key {key!r} that is not an index", file=file
            ) from None
        by_index[index] = str(name)
    if sorted(by_index) != list(range(len(by_index))):
        raise SpecError(
            f"field 'id2label' must number its classes 0..{len(by_index) - 1}, "
            f"got {sorted(by_index)[:8]}",
            file=file,
        )
    try:
        return Labels([by_index[i] for i in range(len(by_index))], file=file)
    except LabelError as exc:
        raise LabelError(f"field 'id2label': {exc.message}", file=file) from None


def _read_json(path: Path, *, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise WeightsError(
                f"the model folder has no {path.name} (a Hugging Face model folder holds "
                "config.json and model.safetensors or pytorch_model.bin)",
                file=path.parent,
            )
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the file: {exc}", file=path) from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON: {exc.msg}", file=path, line=exc.lineno) from None
    if not isinstance(data, dict):
        raise SpecError("must hold a JSON object", file=path)
    return data


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The folder's state dict (one file, or the shards an index lists) and where it came from."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name), folder / name
    for name in _SHARD_INDEXES:
        index_path = folder / name
        if index_path.is_file():
            index = _read_json(index_path, required=True)
            weight_map = index.get("weight_map") if index else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise WeightsError("the index has no 'weight_map' object", file=index_path)
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                shard_path = folder / shard
                if Path(shard).name != shard or not shard_path.is_file():
                    raise WeightsError(
                        f"the index names the shard {shard!r}, which the folder lacks",
                        file=index_path,
                    )
                state.update(read_state_dict(shard_path))
            return state, index_path
    raise WeightsError(
        f"the model folder has no weights: expected {' or '.join(_WEIGHT_FILES)}", file=folder
    )


def _new_layout(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys in transformers 5's layout: the Hub's older names renamed, others kept."""
    renamed = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in _OLD_LAYOUT[family]:
            new = pattern.sub(replacement, new)
        if new in renamed:
            raise WeightsError(f"the keys '{key}' and another both name '{new}'")
        renamed[new] = value
    return renamed


def _hub_key_map(family: str) -> Callable:
    def key_map(graph: Graph, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        renamed = _new_layout(family, state)
        return renamed if graph.name == family and set(renamed) != set(state) else None

    return key_map


for _family in ("videomae", "vivit"):
    register_key_map(f"{_family}-hub")(_hub_key_map(_family))


def _check_against_config(
    family: str,
    params: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    weight_path: Path,
) -> None:
    """Refuse a configuration that contradicts the weights, naming the field and the key."""
    prefix = {"videomae": "videomae", "vivit": "vivit", "timesformer": "timesformer"}[family]
    layer = {
        "videomae": r"videomae\.encoder\.layer\.(\d+)\.",
        "vivit": r"vivit\.layers\.(\d+)\.",
        "timesformer": r"timesformer\.encoder\.layer\.(\d+)\.",
    }[family]
    fc1 = {
        "videomae": "videomae.encoder.layer.0.intermediate.dense.weight",
        "vivit": "vivit.layers.0.mlp.fc1.weight",
        "timesformer": "timesformer.encoder.layer.0.intermediate.dense.weight",
    }[family]
    patch = f"{prefix}.embeddings.patch_embeddings.projection.weight"
    checks: list[tuple[str, str, Callable[[tuple[int, ...]], int], str, Any]] = [
        ("hidden_size", patch, lambda s: s[0], "rows", params["hidden_size"]),
        ("num_channels", patch, lambda s: s[1], "input channels", params["num_channels"]),
        ("patch_size", patch, lambda s: s[-1], "kernel width", params["patch_size"]),
        ("num_labels", "classifier.weight", lambda s: s[0], "rows", params["num_labels"]),
        ("intermediate_size", fc1, lambda s: s[0], "rows", params["intermediate_size"]),
    ]
    if family == "videomae":
        checks.append(
            ("tubelet_size", patch, lambda s: s[2], "kernel length", params["tubelet_size"])
        )
    if family == "vivit":
        checks.append(
            ("tubelet_size", patch, lambda s: s[2], "kernel length", params["tubelet_time"])
        )
        tokens = (params["num_frames"] // params["tubelet_time"]) * (
            params["image_size"] // params["patch_size"]
        ) ** 2 + 1
        checks.append(
            (
                "num_frames/image_size",
                f"{prefix}.embeddings.position_embeddings",
                lambda s: s[1],
                "tokens",
                tokens,
            )
        )
    if family == "timesformer":
        checks.append(
            (
                "image_size",
                f"{prefix}.embeddings.position_embeddings",
                lambda s: s[1],
                "tokens",
                (params["image_size"] // params["patch_size"]) ** 2 + 1,
            )
        )
        checks.append(
            (
                "num_frames",
                f"{prefix}.embeddings.time_embeddings",
                lambda s: s[1],
                "frames",
                params["num_frames"],
            )
        )
    for field, key, part, what, expected in checks:
        tensor = state.get(key)
        if tensor is None or tensor.dim() < 2:
            continue  # the strict load names it as missing or mis-shaped
        found = part(tuple(tensor.shape))
        if found != expected:
            raise WeightsError(
                f"config.json's '{field}' gives {expected} but the weights' '{key}' has {found} "
                f"{what} (shape {list(tensor.shape)}): the configuration does not describe "
                "these weights",
                file=weight_path,
            )
    layers = {int(m.group(1)) for k in state if (m := re.match(layer, k))}
    if layers and len(layers) != params["num_hidden_layers"]:
        raise WeightsError(
            f"config.json's 'num_hidden_layers' gives {params['num_hidden_layers']} but the "
            f"weights hold {len(layers)} layers (indices {min(layers)}..{max(layers)})",
            file=weight_path,
        )


# ---------------------------------------------------------------------------- preprocessing
def _preprocess(family: str, folder: Path, image_size: int) -> str:
    """The preset name for this folder: from ``preprocessor_config.json`` if present (a new
    preset is registered when it matches no known one), else the family's default."""
    path = folder / "preprocessor_config.json"
    data = _read_json(path, required=False)
    if data is None:
        return family
    preset = preprocess_from_config(data, name=family, size=image_size, file=path)
    for name, known in PRESETS.items():
        try:
            known = known.with_size(image_size)
        except RelgraphError:
            continue
        if _same_preset(known, preset):
            return name
    digest = hashlib.sha1(repr(preset).encode()).hexdigest()[:8]
    name = f"{family}-{digest}"
    PRESETS[name] = Preprocess(**{**preset.__dict__, "name": name})
    return name


def _same_preset(a: Preprocess, b: Preprocess) -> bool:
    close = lambda x, y: all(abs(u - v) <= 1e-6 * max(1.0, abs(v)) for u, v in zip(x, y))  # noqa: E731
    return (
        a.channel_order == b.channel_order
        and a.size == b.size
        and a.shorter_side == b.shorter_side
        and a.resize_shape == b.resize_shape
        and a.crop_origin == b.crop_origin
        and a.rounding == b.rounding
        and close(a.mean, b.mean)
        and close(a.std, b.std)
        and close((a.scale,), (b.scale,))
    )


def preprocess_from_config(
    data: Mapping[str, Any], *, name: str, size: int, file: str | os.PathLike
) -> Preprocess:
    """A :class:`Preprocess` from a Hugging Face ``preprocessor_config.json``.

    The model input is ``((pixel · rescale_factor − offset) − image_mean) / image_std``, with
    offset 1 where ``offset`` is true (``VivitImageProcessor``), as the image processors compute
    it. The shorter side is resized to ``size["shortest_edge"]`` scaled by ``size / crop`` (the
    crop is the model's image size), then centre-cropped.
    """

    def three(field: str, default: float) -> tuple[float, float, float]:
        value = data.get(field, default)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise SpecError(f"field '{field}' must be three numbers, not {value!r}", file=file)
        return tuple(float(v) for v in value)  # type: ignore[return-value]

    scale = 1.0
    if data.get("do_rescale", True):
        scale = data.get("rescale_factor", 1 / 255)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise SpecError(
                f"field 'rescale_factor' must be a positive number, not {scale!r}", file=file
            )
    offset = 1.0 if data.get("do_rescale", True) and data.get("offset", False) else 0.0
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if data.get("do_normalize", True):
        mean, std = three("image_mean", 0.5), three("image_std", 0.5)
        if min(std) <= 0:
            raise SpecError(f"field 'image_std' must be positive, not {list(std)}", file=file)
    shorter = None
    crop = data.get("crop_size") or {}
    crop_side = crop.get("height") if isinstance(crop, dict) else None
    resize = data.get("size") or {}
    shortest = resize.get("shortest_edge") if isinstance(resize, dict) else None
    if _is_int(shortest) and _is_int(crop_side) and crop_side > 0 and shortest != crop_side:
        shorter = max(size, round(shortest * size / crop_side))
    return Preprocess(
        name=name,
        mean=tuple(offset + m for m in mean),  # type: ignore[arg-type]
        std=std,
        scale=float(scale),
        channel_order="RGB",
        size=size,
        shorter_side=shorter,
        rounding="torchvision",
    )
