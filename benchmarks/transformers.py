"""Speed and memory of AttnLRP on a video transformer: relgraph against autograd, one process.

Run (the numbers in docs/benchmarks/transformers.md)::

    python benchmarks/transformers.py --sizes 112,224 --repeats 3 --bf16-size 112 --threads 1

The model is VideoMAE-S (hidden 384, 12 layers, 6 heads, MLP 1536, 400 classes, random
weights: timing needs no checkpoint) built twice from the same weights: relgraph's
``videomae`` graph and transformers' own ``VideoMAEForVideoClassification`` (the graph loads
``model.state_dict()``). For each clip size (16 frames, tubelets 2 × 16 × 16: 1,568 tokens at
224 × 224, 392 at 112 × 112), batch 1, float32, on the CPU:

- forward: ``Graph.forward`` keeping nothing, and transformers' forward under ``no_grad``;
- explain: ``relgraph.explain(..., rules="attnlrp")`` (no autograd);
- the autograd baseline: LXT's recipe (Achtibat et al. 2024, LXT's efficient mode), gradient ×
  input on transformers' modules with σ of every layer norm detached, GELU's gradient
  ``gelu(x)/x`` and the gradients of q, k and v divided by 4, 4 and 2
  (``tests/transformer_reference.py``, also the tests' reference); its relevance is checked
  against relgraph's in every row;
- explain ÷ forward as the median of paired rounds (forward, explain, baseline in turns, so
  that a machine whose speed drifts is seen at nearly the same moment by all three);
- peak memory per call: the resident set size sampled every 2 ms during the call, above its
  level before the call, and the activations relgraph keeps for the rules (from the graph's
  shapes: which nodes the preset reads, and how many of them are ``heads × N × N``).

``--reuse-freed`` runs every size's rounds, all four calls alike, with freed memory kept for
reuse (``relgraph.engine.hostmemory.reuse_freed``, as ``benchmarks/speed.py`` does): with
glibc's defaults the memory an explanation keeps (622 MiB at 1,568 tokens) goes back to the
system after each call and is faulted in again on the next (about 150,000 page faults per
explanation), which a loop over many clips can avoid.

``--bf16-size`` (default 112; 0 skips) explains the same model in bfloat16 and compares it
with float32: finiteness, cosine similarity and the largest difference relative to the
largest float32 value. Prints Markdown tables; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

# Run as a script, this file's folder comes first on the path and this file, named
# transformers.py, would shadow the transformers library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

import relgraph  # noqa: E402
from relgraph.engine.graph import load_architecture  # noqa: E402
from relgraph.engine.reverse import activations_needed, resolve_rules  # noqa: E402

sys.path.insert(0, str(_HERE.parent / "tests"))
from transformer_reference import reference_relevance  # noqa: E402

VIDEOMAE_S = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "num_labels": 400,
}
FRAMES = 16
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE


def measured(call):
    """Run ``call()``; returns (result, seconds, peak RSS above the level before, bytes)."""
    before = rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    peak[0] = max(peak[0], rss())
    return result, seconds, peak[0] - before


def build(size: int):
    """VideoMAE-S at ``size``: (relgraph graph, transformers model), the same weights."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(0)
    config = VideoMAEConfig(
        **VIDEOMAE_S, patch_size=16, tubelet_size=2, num_frames=FRAMES, image_size=size
    )
    model = VideoMAEForVideoClassification(config).eval()
    model.set_attn_implementation("sdpa")
    graph = load_architecture(
        "videomae", **VIDEOMAE_S, patch_size=16, num_frames=FRAMES, image_size=size
    )
    graph.load_weights(model.state_dict())
    return graph, model


def kept_report(graph, rules: str = "attnlrp") -> dict:
    """What relgraph keeps for the rules: bytes in all and in ``heads × N × N`` tensors."""
    _, node_rules, _ = resolve_rules(graph, rules, None, None)
    needed = activations_needed(graph, node_rules)
    tokens = None
    total = square = 0
    count_square = 0
    for node in needed:
        shape = tuple(graph.shape_of(node))
        numel = 1
        for extent in shape:
            numel *= extent
        total += numel * 4
        if len(shape) == 3 and shape[1] == shape[2]:
            tokens = shape[1]
            square += numel * 4
            count_square += 1
    return {
        "kept_nodes": len(needed),
        "kept_bytes": total,
        "square_nodes": count_square,
        "square_bytes": square,
        "tokens": tokens,
    }


def run_size(size: int, repeats: int, reuse: bool = False) -> dict:
    """One size's warm-up and paired rounds (``reuse``: under ``reuse_freed``)."""
    from relgraph.engine.hostmemory import reuse_freed

    with reuse_freed() if reuse else contextlib.nullcontext():
        return _run_size(size, repeats)


