"""Weight files: the checkpoint formats C3D users bring, mapped onto graph node names.

Accepted: a training checkpoint dict (``{'epoch', 'state_dict', 'opt_dict'}``), a plain state
dict, keys with a ``module.`` prefix (DataParallel), the Sports-1M ``features.N`` /
``classifier.N`` naming, and safetensors files. Pickled files are read with
``torch.load(..., weights_only=True)`` only: a pickle is code, and we never run it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from relgraph.errors import ArgumentError, WeightsError
from relgraph.io.outputs import atomic_path

if TYPE_CHECKING:  # for annotations only: graph.py imports this module
    from relgraph.engine.graph import Graph

_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")
_INDEXED = re.compile(r"^(features|classifier)\.(\d+)\.(\w+)$")


def tensor_key(node: str, name: str) -> str:
    """The state-dict key of tensor ``name`` of ``node``: ``node.name``, or the node's name
    alone for an op's single learned constant, whose tensor name is empty (a
    ``torch.nn.Parameter`` such as a CLS token is keyed by its own path)."""
    return f"{node}.{name}" if name else node


def split_key(key: str, nodes) -> tuple[str, str]:
    """``(node, tensor name)`` of a state-dict key (the inverse of ``tensor_key``): the node
    itself where ``key`` names a node of ``nodes``, else split at the last dot."""
    if key in nodes:
        return key, ""
    node, _, name = key.rpartition(".")
    return node, name


KeyMap = Callable[["Graph", dict[str, torch.Tensor]], "dict[str, torch.Tensor] | None"]

KEY_MAPS: dict[str, KeyMap] = {}
"""Other key namings of a library's checkpoints, by name (``register_key_map``): each takes
the graph and the state dict and returns it renamed to the graph's keys, or ``None`` where
the file is not in its naming. Tried in order of registration, after the ``module.`` prefix
is stripped and where the keys do not already name the graph's tensors."""


def register_key_map(name: str) -> Callable[[KeyMap], KeyMap]:
    """Decorator: make a key naming known to ``load_weights``' auto-detection (an older
    layout of a library's checkpoints, say), reported as ``name`` in ``LoadReport.naming``."""

    def register(function: KeyMap) -> KeyMap:
        if name in KEY_MAPS:
            raise ArgumentError(f"key map '{name}' is registered twice")
        KEY_MAPS[name] = function
        return function

    return register


def _graph_keys(graph: Graph) -> set[str]:
    return {
        tensor_key(node, tname) for node in graph.order for tname in graph.tensor_shapes_of(node)
    }


@dataclass
class LoadReport:
    """What ``load_weights`` did: the key naming it detected and what stayed initialised."""

    source: str
    naming: str
    loaded: list[str] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{len(self.loaded)} tensors loaded from {self.source} ({self.naming} naming)"
        if self.not_in_file:
            text += "; kept initial values (not in the file): " + ", ".join(self.not_in_file)
        if self.skipped:
            text += "; skipped: " + ", ".join(self.skipped)
        return text


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict (checkpoint unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError("weight file not found", file=str(path))
    with open(path, "rb") as handle:
        head = handle.read(16)
    is_safetensors = path.suffix == ".safetensors" or (len(head) > 9 and head[8:9] == b"{")
    try:
        if is_safetensors:
            data = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():
                # torch warns about the pickle protocol of files it then reads (or refuses)
                warnings.simplefilter("ignore")
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes one clear error
        text = str(exc)
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        if refused:
            reason = (
                f"it holds a Python object ({refused.group(1)}) besides tensors, and relgraph "
                "loads pickles only with weights_only=True (a pickle is code); re-save it as a "
                "plain state dict"
            )
        elif "Weights only load failed" in text:
            # any other refusal of the restricted unpickler: corrupt bytes, or a pickle that
            # torch.save did not write (its opcodes may build arbitrary objects)
            reason = (
                "torch.load(weights_only=True) refused it: it is neither a PyTorch checkpoint "
                "nor a safetensors file (corrupt, truncated, or a pickle of other objects)"
            )
        raise WeightsError(f"cannot read the weight file: {reason}", file=str(path)) from None
    return unwrap_checkpoint(data, str(path))


def unwrap_checkpoint(data: object, source: str) -> dict[str, torch.Tensor]:
    """Take the state dict out of a training checkpoint and check every value is a tensor."""
    if isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
        for key in _CHECKPOINT_KEYS:
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict):
        raise WeightsError(
            f"expected a state dict (name → tensor), got {type(data).__name__}", file=source
        )
    state = {}
    not_tensors = []
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            state[str(key)] = value
        else:
            not_tensors.append(str(key))
    if not state:
        raise WeightsError(
            "the file holds no tensors"
            + (f" (keys: {', '.join(not_tensors[:10])})" if not_tensors else ""),
            file=source,
        )
    return state


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _map_indexed(graph: Graph, state: dict[str, torch.Tensor], source: str):
    """Map Sports-1M ``features.N`` onto conv nodes and ``classifier.N`` onto linear nodes,
    each in topological order. Returns the renamed dict and the nodes the file lacks."""
    groups: dict[str, set[int]] = {"features": set(), "classifier": set()}
    for key in state:
        match = _INDEXED.match(key)
        if match:
            groups[match.group(1)].add(int(match.group(2)))
    convs = [n for n in graph.order if graph.op(n).type.startswith("conv")]
    linears = [n for n in graph.order if graph.op(n).type == "linear"]
    mapping: dict[tuple[str, int], str] = {}
    missing: list[str] = []
    for group, nodes in (("features", convs), ("classifier", linears)):
        indices = sorted(groups[group])
        if len(indices) > len(nodes):
            raise WeightsError(
                f"the file has {len(indices)} '{group}.N' layers but the architecture has only "
                f"{len(nodes)} {'convolution' if group == 'features' else 'linear'} nodes "
                f"({', '.join(nodes)})",
                file=source,
            )
        mapping.update({(group, i): node for i, node in zip(indices, nodes)})
        missing += nodes[len(indices) :]
    renamed = {}
    for key, value in state.items():
        match = _INDEXED.match(key)
        if match:
            renamed[f"{mapping[(match.group(1), int(match.group(2)))]}.{match.group(3)}"] = value
        else:
            renamed[key] = value
    return renamed, missing


