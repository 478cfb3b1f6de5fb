"""The persistent replay buffer of chain states (PCD), its serialised form and its per-rank shards."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..utils import DATA_RANGE

INITS = ("uniform", "gaussian", "gaussian_full")
JITTER = 1e-4  # added to the fitted variances (the covariance's diagonal), as JEM++ does


class ReplayBuffer(nn.Module):
    """Persistent buffer of SGLD chain states, split into per-class blocks.

    ``draw`` returns starting points and their indices (a fraction ``reinit_freq`` replaced by
    fresh initial noise); ``put`` writes the chains' final states back to those indices.
    Class-conditional draws come from the block of their class; unconditional draws from
    anywhere. The states are registered buffers: ``.to(device)`` moves them and
    ``state_dict()`` saves them, so the buffer follows the model it is given to.

    ``init``: fresh chains from U(data_range) (``uniform``), or, once :meth:`fit_gaussian` has
    seen the training data, from per-class Gaussians (``gaussian``: diagonal; ``gaussian_full``:
    full covariance, or low rank plus diagonal for large inputs). The Gaussians' parameters are
    registered buffers too (``mean``, ``std``, ``factor``); a draw is
    ``mean + factor @ z1 + std * z2`` (z1, z2 standard normal), clamped to the data range.
    """

    def __init__(
        self,
        size: int,
        shape: tuple[int, ...],
        n_classes: int = 1,
        reinit_freq: float = 0.05,
        init: str = "uniform",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        data_range: tuple[float, float] = DATA_RANGE,
    ) -> None:
        super().__init__()
        if n_classes < 1 or size < n_classes or size % n_classes:
            raise InputError(f"buffer size {size} must be a positive multiple of n_classes={n_classes}")
        if not 0.0 <= reinit_freq <= 1.0:
            raise InputError(f"buffer reinit_freq must be in [0, 1], got {reinit_freq}")
        if init not in INITS:
            raise InputError(f"buffer init must be 'uniform', 'gaussian' or 'gaussian_full', got {init!r}")
        self.size, self.shape, self.n_classes = size, tuple(shape), n_classes
        self.reinit_freq, self.init, self.data_range = reinit_freq, init, data_range
        self.block = size // n_classes
        device = torch.device(device)
        self.register_buffer("labels", torch.arange(size, device=device) // self.block, persistent=False)
        # Per-class Gaussians (JEM++ "informative" init), fitted from data by fit_gaussian; empty until then.
        # mean (C, *shape); std (C, *shape): the diagonal part; factor (C, D, k): the correlated part
        # (k = D: a Cholesky factor; k = rank: scaled principal directions; empty for the diagonal form).
        self.register_buffer("mean", torch.empty(0, device=device))
        self.register_buffer("std", torch.empty(0, device=device))
        self.register_buffer("factor", torch.empty(0, device=device))
        self.register_buffer("x", torch.empty((size, *self.shape), device=device, dtype=dtype))
        self.x = self.noise(self.labels, dtype=dtype)
        # chain health: how many times each chain has been continued since it was (re)started (saved
        # with the buffer; a state without it, or of another layout, starts every chain at 0).
        # ``drawn_age``: the mean age of the chains of the last draw.
        self.register_buffer("age", torch.zeros(size, device=device))
        self.drawn_age: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.x.device

    def fit_gaussian(
        self, x: torch.Tensor, y: torch.Tensor, full: bool = False, *, rank: int = 256, full_max_dim: int = 1024
    ) -> None:
        """Fit per-class Gaussians to data and re-initialise the buffer from them. Examples with a
        negative label (unlabelled, -100) are left out. With D values per example and C classes:

        - ``full=False``: diagonal (mean and std of each value); 2 C D floats.
        - ``full=True``, D <= ``full_max_dim``: full covariance (the class's sample covariance +
          1e-4 on the diagonal), kept as its Cholesky factor; C D (D + 1) floats.
        - ``full=True``, D > ``full_max_dim``: the top ``rank`` principal directions of the class
          (randomised PCA), scaled by the square roots of their variances, plus a diagonal for the
          residual variance (+ 1e-4); C D (rank + 2) floats.

        Statistics are computed in float64, one class at a time, and stored in float32.

        Args:
            x: the training inputs (N, ...) in the data range.
            y: their labels (N,) int64; negative labels are left out.
            full: fit full covariances (or low-rank + diagonal) instead of diagonal ones (default False).
            rank: principal directions kept when D > ``full_max_dim`` (default 256).
            full_max_dim: the largest D with an exact full covariance (default 1024).
        """
        if rank < 1 or full_max_dim < 1:
            raise InputError(f"fit_gaussian needs rank >= 1 and full_max_dim >= 1, got {rank}, {full_max_dim}")
        keep = (y >= 0).to(x.device)
        x = x[keep].to(self.device, torch.float32).flatten(1)
        y = y[keep.to(y.device)].to(self.device)
        dim = x.shape[1]
        if dim != math.prod(self.shape):
            raise InputError(f"gaussian buffer init: data of {dim} values per example, expected shape {self.shape}")
        kind = "diagonal" if not full else "full" if dim <= full_max_dim else "low_rank"
        classes = range(self.n_classes) if self.n_classes > 1 else [None]
        means, stds, factors = [], [], []
        for c in classes:
            xc = x if c is None else x[y == c]
            if len(xc) < 2:
                raise InputError(f"gaussian buffer init needs >= 2 examples of class {c}")
            if kind == "diagonal":
                means.append(xc.mean(0))
                stds.append(xc.std(0))
                continue
            xc = xc.double()
            mean = xc.mean(0)
            xc = xc - mean
            means.append(mean.float())
            if kind == "full":
                cov = xc.T @ xc / (len(xc) - 1)
                cov.diagonal().add_(JITTER)
                chol, info = torch.linalg.cholesky_ex(cov)
                if info.item() != 0:
                    raise InputError(f"gaussian_full buffer init: the covariance of class {c} is not positive definite")
                factors.append(chol.float())
            else:
                factor, resid = _low_rank(xc, rank)
                factors.append(factor.float())
                stds.append(resid.sqrt().float())
        self.mean = torch.stack(means).view(len(means), *self.shape)
        self.std = torch.stack(stds).view(len(stds), *self.shape) if stds else self.mean.new_empty(0)
        self.factor = torch.stack(factors) if factors else self.mean.new_empty(0)
        self.init = "gaussian" if kind == "diagonal" else "gaussian_full"
        self.x = self.noise(self.labels, dtype=self.x.dtype)

    def fitted(self) -> bool:
        """Whether the Gaussians of this buffer's init are there (else fresh chains are uniform)."""
        if self.init == "gaussian":
            return bool(self.mean.numel() and self.std.numel())
        return self.init == "gaussian_full" and bool(self.mean.numel() and self.factor.numel())

    def noise(self, labels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Fresh initial states for chains of the given classes (labels ignored for uniform)."""
        dtype = dtype or self.x.dtype
        n = len(labels)
        lo, hi = self.data_range
        if self.fitted():
            c = labels if len(self.mean) > 1 else torch.zeros_like(labels)
            if self.init == "gaussian":  # diagonal
                eps = torch.randn((n, *self.shape), device=self.device, dtype=dtype)
                return (self.mean[c] + self.std[c] * eps).clamp(lo, hi).to(dtype)
            out = self.mean[c].flatten(1) + self._correlated(c)
            if self.std.numel():
                out = out + self.std[c].flatten(1) * torch.randn_like(out)
            return out.view(n, *self.shape).clamp(lo, hi).to(dtype)
        return torch.rand((n, *self.shape), device=self.device, dtype=dtype) * (hi - lo) + lo

    def _correlated(self, c: torch.Tensor) -> torch.Tensor:
        """factor[c] @ z for each chain, z ~ N(0, I), one matrix product per class (one host sync)."""
        factor = self.factor
        z = torch.randn((len(c), factor.shape[-1]), device=factor.device, dtype=factor.dtype)
        if len(factor) == 1:
            return z @ factor[0].T
        out = z.new_empty((len(c), factor.shape[1]))
        order = torch.argsort(c, stable=True)
        counts = torch.bincount(c, minlength=len(factor)).tolist()
        for k, rows in enumerate(order.split(counts)):
            if len(rows):
                out[rows] = z[rows] @ factor[k].T
        return out

    def draw(self, n: int, y: torch.Tensor | None = None, reinit: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` starting points (or one per label in ``y``) and their buffer indices; with
        ``reinit`` a fraction ``reinit_freq`` of them is fresh noise instead."""
        if y is None:
            idx = torch.randint(0, self.size, (n,), device=self.device)
        else:
            y = y.to(self.device)
            idx = y * self.block + torch.randint(0, self.block, (len(y),), device=self.device)
        x = self.x[idx]
        if reinit and self.reinit_freq > 0:
            fresh = torch.rand(len(idx), device=self.device) < self.reinit_freq
            x = torch.where(fresh.view(-1, *[1] * len(self.shape)), self.noise(self.labels[idx]), x)
            if self.age.device != self.device:
                self.age = self.age.to(self.device)
            self.age[idx] = torch.where(fresh, torch.zeros_like(self.age[idx]), self.age[idx])
        self.drawn_age = self.age.to(self.device)[idx].mean()
        return x, idx

    def put(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        self.x[idx] = x.detach().to(self.x.device, self.x.dtype)
        if self.age.device != self.device:
            self.age = self.age.to(self.device)
        self.age[idx] = self.age[idx] + 1

    def get_extra_state(self) -> dict[str, Any]:
        return {"init": self.init, "reinit_freq": self.reinit_freq}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.init = state.get("init", self.init)
        self.reinit_freq = float(state.get("reinit_freq", self.reinit_freq))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        # The fitted Gaussian's shape depends on the data, so it is assigned, not copied; the states
        # must match this buffer's layout. (Also reads the pre-0.2 dict with "init" / "reinit_freq".)
        x = state_dict.get(prefix + "x")
        if x is None:
            missing.append(prefix + "x")
            return
        if tuple(x.shape) != (self.size, *self.shape):
            raise InputError(f"replay buffer state has shape {tuple(x.shape)}, expected {(self.size, *self.shape)}")
        self.x = x.to(self.device, self.x.dtype).clone()
        age = state_dict.get(prefix + "age")
        fits = age is not None and tuple(age.shape) == (self.size,)
        self.age = age.to(self.device, torch.float32).clone() if fits else torch.zeros(self.size, device=self.device)
        if prefix + "mean" in state_dict:  # the Gaussians come whole from the state (absent parts: empty)
            for key in ("mean", "std", "factor"):
                value = state_dict.get(prefix + key, torch.empty(0))
                setattr(self, key, value.to(self.device, torch.float32).clone())
        self.set_extra_state(_settings(state_dict, prefix))


def _low_rank(xc: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor (D, r), residual variance (D,)) of centred data ``xc`` (n, D), r = min(rank, D): the
    top r principal directions (randomised PCA, torch.pca_lowrank) scaled by their standard
    deviations, zero columns where the class has fewer directions, and the variance of each value
    that they leave out, + the jitter. Memory: the data and O(D r)."""
    n, dim = xc.shape
    r = min(rank, dim)
    _, s, v = torch.pca_lowrank(xc, q=min(r + 10, n, dim), center=False, niter=4)
    factor = v[:, :r] * (s[:r].square() / (n - 1)).sqrt()
    if factor.shape[1] < r:
        factor = torch.cat([factor, factor.new_zeros(dim, r - factor.shape[1])], dim=1)
    resid = (xc.square().sum(0) / (n - 1) - factor.square().sum(1)).clamp_min(0) + JITTER
    return factor, resid


# -- the serialised form (a state_dict), for code that writes or reads one without a buffer ----------
SETTINGS = ("init", "reinit_freq")  # the non-tensor settings, kept in the state's "_extra_state"
GAUSSIANS = ("mean", "std", "factor")  # the fitted init's tensors (registered buffers)


def buffer_state(
    x: torch.Tensor, *, init: str | None = None, reinit_freq: float | None = None, **tensors: torch.Tensor
) -> dict[str, Any]:
    """A state_dict that :meth:`ReplayBuffer.load_state_dict` loads: the chain states ``x``
    (size, *shape), the fitted Gaussians among ``tensors`` (``mean``, ``std``, ``factor``; see
    :meth:`ReplayBuffer.fit_gaussian`) and the settings given (``init``, ``reinit_freq``; one left
    out keeps the loading buffer's own). The tensors are not copied. Raises InputError for another
    tensor name. The inverse of :func:`buffer_settings` (and of picking the tensors of a state)."""
    unknown = sorted(set(tensors) - set(GAUSSIANS))
    if unknown:
        raise InputError(f"buffer_state: unknown replay buffer tensors {unknown}; expected x and {GAUSSIANS}")
    settings = {k: v for k, v in (("init", init), ("reinit_freq", reinit_freq)) if v is not None}
    return {"x": x, **tensors, "_extra_state": settings}


def buffer_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The non-tensor settings (``init``, ``reinit_freq``) in a replay buffer's state_dict: those a
    ReplayBuffer loading it takes (empty when the state has none); JSON-serialisable."""
    return _settings(state)


def _settings(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The settings at ``prefix`` in a state_dict (also the pre-0.2 form: top-level keys)."""
    if prefix + "_extra_state" in state:
        return dict(state[prefix + "_extra_state"])
    return {k: state[prefix + k] for k in SETTINGS if prefix + k in state}


# -- the per-rank shards of a data-parallel run ----------------------------------------------
def shard_size(total: int, n_classes: int, world: int) -> int:
    """Entries per rank: ``total`` rounded down to a multiple of ``n_classes * world``, split."""
    per = total // (n_classes * world) * n_classes
    if per < n_classes:
        raise InputError(
            f"buffer.size={total} is too small for {world} processes: each rank's shard needs at least "
            f"one entry per class ({n_classes}); use buffer.size >= {n_classes * world}"
        )
    return per


def merge_shards(shards: list[torch.Tensor], n_classes: int) -> torch.Tensor:
    """One buffer from the ranks' shards, still in per-class blocks (class c's block holds
    rank 0's chains of class c, then rank 1's, ...), loadable as a single-process buffer."""
    blocks = [s.reshape(n_classes, -1, *s.shape[1:]) for s in shards]
    merged = torch.cat(blocks, dim=1)
    return merged.reshape(-1, *merged.shape[2:])


def split_shard(merged: torch.Tensor, n_classes: int, rank: int, *, world: int, size: int) -> tuple[torch.Tensor, int]:
    """Rank ``rank``'s shard of ``size`` entries from a merged buffer (the inverse of
    :func:`merge_shards` when the layout is unchanged); returns (shard, missing), where the
    ``missing`` entries per class (a larger new layout) are NaN for the caller to refill.

    Args:
        merged: the merged buffer (C * per-class entries, ...), class blocks in order.
        n_classes: the number of classes C.
        rank: this process's rank.
        world: the number of processes.
        size: the entries of the whole new buffer (its shard is ``size // world``).
    """
    per_class = merged.reshape(n_classes, -1, *merged.shape[1:])
    block = size // n_classes
    lo, hi = rank * block, (rank + 1) * block
    part = per_class[:, lo:hi]
    missing = block - part.shape[1]
    if missing > 0:
        pad = torch.full((n_classes, missing, *part.shape[2:]), float("nan"), dtype=part.dtype)
        part = torch.cat([part, pad.to(part.device)], dim=1)
    return part.reshape(-1, *merged.shape[1:]).clone(), max(0, missing)
