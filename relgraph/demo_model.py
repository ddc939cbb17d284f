"""The shipped demo model: c3d-tiny trained on the synthetic clips (motion decides, colour hints).

Made by ``scripts/train_demo_model.py``; it classifies ``relgraph.synthetic`` clips, given
through the ``hara`` preset at size 32, into ``relgraph.synthetic.CLASS_NAMES``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .graph import Graph, load_architecture

__all__ = ["DEMO_ARCHITECTURE", "DEMO_LABELS", "DEMO_PREPROCESS", "DEMO_WEIGHTS", "load_demo_model"]

DEMO_ARCHITECTURE = "c3d-tiny"
DEMO_PREPROCESS = "hara"
# Package data installed as plain files (the package is never zipped), so a Path is safe.
DEMO_WEIGHTS = Path(
    str(resources.files("relgraph").joinpath("data", "c3d-tiny-synthetic.safetensors"))
)
DEMO_LABELS = Path(str(resources.files("relgraph").joinpath("data", "synthetic-labels.txt")))


def load_demo_model() -> Graph:
    """c3d-tiny (its default parameters) with the shipped weights loaded."""
    graph = load_architecture(DEMO_ARCHITECTURE)
    graph.load_weights(DEMO_WEIGHTS)
    return graph
