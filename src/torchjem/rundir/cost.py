"""What a run's training cost: passes through the network by kind, CPU, wall and device seconds.

Passes are counted in examples (one example through the network once), so that runs of
different batch sizes compare. Three directions:

- ``forward``: a forward pass;
- ``backward``: a backward pass to the parameters (and inputs): about twice a forward;
- ``input_backward``: a backward pass to the inputs only (an SGLD step's gradient), about one forward.

``units`` weighs them 1, 2 and 1 (the cost model of docs/performance.md: a classifier step on n
examples is 3n units, a JEM step with K SGLD steps on n chains (6 + 2K) n). Kinds are ``data``
(the loss's pass over the data), ``samples`` (the loss's pass over the p(x) / p(x|y) samples),
``sgld`` (the chains' steps; PYLD's outer steps), ``sgld_inner`` (PYLD's inner steps: through
the first layer only, not counted in ``units``), ``sam`` (SAM's second pass) and ``validation``.

Seconds: ``cpu_s`` is the training process's CPU time (every thread of it: ``time.process_time``),
``wall_s`` the elapsed time, ``device_s`` the time of the training steps on a CUDA device (None
on the CPU), all summed over the run's sessions (a resume adds to the checkpoint's figures; work
after the last checkpoint of a killed session is not counted). ``init`` is the cost of the run
whose weights this one started from (``train.init_from``), when that run recorded one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DIRECTIONS = {"forward": 1, "backward": 2, "input_backward": 1}  # units per example
KINDS = ("data", "samples", "sgld", "sgld_inner", "sam", "validation")
NOT_IN_UNITS = ("sgld_inner",)  # PYLD's inner steps run only the first layer


@dataclass
class Cost:
    """Passes {kind: {direction: examples}} and seconds of one run (module docstring)."""

    passes: dict[str, dict[str, int]] = field(default_factory=dict)
    steps: int = 0  # optimiser steps counted (a divergence rewind's redone steps count again)
    since_step: int = 0  # the run's step when counting began (> 0: resumed from a checkpoint without a cost)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    device_s: float | None = None
    init: Cost | None = None  # the cost of the run this one started from (train.init_from)

    def add(self, kind: str, n: int, *directions: str) -> None:
        """Count ``n`` examples of ``kind`` in each of ``directions``; ValueError for an unknown one."""
        if kind not in KINDS:
            raise ValueError(f"unknown pass kind {kind!r}; expected one of {', '.join(KINDS)}")
        counts = self.passes.setdefault(kind, {})
        for d in directions:
            if d not in DIRECTIONS:
                raise ValueError(f"unknown pass direction {d!r}; expected one of {', '.join(DIRECTIONS)}")
            counts[d] = counts.get(d, 0) + int(n)

    def add_step(self, n_data: int, n_samples: int, sgld_steps: int, *, inner_steps: int = 0,
                 sam: bool = False) -> None:
        """Count one optimiser step. What a step costs is spelled here only: the training meter
        and ``predict_cost`` both call it.

        Args:
            n_data: data examples through the loss (forward and backward; with ``x_px``, both).
            n_samples: p(x) and p(x|y) samples through the loss (forward and backward; 0: none).
            sgld_steps: chain steps per sample, each a forward and an input gradient.
            inner_steps: PYLD's first-layer steps per outer step (default 0: SGLD).
            sam: SAM's second pass over data and samples again (default False).
        """
        self.add("data", n_data, "forward", "backward")
        if n_samples:
            self.add("samples", n_samples, "forward", "backward")
            self.add("sgld", n_samples * sgld_steps, "forward", "input_backward")
            if inner_steps:
                self.add("sgld_inner", n_samples * sgld_steps * inner_steps, "forward", "input_backward")
        if sam:
            self.add("sam", n_data + n_samples, "forward", "backward")
        self.steps += 1

    @property
    def complete(self) -> bool:
        """Whether the figures cover the whole run and the runs it started from (no ``since_step``
        > 0 anywhere along ``init``)."""
        return self.since_step == 0 and (self.init is None or self.init.complete)

    def count(self, kind: str, direction: str) -> int:
        """Examples of ``kind`` passed in ``direction`` (0 when none)."""
        return self.passes.get(kind, {}).get(direction, 0)

    @property
    def units(self) -> int:
        """Forward-pass equivalents of this run alone: forward 1, backward 2, input backward 1 per
        example, PYLD's inner steps left out."""
        return sum(DIRECTIONS[d] * n for kind, c in self.passes.items() if kind not in NOT_IN_UNITS
                   for d, n in c.items())

    @property
    def total_units(self) -> int:
        """``units`` plus those of the run it started from (when recorded)."""
        return self.units + (self.init.total_units if self.init is not None else 0)

    @property
    def total_cpu_s(self) -> float:
        """CPU seconds plus those of the run it started from (when recorded)."""
        return self.cpu_s + (self.init.total_cpu_s if self.init is not None else 0.0)

    @property
    def total_wall_s(self) -> float:
        return self.wall_s + (self.init.total_wall_s if self.init is not None else 0.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "passes": {k: dict(v) for k, v in self.passes.items()},
            "steps": self.steps,
            "since_step": self.since_step,
            "units": self.units,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "device_s": self.device_s,
        }
        if self.init is not None:
            d["init"] = self.init.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Cost | None:
        """The Cost of a ``to_dict`` (None for None: a run written before costs were recorded)."""
        if d is None:
            return None
        return cls(
            passes={str(k): {str(dk): int(n) for dk, n in v.items()} for k, v in d.get("passes", {}).items()},
            steps=int(d.get("steps", 0)),
            since_step=int(d.get("since_step", 0)),
            cpu_s=float(d.get("cpu_s", 0.0)),
            wall_s=float(d.get("wall_s", 0.0)),
            device_s=float(d["device_s"]) if d.get("device_s") is not None else None,
            init=cls.from_dict(d.get("init")),
        )
