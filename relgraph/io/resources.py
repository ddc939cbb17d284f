"""Files shipped with relgraph, by kind and name: architectures and rule presets.

``shipped_path("architecture", "c3d")`` is ``relgraph/architectures/c3d.yaml`` wherever the
package is installed; ``shipped_names("preset")`` lists the rule presets. Paths given by a user
are not this module's business: callers decide what is a path and what is a name.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from relgraph.errors import ArgumentError, RelgraphError, RuleError, SpecError, did_you_mean


@dataclass(frozen=True)
class _Kind:
    package: str
    folder: str  # inside the package; "" for its top
    what: str  # "no {what} named ..."
    listing: str  # "({listing}: a, b; ...)"
    error: type[RelgraphError]


_KINDS = {
    "architecture": _Kind("relgraph.architectures", "", "architecture", "shipped", SpecError),
    "preset": _Kind("relgraph.rules", "presets", "rule preset", "presets", RuleError),
}

SUFFIX = ".yaml"


def _folder(kind: str):
    try:
        spec = _KINDS[kind]
    except KeyError:
        kinds = ", ".join(_KINDS)
        raise ArgumentError(f"unknown kind of shipped file {kind!r} (kinds: {kinds})") from None
    folder = importlib.resources.files(spec.package)
    return folder / spec.folder if spec.folder else folder


def shipped_names(kind: str) -> list[str]:
    """Sorted names of the shipped files of ``kind`` (``"architecture"`` or ``"preset"``)."""
    return sorted(
        p.name[: -len(SUFFIX)] for p in _folder(kind).iterdir() if p.name.endswith(SUFFIX)
    )


def shipped_path(kind: str, name: str) -> Path:
    """The file of the shipped ``kind`` named ``name``.

    Raises
    ------
    SpecError, RuleError
        (for architectures, presets) when nothing of that name is shipped; the message lists
        what is, with a did-you-mean.
    """
    candidate = _folder(kind) / f"{name}{SUFFIX}"
    try:
        shipped = candidate.is_file()
    except OSError:  # a name no file system takes (too long, say): nothing of that name
        shipped = False
    if not shipped:
        spec = _KINDS[kind]
        names = shipped_names(kind)
        raise spec.error(
            f"no {spec.what} named '{name}'{did_you_mean(name, names)} "
            f"({spec.listing}: {', '.join(names)}; or give a path to a YAML file)"
        )
    return Path(str(candidate))
