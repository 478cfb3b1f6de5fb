"""Classification figures: accuracy and negative log-likelihood."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..energy import as_jem


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for ``x`` in eval mode (mode restored after), batched."""
    jem = as_jem(model)
    was = jem.training
    jem.eval()
    try:
        device = next(jem.parameters()).device
        return torch.cat(
            [jem.logits(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
        )
    finally:
        jem.train(was)


def classification(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """{"accuracy", "nll", "n"} on (x, y)."""
    if len(x) == 0:
        raise ValueError("classification: the evaluation set is empty")
    logits = predict_logits(model, x, batch_size)
    y = y.cpu()
    return {
        "accuracy": float((logits.argmax(1) == y).float().mean()),
        "nll": float(F.cross_entropy(logits, y)),
        "n": len(y),
    }
