"""Cost of each motion method relative to one explanation, and the methods' comparison figure.

For each shipped demo model, times ``relgraph.explain`` (one explanation, the baseline) and
``relgraph.discriminative(..., method=NAME)`` for every method on the same batch of synthetic
clips, interleaved round by round, and prints the median seconds per clip and the median of
the per-round ratios to the explanation (each ratio is taken within one round, so that load
from other processes cancels as far as it can). Integrated gradients from the static clip
(``relgraph.methods.baselines``) is timed too. With ``--figure``, draws one clip's maps: a
column per method, rows for the spatio-temporal, spatial and temporal maps (the paper's
Figure 2 style: a diverging colormap white at 0, each map on its own ±max scale).

Run::

    python benchmarks/motion_methods.py --clips 8 --rounds 7 --threads 1 \\
        --figure docs/motion-methods.png
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import relgraph
from relgraph.datasets.synthetic import make_set
from relgraph.errors import RelgraphError
from relgraph.io.outputs import atomic_path
from relgraph.io.preprocess import get_preprocess
from relgraph.methods.baselines import integrated_gradients
from relgraph.methods.discriminative import METHODS
from relgraph.models.demo import DEMO_MODELS

MODELS = ("c3d-tiny", "r2plus1d-tiny", "videomae-tiny")


def load(arch: str):
    graph = relgraph.load_architecture(arch)
    graph.load_weights(DEMO_MODELS[arch])
    return graph


def clips_of(graph, n: int, seed: int):
    _, frames, size, _ = graph.input_shape
    data = make_set(n, seed, frames=frames, size=size, irrelevant_motion=True)
    transform = get_preprocess(graph.default_preprocess, size=size)
    return torch.stack([transform(v) for v in data.frames]).to(graph.dtype), data


def time_methods(
    graph, clips: torch.Tensor, rounds: int, methods=METHODS, ig: bool = True
) -> dict[str, dict[str, float]]:
    targets = graph.forward(clips).output.argmax(dim=1)
    usable = []
    for m in methods:  # a method the model refuses (reference on a transformer) is left out
        try:
            relgraph.discriminative(graph, clips[:1], targets[:1], method=m)
            usable.append(m)
        except RelgraphError as exc:
            print(f"{graph.name}: {m} left out: {exc}")
    runs = {
        "explanation": lambda: relgraph.explain(graph, clips, targets),
        **{
            m: (lambda m=m: relgraph.discriminative(graph, clips, targets, method=m))
            for m in usable
        },
    }
    if ig:
        runs["integrated gradients (16 steps)"] = lambda: integrated_gradients(
            graph, clips, targets
        )
    for run in runs.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            clock = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - clock)
    table = {}
    for name, values in seconds.items():
        ratios = [v / e for v, e in zip(values, seconds["explanation"])]
        table[name] = {
            "seconds per clip": statistics.median(values) / len(clips),
            "ratio": statistics.median(ratios),
            "ratio quartiles": statistics.quantiles(ratios, n=4)[::2] if rounds > 1 else ratios,
        }
    return table


def figure(graph, clips: torch.Tensor, data, index: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clip = clips[index : index + 1]
    target = int(graph.forward(clip).output.argmax(dim=1))
    results = {m: relgraph.discriminative(graph, clip, target, method=m) for m in METHODS}
    # the figure's clip: seed 7, the tuning seed, not one the evaluation uses
    frame = clip.shape[2] // 2
    rows = ("spatiotemporal", "spatial", "temporal")
    fig, axes = plt.subplots(
        len(rows) + 1, len(METHODS), figsize=(2.1 * len(METHODS), 2.1 * (len(rows) + 1))
    )
    still = np.asarray(data.frames[index][frame])
    for column, method in enumerate(METHODS):
        axes[0, column].imshow(still)
        axes[0, column].set_title(method, fontsize=10)
        for row, name in enumerate(rows, start=1):
            values = getattr(results[method], name)[0, frame].float().numpy()
            limit = float(np.abs(values).max()) or 1.0
            axes[row, column].imshow(values, cmap="seismic", vmin=-limit, vmax=limit)
            if column == 0:
                axes[row, column].set_ylabel(name, fontsize=10)
    axes[0, 0].set_ylabel(f"frame {frame + 1}", fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{graph.name}: one synthetic clip, frame {frame + 1}; green: the relevant moving object",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=8, help="clips per batch (8)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--seed", type=int, default=7, help="synthetic data seed (7)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--models", nargs="*", default=MODELS, help="models to time (none: figure only)"
    )
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--no-ig", action="store_true", help="do not time integrated gradients")
    parser.add_argument("--figure", type=Path, help="draw the comparison figure here")
    parser.add_argument("--figure-model", default="c3d-tiny")
    parser.add_argument("--figure-clip", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for arch in args.models:
        graph = load(arch)
        clips, _ = clips_of(graph, args.clips, args.seed)
        table = time_methods(graph, clips, args.rounds, args.methods, not args.no_ig)
        print(f"\n{arch}, {args.clips} clips per call, {args.rounds} rounds, "
              f"{torch.get_num_threads()} threads\n")  # fmt: skip
        print("| method | s per clip | × one explanation (median) | quartiles |")
        print("|---|---:|---:|---:|")
        for name, row in table.items():
            low, high = row["ratio quartiles"][0], row["ratio quartiles"][-1]
            print(
                f"| {name} | {row['seconds per clip']:.4f} | {row['ratio']:.2f} | "
                f"{low:.2f}-{high:.2f} |"
            )
    if args.figure:
        graph = load(args.figure_model)
        clips, data = clips_of(graph, args.figure_clip + 1, args.seed)
        figure(graph, clips, data, args.figure_clip, args.figure)
        print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
