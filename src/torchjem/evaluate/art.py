"""The adversarial-robustness-toolbox (ART) behind one module: nothing else imports ``art``.

- ``square``: ART's Square attack (Andriushchenko et al. 2020), score-based and black-box: it only
  queries the model's outputs, so it works on any predictor, the stochastic JEM-n defence included,
  and a gradient the model hides does not stop it. It is the suite's check on gradient masking.
- ``art_apgd``: ART's APGD, the reference our own ``apgd`` is checked against on deterministic
  models (ART's attacks have no expectation over transformation, so the suite runs its own APGD).

Inputs and outputs are torch tensors in the data's own range (``DATA_RANGE``, given to ART as its
``clip_values``); ART works on float32 numpy arrays and numpy's global RNG, which is seeded here
from torch's RNG (so ``--seed`` governs it) and restored after.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
from art.estimators.classification import PyTorchClassifier
from torch import nn

from ..utils import DATA_RANGE, frozen_eval, model_device

ART_NORM = {"linf": np.inf, "l2": 2}
logging.getLogger("art").setLevel(logging.WARNING)  # ART logs every estimator it builds at INFO


@contextlib.contextmanager
def _numpy_seeded() -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    try:
        yield
    finally:
        np.random.set_state(state)


def _classifier(
    model: nn.Module, x: torch.Tensor, n_classes: int, data_range: tuple[float, float]
) -> PyTorchClassifier:
    """ART's view of ``model``: its logits (not an energy), inputs clipped to ``data_range``."""
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=n_classes,
        clip_values=(float(data_range[0]), float(data_range[1])),
        device_type="gpu" if model_device(model).type == "cuda" else "cpu",
    )


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    queries: int = 1000,
    n_classes: int,
    p_init: float = 0.8,
    batch_size: int = 100,
    data_range: tuple[float, float] = DATA_RANGE,
) -> torch.Tensor:
    """ART's Square attack on ``model`` (untargeted, margin loss, ``queries`` iterations of one
    query per input still correctly classified); the adversarials (N, ...) on ``x``'s device.

    Args:
        model: any classifier returning logits.
        x: inputs (N, ...) in ``data_range``.
        y: their true labels (N,).
        eps: the radius, in the data's scale.
        norm: "linf" or "l2" (default "linf").
        queries: iterations, one query per input still correctly classified (default 1000).
        n_classes: the model's number of classes.
        p_init: the initial fraction of the input a square covers (default 0.8).
        batch_size: inputs attacked at once (default 100).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).
    """
    # np.errstate: ART's L2 Square divides by zero-norm updates on a few inputs (harmless, warned)
    with frozen_eval(model), _numpy_seeded(), np.errstate(divide="ignore", invalid="ignore"):
        attack = SquareAttack(
            _classifier(model, x, n_classes, data_range), norm=ART_NORM[norm], max_iter=queries, eps=eps,
            p_init=p_init, nb_restarts=1, batch_size=batch_size, verbose=False,
        )
        adv = attack.generate(x=_numpy(x), y=y.cpu().numpy())
    return torch.from_numpy(adv).to(device=x.device, dtype=x.dtype)


def art_apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 40,
    restarts: int = 1,
    n_classes: int,
    batch_size: int = 100,
    data_range: tuple[float, float] = DATA_RANGE,
) -> torch.Tensor:
    """ART's APGD with the cross-entropy (untargeted) on ``model``: the adversarials (N, ...).

    Args:
        model: any classifier returning logits.
        x: inputs (N, ...) in ``data_range``.
        y: their true labels (N,).
        eps: the radius, in the data's scale (the first step is 2 eps).
        norm: "linf" or "l2" (default "linf").
        steps: iterations per restart (default 40).
        restarts: random starts (default 1).
        n_classes: the model's number of classes.
        batch_size: inputs attacked at once (default 100).
        data_range: (low, high) bounds of the inputs and adversarials (default ``DATA_RANGE``).
    """
    with frozen_eval(model), _numpy_seeded():
        attack = AutoProjectedGradientDescent(
            _classifier(model, x, n_classes, data_range), norm=ART_NORM[norm], eps=eps, eps_step=2 * eps,
            max_iter=steps, targeted=False, nb_random_init=restarts, batch_size=batch_size,
            loss_type="cross_entropy", verbose=False,
        )
        adv = attack.generate(x=_numpy(x), y=y.cpu().numpy())
    return torch.from_numpy(adv).to(device=x.device, dtype=x.dtype)


__all__ = ["art_apgd", "square"]
