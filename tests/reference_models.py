"""Independent references: the shipped architectures written as plain ``torch.nn`` modules.

``C3D`` follows the structure of the public PyTorch C3D code that the paper used (module
names ``conv1`` … ``fc8``, pool5 padded ``(0, 1, 1)``, a ``view`` to 8192 features, ReLU and
dropout after fc6 and fc7). ``ResNetTiny`` is ``architectures/resnet-tiny.yaml`` written by
hand. Both return every intermediate activation under the name the YAML gives that node, so
tests can compare the engine with them step by step.
"""

from __future__ import annotations

import torch
from torch import nn

#: C3D's convolutions in order, as in the public code and /work/shared/c3d.md
C3D_CONVS = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")


class C3D(nn.Module):
    """C3D as in the public PyTorch code, with every width a parameter.

    The defaults are the full-size network; ``channels`` (one per convolution), ``hidden``
    and ``flat`` shrink it to the shape of ``c3d-tiny``.
    """

    def __init__(
        self,
        num_classes: int = 101,
        channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512),
        hidden: int = 4096,
        flat: int = 8192,
    ) -> None:
        super().__init__()
        c1, c2, c3a, c3b, c4a, c4b, c5a, c5b = channels
        self.flat = flat
        self.conv1 = nn.Conv3d(3, c1, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.conv2 = nn.Conv3d(c1, c2, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool2 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv3a = nn.Conv3d(c2, c3a, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.conv3b = nn.Conv3d(c3a, c3b, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool3 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv4a = nn.Conv3d(c3b, c4a, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.conv4b = nn.Conv3d(c4a, c4b, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool4 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.conv5a = nn.Conv3d(c4b, c5a, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.conv5b = nn.Conv3d(c5a, c5b, kernel_size=(3, 3, 3), padding=(1, 1, 1))
        self.pool5 = nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 1, 1))
        self.fc6 = nn.Linear(flat, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(p=0.5)
        self.relu = nn.ReLU()

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every step of the public forward, keyed by the node names of ``c3d.yaml``."""
        steps = {"input": x}

        def step(name: str, value: torch.Tensor) -> torch.Tensor:
            steps[name] = value
            return value

        x = step("conv1", self.conv1(x))
        x = step("relu1", self.relu(x))
        x = step("pool1", self.pool1(x))
        x = step("conv2", self.conv2(x))
        x = step("relu2", self.relu(x))
        x = step("pool2", self.pool2(x))
        x = step("conv3a", self.conv3a(x))
        x = step("relu3a", self.relu(x))
        x = step("conv3b", self.conv3b(x))
        x = step("relu3b", self.relu(x))
        x = step("pool3", self.pool3(x))
        x = step("conv4a", self.conv4a(x))
        x = step("relu4a", self.relu(x))
        x = step("conv4b", self.conv4b(x))
        x = step("relu4b", self.relu(x))
        x = step("pool4", self.pool4(x))
        x = step("conv5a", self.conv5a(x))
        x = step("relu5a", self.relu(x))
        x = step("conv5b", self.conv5b(x))
        x = step("relu5b", self.relu(x))
        x = step("pool5", self.pool5(x))
        x = step("flatten", x.view(-1, self.flat))
        x = step("fc6", self.fc6(x))
        x = step("relu6", self.relu(x))
        x = step("drop6", self.dropout(x))
        x = step("fc7", self.fc7(x))
        x = step("relu7", self.relu(x))
        x = step("drop7", self.dropout(x))
        step("fc8", self.fc8(x))
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x)["fc8"]


def c3d_tiny_reference(num_classes: int = 4) -> C3D:
    """``C3D`` shaped like ``c3d-tiny`` with its default parameters (width 8, hidden 64,
    32×32 frames: pool5 leaves 32 channels × 1 × 2 × 2 = 128 features)."""
    return C3D(num_classes, channels=(8, 16, 32, 32, 32, 32, 32, 32), hidden=64, flat=128)


class ResNetTiny(nn.Module):
    """``architectures/resnet-tiny.yaml`` written by hand (width 4, 5 classes)."""

    def __init__(self, width: int = 4, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, width, 3, padding=1)
        self.stem_bn = nn.BatchNorm3d(width)
        self.res_conv1 = nn.Conv3d(width, width, 3, padding=1)
        self.res_conv2 = nn.Conv3d(width, width, 3, padding=1)
        self.branch_a = nn.Conv3d(width, width, 1)
        self.branch_b = nn.Conv3d(width, width, 3, padding=1)
        self.branch_b_pool = nn.AvgPool3d(3, stride=1, padding=1)
        self.pool = nn.MaxPool3d(2)
        self.gap = nn.AdaptiveAvgPool3d((1, 2, 2))
        # two branches of `width` channels, pooled to 1 × 2 × 2
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        steps = {"input": x}
        steps["stem"] = self.stem(x)
        steps["stem_bn"] = self.stem_bn(steps["stem"])
        steps["stem_relu"] = torch.relu(steps["stem_bn"])
        steps["res_conv1"] = self.res_conv1(steps["stem_relu"])
        steps["res_relu1"] = torch.relu(steps["res_conv1"])
        steps["res_conv2"] = self.res_conv2(steps["res_relu1"])
        steps["res_add"] = steps["res_conv2"] + steps["stem_relu"]
        steps["res_relu2"] = torch.relu(steps["res_add"])
        steps["branch_a"] = self.branch_a(steps["res_relu2"])
        steps["branch_b"] = self.branch_b(steps["res_relu2"])
        steps["branch_b_pool"] = self.branch_b_pool(steps["branch_b"])
        steps["join"] = torch.cat([steps["branch_a"], steps["branch_b_pool"]], dim=1)
        steps["join_relu"] = torch.relu(steps["join"])
        steps["pool"] = self.pool(steps["join_relu"])
        steps["gap"] = self.gap(steps["pool"])
        steps["flatten"] = torch.flatten(steps["gap"], 1)
        steps["fc"] = self.fc(steps["flatten"])
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x)["fc"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual − expected| / max |expected| (0 when both are zero)."""
    scale = expected.abs().max().item()
    difference = (actual - expected).abs().max().item()
    return difference / scale if scale > 0 else difference
