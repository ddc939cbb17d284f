"""Throughput of ``relgraph dataset explain``: clips per second with 1 and 2 processes, and
per motion method (``--methods frozen decomposed``).

Writes N synthetic videos (``relgraph.datasets.synthetic``, a folder per class), then explains them
with the shipped demo model (c3d-tiny), once in one process and once with
``torchrun --nproc-per-node 2`` (gloo over 127.0.0.1), each into a fresh store, and prints
clips per second and where the time goes (summed over ranks): decoding (in background
threads), waiting for decoded data, explaining, writing results, figures, probing the videos'
lengths, and start-up (imports, model, process group). The 1-process row is the baseline.

Run::

    python benchmarks/dataset.py --videos 48 [--frames 16 48] [--figures none|summary]
        [--clip-batch 4] [--threads N] [--processes 1 2] [--methods frozen decomposed]
        [--json dataset.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relgraph.datasets.synthetic import write_video_folders
from relgraph.io.outputs import write_json
from relgraph.models.demo import DEMO_LABELS, DEMO_WEIGHTS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(
    processes: int, source: Path, store: Path, args, threads: int, method: str = "frozen"
) -> dict:
    stats = store.with_suffix(".json")
    command = [
        "-m",
        "relgraph",
        "dataset",
        "explain",
        str(source),
        "--arch",
        "c3d-tiny",
        "--weights",
        str(DEMO_WEIGHTS),
        "--labels",
        str(DEMO_LABELS),
        "--out",
        str(store),
        "--figures",
        args.figures,
        "--clips",
        args.clips,
        "--clip-batch",
        str(args.clip_batch),
        "--stats",
        str(stats),
        "--method",
        method,
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    if processes == 1:
        argv = [sys.executable, *command]
    else:
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={processes}",
            "--nnodes=1",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port()}",
            *command,
        ]
    clock = time.perf_counter()
    subprocess.run(argv, check=True, env=env)
    total = time.perf_counter() - clock
    result = json.loads(stats.read_text())
    result["process_wall_s"] = total
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--frames", type=int, nargs=2, default=(16, 48), metavar=("MIN", "MAX"))
    parser.add_argument("--clips", default="first")
    parser.add_argument("--figures", default="none", choices=("none", "summary", "all"))
    parser.add_argument("--clip-batch", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0: cores / procs)"
    )
    parser.add_argument("--processes", type=int, nargs="+", default=(1, 2))
    parser.add_argument(
        "--methods", nargs="+", default=("frozen",), help="motion methods (default frozen)"
    )
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "videos"
        write_video_folders(source, args.videos, seed=0, frames=tuple(args.frames))
        rows = []
        for method in args.methods:
            for processes in args.processes:
                threads = args.threads or max(1, cores // processes)
                store = Path(tmp) / f"store-{method}-{processes}"
                stats = run(processes, source, store, args, threads, method)
                stats["processes"] = processes
                stats["threads"] = threads
                stats["method"] = method
                rows.append(stats)

    print(
        f"{args.videos} synthetic videos ({args.frames[0]}-{args.frames[1]} frames, 32x32), "
        f"c3d-tiny demo model, --clips {args.clips}, --figures {args.figures}, "
        f"--clip-batch {args.clip_batch}; {cores} cores"
    )
    print()
    print(
        "| method | processes | threads each | clips | wall (s) | clips/s | speed-up | "
        "explain (s) | decode (s) | wait for data (s) | write (s) | figures (s) | probe (s) | "
        "start-up (s) |"
    )
    print("|---" + "|---:" * 13 + "|")
    base = rows[0]["clips"] / rows[0]["wall_s"]
    for r in rows:
        rate = r["clips"] / r["wall_s"]
        print(
            f"| {r['method']} | {r['processes']} | {r['threads']} | {r['clips']} | "
            f"{r['wall_s']:.1f} | "
            f"{rate:.2f} | {rate / base:.2f}x | {r['explain_s']:.1f} | {r['decode_s']:.1f} | "
            f"{r['wait_s']:.1f} | {r['write_s']:.1f} | {r['figures_s']:.1f} | "
            f"{r['probe_s']:.1f} | {r['process_wall_s'] - r['wall_s']:.1f} |"
        )
    print()
    print(
        "wall: the run in the process(es), start-up excluded; explain/decode/write: summed "
        "over ranks; decode runs in background threads (it overlaps explain), wait is the "
        "time the model waited for decoded videos; speed-up is against the first row."
    )
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
