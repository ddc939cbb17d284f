"""Measure the maps of a trained tiny model: the evaluation table and plots
(docs/benchmarks/evaluation.md).

Runs :func:`relgraph.evaluation.suite.run_evaluation` (the same suite as ``relgraph evaluate``) on
synthetic clips with irrelevant motion, prints the Markdown tables and draws
``perturbation-curves.png`` (freeze MoRF/LeRF curves per map) and ``randomisation.png``
(Spearman ρ per randomised layer) into ``--figures``. Another trained model's rows come from
rerunning it with ``--arch NAME --weights FILE``.

Run (the numbers in docs/benchmarks/evaluation.md)::

    python benchmarks/evaluate.py --clips 100 --presets all --sanity-clips 100 \\
        --out evaluation.json --figures docs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from relgraph.cli.evaluate import add_evaluation_options, evaluation_graph, evaluation_kwargs
from relgraph.evaluation.suite import DEFAULT_MAPS, markdown, run_evaluation, synthetic_data
from relgraph.io.outputs import atomic_path, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_evaluation_options(parser, presets="all", sanity_clips=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--figures", type=Path, help="folder for the two PNG plots")
    parser.add_argument(
        "--no-regions",
        action="store_true",
        help="leave region perturbation out (with --maps: a part that measures the rest)",
    )
    parser.add_argument(
        "--full-maps",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help="comma-separated names of the maps that get every metric (default: the "
        "suite's set: every method's maps and the baselines); the others get freeze "
        "region perturbation, if asked for, and localisation",
    )
    parser.add_argument(
        "--maps",
        type=Path,
        help="a file of computed maps: read where it exists (the maps are not computed "
        "again), else written after they are computed; the same model, clips and options",
    )
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    graph = evaluation_graph(args)
    started = time.perf_counter()
    data = synthetic_data(
        graph, args.clips, args.seed, irrelevant_motion=not args.no_irrelevant_motion
    )
    computed: dict = {}
    if args.maps and args.maps.exists():
        computed = torch.load(args.maps, weights_only=True)
    report = run_evaluation(
        graph,
        data,
        **evaluation_kwargs(args, graph, len(data.clips)),
        progress=True,
        computed=computed,
        full_maps=args.full_maps,
        regions=not args.no_regions,
    )
    if args.maps and not args.maps.exists():
        torch.save(computed, args.maps)
    report["config"]["weights"] = str(args.pretrained or args.weights or "shipped demo")
    report["config"]["threads"] = torch.get_num_threads()
    report["total_seconds"] = time.perf_counter() - started
    return report


def plot_curves(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name in DEFAULT_MAPS:
        curves = report["curves"].get(name, {}).get("freeze")
        if curves is None:
            continue
        for ax, order in zip(axes, ("morf", "lerf")):
            ax.plot(curves["fraction"], curves[order], marker=".", label=name)
    for ax, title in zip(axes, ("MoRF (most relevant first)", "LeRF (least relevant first)")):
        ax.set_title(f"freeze, {title}")
        ax.set_xlabel("share of the clip replaced")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the predicted class")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"{report['config']['arch']}: region perturbation, {report['clips']} clips")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def plot_sanity(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sanity = report["sanity"]
    layers = list(sanity)
    many = len(layers) > 12  # a deep model: a wider figure, names upright
    figure, ax = plt.subplots(figsize=(max(8.0, 0.32 * len(layers)), 5 if many else 4))
    for kind in sanity[layers[0]]:
        means = [sanity[layer][kind]["mean"] for layer in layers]
        errors = [sanity[layer][kind]["ci95"] for layer in layers]
        ax.errorbar(range(len(layers)), means, yerr=errors, marker="o", capsize=3, label=kind)
    ax.set_xticks(
        range(len(layers)), layers, rotation=90 if many else 45, ha="center" if many else "right"
    )
    ax.set_xlabel("randomised from the top down to")
    ax.set_ylabel("Spearman ρ with the original map")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.legend(fontsize=8)
    ax.set_title(f"{report['config']['arch']}: cascading randomisation (Adebayo et al. 2018)")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    report = run(args)
    if args.out:  # first, so that the numbers survive a failure below
        write_json(args.out, report)
        print(f"wrote {args.out}")
    print(markdown(report))
    print(f"\ntotal {report['total_seconds']:.0f} s on {report['config']['threads']} threads")
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        plot_curves(report, args.figures / "evaluation-perturbation.png")
        if report.get("sanity"):
            plot_sanity(report, args.figures / "evaluation-randomisation.png")
        print(f"wrote the plots to {args.figures}")


if __name__ == "__main__":
    main()
