"""TensorBoard, the standard viewer of training curves, behind one small module: with
``train.tensorboard: true`` every record of RUN_DIR/metrics.jsonl is mirrored to event files in
RUN_DIR/tb (rank 0 only, as metrics.jsonl), and the replay buffer's chains as an image grid at each
epoch's end.

Tags: a metrics window's keys as ``train/<key>`` (loss, ce, acc, energies, chain health, lr,
it_per_s, ...), a validation's as ``val/<key>``, an event as ``events/<kind>`` (1 at its step) with
its numeric fields as ``events/<kind>/<field>`` and the whole record as text, the grid as
``samples/buffer``. A sweep's trials are run directories of their own, so
``tensorboard --logdir SWEEP_DIR/trials`` shows every trial as a separate run, each with its setting
and results in the HParams dashboard (``write_hparams``).

``torch.utils.tensorboard`` needs the ``tensorboard`` package (``pip install 'torchjem[tensorboard]'``);
it is imported only when a run asks for it.
"""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..grids import grid_image

POSITION = ("step", "epoch")  # a record's x-axis and its epoch: not scalars of their own
GRID_IMAGES = 64  # chains shown in an epoch's grid


def summary_writer() -> Any:
    """torch's SummaryWriter class; ConfigError when the tensorboard package is missing (checked on
    every rank when the run is built, before any work)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(
            f"config train.tensorboard = true needs the tensorboard package ({e}); "
            "pip install tensorboard (or torchjem[tensorboard])"
        ) from None
    return SummaryWriter


def open_writer(path: Path, purge_step: int | None = None) -> Any:
    """A SummaryWriter into ``path``; ``purge_step``: on a resumed run, the events a killed run
    wrote at or after this step (the first after its checkpoint) are hidden: they are written again."""
    return summary_writer()(str(path), purge_step=purge_step or None, flush_secs=30)


def write_hparams(path: Path, params: dict[str, Any], results: dict[str, Any]) -> None:
    """A sweep trial's setting and results (the numeric ones; None left out) in TensorBoard's
    HParams dashboard, into the trial's own event folder ``path``: a sweep's trials then compare
    side by side, one run each, their results also as scalars ``hparams/<name>``."""
    values = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
    metrics = {f"hparams/{k}": float(v) for k, v in results.items() if isinstance(v, Real)}
    with summary_writer()(str(path)) as writer:
        writer.add_hparams(values, metrics, run_name=".")


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The numeric fields of a record (booleans and position excluded), as floats."""
    return {k: float(v) for k, v in record.items()
            if k not in POSITION and isinstance(v, Real) and not isinstance(v, bool)}


class TensorBoardLog:
    """Mirrors metrics records to TensorBoard (``write``), adds sample grids (``samples``)."""

    def __init__(self, path: Path, purge_step: int | None = None) -> None:
        self.path = path
        self.writer = open_writer(path, purge_step)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        if "event" in record:
            kind = record["event"]
            self.writer.add_scalar(f"events/{kind}", 1.0, step)
            for k, v in numbers(record).items():
                self.writer.add_scalar(f"events/{kind}/{k}", v, step)
            self.writer.add_text(f"events/{kind}", json.dumps(record), step)
            self.writer.flush()
            return
        group = "train" if "loss" in record else "val"  # a metrics window, or a validation
        for k, v in numbers(record).items():
            self.writer.add_scalar(f"{group}/{k}", v, step)
        if group == "val":
            self.writer.flush()

    def samples(self, x: torch.Tensor, step: int) -> None:
        """An image grid of up to 64 of ``x`` (images N, C, H, W in the data range), spread over
        the whole set (the buffer's per-class blocks); other shapes are skipped."""
        if x.ndim != 4 or not len(x):
            return
        idx = torch.linspace(0, len(x) - 1, min(GRID_IMAGES, len(x))).round().long().unique()
        img = grid_image(x[idx.to(x.device)])
        self.writer.add_image("samples/buffer", img, step, dataformats="HW" if img.ndim == 2 else "HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
