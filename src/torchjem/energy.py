"""The energy view of a classifier: JEM wraps any nn.Module that returns logits.

p(y|x) = softmax(f(x))[y], unnormalised log p(x) = logsumexp_y f(x)[y], log p(x, y) = f(x)[y],
E(x) = -log p(x), E(x, y) = -f(x)[y].
"""

from __future__ import annotations

import torch
from torch import nn


class JEM(nn.Module):
    """Joint energy-based model over any classifier.

    ``JEM(classifier)`` is the paper's model: the classifier's logits define everything.
    ``JEM(backbone, n_classes=C, feature_dim=D, energy_head=True)`` is the unconditional
    variant: ``backbone`` returns D features, a linear class head gives the logits and a
    separate scalar head gives log p(x) (the reference code's ``train_wrn_ebm`` model).
    """

    def __init__(
        self,
        classifier: nn.Module,
        *,
        energy_head: bool = False,
        n_classes: int | None = None,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.net = classifier
        if energy_head:
            if n_classes is None or feature_dim is None:
                raise ValueError("JEM(energy_head=True) needs n_classes and feature_dim")
            self.class_head: nn.Module | None = nn.Linear(feature_dim, n_classes)
            self.energy_head: nn.Module | None = nn.Linear(feature_dim, 1)
        else:
            self.class_head = None
            self.energy_head = None

    def _outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, log p(x)) in one forward pass."""
        h = self.net(x)
        if self.class_head is None:
            return h, h.logsumexp(dim=1)
        return self.class_head(h), self.energy_head(h).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        return h if self.class_head is None else self.class_head(h)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(x), shape (N,)."""
        return self._outputs(x)[1]

    def log_py_given_x(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """log p(y|x): (N, C) for every class, or (N,) for the given labels."""
        logp = self.logits(x).log_softmax(dim=1)
        return logp if y is None else logp.gather(1, y[:, None]).squeeze(1)

    def log_pxy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(x, y) = f(x)[y], shape (N,)."""
        return self.logits(x).gather(1, y[:, None]).squeeze(1)

    def energy(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """E(x) = -log p(x), or E(x, y) = -f(x)[y] when labels are given."""
        return -self.log_px(x) if y is None else -self.log_pxy(x, y)


def as_jem(model: nn.Module) -> JEM:
    """Return ``model`` if it is a JEM, otherwise wrap the classifier in one."""
    if isinstance(model, JEM):
        return model
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return as_jem(getattr(model, "jem", model.module))
    return JEM(model)
