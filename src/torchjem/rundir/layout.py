"""A run directory's layout: the one place that spells where a run writes each thing.

RUN_DIR/config.yaml          resolved config (without the run's own path: that is an argument)
RUN_DIR/metrics.jsonl        one JSON object per line (windows, validations, events)
RUN_DIR/train.log            the log
RUN_DIR/checkpoints/         last.pt, best.pt, epoch_NNNN.pt
RUN_DIR/samples/             PNG sample grids (`jem sample`)
RUN_DIR/report/              report.html, report.json and PNGs (`jem eval`)
RUN_DIR/attack/              attack.json, robust_accuracy.png, saved adversarials (`jem attack`)
RUN_DIR/feature_net/         the run's copy of the FID feature network
RUN_DIR/trial.json           what a `jem sweep` trial recorded
RUN_DIR/tb/                  TensorBoard event files (`train.tensorboard: true`)
RUN_DIR/export/              `jem export`'s default folder
RUN_DIR/.lock                held by the process that writes into it (rundir/lock.py)

An export folder (`jem export`) is a run directory of another form: torchjem.json,
model.safetensors and (optionally) buffer.safetensors, readable without torchjem.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .history import History

log = logging.getLogger("torchjem")

CHECKPOINTS = "checkpoints"
EXPORT_META, EXPORT_WEIGHTS, EXPORT_BUFFER = "torchjem.json", "model.safetensors", "buffer.safetensors"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
ATTACK_JSON, ATTACK_PNG = "attack.json", "robust_accuracy.png"


class RunDir:
    """Paths inside one run directory (nothing is created until something is written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def samples(self) -> Path:
        """Default folder of `jem sample`'s grids."""
        return self.path / "samples"

    @property
    def report(self) -> Path:
        """Default folder of `jem eval`'s report."""
        return self.path / "report"

    @property
    def attack(self) -> Path:
        """Default folder of `jem attack`'s results (attack.json is read from here by `jem eval`)."""
        return self.path / "attack"

    @property
    def attack_json(self) -> Path:
        return self.attack / ATTACK_JSON

    @property
    def feature_net(self) -> Path:
        """The run's own copy of the FID feature network (written by `jem eval`)."""
        return self.path / "feature_net"

    @property
    def trial(self) -> Path:
        """What a `jem sweep` trial recorded about this run."""
        return self.path / "trial.json"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's event files of the run (``train.tensorboard``)."""
        return self.path / "tb"

    @property
    def export(self) -> Path:
        """Default folder of `jem export`."""
        return self.path / "export"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def export_meta(self) -> Path:
        return self.path / EXPORT_META

    def checkpoint(self, which: str = "last") -> Path:
        """Path of ``last``, ``best``, ``epoch_NNNN`` or an explicit ``.pt`` file."""
        p = Path(which)
        if p.suffix == ".pt" and p.is_file():
            return p
        return self.checkpoints / f"{which}.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoint(f"epoch_{epoch:04d}")

    def is_export(self) -> bool:
        """Whether this folder was written by `jem export` (safetensors + JSON)."""
        return self.export_meta.is_file()

    def has_run(self) -> bool:
        """Whether a run already wrote here (a checkpoint or metrics)."""
        return self.checkpoint("last").is_file() or self.metrics.is_file()

    def clear(self) -> None:
        """Remove what a previous run wrote (checkpoints, metrics, log, config, trial record), for
        ``--overwrite``. Reports, attacks and samples of the old run go too: they describe a model
        that no longer exists."""
        for folder in (self.checkpoints, self.report, self.attack, self.samples, self.feature_net, self.tensorboard):
            shutil.rmtree(folder, ignore_errors=True)
        for p in (self.metrics, self.log, self.config, self.trial):
            p.unlink(missing_ok=True)

    def history(self) -> History:
        """The run's metrics.jsonl as a typed history (empty without one)."""
        return History(self.read_metrics())

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl ([] without one). A line that is not a JSON object (a run
        killed while writing it, then resumed) is skipped with a warning."""
        if not self.metrics.is_file():
            return []
        records, bad = [], 0
        for line in self.metrics.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                bad += 1
        if bad:
            log.warning("%s: skipped %d line(s) that are not JSON records", self.metrics, bad)
        return records
