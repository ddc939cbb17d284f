"""Hand-written torch.nn references of the library video models relgraph ships.

torchvision and pytorchvideo cannot be installed next to torch 2.13, so these modules are
written here from the papers and the libraries' documented structure: module names and
nesting follow the libraries, so ``state_dict()`` has exactly their keys and shapes (checked
against ``tests/data/*.keys.tsv``), and a checkpoint of the library model loads into them
unchanged. They are independent of relgraph: plain ``torch.nn`` modules run by autograd-free
PyTorch, used as the reference forward pass.

- ``r3d_18``, ``mc3_18``, ``r2plus1d_18``: Tran et al. 2018, "A Closer Look at Spatiotemporal
  Convolutions for Action Recognition" (torchvision ``models.video.resnet``).
- ``s3d``: Xie et al. 2018, "Rethinking Spatiotemporal Feature Learning" (torchvision
  ``models.video.s3d``).
- ``x3d``: Feichtenhofer 2020, "X3D: Expanding Architectures for Efficient Video Recognition"
  (pytorchvideo ``models.x3d.create_x3d``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).parent / "data"


def read_keys(name: str) -> dict[str, tuple[int, ...]]:
    """A ``*.keys.tsv`` of tests/data as ``{key: shape}``."""
    keys = {}
    for line in (DATA / f"{name}.keys.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        keys[key] = tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())
    return keys


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and batch-norm statistic random values (not the init's 0 and 1).

    Weights are scaled so that activations keep a moderate size through deep nets.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(c, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.num_batches_tracked.fill_(7)
            elif isinstance(module, (nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * math.sqrt(2 / fan_in)
                )
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model


# --------------------------------------------------------------------------- VideoResNet


class ConvSimple(nn.Conv3d):
    """3×3×3 convolution (torchvision ``Conv3DSimple``)."""

    def __init__(self, cin: int, cout: int, mid: int | None = None, stride: int = 1) -> None:
        super().__init__(cin, cout, 3, stride=stride, padding=1, bias=False)

    @staticmethod
    def shortcut_stride(stride: int) -> tuple[int, int, int]:
        return (stride, stride, stride)


class ConvNoTemporal(nn.Conv3d):
    """1×3×3 convolution, strided in space only (torchvision ``Conv3DNoTemporal``)."""

    def __init__(self, cin: int, cout: int, mid: int | None = None, stride: int = 1) -> None:
        super().__init__(
            cin, cout, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )

    @staticmethod
    def shortcut_stride(stride: int) -> tuple[int, int, int]:
        return (1, stride, stride)


class ConvFactorised(nn.Sequential):
    """(2+1)D: 1×3×3 spatial conv to ``mid`` channels, BN, ReLU, 3×1×1 temporal conv."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(),
            nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
        )

    @staticmethod
    def shortcut_stride(stride: int) -> tuple[int, int, int]:
        return (stride, stride, stride)


