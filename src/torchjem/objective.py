"""The hybrid JEM loss for one batch, with its diagnostics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .energy import JEM
from .sampling import SGLD, ReplayBuffer


@dataclass
class HybridObjective:
    """log p(y|x) + log p(x) (+ log p(x|y)) with SGLD samples from a replay buffer.

    Weights: ``pyx`` for cross-entropy, ``px`` for the contrastive p(x) term, ``pxy`` for the
    class-conditional term. ``data_noise`` adds N(0, sigma^2) to the data inputs (the paper's
    sigma). ``energy_l2`` penalises weight * (E_data^2 + E_sample^2), the maintainers' advice
    against divergence. With ``px == pxy == 0`` it is a plain classifier loss (no sampling).
    """

    pyx: float = 1.0
    px: float = 1.0
    pxy: float = 0.0
    data_noise: float = 0.03
    energy_l2: float = 0.0

    @property
    def needs_samples(self) -> bool:
        return self.px > 0 or self.pxy > 0

    def __call__(
        self,
        jem: JEM,
        x: torch.Tensor,
        y: torch.Tensor,
        sampler: SGLD | None = None,
        buffer: ReplayBuffer | None = None,
        labelled: torch.Tensor | None = None,
        sample_model: torch.nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and diagnostics (0-dim tensors, not synchronised to the host).

        ``labelled`` (bool, N) marks the examples whose labels feed the cross-entropy and the
        p(x|y) term; every example feeds p(x). ``sample_model`` is the network the chains run
        on (the unwrapped module under DistributedDataParallel); defaults to ``jem``.
        """
        if self.data_noise > 0:
            x = x + self.data_noise * torch.randn_like(x)
        stats: dict[str, torch.Tensor] = {}
        loss = x.new_zeros(())
        chain_model = sample_model if sample_model is not None else jem

        x_q = xy_q = None
        if self.needs_samples:
            if sampler is None or buffer is None:
                raise ValueError("the p(x) and p(x|y) terms need a sampler and a replay buffer")
            if self.px > 0:
                x0, idx = buffer.draw(len(x))
                x_q = sampler.run(chain_model, x0)
                buffer.put(idx, x_q)
            if self.pxy > 0:
                y_l = y if labelled is None else y[labelled]
                x0, idx = buffer.draw(len(y_l), y_l)
                xy_q = sampler.run(chain_model, x0, y_l)
                buffer.put(idx, xy_q)

        # One forward over data and samples together: a single pass through the net.
        parts = [x] + [s for s in (x_q, xy_q) if s is not None]
        logits_all, lpx_all = jem._outputs(torch.cat(parts) if len(parts) > 1 else x)
        n = len(x)
        logits, lpx_data = logits_all[:n], lpx_all[:n]

        if self.pyx > 0:
            if labelled is None:
                ce = F.cross_entropy(logits, y)
                acc = (logits.argmax(1) == y).float().mean()
            else:
                lab = labelled.float()
                per = F.cross_entropy(logits, y, reduction="none")
                ce = (per * lab).sum() / lab.sum().clamp_min(1)
                acc = ((logits.argmax(1) == y).float() * lab).sum() / lab.sum().clamp_min(1)
            loss = loss + self.pyx * ce
            stats["ce"], stats["acc"] = ce.detach(), acc.detach()

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
            y_l = y if labelled is None else y[labelled]
            data_logits = logits if labelled is None else logits[labelled]
            f_data = data_logits.gather(1, y_l[:, None]).mean()
            f_q = logits_all[offset:].gather(1, y_l[:, None]).mean()
            l_pxy = -(f_data - f_q)
            loss = loss + self.pxy * l_pxy
            stats["loss_pxy"] = l_pxy.detach()
        stats["loss"] = loss.detach()
        return loss, stats
