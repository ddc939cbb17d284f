"""Speed and memory of relgraph against the autograd-based way of computing the same rules.

Run ``python benchmarks/speed.py`` (CPU) or ``python benchmarks/speed.py --device cuda``.
Measures, on the full-size C3D (3×16×112×112, float32), medians over repeats after a
warm-up, each configuration in a fresh subprocess so that its peak memory is its own:

- the forward pass alone;
- ``relgraph.explain`` with ``deep-taylor-paper`` and ``epsilon-plus``;
- the same rules computed as hook-based libraries do (``lrp_autograd.py``: a modified
  forward per layer plus ``torch.autograd.grad``), checked to give the same relevance;
- captum's LRP with the rules it shares with relgraph (z⁺ as ``Alpha1_Beta0_Rule`` with
  the bias off, ε for the first layer and max pools), against relgraph with the same rules;
- ``relgraph.methods.discriminative`` (T = 16) against 17 single explanations one after another;
- ``relgraph.methods.discriminative`` ÷ one explanation for each ``reduce``, with the frozen-clip
  shortcut (``relgraph.methods.frozen``) on and off (``--only-frozen``: this table alone);
- peak memory: resident set size on CPU, ``torch.cuda.max_memory_allocated`` on CUDA;
- the memory modes (``--only-memory``: this table alone): time and peak memory of one
  explanation per ``cache_policy`` (default allocator and glibc's 1 MiB mmap threshold;
  ``--memory-bf16`` adds bfloat16) and of the discriminative pass per batch size
  (``--disc-batches``) and policy, the own peak set against 1.5 × (weights + activations the
  rules need); the definitions are printed with the table and in docs/benchmarks/memory.md.

Then a second table: time and peak memory against clip length T (8, 16, 32) and batch
size (1, 4, 17). Prints markdown tables and writes them as JSON (``--json``).

``--models c3d,r2plus1d-18,x3d-s`` (or ``all``: every shipped architecture; ``--only-models``:
this table alone) adds a table per model at its full input size, batch 1, float32,
``epsilon-plus``, batch norms canonized as ``explain`` does by default: the forward pass
(``Graph.forward``, the model as compiled, unfolded batch norms included), one explanation,
explain ÷ forward, the same ratio paired (forward and explanation in turns in one process,
the median of the rounds' ratios: steadier on a machine whose speed drifts), the autograd
baseline (``lrp_autograd.py`` on the same canonized graph, checked against ``explain``), the
discriminative method ÷ one explanation (``--disc-models``), the page faults per call and
peak RSS. Its workers keep freed memory for reuse (``relgraph.engine.hostmemory.reuse_freed``), so
that no pass is timed faulting pages in that an earlier one handed back. Weights are the
architectures' random initialisation (no checkpoints are needed for timing), except the
shipped demo models, which load their weights.
``--threads N`` sets torch's intra-op threads in every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- workers


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """The process's peak RSS: since ``_reset_peak_rss`` where Linux allows it (VmHWM), else
    since the process started (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Start the peak RSS afresh from the current RSS (Linux ≥ 4.0: ``clear_refs`` 5), so that
    building the graph does not count; ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _build(frames: int, device: str):
    """Full-size C3D for clips of ``frames`` frames (fc6 resized to fit when T ≠ 16)."""
    import torch

    import relgraph

    if frames == 16:
        graph = relgraph.load_architecture("c3d", device=device)
    else:
        text = (Path(relgraph.engine.graph.architecture_path("c3d"))).read_text()
        text = text.replace("shape: [3, 16, 112, 112]", f"shape: [3, {frames}, 112, 112]")
        text = text.replace("in_features: 8192, ", "")
        if frames < 16:  # pool5 sees a single frame: it pools space only
            text = text.replace(
                "{name: pool5, op: maxpool3d, kernel_size: 2, stride: 2,",
                "{name: pool5, op: maxpool3d, kernel_size: [1, 2, 2], stride: [1, 2, 2],",
            )
        graph = relgraph.architecture_from_yaml(text, file=f"c3d-T{frames}", device=device)
    torch.manual_seed(0)
    return graph


def _clip(batch: int, frames: int, device: str):
    import torch

    generator = torch.Generator().manual_seed(1)
    clip = torch.rand((batch, 3, frames, 112, 112), generator=generator) * 255 - 102
    return clip.to(device)


def _timed(run, repeats: int, device: str) -> tuple[object, list[float]]:
    """``run()`` ``repeats`` times after the caller's warm-up: its last result and the
    seconds of each call (the device synchronised around it)."""
    result, times = None, []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return result, times


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def worker(
    kind: str,
    device: str,
    batch: int,
    frames: int,
    repeats: int,
    cache: str = "weights",
    precision: str = "fp32",
    disc_batch: int | None = None,
    model: str | None = None,
    fresh_peak: bool = False,
) -> dict:
    """Time one configuration in this process and report its peak memory (``model``: a
    configuration of the per-model table, see ``model_worker``; ``fresh_peak``: the peak of
    the explanations alone, restarted after the graph is built)."""
    if model is not None:
        return model_worker(kind, model, device, repeats)
    import torch
    from relgraph.rules import Composite, Entry, Epsilon, Selector, ZPlus, preset

    import relgraph

    rss_runtime = _rss_bytes()  # the Python/torch runtime alone, before any weights

    sys.path.insert(0, str(HERE))
    from lrp_autograd import relevance_autograd

    torch.set_grad_enabled(kind.startswith("autograd") or kind.startswith("captum"))
    graph = _build(frames, device)
    graph.cache_policy = cache
    if precision == "bf16":
        graph.to(dtype=torch.bfloat16)
    baseline = _memory_baseline(graph, fresh_peak)
    clip = _clip(batch, frames, device)
    if precision == "bf16":
        clip = clip.to(torch.bfloat16)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def rules_of(name):
        return preset(name).resolve(graph)

    captum_like = Composite(
        [
            *preset("base").entries,
            Entry(Selector(ops=("conv*", "linear")), ZPlus(stabilizer="epsilon", epsilon=1e-9)),
            Entry(Selector(nodes=("first",)), Epsilon(epsilon=1e-9, bias=True)),
        ],
        name="captum-like",
    )

    if kind == "forward":

        def run():
            return graph.forward(clip).output

    elif kind.startswith("explain:"):
        name = kind.split(":", 1)[1]
        composite = captum_like if name == "captum-like" else preset(name)

        def run():
            return relgraph.explain(graph, clip, rules=composite)

    elif kind.startswith("autograd:"):
        node_rules = rules_of(kind.split(":", 1)[1])

        def run():
            return relevance_autograd(graph, clip, node_rules)

    elif kind == "captum":
        from captum.attr import LRP
        from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

        model = _torch_c3d(graph)

        def run():
            for name, module in model.named_children():
                if isinstance(module, torch.nn.Conv3d | torch.nn.Linear):
                    module.rule = EpsilonRule() if name == "conv1" else Alpha1_Beta0_Rule(True)
                elif isinstance(module, torch.nn.MaxPool3d):
                    module.rule = EpsilonRule()
            target = int(graph.forward(clip.detach()).output.argmax(1)[0])
            return LRP(model).attribute(clip.clone().requires_grad_(True), target=target)

    elif kind == "discriminative":

        def run():
            return relgraph.discriminative(
                graph, clip, rules="deep-taylor-paper", progress=False, batch_size=disc_batch
            )

    elif kind.startswith("discriminative:"):
        _, reduce, normalize, shortcut = kind.split(":")

        def run():
            return relgraph.discriminative(
                graph,
                clip,
                rules="deep-taylor-paper",
                reduce=reduce,
                normalize=normalize,
                frozen_shortcut=shortcut == "on",
                progress=False,
            )

    elif kind == "explain17":

        def run():
            frozen = [clip[:, :, t : t + 1].expand_as(clip).contiguous() for t in range(frames)]
            outputs = [relgraph.explain(graph, clip, rules="deep-taylor-paper")]
            for frozen_clip in frozen:
                outputs.append(relgraph.explain(graph, frozen_clip, rules="deep-taylor-paper"))
            return outputs

    else:
        raise SystemExit(f"unknown kind {kind}")

    result = run()  # warm-up (also fills per-graph caches such as W⁺)
    rss_before = _rss_bytes()
    result, times = _timed(run, repeats, device)
    report = {
        "kind": kind,
        "batch": batch,
        "frames": frames,
        "median_s": statistics.median(times),
        "times_s": times,
        "rss_before_bytes": rss_before,
        "rss_runtime_bytes": rss_runtime,
        "cache": cache,
        "precision": precision,
        "disc_batch": disc_batch,
        "peak_rss_bytes": _peak_rss_bytes(),
        "weights_bytes": sum(t.numel() * t.element_size() for t in graph.state_dict().values()),
        **baseline,
    }
    if device == "cuda":
        report["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    if kind.startswith("autograd:"):  # check the baseline against relgraph
        name = kind.split(":", 1)[1]
        with torch.no_grad():
            ours = relgraph.explain(graph, clip, rules=name)
        report["max_rel_diff_vs_relgraph"] = float((ours - result).abs().max() / result.abs().max())
    if kind == "captum":
        # captum multiplies by the output score: relgraph's ``logit`` seed
        ours = relgraph.explain(graph, clip, rules=captum_like, output_relevance="logit")
        result = result.detach()
        report["max_rel_diff_vs_relgraph"] = float((ours - result).abs().max() / result.abs().max())
    if kind.startswith("explain:"):
        from relgraph.engine.reverse import activations_needed

        name = kind.split(":", 1)[1]
        composite = captum_like if name == "captum-like" else preset(name)
        needed = activations_needed(graph, composite.resolve(graph))
        size = clip.element_size()
        shapes = [graph.shape_of(n) for n in needed]
        per_clip = sum(size * int(torch.tensor(shape).prod()) for shape in shapes)
        report["needed_activation_bytes"] = per_clip * batch
    return report


def _memory_baseline(graph, fresh_peak: bool) -> dict:
    """What the process holds before its first explanation, apart from the weights: the
    interpreter, torch, relgraph and the graph's structure (the memory the graph's build freed
    handed back first, ``relgraph.engine.hostmemory``); and the peak RSS restarted from here."""
    from relgraph.engine.hostmemory import release_freed

    release_freed()
    weights = sum(t.numel() * t.element_size() for t in graph.state_dict().values())
    rss = _rss_bytes()
    return {
        "rss_graph_bytes": rss,
        "rss_baseline_bytes": rss - weights,
        "peak_reset": fresh_peak and _reset_peak_rss(),
    }


def _torch_c3d(graph):
    """A plain torch.nn C3D with the graph's weights, for captum."""
    from collections import OrderedDict

    from torch import nn

    layers: dict[str, nn.Module] = {}
    for node in graph.order[1:]:
        op = graph.op(node)
        if op.type == "conv3d":
            layers[node] = nn.Conv3d(
                op.in_channels, op.out_channels, op.kernel_size, padding=op.padding
            )
        elif op.type == "linear":
            layers[node] = nn.Linear(op.in_features, op.out_features)
        elif op.type == "relu":
            layers[node] = nn.ReLU()
        elif op.type == "maxpool3d":
            layers[node] = nn.MaxPool3d(
                op.kernel_size, op.stride, op.padding, ceil_mode=op.ceil_mode
            )
        elif op.type == "dropout":
            layers[node] = nn.Dropout(op.p)

    class C3D(nn.Sequential):
        """captum has no rule for nn.Flatten: flatten in forward, as the public C3D code does."""

        def forward(self, x):
            for module in self:
                if isinstance(module, nn.Linear):
                    x = x.flatten(1)
                x = module(x)
            return x

    model = C3D(OrderedDict(layers))
    model.load_state_dict(graph.state_dict())
    return model.eval().to(graph.device)


# --------------------------------------------------------------------------- model zoo

#: the models of the per-model table by default (``--models``)
DEFAULT_MODELS = ("c3d", "r3d-18", "mc3-18", "r2plus1d-18", "s3d", "x3d-xs", "x3d-s")
#: the models whose discriminative ÷ explain the per-model table measures by default
DEFAULT_DISC_MODELS = ("r2plus1d-18", "x3d-s")
#: the rules of the per-model table (zennit's EpsilonPlus: every zoo model's default preset)
MODEL_RULES = "epsilon-plus"


def _build_model(model: str, device: str):
    """A model at its full input size: a shipped demo model with its weights, any other
    architecture with its random initialisation (seed 0)."""
    import relgraph
    from relgraph.models.demo import DEMO_MODELS, load_demo_model

    if model in DEMO_MODELS:
        return load_demo_model(model).to(device=device)
    return relgraph.load_architecture(model, device=device)


def model_worker(kind: str, model: str, device: str, repeats: int) -> dict:
    """Time one configuration of the per-model table in this process: ``forward``,
    ``explain``, ``autograd`` (checked against ``explain``) or ``discriminative``."""
    import torch

    import relgraph
    from relgraph.engine.hostmemory import reuse_freed

    sys.path.insert(0, str(HERE))
    from lrp_autograd import node_rules_for, relevance_autograd

    torch.set_grad_enabled(kind == "autograd")
    graph = _build_model(model, device)
    generator = torch.Generator().manual_seed(1)
    clip = torch.randn((1, *graph.input_shape), generator=generator).to(device)
    view, node_rules = node_rules_for(graph, MODEL_RULES)
    runs = {
        "forward": lambda: graph.forward(clip).output,
        "explain": lambda: relgraph.explain(graph, clip, rules=MODEL_RULES),
        "autograd": lambda: relevance_autograd(view, clip, node_rules),
        "discriminative": lambda: relgraph.discriminative(
            graph, clip, rules=MODEL_RULES, progress=False
        ),
    }
    if kind != "paired" and kind not in runs:
        raise SystemExit(f"unknown kind {kind} for a model")
    # Freed memory is kept for reuse (relgraph.engine.hostmemory.reuse_freed) in every kind: with
    # glibc's defaults a pass that frees its activations as it goes (the forward) hands its
    # pages back and faults them in again on the next call, and how often depends on what the
    # process did before: an r2plus1d-18 forward after explanations took tens of thousands of
    # page faults per call, alone in its process almost none (docs/design-notes/performance.md).
    with reuse_freed():
        if kind == "paired":
            return _paired(runs["forward"], runs["explain"], repeats, device, model)
        run = runs[kind]
        result = run()  # warm-up (also fills per-graph caches such as W⁺ and the folded view)
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        result, times = _timed(run, repeats, device)
    report = {
        "kind": kind,
        "model": model,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "page_faults_per_call": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        / repeats,
        "peak_rss_bytes": _peak_rss_bytes(),
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        report["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    if kind == "autograd":
        with torch.no_grad():
            ours = relgraph.explain(graph, clip, rules=MODEL_RULES)
        result = result.detach()
        report["max_rel_diff_vs_relgraph"] = float((ours - result).abs().max() / result.abs().max())
    return report


#: calls per block of the paired measurement (``_paired``)
PAIRED_BLOCK = 3


def _paired(forward, explain, rounds: int, device: str, model: str) -> dict:
    """Forward and explanation timed in turns in one process: ``rounds`` rounds, each a
    block of ``PAIRED_BLOCK`` forward passes then as many explanations, each block's median
    taken. A round's ratio compares the two at nearly the same moment, so a machine whose
    speed drifts over minutes (this project's build machine: up to 2× within an hour) moves
    both alike; the median of the rounds' ratios is reported beside the ratio of the
    separate processes' medians. The first round is a warm-up and is dropped."""
    import torch

    forward_s, explain_s, ratios = [], [], []
    for index in range(rounds + 1):
        block_forward = statistics.median(_timed(forward, PAIRED_BLOCK, device)[1])
        block_explain = statistics.median(_timed(explain, PAIRED_BLOCK, device)[1])
        if index == 0:
            continue
        forward_s.append(block_forward)
        explain_s.append(block_explain)
        ratios.append(block_explain / block_forward)
    return {
        "kind": "paired",
        "model": model,
        "median_s": statistics.median(explain_s),
        "forward_s": forward_s,
        "explain_s": explain_s,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "threads": torch.get_num_threads(),
    }


def _model_names(text: str) -> list[str]:
    from relgraph.engine.graph import shipped_architectures

    if text == "all":
        return shipped_architectures()
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(shipped_architectures()))
    if unknown:
        raise SystemExit(f"unknown models {unknown} (shipped: {shipped_architectures()})")
    return names


def _model_table(args) -> list[dict]:
    """One row per model: forward, explain, explain ÷ forward, the autograd baseline,
    discriminative ÷ explain (``--disc-models``) and peak RSS; each cell a fresh process."""
    models = _model_names(args.models)
    disc_models = set(_model_names(args.disc_models)) if args.disc_models else set()
    print(
        f"\n## Per model ({MODEL_RULES}, batch 1, float32, canonized; fresh process each, "
        f"freed memory kept for reuse; paired ratio: forward and explain in turns in one "
        f"process, median of {args.repeats} rounds of {PAIRED_BLOCK} each)\n"
    )
    print(
        "| model | input | forward (s) | explain (s) | explain ÷ forward | paired ratio "
        "| page faults per call (forward / explain) "
        "| autograd baseline (s) | baseline ÷ explain | discriminative ÷ explain "
        "| peak RSS explain (MiB) | check |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = []
    for model in models:
        import relgraph

        shape = "×".join(str(n) for n in relgraph.load_architecture(model).input_shape)
        reports = {
            kind: measure(kind, args, model=model)
            for kind in ("forward", "explain", "paired", "autograd")
        }
        if model in disc_models:
            reports["discriminative"] = measure(
                "discriminative", args, model=model, repeats=max(1, args.repeats // 3)
            )
        forward, explain = reports["forward"]["median_s"], reports["explain"]["median_s"]
        autograd = reports["autograd"]["median_s"]
        disc = reports.get("discriminative")
        row = {
            "model": model,
            "input": shape,
            "forward_s": forward,
            "explain_s": explain,
            "explain_over_forward": explain / forward,
            "paired_ratios": reports["paired"]["ratios"],
            "paired_explain_over_forward": reports["paired"]["median_ratio"],
            "page_faults_per_call": {
                kind: reports[kind]["page_faults_per_call"] for kind in ("forward", "explain")
            },
            "autograd_s": autograd,
            "autograd_over_explain": autograd / explain,
            "discriminative_s": disc["median_s"] if disc else None,
            "discriminative_over_explain": disc["median_s"] / explain if disc else None,
            "peak_rss_explain_bytes": _memory(reports["explain"], args.device),
            "max_rel_diff_vs_relgraph": reports["autograd"]["max_rel_diff_vs_relgraph"],
            "threads": reports["explain"]["threads"],
        }
        rows.append(row)
        faults = row["page_faults_per_call"]
        disc_text = f"{row['discriminative_over_explain']:.2f}" if disc else ""
        print(
            f"| {model} | {shape} | {forward:.3f} | {explain:.3f} | "
            f"{row['explain_over_forward']:.2f} | {row['paired_explain_over_forward']:.2f} | "
            f"{faults['forward']:,.0f} / {faults['explain']:,.0f} | {autograd:.3f} | "
            f"{row['autograd_over_explain']:.2f} | {disc_text} | "
            f"{_mib(row['peak_rss_explain_bytes'])} | "
            f"baseline vs explain: max rel. diff {row['max_rel_diff_vs_relgraph']:.1e} |",
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------- driver


def measure(
    kind: str,
    args,
    batch: int = 1,
    frames: int = 16,
    repeats: int | None = None,
    cache: str = "weights",
    precision: str = "fp32",
    disc_batch: int | None = None,
    model: str | None = None,
    env: dict | None = None,
    fresh_peak: bool = False,
) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--device",
        args.device,
        "--batch",
        str(batch),
        "--frames",
        str(frames),
        "--repeats",
        str(repeats or args.repeats),
        "--cache",
        cache,
        "--precision",
        precision,
    ]
    if disc_batch is not None:
        command += ["--disc-batch", str(disc_batch)]
    if model is not None:
        command += ["--model", model]
    if fresh_peak:
        command += ["--fresh-peak"]
    extra = env
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env.update(extra or {})
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(f"worker {kind} failed")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    label = f"{kind} {cache} {precision}" + (f" bs={disc_batch}" if disc_batch else "")
    if model is not None:
        label = f"{model} {kind}"
    seconds = report["median_s"]
    shape = "" if model is not None else f"B={batch:<2d} T={frames:<2d}"
    print(f"  {label:44s} {shape:10s} {seconds:8.3f} s", file=sys.stderr, flush=True)
    return report


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _memory(report: dict, device: str) -> float:
    return report["cuda_peak_bytes"] if device == "cuda" else report["peak_rss_bytes"]


def _main_table(args) -> tuple[dict, dict]:
    """The first table: every method on one clip; returns the reports and the ratios."""
    kinds = [
        "forward",
        "explain:deep-taylor-paper",
        "autograd:deep-taylor-paper",
        "explain:epsilon-plus",
        "autograd:epsilon-plus",
    ]
    if not args.skip_captum:
        kinds += ["explain:captum-like", "captum"]
    reports = {kind: measure(kind, args) for kind in kinds}
    reports["discriminative"] = measure("discriminative", args, repeats=max(1, args.repeats // 2))
    reports["explain17"] = measure("explain17", args, repeats=max(1, args.repeats // 2))

    forward = reports["forward"]["median_s"]
    names = {
        "forward": "forward pass",
        "explain:deep-taylor-paper": "relgraph explain, deep-taylor-paper",
        "autograd:deep-taylor-paper": "autograd baseline, deep-taylor-paper",
        "explain:epsilon-plus": "relgraph explain, epsilon-plus",
        "autograd:epsilon-plus": "autograd baseline, epsilon-plus",
        "explain:captum-like": "relgraph explain, captum's rules",
        "captum": "captum LRP, same rules",
        "discriminative": "relgraph discriminative (1 + 16 explanations)",
        "explain17": "17 single explanations, one after another",
    }
    print("| what | median time (s) | × forward | peak memory (MiB) | check |")
    print("|---|---:|---:|---:|---|")
    for kind, report in reports.items():
        check = ""
        if "max_rel_diff_vs_relgraph" in report:
            check = f"max rel. diff to relgraph {report['max_rel_diff_vs_relgraph']:.1e}"
        print(
            f"| {names[kind]} | {report['median_s']:.3f} | {report['median_s'] / forward:.2f} | "
            f"{_mib(_memory(report, args.device))} | {check} |"
        )
    dt = reports["explain:deep-taylor-paper"]
    ratios = {
        "explain_over_forward": dt["median_s"] / forward,
        "autograd_over_explain": reports["autograd:deep-taylor-paper"]["median_s"] / dt["median_s"],
        "discriminative_over_explain": reports["discriminative"]["median_s"] / dt["median_s"],
        "explain17_over_explain": reports["explain17"]["median_s"] / dt["median_s"],
    }
    print()
    print(f"- explain / forward: **{ratios['explain_over_forward']:.2f} ×** (target ≤ 3.0)")
    print(
        f"- autograd baseline / explain: **{ratios['autograd_over_explain']:.2f} ×** (target ≥ 1.5)"
    )
    print(
        f"- discriminative / one explanation: **{ratios['discriminative_over_explain']:.2f} ×** "
        f"(target ≤ 17.5; 17 singles: {ratios['explain17_over_explain']:.2f} ×)"
    )
    if args.device == "cpu":
        base = reports["forward"]["rss_before_bytes"]
        weights = dt["weights_bytes"]
        needed = dt["needed_activation_bytes"]
        peak_increase = dt["peak_rss_bytes"] - dt["rss_before_bytes"]
        print(
            f"- memory of one explanation: peak RSS {_mib(dt['peak_rss_bytes'])} MiB; "
            f"weights {_mib(weights)} MiB, activations the rules need {_mib(needed)} MiB; "
            f"RSS rise during the timed runs {_mib(peak_increase)} MiB "
            f"(process with weights loaded and warm: {_mib(dt['rss_before_bytes'])} MiB, "
            f"forward-only process {_mib(base)} MiB)"
        )
    return reports, ratios


#: glibc's setting that hands every freed block of 1 MiB or more straight back to the system
#: (it turns off the self-raising mmap threshold); the memory table's last explain rows
MMAP_THRESHOLD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def _memory_table(args) -> list[dict]:
    """Peak memory and time of one explanation per cache policy (and precision with
    ``--memory-bf16``), and of the discriminative pass per batch size and cache policy; each
    row a fresh process."""
    print("\n## Memory modes (deep-taylor-paper, one clip; each row a fresh process)\n")
    print(
        "peak: the process's peak RSS during the explanations (warm-up included), restarted "
        "after the graph is built (Linux `clear_refs`); baseline: the RSS before the first "
        "explanation less the weights (interpreter, torch, relgraph, graph structure; the "
        "build's freed memory handed back first); *own peak* = peak − baseline, i.e. the "
        "weights plus all the explanations add, set against 1.5 × (weights + activations the "
        "rules need: the inputs of every node whose rule reads its inputs and the outputs of "
        "those that read their output, `relgraph.engine.reverse.activations_needed`). "
        "CUDA: `max_memory_allocated`, no baseline.\n"
    )
    print(
        "| what | cache | precision | allocator | median time (s) | peak (MiB) | "
        "baseline (MiB) | own peak (MiB) | weights + needed activations (MiB) | "
        "own peak ÷ that |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    explain = "explain:deep-taylor-paper"
    configs = [
        (explain, "weights", "fp32", None, None),
        (explain, "none", "fp32", None, None),
    ]
    if args.device == "cpu":
        configs += [
            (explain, "weights", "fp32", None, MMAP_THRESHOLD_ENV),
            (explain, "none", "fp32", None, MMAP_THRESHOLD_ENV),
        ]
    if args.memory_bf16:
        configs += [(explain, "weights", "bf16", None, None), (explain, "none", "bf16", None, None)]
    configs += [
        ("discriminative", cache, "fp32", int(b), None)
        for b in args.disc_batches.split(",")
        for cache in ("weights", "none")
    ]
    rows = []
    times: dict[tuple, float] = {}
    for kind, cache, precision, disc_batch, env in configs:
        repeats = args.repeats if kind.startswith("explain") else max(1, args.repeats // 3)
        report = measure(
            kind,
            args,
            repeats=repeats,
            cache=cache,
            precision=precision,
            disc_batch=disc_batch,
            env=env,
            fresh_peak=True,
        )
        cuda = args.device == "cuda"
        baseline = 0 if cuda else report["rss_baseline_bytes"]
        own = _memory(report, args.device) - baseline
        base = report["weights_bytes"] + report.get("needed_activation_bytes", 0)
        what = "explain" if kind.startswith("explain") else f"discriminative, batch {disc_batch}"
        allocator = "" if cuda else ("glibc, mmap threshold 1 MiB" if env else "glibc default")
        known = "needed_activation_bytes" in report  # explain rows only
        ratio = f"{own / base:.2f}" if known else ""
        print(
            f"| {what} | {cache} | {precision} | {allocator} | {report['median_s']:.2f} | "
            f"{_mib(_memory(report, args.device))} | {_mib(baseline)} | {_mib(own)} | "
            f"{_mib(base) if known else ''} | {ratio} |",
            flush=True,
        )
        report["allocator"] = allocator
        report["own_peak_bytes"] = own
        rows.append(report)
        times[(what, precision, allocator, cache)] = report["median_s"]
    print()
    for (what, precision, allocator, cache), seconds in times.items():
        default = times.get((what, precision, allocator, "weights"))
        if cache == "none" and default:
            print(
                f"- time of the memory mode (`none`) ÷ default (`weights`), {what}, {precision}"
                f"{', ' + allocator if allocator else ''}: **{seconds / default:.2f} ×**"
            )
    return rows


#: the most discriminative ÷ one explanation may cost, per ``reduce``
FROZEN_TARGETS = {"first": 12.0, "same": 13.0, "mean": 15.0, "sum": 15.0}


def _frozen_table(args, explain: dict | None = None) -> list[dict]:
    """discriminative ÷ one explanation per ``reduce`` (default ``normalize="maxabs"``), the
    frozen-clip shortcut on and off, plus ``first``/``same`` with ``normalize="none"``, where
    the reverse pass follows only the wanted slice's receptive field."""
    if explain is None:
        explain = measure("explain:deep-taylor-paper", args)
    base = explain["median_s"]
    repeats = max(1, args.repeats // 5)
    rows = []
    configs = [(r, "maxabs", s) for r in FROZEN_TARGETS for s in ("on", "off")]
    configs += [("first", "none", "on"), ("same", "none", "on")]
    print("\n## discriminative ÷ one explanation, by reduce and frozen-clip shortcut\n")
    print(f"one explanation (deep-taylor-paper, B = 1): {base:.3f} s\n")
    print("| `reduce` | `normalize` | shortcut | time (s) | ÷ one explanation | target |")
    print("|---|---|---|---:|---:|---:|")
    for reduce, normalize, shortcut in configs:
        kind = f"discriminative:{reduce}:{normalize}:{shortcut}"
        report = measure(kind, args, repeats=repeats)
        ratio = report["median_s"] / base
        rows.append(
            {
                "reduce": reduce,
                "normalize": normalize,
                "shortcut": shortcut,
                "median_s": report["median_s"],
                "over_explain": ratio,
            }
        )
        target = f"≤ {FROZEN_TARGETS[reduce]:g}" if shortcut == "on" else ""
        print(
            f"| {reduce} | {normalize} | {shortcut} | {report['median_s']:.2f} | "
            f"{ratio:.2f} × | {target} |",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the tables here as JSON")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--only-scaling", action="store_true", help="the second table alone")
    parser.add_argument("--skip-captum", action="store_true")
    parser.add_argument(
        "--only-frozen", action="store_true", help="the discriminative-by-reduce table alone"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default="weights", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--disc-batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fresh-peak", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--memory-bf16", action="store_true", help="add bfloat16 rows to the memory table"
    )
    parser.add_argument("--only-memory", action="store_true", help="the memory-mode table alone")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--disc-batches", default="1,4,8", help="discriminative batch sizes of the memory table"
    )
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="per-model table: comma-separated architectures, or 'all' (default: %(default)s)",
    )
    parser.add_argument(
        "--disc-models",
        default=",".join(DEFAULT_DISC_MODELS),
        help="models whose discriminative ÷ explain is measured ('' for none)",
    )
    parser.add_argument("--skip-models", action="store_true", help="no per-model table")
    parser.add_argument("--only-models", action="store_true", help="the per-model table alone")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        report = worker(
            args.worker,
            args.device,
            args.batch,
            args.frames,
            args.repeats,
            cache=args.cache,
            precision=args.precision,
            disc_batch=args.disc_batch,
            model=args.model,
            fresh_peak=args.fresh_peak,
        )
        print(json.dumps(report))
        return

    import torch

    from relgraph.io.outputs import write_json

    cpu = platform.processor() or platform.machine()
    threads = args.threads or torch.get_num_threads()
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"
    if args.device == "cuda":
        machine = torch.cuda.get_device_name() + f", torch {torch.__version__}"
    what = "the model zoo" if args.only_models else "C3D 3×16×112×112 float32"
    print(f"# relgraph speed benchmark — {what} on {args.device} ({machine})\n")
    print("measuring (each in a fresh process):", file=sys.stderr)

    if args.only_models:
        models = _model_table(args)
        if args.json:
            write_json(args.json, {"machine": machine, "models": models})
        return
    if args.only_frozen:
        frozen = _frozen_table(args)
        if args.json:
            write_json(args.json, {"machine": machine, "frozen": frozen})
        return
    only = args.only_scaling or args.only_memory
    reports, ratios = ({}, {}) if only else _main_table(args)
    frozen = [] if only else _frozen_table(args, reports["explain:deep-taylor-paper"])
    memory = [] if args.skip_memory or args.only_scaling else _memory_table(args)
    models = [] if only or args.skip_models else _model_table(args)
    scaling = []
    if not args.skip_scaling and not args.only_memory:
        print("\n## How cost grows (relgraph explain, deep-taylor-paper)\n")
        print("| T | batch | forward (s) | explain (s) | explain / clip (s) | peak memory (MiB) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for frames in (8, 16, 32):
            for batch in (1, 4, 17):
                repeats = 1 if batch * frames > 64 else 2
                fwd = measure("forward", args, batch=batch, frames=frames, repeats=repeats)
                exp = measure(
                    "explain:deep-taylor-paper", args, batch=batch, frames=frames, repeats=repeats
                )
                row = {
                    "frames": frames,
                    "batch": batch,
                    "forward_s": fwd["median_s"],
                    "explain_s": exp["median_s"],
                    "peak_memory_bytes": _memory(exp, args.device),
                }
                scaling.append(row)
                print(
                    f"| {frames} | {batch} | {fwd['median_s']:.2f} | {exp['median_s']:.2f} | "
                    f"{exp['median_s'] / batch:.2f} | {_mib(row['peak_memory_bytes'])} |"
                )
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine,
                "device": args.device,
                "reports": reports,
                "ratios": ratios,
                "frozen": frozen,
                "scaling": scaling,
                "memory": memory,
                "models": models,
            },
        )


if __name__ == "__main__":
    main()
