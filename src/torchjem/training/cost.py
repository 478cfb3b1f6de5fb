"""The cost meter of a training run: counts the passes each step makes (by kind) and the CPU,
wall and device seconds, into the run's ``Cost`` (rundir/cost.py), which every checkpoint keeps."""

from __future__ import annotations

import time

import torch

from ..objective import Batch
from ..rundir import Cost


class CostMeter:
    """Counts into ``cost`` (a new Cost, or a resumed run's). Passes are counted for the whole
    run (``world_size`` processes with equal batches); seconds are this process's. ``fold()``
    adds the seconds since the last fold (each checkpoint and metrics line calls it)."""

    def __init__(self, device: torch.device, world_size: int = 1, cost: Cost | None = None) -> None:
        self.cost = cost if cost is not None else Cost()
        self.world = world_size
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda and self.cost.device_s is None:
            self.cost.device_s = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.mark()

    def mark(self) -> None:
        """Start counting seconds from now (after a resume: the checkpoint's seconds are kept)."""
        self._cpu, self._wall = time.process_time(), time.perf_counter()

    def fold(self) -> Cost:
        """Add the seconds since the last fold (and the device time of the steps since then: a
        host synchronisation on CUDA); returns the cost."""
        cpu, wall = time.process_time(), time.perf_counter()
        self.cost.cpu_s += cpu - self._cpu
        self.cost.wall_s += wall - self._wall
        self._cpu, self._wall = cpu, wall
        if self._events:
            self._events[-1][1].synchronize()
            self.cost.device_s = (self.cost.device_s or 0.0) + sum(a.elapsed_time(b) for a, b in self._events) / 1e3
            self._events = []
        return self.cost

    def step_started(self) -> None:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append((start, torch.cuda.Event(enable_timing=True)))

    def step_ended(self, batch: Batch, *, sam: bool, inner_steps: int = 0) -> None:
        """Count one optimiser step: the loss's forward and backward over the data and samples of
        ``batch``, the chains' steps (``batch.sgld_steps`` each), and SAM's second pass (``sam``)
        over data and samples again. ``inner_steps``: PYLD's inner steps per outer step (0: SGLD)."""
        if self.cuda and self._events:
            self._events[-1][1].record()
        n_data = len(batch.x) + (len(batch.x_px) if batch.x_px is not None else 0)
        n_samples = sum(len(s) for s in (batch.x_q, batch.xy_q) if s is not None)
        self.cost.add_step(n_data * self.world, n_samples * self.world, batch.sgld_steps, inner_steps=inner_steps,
                           sam=sam)

    def validation(self, n: int) -> None:
        """Count a validation pass over ``n`` examples (all processes together)."""
        self.cost.add("validation", n, "forward")
