"""Write the command-line reference page (docs/guides/cli.md) from relgraph's argparse parsers.

Run ``python scripts/cli_reference.py`` after changing a command's options or help;
``tests/test_docs.py`` fails while the committed page differs from what this prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "guides" / "cli.md"
#: the width help text is wrapped to, fixed so that the page does not depend on the terminal
WIDTH = 100

INTRO = """\
# The command line

Every command is one call of a public Python function, has `--help`, and ends a bad input
with a one-line `relgraph: error: …` and exit status 2 (no traceback). Each command's help
ends with an example; the docs test runs every one of them.

This page is generated from the argument parsers by `python scripts/cli_reference.py`; do not
edit it by hand.
"""


def render() -> str:
    """The page's Markdown: each command's ``--help``, in the order the commands were added."""
    sys.path.insert(0, str(ROOT))
    from relgraph.cli.args import subcommand_parsers
    from relgraph.cli.main import build_parser

    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR")}
    os.environ.update(COLUMNS=str(WIDTH), NO_COLOR="1")
    try:
        parsers = subcommand_parsers(build_parser())
        sections = [INTRO]
        for path, parser in parsers.items():
            title = " ".join(("relgraph", *path))
            sections.append(f"## `{title}`\n\n```text\n{_help(parser)}```\n")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return "\n".join(sections)


def _help(parser: argparse.ArgumentParser) -> str:
    # Python before 3.10 titled the options "optional arguments"
    text = parser.format_help().replace("\noptional arguments:\n", "\noptions:\n")
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def main() -> None:
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
