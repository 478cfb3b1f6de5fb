"""The hybrid JEM loss for one batch, with its diagnostics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .energy import as_jem
from .errors import InputError
from .sampling import ChainSampler

IGNORE = -100  # the label of an unlabelled example (PyTorch's cross-entropy ignore_index)


class HybridObjective:
    """log p(y|x) + log p(x) (+ log p(x|y)), the negative samples drawn by ``sampler``.

    Weights: ``pyx`` for cross-entropy, ``px`` for the contrastive p(x) term, ``pxy`` for the
    class-conditional term. ``data_noise`` adds N(0, sigma^2) to the data inputs (the paper's
    sigma). ``energy_l2`` penalises weight * (E_data^2 + E_sample^2), the maintainers' advice
    against divergence. With ``px == pxy == 0`` it is a plain classifier loss (no sampling, no
    sampler needed).

    ``loss, stats = objective(model, x, y)``: ``model`` is any classifier returning logits (or a
    JEM, or torchjem's DistributedDataParallel wrapper); labels ``y == -100`` mark unlabelled
    examples, which feed only the p(x) term.
    """

    def __init__(
        self,
        sampler: ChainSampler | None = None,
        *,
        pyx: float = 1.0,
        px: float = 1.0,
        pxy: float = 0.0,
        data_noise: float = 0.03,
        energy_l2: float = 0.0,
    ) -> None:
        self.sampler = sampler
        self.pyx, self.px, self.pxy = pyx, px, pxy
        self.data_noise, self.energy_l2 = data_noise, energy_l2
        if self.needs_samples and sampler is None:
            raise InputError("the p(x) and p(x|y) terms need a sampler (a ChainSampler)")

    @property
    def needs_samples(self) -> bool:
        return self.px > 0 or self.pxy > 0

    def __repr__(self) -> str:
        return (
            f"HybridObjective(pyx={self.pyx}, px={self.px}, pxy={self.pxy}, data_noise={self.data_noise}, "
            f"energy_l2={self.energy_l2})"
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Loss and diagnostics (0-dim tensors, not synchronised to the host)."""
        # What the loss runs through: the DDP wrapper when there is one (it has `joint`), so the
        # gradients are averaged; the chains run on the bare JEM, with no collective.
        jem = as_jem(model)
        joint = model.joint if hasattr(model, "joint") else jem.joint
        if self.data_noise > 0:
            x = x + self.data_noise * torch.randn_like(x)
        labelled = y != IGNORE
        stats: dict[str, torch.Tensor] = {}
        loss = x.new_zeros(())

        x_q = xy_q = y_l = None
        if self.px > 0:
            x_q = self.sampler.sample(jem, len(x))
        if self.pxy > 0:
            y_l = y[labelled]  # (a boolean index synchronises with the device: only for this term)
            xy_q = self.sampler.sample(jem, y=y_l) if len(y_l) else None

        # One forward over data and samples together: a single pass through the net.
        parts = [x] + [s for s in (x_q, xy_q) if s is not None]
        logits_all, lpx_all = joint(torch.cat(parts) if len(parts) > 1 else x)
        n = len(x)
        logits, lpx_data = logits_all[:n], lpx_all[:n]

        if self.pyx > 0:
            n_lab = labelled.sum().clamp_min(1)
            ce = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / n_lab
            acc = ((logits.argmax(1) == y) & labelled).sum() / n_lab
            loss = loss + self.pyx * ce
            stats["ce"], stats["acc"] = ce.detach(), acc.detach().float()

        offset = n
        if x_q is not None:
            lpx_q = lpx_all[offset : offset + len(x_q)]
            offset += len(x_q)
            # Energies are -log p: E_data = -lpx_data, E_sample = -lpx_q.
            l_px = -(lpx_data.mean() - lpx_q.mean())
            loss = loss + self.px * l_px
            if self.energy_l2 > 0:
                loss = loss + self.energy_l2 * (lpx_data.pow(2).mean() + lpx_q.pow(2).mean())
            stats["loss_px"] = l_px.detach()
            stats["energy_data"] = -lpx_data.mean().detach()
            stats["energy_sample"] = -lpx_q.mean().detach()
            stats["energy_gap"] = stats["energy_sample"] - stats["energy_data"]
            stats["sample_norm"] = x_q.flatten(1).norm(dim=1).mean()
        if xy_q is not None:
            f_data = logits[labelled].gather(1, y_l[:, None]).mean()
            f_q = logits_all[offset:].gather(1, y_l[:, None]).mean()
            l_pxy = -(f_data - f_q)
            loss = loss + self.pxy * l_pxy
            stats["loss_pxy"] = l_pxy.detach()
        elif self.pxy > 0:  # no labelled example in this batch (same keys on every rank)
            stats["loss_pxy"] = loss.new_zeros(()).detach()
        stats["loss"] = loss.detach()
        return loss, stats
