"""Does the temporal map find what moves? Motion localisation on synthetic clips with masks.

The synthetic clips (``relgraph.datasets.synthetic``) show textured objects that move in the class's
direction, static copies of them (distractors) and a textured static background; motion
decides the class, and the objects' colour agrees with it with probability ``--cue`` (0.8),
as the scene does in real action data. For the shipped demo model
(c3d-tiny trained on those clips) this script explains N clips with the discriminative
method and measures, for each map, where its POSITIVE relevance lies:

- ``moving``: pixels covered by a moving object in frame t;
- ``static``: pixels of a static distractor in frame t;
- ``background``: every other pixel; ``trail`` is the part of it that a moving object
  covers in frame t−1 or t+1 (the pixels it has just left or is about to enter).

Which mask belongs to frame t of the temporal map: every map at index t is relevance of
the pixels of frame t (the spatio-temporal map's slice t of the clip; the spatial map is the
frozen clip of frame t, whose every slice is frame t), so the temporal map
``spatiotemporal[t] − spatial[t]`` is compared with the masks of frame t: the objects where
they are in frame t. A 3×3×3 convolution also sees a moving edge in the pixels an object
vacates or enters, so some motion relevance is expected just outside the objects; the
``trail`` column measures how much, within the background share.

The maps are at the model's input resolution (32×32 with ``hara`` at the synthetic size), so
masks and maps align pixel for pixel. The share of a map on a region is
``Σ_region max(map, 0) / Σ_all max(map, 0)`` over the whole clip; the table gives the mean
over clips with a 95 % interval (mean ± 1.96 standard errors). The baseline, measured in the
same run, is the pixel area of each region (where a map that ignores the content would put
its relevance).

The paper's claim (Hiley et al., 2019) is that the temporal map isolates the relevance due
to motion: its positive relevance should lie clearly more on moving objects than the
spatio-temporal map's does.

Run::

    python benchmarks/motion_localization.py --clips 100 --out motion.json --figure motion.png

What it gave with the shipped weights (``c3d-tiny-synthetic.safetensors``, sha256 756e2cfc…),
100 clips, seed 2019, all classified correctly; temporal minus spatio-temporal share, paired
per clip, ± 95 % interval:

- ``--reduce first`` (the authors'): on moving objects +0.102 ± 0.023 (0.500 vs 0.398;
  area 0.059; higher in 82 % of clips); on static distractors −0.101 ± 0.011 (0.027 vs
  0.129); moving + trail +0.178 ± 0.020.
- ``--reduce same``: moving +0.094 ± 0.017 (88 %); ``mean``: +0.099 ± 0.019 (84 %).
- Other training seeds and recipes (``scripts/train_demo_model.py --seed S --out DIR``, then
  ``--weights DIR/c3d-tiny-synthetic.safetensors``): moving +0.03 to +0.10 on every model
  that uses colour in moving clips, static −0.06 to −0.10 on all (table in
  docs/benchmarks/motion-localization.md).
- The first demo model, trained on motion-only clips, gave +0.009 ± 0.023 on moving
  objects: it ignored appearance, so its spatio-temporal map was already on the movers and
  there was nothing for the subtraction to remove.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from relgraph.rules import as_composite

from relgraph.datasets.synthetic import APPEARANCE_CUE, CLASS_NAMES, make_set
from relgraph.io.outputs import atomic_path, write_json
from relgraph.io.plots import figure_paper, paper_columns
from relgraph.io.preprocess import get_preprocess
from relgraph.methods.discriminative import DEFAULT_BATCH_SIZE, discriminative_with_rules
from relgraph.models.demo import DEMO_MODELS

REGIONS = ("moving", "static", "irrelevant", "background", "trail", "motion")
REGION_LABELS = {
    "moving": "moving",
    "static": "static",
    "irrelevant": "irrelevant motion",
    "background": "background",
    "trail": "(trail, in background)",
    "motion": "(moving + trail)",
}
MAPS = ("spatiotemporal", "spatial", "temporal")
MAP_LABELS = {
    "area": "pixel area (baseline)",
    "spatiotemporal": "spatio-temporal",
    "spatial": "spatial",
    "temporal": "temporal",
}


def region_masks(
    moving: np.ndarray, static: np.ndarray, irrelevant: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Masks ``(T, H, W)`` of frame t's regions; moving, static, irrelevant (objects that
    oscillate or flicker in place, all False without them) and background partition the
    pixels, trail is part of the background, motion is moving and trail together."""
    if irrelevant is None:
        irrelevant = np.zeros_like(moving)
    neighbours = np.zeros_like(moving)
    neighbours[1:] |= moving[:-1]  # covered in frame t-1
    neighbours[:-1] |= moving[1:]  # covered in frame t+1
    background = ~(moving | static | irrelevant)
    return {
        "moving": moving,
        "static": static & ~moving,
        "irrelevant": irrelevant & ~moving,
        "background": background,
        "trail": background & neighbours,
        "motion": moving | (background & neighbours),
    }


