"""Feature networks for sample quality (FID, KID, Inception-style score) and conditional accuracy.

A feature network maps inputs in [-1, 1] to features (for FID and KID) and to class logits (for the
Inception-style score and the conditional accuracy). Figures computed with one are only comparable
with figures computed with the same one, so every result carries the network's ``name``.

- ``ClassifierFeatures``: the default, a plain classifier trained on the run's own training data
  (``default_feature_net`` trains it on demand and caches it in the run directory). Its FID is
  *not* the Inception FID of the literature.
- ``InceptionFeatures``: a TorchScript Inception-v3 from a local file the user provides (the
  ``inception-2015-12-05.pt`` detector of the StyleGAN2-ADA / clean-fid metrics: ``forward(images,
  return_features=True)`` on uint8 RGB images gives 2048 pool features, without it the class
  probabilities). Nothing is downloaded.
- ``ModuleFeatures``: any classifier nn.Module, features taken from a named layer.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import InputError, MissingError

log = logging.getLogger("torchjem")


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
    """A TorchScript Inception-v3 detector loaded from a local file (never downloaded).

    Inputs in [-1, 1] become uint8 RGB (gray images repeated over 3 channels); the file resizes
    them itself. ``logits`` returns log class probabilities (the detector outputs probabilities).
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise MissingError(f"Inception weights file {str(path)!r} does not exist")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format these files use
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as e:
            raise InputError(f"{str(path)!r} is not a TorchScript Inception detector: {e}") from None
        self.name = f"inception-v3[{path.name}]"

    @staticmethod
    def _rgb_uint8(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"Inception features need (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._rgb_uint8(x), return_features=True).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._rgb_uint8(x)).clamp_min(1e-12).log()


# -- the default: a classifier trained on demand and cached in the run directory ---------------
def default_feature_net(
    data: Any,
    cache_dir: str | Path | None,
    device: torch.device | str = "cpu",
    epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> ClassifierFeatures:
    """A ClassifierFeatures for ``data`` (DataSplits), loaded from ``cache_dir`` or trained there.

    The cache file records the data set, input shape and classes it was trained for; a mismatch
    retrains (delete the file to retrain with other ``epochs``). Training never touches the global
    RNG state (it runs under a forked, seeded RNG).
    """
    shape, n_classes = tuple(data.shape), int(data.n_classes)
    name = f"classifier[{data.name}]"
    meta = {"data": data.name, "shape": list(shape), "n_classes": n_classes, "classes": list(data.class_names)}
    path = Path(cache_dir) / f"classifier_{data.name}.pt" if cache_dir is not None else None
    net = ClassifierFeatures(shape, n_classes, name=name)
    if path is not None and path.is_file():
        state = load_checkpoint(path, map_location="cpu")
        if all(state["meta"].get(k) == v for k, v in meta.items()):
            net.load_state_dict(state["model"])
            net.test_accuracy = float(state["meta"]["test_accuracy"])
            log.info("feature net: loaded %s from %s", name, path)
            return net.to(device).eval()
        log.info("feature net cache %s is for other data; retraining", path)
    log.info("feature net: training %s (%d epochs; cached in %s)", name, epochs, path)
    net = _train_classifier(net, data, device, epochs, batch_size, seed, progress)
    if path is not None:
        extra = {"epochs": epochs, "seed": seed, "test_accuracy": net.test_accuracy}
        save_checkpoint(path, {"model": net.state_dict(), "meta": {**meta, **extra}})
    return net.eval()


def _train_classifier(
    net: ClassifierFeatures,
    data: Any,
    device: torch.device | str,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> ClassifierFeatures:
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net = ClassifierFeatures(net.shape, net.n_classes, name=net.name).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x, y = data.x_train.to(device), data.y_train.to(device)
        steps = max(1, len(x) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps)
        bar = tqdm(total=epochs * steps, desc="feature net", disable=not progress, leave=False)
        for _ in range(epochs):
            perm = torch.randperm(len(x), device=device)
            for i in range(steps):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                xb = x[idx] + 0.03 * torch.randn_like(x[idx])  # the JEM data noise: samples are noisy too
                loss = F.cross_entropy(net.logits(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
        bar.close()
        net.eval()
        with torch.no_grad():
            xt, yt = data.x_test.to(device), data.y_test.to(device)
            acc = torch.cat([net.logits(xt[i : i + 512]).argmax(1) for i in range(0, len(xt), 512)]) == yt
        net.test_accuracy = float(acc.float().mean()) if len(yt) else float("nan")
    log.info("feature net: test accuracy %.4f", net.test_accuracy)
    return net


def resolve_feature_net(
    spec: str | nn.Module | None,
    data: Any,
    cache_dir: str | Path | None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> FeatureNet:
    """``"auto"``/None: the default classifier; ``"inception:PATH"`` or a ``.pt``/``.pth`` path: a
    TorchScript Inception; a FeatureNet: itself; any other nn.Module: its logits as features."""
    if spec is None or spec == "auto":
        return default_feature_net(data, cache_dir, device, progress=progress)
    if isinstance(spec, FeatureNet):
        return spec.to(device).eval()
    if isinstance(spec, nn.Module):
        return ModuleFeatures(spec, type(spec).__name__).to(device).eval()
    if isinstance(spec, str):
        kind, sep, rest = spec.partition(":")
        if sep and kind == "inception":
            return InceptionFeatures(rest, device)
        if Path(spec).suffix in (".pt", ".pth", ".pts"):
            return InceptionFeatures(spec, device)
    raise InputError(f"feature net {spec!r}: expected 'auto', 'inception:PATH' or a path to a TorchScript .pt file")


def feature_label(net: FeatureNet) -> str:
    """How a figure computed with ``net`` is labelled in the report."""
    acc = getattr(net, "test_accuracy", None)
    extra = f", test accuracy {acc:.1%}" if acc is not None and math.isfinite(acc) else ""
    if isinstance(net, InceptionFeatures):
        return f"{net.name}{extra}"
    return f"{net.name}{extra}; not Inception features"
