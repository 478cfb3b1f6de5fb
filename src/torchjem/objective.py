"""The hybrid JEM loss for one batch, with its diagnostics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .energy import as_jem
from .errors import InputError
from .sampling import ChainSampler
from .utils import DATA_RANGE, frozen_bn_stats

IGNORE = -100  # the label of an unlabelled example (PyTorch's cross-entropy ignore_index)


@dataclass
class Batch:
    """One step's inputs after the random draws: data (noised), the p(x) term's data when it
    differs (``x_px``), and the samples of the p(x) and p(x|y) terms (with their labels)."""

    x: torch.Tensor
    y: torch.Tensor
    x_px: torch.Tensor | None
    x_q: torch.Tensor | None
    xy_q: torch.Tensor | None
    y_l: torch.Tensor | None
    age: torch.Tensor | None = None  # the mean age of the p(x) chains drawn from the buffer (chain health)
    scale: float = 1.0  # multiplier of the p(x) and p(x|y) weights this step (0: a classifier step)
    sgld_steps: int = 0  # the SGLD steps the chains ran this step (what the step cost)


def joint_passes(
    jem: nn.Module, x: torch.Tensor, samples: torch.Tensor | None = None, separate: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, log p(x))`` of ``cat(x, samples)`` through ``jem`` (a JEM): one forward, or with
    ``separate`` (nets with batch norm) one pass each, so that batch statistics are not mixed, the
    samples' pass leaving the running statistics alone. Under DDP this runs inside the wrapper's
    one forward (torchjem.training.distributed), so both passes count as one for its gradient hooks."""
    if samples is None:
        return jem.joint(x)
    if not separate:
        return jem.joint(torch.cat([x, samples]))
    logits_d, lpx_d = jem.joint(x)
    with frozen_bn_stats(jem):
        logits_s, lpx_s = jem.joint(samples)
    return torch.cat([logits_d, logits_s]), torch.cat([lpx_d, lpx_s])


