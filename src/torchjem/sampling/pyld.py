"""PYLD: JEM++'s proximal Langevin dynamics (after YOPO): cheap inner steps through the first layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..energy import JEM, as_jem
from ..errors import ConfigError, InputError
from ..utils import DATA_RANGE
from .base import LangevinSampler, Step, add_noise, langevin_update


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


class PYLD(LangevinSampler):
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

    Same interface as :class:`SGLD` (``run(model, x, y=None, n_steps=None)``, ``scale_step``);
    ``step_size`` is the inner step size, for code that reads an SGLD's settings.
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
        data_range: tuple[float, float] = DATA_RANGE,
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
        self.base_step_size = inner_step_size

    @property
    def step_size(self) -> float:
        """The inner step size (what ``scale_step`` scales, and what code reading an SGLD's settings sees)."""
        return self.inner_step_size

    @step_size.setter
    def step_size(self, value: float) -> None:
        self.inner_step_size = value

    @contextlib.contextmanager
    def _steps(self, jem: JEM, x: torch.Tensor) -> Iterator[Step]:
        """A run's steps go through the first layer, found once per run on the chains' start ``x``."""
        with _eager(jem):
            _, layer = self.find_first_layer(jem, x)
            yield lambda x, y: self.step(jem, x, y, layer)

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
            x = langevin_update(x.detach(), grad, self.inner_step_size, clamp=(lo, hi), grad_clamp=self.grad_clamp)
        return add_noise(x.detach(), self.noise, self.clamp)

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
