"""relgraph: an explicit layer-wise relevance graph engine for video classifiers."""

import re as _re
from importlib import metadata as _metadata
from pathlib import Path as _Path


def _version() -> str:
    """The version, defined once in ``pyproject.toml`` (read from a checkout if not installed)."""
    pyproject = _Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        found = _re.search(r'^version = "([^"]+)"', pyproject.read_text(), _re.M)
        if found:
            return found.group(1)
    try:
        return _metadata.version("relgraph")
    except _metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()


def _mount_top_level_packages() -> None:
    """Let ``relgraph.rules`` and ``relgraph.architectures`` resolve in a source checkout.

    The project keeps ``rules/`` and ``architectures/`` beside the package (an install maps
    them into it). In an uninstalled checkout the repository root joins the package's search
    path, so that those two folders import as subpackages there too.
    """
    here = _Path(__file__).resolve().parent
    top = here.parent
    if not (here / "rules").is_dir() and (top / "rules" / "__init__.py").is_file():
        __path__.append(str(top))


_mount_top_level_packages()

from relgraph import rules
from relgraph.engine.graph import (
    ForwardResult,
    Graph,
    architecture_from_yaml,
    compile_spec,
    load_architecture,
    shipped_architectures,
)
from relgraph.engine.reverse import (
    Explanation,
    explain,
    explain_with_rules,
    explanation,
    explanation_with_rules,
)
from relgraph.errors import (
    ArgumentError,
    DatasetError,
    GraphError,
    LabelError,
    OutputError,
    RelgraphError,
    RelgraphWarning,
    ResourceError,
    RuleError,
    ShapeError,
    SpecError,
    StoreError,
    TargetError,
    TorchImportError,
    VideoError,
    WeightsError,
)
from relgraph.methods.discriminative import DiscriminativeResult, discriminative
from relgraph.models.demo import load_demo_model
from relgraph.models.from_torch import from_torch
from relgraph.models.pretrained import load_pretrained
from relgraph.pipeline.video import (
    Model,
    VideoExplanation,
    VideoOptions,
    explain_video,
    load_model,
)

__all__ = [
    "ArgumentError",
    "DatasetError",
    "StoreError",
    "DiscriminativeResult",
    "Explanation",
    "ForwardResult",
    "Graph",
    "GraphError",
    "LabelError",
    "OutputError",
    "RelgraphError",
    "RelgraphWarning",
    "ResourceError",
    "RuleError",
    "ShapeError",
    "SpecError",
    "TargetError",
    "TorchImportError",
    "VideoError",
    "Model",
    "VideoExplanation",
    "VideoOptions",
    "WeightsError",
    "architecture_from_yaml",
    "compile_spec",
    "discriminative",
    "explain",
    "explain_video",
    "explain_with_rules",
    "explanation",
    "explanation_with_rules",
    "from_torch",
    "load_architecture",
    "load_demo_model",
    "load_model",
    "load_pretrained",
    "rules",
    "shipped_architectures",
]
