"""Cross-check: relgraph's region perturbation and AOPC equal Quantus's on a 2-D case.

Quantus (``pip install -e .[bench]``; it pulls pandas, scipy, scikit-learn, scikit-image
and opencv, too heavy for the test extras) refuses 5-D video, so the check runs on images:
a small torch image CNN, random maps without ties, patches of ``--patch`` pixels replaced
by 0 (Quantus's ``perturb_baseline=0.0``, relgraph's ``mean`` with mean 0), one patch
per step, MoRF. An image is a clip of one frame: relgraph sees ``(B, C, 1, H, W)`` and cubes
``(1, p, p)``.

Quantus's ``RegionPerturbation`` returns, per image, ``f(x⁰) − f(xᵏ)`` for k = 1..K;
relgraph's curve has f(xᵏ) for k = 0..K, so the two must agree point by point, and
relgraph's AOPC, the mean over k = 0..K, is Quantus's curve summed over K + 1.

Run::

    python benchmarks/quantus_check.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from relgraph.evaluation import metrics as ev


def image_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 5),
    ).eval()


def compare(images: int = 8, patch: int = 4, size: int = 16, softmax: bool = True) -> dict:
    import quantus

    model = image_model()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(images, 3, size, size, generator=generator)
    maps = torch.rand(images, 1, size, size, generator=generator)  # no ties
    with torch.no_grad():
        y = model(x).argmax(1)
    regions = (size // patch) ** 2

    metric = quantus.RegionPerturbation(
        patch_size=patch,
        regions_evaluation=regions,
        perturb_baseline=0.0,
        order="morf",
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    theirs = np.asarray(
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.numpy(),
            device="cpu",
            softmax=softmax,
            channel_first=True,
        )
    )

    def video_model(clips: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(clips[:, :, 0])

    curves = ev.region_perturbation(
        video_model,
        x[:, :, None],
        maps,  # (B, 1, H, W): one frame
        y,
        cube=(1, patch, patch),
        order="morf",
        replace="mean",
        mean=torch.zeros(3),
        steps=regions,
    )
    ours = curves.probability if softmax else curves.logit
    drops = (ours[:, :1] - ours[:, 1:]).numpy()
    aopc_ours = ev.aopc(ours).numpy()
    aopc_theirs = theirs.sum(axis=1) / (regions + 1)
    return {
        "max_curve_difference": float(np.abs(drops - theirs).max()),
        "max_aopc_difference": float(np.abs(aopc_ours - aopc_theirs).max()),
        "aopc": aopc_ours.tolist(),
        "quantus": quantus.__version__,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--patch", type=int, default=4)
    args = parser.parse_args(argv)
    for softmax in (True, False):
        found = compare(args.images, args.patch, softmax=softmax)
        print(
            f"quantus {found['quantus']}, {'probability' if softmax else 'logit'}: largest "
            f"difference per step {found['max_curve_difference']:.2e}, in AOPC "
            f"{found['max_aopc_difference']:.2e}"
        )


if __name__ == "__main__":
    main()
