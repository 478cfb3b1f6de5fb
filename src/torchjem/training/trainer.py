"""The training loop. Construction goes through torchjem.build; the loop's parts live beside it:
the train state (state.py), the divergence guard (guard.py), the metrics log (metrics.py), the
batch sources (batches.py) and the data-parallel helpers (distributed.py)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import build
from ..config import Config, save_config
from ..data import DataSplits, augment, check_model_input
from ..errors import ConfigError
from ..rundir import RunDir, RunLock
from ..sam import SAM
from ..speed import autocast, configure_speed
from ..utils import frozen_bn_stats, has_batch_norm, seed_everything
from . import distributed as ddp
from .batches import describe, make_batches, val_batches, validation_sums
from .guard import DivergenceError, DivergenceGuard
from .metrics import MetricsLog
from .state import TrainState, claim, net_record, read_resume

log = logging.getLogger("torchjem")


class Trainer:
    """Hybrid JEM training (or a plain classifier with ``train.clf_only``) into a run directory.

    ``model``: any classifier nn.Module returning logits (default: the configured ``net.name``).
    ``data``: a DataSplits (default: the configured data set), or any map-style Dataset /
    DataLoader of (x, y) pairs for data that does not fit in memory (``val``: its validation
    Dataset, optional). Under torchrun it runs data-parallel (docs/distributed.md).
    """

    def __init__(
        self,
        cfg: Config,
        data: DataSplits | Dataset | DataLoader | None = None,
        model: nn.Module | None = None,
        progress: bool = True,
        val: Dataset | None = None,
        *,
        overwrite: bool = False,
        resuming: bool = False,
    ) -> None:
        self.cfg = cfg.validate()
        self.run, self.lock = RunDir(cfg.out), RunLock(RunDir(cfg.out))
        self.device = ddp.init_distributed(cfg.device)  # no process group without torchrun
        self.rank, self.world_size = ddp.get_rank(), ddp.get_world_size()
        self.is_main, self.progress = self.rank == 0, progress
        ddp.run_on_main(lambda: claim(self.run, self.lock, overwrite, resuming))  # all ranks stop if it is taken
        try:
            self._setup(cfg, data, model, val)
        except BaseException:
            self.lock.abandon()
            raise

    def _setup(self, cfg: Config, data: Any, model: nn.Module | None, val: Dataset | None) -> None:
        self.data, self.val = (build.build_data(cfg) if data is None else data), val
        self.shape, self.n_classes, train_xy = describe(self.data)
        if train_xy is not None:  # semi-supervised: the hidden labels become -100 before anything sees them
            d = cfg.data
            train_xy = (train_xy[0], build.semi_supervised_labels(train_xy[1], d.labels_per_class, self.n_classes,
                                                                  d.split_seed))  # fmt: skip
        seed_everything(cfg.seed)
        self.jem = build.build_jem(cfg, self.shape, self.n_classes, model).to(self.device)
        check_model_input(self.jem, self.shape, self.n_classes, f"data set {self.data_name!r}")
        self.jem = configure_speed(self.jem, cfg.train, self.device)  # amp hook, channels_last, compile
        self.model: nn.Module = self.jem  # what the loss runs through (DDP wraps it here)
        if self.world_size > 1:
            # An energy head gets no gradient when p(x) is off: DDP must be told to expect that.
            unused = self.jem.energy_head is not None and (cfg.train.clf_only or cfg.objective.px == 0)
            self.model = ddp.wrap_ddp(self.jem, self.device, find_unused_parameters=unused)
            seed_everything(ddp.rank_seed(cfg.seed, self.rank))  # from here each rank draws its own noise
        self.sampler = build.build_training_sampler(cfg, self.shape, self.n_classes, self.device, self.world_size,
                                                    train_xy)  # fmt: skip
        separate = has_batch_norm(self.jem) and self.sampler is not None
        if separate and self.world_size > 1:  # two forwards before one backward: DDP marks parameters ready twice
            raise ConfigError(
                "a net with batch norm trains as a JEM in one process only (for now); use norm=none or "
                "group/layer norm under torchrun, or train it as a classifier (--clf-only)"
            )
        self.objective = build.build_objective(cfg, self.sampler, separate_passes=separate)
        self.optimizer = build.build_optimizer(cfg, self.jem.parameters(), self.device)
        self.batches = make_batches(cfg, self.data, train_xy, self.n_classes, self.rank, self.world_size, self.device)
        meta = {"name": self.data_name, "shape": list(self.shape), "n_classes": self.n_classes}
        self.state = TrainState(cfg, self.jem, self.optimizer, self.buffer, meta, net_record(cfg, model), self.device)
        self.guard = DivergenceGuard(cfg.divergence, self.state, cfg.seed)
        self.metrics = MetricsLog(self.run, self.is_main)
        self._resume_note: str | None = None

    # -- what the run exposes --------------------------------------------------------------------
    @property
    def data_name(self) -> str:
        """The data set's name (a Dataset's class name when it has none)."""
        return getattr(self.data, "name", type(getattr(self.data, "dataset", self.data)).__name__)

    buffer = property(lambda self: self.sampler.buffer if self.sampler is not None else None)
    step = property(lambda self: self.state.progress.step)
    epoch = property(lambda self: self.state.progress.epoch)
    steps_per_epoch = property(lambda self: self.batches.steps_per_epoch)

    def lr_at(self, step: int, epoch: int) -> float:
        return build.learning_rate(self.cfg.optim, step, epoch, self.state.progress.lr_scale)

    def save(self, name: str) -> Path:
        """Write checkpoint ``name`` (in a distributed run every rank must call it)."""
        path = self.run.checkpoint(name)
        self.state.save(path)
        return path

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        model: nn.Module | None = None,
        progress: bool = True,
        overrides: list[str] | None = None,
        data: DataSplits | Dataset | DataLoader | None = None,
        val: Dataset | None = None,
    ) -> Trainer:
        """Continue a run from its last checkpoint, with its saved config (plus ``overrides``,
        e.g. a longer ``train.epochs``); it keeps writing to ``run_dir``, wherever it was moved.
        ``model`` and ``data``: as given to the first Trainer when they did not come from the config."""
        cfg, state = read_resume(run_dir, overrides or [], model)
        trainer = cls(cfg, data=data, model=model, progress=progress, val=val, resuming=True)
        trainer._resume_note = trainer.state.load_state_dict(state)
        p, saved = trainer.state.progress, state["config"]
        if cfg.optim.lr != saved["optim"]["lr"]:  # the advice after giving up: a fresh retry budget
            log.info("new optim.lr %g: divergence retries (%d) and lr back-off (%g) reset", cfg.optim.lr, p.retries,
                     p.lr_scale)  # fmt: skip
            p.retries, p.lr_scale = 0, 1.0
        if (cfg.sgld.step_size, cfg.sgld.inner_step_size) != (saved["sgld"]["step_size"],
                                                              saved["sgld"].get("inner_step_size")):  # fmt: skip
            p.step_scale = 1.0  # a new SGLD step: no back-off on it
        trainer._scale_sampler_step()
        log.info("resumed %s at epoch %d, step %d", cfg.out, trainer.epoch, trainer.step)
        return trainer

    # -- one step, validation ----------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch (labels -100: unlabelled); returns the objective's
        diagnostics (device tensors)."""
        p = self.state.progress
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(p.step, p.epoch)
        x_px = None
        if self.cfg.data.augment:
            flip = self.cfg.data.flip if self.cfg.data.flip is not None else getattr(self.data, "flip", False)
            x, x_px = augment(x, pad=max(1, self.shape[-1] // 8), flip=flip), (None if self.cfg.data.augment_px else x)
        self.model.train()
        with autocast(self.cfg.train.amp, self.device):  # the chains and the loss; see torchjem.speed
            batch = self.objective.draw(self.model, x, y, x_px)
            loss, stats = self.objective.loss(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if isinstance(self.optimizer, SAM):  # the same samples at w + e; batch norms keep their statistics
                self.optimizer.perturb()
                self.optimizer.zero_grad(set_to_none=True)
                with frozen_bn_stats(self.model):
                    self.objective.loss(self.model, batch)[0].backward()
                self.optimizer.restore()
        self.optimizer.step()
        p.step, p.batch = p.step + 1, p.batch + 1
        return stats

    def validate(self) -> dict[str, float]:
        """Validation accuracy and NLL; in a distributed run each rank scores a slice and the sums
        are combined, so every rank gets the same numbers (and makes the same saves)."""
        sums = validation_sums(self.jem, val_batches(self.data, self.val, self.rank, self.world_size))
        acc, nll, n = ddp.all_reduce_sum(sums.to(self.device)).tolist()
        return {"val_acc": acc / n, "val_nll": nll / n} if n else {}

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``train.epochs`` (or ``train.max_steps``); returns the final figures. The run
        directory's lock is released at the end."""
        with contextlib.closing(self.lock), self.metrics.to_file():
            if self.is_main:
                save_config(self.cfg, self.run.config)
            mode, shape = "classifier (clf_only)" if self.cfg.train.clf_only else "JEM", "x".join(map(str, self.shape))
            log.info("training %s on %s (%d images, %s) on %s into %s",
                     mode, self.data_name, self.batches.n, shape, self.device, self.run.path)  # fmt: skip
            if self.world_size > 1:
                size = self.buffer.size if self.buffer is not None else "-"
                msg = "data-parallel on %d processes: global batch %d = %d x %d per rank, buffer shard %s per rank"
                log.info(msg, self.world_size, self.cfg.train.batch_size, self.world_size, self.batches.local, size)
            if self._resume_note:
                if self.is_main:
                    log.warning(self._resume_note)
                self._event("resharded", note=self._resume_note)
                self._resume_note = None
            return self._loop()

    def _done(self) -> bool:
        t, p = self.cfg.train, self.state.progress
        return p.step >= t.max_steps if t.max_steps is not None else p.epoch >= t.epochs

    def _loop(self) -> dict[str, Any]:
        t, div, p = self.cfg.train, self.cfg.divergence, self.state.progress
        self.guard.snapshot()
        total = t.max_steps if t.max_steps is not None else t.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=min(p.step, total), disable=not (self.progress and self.is_main),
                   desc="train", unit="it")  # fmt: skip
        last_val: dict[str, float] = {}
        while not self._done():
            rewound = False
            for x, y in self.batches.epoch(p.epoch, start=p.batch):
                stats = self.train_step(x, y)
                self.metrics.window.add(stats)
                bar.update(1)
                save_now = t.checkpoint_every is not None and p.step % t.checkpoint_every == 0
                # Before every snapshot and checkpoint the state after the update is checked too.
                due = p.batch == self.steps_per_epoch or self._done() or save_now or self.guard.snapshot_due()
                if p.step % div.check_every == 0 or due:
                    cause = self.guard.check(stats, x if due else None)
                    if cause:  # back to the last good state: its step, epoch and batch, redone from there
                        self._recover(cause)
                        bar.n, rewound = p.step, True
                        break
                    if self.guard.snapshot_due():
                        self.guard.snapshot()
                if p.step % t.log_every == 0:
                    self._log_window(bar)
                if save_now and p.batch < self.steps_per_epoch:
                    self.save("last")
                if self._done():
                    break
            if rewound:
                continue
            if p.batch >= self.steps_per_epoch:
                last_val = self._end_epoch() or last_val
        self._log_window(bar)
        bar.close()
        if t.max_steps is not None:
            last_val = self.validate()
            self.save("last")
        self._event("done", retries=p.retries, **last_val)
        log.info("done: step %d, epoch %d, %s", p.step, p.epoch, last_val)
        return {"step": p.step, "epoch": p.epoch, "retries": p.retries, **last_val}

    def _recover(self, cause: str) -> None:
        try:
            fields = self.guard.recover(cause)
        except DivergenceError as e:
            self._event("gave_up", **e.event)
            last = self.run.checkpoint("last")
            then = (
                f"; then continue from {last} with `jem train --resume {self.run.path} optim.lr=...`"
                if last.is_file()
                else "; no checkpoint was written yet: start again (--overwrite) with the changes"
            )
            raise DivergenceError(f"{e}{then}") from None
        self._event("recovery", **fields)
        self.metrics.reset()
        self._scale_sampler_step()

    def _scale_sampler_step(self) -> None:
        """The chains' step size: the configured one (the sampler's own) times the divergence back-off."""
        if self.sampler is not None:
            self.sampler.sgld.scale_step(self.state.progress.step_scale)

    def _event(self, kind: str, **fields: Any) -> None:
        self.metrics.event(kind, self.step, self.epoch, **fields)

    def _log_window(self, bar: tqdm) -> None:
        p = self.state.progress
        means = self.metrics.flush(step=p.step, epoch=p.epoch, lr=self.lr_at(p.step, p.epoch))
        if means is not None:
            bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means.get('acc', float('nan')):.3f}")

    def _end_epoch(self) -> dict[str, float]:
        """Validate, then write best (if better), epoch_NNNN (if due) and last, in that order: last
        is the commit, so a kill before it redoes the epoch and this whole sequence on resume."""
        p = self.state.progress
        p.epoch, p.batch = p.epoch + 1, 0
        val = {} if self.epoch % self.cfg.train.eval_every and not self._done() else self.validate()
        if val:
            self.metrics.write({"step": self.step, "epoch": self.epoch, **val})
            log.info("epoch %d: val_acc %.4f val_nll %.4f", self.epoch, val["val_acc"], val["val_nll"])
            if val["val_acc"] > p.best_val:
                p.best_val = val["val_acc"]
                self.save("best")
        if self.epoch % self.cfg.train.save_every == 0:
            self.save(f"epoch_{self.epoch:04d}")
        self.save("last")
        self.guard.snapshot()  # a checked state (the epoch's last step was checked with its update)
        return val


def train(
    cfg: Config,
    data: DataSplits | Dataset | None = None,
    model: nn.Module | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Trainer:
    """Build a Trainer and fit it; returns the trainer (model, sampler, run directory)."""
    trainer = Trainer(cfg, data, model, progress, overwrite=overwrite)
    trainer.fit()
    return trainer
