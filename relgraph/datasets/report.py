"""``relgraph dataset report``: per-class aggregates, plots and a static HTML report of a store.

Writes into ``DIR`` (default ``STORE/report``):

- ``summary.json``: per class and overall, clip accuracy (the video's prediction is its true
  label), frozen-frame accuracy (share of frozen frames predicted as the true label, Hiley et
  al. 2019) and the temporal share (share of positive relevance due to motion) with its
  spread;
- ``motion.png`` (per-class bar chart of the mean temporal share, i.e. reliance on motion)
  and ``histograms.png`` (temporal share, frozen-frame accuracy, probability);
- ``index.html`` (a table of videos with thumbnails, sortable and filterable), one page per
  video (``videos/``: the Figure-2 grid, the animation, the frozen predictions) and one per
  class (``classes/``). The pages are plain HTML with one local script and style sheet: they
  open from the file system, no server needed.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from relgraph.datasets.store import INDEX, ROW, VIDEOS, Store
from relgraph.errors import StoreError
from relgraph.io import quickfig
from relgraph.io.outputs import atomic_write_bytes, ensure_out_dir, write_json

__all__ = ["aggregate", "build_report", "build_report_with_damage", "load_rows", "read_rows"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


#: what a usable row must hold (``aggregate`` and the pages read these)
_ROW_KEYS = ("folder", "key", "label", "status", "path")


def load_rows(store: str | os.PathLike) -> list[dict[str, Any]]:
    """The store's rows: ``index.jsonl`` updated by every ``row.json`` present (so a run
    still going, or interrupted, is reported as far as it got). Damaged lines and files are
    skipped: :func:`read_rows` also says which."""
    return read_rows(store)[0]


def read_rows(store: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """The readable rows of the store (as :func:`load_rows`) and a list of what is damaged:
    one line each, naming the file (and line) and what is wrong with it."""
    root = Path(store)
    manifest = Store(root).read_manifest()
    if manifest is None:
        raise StoreError("not a relgraph store (no store.json).", file=root)
    rows: dict[str, dict] = {}
    damaged: list[str] = []
    index = root / INDEX
    if index.is_file():
        try:
            lines = index.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            damaged.append(f"{index}: cannot be read ({error})")
            lines = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row, problem = _parse_row(line)
            if problem:
                damaged.append(f"{index}:{number}: {problem}")
            else:
                rows[row["folder"]] = row
    for path in sorted((root / VIDEOS).rglob(ROW)) if (root / VIDEOS).is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            damaged.append(f"{path}: cannot be read ({error})")
            continue
        row, problem = _parse_row(text)
        if problem:
            damaged.append(f"{path}: {problem}")
        else:
            rows[row["folder"]] = row
    return sorted(rows.values(), key=lambda row: str(row["key"])), damaged


def _parse_row(text: str) -> tuple[dict[str, Any], str | None]:
    """One row from its JSON text, or the reason it is not usable."""
    try:
        row = json.loads(text)
    except ValueError as error:
        return {}, f"not valid JSON ({error})"
    if not isinstance(row, dict):
        return {}, "not a JSON object"
    missing = [key for key in _ROW_KEYS if key not in row]
    if missing:
        return {}, f"the row has no {', '.join(missing)}"
    if not all(isinstance(row[key], str) for key in _ROW_KEYS):
        return {}, "the row's folder, key, label, status or path is not text"
    if row["status"] == "ok":
        needed = ("prediction", "probability", "correct", "frozen_accuracy", "temporal_share")
        absent = [key for key in needed if key not in row]
        if absent:
            return {}, f"the row has no {', '.join(absent)}"
    return row, None


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-class and overall accuracy, frozen-frame accuracy and temporal share."""

    def stats(group: list[dict]) -> dict[str, Any]:
        ok = [r for r in group if r["status"] == "ok"]
        share = np.array([r["temporal_share"] for r in ok], dtype=np.float64)
        return {
            "videos": len(group),
            "ok": len(ok),
            "failed": len(group) - len(ok),
            "clip_accuracy": _mean([float(r["correct"]) for r in ok]),
            "frozen_accuracy": _mean([r["frozen_accuracy"] for r in ok]),
            "temporal_share": _mean(list(share)),
            "temporal_share_std": float(share.std()) if len(share) > 1 else None,
            "looped": sum(bool(r.get("looped")) for r in ok),
        }

    classes: dict[str, list[dict]] = {}
    for row in rows:
        classes.setdefault(row["label"], []).append(row)
    return {
        "overall": stats(rows),
        "classes": {name: stats(group) for name, group in sorted(classes.items())},
        "definitions": {
            "clip_accuracy": "share of videos whose prediction (highest mean softmax over "
            "its clips) is the true label",
            "frozen_accuracy": "share of frozen frames (each frame repeated over the clip) "
            "predicted as the true label",
            "temporal_share": "sum of positive temporal relevance / (that + sum of positive "
            "spatial relevance), over the video's clips; 1 = all motion, 0 = all appearance",
        },
    }


