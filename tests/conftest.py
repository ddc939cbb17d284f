"""Shared pytest set-up: tests marked ``cuda`` are collected only where a CUDA device exists.

Without one they are deselected (reported as such), not skipped: they did not run, and the
summary says so plainly.
"""

from __future__ import annotations

import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    kept = [item for item in items if "cuda" not in item.keywords]
    deselected = [item for item in items if "cuda" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
