"""The training loop. Construction goes through torchjem.build; the loop's parts live beside it:
the loop (loop.py), the train state (state.py), the divergence guard (guard.py), the metrics log (metrics.py), the
batch sources (batches.py) and the data-parallel helpers (distributed.py)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import build
from ..config import Config, save_config
from ..data import DataSplits, augment, check_model_input
from ..errors import DataError
from ..rundir import DataSpec, RunDir, RunLock
from ..sam import SAM
from ..sampling import ReplayBuffer
from ..speed import autocast, configure_speed
from ..utils import frozen_eval, seed_everything
from . import distributed as ddp
from .batches import data_spec, describe, make_batches, val_batches, validation_sums
from .guard import DivergenceGuard
from .init import init_from
from .loop import TrainingLoop
from .metrics import MetricsLog
from .schedule import step_plan
from .state import TrainState, net_record, read_resume, reset_backoff

log = logging.getLogger("torchjem")
DEFAULT_OUT = "runs/train"  # the run directory when none is given


class Trainer:
    """Hybrid JEM training (or a plain classifier with ``train.clf_only``) into a run directory.

    ``out``: the run directory (created; a directory that already holds a run is refused unless
    ``overwrite``). ``model``: any classifier nn.Module returning logits (default: the configured
    ``net.name``).
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
        out: str | Path = DEFAULT_OUT,
        overwrite: bool = False,
        resuming: bool = False,
    ) -> None:
        self.cfg = cfg.validate()
        self.run = RunDir(out)
        self.lock = RunLock(self.run)
        self.device = ddp.init_distributed(cfg.device)  # no process group without torchrun
        self.rank, self.world_size = ddp.get_rank(), ddp.get_world_size()
        self.is_main, self.progress = self.rank == 0, progress
        # rank 0 claims the directory (every rank stops if it is taken); only the outcome is broadcast
        ddp.run_on_main(lambda: bool(self.lock.claim(overwrite=overwrite, resuming=resuming)))
        with self.lock.abandon_on_error():
            self._setup(cfg, data, model, val, resuming=resuming)

    def _setup(self, cfg: Config, data: Any, model: nn.Module | None, val: Dataset | None, *,
               resuming: bool = False) -> None:
        self.data, self.val = (build.build_data(cfg) if data is None else data), val
        self.shape, self.n_classes, train_xy = describe(self.data)
        if train_xy is not None:  # semi-supervised: the hidden labels become -100 before anything sees them
            labels = build.semi_supervised_labels(train_xy[1], cfg.data.labels_per_class, self.n_classes,
                                                  cfg.data.split_seed)
            train_xy = (train_xy[0], labels)
        seed_everything(cfg.seed)
        self.jem = build.build_jem(cfg, self.shape, self.n_classes, model).to(self.device)
        check_model_input(self.jem, self.shape, self.n_classes, f"data set {self.data_name!r}")
        # train.init_from: a new run starts from those weights (a resumed one from its own checkpoint)
        self.init_record = init_from(self.jem, cfg.train.init_from) if cfg.train.init_from and not resuming else None
        self.plan = build.training_plan(cfg, self.jem, self.shape, world_size=self.world_size,
                                        data_flip=getattr(self.data, "flip", False))
        if self.plan.sync_bn:  # batch statistics of the global batch (train.sync_bn)
            ddp.convert_sync_batch_norm(self.jem)
        self.jem = configure_speed(self.jem, cfg.train, self.device)  # amp hook, channels_last, compile
        self.model: nn.Module = self.jem  # what the loss runs through (DDP wraps it here)
        if self.world_size > 1:
            self.model = ddp.wrap_ddp(self.jem, self.device, find_unused_parameters=self.plan.ddp_unused_parameters)
            seed_everything(ddp.rank_seed(cfg.seed, self.rank))  # from here each rank draws its own noise
        self.sampler = build.build_training_sampler(cfg, self.plan, self.shape, n_classes=self.n_classes,
                                                    device=self.device, world_size=self.world_size, train_xy=train_xy)
        self.objective = build.build_objective(cfg, self.sampler, self.plan)
        self.optimizer = build.build_optimizer(cfg, self.jem.parameters(), self.device)
        self.batches = make_batches(cfg, self.data, train_xy, n_classes=self.n_classes, rank=self.rank,
                                    world=self.world_size, device=self.device)
        meta = data_spec(self.data, self.data_name, (self.shape, self.n_classes))
        self.state = TrainState(cfg, self.jem, self.optimizer, self.buffer, meta, net_record(cfg, model), self.device)
        if self.init_record is not None:  # the source's training cost, counted in this run's totals
            self.state.meter.cost.init = self.init_record.cost
        self.guard = DivergenceGuard(cfg.divergence, self.state, cfg.seed)
        self.metrics = MetricsLog(self.run, self.is_main, tensorboard=cfg.train.tensorboard)
        self.resume_note: str | None = None

    # -- what the run exposes --------------------------------------------------------------------
    @property
    def data_name(self) -> str:
        """The data set's name (a Dataset's class name when it has none)."""
        return data_name(self.data)

    @property
    def langevin(self) -> Any:
        """The chains' Langevin sampler (SGLD or PYLD), None for a classifier."""
        return self.sampler.langevin if self.sampler is not None else None

    @property
    def buffer(self) -> ReplayBuffer | None:
        return self.sampler.buffer if self.sampler is not None else None

    @property
    def step(self) -> int:
        return self.state.progress.step

    @property
    def epoch(self) -> int:
        return self.state.progress.epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    def lr_at(self, step: int, epoch: int) -> float:
        return build.learning_rate(self.cfg.optim, step, epoch, self.state.progress.lr_scale)

    def save(self, name: str | Path) -> Path:
        """Write checkpoint ``name`` (last, best, or a path; in a distributed run every rank must call it)."""
        path = name if isinstance(name, Path) else self.run.checkpoint(name)
        self.state.save(path)
        return path

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        model: nn.Module | None = None,
        progress: bool = True,
        *,
        overrides: list[str] | dict[str, Any] | None = None,
        data: DataSplits | Dataset | DataLoader | None = None,
        val: Dataset | None = None,
    ) -> Trainer:
        """Continue a run from its last checkpoint, with its saved config (plus ``overrides``); it
        keeps writing to ``run_dir``, wherever it was moved. Raises MissingError without a last
        checkpoint, DataError when ``data`` is not the data the run trained on.

        Args:
            run_dir: the run directory.
            model: the network object given to the first Trainer, when it did not come from the
                config (default None: rebuilt from the config).
            progress: show a progress bar (default True).
            overrides: config changes, a nested dict (``{"train": {"epochs": 20}}``) or KEY=VALUE
                strings (default None).
            data: the data given to the first Trainer, when it did not come from the config (default
                None: the config's data set).
            val: its validation Dataset (default None).
        """
        cfg, state = read_resume(run_dir, overrides, model)
        data = build.build_data(cfg) if data is None else data
        check_resume_data(state.data, data_spec(data, data_name(data)), run_dir)
        trainer = cls(cfg, data=data, model=model, progress=progress, val=val, out=run_dir, resuming=True)
        trainer.resume_note = trainer.state.load_state_dict(state)
        reset_backoff(trainer.state.progress, cfg, state.config)
        trainer.scale_sampler_step()
        log.info("resumed %s at epoch %d, step %d", trainer.run.path, trainer.epoch, trainer.step)
        return trainer

    # -- one step, validation ----------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch (labels -100: unlabelled); returns the objective's
        diagnostics (device tensors)."""
        p = self.state.progress
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(p.step, p.epoch)
        x_px = None
        if self.plan.augment is not None:
            pad, flip = self.plan.augment
            x, x_px = augment(x, pad=pad, flip=flip), (None if self.plan.augment_px else x)
        plan = step_plan(self.cfg, p.step, p.epoch, self.steps_per_epoch)  # p(x) term, SAM, K of this step
        sam = plan.sam and isinstance(self.optimizer, SAM)
        if plan.scale > 0 and self.cfg.objective.energy_anchor == "start" and math.isnan(p.energy_anchor):
            p.energy_anchor = data_log_px(self.jem, x)  # the level the energy penalty holds log p(x) near
        self.objective.energy_anchor = 0.0 if math.isnan(p.energy_anchor) else p.energy_anchor
        self.model.train()
        self.state.meter.step_started()
        with autocast(self.cfg.train.amp, self.device):  # the chains and the loss; see torchjem.speed
            batch = self.objective.draw(self.model, x, y, x_px=x_px, scale=plan.scale, sgld_steps=plan.sgld_steps)
            loss, stats = self.objective.loss(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sam:  # the same samples at w + e
                self.optimizer.second_pass(self.model, lambda: self.objective.loss(self.model, batch)[0])
        self.optimizer.step()
        self.state.meter.step_ended(batch, sam=sam, inner_steps=getattr(self.langevin, "inner_steps", 0))
        p.step, p.batch = p.step + 1, p.batch + 1
        return stats

    def validate(self) -> dict[str, float]:
        """Validation accuracy and NLL; in a distributed run each rank scores a slice and the sums
        are combined, so every rank gets the same numbers (and makes the same saves)."""
        sums = validation_sums(self.jem, val_batches(self.data, self.val, self.rank, world=self.world_size))
        acc, nll, n = ddp.all_reduce_sum(sums.to(self.device)).tolist()
        self.state.meter.validation(int(n))
        return {"val_acc": acc / n, "val_nll": nll / n} if n else {}

    # -- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``train.epochs`` (or ``train.max_steps``); returns the final figures. The run
        directory's lock is released at the end."""
        with self.lock, self.metrics.to_file(self.step):
            if self.is_main:
                save_config(self.cfg, self.run.config)
            log_start(self)
            if self.resume_note:  # a resume on another number of processes
                if self.is_main:
                    log.warning(self.resume_note)
                self.metrics.event("resharded", self.step, self.epoch, note=self.resume_note)
                self.resume_note = None
            if self.init_record is not None and self.step == 0:
                if self.is_main:
                    r = self.init_record
                    log.info("weights from %s (%s): %d tensors, sha256 %s", r.source, r.kind, r.tensors, r.fingerprint)
                # an event record, written whole: its "kind" field would clash with event()'s argument
                self.metrics.write({"event": "init_from", "step": 0, "epoch": self.epoch, **self.init_record.to_dict()})
            return TrainingLoop(self).run()

    def scale_sampler_step(self) -> None:
        """The chains' step size: the configured one (the sampler's own) times the divergence back-off."""
        if self.sampler is not None:
            self.sampler.langevin.scale_step(self.state.progress.step_scale)


