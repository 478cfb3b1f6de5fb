"""Pre-activation Wide-ResNet (Zagoruyko & Komodakis), as in the JEM paper.

WRN-28-10 with ``norm="none"``, no dropout and LeakyReLU(0.2) is the paper's CIFAR network.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .registry import register_net


def _norm(kind: str, channels: int, bn_momentum: float = 0.1) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=bn_momentum)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    raise InputError(f"unknown norm {kind!r}; expected none, batch, instance or layer")


class WideBasic(nn.Module):
    def __init__(
        self, c_in: int, c_out: int, stride: int, norm: str, dropout: float, slope: float, bn_momentum: float = 0.1
    ):
        super().__init__()
        self.bn1 = _norm(norm, c_in, bn_momentum)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=True)
        self.bn2 = _norm(norm, c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=stride, padding=1, bias=True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.act = nn.LeakyReLU(slope)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=True) if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(self.conv1(self.act(self.bn1(x))))
        out = self.conv2(self.act(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        n_classes: int = 10,
        in_channels: int = 3,
        norm: str = "none",
        dropout: float = 0.0,
        slope: float = 0.2,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise InputError(f"Wide-ResNet depth must be 6n+4 (e.g. 10, 16, 28), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=True)
        layers: list[nn.Module] = []
        c_in = widths[0]
        for stage, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(WideBasic(c_in, stage, stride if i == 0 else 1, norm, dropout, slope, bn_momentum))
                c_in = stage
        self.blocks = nn.Sequential(*layers)
        self.bn = _norm(norm, c_in, bn_momentum)
        self.act = nn.LeakyReLU(slope)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in
        self.fc = nn.Linear(c_in, n_classes) if n_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn(self.blocks(self.conv1(x))))
        return self.pool(out).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


@register_net("wrn")
def wrn(
    depth: int = 28,
    width: int = 10,
    n_classes: int = 10,
    *,
    in_channels: int = 3,
    norm: str = "none",
    dropout: float = 0.0,
    slope: float = 0.2,
    bn_momentum: float = 0.1,
) -> nn.Module:
    """Wide-ResNet-depth-width; ``n_classes=0`` returns features (for an energy head).
    ``bn_momentum``: PyTorch's convention (weight of the new batch); the JEM, JEM++ and SADA-JEM
    code builds its batch norms with 0.9, which ``jem import`` keeps.

    Args:
        depth: the network's depth, 6 n + 4 (default 28).
        width: the widening factor (default 10).
        n_classes: outputs of the linear head (default 10; 0: no head, the features).
        in_channels: channels of the input images (N, C, H, W) (default 3).
        norm: the normalisation layer: none, batch, instance or layer (default "none").
        dropout: the dropout probability inside the blocks (default 0.0: none).
        slope: the negative slope of the leaky ReLUs (default 0.2).
        bn_momentum: the batch norms' momentum, PyTorch's convention (default 0.1).
    """
    return WideResNet(depth, width, n_classes, in_channels, norm, dropout, slope, bn_momentum)
