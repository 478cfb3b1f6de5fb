"""The chains' samplers (SGLD; JEM++'s proximal Langevin, PYLD), the persistent replay buffer (PCD)
and the chain sampler that owns both."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .energy import JEM, as_jem
from .errors import ConfigError, InputError
from .utils import frozen, model_device


class SGLD:
    """Stochastic gradient Langevin dynamics on log p(x) (or log p(x, y) given labels).

    x <- x + step_size * d log p / dx + noise * N(0, I), for ``n_steps`` steps. Gradients are
    taken with respect to x only (parameters are frozen for the duration), no graph outlives a
    step, and the network runs in eval mode, as in the reference code.
    """

    def __init__(
        self,
        n_steps: int = 20,
        step_size: float = 1.0,
        noise: float = 0.01,
        clamp: tuple[float, float] | None = None,
        grad_clamp: float | None = None,
        mode: str = "eval",
    ) -> None:
        if n_steps < 0:
            raise InputError(f"SGLD n_steps must be >= 0, got {n_steps}")
        if not step_size > 0 or not noise >= 0:  # also refuses NaN
            raise InputError(f"SGLD needs step_size > 0 and noise >= 0, got {step_size}, {noise}")
        if mode not in ("eval", "train"):
            raise InputError(f"SGLD mode must be 'eval' or 'train', got {mode!r}")
        self.mode = mode
        self.n_steps = n_steps
        self.step_size = step_size
        self.noise = noise
        self.clamp = clamp
        self.grad_clamp = grad_clamp

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        n_steps: int | None = None,
    ) -> torch.Tensor:
        """Run the chains from ``x``; returns detached samples of the same shape."""
        jem = as_jem(model)
        steps = self.n_steps if n_steps is None else n_steps
        x = x.detach().clone()
        with frozen(jem, self.mode), torch.enable_grad():
            for _ in range(steps):
                x = self.step(jem, x, y)
        return x

    def step(self, jem: JEM, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One SGLD step (callers freeze the parameters; see ``run``)."""
        x = x.detach().requires_grad_(True)
        logp = jem.log_px(x) if y is None else jem.log_pxy(x, y)
        (grad,) = torch.autograd.grad(logp.sum(), x)
        if self.grad_clamp is not None:
            grad = grad.clamp(-self.grad_clamp, self.grad_clamp)
        x = x.detach().add_(grad, alpha=self.step_size)
        if self.noise > 0:
            x.add_(torch.randn_like(x), alpha=self.noise)
        if self.clamp is not None:
            x.clamp_(*self.clamp)
        return x


class _Reached(Exception):
    """Raised by a forward hook to stop a forward pass at a module; carries what the hook saw."""

    def __init__(self, payload: Any) -> None:
        super().__init__()
        self.payload = payload


@contextlib.contextmanager
def _eager(model: nn.Module) -> Iterator[None]:
    """Modules compiled in place (``train.compile``: ``_compiled_call_impl``) run eagerly inside:
    PYLD's forward hooks need the layer's real output, which a compiled graph does not expose."""
    saved = [(m, m._compiled_call_impl) for m in model.modules() if getattr(m, "_compiled_call_impl", None)]
    for m, _ in saved:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, call in saved:
            m._compiled_call_impl = call


