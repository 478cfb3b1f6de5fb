"""Feature networks for sample quality (FID, KID, Inception-style score) and conditional accuracy.

A feature network maps inputs in [-1, 1] to features (for FID and KID) and to class logits (for the
Inception-style score and the conditional accuracy). Figures computed with one are only comparable
with figures computed with the same one, so every result carries the network's ``name``.

- ``ClassifierFeatures``: the default, a plain classifier trained on the run's own training data
  (``torchjem.workflows.inputs.default_feature_net`` trains it once per data set and caches it).
  Its FID is *not* the Inception FID of the literature.
- ``InceptionFeatures``: a TorchScript Inception-v3 detector (the ``inception-2015-12-05.pt`` of
  the StyleGAN2-ADA / clean-fid metrics, read from a local file by
  ``torchjem.workflows.inputs.load_inception``: ``forward(images, return_features=True)`` on uint8
  RGB images gives 2048 pool features, without it the class probabilities). Nothing is downloaded.
- ``ModuleFeatures``: any classifier nn.Module, features taken from a named layer.

Everything here is a module over tensors: training, caching and reading files are the workflow's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..utils import DATA_RANGE


class FeatureNet(nn.Module):
    """Base class: ``features(x)`` (N, D) and ``logits(x)`` (N, C) of inputs in [-1, 1]."""

    name = "features"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


class ClassifierFeatures(FeatureNet):
    """A small plain classifier; its penultimate layer (``feature_dim`` units) gives the features.

    Images (C, H, W) go through three 3x3 convolutions (two with stride 2) and a 2x2 average
    pool; 1-D signals (C, L) through the 1-D equivalent; anything else through an MLP.
    """

    def __init__(
        self, shape: Sequence[int], n_classes: int, width: int = 32, feature_dim: int = 128, name: str = "classifier"
    ) -> None:
        super().__init__()
        self.shape, self.n_classes, self.name = tuple(shape), n_classes, name
        c = self.shape[0]
        if len(self.shape) in (2, 3):
            conv = nn.Conv2d if len(self.shape) == 3 else nn.Conv1d
            pool = nn.AdaptiveAvgPool2d(2) if len(self.shape) == 3 else nn.AdaptiveAvgPool1d(4)
            trunk: list[nn.Module] = [
                conv(c, width, 3, padding=1),
                nn.SiLU(),
                conv(width, 2 * width, 3, stride=2, padding=1),
                nn.SiLU(),
                conv(2 * width, 4 * width, 3, stride=2, padding=1),
                nn.SiLU(),
                pool,
                nn.Flatten(),
                nn.Linear(4 * width * 4, feature_dim),
            ]
        else:
            trunk = [
                nn.Flatten(),
                nn.Linear(math.prod(self.shape), 4 * width),
                nn.SiLU(),
                nn.Linear(4 * width, feature_dim),
            ]
        self.trunk = nn.Sequential(*trunk, nn.SiLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class ModuleFeatures(FeatureNet):
    """Any classifier returning logits; features from the sub-module ``layer`` (default: the logits)."""

    def __init__(self, module: nn.Module, name: str, layer: str | None = None) -> None:
        super().__init__()
        self.module, self.name, self.layer = module, name, layer
        if layer is not None and layer not in dict(module.named_modules()):
            raise InputError(f"feature layer {layer!r} is not a sub-module of the given network")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return self.module(x)
        seen: list[torch.Tensor] = []
        hook = dict(self.module.named_modules())[self.layer].register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            self.module(x)
        finally:
            hook.remove()
        return seen[0].flatten(1)


class InceptionFeatures(FeatureNet):
    """A TorchScript Inception-v3 detector ``net``, already loaded (``load_inception`` in
    ``torchjem.workflows.inputs`` reads one from a local file).

    Inputs in [-1, 1] become uint8 RGB (gray images repeated over 3 channels); the detector resizes
    them itself. ``logits`` returns log class probabilities (the detector outputs probabilities).
    """

    def __init__(self, net: nn.Module, name: str = "inception-v3") -> None:
        super().__init__()
        self.net, self.name = net.eval(), name

    @staticmethod
    def _rgb_uint8(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"Inception features need (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        lo, hi = DATA_RANGE
        return ((x.clamp(lo, hi) - lo) * (255 / (hi - lo))).round().to(torch.uint8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._rgb_uint8(x), return_features=True).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._rgb_uint8(x)).clamp_min(1e-12).log()


def feature_label(net: FeatureNet) -> str:
    """How a figure computed with ``net`` is labelled in the report."""
    acc = getattr(net, "test_accuracy", None)
    extra = f", test accuracy {acc:.1%}" if acc is not None and math.isfinite(acc) else ""
    if isinstance(net, InceptionFeatures):
        return f"{net.name}{extra}"
    return f"{net.name}{extra}; not Inception features"
