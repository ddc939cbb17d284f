"""The README and the docs stay true: links resolve, named ``relgraph.*`` objects exist, the
user pages name only public names, every code block runs, the command-line page is the
parsers' own help, and every rule and op is documented."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import relgraph
from tests.docs_blocks import (
    ROOT,
    anchors,
    code_blocks,
    doc_files,
    links,
    relgraph_names,
    shell_commands,
)
from tests.repo_scripts import load_script

DOCS = ROOT / "docs"
PAGES = {str(path.relative_to(ROOT)): path for path in doc_files()}
#: The pages for contributors (docs/reference/api.md says so): they may name the modules
#: behind the public names. Every other page is a user page and names only ``relgraph.NAME``.
CONTRIBUTOR_PAGES = (
    "CONTRIBUTING.md",
    "CHANGELOG.md",
    "docs/contributing.md",
    "docs/changelog.md",
    "docs/design-notes/",
    "docs/benchmarks/",
    "docs/reference/api/",
)
USER_PAGES = sorted(page for page in PAGES if not page.startswith(CONTRIBUTOR_PAGES))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_internal_link_resolves(page):
    path = PAGES[page]
    broken = []
    for target in links(_text(path)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif path.is_relative_to(DOCS) and not resolved.is_relative_to(DOCS):
            broken.append(f"{target} (outside docs/: the site cannot link it)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(_text(resolved)):
            broken.append(f"{target} (no heading with that anchor)")
    assert not broken, f"{page}: {broken}"


def test_pages_included_into_the_site_have_no_relative_links():
    # docs/contributing.md and docs/changelog.md include these files, so a relative link
    # would resolve against docs/ there and against the top level on GitHub
    for name in ("CONTRIBUTING.md", "CHANGELOG.md"):
        relative = [t for t in links(_text(ROOT / name)) if "://" not in t]
        assert not relative, f"{name}: {relative}"


def _resolve(name: str) -> object:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_relgraph_name_the_page_mentions_exists(page):
    missing = []
    for name in sorted(relgraph_names(_text(PAGES[page]))):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name} ({error})")
    assert not missing, f"{page}: {missing}"


def test_the_name_finder_sees_names_and_skips_paths():
    text = "`relgraph.explain` and relgraph.io.video.read_video(x); relgraph/cli/main.py"
    assert relgraph_names(text) == {"relgraph.explain", "relgraph.io.video.read_video"}


def module_paths(text: str) -> set[str]:
    """The ``relgraph.*`` names of a text that go through a module instead of a public name:
    a first part that ``relgraph.__all__`` lacks (``relgraph.io.video.read_video``), or a
    module of a public subpackage (``relgraph.rules.numerics``)."""
    found = set()
    for name in relgraph_names(text):
        parts = name.split(".")
        if parts[1].startswith("__"):  # relgraph.__version__, relgraph.__all__
            continue
        if parts[1] not in relgraph.__all__:
            found.add(name)
        elif (
            len(parts) > 2
            and inspect.ismodule(getattr(relgraph, parts[1]))
            and importlib.util.find_spec(".".join(parts[:3])) is not None
        ):
            found.add(name)
    return found


@pytest.mark.parametrize("page", USER_PAGES)
def test_user_pages_name_public_names_only(page):
    assert module_paths(_text(PAGES[page])) == set(), (
        f"{page} names modules: use the top-level name (relgraph.NAME), export it from "
        "relgraph if users need it, or move the text to a page for contributors"
    )


def test_the_module_path_finder_flags_modules_and_keeps_public_names():
    text = (
        "`relgraph.explain`, relgraph.Graph.to, relgraph.rules.Epsilon, relgraph.__version__; "
        "from relgraph.io.video import read_video; relgraph.rules.numerics.Stabilizer; "
        "import relgraph.engine; relgraph/engine/ops.py"
    )
    assert module_paths(text) == {
        "relgraph.io.video",
        "relgraph.rules.numerics.Stabilizer",
        "relgraph.engine",
    }


def test_user_and_contributor_pages_are_both_found():
    assert {"README.md", "docs/guides/explain-video.md", "docs/reference/api.md"} <= set(USER_PAGES)
    contributor = set(PAGES) - set(USER_PAGES)
    assert {"CONTRIBUTING.md", "docs/reference/api/engine.md"} <= contributor


def test_blocks_marked_no_run_are_skipped_and_others_kept():
    text = "<!-- no-run -->\n\n```bash\npip install x\n```\n\n```python\nprint(1)\n```\n"
    assert [(b.language, b.run) for b in code_blocks(text)] == [("bash", False), ("python", True)]


def test_shell_commands_join_continuations_and_drop_comments():
    text = "# a comment\nrelgraph arch show c3d  # trailing\nrelgraph a \\\n    --b c\n"
    assert shell_commands(text) == ["relgraph arch show c3d", "relgraph a --b c"]


@pytest.fixture(scope="module")
def block_results():
    """Run every page's blocks once, in a process of its own (see ``tests/docs_blocks.py``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "tests.docs_blocks"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def _runnable_pages() -> list[str]:
    pages = [p for p, path in PAGES.items() if any(b.run for b in code_blocks(_text(path)))]
    return sorted(pages) + ["relgraph --help examples"]


@pytest.mark.parametrize("page", _runnable_pages())
def test_every_code_block_of_the_page_runs(block_results, page):
    assert page in block_results, f"{page} was not run"
    assert block_results[page]["error"] is None, f"{page}: {block_results[page]['error']}"


def test_the_readme_keeps_the_install_and_test_commands():
    # CI runs the README's test command; users copy the install command
    text = _text(ROOT / "README.md")
    assert "pip install torch==2.13.0 && pip install -e . && relgraph demo --out out" in text
    assert 'pip install -e ".[test]" && python -m pytest -q' in text
    assert len(text.splitlines()) <= 300


def test_the_command_line_page_is_generated_from_the_parsers():
    generated = load_script("scripts/cli_reference.py").render()
    assert _text(DOCS / "guides" / "cli.md") == generated, (
        "docs/guides/cli.md is stale: run python scripts/cli_reference.py"
    )


def test_every_command_has_an_example_of_itself():
    from relgraph.cli.args import subcommand_parsers
    from relgraph.cli.main import build_parser

    for path, parser in subcommand_parsers(build_parser()).items():
        example = parser.epilog.rsplit("example:\n", 1)[-1].strip()
        assert example.startswith("relgraph"), (path, parser.epilog)
        if path and path[0] != "arch" and path[0] != "rules" and path[0] != "dataset":
            assert example.startswith(" ".join(("relgraph", *path))), (path, example)


def test_every_registered_rule_has_its_formula_in_the_rule_reference():
    from relgraph.rules import RULES

    reference = _text(DOCS / "reference" / "rules.md")
    missing = [name for name in RULES if f"| `{name}` |" not in reference]
    assert not missing, missing


def test_every_registered_op_is_in_the_yaml_reference():
    from relgraph.engine.ops import OPS

    reference = _text(DOCS / "reference" / "architecture-yaml.md")
    missing = [name for name in OPS if name != "input" and f"`{name}`" not in reference]
    assert not missing, missing
