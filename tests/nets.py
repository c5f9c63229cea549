"""One small hand-built network per topology the channel engine must handle."""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Residual(nn.Module):
    """Two basic blocks; the second has a projection shortcut (conv + BN)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.a1, self.a2 = cbr(8, 8), nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8))
        self.b1, self.b2 = cbr(8, 16, stride=2), nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.proj = nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = F.relu(self.proj(x) + self.b2(self.b1(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Concat(nn.Module):
    """DenseNet-style growth plus an Inception-style multi-branch concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.l1 = cbr(8, 4)
        self.l2 = cbr(12, 4)
        self.br1, self.br2 = cbr(16, 6, 1), cbr(16, 5, 3)
        self.head = nn.Conv2d(11, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], dim=1)
        x = torch.cat([self.br1(x), self.br2(x)], 1)
        return self.head(x).mean((2, 3))


class Shuffle(nn.Module):
    """ShuffleNetV2 unit: chunk, a branch, concat, channel shuffle by view/transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.branch = nn.Sequential(cbr(4, 4, 1), cbr(4, 4, 3, groups=4), cbr(4, 4, 1))
        self.branch2 = nn.Sequential(cbr(4, 4, 1), cbr(4, 4, 1))
        self.shuffle = nn.ChannelShuffle(2)
        self.head = nn.Conv2d(8, 4, 1)

    @staticmethod
    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
        return x.view(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = self.channel_shuffle(torch.cat((x1, self.branch(x2)), 1), 2)
        y1, y2 = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat((y1, self.branch2(y2)), 1))
        return self.head(x).flatten(1)


class Depthwise(nn.Module):
    """MobileNetV2 inverted residual: expand, depthwise, project, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.expand = cbr(8, 24, 1)
        self.dw = cbr(24, 24, 3, groups=24)
        self.dw_mult = nn.Conv2d(24, 48, 3, 1, 1, groups=24)  # channel multiplier 2
        self.project = nn.Sequential(nn.Conv2d(48, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw_mult(self.dw(self.expand(x))))
        return self.head(x.mean((2, 3)))


class Grouped(nn.Module):
    """ResNeXt-style grouped conv (4 groups of 4) inside a bottleneck with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.reduce = cbr(16, 16, 1)
        self.group = cbr(16, 16, 3, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.expand(self.group(self.reduce(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class FlattenLinear(nn.Module):
    """VGG/AlexNet head: flatten a 4x4 map into Linear (each channel owns 16 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 12), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.classifier = nn.Sequential(nn.Linear(12 * 16, 20), nn.ReLU(), nn.Dropout(), nn.Linear(20, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class SqueezeExcite(nn.Module):
    """EfficientNet/MobileNetV3 SE: pooled side branch scales channels by a multiply."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 16)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.conv = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = F.hardswish(self.conv(x * s))
        return self.head(x.mean(dim=(2, 3)))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    """ConvNeXt block: depthwise conv, channels-last LayerNorm + MLP, layer scale, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 2, 2), LayerNorm2d(8))
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm = nn.LayerNorm(8)
        self.pw1, self.pw2 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.down = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 12, 2, 2))
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.gamma * y
        return self.head(self.down(x).mean((-2, -1)))


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.c2 = nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(F.relu(self.gn(self.c1(x)))).flatten(1)


class Misc1d(nn.Module):
    """Conv1d, ConvTranspose2d and PReLU in one net."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, 2, 1)
        self.up = nn.ConvTranspose2d(8, 6, 2, 2)
        self.act = nn.PReLU(6)
        self.c1d = nn.Conv1d(6, 5, 3, padding=1)
        self.bn = nn.BatchNorm1d(5)
        self.out = nn.Conv1d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.up(self.c(x)))
        x = x.flatten(2)  # (N, C, H*W)
        return self.out(F.relu(self.bn(self.c1d(x)))).flatten(1)


class Windowed(nn.Module):
    """Windows folded into the batch before a linear layer and a conv (Swin, GCViT, MaxViT), and
    a per-image vector repeated over the windows of the batch (GCViT's global query): the cost
    model must count every window, not the first row of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8, stride=2)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, 8)
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.query = nn.Linear(8, 12)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (1, 8, 8, 8)
        b, c, h, w = x.shape
        win = x.reshape(b, c, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(-1, 16, c)  # 4 windows
        g = self.query(x.mean((2, 3))).unsqueeze(1)  # (1, 1, 12): one per image
        g = g.repeat_interleave(win.shape[0] // b, dim=0)  # (4, 1, 12): one per window
        win = win + self.fc2(F.relu(self.fc1(win)) * g)
        y = self.conv(win.reshape(-1, 4, 4, c).permute(0, 3, 1, 2))  # (4, 6, 4, 4)
        return self.head(y.mean((2, 3))).mean(0, keepdim=True)


@torch.fx.wrap
def custom_op(x: torch.Tensor) -> torch.Tensor:
    """An op the engine cannot know: a cumulative sum across channels."""
    return torch.cumsum(x, dim=1)


class UnknownOp(nn.Module):
    """A custom op on one branch: its channels must be frozen, the rest stay prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.b = cbr(8, 8)
        self.c = cbr(8, 6)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        x = custom_op(self.b(x))
        return self.head(self.c(x)).mean((2, 3))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)
        if x.sum() > 0:  # data-dependent control flow
            return x
        return -x


TOPOLOGIES = {
    "residual": Residual,
    "concat": Concat,
    "shuffle": Shuffle,
    "depthwise": Depthwise,
    "grouped": Grouped,
    "flatten_linear": FlattenLinear,
    "squeeze_excite": SqueezeExcite,
    "convnext": ConvNeXtLike,
    "groupnorm": GroupNormNet,
    "misc1d": Misc1d,
    "unknown_op": UnknownOp,
    "windowed": Windowed,
}
