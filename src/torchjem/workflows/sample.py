"""``jem sample``: PNG grids of a run's unconditional and class-conditional samples."""

from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoint import check_writable
from ..errors import InputError
from ..samples import write_sample_grids
from .runs import load_run

log = logging.getLogger("torchjem")


def sample_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    checkpoint: str = "last",
    n: int = 100,
    per_class: int = 10,
    n_steps: int | None = None,
    fresh: bool = False,
    device: str = "auto",
) -> dict[str, object]:
    """Write RUN_DIR/samples (or ``out``)/unconditional.png and conditional.png; returns the paths
    and samples. Chains start from the run's replay buffer (left unchanged) or, with ``fresh`` or
    for a run without a buffer, from U(-1, 1) noise."""
    if n < 1 or per_class < 1:
        raise InputError(f"jem sample needs --n >= 1 and --per-class >= 1, got {n} and {per_class}")
    if n_steps is not None and n_steps < 0:
        raise InputError(f"jem sample needs --steps >= 0, got {n_steps}")
    run = load_run(run_dir, checkpoint, device)
    sampler = run.sampler
    if fresh:
        sampler = sampler.fresh()
    elif sampler.buffer is None:
        log.warning("run has no replay buffer (a clf_only run?): sampling from fresh chains")
    out = check_writable(Path(out) if out is not None else run.path / "samples")
    return write_sample_grids(run.jem, sampler, run.n_classes, out, n, per_class, n_steps)
