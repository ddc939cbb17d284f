"""The package's version, defined once in ``pyproject.toml``."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

__all__ = ["__version__", "package_version"]


def package_version() -> str:
    """The version in ``pyproject.toml`` (read from a checkout if not installed)."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        found = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.M)
        if found:
            return found.group(1)
    try:
        return metadata.version("relgraph")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = package_version()
