"""compressor's small registered architectures, sized for tests, benchmarks and the demo on a CPU.

Every factory takes ``num_classes`` and ``in_channels`` and works on any input of at least
8x8 pixels (global average pooling before the classifier), e.g. MNIST 1x28x28 and CIFAR 3x32x32:

* ``resnet_cifar``: the CIFAR ResNet of He et al. (basic blocks, three stages, depth 6n+2);
* ``mobilenet_v1``: MobileNetV1 for 32x32 inputs (depthwise separable convolutions), the
  network EagleEye reports on;
* ``vgg_small``: a small VGG (conv-BN-ReLU stacks and max pooling) ending in flatten -> linear.

All of them trace with torch.fx and use no in-place operations, so the channel graph sees
every residual add, depthwise convolution and flatten.

>>> from compressor.models import build_model
>>> m = build_model("resnet_cifar", num_classes=10, in_channels=1, depth=8, width=16)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compressor.errors import UsageError
from compressor.models.base import register_model


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_common(name: str, num_classes: int, in_channels: int) -> None:
    if int(num_classes) < 1:
        raise UsageError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if int(in_channels) < 1:
        raise UsageError(f"{name}: in_channels must be >= 1, got {in_channels}")


# --------------------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNetCifar(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 20, width: int = 16) -> None:
        super().__init__()
        _check_common("resnet_cifar", num_classes, in_channels)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UsageError(
                f"resnet_cifar: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), got {depth}"
            )
        if width < 1:
            raise UsageError(f"resnet_cifar: width must be >= 1, got {width}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        planes = width
        stages = []
        for i, w in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes, w, stride=2 if (i > 0 and j == 0) else 1))
                planes = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("resnet_cifar")
def resnet_cifar(
    num_classes: int = 10, in_channels: int = 3, depth: int = 20, width: int = 16
) -> ResNetCifar:
    """CIFAR-style ResNet (He et al. 2016, section 4.2): depth 6n+2, stage widths w, 2w, 4w."""
    return ResNetCifar(num_classes=num_classes, in_channels=in_channels, depth=depth, width=width)


# ------------------------------------------------------------------------------------------ MobileNet
class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.pw = nn.Conv2d(in_planes, planes, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.dw(x)))
        return self.relu2(self.bn2(self.pw(x)))


# (out channels, stride) of the 13 depthwise separable blocks; CIFAR variant (stem stride 1).
MOBILENET_V1_CFG: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, blocks: int = 13
    ) -> None:
        super().__init__()
        _check_common("mobilenet_v1", num_classes, in_channels)
        if not 0.0 < width_mult <= 4.0:
            raise UsageError(f"mobilenet_v1: width_mult must be in (0, 4], got {width_mult}")
        if not 1 <= blocks <= len(MOBILENET_V1_CFG):
            raise UsageError(f"mobilenet_v1: blocks must be in 1..{len(MOBILENET_V1_CFG)}, got {blocks}")

        def w(c: int) -> int:
            return max(1, int(round(c * width_mult)))

        stem = w(32)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        layers = []
        planes = stem
        for c, s in MOBILENET_V1_CFG[:blocks]:
            layers.append(DepthwiseSeparable(planes, w(c), s))
            planes = w(c)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("mobilenet_v1")
def mobilenet_v1(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, blocks: int = 13
) -> MobileNetV1:
    """MobileNetV1 (Howard et al. 2017) for small inputs; ``blocks`` < 13 truncates it for tests."""
    return MobileNetV1(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult, blocks=blocks)


# ------------------------------------------------------------------------------------------------ VGG
class VGGSmall(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, pooled: int = 2) -> None:
        super().__init__()
        _check_common("vgg_small", num_classes, in_channels)
        if width < 1 or pooled < 1:
            raise UsageError(f"vgg_small: width and pooled must be >= 1, got width={width}, pooled={pooled}")
        cfg: list[int | str] = [width, width, "M", 2 * width, 2 * width, "M", 4 * width, 4 * width, "M"]
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, 1, 1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        # A fixed spatial size before flatten, so flatten -> linear couples every channel to
        # pooled*pooled features whatever the input size.
        self.avgpool = nn.AdaptiveAvgPool2d(pooled)
        self.classifier = nn.Sequential(
            nn.Linear(c * pooled * pooled, 8 * width), nn.ReLU(), nn.Linear(8 * width, num_classes)
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("vgg_small")
def vgg_small(num_classes: int = 10, in_channels: int = 3, width: int = 16, pooled: int = 2) -> VGGSmall:
    """A small VGG: 2x(conv w), pool, 2x(conv 2w), pool, 2x(conv 4w), pool, flatten, 2 linear layers."""
    return VGGSmall(num_classes=num_classes, in_channels=in_channels, width=width, pooled=pooled)


# --------------------------------------------------------------------------- MBConv (MobileNetV2/EfficientNet)
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate: global average pool, 1x1 reduce + SiLU, 1x1 expand + sigmoid,
    multiply. ``squeeze`` channels in the bottleneck."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * s


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2) with squeeze-excitation and SiLU (EfficientNet's MBConv):
    1x1 expand (skipped when ``expand`` is 1), 3x3 depthwise, SE gate, 1x1 linear projection, and a
    residual add when the stride is 1 and the width is unchanged."""

    def __init__(self, in_planes: int, planes: int, stride: int, expand: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = in_planes * expand
        self.expand: nn.Module | None = None
        if expand != 1:
            self.expand = nn.Sequential(
                nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()
            )
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn_dw = nn.BatchNorm2d(hidden)
        self.act_dw = nn.SiLU()
        self.se = SqueezeExcite(hidden, max(1, int(in_planes * se_ratio)))
        self.project = nn.Conv2d(hidden, planes, 1, bias=False)
        self.bn_project = nn.BatchNorm2d(planes)
        self.residual = stride == 1 and in_planes == planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.se(self.act_dw(self.bn_dw(self.dw(out))))
        out = self.bn_project(self.project(out))
        return out + x if self.residual else out


# (expand ratio, out channels, stride of the first block, blocks) per stage; for 28x28 to 32x32 inputs.
MBCONV_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (4, 24, 2, 2),
    (4, 40, 2, 2),
    (4, 64, 2, 1),
)


class MBConvNet(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, head: int = 128
    ) -> None:
        super().__init__()
        _check_common("mbconv", num_classes, in_channels)
        if not 0.0 < width_mult <= 4.0:
            raise UsageError(f"mbconv: width_mult must be in (0, 4], got {width_mult}")
        if head < 1:
            raise UsageError(f"mbconv: head must be >= 1, got {head}")

        def w(c: int) -> int:
            return max(1, int(round(c * width_mult)))

        stem = w(16)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.SiLU()
        )
        blocks: list[nn.Module] = []
        planes = stem
        for expand, c, stride, n in MBCONV_CFG:
            for i in range(n):
                blocks.append(MBConv(planes, w(c), stride if i == 0 else 1, expand))
                planes = w(c)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(planes, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        _init(self)
        for m in self.modules():  # start each residual branch near zero (a BN scale of 0 stalls SE)
            if isinstance(m, MBConv) and m.residual:
                nn.init.constant_(m.bn_project.weight, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("mbconv")
def mbconv(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, head: int = 128
) -> MBConvNet:
    """A small MobileNetV2/EfficientNet-style network: MBConv blocks (1x1 expand, 3x3 depthwise,
    squeeze-excitation, 1x1 projection, residual), SiLU activations, for small inputs."""
    return MBConvNet(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult, head=head)
