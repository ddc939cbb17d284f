"""Relevance rules (``relgraph.rules``): the rule objects, composites and shipped presets."""

from . import attention  # noqa: F401  (registers the attention rules)
from .composite import Composite, Entry, Selector, as_composite, preset, preset_names
from .context import NodeContext
from .library import (
    AlphaBeta,
    Combine,
    Epsilon,
    Flat,
    Gamma,
    Pass,
    Proportional,
    SignalTakeAll,
    Split,
    Uniform,
    WinnerTakeAll,
    WSquare,
    ZBeta,
    ZPlus,
)
from .numerics import Stabilizer
from .policy import Policy
from .registry import NEEDS, RULES, Rule, make_rule, register_rule
from .zrule import Modifier, Term, ZRule

__all__ = [
    "NEEDS",
    "RULES",
    "AlphaBeta",
    "Combine",
    "Composite",
    "Entry",
    "Epsilon",
    "Flat",
    "Gamma",
    "Modifier",
    "NodeContext",
    "Pass",
    "Policy",
    "Proportional",
    "Rule",
    "Selector",
    "SignalTakeAll",
    "Split",
    "Stabilizer",
    "Term",
    "Uniform",
    "WSquare",
    "WinnerTakeAll",
    "ZBeta",
    "ZPlus",
    "ZRule",
    "as_composite",
    "make_rule",
    "preset",
    "preset_names",
    "register_rule",
]