def data_log_px(jem: nn.Module, x: torch.Tensor) -> float:
    """The mean log p(x) of a data batch ``x`` (N, ...) under ``jem`` in eval mode, averaged over the
    processes of a data-parallel run (``objective.energy_anchor = start``: where the energy
    penalty's anchor is set, once)."""
    with frozen_eval(jem), torch.no_grad():
        return float(ddp.all_reduce_mean(jem.log_px(x).mean().float()))


def data_name(data: Any) -> str:
    """A data set's name (a Dataset's class name when it has none)."""
    return getattr(data, "name", type(getattr(data, "dataset", data)).__name__)


def check_resume_data(saved: DataSpec, given: DataSpec, run_dir: str | Path) -> None:
    """DataError (one line, both sides named) when the data a run resumes on is not the data it was
    trained on: a run trained on a user's Dataset resumed without ``data=`` loads the config's
    data set by name, which is refused here rather than trained on."""
    diff = saved.mismatch(given)
    if diff is None:
        return
    hint = ""
    if saved.name != given.name or saved.fingerprint != given.fingerprint:
        hint = "; pass the run's own data (Trainer.resume(RUN, data=...))"
    raise DataError(
        f"cannot resume {str(run_dir)!r}: it was trained on {saved.describe()}, the data given is "
        f"{given.describe()} ({diff} differ){hint}"
    )


