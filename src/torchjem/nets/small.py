"""Small networks for small inputs: a conv net (images), an MLP, a 1-D conv net (signals)."""

from __future__ import annotations

from torch import nn

from ..errors import InputError
from .registry import register_net


def _act(name: str) -> nn.Module:
    acts = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "swish": nn.SiLU, "elu": nn.ELU}
    if name not in acts:
        raise InputError(f"unknown activation {name!r}; available: {', '.join(acts)}")
    return acts[name]()


@register_net("convnet")
def convnet(
    in_channels: int = 1,
    n_classes: int = 10,
    width: int = 64,
    *,
    activation: str = "swish",
    image_size: int = 8,
    image_height: int | None = None,
) -> nn.Module:
    """Four 3x3 conv layers with one 2x down-sampling, then a linear head on the flattened map
    (``n_classes=0``: no head, the features). Flattening keeps where strokes are, which
    global pooling would lose on 8x8 digits; ``image_size`` is the input's width and
    ``image_height`` its height (None: square).
    Swish is the default activation: smooth input gradients make SGLD behave (the
    maintainers' advice for stable JEM training).

    Args:
        in_channels: channels of the input images (N, C, H, W) (default 1).
        n_classes: outputs of the linear head (default 10; 0: no head, the features).
        width: channels of the conv layers (default 64).
        activation: the activation's name (default "swish").
        image_size: the input's width in pixels (default 8).
        image_height: the input's height in pixels (default None: ``image_size``, square).
    """
    height = image_size if image_height is None else image_height
    cells = ((height + 1) // 2) * ((image_size + 1) // 2)  # after the stride-2 conv
    net = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        _act(activation),
        nn.Conv2d(width, width, 3, padding=1),
        _act(activation),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        _act(activation),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        _act(activation),
        nn.Flatten(),
        nn.Linear(2 * width * cells, n_classes) if n_classes > 0 else nn.Identity(),
    )
    net.num_features = 2 * width * cells
    return net


@register_net("mlp")
def mlp(
    in_features: int = 64,
    n_classes: int = 10,
    hidden: int = 256,
    *,
    depth: int = 2,
    activation: str = "swish",
) -> nn.Module:
    """Flatten, ``depth`` hidden layers of ``hidden`` units, linear head.

    Args:
        in_features: values per input, after flattening (default 64).
        n_classes: outputs of the linear head (default 10).
        hidden: units per hidden layer (default 256).
        depth: the number of hidden layers (default 2).
        activation: the activation's name (default "swish").
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), _act(activation)]
        width = hidden
    layers.append(nn.Linear(width, n_classes) if n_classes > 0 else nn.Identity())
    net = nn.Sequential(*layers)
    net.num_features = width
    return net
