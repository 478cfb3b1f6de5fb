"""Small helpers shared by every layer: eval mode with frozen weights, batched prediction, a
model's device, device names and seeding."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .energy import as_jem
from .errors import InputError

# Every input torchjem sees (data, chains, attacks, OOD sets) is scaled to this range (the reference
# code's transform: Normalize((.5,), (.5,))).
DATA_RANGE = (-1.0, 1.0)


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; every module's mode and flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def frozen(model: nn.Module, mode: str = "eval") -> contextlib.AbstractContextManager:
    """No parameter gradients inside, in ``mode``: ``eval`` (``frozen_eval``) or ``train`` (batch
    norms use the batch's statistics, without updating their running ones; dropout is active)."""
    if mode == "eval":
        return frozen_eval(model)
    if mode != "train":
        raise InputError(f"model mode must be 'eval' or 'train', got {mode!r}")
    stack = contextlib.ExitStack()
    stack.enter_context(frozen_eval(model))
    model.train()  # (frozen_eval restores every module's mode on exit)
    stack.enter_context(frozen_bn_stats(model))
    return stack


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Batch norms keep normalising with the batch's statistics (in train mode) but do not update
    their running statistics inside (momentum 0); restored after. For passes that must not leave a
    trace in them: the SGLD samples' pass, SAM's second pass, chains run in train mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of ``model``'s first parameter (or buffer), else ``default``."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(default)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for ``x`` (fp32, on the CPU) in eval mode, batched; every module's mode restored after."""
    jem = as_jem(model)
    device = model_device(jem)
    with frozen_eval(jem):
        return torch.cat(
            [jem.logits(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
        )


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