def _run_size(size: int, repeats: int) -> dict:
    graph, model = build(size)
    x = torch.randn(1, 3, FRAMES, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = model(pixel_values=x.transpose(1, 2)).logits.argmax(1)

    def forward():
        return graph.forward(x, keep=()).output

    def hf_forward():
        with torch.no_grad():
            return model(pixel_values=x.transpose(1, 2)).logits

    def explain():
        return relgraph.explain(graph, x, target=target, rules="attnlrp")

    def baseline():
        return reference_relevance(model, x, target, "attnlrp")

    # warm-up round (first calls allocate and plan)
    ours, base = explain(), baseline()
    forward(), hf_forward()
    rows = {"forward": [], "hf_forward": [], "explain": [], "baseline": []}
    peaks = {key: 0 for key in rows}
    for _ in range(repeats):
        for key, call in (
            ("forward", forward),
            ("hf_forward", hf_forward),
            ("explain", explain),
            ("baseline", baseline),
        ):
            _, seconds, peak = measured(call)
            rows[key].append(seconds)
            peaks[key] = max(peaks[key], peak)
    ratios = [e / f for e, f in zip(rows["explain"], rows["forward"], strict=True)]
    diff = float((ours - base).abs().max() / base.abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(ours.flatten(), base.flatten(), dim=0))
    return {
        "size": size,
        "tokens": (FRAMES // 2) * (size // 16) ** 2,
        "seconds": {key: statistics.median(values) for key, values in rows.items()},
        "all_seconds": rows,
        "explain_over_forward": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "baseline_over_explain": statistics.median(
            [b / e for b, e in zip(rows["baseline"], rows["explain"], strict=True)]
        ),
        "peak_bytes": peaks,
        "kept": kept_report(graph),
        "max_rel_diff_vs_baseline": diff,
        "cosine_vs_baseline": cosine,
        "finite": bool(torch.isfinite(ours).all()),
    }


def run_bfloat16(size: int) -> dict:
    graph, model = build(size)
    x = torch.randn(1, 3, FRAMES, size, size, generator=torch.Generator().manual_seed(1))
    target = graph.forward(x, keep=()).output.argmax(1)
    full = relgraph.explain(graph, x, target=target, rules="attnlrp")
    half_graph = load_architecture(
        "videomae",
        **VIDEOMAE_S,
        patch_size=16,
        num_frames=FRAMES,
        image_size=size,
        dtype=torch.bfloat16,
    )
    half_graph.load_weights(model.state_dict())
    half_x = x.to(torch.bfloat16)
    started = time.perf_counter()
    half = relgraph.explain(half_graph, half_x, target=target, rules="attnlrp").float()
    half_seconds = time.perf_counter() - started
    same_prediction = bool((half_graph.forward(half_x, keep=()).output.argmax(1) == target).all())
    return {
        "size": size,
        "finite": bool(torch.isfinite(half).all()),
        "cosine": float(torch.nn.functional.cosine_similarity(full.flatten(), half.flatten(), 0)),
        "max_rel_diff": float((full - half).abs().max() / full.abs().max()),
        "same_prediction": same_prediction,
        "bf16_explain_seconds": half_seconds,
        "dtype_out": str(half.dtype),
    }


def mib(count: int) -> str:
    return f"{count / 2**20:,.0f}"


def markdown(rows: list[dict], bf16: dict | None) -> str:
    lines = [
        "| input | tokens | forward (s) | transformers forward (s) | explain (s) | "
        "explain ÷ forward (range) | autograd AttnLRP (s) | autograd ÷ explain | "
        "peak explain (MiB) | peak autograd (MiB) | kept by relgraph (MiB; N×N part) | "
        "vs autograd (max rel. diff) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s, kept = row["seconds"], row["kept"]
        low, high = row["ratio_range"]
        lines.append(
            f"| 3×{FRAMES}×{row['size']}×{row['size']} | {row['tokens']:,} | "
            f"{s['forward']:.2f} | {s['hf_forward']:.2f} | {s['explain']:.2f} | "
            f"**{row['explain_over_forward']:.2f}** ({low:.2f}–{high:.2f}) | "
            f"{s['baseline']:.2f} | {row['baseline_over_explain']:.2f} | "
            f"{mib(row['peak_bytes']['explain'])} | {mib(row['peak_bytes']['baseline'])} | "
            f"{mib(kept['kept_bytes'])}; {mib(kept['square_bytes'])} in "
            f"{kept['square_nodes']} | {row['max_rel_diff_vs_baseline']:.1e} |"
        )
    if bf16 is not None:
        lines += [
            "",
            "| bfloat16 at | finite | cosine with float32 | max rel. diff | same prediction | "
            "explain (s) |",
            "|---|---|---:|---:|---|---:|",
            f"| 3×{FRAMES}×{bf16['size']}×{bf16['size']} | {bf16['finite']} | "
            f"{bf16['cosine']:.4f} | {bf16['max_rel_diff']:.2e} | {bf16['same_prediction']} | "
            f"{bf16['bf16_explain_seconds']:.2f} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,112", help="clip sizes (comma separated)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after a warm-up")
    parser.add_argument("--bf16-size", type=int, default=112, help="0 skips the bfloat16 check")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--reuse-freed", action="store_true", help="keep freed memory for reuse (all calls)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in (int(s) for s in args.sizes.split(",") if s):
        rows.append(run_size(size, args.repeats, args.reuse_freed))
        print(json.dumps(rows[-1]), flush=True)
    bf16 = run_bfloat16(args.bf16_size) if args.bf16_size else None
    if bf16 is not None:
        print(json.dumps(bf16), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    print(markdown(rows, bf16))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "bfloat16": bf16}, indent=1) + "\n")


if __name__ == "__main__":
    main()