def positive_shares(relevance_map: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of the map's positive relevance on each region (NaN for a map with none)."""
    positive = np.clip(relevance_map, 0.0, None)
    total = positive.sum(dtype=np.float64)
    if total <= 0:
        return {name: math.nan for name in masks}
    return {
        name: float(positive[mask].sum(dtype=np.float64) / total) for name, mask in masks.items()
    }


def summarise(values: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation and the 95 % interval half-width of a per-clip quantity."""
    values = values[np.isfinite(values)]
    count = len(values)
    std = float(values.std(ddof=1)) if count > 1 else 0.0
    return {
        "mean": float(values.mean()) if count else math.nan,
        "std": std,
        "ci95": 1.96 * std / math.sqrt(count) if count > 1 else math.nan,
        "clips": count,
    }


def run(args: argparse.Namespace) -> dict:
    from relgraph.models.demo import DEMO_PREPROCESS, load_demo_model

    torch.manual_seed(0)
    graph = load_demo_model(args.arch)
    if args.weights:
        graph.load_weights(args.weights)
    _, frames, size, _ = graph.input_shape
    preprocess = get_preprocess(DEMO_PREPROCESS, size=size)
    composite = as_composite(args.rules, graph)
    node_rules = composite.resolve(graph, preprocess=DEMO_PREPROCESS)  # once, for every clip
    seed_kind = composite.output_relevance or "onehot"

    data = make_set(
        args.clips,
        args.seed,
        frames=frames,
        size=size,
        cue=args.cue,
        irrelevant_motion=args.irrelevant_motion,
    )
    videos, labels, moving, static = data.frames, data.labels, data.moving, data.static
    inputs = torch.stack([preprocess(video) for video in videos]).to(graph.dtype)

    started = time.perf_counter()
    results = []
    for begin in range(0, args.clips, args.clips_per_call):
        part = slice(begin, min(begin + args.clips_per_call, args.clips))
        target = "auto" if args.target == "predicted" else torch.as_tensor(labels[part])
        result = discriminative_with_rules(
            graph,
            inputs[part],
            node_rules,
            target,
            seed_kind,
            reduce=args.reduce,
            normalize=args.normalize,
            batch_size=args.batch_size,
            progress=False,
        )
        results.append(result)
    seconds = time.perf_counter() - started

    maps = {name: torch.cat([getattr(r, name) for r in results]).numpy() for name in MAPS}
    prediction = torch.cat([r.prediction for r in results]).numpy()
    frozen_predictions = torch.cat([r.frozen_predictions for r in results]).numpy()

    shares = {name: {region: [] for region in REGIONS} for name in ("area", *MAPS)}
    for clip in range(args.clips):
        masks = region_masks(moving[clip], static[clip], data.irrelevant[clip])
        for region, mask in masks.items():
            shares["area"][region].append(mask.mean())
        for name in MAPS:
            for region, share in positive_shares(maps[name][clip], masks).items():
                shares[name][region].append(share)
    shares = {
        n: {r: np.asarray(v, dtype=np.float64) for r, v in s.items()} for n, s in shares.items()
    }
    differences = {
        region: shares["temporal"][region] - shares["spatiotemporal"][region] for region in REGIONS
    }
    frozen_agree = (frozen_predictions == prediction[:, None]).mean()

    report = {
        "config": {
            "arch": args.arch,
            "clips": args.clips,
            "seed": args.seed,
            "cue": args.cue,
            "irrelevant_motion": args.irrelevant_motion,
            "weights": str(args.weights) if args.weights else "shipped",
            "target": args.target,
            "rules": composite.name,
            "reduce": args.reduce,
            "normalize": args.normalize,
            "batch_size": args.batch_size or DEFAULT_BATCH_SIZE,
            "threads": torch.get_num_threads(),
            "preprocess": DEMO_PREPROCESS,
            "input": list(graph.input_shape),
        },
        "accuracy": float((prediction == labels).mean()),
        "frozen_agreement": float(frozen_agree),
        "seconds": seconds,
        "shares": {
            name: {region: summarise(values) for region, values in by_region.items()}
            for name, by_region in shares.items()
        },
        "temporal_minus_spatiotemporal": {
            region: {
                **summarise(difference),
                "clips_where_temporal_is_higher": float(
                    np.mean(difference[np.isfinite(difference)] > 0)
                ),
            }
            for region, difference in differences.items()
        },
        "per_clip": {
            "label": labels.tolist(),
            "prediction": prediction.tolist(),
            "moving_share": {name: shares[name]["moving"].tolist() for name in ("area", *MAPS)},
        },
    }
    if args.figure:
        save_example(args.figure, videos[0], maps, moving[0], labels[0], prediction[0], preprocess)
    return report


def save_example(path, video, maps, moving, label, prediction, preprocess) -> None:
    """The paper's figure for clip 0, with the moving objects outlined in the frames row."""
    frames = preprocess.display_frames(video)
    columns = paper_columns(len(frames))
    figure = figure_paper(
        frames,
        maps["spatiotemporal"][0],
        maps["spatial"][0],
        maps["temporal"][0],
        columns=columns,
        title=f"true {CLASS_NAMES[label]}, predicted {CLASS_NAMES[prediction]}; "
        "moving objects outlined",
    )
    for ax, t in zip(figure.axes[: len(columns)], columns):
        ax.contour(moving[t], levels=[0.5], colors="lime", linewidths=0.8)
    with atomic_path(Path(path)) as temporary:
        figure.savefig(temporary, format="png")


def markdown(report: dict) -> str:
    header = "| " + " | ".join(REGION_LABELS[region] for region in REGIONS) + " |"
    rule = "|---|" + "---|" * len(REGIONS)
    lines = [
        f"Share of each map's positive relevance by region, mean over "
        f"{report['config']['clips']} clips (± 95 % interval)",
        "",
        "| map " + header,
        rule,
    ]
    for name, label in MAP_LABELS.items():
        cells = []
        for region in REGIONS:
            stats = report["shares"][name][region]
            cells.append(f"{stats['mean']:.3f} ± {stats['ci95']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    differences = report["temporal_minus_spatiotemporal"]
    lines += [
        "",
        "Temporal minus spatio-temporal share, paired per clip (± 95 % interval; share of "
        "clips where the temporal map's is higher)",
        "",
        header,
        "|" + "---|" * len(REGIONS),
        "| "
        + " | ".join(
            f"{differences[region]['mean']:+.3f} ± {differences[region]['ci95']:.3f} "
            f"({differences[region]['clips_where_temporal_is_higher']:.0%})"
            for region in REGIONS
        )
        + " |",
        "",
        f"accuracy on these clips: {report['accuracy']:.1%}; frozen clips that keep the clip's "
        f"prediction: {report['frozen_agreement']:.1%}; "
        f"{report['seconds']:.1f} s for {report['config']['clips']} clips "
        f"({report['config']['clips'] * 17} explanations)",
        f"options: arch {report['config']['arch']}, reduce {report['config']['reduce']}, normalize "
        f"{report['config']['normalize']}, rules {report['config']['rules']}, target "
        f"{report['config']['target']}",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=100, help="synthetic clips (default 100)")
    parser.add_argument("--seed", type=int, default=2019, help="data set seed (default 2019)")
    parser.add_argument(
        "--target",
        choices=("predicted", "true"),
        default="predicted",
        help="explain the predicted class (the paper's way, default) or the true one",
    )
    parser.add_argument(
        "--arch",
        choices=tuple(DEMO_MODELS),
        default="c3d-tiny",
        help="shipped demo model to test (default c3d-tiny)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="weights of that architecture to test (default: its shipped demo model)",
    )
    parser.add_argument(
        "--cue", type=float, default=APPEARANCE_CUE, help="colour cue of the clips (0 to 1)"
    )
    parser.add_argument(
        "--irrelevant-motion",
        action="store_true",
        help="add objects that oscillate or flicker in place (relgraph.synthetic)",
    )
    parser.add_argument("--rules", default=None, help="rule preset (default: the model's)")
    parser.add_argument("--reduce", default="first")
    parser.add_argument("--normalize", default="maxabs")
    parser.add_argument("--batch-size", type=int, default=None, help="frozen clips per batch")
    parser.add_argument("--clips-per-call", type=int, default=16, help="clips per call")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (1 on a shared machine: see docs/benchmarks/model-speed.md)",
    )
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--figure", type=Path, help="save the example figure of clip 0 here")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print(markdown(report))
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    if args.figure:
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