def build_report(store: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write summary.json, the plots and the HTML report of ``store``; returns the folder."""
    return build_report_with_damage(store, out)[0]


def build_report_with_damage(
    store: str | os.PathLike, out: str | os.PathLike | None = None
) -> tuple[Path, list[str]]:
    """:func:`build_report`, on what is readable, and the list of what is damaged (rows that
    cannot be read, ``relevance.npz`` files that cannot be opened); ``summary.json`` lists
    it under ``damaged``.

    Raises
    ------
    StoreError
        Nothing in the store is readable (every row damaged), or it is not a store.
    """
    root = Path(store)
    rows, damaged = read_rows(root)
    if damaged and not rows:
        raise StoreError(
            f"nothing in the store is readable: {len(damaged)} damaged row(s), e.g. {damaged[0]}",
            file=root,
        )
    manifest = Store(root).read_manifest() or {}
    out = ensure_out_dir(Path(out) if out else root / "report")
    for row in rows:
        row["page"] = _page_name(row["folder"])
        row["media"] = _media(root, row, out, damaged)
    summary = aggregate(rows)
    summary["store"] = {"path": str(root), "options": manifest.get("options", {})}
    summary["damaged"] = damaged
    write_json(out / "summary.json", summary)
    _plots(summary, rows, out)
    static = ensure_out_dir(out / "static")
    for name in ("report.js", "report.css"):
        source = resources.files("relgraph").joinpath("data", name)
        atomic_write_bytes(static / name, source.read_bytes())
    _write(out / "index.html", _index_page(rows, summary))
    ensure_out_dir(out / "videos")
    for row in rows:
        _write(out / "videos" / row["page"], _video_page(row))
    ensure_out_dir(out / "classes")
    for name, stats in summary["classes"].items():
        members = [r for r in rows if r["label"] == name]
        _write(out / "classes" / _class_page(name), _class_page_html(name, stats, members))
    return out, damaged


# --------------------------------------------------------------------------- media, plots


def _media(root: Path, row: dict, out: Path, damaged: list[str]) -> dict[str, str]:
    """Thumbnail, grid and animation of the video's first clip, rendered from its npz (a
    damaged npz is added to ``damaged`` and the video shown without media)."""

    if row["status"] != "ok":
        return {}
    npz = root / VIDEOS / row["folder"] / "relevance.npz"
    if not npz.is_file():
        return {}
    try:
        with np.load(npz, allow_pickle=False) as data:
            frames = np.asarray(data["frames"][0])
            maps = [np.asarray(data[name][0]) for name in ("spatiotemporal", "spatial", "temporal")]
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as error:
        damaged.append(f"{npz}: cannot be read ({_one_line(str(error)) or type(error).__name__})")
        return {}
    if frames.ndim != 4 or any(m.shape != frames.shape[:3] for m in maps):
        shapes = [m.shape for m in maps]
        damaged.append(f"{npz}: cannot be read (frames {frames.shape} and maps {shapes} differ)")
        return {}
    folder = ensure_out_dir(out / "media" / _page_name(row["folder"])[: -len(".html")])
    middle = len(frames) // 2
    quickfig.save_thumbnail(folder / "thumb.png", frames[middle], maps[2][middle])
    quickfig.save_grid(folder / "grid.png", frames, *maps)
    quickfig.save_animation(folder / "animation.gif", frames, *maps)
    relative = folder.relative_to(out).as_posix()
    return {name: f"{relative}/{name}" for name in ("thumb.png", "grid.png", "animation.gif")}


def _plots(summary: dict, rows: list[dict], out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = summary["classes"]
    names = [n for n in classes if classes[n]["temporal_share"] is not None]
    names.sort(key=lambda n: classes[n]["temporal_share"])
    figure = Figure(figsize=(8, max(2.5, 0.22 * len(names) + 1)))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    values = [classes[n]["temporal_share"] for n in names]
    errors = [classes[n]["temporal_share_std"] or 0.0 for n in names]
    ax.barh(range(len(names)), values, xerr=errors, color="tab:red", alpha=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("temporal share of positive relevance (reliance on motion), mean ± sd")
    ax.set_title("Reliance on motion per class")
    figure.tight_layout()
    figure.savefig(out / "motion.png", dpi=100)

    ok = [r for r in rows if r["status"] == "ok"]
    figure = Figure(figsize=(10, 3))
    FigureCanvasAgg(figure)
    for i, (key, title) in enumerate(
        [
            ("temporal_share", "temporal share"),
            ("frozen_accuracy", "frozen-frame accuracy"),
            ("probability", "probability of the prediction"),
        ]
    ):
        ax = figure.add_subplot(1, 3, i + 1)
        # None where the run's method has no such value (no frozen clips: --method decomposed)
        ax.hist([r[key] for r in ok if r[key] is not None], bins=20, range=(0, 1), color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("value")
        ax.set_ylabel("videos")
    figure.tight_layout()
    figure.savefig(out / "histograms.png", dpi=100)


# --------------------------------------------------------------------------- pages


def _page_name(folder: str) -> str:
    """A video's page: its folder made file-name safe, and a short hash of the folder so
    that folders that read alike once made safe (``C/_z`` and ``C_/z``) get pages of their
    own."""
    return _unique_name(folder.replace("/", "__"), folder)


def _class_page(name: str) -> str:
    """A class's page: as :func:`_page_name` (``A B`` and ``A_B`` get a page each)."""
    return _unique_name(name, name)