def log_start(trainer: Trainer) -> None:
    """The lines that open a run's log: what trains on what, where; the data-parallel layout."""
    t = trainer
    mode = "classifier (clf_only)" if t.cfg.train.clf_only else "JEM"
    log.info("training %s on %s (%d images, %s) on %s into %s", mode, t.data_name, t.batches.n,
             "x".join(map(str, t.shape)), t.device, t.run.path)
    if t.sampler is not None:
        log.info("chains: %s, net in %s mode (sgld.model_mode = %s)", type(t.sampler.langevin).__name__,
                 t.plan.chain_mode, t.cfg.sgld.model_mode)
    if t.plan.chain_warning and t.is_main:
        log.warning(t.plan.chain_warning)
    if t.world_size > 1:
        size = t.buffer.size if t.buffer is not None else "-"
        msg = "data-parallel on %d processes: global batch %d = %d x %d per rank, buffer shard %s per rank"
        log.info(msg, t.world_size, t.cfg.train.batch_size, t.world_size, t.batches.local, size)
        if t.plan.separate_passes:
            log.info("batch norm: data and sample passes in one DDP forward; batch statistics %s",
                     "of the global batch (train.sync_bn)" if t.plan.sync_bn else "per rank (train.sync_bn=false)")


def train(
    cfg: Config,
    data: DataSplits | Dataset | None = None,
    model: nn.Module | None = None,
    *,
    progress: bool = True,
    out: str | Path = DEFAULT_OUT,
    overwrite: bool = False,
) -> Trainer:
    """Build a Trainer writing into ``out`` and fit it; returns the trainer (model, sampler, run directory).

    Args:
        cfg: the run's config.
        data: a DataSplits, or a Dataset of (x, y) pairs (default None: the config's data set).
        model: any classifier returning logits (default None: the config's ``net.name``).
        progress: show a progress bar (default True).
        out: the run directory (default ``runs/train``).
        overwrite: replace a run already in ``out`` (default False: refused).
    """
    trainer = Trainer(cfg, data, model, progress, out=out, overwrite=overwrite)
    trainer.fit()
    return trainer
