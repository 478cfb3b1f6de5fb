"""``jem sample``: PNG grids of a run's unconditional and class-conditional samples."""

from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoint import check_writable
from ..grids import check_grid_options, write_sample_grids
from ..utils import seed_everything
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
    seed: int | None = None,
) -> dict[str, object]:
    """Write RUN_DIR/samples (or ``out``)/unconditional.png and conditional.png; returns the paths
    and samples. Chains start from the run's replay buffer (left unchanged) or, with ``fresh`` or
    for a run without a buffer, from U(-1, 1) noise. ``seed``: of the chains' noise (default the
    run's own seed, so that the same command draws the same samples).

    Args:
        run_dir: the run directory.
        out: the folder of the PNGs (default None: RUN_DIR/samples).
        checkpoint: the checkpoint to load, "last" or "best" (default "last").
        n: unconditional samples (default 100).
        per_class: conditional samples per class (default 10).
        n_steps: SGLD steps (default None: the sampler's default for ``draw``).
        fresh: start from U(-1, 1) noise instead of the replay buffer (default False).
        device: "auto", "cpu", "cuda", ... (default "auto").
        seed: the chains' seed (default None: the run's own).
    """
    check_grid_options(n, per_class, n_steps)  # before anything is loaded or written
    run = load_run(run_dir, checkpoint, device)
    seed_everything(run.cfg.seed if seed is None else seed)
    sampler = run.sampler
    if fresh:
        sampler = sampler.fresh()
    elif sampler.buffer is None:
        log.warning("run has no replay buffer (a clf_only run?): sampling from fresh chains")
    out = check_writable(Path(out) if out is not None else run.dir.samples)
    return write_sample_grids(run.jem, sampler, run.n_classes, out_dir=out, n=n, per_class=per_class, n_steps=n_steps)
