"""Explain every video of a data set into a store: planned, batched, resumable, sharded.

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
from relgraph.datasets.store import Store, kill_point
from relgraph.engine.memory import check_memory
from relgraph.engine.reverse import activations_needed
from relgraph.errors import RelgraphError, VideoError
from relgraph.io import quickfig
from relgraph.io.outputs import atomic_path, ensure_out_dir, write_npz
from relgraph.io.plots import figure_frames, figure_paper, paper_columns
from relgraph.io.video import iter_clips, read_video, select_clip, video_info
from relgraph.methods.discriminative import DEFAULT_BATCH_SIZE, discriminative_with_rules

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
    static: str | None = None  # the static part; None: the method's default
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
    frames_read: int = 0
    error: str | None = None
    decode_s: float = 0.0


def _decode(plan: VideoPlan, model, options: RunOptions) -> Decoded:

    clock = time.perf_counter()
    length = model.frames_per_clip
    result = Decoded(plan)
    try:
        if plan.probe_error:
            raise VideoError(plan.probe_error)
        if options.clips == "first":
            frames = read_video(plan.item.path, max_frames=options.stride * (length - 1) + 1)
        else:
            frames = read_video(plan.item.path)
        result.frames_read = len(frames)
        minimum = _min_frames(options, length)
        if len(frames) < minimum:
            raise VideoError(_too_short(len(frames), minimum, length))
        if options.clips == "first":
            selections = [select_clip(frames, start=0, stride=options.stride, length=length)]
        else:
            selections = list(iter_clips(frames, stride=options.stride, length=length))
            if options.clips != "all" and len(selections) > int(options.clips):
                picks = np.linspace(0, len(selections) - 1, int(options.clips)).round()
                selections = [selections[int(i)] for i in picks]
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


def _too_short(frames: int, minimum: int, length: int) -> str:
    return (
        f"too short: {frames} frame(s), fewer than {minimum} (--min-frames); a {length}-frame "
        "clip would repeat every frame more than twice"
    )


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
    model,
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
    model,
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
        results = _explain_group(model, decoded, options, stats)
        for video, result in zip(decoded, results):
            if video.plan.item.folder in done:
                continue
            row = _write_video(model, store, video, result, options, stats)
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


def _explain_group(model, decoded: list[Decoded], options: RunOptions, stats) -> list[dict]:
    """Explain the clips of a group's videos together, ``clip_batch`` at a time."""

    graph = model.explained_graph  # batch norms folded unless the model says not to
    good = [d for d in decoded if d.error is None]
    results: dict[int, dict] = {}
    if good:
        clips = torch.cat([d.clips for d in good])
        owner = [i for i, d in enumerate(good) for _ in range(len(d.clips))]
        targets = []
        for d in good:
            target = "auto" if options.target == "auto" else model.labels.index(d.plan.item.label)
            targets += [target] * len(d.clips)
        parts: list[dict[str, np.ndarray]] = []
        clock = time.perf_counter()
        for begin in range(0, len(clips), options.clip_batch):
            batch = clips[begin : begin + options.clip_batch]
            target = targets[begin : begin + options.clip_batch]
            result = discriminative_with_rules(
                graph,
                batch.to(device=graph.device, dtype=graph.dtype),
                model.node_rules,
                "auto" if options.target == "auto" else target,
                model.output_relevance,
                reduce=options.reduce,
                normalize=options.normalize,
                batch_size=options.batch_size,
                progress=False,
                memory_check=False,  # checked once for the run (run_dataset)
                method=options.method,
                static=options.static,
                sigma=options.sigma,
            )
            part = {
                "spatiotemporal": result.spatiotemporal,
                "spatial": result.spatial,
                "temporal": result.temporal,
                "relevance": result.relevance,
                "output": result.output,
                "prediction": result.prediction,
                "probability": result.probability,
                "target": result.target,
                "frozen_predictions": result.frozen_predictions,
                "frozen_probabilities": result.frozen_probabilities,
            }
            if options.raw == "all":
                part["frozen_relevance"] = result.frozen_relevance
            parts.append(
                {
                    k: v.detach().float().cpu().numpy()
                    if v.is_floating_point()
                    else v.detach().cpu().numpy()
                    for k, v in part.items()
                }
            )
        seconds = time.perf_counter() - clock
        stats["explain_s"] += seconds
        stats["clips"] += len(clips)
        joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        owner_array = np.asarray(owner)
        for i, d in enumerate(good):
            rows = owner_array == i
            results[id(d)] = {k: v[rows] for k, v in joined.items()}
            results[id(d)]["explain_s"] = seconds * rows.sum() / len(clips)
    return [results.get(id(d), {}) for d in decoded]


def _write_video(model, store: Store, video: Decoded, result: dict, options, stats) -> dict:

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

    ensure_out_dir(folder)
    arrays = {k: v for k, v in result.items() if k != "explain_s"}
    arrays["frames"] = video.display
    arrays["frame_indices"] = np.asarray(video.indices, dtype=np.int64)
    with atomic_path(folder / "relevance.npz") as temporary:
        write_npz(temporary, **arrays)
        kill_point("npz")
    figures_s = 0.0
    if options.figures != "none":
        tick = time.perf_counter()
        _figures(model, folder, video, result, options)
        figures_s = time.perf_counter() - tick
        stats["figures_s"] += figures_s
    kill_point("files")

    # Video-level prediction: the class with the highest mean softmax over the clips.
    probabilities = torch.from_numpy(result["output"]).double().softmax(dim=1).mean(dim=0)
    prediction = int(probabilities.argmax())
    frozen = result["frozen_predictions"]
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
            "clip_predictions": [model.labels.name(int(i)) for i in result["prediction"]],
            "target": [model.labels.name(int(i)) for i in result["target"]],
            "frozen_predictions": [[model.labels.name(int(i)) for i in c] for c in frozen],
            # methods other than frozen explain no frozen clip: no accuracy to report
            "frozen_accuracy": float((frozen == true_index).mean()) if frozen.size else None,
            "temporal_share": temporal_share(result["spatial"], result["temporal"]),
        }
    )
    write_s = time.perf_counter() - clock - figures_s
    stats["write_s"] += write_s
    row["timings"] = {
        "decode_s": video.decode_s,
        "explain_s": float(result["explain_s"]),
        "write_s": write_s,
        "figures_s": figures_s,
    }
    store.write_row(item.folder, row)
    kill_point("row")
    return row


def _figures(model, folder, video: Decoded, result: dict, options: RunOptions) -> None:

    count = len(video.indices) if options.figures == "all" else 1
    for k in range(count):
        maps = [result[name][k] for name in ("spatiotemporal", "spatial", "temporal")]
        target = folder if k == 0 else folder / f"clip-{k:03d}"
        quickfig.save_grid(target / "grid.png", video.display[k], *maps)
        quickfig.save_animation(target / "animation.gif", video.display[k], *maps)
        if options.figures == "all":
            frozen = result["frozen_predictions"][k]
            columns = paper_columns(len(frozen))
            figure_paper(
                video.display[k],
                *maps,
                columns=columns,
                title=f"predicted {model.labels.name(int(result['prediction'][k]))}",
                column_labels=[f"frozen: {model.labels.name(int(frozen[t]))}" for t in columns],
                path=target / "figure.png",
            )
            figure_frames(*maps, path=target / "frames.png")


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
