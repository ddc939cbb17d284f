"""relgraph: an explicit layer-wise relevance graph engine for video (3D CNN) classifiers."""

from . import rules
from .discriminative import DiscriminativeResult, discriminative
from .errors import (
    GraphError,
    LabelError,
    OutputError,
    RelgraphError,
    RelgraphWarning,
    RuleError,
    ShapeError,
    SpecError,
    TargetError,
    TorchImportError,
    VideoError,
    WeightsError,
)
from .graph import (
    ForwardResult,
    Graph,
    architecture_from_yaml,
    compile_spec,
    load_architecture,
    shipped_architectures,
)
from .importer import from_torch
from .pipeline import VideoExplanation, explain_video
from .reverse import Explanation, explain, explain_with_rules

__version__ = "0.1.0"

__all__ = [
    "DiscriminativeResult",
    "Explanation",
    "ForwardResult",
    "Graph",
    "GraphError",
    "LabelError",
    "OutputError",
    "RelgraphError",
    "RelgraphWarning",
    "RuleError",
    "ShapeError",
    "SpecError",
    "TargetError",
    "TorchImportError",
    "VideoError",
    "VideoExplanation",
    "WeightsError",
    "architecture_from_yaml",
    "compile_spec",
    "discriminative",
    "explain",
    "explain_video",
    "explain_with_rules",
    "from_torch",
    "load_architecture",
    "rules",
    "shipped_architectures",
]