class ResBlock(nn.Module):
    """Two convolutions and a residual add; a 1×1×1 conv + BN shortcut where the shape changes."""

    def __init__(self, conv: type, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        # R(2+1)D: the middle width matches the parameters of a full 3×3×3 convolution
        mid = (cin * planes * 27) // (cin * 9 + 3 * planes)
        self.conv1 = nn.Sequential(
            conv(cin, planes, mid, stride), nn.BatchNorm3d(planes), nn.ReLU()
        )
        self.conv2 = nn.Sequential(conv(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, planes, 1, stride=conv.shortcut_stride(stride), bias=False),
                nn.BatchNorm3d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


#: torchvision's stage widths
WIDTHS = (64, 128, 256, 512)


class VideoResNet18(nn.Module):
    """ResNet-18 for video: stem, four stages of two blocks, global average pool, linear.

    ``widths``: the four stages' channels (the stem ends with the first), torchvision's
    unless a test narrows them."""

    def __init__(
        self,
        convs: list[type],
        stem: nn.Sequential,
        num_classes: int = 400,
        widths: tuple[int, ...] = WIDTHS,
    ) -> None:
        super().__init__()
        self.stem = stem
        cin = widths[0]
        for index, (planes, stride, conv) in enumerate(zip(widths, (1, 2, 2, 2), convs), start=1):
            blocks = [ResBlock(conv, cin, planes, stride), ResBlock(conv, planes, planes, 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            cin = planes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def _stem_3d(width: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(3, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(),
    )


def r3d_18(num_classes: int = 400, widths: tuple[int, ...] = WIDTHS) -> VideoResNet18:
    return VideoResNet18([ConvSimple] * 4, _stem_3d(widths[0]), num_classes, widths)


def mc3_18(num_classes: int = 400, widths: tuple[int, ...] = WIDTHS) -> VideoResNet18:
    convs = [ConvSimple] + [ConvNoTemporal] * 3
    return VideoResNet18(convs, _stem_3d(widths[0]), num_classes, widths)


def r2plus1d_18(
    num_classes: int = 400, widths: tuple[int, ...] = WIDTHS, stem_mid: int = 45
) -> VideoResNet18:
    """``stem_mid``: the stem's middle width (torchvision's ``R2Plus1dStem``: 45)."""
    stem = nn.Sequential(
        nn.Conv3d(3, stem_mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
        nn.BatchNorm3d(stem_mid),
        nn.ReLU(),
        nn.Conv3d(stem_mid, widths[0], (3, 1, 1), 1, (1, 0, 0), bias=False),
        nn.BatchNorm3d(widths[0]),
        nn.ReLU(),
    )
    return VideoResNet18([ConvFactorised] * 4, stem, num_classes, widths)


class R2Plus1DTiny(nn.Module):
    """relgraph's own demo model ``architectures/r2plus1d-tiny.yaml`` (not a library model):
    R(2+1)D blocks of ``width``·(2, 4) channels in two stages after a 1×3×3 / 3×1×1 stem."""

    def __init__(self, width: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        mid = 3 * width * 27 // (27 + 3 * width)
        self.stem = nn.Sequential(
            nn.Conv3d(3, mid, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(),
            nn.Conv3d(mid, width, (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(),
        )
        self.layer1 = nn.Sequential(ResBlock(ConvFactorised, width, 2 * width, 2))
        self.layer2 = nn.Sequential(
            ResBlock(ConvFactorised, 2 * width, 4 * width, 2),
            ResBlock(ConvFactorised, 4 * width, 4 * width, 1),
        )
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.avgpool(x).flatten(1))


# --------------------------------------------------------------------------- S3D


def _cbr(cin: int, cout: int, kernel, stride=1, padding=0) -> nn.Sequential:
    """Conv3d (no bias), BatchNorm3d (eps 1e-3), ReLU: torchvision's Conv3dNormActivation."""
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm3d(cout, eps=1e-3, momentum=1e-3),
        nn.ReLU(),
    )


def _separable(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
    """A k×k×k convolution split into 1×k×k (space) and k×1×1 (time), each with BN and ReLU."""
    return nn.Sequential(
        _cbr(cin, cout, (1, k, k), (1, s, s), (0, p, p)),
        _cbr(cout, cout, (k, 1, 1), (s, 1, 1), (p, 0, 0)),
    )


class SepInception(nn.Module):
    """Four branches (1×1×1; 1×1×1 → separable 3; 1×1×1 → separable 3; max pool → 1×1×1)."""

    def __init__(self, cin: int, b0: int, b1m: int, b1: int, b2m: int, b2: int, b3: int):
        super().__init__()
        self.branch0 = _cbr(cin, b0, 1)
        self.branch1 = nn.Sequential(_cbr(cin, b1m, 1), _separable(b1m, b1, 3, 1, 1))
        self.branch2 = nn.Sequential(_cbr(cin, b2m, 1), _separable(b2m, b2, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), _cbr(cin, b3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0, self.branch1, self.branch2, self.branch3)
        return torch.cat([b(x) for b in branches], dim=1)


class S3D(nn.Module):
    """S3D: separable 3D inception net; classifier is a 1×1×1 conv, then a mean over T, H, W."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _separable(3, 64, 7, 2, 3),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            _cbr(64, 64, 1),
            _separable(64, 192, 3, 1, 1),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            SepInception(192, 64, 96, 128, 16, 32, 32),
            SepInception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool3d(3, 2, 1),
            SepInception(480, 192, 96, 208, 16, 48, 64),
            SepInception(512, 160, 112, 224, 24, 64, 64),
            SepInception(512, 128, 128, 256, 24, 64, 64),
            SepInception(512, 112, 144, 288, 32, 64, 64),
            SepInception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool3d(2, 2, 0),
            SepInception(832, 256, 160, 320, 32, 128, 128),
            SepInception(832, 384, 192, 384, 48, 128, 128),
        )
        self.avgpool = nn.AvgPool3d((2, 7, 7), stride=1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv3d(1024, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.avgpool(self.features(x)))
        return x.mean(dim=(2, 3, 4))


def s3d(num_classes: int = 400) -> S3D:
    return S3D(num_classes)


def s3d_small(num_classes: int, frames: int, size: int) -> S3D:
    """S3D with the head pool shrunk to the feature map below torchvision's input size (13
    frames, 209 pixels), as ``architectures/s3d.yaml`` does; at larger inputs ``s3d``."""
    model = s3d(num_classes=num_classes)
    t, s = (frames + 3) // 4 // 2, (size + 15) // 16 // 2
    if t < 2 or s < 7:
        model.avgpool = nn.AvgPool3d((min(2, t), min(7, s), min(7, s)), stride=1)
    return model


# --------------------------------------------------------------------------- X3D


def round_width(width: float, multiplier: float, divisor: int = 8) -> int:
    """Channels ``width·multiplier`` rounded to a multiple of ``divisor``, never 10 % below."""
    width *= multiplier
    rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * width:
        rounded += divisor
    return int(rounded)


class Swish(nn.Module):
    """x · sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class SqueezeExcitation(nn.Module):
    """Channel gate: mean over T, H, W → 1×1×1 conv → ReLU → 1×1×1 conv → sigmoid → scale x."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(channels, reduced, 1),
            nn.ReLU(),
            nn.Conv3d(reduced, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.block(x.mean(dim=(2, 3, 4), keepdim=True))


class Bottleneck(nn.Module):
    """1×1×1 expand, depthwise 3×3×3 (+ SE on every other block), swish, 1×1×1 project."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(cin, inner, 1, bias=False)
        self.norm_a = nn.BatchNorm3d(inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(inner, inner, 3, (1, stride, stride), 1, groups=inner, bias=False)
        gate = SqueezeExcitation(inner, round_width(inner, 0.0625)) if se else nn.Identity()
        self.norm_b = nn.Sequential(nn.BatchNorm3d(inner), gate)
        self.act_b = Swish()
        self.conv_c = nn.Conv3d(inner, cout, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class X3DBlock(nn.Module):
    """Residual block; the shortcut is a strided 1×1×1 conv in a stage's first block, with a
    batch norm only where the channel count changes (pytorchvideo's ``create_res_block``)."""

    def __init__(self, cin: int, inner: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        if cin != cout or stride != 1:
            self.branch1_conv = nn.Conv3d(cin, cout, 1, (1, stride, stride), bias=False)
        else:
            self.branch1_conv = None
        self.branch1_norm = nn.BatchNorm3d(cout) if cin != cout else None
        self.branch2 = Bottleneck(cin, inner, cout, stride, se)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(x)
        if self.branch1_norm is not None:
            shortcut = self.branch1_norm(shortcut)
        return self.activation(shortcut + self.branch2(x))


class X3DStem(nn.Module):
    def __init__(self, cout: int) -> None:
        super().__init__()
        self.conv = nn.Module()
        # pytorchvideo's names: conv_t is the 1×3×3 (spatial) conv, conv_xy the 5×1×1 depthwise
        self.conv.conv_t = nn.Conv3d(3, cout, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False)
        self.conv.conv_xy = nn.Conv3d(cout, cout, (5, 1, 1), 1, (2, 0, 0), groups=cout, bias=False)
        self.norm = nn.BatchNorm3d(cout)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv.conv_xy(self.conv.conv_t(x))))


class X3DStage(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class X3DHead(nn.Module):
    """Projected pool (1×1×1 conv, BN, ReLU, average pool, 1×1×1 conv, ReLU), linear, softmax.

    The softmax is applied in eval mode only and not at all when ``return_logits`` is set.
    """

    def __init__(self, cin: int, inner: int, cout: int, num_classes: int, pool) -> None:
        super().__init__()
        self.pool = nn.Module()
        self.pool.pre_conv = nn.Conv3d(cin, inner, 1, bias=False)
        self.pool.pre_norm = nn.BatchNorm3d(inner)
        self.pool.pre_act = nn.ReLU()
        self.pool.pool = nn.AvgPool3d(pool, stride=1)
        self.pool.post_conv = nn.Conv3d(inner, cout, 1, bias=False)
        self.pool.post_act = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.proj = nn.Linear(cout, num_classes)
        self.activation = nn.Softmax(dim=1)
        self.output_pool = nn.AdaptiveAvgPool3d(1)
        self.return_logits = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pool
        x = p.pre_act(p.pre_norm(p.pre_conv(x)))
        x = p.post_act(p.post_conv(p.pool(x)))
        x = self.dropout(x)
        x = self.proj(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        if not self.training and not self.return_logits:
            x = self.activation(x)
        x = self.output_pool(x)
        return x.view(x.shape[0], -1)


class X3D(nn.Module):
    """X3D (pytorchvideo ``create_x3d``): ``blocks`` = stem, four stages, head."""

    def __init__(
        self,
        frames: int = 13,
        crop: int = 160,
        depth_factor: float = 2.2,
        num_classes: int = 400,
        return_logits: bool = False,
    ) -> None:
        super().__init__()
        width_factor, bottleneck_factor = 2.0, 2.25
        stem = round_width(12, width_factor)
        blocks: list[nn.Module] = [X3DStem(stem)]
        cin = stem
        for index, depth in enumerate((1, 2, 5, 3)):
            cout = round_width(stem, 2**index)
            inner = int(bottleneck_factor * cout)
            repeats = int(math.ceil(depth_factor * depth))
            stage = [
                X3DBlock(cin if b == 0 else cout, inner, cout, 2 if b == 0 else 1, b % 2 == 0)
                for b in range(repeats)
            ]
            blocks.append(X3DStage(stage))
            cin = cout
        side = int(math.ceil(crop / 32))
        blocks.append(
            X3DHead(cin, int(cin * bottleneck_factor), 2048, num_classes, (frames, side, side))
        )
        self.blocks = nn.ModuleList(blocks)
        self.blocks[-1].return_logits = return_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


#: the published settings (frames, crop, depth factor)
X3D_SETTINGS = {
    "xs": (4, 160, 2.2),
    "s": (13, 160, 2.2),
    "m": (16, 224, 2.2),
    "l": (16, 312, 5.0),
}


def calm_branches(model: X3D, factor: float = 0.25) -> X3D:
    """Scale each residual branch's last batch-norm γ by ``factor``.

    Randomised residual branches double the activations block after block: X3D-L's 55
    blocks reach 1e4, where float32 rounding alone is 1e-4 of the output. Trained nets keep
    the branches small (zero-init of the last BN's γ): so does this."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("branch2.norm_c"):
                module.weight.mul_(factor)
    return model


def x3d(size: str, num_classes: int = 400, return_logits: bool = False) -> X3D:
    frames, crop, depth = X3D_SETTINGS[size]
    return X3D(frames, crop, depth, num_classes, return_logits)


# --------------------------------------------------------------------------- loading


def saved_and_loaded(
    model: nn.Module,
    name: str,
    tmp_path: Path,
    dtype: torch.dtype,
    frames: int,
    size: int,
    fmt: str = "pth",
    num_classes: int = 400,
):
    """``model`` in ``dtype``, its state dict saved as ``fmt`` (``pth``: ``torch.save``;
    ``safetensors``) with ``num_batches_tracked``, and relgraph's shipped ``name`` at that
    input and class count loaded from the file. Returns ``(model, graph)``.

    The one function here that uses relgraph: the tests' common way from a reference to the
    graph it is compared with."""
    import relgraph

    model = model.to(dtype)
    state = model.state_dict()
    assert any(k.endswith("num_batches_tracked") for k in state)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
    graph = relgraph.load_architecture(
        name, init="none", dtype=dtype, frames=frames, size=size, num_classes=num_classes
    )
    graph.load_weights(path)
    return model, graph
