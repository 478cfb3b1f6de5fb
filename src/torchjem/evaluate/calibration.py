"""Calibration of the max-softmax confidence: ECE, MCE and the reliability diagram's bins.

The paper's protocol: 20 equal-width confidence bins; ECE = sum_b (n_b / N) |acc_b - conf_b|,
MCE = max_b |acc_b - conf_b| over non-empty bins. ECE and MCE come from torchmetrics; the bins are
returned too so that the reliability diagram plots exactly what the figure summarises.

Bin-edge rule (torchmetrics', ``torch.bucketize(..., right=True)``): bin b is [edge_b, edge_b+1),
so a confidence exactly on an edge belongs to the upper bin (with 10 bins, 0.5 is in bin 5,
[0.5, 0.6)); a confidence of exactly 1 belongs to the top bin.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_calibration_error

from ..errors import InputError
from ..utils import predict_logits
from .results import CalibrationResult

SUM_TOLERANCE = 1e-3  # how far a row of probabilities may sum from 1


def check_probabilities(probs: torch.Tensor) -> None:
    """Raise InputError unless ``probs`` (N, C) are finite, in [0, 1] and each row sums to 1 within
    ``SUM_TOLERANCE``; the message says what was found."""
    finite = torch.isfinite(probs)
    if not bool(finite.all()):
        rows = int((~finite).any(1).sum())
        raise InputError(
            f"calibration: probabilities must be finite, found {int(torch.isnan(probs).sum())} NaN and "
            f"{int(torch.isinf(probs).sum())} infinite values (in {rows} of {len(probs)} rows)"
        )
    lo, hi = float(probs.min()), float(probs.max())
    if lo < 0 or hi > 1:
        rows = int(((probs < 0) | (probs > 1)).any(1).sum())
        raise InputError(
            f"calibration: probabilities must lie in [0, 1], found values in [{lo:.6g}, {hi:.6g}] (in {rows} of "
            f"{len(probs)} rows); pass softmax probabilities, not logits"
        )
    sums = probs.sum(1)
    off = (sums - 1).abs() > SUM_TOLERANCE
    if bool(off.any()):
        raise InputError(
            f"calibration: each row of probabilities must sum to 1 (within {SUM_TOLERANCE:g}), found row sums in "
            f"[{float(sums.min()):.6g}, {float(sums.max()):.6g}] ({int(off.sum())} of {len(probs)} rows off)"
        )


def calibration_from_probs(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 20) -> CalibrationResult:
    """ECE, MCE and per-bin figures of class probabilities ``probs`` (N, C) against labels ``y``.

    ``confidence`` is the mean max-probability, ``bins`` the reliability diagram (see ``CalibrationResult``).
    Probabilities must be finite, in [0, 1], with rows that sum to 1 (within ``SUM_TOLERANCE``):
    softmax outputs, not logits.
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise InputError(f"calibration n_bins must be a positive integer, got {n_bins!r}")
    if probs.ndim != 2 or len(probs) == 0:
        raise InputError(f"calibration: probabilities must be a non-empty (N, C) tensor, got {tuple(probs.shape)}")
    if y.ndim != 1 or len(y) != len(probs):
        raise InputError(f"calibration: labels must have shape ({len(probs)},), got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise InputError(f"calibration: labels must be integer class indices, got dtype {y.dtype}")
    n_classes = probs.shape[1]
    probs, y = probs.detach().double().cpu(), y.detach().long().cpu()
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise InputError(f"calibration: labels must be in [0, {n_classes - 1}], found {int(y.min())}..{int(y.max())}")
    check_probabilities(probs)
    conf, pred = probs.max(1)
    correct = (pred == y).double()
    ece = multiclass_calibration_error(probs, y, n_classes, n_bins=n_bins, norm="l1")
    mce = multiclass_calibration_error(probs, y, n_classes, n_bins=n_bins, norm="max")
    # Bins [lo, hi) as in torchmetrics: a confidence on an edge goes to the upper bin, exactly 1 to the top bin.
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, correct)
    safe = count.clamp(min=1)
    return CalibrationResult(
        ece=float(ece),
        mce=float(mce),
        n_bins=n_bins,
        n=len(y),
        accuracy=float(correct.mean()),
        confidence=float(conf.mean()),
        bins={
            "edges": edges.tolist(),
            "confidence": (conf_sum / safe).tolist(),
            "accuracy": (acc_sum / safe).tolist(),
            "count": [int(c) for c in count.tolist()],
        },
    )


def calibration(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_bins: int = 20, batch_size: int = 512
) -> CalibrationResult:
    """Calibration of ``model`` (any classifier returning logits) on (x, y); see ``calibration_from_probs``.

    Args:
        model: any classifier returning logits.
        x: inputs (N, ...) in [-1, 1].
        y: labels (N,) int64.
        n_bins: the number of equal-width confidence bins (default 20).
        batch_size: the prediction batch size (default 512).
    """
    if len(x) == 0:
        raise InputError("calibration: the evaluation set is empty")
    logits = predict_logits(model, x, batch_size).double()
    return calibration_from_probs(logits.softmax(1), y, n_bins)