class HybridObjective:
    """log p(y|x) + log p(x) (+ log p(x|y)), the negative samples drawn by ``sampler``.

    Weights: ``pyx`` for cross-entropy, ``px`` for the contrastive p(x) term, ``pxy`` for the
    class-conditional term. ``data_noise`` adds N(0, sigma^2) to the data inputs (the paper's
    sigma). ``energy_l2`` penalises weight * (mean (log p(x_data) - a)^2 + mean (log p(x_sample) -
    a)^2), the maintainers' advice against divergence, with the anchor ``a = energy_anchor`` (0: the
    plain penalty on E^2; ``objective.energy_anchor: start`` sets it to the data's mean log p(x) when
    the p(x) term starts, so that a trained classifier's energies are held near their own level
    instead of pulled to 0, which flattens its softmax). With ``px == pxy == 0`` it is a plain
    classifier loss (no sampling, no sampler needed). ``separate_passes``: data and samples through
    separate forward passes (for nets with BatchNorm, so that their batch statistics are not
    mixed). ``n_chains``: the p(x) term's chains per step (None: one per data example, the
    paper's; fewer make a step cheaper, the data mean of log p(x) still over the whole batch).

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
        separate_passes: bool = False,
        n_chains: int | None = None,
    ) -> None:
        if n_chains is not None and n_chains < 1:
            raise InputError(f"n_chains must be >= 1 or None (one per example), got {n_chains}")
        self.sampler, self.n_chains = sampler, n_chains
        self.pyx, self.px, self.pxy = pyx, px, pxy
        self.data_noise, self.energy_l2, self.separate_passes = data_noise, energy_l2, separate_passes
        self.energy_anchor = 0.0  # the log p(x) level the energy penalty holds the energies near
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

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_px: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Loss and diagnostics (0-dim tensors, not synchronised to the host). ``x_px``: the
        data the p(x) term sees when it differs from ``x`` (SADA-JEM: un-augmented images)."""
        return self.loss(model, self.draw(model, x, y, x_px=x_px))

    def draw(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        x_px: torch.Tensor | None = None,
        scale: float = 1.0,
        sgld_steps: int | None = None,
    ) -> Batch:
        """The random part of a step: data noise and the SGLD samples (written back to the buffer).
        A second ``loss`` on the same Batch (SAM's second pass) sees exactly the same inputs.

        Args:
            model: the JEM (or classifier, or DDP wrapper) being trained.
            x: data inputs (N, ...) in the data range.
            y: labels (N,) int64; -100 marks an unlabelled example.
            x_px: the data the p(x) term sees when it differs from ``x`` (N, ...) (default None: ``x``).
            scale: multiplier of the p(x) and p(x|y) weights this step (default 1.0; 0: no chains
                run, a classifier step: the schedule of ``objective.px_from_epoch`` / ``px_every`` /
                ``px_ramp_steps``). InputError when negative.
            sgld_steps: the chains' steps this step (default None: the sampler's K).
        """
        if not scale >= 0:
            raise InputError(f"scale must be >= 0, got {scale}")
        jem = as_jem(model)  # the chains run on the bare JEM, with no collective under DDP
        if self.data_noise > 0:
            x = x + self.data_noise * torch.randn_like(x)
            if x_px is not None:
                x_px = x_px + self.data_noise * torch.randn_like(x_px)
        x_q = xy_q = y_l = age = None
        steps, k = 0, {} if sgld_steps is None else {"n_steps": sgld_steps}
        if self.needs_samples and scale > 0:  # (a sampler without n_steps: one of the tests' stand-ins)
            steps = getattr(self.sampler, "n_steps", 0) if sgld_steps is None else sgld_steps
        if self.px > 0 and scale > 0:
            x_q = self.sampler.sample(jem, self.n_chains or len(x), **k)
            buffer = getattr(self.sampler, "buffer", None)
            age = buffer.drawn_age if buffer is not None else None
        if self.pxy > 0 and scale > 0:
            y_l = y[y != IGNORE]  # (a boolean index synchronises with the device: only for this term)
            xy_q = self.sampler.sample(jem, y=y_l, **k) if len(y_l) else None
        return Batch(x, y, x_px if scale > 0 else None, x_q, xy_q, y_l, age, scale=scale, sgld_steps=steps)

    def loss(self, model: nn.Module, b: Batch) -> tuple[torch.Tensor, dict]:
        """The loss of a drawn Batch. Data and samples go through one forward pass (exact and
        fastest without batch norm); with ``separate_passes`` (nets with BatchNorm) through one
        pass each, so that batch statistics are not mixed, and the sample pass leaves the running
        statistics alone."""
        data = [b.x] + ([b.x_px] if b.x_px is not None else [])
        samples = [s for s in (b.x_q, b.xy_q) if s is not None]
        x_d = torch.cat(data) if len(data) > 1 else b.x
        x_s = (torch.cat(samples) if len(samples) > 1 else samples[0]) if samples else None
        # What the loss runs through: the DDP wrapper when there is one (it has `joint_passes`: both
        # passes in one DDP forward, so the gradients are averaged once), else the JEM itself.
        passes = getattr(model, "joint_passes", None)
        if passes is not None:
            logits_all, lpx_all = passes(x_d, x_s, self.separate_passes)
        else:
            logits_all, lpx_all = joint_passes(as_jem(model), x_d, x_s, self.separate_passes)
        n, y = len(b.x), b.y
        labelled = y != IGNORE
        logits = logits_all[:n]
        lpx_data = lpx_all[n : 2 * n] if b.x_px is not None else lpx_all[:n]
        offset = n * len(data)
        stats: dict[str, torch.Tensor] = {}
        loss = b.x.new_zeros(())

        if self.pyx > 0:
            n_lab = labelled.sum().clamp_min(1)
            ce = F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / n_lab
            acc = ((logits.argmax(1) == y) & labelled).sum() / n_lab
            loss = loss + self.pyx * ce
            stats["ce"], stats["acc"] = ce.detach(), acc.detach().float()

        if b.x_q is not None:
            lpx_q = lpx_all[offset : offset + len(b.x_q)]
            offset += len(b.x_q)  # (chain_health below reads the samples' logits just before offset)
            # Energies are -log p: E_data = -lpx_data, E_sample = -lpx_q.
            l_px = -(lpx_data.mean() - lpx_q.mean())
            loss = loss + b.scale * self.px * l_px
            if self.energy_l2 > 0:  # logged on its own: the loss is then ce + loss_px + this
                a = self.energy_anchor
                penalty = b.scale * self.energy_l2 * ((lpx_data - a).pow(2).mean() + (lpx_q - a).pow(2).mean())
                loss = loss + penalty
                stats["loss_energy_l2"] = penalty.detach()
            stats["loss_px"] = l_px.detach()
            stats["energy_data"] = -lpx_data.mean().detach()
            stats["energy_sample"] = -lpx_q.mean().detach()
            stats["energy_gap"] = stats["energy_sample"] - stats["energy_data"]
            stats.update(chain_health(b.x, b.x_q, logits_all[offset - len(b.x_q) : offset].detach()))
            if b.age is not None:
                stats["buffer_age"] = b.age.float()
        if b.xy_q is not None:
            f_data = logits[labelled].gather(1, b.y_l[:, None]).mean()
            f_q = logits_all[offset:].gather(1, b.y_l[:, None]).mean()
            l_pxy = -(f_data - f_q)
            loss = loss + b.scale * self.pxy * l_pxy
            stats["loss_pxy"] = l_pxy.detach()
        elif self.pxy > 0 and b.scale > 0:  # no labelled example in this batch (same keys on every rank)
            stats["loss_pxy"] = loss.new_zeros(()).detach()
        stats["loss"] = loss.detach()
        return loss, stats


