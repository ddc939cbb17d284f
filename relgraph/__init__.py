"""relgraph: an explicit layer-wise relevance graph engine for video classifiers."""

from pathlib import Path as _Path

from relgraph.version import __version__ as __version__


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
from relgraph.datasets.store import read_index
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
    resolve_rules,
)
from relgraph.engine.weights import checked_state_dict
from relgraph.errors import (
    ArgumentError,
    DatasetError,
    GraphError,
    LabelError,
    OpDefinitionError,
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
from relgraph.io.labels import Labels
from relgraph.io.preprocess import get_preprocess
from relgraph.io.video import read_video, select_clip
from relgraph.methods.baselines import gradient, gradient_times_input, integrated_gradients
from relgraph.methods.discriminative import DiscriminativeResult, discriminative
from relgraph.methods.heads import HeadRelevance, discriminative_heads, head_relevance
from relgraph.models.demo import load_demo_model
from relgraph.models.from_torch import from_torch
from relgraph.models.pretrained import load_pretrained
from relgraph.pipeline.video import (
    ClipResult,
    Model,
    VideoExplanation,
    VideoOptions,
    explain_clips,
    explain_video,
    load_model,
    select_clips,
    write_clip,
)

# The public names, each once; docs/reference/api.md lists them by task.
__all__ = [
    # errors and warnings
    "ArgumentError",
    "DatasetError",
    "GraphError",
    "LabelError",
    "OpDefinitionError",
    "OutputError",
    "RelgraphError",
    "RelgraphWarning",
    "ResourceError",
    "RuleError",
    "ShapeError",
    "SpecError",
    "StoreError",
    "TargetError",
    "TorchImportError",
    "VideoError",
    "WeightsError",
    # architectures and graphs
    "ForwardResult",
    "Graph",
    "architecture_from_yaml",
    "checked_state_dict",
    "compile_spec",
    "from_torch",
    "load_architecture",
    "load_demo_model",
    "load_pretrained",
    "shipped_architectures",
    # explanations
    "DiscriminativeResult",
    "Explanation",
    "HeadRelevance",
    "discriminative",
    "discriminative_heads",
    "explain",
    "explain_with_rules",
    "explanation",
    "explanation_with_rules",
    "gradient",
    "gradient_times_input",
    "head_relevance",
    "integrated_gradients",
    "resolve_rules",
    "rules",
    # videos
    "ClipResult",
    "Labels",
    "Model",
    "VideoExplanation",
    "VideoOptions",
    "explain_clips",
    "explain_video",
    "get_preprocess",
    "load_model",
    "read_index",
    "read_video",
    "select_clip",
    "select_clips",
    "write_clip",
]
