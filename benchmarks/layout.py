"""The memory layout's effect on speed: forward and explanation in the default layout against
channels-last, per model, in one process.

Run ``python benchmarks/layout.py`` (CPU). For each model (``--models``, default the
torchvision-style zoo and the demo models) at its full input size, float32, ``epsilon-plus``
(the demo models: their default rules; ``--rules``: one preset for all), batch ``--batch``:
a warm-up of each of the four configurations, then ``--rounds`` rounds, each timing one
forward pass and one explanation in either layout, the order of the layouts alternating from
round to round, so that a machine whose speed drifts moves both alike. Freed memory is kept
for reuse meanwhile (``relgraph.engine.hostmemory.reuse_freed``), so that no call faults in pages an
earlier one handed back. Prints a markdown table of medians and, with ``--json``, writes it.

The layout is set with ``Graph.channels_last`` (``None``: relgraph's choice,
``Graph.working_layout``; ``True``/``False``: channels-last or the default layout for
every 5-D float32 or bfloat16 input on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import relgraph
from relgraph.engine.hostmemory import reuse_freed
from relgraph.io.outputs import write_json

DEFAULT_MODELS = "c3d,r3d-18,mc3-18,r2plus1d-18,s3d,c3d-tiny,r2plus1d-tiny"


def measure(model: str, batch: int, rounds: int, rules: str | None = None) -> dict:
    """Median seconds of forward and explain in each layout for one model (see the module);
    ``rules``: a preset name, else ``epsilon-plus`` (the demo models: their default)."""
    graph = relgraph.load_architecture(model)
    clip = torch.randn((batch, *graph.input_shape), generator=torch.Generator().manual_seed(1))
    if rules is None:
        rules = None if model.endswith("-tiny") else "epsilon-plus"
    calls = {
        "forward": lambda: graph.forward(clip).output,
        "explain": lambda: relgraph.explain(graph, clip, rules=rules),
    }
    times: dict[tuple[str, bool], list[float]] = {}
    with torch.inference_mode(), reuse_freed():
        for index in range(rounds + 1):
            for kind, call in calls.items():
                order = (False, True) if index % 2 == 0 else (True, False)
                for channels_last in order:
                    graph.channels_last = channels_last
                    start = time.perf_counter()
                    call()
                    elapsed = time.perf_counter() - start
                    if index > 0:  # round 0 is the warm-up
                        times.setdefault((kind, channels_last), []).append(elapsed)
    graph.channels_last = None
    row = {"model": model, "batch": batch, "rounds": rounds, "rules": rules}
    for kind in calls:
        default = statistics.median(times[(kind, False)])
        last = statistics.median(times[(kind, True)])
        row[kind] = {"default_s": default, "channels_last_s": last, "ratio": last / default}
    row["relgraph_runs_channels_last"] = graph.runs_channels_last(clip)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rules", default=None, help="a preset (default: epsilon-plus)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the table here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"## Layout (float32, batch {args.batch}, {args.rounds} alternating rounds, "
        f"{torch.get_num_threads()} threads, medians)\n"
    )
    print(
        "| model | forward default (s) | forward channels-last (s) | ratio "
        "| explain default (s) | explain channels-last (s) | ratio | relgraph's choice |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        row = measure(model, args.batch, args.rounds, args.rules)
        rows.append(row)
        f, e = row["forward"], row["explain"]
        choice = "channels-last" if row["relgraph_runs_channels_last"] else "default"
        print(
            f"| {model} | {f['default_s']:.3f} | {f['channels_last_s']:.3f} | "
            f"{f['ratio']:.2f} | {e['default_s']:.3f} | {e['channels_last_s']:.3f} | "
            f"{e['ratio']:.2f} | {choice} |",
            flush=True,
        )
    if args.json:
        write_json(args.json, {"layout": rows})


if __name__ == "__main__":
    main()
