"""The memory preflight's estimate against the measured peak: prints a table.

Each configuration runs ``relgraph.explain`` in a process of its own on a four-layer 1×1×1
convolution model and reports the growth of the process's peak resident memory
(``ru_maxrss`` after the explanation minus before) beside
``relgraph.engine.memory.estimate_peak``. The estimate is meant to be an upper bound.

Usage::

    python benchmarks/memory_preflight.py [--size 56] [--channels 256] [--batches 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ARCHITECTURE = """\
name: wide
input: {{name: input, shape: [3, 16, {size}, {size}]}}
nodes:
  - {{name: conv1, op: conv3d, out_channels: {channels}, kernel_size: 1}}
  - {{name: relu1, op: relu}}
  - {{name: conv2, op: conv3d, out_channels: {channels}, kernel_size: 1}}
  - {{name: relu2, op: relu}}
  - {{name: conv3, op: conv3d, out_channels: {channels}, kernel_size: 1}}
  - {{name: relu3, op: relu}}
  - {{name: conv4, op: conv3d, out_channels: {channels}, kernel_size: 1}}
  - {{name: pool, op: adaptive_avgpool3d, output_size: 1}}
  - {{name: flatten, op: flatten}}
  - {{name: fc, op: linear, out_features: 4}}
output: fc
rules: deep-taylor-paper
preprocess: hara
"""

CHILD = """
import json, resource, sys
import torch
import relgraph
from relgraph.engine.canonize import canonical
from relgraph.engine.memory import estimate_peak
from relgraph.engine.reverse import activations_needed
from relgraph.rules import as_composite

path, policy, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
graph = relgraph.load_architecture(path)
graph.cache_policy = policy
x = torch.rand(batch, *graph.input_shape)
explained = canonical(graph, None)
rules = as_composite(None, explained).resolve(explained)
estimate = estimate_peak(explained, batch, activations_needed(explained, rules))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
relgraph.explain(graph, x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"estimate": estimate.total, "measured": after - before}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=56, help="frame height and width (56)")
    parser.add_argument("--channels", type=int, default=256, help="channels per layer (256)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "wide.yaml"
        path.write_text(ARCHITECTURE.format(size=args.size, channels=args.channels))
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        print(f"input 3x16x{args.size}x{args.size}, four 1x1x1 convolutions of {args.channels}")
        print("| cache policy | batch | estimate | measured peak increase | measured / estimate |")
        print("|---|---|---|---|---|")
        for policy in ("weights", "none"):
            for batch in args.batches:
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), policy, str(batch)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                found = json.loads(done.stdout.strip().splitlines()[-1])
                estimate, measured = found["estimate"], found["measured"]
                print(
                    f"| {policy} | {batch} | {estimate / 1e6:.0f} MB | {measured / 1e6:.0f} MB "
                    f"| {measured / estimate:.2f} |"
                )


if __name__ == "__main__":
    main()