class PYLD:
    """Proximal Langevin dynamics (JEM++'s PYLD, after YOPO) on log p(x) (or log p(x, y) given labels).

    Each of ``n_steps`` outer steps runs one full forward and backward for
    p = d log p / d h, h the first layer's output (d f(x)[y] / d h for conditional chains); then
    ``inner_steps`` inner steps run the network only up to that layer and ascend <h(x), p>:
    x <- clamp(x + inner_step_size * clamp(d <h(x), p> / dx, -grad_clamp, grad_clamp), *data_range).
    After the inner steps ``noise`` * N(0, I) is added (then ``clamp``, when given). An inner step
    costs a pass through the first layer, not through the network.

    The first layer is ``first_layer`` (a module path in the JEM, such as ``net.conv1``, or in the
    classifier, such as ``conv1``), else the first module with parameters of its own to finish in
    a forward pass (found with forward hooks on each run, so any classifier works). Whatever the
    network does to x before that layer (a Flatten, a normalisation) is re-run by the inner steps;
    a layer called twice in a forward counts with its first call. As in :class:`SGLD`, the
    parameters are frozen, no parameter gradient is left and the network runs in eval mode; a
    network compiled in place (``train.compile``) runs eagerly here (hooks need the real tensors).

    Same interface as :class:`SGLD` (``run(model, x, y=None, n_steps=None)``); ``step_size`` is
    the inner step size, for code that reads an SGLD's settings.
    """

    def __init__(
        self,
        n_steps: int = 5,
        inner_steps: int = 5,
        inner_step_size: float = 0.2,
        noise: float = 0.0,
        clamp: tuple[float, float] | None = None,
        grad_clamp: float = 0.01,
        first_layer: str | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
        mode: str = "eval",
    ) -> None:
        if mode not in ("eval", "train"):
            raise InputError(f"PYLD mode must be 'eval' or 'train', got {mode!r}")
        self.mode = mode
        if n_steps < 0 or inner_steps < 1:
            raise InputError(f"PYLD needs n_steps >= 0 and inner_steps >= 1, got {n_steps}, {inner_steps}")
        if not inner_step_size > 0 or not noise >= 0 or not grad_clamp > 0:  # also refuses NaN
            raise InputError(
                f"PYLD needs inner_step_size > 0, noise >= 0 and grad_clamp > 0, got {inner_step_size}, {noise}, "
                f"{grad_clamp}"
            )
        if first_layer is not None and not first_layer.strip():
            raise ConfigError("config sgld.first_layer = '' is invalid: expected a module path such as net.conv1")
        self.n_steps, self.inner_steps, self.inner_step_size = n_steps, inner_steps, inner_step_size
        self.noise, self.clamp, self.grad_clamp = noise, clamp, grad_clamp
        self.first_layer, self.data_range = first_layer, data_range

    @property
    def step_size(self) -> float:
        return self.inner_step_size

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        n_steps: int | None = None,
    ) -> torch.Tensor:
        """Run the chains from ``x``; returns detached samples of the same shape."""
        jem = as_jem(model)
        steps = self.n_steps if n_steps is None else n_steps
        x = x.detach().clone()
        if steps <= 0:
            return x
        with frozen(jem, self.mode), _eager(jem), torch.enable_grad():
            _, layer = self.find_first_layer(jem, x)
            for _ in range(steps):
                x = self.step(jem, x, y, layer)
        return x

    def find_first_layer(self, model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module]:
        """(name in the JEM, module) of the layer the inner steps run through; ``x``: a batch to
        probe the forward order with (the probe stops at the first layer)."""
        jem = as_jem(model)
        names = {m: name for name, m in jem.named_modules()}
        if self.first_layer is not None:
            for root, prefix in ((jem, ""), (jem.net, "net.")):
                try:
                    module = root.get_submodule(self.first_layer)
                except AttributeError:
                    continue
                return prefix + self.first_layer, module
            known = [n for m, n in names.items() if n and any(True for _ in m.parameters(recurse=False))]
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise ConfigError(
                f"config sgld.first_layer = {self.first_layer!r}: the model has no module of that name; expected "
                f"a module path in the JEM (net.<path in the classifier>) or in the classifier; modules with "
                f"parameters: {shown or 'none'}"
            )
        own = [m for m in jem.modules() if any(True for _ in m.parameters(recurse=False))]
        if not own:
            raise InputError("PYLD needs a model with parameters (its first layer's output gives the inner steps)")

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _Reached(module)

        handles = [m.register_forward_hook(stop) for m in own]
        try:
            with torch.no_grad():
                jem.joint(x)
        except _Reached as reached:
            return names[reached.payload], reached.payload
        finally:
            for h in handles:
                h.remove()
        raise InputError("PYLD: no module with parameters ran in the model's forward; name one with sgld.first_layer")

    def step(self, jem: JEM, x: torch.Tensor, y: torch.Tensor | None, layer: nn.Module) -> torch.Tensor:
        """One outer step: p from a full pass, then the inner steps (callers freeze the parameters)."""
        x = x.detach().requires_grad_(True)
        seen: list[torch.Tensor] = []

        def capture(module: nn.Module, args: Any, output: Any) -> Any:
            if seen:
                return None
            if not torch.is_tensor(output):
                raise InputError(f"PYLD: the first layer returns {type(output).__name__}, not a tensor")
            seen.append(output)
            return output.clone()  # later in-place ops (ReLU(inplace=True)) leave the captured output alone

        handle = layer.register_forward_hook(capture)
        try:
            logp = jem.log_px(x) if y is None else jem.log_pxy(x, y)
        finally:
            handle.remove()
        if not seen:
            raise InputError("PYLD: the first layer did not run in the model's forward; name one with sgld.first_layer")
        if not seen[0].requires_grad:
            raise InputError("PYLD: the first layer's output does not depend on x; name a layer with sgld.first_layer")
        (p,) = torch.autograd.grad(logp.sum(), seen[0])
        p = p.detach()
        seen.clear()
        lo, hi = self.data_range
        for _ in range(self.inner_steps):
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad((self._layer_output(jem, layer, x) * p).sum(), x)
            x = x.detach().add_(grad.clamp(-self.grad_clamp, self.grad_clamp), alpha=self.inner_step_size)
            x.clamp_(lo, hi)
        x = x.detach()
        if self.noise > 0:
            x.add_(torch.randn_like(x), alpha=self.noise)
        if self.clamp is not None:
            x.clamp_(*self.clamp)
        return x

    @staticmethod
    def _layer_output(jem: JEM, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The first layer's output for ``x``: the forward runs up to that layer and stops."""

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _Reached(output)

        handle = layer.register_forward_hook(stop)
        try:
            jem.joint(x)
        except _Reached as reached:
            return reached.payload
        finally:
            handle.remove()
        raise InputError("PYLD: the first layer did not run in the model's forward; name one with sgld.first_layer")


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
        data_range: tuple[float, float] = (-1.0, 1.0),
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

    @property
    def device(self) -> torch.device:
        return self.x.device

    def fit_gaussian(
        self, x: torch.Tensor, y: torch.Tensor, full: bool = False, rank: int = 256, full_max_dim: int = 1024
    ) -> None:
        """Fit per-class Gaussians to data and re-initialise the buffer from them. Examples with a
        negative label (unlabelled, -100) are left out. With D values per example and C classes:

        - ``full=False``: diagonal (mean and std of each value); 2 C D floats.
        - ``full=True``, D <= ``full_max_dim``: full covariance (the class's sample covariance +
          1e-4 on the diagonal), kept as its Cholesky factor; C D (D + 1) floats.
        - ``full=True``, D > ``full_max_dim``: the top ``rank`` principal directions of the class
          (randomised PCA), scaled by the square roots of their variances, plus a diagonal for the
          residual variance (+ 1e-4); C D (rank + 2) floats.

        Statistics are computed in float64, one class at a time, and stored in float32."""
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
        return x, idx

    def put(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        self.x[idx] = x.detach().to(self.x.device, self.x.dtype)

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
        if prefix + "mean" in state_dict:  # the Gaussians come whole from the state (absent parts: empty)
            for key in ("mean", "std", "factor"):
                value = state_dict.get(prefix + key, torch.empty(0))
                setattr(self, key, value.to(self.device, torch.float32).clone())
        legacy = {k: state_dict[prefix + k] for k in ("init", "reinit_freq") if prefix + k in state_dict}
        self.set_extra_state(state_dict.get(prefix + "_extra_state", legacy))


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


class ChainSampler(nn.Module):
    """The negative samples of a JEM: SGLD chains started from a replay buffer (persistent chains,
    PCD) or, without one, from fresh U(data_range) noise (short-run chains).

    ``sample(model, n, y=None)`` draws the starting points, runs ``sgld`` (an :class:`SGLD` or a
    :class:`PYLD`) on ``model`` and writes the final states back to the buffer. The buffer follows
    the model's device.
    """

    def __init__(
        self,
        sgld: SGLD | PYLD,
        buffer: ReplayBuffer | None = None,
        shape: tuple[int, ...] | None = None,
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if buffer is None and shape is None:
            raise InputError("ChainSampler without a replay buffer needs the sample shape")
        self.sgld = sgld
        self.buffer = buffer
        self.shape = tuple(buffer.shape if buffer is not None else shape)
        self.data_range = buffer.data_range if buffer is not None else data_range

    @property
    def n_steps(self) -> int:
        return self.sgld.n_steps

    def sample(
        self,
        model: nn.Module,
        n: int | None = None,
        y: torch.Tensor | None = None,
        n_steps: int | None = None,
        update: bool = True,
        reinit: bool = True,
    ) -> torch.Tensor:
        """``n`` samples (or one per label in ``y``, class-conditional) after ``n_steps`` (default
        the sampler's K). ``update=False`` leaves the buffer as it was; ``reinit=False`` starts
        every chain from the buffer (no fresh chains)."""
        if y is None and n is None:
            raise InputError("sample needs n or labels y")
        n = len(y) if y is not None else n
        device = model_device(as_jem(model))
        if y is not None:
            y = y.to(device)
        idx = None
        if self.buffer is not None:
            if self.buffer.device != device:
                self.buffer.to(device)
            x0, idx = self.buffer.draw(n, y, reinit=reinit)
        else:
            lo, hi = self.data_range
            x0 = torch.rand((n, *self.shape), device=device) * (hi - lo) + lo
        x = self.sgld.run(model, x0, y, n_steps)
        if idx is not None and update:
            self.buffer.put(idx, x)
        return x

    def draw(
        self, model: nn.Module, n: int | None = None, y: torch.Tensor | None = None, n_steps: int | None = None
    ) -> torch.Tensor:
        """Samples to look at or score, leaving the buffer as it is. From a buffer, unconditional
        samples are its entries after ``n_steps`` more steps (default 0) and conditional ones the
        class's block after K steps; fresh chains run K steps (``n_steps`` overrides both)."""
        if n_steps is None:
            n_steps = 0 if self.buffer is not None and y is None else self.sgld.n_steps
        return self.sample(model, n, y, n_steps=n_steps, update=False, reinit=False)

    def fresh(self) -> ChainSampler:
        """The same SGLD from fresh U(data_range) noise, without the buffer."""
        return ChainSampler(self.sgld, shape=self.shape, data_range=self.data_range)


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


def split_shard(merged: torch.Tensor, n_classes: int, rank: int, world: int, size: int) -> tuple[torch.Tensor, int]:
    """Rank ``rank``'s shard of ``size`` entries from a merged buffer (the inverse of
    :func:`merge_shards` when the layout is unchanged); returns (shard, missing), where the
    ``missing`` entries per class (a larger new layout) are NaN for the caller to refill."""
    per_class = merged.reshape(n_classes, -1, *merged.shape[1:])
    block = size // n_classes
    lo, hi = rank * block, (rank + 1) * block
    part = per_class[:, lo:hi]
    missing = block - part.shape[1]
    if missing > 0:
        pad = torch.full((n_classes, missing, *part.shape[2:]), float("nan"), dtype=part.dtype)
        part = torch.cat([part, pad.to(part.device)], dim=1)
    return part.reshape(-1, *merged.shape[1:]).clone(), max(0, missing)
