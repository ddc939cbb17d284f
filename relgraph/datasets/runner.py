"""Explain every video of a data set into a store: planned, batched, resumable, sharded.

A run takes the steps of :func:`relgraph.explain_video` (``select_clips``, ``explain_clips``,
``write_clip``) over many videos: each video's clips are selected and preprocessed in
background threads, clips of several videos are explained together, and each video's clips
are written as one ``relevance.npz`` (see :mod:`relgraph.datasets.store`).

The plan is a pure function of the source and the options: videos in key order are packed
into *groups* of at most ``clip_batch`` clips (a longer video is a group of its own), and a
group's clips are always explained together, in the same batches. A video's result therefore
does not depend on which other videos were still to do, on the number of processes or on
where a run was interrupted: an interrupted and resumed run gives the maps, bit for bit, of
an uninterrupted one (on the CPU). Groups with work left are sharded over the ranks by cost;
background threads decode the next groups while the model explains the current one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from relgraph.datasets.distributed import Context, shard
from relgraph.datasets.sources import VideoItem
from relgraph.datasets.store import Store
from relgraph.engine.memory import check_memory
from relgraph.engine.reverse import activations_needed
from relgraph.errors import RelgraphError, VideoError
from relgraph.io.outputs import kill_point
from relgraph.io.video import video_info
from relgraph.methods.discriminative import DEFAULT_BATCH_SIZE
from relgraph.pipeline.video import (
    ClipResult,
    Model,
    VideoOptions,
    explain_clips,
    select_clips,
    write_clip,
)

__all__ = ["RunOptions", "VideoPlan", "plan_groups", "run_dataset", "temporal_share"]


@dataclass
class RunOptions:
    """How a data set is explained (the result-changing ones are fingerprinted)."""

    clips: str | int = "first"  # "first", "all" or a number of clips spread over the video
    stride: int = 1
    target: str = "auto"  # "auto" (the prediction) or "true" (the true label)
    reduce: str = "first"
    normalize: str = "maxabs"
    method: str = "frozen"  # see relgraph.methods.discriminative.METHODS
    static: str = "mean"  # the static part, for decomposed and reference
    sigma: float = 1.0  # selective's threshold
    batch_size: int | None = None  # frozen clips at once
    clip_batch: int = 4  # clips (from any videos) explained at once
    min_frames: int | None = None  # default: half the clip
    raw: str = "clip"  # raw relevance stored: "clip" or "all" (every frozen clip's too)
    figures: str = "none"
    workers: int = 2
    quiet: bool = False
    dry_run: bool = False
    #: refuse the run before it starts when its estimated peak memory exceeds what is free
    #: (``relgraph.engine.memory``)
    memory_check: bool = True


@dataclass
class VideoPlan:
    """A video, its frame count (from the header; 0 if unreadable) and expected clips."""

    item: VideoItem
    frames: int
    clips: int
    probe_error: str | None = None


# --------------------------------------------------------------------------- planning


def expected_clips(frames: int, options: RunOptions, length: int) -> int:
    """Clips a video of ``frames`` frames gives (0: it will be recorded as a failure)."""
    if frames < _min_frames(options, length):
        return 0
    if options.clips == "first":
        return 1
    span = length * options.stride
    last = (length - 1) * options.stride
    full = 0 if frames <= last else (frames - 1 - last) // span + 1
    count = max(full, 1)
    return count if options.clips == "all" else min(int(options.clips), count)


def plan_groups(plans: Sequence[VideoPlan], clip_batch: int) -> list[list[VideoPlan]]:
    """Pack videos, in order, into groups of at most ``clip_batch`` clips."""
    groups: list[list[VideoPlan]] = []
    current: list[VideoPlan] = []
    filled = 0
    for plan in plans:
        if current and filled + plan.clips > clip_batch:
            groups.append(current)
            current, filled = [], 0
        current.append(plan)
        filled += plan.clips
    if current:
        groups.append(current)
    return groups


def _min_frames(options: RunOptions, length: int) -> int:
    return options.min_frames if options.min_frames is not None else math.ceil(length / 2)


def _probe(items: Sequence[VideoItem], options: RunOptions, length: int) -> list[VideoPlan]:

    plans = []
    for item in items:
        try:
            frames = video_info(item.path).frames
            plans.append(VideoPlan(item, frames, expected_clips(frames, options, length)))
        except RelgraphError as error:
            plans.append(VideoPlan(item, 0, 0, str(error)))
    return plans


# --------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    """One video ready for the model: its clips or the reason it failed."""

    plan: VideoPlan
    clips: torch.Tensor | None = None  # (K, C, T, S, S)
    display: np.ndarray | None = None  # (K, T, S, S, 3) uint8
    indices: list[list[int]] = field(default_factory=list)
    looped: bool = False
    error: str | None = None
    decode_s: float = 0.0


def _selection(options: RunOptions) -> tuple[VideoOptions, int | None]:
    """The clip selection of :func:`select_clips` that ``--clips`` means, and its count."""
    spread = options.clips not in ("first", "all")
    chosen = VideoOptions(stride=options.stride, all_clips=options.clips != "first")
    return chosen, int(options.clips) if spread else None


def _decode(plan: VideoPlan, model: Model, options: RunOptions) -> Decoded:

    clock = time.perf_counter()
    length = model.frames_per_clip
    result = Decoded(plan)
    chosen, count = _selection(options)
    try:
        if plan.probe_error:
            raise VideoError(plan.probe_error)
        _, selections = select_clips(
            plan.item.path,
            length,
            chosen,
            count=count,
            min_frames=_min_frames(options, length),
        )
        result.clips = torch.stack([model.preprocess(s.frames) for s in selections])
        result.display = np.stack([model.preprocess.display_frames(s.frames) for s in selections])
        result.indices = [list(s.frame_indices) for s in selections]
        result.looped = any(s.looped for s in selections)
    except RelgraphError as error:
        result.error = " ".join(str(error).split())
    except Exception as error:  # noqa: BLE001 - a bad file never stops the run
        result.error = f"{plan.item.path}: {type(error).__name__}: {error}"
    result.decode_s = time.perf_counter() - clock
    return result


def _prefetch(groups, load: Callable, workers: int) -> Iterator[tuple[Any, list[Decoded], float]]:
    """Yield ``(group, decoded, wait_s)`` in order while threads decode the next groups."""
    if workers < 1:
        for group in groups:
            clock = time.perf_counter()
            decoded = load(group)
            yield group, decoded, time.perf_counter() - clock
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: list[tuple[Any, concurrent.futures.Future]] = []
        queue = iter(groups)
        for group in queue:
            pending.append((group, pool.submit(load, group)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            group, future = pending.pop(0)
            clock = time.perf_counter()
            decoded = future.result()
            wait = time.perf_counter() - clock
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(load, following)))
            yield group, decoded, wait


# --------------------------------------------------------------------------- the run


def temporal_share(spatial: np.ndarray, temporal: np.ndarray) -> float:
    """Share of positive relevance that is temporal: ΣT⁺ / (ΣS⁺ + ΣT⁺) over all clips.

    The spatio-temporal map is S + T (Hiley et al., 2019); 0 means all evidence is in single
    frames (the scene), 1 all in motion. 0.5 when the two positive totals are equal.
    """
    positive_t = float(np.clip(temporal, 0, None).sum(dtype=np.float64))
    positive_s = float(np.clip(spatial, 0, None).sum(dtype=np.float64))
    total = positive_t + positive_s
    return positive_t / total if total > 0 else 0.0


def run_dataset(
    model: Model,
    items: Sequence[VideoItem],
    store: Store,
    store_options: dict[str, Any],
    options: RunOptions,
    context: Context,
) -> dict[str, Any]:
    """Explain the videos not done yet into ``store`` (see the module docstring).

    Returns the run's statistics (rank 0's view of the whole run). The main process holds
    the store's writer lock (:meth:`Store.lock`) for the whole run, so that a second run on
    the same store is refused instead of deleting this one's temporary files.
    """
    if options.memory_check and not options.dry_run:
        graph = model.explained_graph
        frozen = DEFAULT_BATCH_SIZE if options.batch_size is None else options.batch_size
        check_memory(
            graph,
            max(options.clip_batch, frozen),
            activations_needed(graph, model.node_rules),
            what="explaining the data set with",
        )
    writing = context.is_main and not options.dry_run
    with store.lock() if writing else contextlib.nullcontext():
        return _run_dataset(model, items, store, store_options, options, context)


def _run_dataset(
    model: Model,
    items: Sequence[VideoItem],
    store: Store,
    store_options: dict[str, Any],
    options: RunOptions,
    context: Context,
) -> dict[str, Any]:
    started = time.perf_counter()
    say = _say(options.quiet or not context.is_main)
    length = model.frames_per_clip

    exists = store.check(store_options)  # every rank checks the store
    if not options.dry_run:
        if context.is_main:
            if not exists:
                store.create(store_options)
            store.check_writable()
            store.remove_temporaries()
        context.barrier()
        if not context.is_main:
            store.check(store_options)

    done_local = set(store.done_rows(item.folder for item in items))
    done: set[str] = set().union(*context.all_gather(sorted(done_local)))

    clock = time.perf_counter()
    share = list(items)[context.rank :: context.world_size]
    probed = [p for part in context.all_gather(_probe(share, options, length)) for p in part]
    by_key = {p.item.key: p for p in probed}
    plans = [by_key[item.key] for item in items]
    probe_s = time.perf_counter() - clock

    groups = plan_groups(plans, options.clip_batch)
    todo_groups = [g for g in groups if any(p.item.folder not in done for p in g)]
    costs = [sum(_cost(p, length) for p in g) for g in todo_groups]
    owners = shard(costs, context.world_size)
    mine = [g for g, owner in zip(todo_groups, owners) if owner == context.rank]
    todo_total = sum(p.item.folder not in done for g in todo_groups for p in g)

    if options.dry_run:
        return _dry_run(plans, done, todo_groups, owners, context, say, options)

    say(
        f"dataset: {len(items)} videos, {len(done)} done already, {todo_total} to do "
        f"on {context.world_size} process(es); {len(groups)} groups of up to "
        f"{options.clip_batch} clips"
    )
    stats = {
        "videos": 0,
        "clips": 0,
        "failed": 0,
        "decode_s": 0.0,
        "wait_s": 0.0,
        "explain_s": 0.0,
        "write_s": 0.0,
        "figures_s": 0.0,
        "probe_s": probe_s,
    }
    progress = _Progress(todo_total, context, say)

    def load(group):
        # The whole group, also videos done before an interruption: its batches stay the same.
        return [_decode(p, model, options) for p in group]

    for _, decoded, wait in _prefetch(mine, load, options.workers):
        stats["wait_s"] += wait
        stats["decode_s"] += sum(d.decode_s for d in decoded)
        explained = _explain_group(model, decoded, options, stats)
        for video, results in zip(decoded, explained):
            if video.plan.item.folder in done:
                continue
            row = _write_video(model, store, video, results, options, stats)
            stats["videos"] += 1
            stats["failed"] += row["status"] != "ok"
            progress.update(row)

    rows = store.done_rows(item.folder for item in items)
    gathered = context.all_gather(rows)
    kill_point("index")
    totals = context.all_gather(stats)
    if context.is_main:
        merged: dict[str, dict] = {}
        for part in gathered:
            for folder, row in part.items():
                merged.setdefault(folder, row)
        ordered = [merged[item.folder] for item in items if item.folder in merged]
        store.write_index(ordered)
        missing = len(items) - len(ordered)
        summary = _totals(totals)
        summary.update(
            {
                "world_size": context.world_size,
                "wall_s": time.perf_counter() - started,
                "indexed": len(ordered),
                "missing": missing,
            }
        )
        wall = summary["wall_s"]
        say(
            f"dataset: {summary['videos']} videos ({summary['clips']} clips, "
            f"{summary['failed']} failed) in {wall:.1f} s; {summary['clips'] / wall:.2f} clips/s; "
            f"index {store.index_path} ({len(ordered)} rows"
            + (f", {missing} videos missing: other machines' stores?" if missing else "")
            + ")"
        )
        return summary
    return {}


def _cost(plan: VideoPlan, length: int) -> float:
    """Work of a video in explanations: (T + 1) per clip, plus decoding (~1/T per frame)."""
    return plan.clips * (length + 1) + plan.frames / max(length, 1) + 0.1


def _explain_group(
    model: Model, decoded: list[Decoded], options: RunOptions, stats: dict[str, Any]
) -> list[list[ClipResult]]:
    """Explain the clips of a group's videos together, ``clip_batch`` at a time; the
    results of each video's clips (none for a video that failed)."""

    good = [d for d in decoded if d.error is None]
    results: dict[int, list[ClipResult]] = {}
    if good:
        clips = torch.cat([d.clips for d in good])
        targets: list[int] = []
        if options.target != "auto":
            for d in good:
                targets += [model.labels.index(d.plan.item.label)] * len(d.clips)
        explained: list[ClipResult] = []
        for begin in range(0, len(clips), options.clip_batch):
            explained += explain_clips(
                model,
                clips[begin : begin + options.clip_batch],
                target="auto" if not targets else targets[begin : begin + options.clip_batch],
                reduce=options.reduce,
                normalize=options.normalize,
                batch_size=options.batch_size,
                progress=False,
                memory_check=False,  # checked once for the run (run_dataset)
                method=options.method,
                static=options.static,
                sigma=options.sigma,
                frozen_relevance=options.raw == "all",
            )
        stats["explain_s"] += sum(result.explain_seconds for result in explained)
        stats["clips"] += len(clips)
        begin = 0
        for d in good:
            results[id(d)] = explained[begin : begin + len(d.clips)]
            begin += len(d.clips)
    return [results.get(id(d), []) for d in decoded]


