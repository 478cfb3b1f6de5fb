"""A 1-D conv net for signals (N, C, L), e.g. MNIST-1D (1x40)."""

from __future__ import annotations

from torch import nn

from .registry import register_net
from .small import _act


@register_net("conv1d")
def conv1d(
    in_channels: int = 1,
    n_classes: int = 10,
    width: int = 32,
    *,
    activation: str = "swish",
    pool: int = 5,
) -> nn.Module:
    """Four kernel-5/3 conv layers (two with stride 2), average-pooled to ``pool`` positions,
    then a linear head (``n_classes=0``: the features). Pooling to a fixed length makes the net
    take any signal length; keeping ``pool`` positions keeps where a pattern is, which matters
    for MNIST-1D. Swish by default: smooth input gradients for SGLD.

    Args:
        in_channels: channels of the input signal (N, C, L) (default 1).
        n_classes: outputs of the linear head (default 10; 0: no head, the features).
        width: channels of the first conv layer (default 32).
        activation: the activation's name (default "swish").
        pool: positions kept by the adaptive average pooling (default 5).
    """
    net = nn.Sequential(
        nn.Conv1d(in_channels, width, 5, padding=2),
        _act(activation),
        nn.Conv1d(width, width, 5, stride=2, padding=2),
        _act(activation),
        nn.Conv1d(width, 2 * width, 5, stride=2, padding=2),
        _act(activation),
        nn.Conv1d(2 * width, 2 * width, 3, padding=1),
        _act(activation),
        nn.AdaptiveAvgPool1d(pool),
        nn.Flatten(),
        nn.Linear(2 * width * pool, n_classes) if n_classes > 0 else nn.Identity(),
    )
    net.num_features = 2 * width * pool
    return net
