"""The chain sampler: a Langevin sampler's chains started from a replay buffer or from fresh noise."""

from __future__ import annotations

import torch
from torch import nn

from ..energy import as_jem
from ..errors import InputError
from ..utils import DATA_RANGE, model_device
from .base import LangevinSampler
from .buffer import ReplayBuffer


class ChainSampler(nn.Module):
    """The negative samples of a JEM: SGLD chains started from a replay buffer (persistent chains,
    PCD) or, without one, from fresh U(data_range) noise (short-run chains).

    ``sample(model, n, y=None)`` draws the starting points, runs ``sgld`` (a
    :class:`LangevinSampler`: an :class:`SGLD` or a :class:`PYLD`) on ``model`` and writes the
    final states back to the buffer. The buffer follows the model's device.
    """

    def __init__(
        self,
        langevin: LangevinSampler,
        buffer: ReplayBuffer | None = None,
        shape: tuple[int, ...] | None = None,
        data_range: tuple[float, float] = DATA_RANGE,
    ) -> None:
        super().__init__()
        if buffer is None and shape is None:
            raise InputError("ChainSampler without a replay buffer needs the sample shape")
        self.langevin = langevin
        self.buffer = buffer
        self.shape = tuple(buffer.shape if buffer is not None else shape)
        self.data_range = buffer.data_range if buffer is not None else data_range

    @property
    def n_steps(self) -> int:
        return self.langevin.n_steps

    def sample(
        self,
        model: nn.Module,
        n: int | None = None,
        y: torch.Tensor | None = None,
        *,
        n_steps: int | None = None,
        update: bool = True,
        reinit: bool = True,
    ) -> torch.Tensor:
        """``n`` samples (or one per label in ``y``, class-conditional) after ``n_steps`` (default
        the sampler's K). ``update=False`` leaves the buffer as it was; ``reinit=False`` starts
        every chain from the buffer (no fresh chains).

        Args:
            model: the JEM (or any classifier returning logits) to sample from.
            n: the number of chains (default None: one per label in ``y``).
            y: labels (n,) int64 for class-conditional chains (default None: unconditional).
            n_steps: SGLD steps (default None: the sampler's K).
            update: write the final states back into the buffer (default True).
            reinit: restart a fraction of chains from fresh noise, the buffer's reinit rate (default True).
        """
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
        x = self.langevin.run(model, x0, y, n_steps)
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
            n_steps = 0 if self.buffer is not None and y is None else self.langevin.n_steps
        return self.sample(model, n, y, n_steps=n_steps, update=False, reinit=False)

    def fresh(self) -> ChainSampler:
        """The same SGLD from fresh U(data_range) noise, without the buffer."""
        return ChainSampler(self.langevin, shape=self.shape, data_range=self.data_range)