#: the figures of ``--figures``: a style of ``write_clip`` and how many clips get them
FIGURES = {"none": (False, 0), "summary": ("quick", 1), "all": ("all", None)}


def _write_video(
    model: Model,
    store: Store,
    video: Decoded,
    results: list[ClipResult],
    options: RunOptions,
    stats: dict[str, Any],
) -> dict[str, Any]:

    item = video.plan.item
    folder = store.video_dir(item.folder)
    clock = time.perf_counter()
    true_index = model.labels.index(item.label)
    row: dict[str, Any] = {
        "key": item.key,
        "path": str(item.path),
        "folder": item.folder,
        "label": item.label,
        "label_index": true_index,
        "frames": video.plan.frames,
    }
    if video.error is not None:
        row.update({"status": "failed", "error": video.error})
        row["timings"] = {"decode_s": video.decode_s}
        store.write_row(item.folder, row)
        kill_point("row")
        return row

    figures, figure_clips = FIGURES[options.figures]
    written: dict[str, float] = {}
    write_clip(
        model,
        results,
        folder,
        video.display,
        video.indices,
        figures=figures,
        figure_clips=figure_clips,
        timings=written,
    )
    figures_s = written["figures_s"]
    stats["figures_s"] += figures_s
    kill_point("files")

    # Video-level prediction: the class with the highest mean softmax over the clips.
    outputs = np.stack([result.output for result in results]).astype(np.float32)
    probabilities = torch.from_numpy(outputs).double().softmax(dim=1).mean(dim=0)
    prediction = int(probabilities.argmax())
    frozen = np.stack([result.frozen_predictions for result in results])
    spatial = np.stack([result.spatial for result in results])
    temporal = np.stack([result.temporal for result in results])
    row.update(
        {
            "status": "ok",
            "error": None,
            "clips": len(video.indices),
            "looped": video.looped,
            "prediction": model.labels.name(prediction),
            "prediction_index": prediction,
            "probability": float(probabilities[prediction]),
            "correct": prediction == true_index,
            "clip_predictions": [model.labels.name(result.prediction) for result in results],
            "target": [model.labels.name(result.target) for result in results],
            "frozen_predictions": [[model.labels.name(int(i)) for i in c] for c in frozen],
            # methods other than frozen explain no frozen clip: no accuracy to report
            "frozen_accuracy": float((frozen == true_index).mean()) if frozen.size else None,
            "temporal_share": temporal_share(spatial, temporal),
        }
    )
    write_s = time.perf_counter() - clock - figures_s
    stats["write_s"] += write_s
    row["timings"] = {
        "decode_s": video.decode_s,
        "explain_s": sum(result.explain_seconds for result in results),
        "write_s": write_s,
        "figures_s": figures_s,
    }
    store.write_row(item.folder, row)
    kill_point("row")
    return row


