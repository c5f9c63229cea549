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