def checked_state_dict(
    graph: Graph, source: str | os.PathLike | dict, *, strict: bool = True
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Read weights for ``graph`` from a file or a state dict, renamed to its nodes and checked.

    Nothing is assigned: ``Graph.assign`` does that (``Graph.load_weights`` does both).

    Parameters
    ----------
    source
        A path (pickled checkpoint or state dict, or ``.safetensors``) or a dict.
    strict
        If true, any missing, unexpected or mis-shaped tensor is an error that lists them
        all. Nodes that a Sports-1M file cannot hold (``fc8``) are never an error: they keep
        their initial values (``LoadReport.not_in_file``). If false, keeps what fits and
        reports the rest.

    Returns
    -------
    state, report
        ``{"node.tensor": tensor}`` with only the graph's own, well-shaped, floating-point
        tensors (as read: not yet cast or moved), and what was found.
    """
    if isinstance(source, dict):
        name = "<state dict>"
        state = unwrap_checkpoint(source, name)
    else:
        name = str(source)
        state = read_state_dict(source)
    state = _strip_module_prefix(state)
    naming = "node"
    allowed_missing: list[str] = []
    if KEY_MAPS and not set(state) <= _graph_keys(graph):
        for map_name, key_map in KEY_MAPS.items():
            renamed = key_map(graph, state)
            if renamed is not None:
                state, naming = renamed, map_name
                break
    # a key's node is everything before its last dot (torchvision's S3D has nodes
    # ``features.0.0.0``: its own keys look like Sports-1M's but name the graph's nodes)
    if any(_INDEXED.match(k) for k in state) and not any(
        k.rsplit(".", 1)[0] in graph.graph for k in state
    ):
        naming = "features/classifier (Sports-1M)"
        state, allowed_missing = _map_indexed(graph, state, name)

    expected = {
        tensor_key(node, tname): (node, tname, shape)
        for node in graph.order
        for tname, shape in graph.tensor_shapes_of(node).items()
    }
    optional = {
        tensor_key(node, t) for node in graph.order for t in graph.op(node).optional_tensors
    }
    missing = [k for k in expected if k not in state and k.rsplit(".", 1)[0] not in allowed_missing]
    unexpected = [k for k in state if k not in expected and k not in optional]
    misshaped = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k][2])
    ]
    if (missing or unexpected or misshaped) and strict:
        lines = []
        if missing:
            lines.append("missing: " + ", ".join(f"{k} {list(expected[k][2])}" for k in missing))
        if unexpected:
            lines.append(
                "unexpected: " + ", ".join(f"{k} {list(state[k].shape)}" for k in unexpected)
            )
        if misshaped:
            lines.append(
                "mis-shaped: "
                + ", ".join(
                    f"{k} is {list(state[k].shape)} in the file, {list(expected[k][2])} in the "
                    "architecture"
                    for k in misshaped
                )
            )
        raise WeightsError(
            f"the weights do not match architecture '{graph.name}' ({naming} naming); "
            + "; ".join(lines),
            file=name,
        )

    to_load = [k for k in expected if k in state and k not in misshaped]
    # checked before anything is copied, so a refused file leaves the graph as it was
    not_float = [f"{k} ({state[k].dtype})" for k in to_load if not state[k].is_floating_point()]
    if not_float:
        raise WeightsError(
            "these tensors are not floating point: " + ", ".join(not_float), file=name
        )
    # a NaN or Inf weight turns every output into NaN and every map into zeros: refused here,
    # naming the tensors, rather than found as 'p = nan' after the whole explanation
    not_finite = [k for k in to_load if not bool(torch.isfinite(state[k]).all())]
    if not_finite:
        raise WeightsError(
            "these tensors hold NaN or Inf values: "
            + ", ".join(not_finite[:8])
            + (f" and {len(not_finite) - 8} more" if len(not_finite) > 8 else ""),
            file=name,
        )
    report = LoadReport(source=name, naming=naming, loaded=list(to_load))
    report.skipped = sorted(set(unexpected) | set(misshaped)) + [f"{k} (missing)" for k in missing]
    report.not_in_file = list(allowed_missing)
    return {key: state[key] for key in to_load}, report


def save_weights(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph.state_dict()``: safetensors for ``.safetensors``, else ``torch.save``."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in graph.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, str(tmp), metadata={"architecture": graph.name})
        else:
            torch.save(state, tmp)
