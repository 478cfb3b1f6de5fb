"""Classification figures: accuracy and negative log-likelihood, optionally after SGLD refinement
of the test inputs (the paper's test-time refinement: n steps up log p(x) before classifying)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..energy import as_jem
from ..errors import InputError
from ..sampling import SGLD
from ..utils import model_device, predict_logits
from .results import ClassificationResult


def refine(
    model: nn.Module,
    x: torch.Tensor,
    n_steps: int,
    *,
    sampler: SGLD | None = None,
    batch_size: int = 512,
    progress: bool = False,
) -> torch.Tensor:
    """``x`` after ``n_steps`` SGLD steps up log p(x) (on the model's device, returned on x's device).

    ``sampler`` defaults to SGLD(step_size=1, noise=0.01), the paper's sampler.

    Args:
        model: any classifier returning logits (its logsumexp is log p(x) up to a constant).
        x: inputs (N, ...) in [-1, 1].
        n_steps: the number of SGLD steps.
        sampler: the SGLD to use (default None: SGLD(step_size=1, noise=0.01)).
        batch_size: inputs per batch (default 512).
        progress: show a progress bar (default False).
    """
    if n_steps < 0:
        raise InputError(f"refinement steps must be >= 0, got {n_steps}")
    if n_steps == 0:
        return x
    sampler = sampler or SGLD(n_steps)
    device = model_device(as_jem(model))
    batches = range(0, len(x), batch_size)
    out = [
        sampler.run(model, x[i : i + batch_size].to(device), n_steps=n_steps).to(x.device)
        for i in tqdm(batches, desc=f"refine ({n_steps} SGLD steps)", disable=not progress, leave=False)
    ]
    return torch.cat(out)


def classification(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 512,
    refine_steps: int = 0,
    sampler: SGLD | None = None,
    progress: bool = False,
) -> ClassificationResult:
    """Accuracy and mean NLL of ``model`` on (x, y).

    With ``refine_steps`` > 0 the inputs first take that many SGLD steps under the model
    (``sampler``: the run's sampler, or the paper's default), then are classified.

    Args:
        model: any classifier returning logits.
        x: inputs (N, ...) in [-1, 1].
        y: labels (N,) int64.
        batch_size: inputs per batch (default 512).
        refine_steps: SGLD steps applied to the inputs first (default 0: none).
        sampler: the SGLD for refinement (default None: the paper's).
        progress: show a progress bar (default False).
    """
    if len(x) == 0:
        raise InputError("classification: the evaluation set is empty")
    if len(y) != len(x):
        raise InputError(f"classification: {len(x)} inputs but {len(y)} labels")
    if refine_steps:
        x = refine(model, x, refine_steps, sampler=sampler, batch_size=batch_size, progress=progress)
    logits = predict_logits(model, x, batch_size)
    y = y.cpu()
    return ClassificationResult(
        accuracy=float((logits.argmax(1) == y).float().mean()),
        nll=float(F.cross_entropy(logits, y)),
        n=len(y),
        refine_steps=int(refine_steps),
    )
