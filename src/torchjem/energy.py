"""The energy view of a classifier: JEM wraps any nn.Module that returns logits.

p(y|x) = softmax(f(x))[y], unnormalised log p(x) = logsumexp_y f(x)[y], log p(x, y) = f(x)[y],
E(x) = -log p(x), E(x, y) = -f(x)[y].
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import InputError


class JEM(nn.Module):
    """Joint energy-based model over any classifier.

    ``JEM(classifier)`` is the paper's model: the classifier's logits define everything.
    ``JEM(backbone, energy_head=True, n_classes=C)`` is the unconditional variant: a linear class
    head gives the logits and a separate scalar head gives log p(x) (the reference code's
    ``train_wrn_ebm`` model), both on the backbone's features. Features follow timm's names:
    ``forward_head(forward_features(x), pre_logits=True)`` when the backbone has both (a timm
    model), else ``forward_features(x)``, else ``backbone(x)``; their size is ``feature_dim``,
    by default the backbone's ``num_features``.

    ``residual=True`` (with ``energy_head``): log p(x) = logsumexp_y f(x)[y] + h(x), the
    classifier's own log p(x) plus the energy head as a learned correction. The logsumexp is taken
    with the class head's weights detached, so that a p(x) term trains the backbone and the energy
    head but never the class head: the logit scale the classifier learned (its calibration) is
    left to cross-entropy. Input gradients (SGLD) go through both parts. (torchjem's option for
    fine-tuning a trained classifier into a JEM, issue 22; docs/recipes.md has the measurements.)
    """

    def __init__(
        self,
        classifier: nn.Module,
        *,
        energy_head: bool = False,
        n_classes: int | None = None,
        feature_dim: int | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and not energy_head:
            raise InputError("JEM(residual=True) needs energy_head=True (the residual is that head)")
        self.residual = residual
        self.net = classifier
        self.class_head: nn.Module | None = None
        self.energy_head: nn.Module | None = None
        if energy_head:
            dim = feature_dim if feature_dim is not None else getattr(classifier, "num_features", None)
            if n_classes is None or dim is None:
                raise InputError(
                    "JEM(energy_head=True) needs n_classes and the feature size (feature_dim, or a backbone with "
                    "a num_features attribute)"
                )
            self.class_head = nn.Linear(dim, n_classes)
            self.energy_head = nn.Linear(dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features (energy-head models) or logits (plain classifiers)."""
        net = self.net
        if self.class_head is None:
            return net(x)
        if hasattr(net, "forward_features") and hasattr(net, "forward_head"):
            return net.forward_head(net.forward_features(x), pre_logits=True)
        if hasattr(net, "forward_features"):
            return net.forward_features(x)
        return net(x)

    def joint(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, C), unnormalised log p(x) (N,)) in one forward pass."""
        h = self.features(x)
        if self.class_head is None:
            return h, h.logsumexp(dim=1)
        logits, lpx = self.class_head(h), self.energy_head(h).squeeze(1)
        if self.residual:
            head = self.class_head
            lpx = lpx + nn.functional.linear(h, head.weight.detach(), head.bias.detach()).logsumexp(dim=1)
        return logits, lpx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return h if self.class_head is None else self.class_head(h)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(x), shape (N,)."""
        return self.joint(x)[1]

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
    """``model`` if it is a JEM, the JEM inside a DistributedDataParallel wrapper, otherwise a new
    JEM over the classifier."""
    if isinstance(model, JEM):
        return model
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return as_jem(getattr(model, "jem", model.module))  # torchjem's wrapper exposes its JEM
    return JEM(model)
