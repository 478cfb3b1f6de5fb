"""The training loop of a Trainer: epochs of steps, each followed by the divergence guard's check
(and, on a divergence, the rewind), the metrics window, mid-epoch checkpoints; at each epoch's end
validation and the best / epoch_NNNN / last checkpoints. The Trainer (trainer.py) wires the parts
and takes one optimiser step; this module decides when everything else happens."""

from __future__ import annotations

import logging
import shlex
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .guard import DivergenceError
from .interrupt import StopRequest, interrupted

if TYPE_CHECKING:  # (the trainer imports this module)
    from .trainer import Trainer

log = logging.getLogger("torchjem")


class TrainingLoop:
    """One ``fit()`` of ``trainer``: ``run()`` trains until ``train.epochs`` (or ``train.max_steps``)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.cfg, self.p = trainer.cfg, trainer.state.progress
        self.stop = StopRequest()  # SIGINT / SIGTERM while run() trains: finish the step, save, stop
        self.stopping: int | None = None  # the signal agreed on after the last step

    def done(self) -> bool:
        t, p = self.cfg.train, self.p
        return p.step >= t.max_steps if t.max_steps is not None else p.epoch >= t.epochs

    def run(self) -> dict[str, Any]:
        """Train to the end; returns {"step", "epoch", "retries", and the last validation figures}.
        A SIGINT or SIGTERM meanwhile ends the current step, writes last.pt and raises
        ``errors.Interrupted`` (training/interrupt.py)."""
        if self.done():  # a finished run resumed as it was: nothing to train, nothing written
            p, t = self.p, self.cfg.train
            until = f"train.max_steps={t.max_steps}" if t.max_steps is not None else f"train.epochs={t.epochs}"
            log.warning("nothing left to do: the run already reached step %d, epoch %d (%s); to train on, resume "
                        "with a larger %s", p.step, p.epoch, until, until.split("=")[0])
            return {"step": p.step, "epoch": p.epoch, "retries": p.retries, **self.t.validate()}
        with self.stop:
            return self._run()

    def _run(self) -> dict[str, Any]:
        t, p, tr = self.cfg.train, self.p, self.t
        tr.guard.snapshot()
        self.total = t.max_steps if t.max_steps is not None else t.epochs * tr.steps_per_epoch
        self.bar = tqdm(total=self.total, initial=min(p.step, self.total),
                        disable=not (tr.progress and tr.is_main), desc="train", unit="it")
        last_val: dict[str, float] = {}
        while not self.done():
            if self.epoch() and p.batch >= tr.steps_per_epoch:
                last_val = self.end_epoch() or last_val
            signum = self.stop.agreed()  # a step's signal, or one during validation and saving
            if signum is not None:
                self.interrupt(signum)
        self.log_window()
        self.bar.close()
        if t.max_steps is not None:
            last_val = tr.validate()
            tr.save("last")
        cost = self.t.state.meter.fold()
        self.event("done", retries=p.retries, **last_val, cost=cost.to_dict())
        log.info("done: step %d, epoch %d, %s", p.step, p.epoch, last_val)
        log.info("cost: %d forward-pass units (%.1f per training example-step), %.1f CPU s, %.1f wall s%s",
                 cost.units, cost.units / max(1, cost.count("data", "forward")), cost.cpu_s, cost.wall_s,
                 " (+ the run it started from)" if cost.init is not None else "")
        return {"step": p.step, "epoch": p.epoch, "retries": p.retries, **last_val}

    def epoch(self) -> bool:
        """Train the rest of the current epoch (until done); False when a divergence rewound the run
        (training goes on from the restored step, epoch and batch)."""
        for x, y in self.t.batches.epoch(self.p.epoch, start=self.p.batch):
            if not self.step(x, y):
                return False
            if self.done() or self.stopping is not None:
                break
        return True

    def step(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """One step with its check, snapshot, log window and mid-epoch checkpoint; False when a
        divergence found at its check rewound the run."""
        t, p, tr = self.cfg.train, self.p, self.t
        stats = tr.train_step(x, y)
        tr.metrics.window.add(stats)
        self.bar.update(1)
        save_now = t.checkpoint_every is not None and p.step % t.checkpoint_every == 0
        self.stopping = self.stop.agreed()  # every rank stops after the same step
        # before every snapshot and checkpoint the state after the update is checked too
        due = (p.batch == tr.steps_per_epoch or self.done() or save_now or tr.guard.snapshot_due()
               or self.stopping is not None)
        cause = tr.guard.after_step(stats, x, due)
        if cause:  # back to the last good state: its step, epoch and batch, redone from there
            self.recover(cause)
            self.bar.n = p.step
            return False
        if p.step % t.log_every == 0:
            self.log_window()
        if save_now and p.batch < tr.steps_per_epoch:
            tr.save("last")
        return True

    def interrupt(self, signum: int) -> None:
        """After a stop signal: the metrics so far, last.pt at the current batch, then Interrupted."""
        p, tr = self.p, self.t
        self.log_window()
        tr.save("last")
        self.event("interrupted", signal=signum)
        self.bar.close()
        raise interrupted(signum, p.step, self.total, f"jem train --resume {shlex.quote(str(tr.run.path))}")

    def recover(self, cause: str) -> None:
        """Rewind after a divergence (DivergenceError, logged as "gave_up", once retries run out)."""
        tr = self.t
        last = tr.run.checkpoint("last")
        try:
            fields = tr.guard.recover(cause, last if last.is_file() else None)
        except DivergenceError as e:
            self.event("gave_up", **e.event)
            raise
        self.event("recovery", **fields)
        tr.metrics.reset()
        tr.scale_sampler_step()

    def end_epoch(self) -> dict[str, float]:
        """Validate, then write best (if better), epoch_NNNN (if due) and last, in that order: last
        is the commit, so a kill before it redoes the epoch and this whole sequence on resume."""
        p, tr, t = self.p, self.t, self.cfg.train
        p.epoch, p.batch = p.epoch + 1, 0
        val = {} if p.epoch % t.eval_every and not self.done() else tr.validate()
        if tr.buffer is not None:  # the chains as they stand, in TensorBoard (when on)
            tr.metrics.samples(tr.buffer.x, p.step)
        if val:
            tr.metrics.write({"step": p.step, "epoch": p.epoch, **val})
            log.info("epoch %d: val_acc %.4f val_nll %.4f", p.epoch, val["val_acc"], val["val_nll"])
            if val["val_acc"] > p.best_val:
                p.best_val = val["val_acc"]
                tr.save("best")
        if p.epoch % t.save_every == 0:
            tr.save(tr.run.epoch_checkpoint(p.epoch))
        tr.save("last")
        tr.guard.snapshot()  # a checked state (the epoch's last step was checked with its update)
        return val

    def event(self, kind: str, **fields: Any) -> None:
        self.t.metrics.event(kind, self.p.step, self.p.epoch, **fields)

    def log_window(self) -> None:
        p = self.p
        cost = self.t.state.meter.fold()  # the cost so far, on every metrics line (cost curves)
        means = self.t.metrics.flush(step=p.step, epoch=p.epoch, lr=self.t.lr_at(p.step, p.epoch),
                                     cost_units=cost.total_units, cpu_s=round(cost.total_cpu_s, 3),
                                     wall_s=round(cost.total_wall_s, 3))
        if means is not None:
            self.bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means.get('acc', float('nan')):.3f}")