def _unique_name(readable: str, identity: str) -> str:
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:10]
    return f"{_SAFE.sub('_', readable)[:80]}-{digest}.html"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, depth: int) -> str:
    up = "../" * depth
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{_e(title)}</title><link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{up}static/report.css">'
        f'<script src="{up}static/report.js" defer></script></head>'
        f'<body><nav><a href="{up}index.html">all videos</a></nav><h1>{_e(title)}</h1>'
        f"{body}</body></html>\n"
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _index_page(rows: list[dict], summary: dict) -> str:
    overall = summary["overall"]
    head = (
        f'<p id="overview">{overall["videos"]} videos ({overall["failed"]} failed); '
        f"clip accuracy {_fmt(overall['clip_accuracy'])}, frozen-frame accuracy "
        f"{_fmt(overall['frozen_accuracy'])}, temporal share {_fmt(overall['temporal_share'])}"
        '</p><p><img class="plot" src="motion.png" alt="reliance on motion per class">'
        '<img class="plot" src="histograms.png" alt="histograms"></p>'
        '<h2>Classes</h2><p class="classes">'
        + " ".join(
            f'<a href="classes/{_class_page(name)}">{_e(name)}</a>' for name in summary["classes"]
        )
        + "</p>"
        + _damaged_list(summary.get("damaged") or [])
        + "<h2>Videos</h2>"
    )
    labels = sorted({r["label"] for r in rows})
    filters = (
        '<div class="filters"><input id="filter" type="search" placeholder="filter: '
        'video, class, error"> <select id="class-filter"><option value="">every class'
        "</option>"
        + "".join(f"<option>{_e(name)}</option>" for name in labels)
        + '</select> <select id="status-filter"><option value="">any status</option>'
        '<option>ok</option><option>failed</option></select> <span id="shown"></span></div>'
    )
    return _page("relgraph data-set report", head + filters + _table(rows, "videos/"), 0)


def _damaged_list(damaged: list[str]) -> str:
    if not damaged:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in damaged)
    return (
        f"<h2>Damaged ({len(damaged)})</h2><p>Left out of the report: these rows or files "
        f'cannot be read.</p><ul id="damaged">{items}</ul>'
    )


_COLUMNS = [
    ("thumbnail", None, ""),
    ("video", "key", "text"),
    ("true class", "label", "text"),
    ("prediction", "prediction", "text"),
    ("p", "probability", "number"),
    ("correct", "correct", "text"),
    ("frozen acc.", "frozen_accuracy", "number"),
    ("temporal share", "temporal_share", "number"),
    ("status", "status", "text"),
]


