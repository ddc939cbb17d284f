"""Read the README's and the docs' Markdown: fenced code blocks (with their ``no-run`` marks),
links and ``relgraph.*`` names; and run the blocks (``python -m tests.docs_blocks``, used by
``tests/test_docs.py`` in a process of its own, so that the examples' registrations of ops and
rules stay out of the pytest process)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the mark, on the line before a fence (blank lines between allowed), of a block not to run
NO_RUN = "<!-- no-run -->"
FENCE = re.compile(r"^(\s*)```([\w+-]*)\s*$")


def doc_files() -> list[Path]:
    """Every Markdown file of the README, the contributor page, the changelog and docs/."""
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]
    return files + sorted((ROOT / "docs").rglob("*.md"))


@dataclass
class Block:
    """One fenced code block: its language, text, first line (1-based) and whether to run it."""

    language: str
    text: str
    line: int
    run: bool


def code_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    blocks, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if not opened:
            index += 1
            continue
        previous = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        body, end = [], index + 1
        while end < len(lines) and not FENCE.match(lines[end]):
            body.append(lines[end][len(opened.group(1)) :])
            end += 1
        blocks.append(Block(opened.group(2), "\n".join(body) + "\n", index + 1, previous != NO_RUN))
        index = end + 1
    return blocks


def prose(text: str) -> str:
    """The text without its fenced code blocks and inline code spans."""
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def links(text: str) -> list[str]:
    """Targets of the Markdown links and images in the prose of ``text``."""
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", prose(text))


def slug(heading: str) -> str:
    """A heading's anchor as Python-Markdown's ``toc`` makes it."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(text: str) -> set[str]:
    """The anchors of the headings of a Markdown text."""
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(text), flags=re.M)}


def relgraph_names(text: str) -> set[str]:
    """Every dotted ``relgraph.*`` name mentioned in a text (code included)."""
    found = re.findall(r"(?<![\w/.-])relgraph(?:\.[A-Za-z_]\w*)+", text)
    return {name for name in found if not name.endswith((".md", ".py", ".yaml", ".json"))}


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuations joined, comments and blank lines dropped."""
    commands, current = [], ""
    for line in text.splitlines():
        line = line.rstrip()
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        command = (current + line.strip()).split(" #", 1)[0].strip()
        current = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


# --------------------------------------------------------------------------- running


def make_fixtures(folder: Path) -> None:
    """The files the examples name: a video, the demo weights, labels, a folder of videos per
    class, an architecture file, and an importable ``mypackage.models:my_net``."""
    import numpy as np

    from relgraph.datasets.synthetic import make_clip, write_label_file, write_video_folders
    from relgraph.io.video import write_video
    from relgraph.models.demo import DEMO_WEIGHTS

    clip = make_clip(3, np.random.default_rng(0), frames=20, size=48)
    write_video(folder / "video.mp4", clip.frames, fps=8)
    (folder / "out").mkdir()
    shutil.copy(folder / "video.mp4", folder / "out" / "demo.mp4")
    shutil.copy(DEMO_WEIGHTS, folder / "c3d-tiny.safetensors")
    write_label_file(folder / "labels.txt")
    write_video_folders(folder / "videos", 2, seed=0, frames=16, size=32)
    shutil.copy(ROOT / "architectures" / "resnet-tiny.yaml", folder / "my-net.yaml")
    package = folder / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "import torch\n\n\n"
        "def my_net(num_classes=4):\n"
        "    return torch.nn.Sequential(\n"
        "        torch.nn.Conv3d(3, 4, 3, stride=4, padding=1), torch.nn.ReLU(),\n"
        "        torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),\n"
        "        torch.nn.Linear(4, num_classes),\n"
        "    )\n"
    )


def run_command(command: str) -> None:
    """Run a ``relgraph ...`` shell command through the command line's ``main``."""
    from relgraph.cli.main import main

    words = shlex.split(command)
    if words[0] != "relgraph":
        raise AssertionError(f"not a relgraph command (mark the block {NO_RUN}): {command}")
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = main(words[1:])
    if status != 0:
        raise AssertionError(f"{command!r} exited {status}:\n{output.getvalue()[-2000:]}")


def run_block(block: Block, namespace: dict, commands_run: set[str]) -> None:
    """Run one block; a shell command already run (on this page or an earlier one) is not run
    again: the pages repeat the main commands, and each run costs seconds."""
    if block.language == "python":
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block.text, f"<block at line {block.line}>", "exec"), namespace)
    elif block.language in ("bash", "sh", "console"):
        for command in shell_commands(block.text):
            if command not in commands_run:
                run_command(command)
                commands_run.add(command)
    elif block.language == "yaml" and re.search(r"^nodes:", block.text, flags=re.M):
        import relgraph

        relgraph.architecture_from_yaml(block.text, file=f"<block at line {block.line}>")


def run_pages(pages: dict[str, list[Block]], template: Path) -> dict[str, dict]:
    """Run each page's blocks in order, in a fresh copy of ``template`` and a fresh
    namespace; returns per page the first failure (or None) and the seconds it took."""
    import os
    import types

    results, commands_run = {}, set()
    for page, blocks in pages.items():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "work"
            shutil.copytree(template, folder)
            os.chdir(folder)
            sys.path.insert(0, str(folder))
            # the blocks run as a module of their own, so that dataclasses and pickling work
            module = types.ModuleType("docs_page")
            sys.modules[module.__name__] = module
            error = None
            for block in blocks:
                try:
                    run_block(block, module.__dict__, commands_run)
                except BaseException:  # noqa: BLE001 - reported, with its traceback
                    error = f"block at line {block.line}:\n{traceback.format_exc(limit=-6)}"
                    break
            sys.modules.pop(module.__name__, None)
            sys.path.remove(str(folder))
            sys.modules.pop("mypackage.models", None)
            sys.modules.pop("mypackage", None)
            os.chdir(ROOT)
        results[page] = {"error": error, "seconds": time.perf_counter() - started}
    return results


def collect_pages() -> dict[str, list[Block]]:
    """The runnable blocks of every doc file, and the command line's examples as one page."""
    from relgraph.cli.main import EXAMPLES

    pages = {}
    for path in doc_files():
        blocks = [b for b in code_blocks(path.read_text(encoding="utf-8")) if b.run]
        if blocks:
            pages[str(path.relative_to(ROOT))] = blocks
    commands = list(dict.fromkeys(EXAMPLES.values()))
    commands.sort(key=lambda command: " report " in command)  # a report needs its store
    pages["relgraph --help examples"] = [Block("bash", c + "\n", 0, True) for c in commands]
    return pages


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    pages = collect_pages()
    with tempfile.TemporaryDirectory() as scratch:
        template = Path(scratch) / "template"
        template.mkdir()
        make_fixtures(template)
        results = run_pages(pages, template)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
