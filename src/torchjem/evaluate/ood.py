"""Out-of-distribution detection with the JEM paper's scores, the built-in synthetic OOD sets (drawn
from the in-distribution tensors) and ``fit_to_shape``. OOD sets read from data sets are the
workflow's (``torchjem.workflows.inputs``).

Scores (higher = more in-distribution):
  px        unnormalised log p(x) = logsumexp of the logits (or the energy head)
  py        max softmax probability (the classifier baseline)
  pxgrad    -||d log p(x) / dx||_2, the paper's "approximate mass"
  maxlogit  the largest logit
For each OOD set and score: AUROC (in-distribution = positive), AUPR-in, AUPR-out and the false
positive rate at 95% true positive rate. The metrics come from scikit-learn, which takes raw
scores; torchmetrics' binary metrics squash scores outside [0, 1] through a sigmoid, which ties
the large log p(x) values and would corrupt the figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import nn
from tqdm.auto import tqdm

from ..energy import as_jem
from ..errors import InputError
from ..utils import DATA_RANGE, frozen_eval, model_device
from .results import OODResult

SCORES: dict[str, str] = {
    "px": "log p(x) = logsumexp of the logits",
    "py": "max softmax probability",
    "pxgrad": "-||d log p(x)/dx||_2 (approximate mass)",
    "maxlogit": "max logit",
}
BUILTIN_SETS: dict[str, str] = {
    "uniform": "U(-1, 1) noise",
    "gaussian": "Gaussian noise with the in-distribution mean and std, clipped to [-1, 1]",
    "interp": "(x_i + x_(i-1)) / 2 + N(0, 0.03^2) over the in-distribution test set",
}


def check_scores(scores: Iterable[str]) -> list[str]:
    scores = list(scores)
    bad = [s for s in scores if s not in SCORES]
    if bad or not scores:
        raise InputError(
            f"unknown OOD score {', '.join(map(repr, bad)) or '(none given)'}; available: {', '.join(SCORES)}"
        )
    return scores


def ood_scores(
    model: nn.Module,
    x: torch.Tensor,
    scores: Sequence[str] = tuple(SCORES),
    *,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "OOD scores",
) -> dict[str, torch.Tensor]:
    """The requested scores of every input, each a (N,) float64 CPU tensor (higher = more in-dist).

    Args:
        model: any classifier returning logits.
        x: inputs (N, ...) in [-1, 1].
        scores: names of scores from ``SCORES`` (default: all).
        batch_size: inputs per batch (default 256).
        progress: show a progress bar (default False).
        desc: the progress bar's label (default "OOD scores").
    """
    scores = check_scores(scores)
    if len(x) == 0:
        raise InputError(f"{desc}: the set is empty")
    jem = as_jem(model)
    device = model_device(jem)
    out: dict[str, list[torch.Tensor]] = {s: [] for s in scores}
    with frozen_eval(jem):
        for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
            xb = x[i : i + batch_size].to(device)
            with torch.no_grad():
                logits = jem.logits(xb).double()
                if "px" in scores:
                    out["px"].append(jem.log_px(xb).double().cpu())
            if "py" in scores:
                out["py"].append(logits.softmax(1).amax(1).cpu())
            if "maxlogit" in scores:
                out["maxlogit"].append(logits.amax(1).cpu())
            if "pxgrad" in scores:
                out["pxgrad"].append(pxgrad(jem, xb).cpu())
    return {s: torch.cat(v) for s, v in out.items()}


def pxgrad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """-||d log p(x) / dx||_2 per input (the model in eval mode; parameter gradients never built)."""
    jem = as_jem(model)
    with frozen_eval(jem), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(jem.log_px(x).sum(), x)
    return -grad.flatten(1).double().norm(dim=1)


def ood_metrics(score_in: torch.Tensor | np.ndarray, score_out: torch.Tensor | np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR, the in-distribution set being the positive class."""
    s_in = np.asarray(score_in, dtype=np.float64).ravel()
    s_out = np.asarray(score_out, dtype=np.float64).ravel()
    if len(s_in) == 0 or len(s_out) == 0:
        raise InputError(f"OOD metrics need both sets non-empty, got {len(s_in)} in and {len(s_out)} out")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise InputError("OOD metrics: scores contain NaN or infinite values")
    scores = np.concatenate([s_in, s_out])
    labels = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr_in": float(average_precision_score(labels, scores)),
        "aupr_out": float(average_precision_score(1 - labels, -scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


# -- OOD sets ---------------------------------------------------------------------------------
def builtin_ood_set(name: str, x_in: torch.Tensor, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """One of BUILTIN_SETS, shaped like ``x_in`` (``n`` examples, default len(x_in)), seeded."""
    if name not in BUILTIN_SETS:
        raise InputError(f"unknown built-in OOD set {name!r}; available: {', '.join(BUILTIN_SETS)}")
    if len(x_in) == 0:
        raise InputError("OOD set: the in-distribution set is empty")
    n = len(x_in) if n is None else n
    g = torch.Generator().manual_seed(seed)
    x_in = x_in.detach().float().cpu()
    shape = (n, *x_in.shape[1:])
    if name == "uniform":
        lo, hi = DATA_RANGE
        return lo + (hi - lo) * torch.rand(shape, generator=g)
    if name == "gaussian":
        mean, std = float(x_in.mean()), float(x_in.std())
        return (mean + std * torch.randn(shape, generator=g)).clamp(*DATA_RANGE)
    idx = torch.randint(0, len(x_in), (n,), generator=g)
    a, b = x_in[idx], x_in[(idx - 1) % len(x_in)]
    return ((a + b) / 2 + 0.03 * torch.randn(shape, generator=g)).clamp(*DATA_RANGE)


def fit_to_shape(x: torch.Tensor, shape: Sequence[int], name: str) -> torch.Tensor:
    """``x`` brought to the model's input ``shape`` by the data layer's ``resize_to`` (sides
    interpolated; 1 <-> 3 channels by repetition or luma); a clear error naming the set otherwise."""
    from ..data import resize_to

    shape = tuple(shape)
    if len(x) == 0:
        raise InputError(f"OOD set {name!r} is empty")
    if x.ndim != len(shape) + 1:
        raise InputError(f"OOD set {name!r} has inputs of shape {tuple(x.shape[1:])}; the model takes {shape}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise InputError(f"OOD set {name!r} contains NaN or infinite values")
    try:
        return resize_to(x, shape)
    except ValueError as e:
        raise InputError(
            f"OOD set {name!r} (inputs {tuple(x.shape[1:])}) cannot be fed to the model {shape}: {e}"
        ) from None


def ood_detection(
    model: nn.Module,
    x_in: torch.Tensor,
    ood_sets: dict[str, torch.Tensor],
    *,
    scores: Sequence[str] = tuple(SCORES),
    batch_size: int = 256,
    progress: bool = False,
) -> OODResult:
    """Every score's AUROC, AUPR-in, AUPR-out and FPR95 for ``x_in`` against each OOD set.

    ``sets``: {set: {"n", score: {metrics}}}; ``arrays``: {"in" | set: {score: list}}, the raw scores
    for the histograms.

    Args:
        model: any classifier returning logits.
        x_in: in-distribution inputs (N, ...) in [-1, 1].
        ood_sets: {name: inputs (M, ...)} of the same shape.
        scores: names of scores from ``SCORES`` (default: all).
        batch_size: inputs per batch (default 256).
        progress: show a progress bar (default False).
    """
    scores = check_scores(scores)
    if len(x_in) == 0:
        raise InputError("OOD detection: the in-distribution set is empty")
    if not ood_sets:
        raise InputError("OOD detection needs at least one OOD set")
    shape = tuple(x_in.shape[1:])
    for name, x in ood_sets.items():
        if len(x) == 0:
            raise InputError(f"OOD set {name!r} is empty")
        if tuple(x.shape[1:]) != shape:
            raise InputError(
                f"OOD set {name!r} has inputs of shape {tuple(x.shape[1:])}; the in-distribution set has {shape} "
                "(use fit_to_shape)"
            )
    s_in = ood_scores(model, x_in, scores, batch_size=batch_size, progress=progress, desc="OOD scores (in-dist)")
    result = OODResult(n_in=len(x_in), scores=scores, sets={}, arrays={"in": _lists(s_in)})
    for name, x in ood_sets.items():
        s_out = ood_scores(model, x, scores, batch_size=batch_size, progress=progress, desc=f"OOD scores ({name})")
        result.sets[name] = {"n": len(x), **{s: ood_metrics(s_in[s], s_out[s]) for s in scores}}
        result.arrays[name] = _lists(s_out)
    return result


def _lists(scores: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: v.tolist() for k, v in scores.items()}