RANGE_MARGIN = 0.05  # chain health: a sample value counts as out of range beyond 5% of the range's width past it


def chain_health(x: torch.Tensor, x_q: torch.Tensor, logits_q: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a step's samples ``x_q`` say about the chains, against the data ``x`` (0-dim device
    tensors, no host synchronisation):

    - ``sample_norm``, ``data_norm``: mean L2 norm of one sample / one data input; ``norm_ratio``
      their ratio (about 1 for healthy chains; runaway chains grow it without bound); ``sample_rms``
      the samples' root-mean-square value (above the range's half-width only outside the range:
      fresh uniform noise is 0.58, so data of small norm do not make fresh chains look runaway);
    - ``out_of_range``: the fraction of sample values beyond the data range by more than
      ``RANGE_MARGIN`` of its width (0 for clamped chains);
    - ``class_balance``: the entropy of the classes the model predicts for the samples over
      log(classes): 1 = every class equally often, 0 = all samples one class (1 for one class)."""
    lo, hi = DATA_RANGE
    m = RANGE_MARGIN * (hi - lo)
    sample_norm = x_q.flatten(1).norm(dim=1).mean()
    data_norm = x.flatten(1).norm(dim=1).mean()
    n_classes = logits_q.shape[1]
    freq = F.one_hot(logits_q.argmax(1), n_classes).to(logits_q.dtype).mean(0)
    entropy = -(freq * freq.clamp_min(1e-12).log()).sum()
    balance = entropy / math.log(n_classes) if n_classes > 1 else torch.ones_like(entropy)
    return {
        "sample_norm": sample_norm,
        "data_norm": data_norm,
        "norm_ratio": sample_norm / data_norm.clamp_min(1e-12),
        "sample_rms": x_q.pow(2).mean().sqrt(),
        "out_of_range": ((x_q < lo - m) | (x_q > hi + m)).to(x_q.dtype).mean(),
        "class_balance": balance,
    }