def _totals(per_rank: list[dict]) -> dict[str, Any]:
    keys = per_rank[0].keys()
    total = {k: sum(r[k] for r in per_rank) for k in keys}
    total["per_rank"] = per_rank
    return total


def _dry_run(plans, done, todo_groups, owners, context, say, options) -> dict[str, Any]:
    rank_of = {p.item.folder: r for g, r in zip(todo_groups, owners) for p in g}
    lines = []
    counts = {"done": 0, "todo": 0, "todo_clips": 0, "unreadable": 0}
    for plan in plans:
        if plan.item.folder in done:
            state = "done"
            counts["done"] += 1
        else:
            state = "todo"
            counts["todo"] += 1
            counts["todo_clips"] += plan.clips
            counts["unreadable"] += plan.clips == 0
        where = f" rank {rank_of[plan.item.folder]}" if state == "todo" else ""
        note = (
            f" ({plan.probe_error or 'too short: will be recorded as failed'})"
            if (state == "todo" and plan.clips == 0)
            else ""
        )
        lines.append(
            f"{state}  {plan.item.key}  [{plan.item.label}]  {plan.frames} frames, "
            f"{plan.clips} clip(s){where}{note}"
        )
    if context.is_main:
        for line in lines:
            say(line)
        say(
            f"dry run: {counts['todo']} videos to do ({counts['todo_clips']} clips, "
            f"{counts['unreadable']} will fail), {counts['done']} done; "
            f"{context.world_size} process(es); nothing was written"
        )
    return counts


class _Progress:
    """Progress and ETA on rank 0's console, counting every rank's videos."""

    def __init__(self, total: int, context: Context, say) -> None:
        self.total, self.context, self.say = total, context, say
        self.started = time.perf_counter()
        self.last = 0.0

    def update(self, row: dict) -> None:
        done = self.context.add_done(1)
        if not self.context.is_main:
            return
        now = time.perf_counter()
        if now - self.last < 2.0 and done < self.total:
            return
        self.last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if math.isfinite(left) else "?"
        self.say(
            f"[{done}/{self.total}] {100 * done / max(self.total, 1):.0f}%  "
            f"{rate:.2f} videos/s  ETA {eta}  last: {row['key']} ({row['status']})"
        )


def _say(quiet: bool):
    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True, file=sys.stdout)

    return say
