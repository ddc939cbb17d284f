"""bfloat16 explanations against float32: accuracy over many clips, and speed.

Run ``python benchmarks/precision.py`` (CPU; ``--device cuda`` on a GPU). On the full-size
C3D (shipped architecture, its random initial weights unless ``--weights``) with
``deep-taylor-paper``:

- accuracy over ``--clips`` clips (default 20): synthetic action clips
  (``relgraph.datasets.synthetic``, 128×128, moving textured objects) through the architecture's own
  preprocessing (``c3d-ucf101``: values in about [-102, 153], as real preprocessed input),
  and as many uniform-noise clips over the same range (``--noise``). For each clip, the
  bfloat16 map (graph and input in bfloat16, the target float32's prediction) against the
  float32 one: Pearson correlation, relative L2 error ``‖R16 − R32‖ / ‖R32‖``, conservation
  error ``|Σ R_in − Σ seed| / Σ seed`` of both, and whether the predictions agree;
- speed of ``explain`` and ``discriminative`` (T = 16 frozen clips, default batch size) in
  both formats, measured in one process and interleaved (float32, bfloat16, float32, ...)
  so that load from other processes falls on both alike; medians.

Prints markdown tables; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import relgraph
from relgraph.datasets.synthetic import CLASS_NAMES, make_clip
from relgraph.io.outputs import write_json
from relgraph.io.preprocess import get_preprocess

RULES = "deep-taylor-paper"


def clips(graph: relgraph.Graph, count: int, noise: bool, seed: int = 0) -> list[torch.Tensor]:
    """``count`` synthetic clips through the graph's preprocessing (and, with ``noise``,
    ``count`` uniform-noise clips over the preprocessed range)."""
    rng = np.random.default_rng(seed)
    size = graph.input_shape[-1]
    preprocess = get_preprocess(graph.default_preprocess or "c3d-ucf101", size=size)
    frames = graph.input_shape[1]
    drawn = max(size + 16, 32)  # a little larger than the input: the preset crops
    made = [
        preprocess(make_clip(i % len(CLASS_NAMES), rng, frames=frames, size=drawn).frames)
        for i in range(count)
    ]
    if noise:
        low, high = (float(v[0]) for v in preprocess.zbeta_bounds(False))
        generator = torch.Generator().manual_seed(seed)
        made += [
            torch.rand(graph.input_shape, generator=generator) * (high - low) + low
            for _ in range(count)
        ]
    return [c.to(graph.device) for c in made]


def compare(g32: relgraph.Graph, g16: relgraph.Graph, clip: torch.Tensor) -> dict:
    """One clip's bfloat16 map against its float32 map."""
    x = clip.unsqueeze(0)
    e32 = relgraph.explanation(g32, x, rules=RULES)
    e16 = relgraph.explanation(g16, x.to(torch.bfloat16), rules=RULES, target=e32.target)
    a = e32.relevance.double().flatten()
    b = e16.relevance.double().flatten()
    seed = float(e32.output_relevance.double().sum())
    return {
        "pearson": float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
        "relative_l2": float((a - b).norm() / a.norm()),
        "conservation_error_fp32": abs(float(a.sum()) - seed) / seed,
        "conservation_error_bf16": abs(float(b.sum()) - seed) / seed,
        "same_prediction": bool(e32.output.argmax(1) == e16.output.float().argmax(1)),
        "relevance_dtype": str(e16.relevance.dtype),
    }


def accuracy_table(rows: list[dict], kinds: list[str]) -> None:
    print(
        "| clips | n | Pearson (min / median) | rel. L2 (max / median) | "
        "conservation error bf16 (max) | fp32 (max) | same prediction |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in sorted(set(kinds)):
        part = [r for r, k in zip(rows, kinds) if k == kind]
        pear = [r["pearson"] for r in part]
        rel = [r["relative_l2"] for r in part]
        print(
            f"| {kind} | {len(part)} | {min(pear):.5f} / {statistics.median(pear):.5f} | "
            f"{100 * max(rel):.2f} % / {100 * statistics.median(rel):.2f} % | "
            f"{100 * max(r['conservation_error_bf16'] for r in part):.3f} % | "
            f"{100 * max(r['conservation_error_fp32'] for r in part):.1e} % | "
            f"{sum(r['same_prediction'] for r in part)}/{len(part)} |"
        )


def speed(g32: relgraph.Graph, g16: relgraph.Graph, clip: torch.Tensor, repeats: int) -> dict:
    """Median seconds of explain and discriminative in both formats, interleaved."""
    x32 = clip.unsqueeze(0)
    x16 = x32.to(torch.bfloat16)
    sync = torch.cuda.synchronize if clip.device.type == "cuda" else (lambda: None)
    jobs = {
        "explain fp32": lambda: relgraph.explain(g32, x32, rules=RULES),
        "explain bf16": lambda: relgraph.explain(g16, x16, rules=RULES),
        "discriminative fp32": lambda: relgraph.discriminative(
            g32, x32, rules=RULES, progress=False
        ),
        "discriminative bf16": lambda: relgraph.discriminative(
            g16, x16, rules=RULES, progress=False
        ),
    }
    for job in jobs.values():  # warm-up: caches (W⁺), allocator, kernels
        job()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            sync()
            start = time.perf_counter()
            job()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()} | {"times": times}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="c3d")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--noise", action="store_true", help="also as many noise clips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    g32 = relgraph.load_architecture(args.arch, device=args.device)
    if args.weights:
        g32.load_weights(args.weights)
    g16 = relgraph.load_architecture(args.arch, device=args.device)
    g16.assign(g32.state_dict())
    g16.to(dtype=torch.bfloat16)
    data = clips(g32, args.clips, args.noise)
    kinds = ["synthetic"] * args.clips + ["uniform noise"] * (len(data) - args.clips)

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if args.device == "cuda":
        machine = torch.cuda.get_device_name()
    print(
        f"# bfloat16 against float32 — {args.arch}, {RULES}, {args.device} ({machine}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads)\n"
    )
    report: dict = {"machine": machine, "arch": args.arch, "device": args.device}
    if not args.skip_accuracy:
        rows = [compare(g32, g16, clip) for clip in data]
        accuracy_table(rows, kinds)
        report["accuracy"] = [dict(r, clips=k) for r, k in zip(rows, kinds)]
    if not args.skip_speed:
        timed = speed(g32, g16, data[0], args.repeats)
        print(
            f"\nSpeed, one clip, medians of {args.repeats} interleaved runs in one process "
            "(on a shared CPU: the ratio is the result, the seconds vary with the load):\n"
        )
        print("| what | float32 (s) | bfloat16 (s) | speed-up |")
        print("|---|---:|---:|---:|")
        for what in ("explain", "discriminative"):
            f32, b16 = timed[f"{what} fp32"], timed[f"{what} bf16"]
            print(f"| {what} | {f32:.2f} | {b16:.2f} | {f32 / b16:.2f} × |")
        report["speed"] = timed
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
