"""``jem train``: a new run from a config (a file or a shipped recipe) plus overrides, or the
continuation of a run; under torchrun the process group is left cleanly at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import load_config
from ..config import resolve_recipe as config_recipe
from ..training import Trainer
from ..training.distributed import distributed_session
from ..training.trainer import DEFAULT_OUT


def resolve_recipe(name: str | None) -> str | None:
    """A config path, or the path of the recipe shipped under that name (None stays None)."""
    return None if name is None else str(config_recipe(name))


def train_run(
    config: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[Trainer, dict[str, Any]]:
    """Train into ``out`` (default runs/train) (or, with ``resume``, continue that run directory); returns the trainer
    and its final figures. ``overrides``: a nested dict or KEY=VALUE strings. An existing run in
    ``out`` is refused unless ``overwrite``.

    Args:
        config: a YAML file or a shipped recipe's name (default None: the defaults).
        overrides: a nested dict or KEY=VALUE strings (default None).
        out: the run directory (default None: runs/train).
        resume: a run directory to continue (default None: a new run).
        progress: show progress bars (default True).
        overwrite: replace an existing run in ``out`` (default False: refused).
    """
    with distributed_session():
        if resume is not None:
            trainer = Trainer.resume(resume, progress=progress, overrides=overrides)
        else:
            cfg = load_config(resolve_recipe(config), overrides)
            trainer = Trainer(cfg, progress=progress, out=out or DEFAULT_OUT, overwrite=overwrite)
        return trainer, trainer.fit()