def _table(rows: list[dict], prefix: str) -> str:
    up = "../" if prefix.startswith("../") else ""
    header = "".join(
        f'<th data-type="{kind}">{_e(title)}</th>' if kind else f"<th>{_e(title)}</th>"
        for title, _, kind in _COLUMNS
    )
    body = []
    for row in rows:
        cells = []
        for _, key, kind in _COLUMNS:
            if key is None:
                thumb = row.get("media", {}).get("thumb.png")
                cells.append(
                    f'<td><img class="thumb" loading="lazy" src="{up}{_e(thumb)}" alt=""></td>'
                    if thumb
                    else "<td></td>"
                )
                continue
            value = row.get(key)
            shown = _fmt(value)
            if key == "key":
                shown = f'<a href="{prefix}{_e(row["page"])}">{_e(value)}</a>'
            elif key == "status" and row.get("error"):
                shown = f'<span title="{_e(row["error"])}">failed</span>'
            else:
                shown = _e(shown)
            sort = "" if value is None else _e(value if kind == "number" else str(value))
            cells.append(f'<td data-sort="{sort}">{shown}</td>')
        search = " ".join(str(row.get(k) or "") for k in ("key", "label", "prediction", "error"))
        body.append(
            f'<tr data-class="{_e(row["label"])}" data-status="{_e(row["status"])}" '
            f'data-search="{_e(search.lower())}">{"".join(cells)}</tr>'
        )
    return (
        f'<table id="videos" class="sortable"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _video_page(row: dict) -> str:
    media = row.get("media", {})
    facts = [
        ("file", row["path"]),
        ("true class", row["label"]),
        ("status", row["status"] + (f": {row['error']}" if row.get("error") else "")),
        ("frames", row.get("frames")),
    ]
    if row["status"] == "ok":
        facts += [
            ("prediction", f"{row['prediction']} (p = {_fmt(row['probability'])})"),
            ("correct", _fmt(row["correct"])),
            ("clips", f"{row['clips']}" + (" (loop-padded)" if row.get("looped") else "")),
            ("frozen-frame accuracy", _fmt(row["frozen_accuracy"])),
            ("temporal share", _fmt(row["temporal_share"])),
        ]
    body = '<table class="facts">' + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts
    )
    body += (
        f'<tr><th>class page</th><td><a href="../classes/{_class_page(row["label"])}">'
        f"{_e(row['label'])}</a></td></tr></table>"
    )
    if media:
        body += (
            "<h2>Figure 2: frames, spatio-temporal, spatial, temporal relevance</h2>"
            '<p class="legend">rows: original frames, spatio-temporal, spatial (each frame '
            "frozen), temporal (= spatio-temporal − spatial); columns: frames 1, 6, 10, 16 of "
            "the first clip; red positive, blue negative, white zero</p>"
            f'<img id="grid" src="../{_e(media["grid.png"])}" alt="Figure-2 grid">'
            '<h2>Animation</h2><p class="legend">frame, spatio-temporal, spatial, '
            "temporal</p>"
            f'<img id="animation" src="../{_e(media["animation.gif"])}" alt="animation">'
        )
    if row["status"] == "ok":
        body += (
            '<h2>Frozen predictions</h2><table class="frozen"><tr><th>clip</th>'
            + "".join(f"<th>{t + 1}</th>" for t in range(len(row["frozen_predictions"][0])))
            + "</tr>"
        )
        for k, clip in enumerate(row["frozen_predictions"]):
            cells = "".join(
                f'<td class="{"hit" if name == row["label"] else "miss"}">{_e(name)}</td>'
                for name in clip
            )
            body += f"<tr><th>{k + 1}</th>{cells}</tr>"
        body += "</table>"
    return _page(row["key"], body, 1)


def _class_page_html(name: str, stats: dict, members: list[dict]) -> str:
    facts = "".join(
        f"<tr><th>{_e(k.replace('_', ' '))}</th><td>{_e(_fmt(v))}</td></tr>"
        for k, v in stats.items()
    )
    body = f'<table class="facts">{facts}</table><h2>Videos</h2>' + _table(members, "../videos/")
    return _page(f"class {name}", body, 1)


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values that are known (``None``: a run whose method has no such
    value, say the frozen-frame accuracy of ``--method decomposed``); ``None`` if none is."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None
