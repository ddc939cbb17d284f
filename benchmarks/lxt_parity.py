"""relgraph's AttnLRP and CP-LRP against LXT itself, on VideoMAE and ViViT.

LXT 2.1 (Achtibat et al. 2024, ``lxt.efficient``) patches transformers' modules so that
gradient × input is the AttnLRP (or CP-LRP) relevance. It imports only beside transformers
4.x, and relgraph's tests run transformers 5, so this script runs in two interpreters:

- **the LXT side** (``--lxt-side FOLDER``, run by the LXT interpreter): builds each model
  from a small configuration with random weights (layer norms, biases and embeddings moved
  off their initial values), writes it with ``save_pretrained`` (transformers 4's key layout),
  patches it with LXT's own functions (``layer_norm_forward`` on every ``nn.LayerNorm``,
  ``non_linear_forward`` on the GELU modules, ``patch_attention`` /
  ``patch_cp_attention`` on the modeling module's attention functions, ``sdpa`` attention)
  and writes the input, the target and LXT's relevance in float64;
- **the relgraph side** (the default, run by relgraph's interpreter): starts the LXT side,
  loads each written folder with ``relgraph.load_pretrained``, explains the same input with
  the same preset and target, and prints the largest difference relative to LXT's largest
  relevance.

Set up the LXT interpreter once (torchvision is not needed: ``lxt.efficient`` imports it for
its ViT map only, so the LXT side installs a stand-in before importing LXT)::

    python -m venv lxt-venv
    lxt-venv/bin/pip install torch==2.13.0 "transformers<5" safetensors
    lxt-venv/bin/pip install --no-deps lxt==2.1 zennit

Run::

    python benchmarks/lxt_parity.py --lxt-python lxt-venv/bin/python

TimeSformer is not compared: its attention is written inline in its self-attention module
(no ``ALL_ATTENTION_FUNCTIONS`` to patch), so LXT has no patch point for it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Run as a script, this file's folder comes first on the path; benchmarks/transformers.py
# would shadow the transformers library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

#: (case, family, configuration) compared; sizes small enough for seconds on a CPU
CASES = [
    ("videomae, mean pooling", "videomae", {"use_mean_pooling": True}),
    ("videomae, first token", "videomae", {"use_mean_pooling": False}),
    ("vivit", "vivit", {}),
]
PRESETS = ["attnlrp", "cp-lrp"]
SIZE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_frames": 4,
    "image_size": 16,
    "num_labels": 5,
}


def _lxt_side(out: Path, seed: int) -> None:
    """Build, save and explain every case with LXT (the LXT interpreter runs this)."""
    import importlib.machinery
    import types

    # lxt.efficient.models imports torchvision's ViT for its own ViT map, unused here
    stand_in = {}
    for name in ("torchvision", "torchvision.models", "torchvision.models.vision_transformer"):
        stand_in[name] = types.ModuleType(name)
        stand_in[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    stand_in["torchvision.models.vision_transformer"].nn = torch.nn
    sys.modules.update(stand_in)

    import transformers
    from lxt.efficient import patches
    from transformers import activations
    from transformers.models.videomae import modeling_videomae
    from transformers.models.vivit import modeling_vivit

    modules = {"videomae": modeling_videomae, "vivit": modeling_vivit}
    gelus = [
        getattr(activations, n)
        for n in ("GELUActivation", "NewGELUActivation", "FastGELUActivation", "PytorchGELUTanh")
        if hasattr(activations, n)
    ]
    report = {"lxt": _version("lxt"), "transformers": transformers.__version__, "cases": []}
    originals = {}
    for index, (case, family, extra) in enumerate(CASES):
        torch.manual_seed(seed + index)
        if family == "videomae":
            config = transformers.VideoMAEConfig(
                **SIZE, patch_size=8, tubelet_size=2, attn_implementation="sdpa", **extra
            )
            model_class = transformers.VideoMAEForVideoClassification
        else:
            config = transformers.VivitConfig(
                **SIZE, tubelet_size=[2, 8, 8], attn_implementation="sdpa", **extra
            )
            model_class = transformers.VivitForVideoClassification
        model = model_class(config).double().eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "norm" in name or "token" in name or "embed" in name:
                    p.add_(0.1 * torch.randn_like(p))
        folder = out / f"case{index}"
        model.save_pretrained(folder, safe_serialization=True)
        x = torch.randn(1, SIZE["num_frames"], 3, SIZE["image_size"], SIZE["image_size"])
        x = x.double()
        target = int(model(pixel_values=x).logits.argmax())
        results = {}
        for preset in PRESETS:
            # a fresh interpreter state per preset: restore what the other preset patched
            for module in modules.values():
                if module in originals:
                    # a copy: patch_cp_attention rewrites the dict in place
                    module.eager_attention_forward = originals[module][0]
                    module.ALL_ATTENTION_FUNCTIONS = dict(originals[module][1])
                else:
                    originals[module] = (
                        module.eager_attention_forward,
                        dict(module.ALL_ATTENTION_FUNCTIONS),
                    )
            if preset == "attnlrp":
                patches.patch_attention(modules[family])
            else:
                patches.patch_cp_attention(modules[family])
            torch.nn.LayerNorm.forward = patches.layer_norm_forward
            for gelu in gelus:
                if not hasattr(gelu, "original_forward"):
                    patches.patch_method(patches.non_linear_forward, gelu, keep_original=True)
            xg = x.clone().requires_grad_(True)
            logits = model(pixel_values=xg).logits
            logits[0, target].backward()
            relevance = (xg * xg.grad).detach()
            results[preset] = relevance
        torch.save({"x": x, "target": target, "relevance": results}, folder / "lxt-relevance.pt")
        report["cases"].append({"case": case, "folder": str(folder)})
    (out / "report.json").write_text(json.dumps(report))


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lxt-python", help="the interpreter that has LXT and transformers 4")
    parser.add_argument("--lxt-side", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.lxt_side is not None:
        _lxt_side(args.lxt_side, args.seed)
        return 0
    if not args.lxt_python:
        parser.error("--lxt-python is required")

    import relgraph

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [args.lxt_python, __file__, "--lxt-side", tmp, "--seed", str(args.seed)],
            check=True,
        )
        report = json.loads((Path(tmp) / "report.json").read_text())
        print(
            f"LXT {report['lxt']} (transformers {report['transformers']}) against relgraph "
            f"{relgraph.__version__}, float64, input relevance of the predicted logit\n"
        )
        print("| model | preset | max abs. difference ÷ LXT's largest | sums (LXT, relgraph) |")
        print("|---|---|---:|---|")
        for case in report["cases"]:
            folder = Path(case["folder"])
            saved = torch.load(folder / "lxt-relevance.pt", weights_only=True)
            graph = relgraph.load_pretrained(folder, dtype=torch.float64)
            x = saved["x"].permute(0, 2, 1, 3, 4).contiguous()  # (B, T, C, ...) -> (B, C, T, ...)
            for preset, lxt in saved["relevance"].items():
                lxt = lxt.permute(0, 2, 1, 3, 4)
                ours = relgraph.explain(graph, x, target=saved["target"], rules=preset)
                diff = float((ours - lxt).abs().max() / lxt.abs().max())
                print(
                    f"| {case['case']} | `{preset}` | {diff:.1e} | "
                    f"{float(lxt.sum()):.6g}, {float(ours.sum()):.6g} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
