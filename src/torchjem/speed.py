"""Speed set-up for training: bf16 autocast, channels_last, torch.compile and cuDNN autotuning.

Everything here is opt-in through ``TrainConfig`` (``amp``, ``channels_last``, ``compile``) except
cuDNN autotuning, which is switched on for CUDA devices: a JEM step runs the same input shapes
(N for the chains, 2N for the loss) over and over, the case autotuning is made for.

None of these options changes the state_dict of the model, so checkpoints load with or without
them. Only the CPU code paths are measured in docs/performance.md; the CUDA-only effects
(channels_last, cudnn.benchmark, bf16 on tensor cores) are written to be right by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .config import ConfigError, TrainConfig
from .energy import JEM
from .errors import InputError

AMP_MODES = ("none", "bf16")


def check_speed_options(cfg: TrainConfig) -> None:
    """Raise ConfigError for an unknown ``train.amp`` (before any model is touched)."""
    if cfg.amp not in AMP_MODES:
        raise ConfigError(f"config train.amp = {cfg.amp!r} is invalid: expected one of {', '.join(AMP_MODES)}")


def _logits_to_fp32(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    """Forward hook: the network's output leaves autocast as fp32. The last layer still
    computes in bf16, but log-sum-exp, softmax, cross-entropy, the energies and the loss (means
    of values up to 10-1000 whose small differences drive the p(x) term) are then computed and
    accumulated in fp32. A no-op (no copy) when the output is already fp32."""
    return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def configure_speed(jem: JEM, cfg: TrainConfig, device: torch.device | str) -> JEM:
    """Apply the speed options of ``cfg`` to ``jem`` (in place) and return it.

    - ``amp == "bf16"``: registers hooks that return the classifier's logits (and an energy
      head's outputs) as fp32; the autocast region itself is :func:`autocast` around the loss
      (chains included).
    - ``channels_last``: 4-D weights in NHWC; convolutions then produce NHWC activations,
      which tensor-core kernels prefer (CUDA). Inputs need no change.
    - ``compile``: ``torch.compile`` of the classifier's call, installed in place (see
      :func:`compile_module`), so the state_dict keys are unchanged; the SGLD chain (eval mode,
      frozen weights, batch N) and the loss (train mode, batch 2N) compile to separate graphs
      on first use.
    - CUDA: ``torch.backends.cudnn.benchmark = True``.
    """
    check_speed_options(cfg)
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.channels_last:
        jem.to(memory_format=torch.channels_last)  # converts 4-D parameters only
    if cfg.amp == "bf16":
        for module in (jem.net, jem.class_head, jem.energy_head):
            if module is not None and not getattr(module, "_torchjem_fp32_out", False):
                module.register_forward_hook(_logits_to_fp32)
                module._torchjem_fp32_out = True
    if cfg.compile:
        compile_module(jem.net)
    return jem


def compile_module(module: nn.Module, **options: object) -> nn.Module:
    """Compile ``module``'s calls in place (``module(x)`` runs the compiled graph).

    ``nn.Module.compile()`` does the same, but Dynamo skips frames that live inside torch.nn, so
    a bare ``nn.Sequential`` (the convnet and the MLP) would silently stay uncompiled; the call
    is therefore wrapped in a function of this module, which Dynamo traces, inlining the
    module's hooks and forward. A deepcopy or pickle of the module drops the compiled call
    (nn.Module.__getstate__ removes it), so copies are plain modules with their own weights.
    """

    def call(*args: object, **kwargs: object) -> object:
        return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = torch.compile(call, **options)
    return module


def fused_optimizer_kwargs(device: torch.device | str) -> dict[str, bool]:
    """``{"fused": True}`` where this torch has fused Adam/SGD kernels for ``device`` (CUDA; CPU
    since torch 2.4), else ``{}``. One kernel per parameter instead of ~10: the optimiser step
    of the digits classifier goes from 0.34 to 0.10 ms on one CPU core (docs/performance.md)."""
    device = torch.device(device)
    if device.type not in _FUSED_OK:
        try:
            probe = torch.zeros(1, device=device, requires_grad=True)
            probe.grad = torch.zeros_like(probe)
            torch.optim.Adam([probe], fused=True).step()
            _FUSED_OK[device.type] = True
        except (RuntimeError, ValueError):
            _FUSED_OK[device.type] = False
    return {"fused": True} if _FUSED_OK[device.type] else {}


_FUSED_OK: dict[str, bool] = {}


@contextlib.contextmanager
def autocast(amp: str, device: torch.device | str) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``amp == "bf16"``; nothing otherwise.

    Matmuls and convolutions run in bf16; the SGLD input gradient comes back in the input's
    dtype (fp32), so the chains' states and the replay buffer stay fp32.
    """
    if amp not in AMP_MODES:
        raise InputError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "none":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield
