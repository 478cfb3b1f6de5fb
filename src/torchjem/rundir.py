"""A run directory's layout: where a run writes each thing.

RUN_DIR/config.yaml        resolved config
RUN_DIR/metrics.jsonl      one JSON object per line (iterations, epochs, events)
RUN_DIR/train.log          the log
RUN_DIR/checkpoints/       last.pt, best.pt, epoch_NNNN.pt
RUN_DIR/samples/           PNG sample grids
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunDir:
    """Paths inside one run directory (nothing is created until something is written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    log = property(lambda self: self.path / "train.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    samples = property(lambda self: self.path / "samples")
    report = property(lambda self: self.path / "report")
    attack = property(lambda self: self.path / "attack")

    def checkpoint(self, which: str = "last") -> Path:
        """Path of ``last``, ``best``, ``epoch_NNNN`` or an explicit file."""
        p = Path(which)
        if p.suffix == ".pt" and p.is_file():
            return p
        return self.checkpoints / f"{which}.pt"

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
