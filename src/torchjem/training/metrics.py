"""The metrics log of a run: windows of per-step diagnostics kept on the device, JSON lines in
RUN_DIR/metrics.jsonl, events (recovery, gave_up, done), and the run's train.log; with
``train.tensorboard`` every record mirrored to RUN_DIR/tb (training/tensorboard.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import WriteError
from ..rundir import RunDir
from . import distributed as ddp
from .tensorboard import TensorBoardLog, summary_writer

log = logging.getLogger("torchjem")


class Window:
    """Running sums of per-step diagnostics, kept on the device until flushed. A key is averaged
    over the steps that reported it (the p(x) term's figures exist only on its steps when
    ``objective.px_every`` > 1 or before ``objective.px_from_epoch``)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.count, self.t0 = 0, time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums[k] + v.float() if k in self.sums else v.float()
            self.counts[k] = self.counts.get(k, 0) + 1
        self.count += 1

    def flush(self) -> dict[str, float] | None:
        """The means since the last flush, averaged over ranks in a distributed run (so every
        rank must flush at the same steps; it_per_s stays this rank's)."""
        if not self.count:
            return None
        sums = torch.stack(list(self.sums.values()))
        counts = torch.tensor([self.counts[k] for k in self.sums], dtype=sums.dtype, device=sums.device)
        means_t = ddp.all_reduce_mean(sums / counts)
        means = dict(zip(self.sums, means_t.tolist()))
        means["it_per_s"] = self.count / (time.perf_counter() - self.t0)
        self.sums, self.counts, self.count, self.t0 = {}, {}, 0, time.perf_counter()
        return means


class MetricsLog:
    """Appends records to RUN_DIR/metrics.jsonl (only where ``enabled``: rank 0), and to
    TensorBoard's RUN_DIR/tb with ``tensorboard`` (inside ``to_file``)."""

    def __init__(self, run: RunDir, enabled: bool = True, tensorboard: bool = False) -> None:
        self.run, self.enabled, self.tensorboard = run, enabled, tensorboard
        if tensorboard:
            summary_writer()  # a missing package is a ConfigError now, on every rank
        self.window = Window()
        self.tb: TensorBoardLog | None = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.run.metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise WriteError(f"cannot write {str(self.run.metrics)!r} ({e})") from None
        if self.tb is not None:
            self.tb.write(record)

    def samples(self, x: torch.Tensor, step: int) -> None:
        """A grid of ``x`` (the replay buffer's chains) in TensorBoard, when it is on."""
        if self.tb is not None:
            self.tb.samples(x, step)

    def event(self, kind: str, step: int, epoch: int, **fields: Any) -> None:
        self.write({"event": kind, "step": step, "epoch": epoch, **fields})

    def flush(self, **fields: Any) -> dict[str, float] | None:
        """Write the window's means (one host synchronisation) with ``fields``; returns the means."""
        means = self.window.flush()
        if means is not None:
            self.write({**fields, **means})
        return means

    def reset(self) -> None:
        self.window = Window()

    @contextlib.contextmanager
    def to_file(self, step: int = 0) -> Iterator[None]:
        """The torchjem logger also writes RUN_DIR/train.log inside (rank 0 only), and TensorBoard
        its event files when on (``step``: where a resumed run starts; the events a killed run wrote
        after it are hidden, as they are written again)."""
        if not self.enabled:
            yield
            return
        self.run.path.mkdir(parents=True, exist_ok=True)
        if self.tensorboard:
            self.tb = TensorBoardLog(self.run.tensorboard, purge_step=step + 1 if step else None)
        handler = logging.FileHandler(self.run.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        try:
            yield
        finally:
            log.removeHandler(handler)
            handler.close()
            if self.tb is not None:
                self.tb.close()
                self.tb = None
