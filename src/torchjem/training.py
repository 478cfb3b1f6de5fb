"""The training loop: optimiser, warm-up and decay, validation, checkpoints, resume, and
divergence detection with automatic recovery."""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed as ddp
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, from_dict, load_config, save_config
from .data import DataSplits, augment, load_data
from .data.datasets import check_model_input, check_splits
from .energy import JEM, as_jem
from .evaluate.classification import classification
from .objective import HybridObjective
from .run import RunDir, build_buffer, build_jem, build_sampler
from .sampling import ReplayBuffer
from .speed import autocast, configure_speed, fused_optimizer_kwargs

log = logging.getLogger("torchjem")


class DivergenceError(RuntimeError):
    """Training diverged more often than ``divergence.max_retries`` allows."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def labelled_mask(y: torch.Tensor, per_class: int | None, n_classes: int, seed: int) -> torch.Tensor:
    """Bool mask keeping ``per_class`` labels of each class (all when None), chosen by ``seed``."""
    if per_class is None:
        return torch.ones(len(y), dtype=torch.bool)
    mask = torch.zeros(len(y), dtype=torch.bool)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for c in range(n_classes):
        idx = perm[y.cpu()[perm] == c]
        if len(idx) < per_class:
            raise ValueError(f"data.labels_per_class={per_class} but class {c} has only {len(idx)} training images")
        mask[idx[:per_class]] = True
    return mask


class _Window:
    """Running sums of per-step diagnostics, kept on the device until flushed."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.t0 = 0, time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums[k] + v.float() if k in self.sums else v.float()
        self.count += 1

    def flush(self) -> dict[str, float] | None:
        """The means since the last flush, averaged over ranks in a distributed run (so every
        rank must flush at the same steps; it_per_s stays this rank's)."""
        if not self.count:
            return None
        means_t = ddp.all_reduce_mean(torch.stack(list(self.sums.values())) / self.count)
        means = dict(zip(self.sums, means_t.tolist()))
        means["it_per_s"] = self.count / (time.perf_counter() - self.t0)
        self.sums, self.count, self.t0 = {}, 0, time.perf_counter()
        return means


class Trainer:
    """Hybrid JEM training (or a plain classifier with ``train.clf_only``) into a run directory.

    ``model`` may be any classifier nn.Module (returning logits); by default the configured net
    is built. ``data`` defaults to the configured data set.

    Under torchrun (``WORLD_SIZE`` > 1) the same trainer runs data-parallel: it joins the
    process group, wraps the model in DistributedDataParallel, gives each rank its slice of
    every global batch of ``train.batch_size`` images, its own seed and its own replay-buffer
    shard; only rank 0 writes. See torchjem.distributed and docs/distributed.md.
    """

    def __init__(
        self,
        cfg: Config,
        data: DataSplits | None = None,
        model: nn.Module | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg.validate()
        self.run = RunDir(cfg.out)
        self.device = ddp.init_distributed(cfg.device)  # no process group without torchrun
        self.rank, self.world_size = ddp.get_rank(), ddp.get_world_size()
        self.is_main = self.rank == 0
        if cfg.train.batch_size % self.world_size:
            raise ValueError(
                f"train.batch_size={cfg.train.batch_size} is the global batch and must be divisible by the "
                f"{self.world_size} processes"
            )
        self.local_batch = cfg.train.batch_size // self.world_size  # this rank's share of each batch
        self.progress = progress
        d = cfg.data
        if data is not None:
            check_splits(data)  # user data gets the same checks as the built-in loaders
        self.data = data or load_data(d.name, d.root, d.val_size, d.split_seed, d.classes, d.limit)
        self.shape, self.n_classes = self.data.shape, self.data.n_classes
        seed_everything(cfg.seed)
        self.jem: JEM = (as_jem(model) if model is not None else build_jem(cfg, self.shape, self.n_classes)).to(
            self.device
        )
        check_model_input(self.jem, self.shape, self.n_classes, f"data set {self.data.name!r}")
        self.jem = configure_speed(self.jem, cfg.train, self.device)  # amp hook, channels_last, compile
        self.model: nn.Module = self.jem  # what the loss runs through (DDP wraps it here)
        if self.world_size > 1:
            # An energy head gets no gradient when p(x) is off: DDP must be told to expect that.
            unused = self.jem.energy_head is not None and (cfg.train.clf_only or cfg.objective.px == 0)
            self.model = ddp.wrap_ddp(self.jem, self.device, find_unused_parameters=unused)
            # Every rank built the same model from cfg.seed; from here each draws its own noise.
            seed_everything(ddp.rank_seed(cfg.seed, self.rank))
        self.objective = HybridObjective(
            pyx=cfg.objective.pyx,
            px=0.0 if cfg.train.clf_only else cfg.objective.px,
            pxy=0.0 if cfg.train.clf_only else cfg.objective.pxy,
            data_noise=cfg.objective.data_noise,
            energy_l2=0.0 if cfg.train.clf_only else cfg.objective.energy_l2,
        )
        if cfg.train.clf_only and cfg.objective.pyx == 0:
            raise ValueError("train.clf_only needs objective.pyx > 0")
        self.sampler = build_sampler(cfg)
        self.buffer = None
        if self.objective.needs_samples:
            if self.world_size == 1:
                self.buffer = build_buffer(cfg, self.shape, self.n_classes, self.device)
            else:  # this rank's shard: buffer.size / W chains in per-class blocks
                size = ddp.shard_size(cfg.buffer.size, self.n_classes, self.world_size)
                self.buffer = ReplayBuffer(
                    size, self.shape, self.n_classes, cfg.buffer.reinit_freq, "uniform", self.device
                )
            if cfg.buffer.init == "gaussian":
                self.buffer.fit_gaussian(self.data.x_train, self.data.y_train)
        self.optimizer = self._make_optimizer()
        self.x_train = self.data.x_train.to(self.device)
        self.y_train = self.data.y_train.to(self.device)
        self.labelled = labelled_mask(self.data.y_train, d.labels_per_class, self.n_classes, d.split_seed).to(
            self.device
        )
        if self.world_size > 1 and len(self.x_train) < cfg.train.batch_size:
            raise ValueError(
                f"{len(self.x_train)} training images cannot fill one global batch of train.batch_size="
                f"{cfg.train.batch_size} on {self.world_size} processes; lower train.batch_size"
            )
        self.steps_per_epoch = max(1, len(self.x_train) // cfg.train.batch_size)
        self._resume_note: str | None = None
        self.step = 0
        self.epoch = 0  # completed epochs
        self.lr_scale = 1.0
        self.retries = 0
        self.best_val = -1.0
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_step = -1

    # -- set-up --------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = [p for p in self.jem.parameters() if p.requires_grad]
        fused = fused_optimizer_kwargs(self.device)  # CUDA, and CPU since torch 2.4
        if o.name == "adam":
            return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **fused)
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused)

    def lr_at(self, step: int, epoch: int) -> float:
        """Base lr x warm-up ramp x step decay x divergence back-off."""
        o = self.cfg.optim
        warm = min(1.0, (step + 1) / o.warmup_iters) if o.warmup_iters > 0 else 1.0
        decay = o.decay_rate ** sum(epoch >= e for e in o.decay_epochs)
        return o.lr * warm * decay * self.lr_scale

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole run state. In a distributed run every rank must call it (it gathers): rank 0
        gets the complete state (buffer shards merged, every rank's RNG state under
        ``"distributed"``), the other ranks their local view."""
        state = {
            "version": 1,
            "model": self.jem.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "rng": rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "lr_scale": self.lr_scale,
            "retries": self.retries,
            "best_val": self.best_val,
            "config": self.cfg.to_dict(),
            "data": {"name": self.data.name, "shape": list(self.shape), "n_classes": self.n_classes},
        }
        if self.world_size > 1:
            rngs = ddp.gather_objects(ddp.rank_rng_state(self.device))
            shards = ddp.gather_tensors(self.buffer.x) if self.buffer is not None else None
            if self.is_main:
                state["distributed"] = {"world_size": self.world_size, "rng": rngs}
                if shards is not None:
                    # one buffer in per-class blocks: loadable by load_run, re-split on resume
                    state["buffer"] = {**state["buffer"], "x": ddp.merge_shards(shards, self.n_classes)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state (each rank takes its buffer shard and RNG state). A checkpoint written
        by another number of processes is re-split and the RNGs re-seeded (a note is logged)."""
        self.jem.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        saved_world = int(state.get("distributed", {}).get("world_size", 1))
        if saved_world == self.world_size == 1:
            if self.buffer is not None and state.get("buffer") is not None:
                self.buffer.load_state_dict(state["buffer"])
            set_rng_state(state["rng"])
        else:
            self._load_sharded(state, saved_world)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.lr_scale, self.retries = float(state["lr_scale"]), int(state["retries"])
        self.best_val = float(state["best_val"])

    def _load_sharded(self, state: dict[str, Any], saved_world: int) -> None:
        same = saved_world == self.world_size
        if same:
            ddp.set_rank_rng_state(state["distributed"]["rng"][self.rank], self.device)
        else:  # the saved streams belong to other ranks: fresh ones, fixed by (seed, step, rank)
            seed_everything(ddp.rank_seed(self.cfg.seed + 31_337 * (int(state["step"]) + 1), self.rank))
        new_chains = 0
        b = state.get("buffer")
        if self.buffer is not None and b is not None:
            x, missing = ddp.split_shard(b["x"], self.n_classes, self.rank, self.world_size, self.buffer.size)
            if missing:  # a larger layout than the saved one: new chains for the missing entries
                empty = x.flatten(1).isnan().any(1).to(self.device)
                x = x.to(self.device)
                x[empty] = self.buffer.noise(self.buffer.labels[empty])
                new_chains = missing * self.n_classes
            self.buffer.load_state_dict({**b, "x": x})
        refilled = int(ddp.all_reduce_sum(torch.tensor(new_chains, device=self.device)))  # on every rank
        if not same:
            size = self.buffer.size if self.buffer is not None else 0
            self._resume_note = (
                f"checkpoint written by {saved_world} process(es), resumed on {self.world_size}: replay buffer "
                f"re-split into {self.world_size} shard(s) of {size} entries ({refilled} new chains), RNGs re-seeded "
                f"per rank; the run continues from step {int(state['step'])} but not bit for bit"
            )

    def save(self, name: str) -> Path:
        """Write a checkpoint (rank 0 writes; in a distributed run every rank must call it)."""
        path = self.run.checkpoint(name)
        state = self.state_dict()
        if self.is_main:
            save_checkpoint(path, state)
        return path

    @classmethod
    def resume(
        cls,
        run_dir: str | Path,
        model: nn.Module | None = None,
        progress: bool = True,
        overrides: list[str] | None = None,
    ) -> Trainer:
        """Continue a run from its last checkpoint, with its saved config (plus ``overrides``,
        e.g. a longer ``train.epochs``)."""
        run = RunDir(run_dir)
        ckpt = run.checkpoint("last")

        def read() -> dict[str, Any]:
            if not ckpt.is_file():
                raise FileNotFoundError(
                    f"cannot resume {str(run.path)!r}: no checkpoint at {ckpt} (it is written after the first epoch)"
                )
            return load_checkpoint(ckpt)

        # Under torchrun rank 0 reads the checkpoint and sends it to the others (their node may not see it).
        device = [o.split("=", 1)[1] for o in overrides or [] if o.startswith("device=")]
        ddp.init_distributed(device[-1] if device else "auto")
        state = ddp.run_on_main(read)
        cfg = from_dict(state["config"])
        if overrides:
            cfg = load_config(None, overrides, base=cfg)
        trainer = cls(cfg, model=model, progress=progress)
        trainer.load_state_dict(state)
        log.info("resumed %s at epoch %d, step %d", run.path, trainer.epoch, trainer.step)
        return trainer

    # -- divergence ----------------------------------------------------------------------
    def _take_snapshot(self) -> None:
        self._snapshot = copy.deepcopy(
            {
                "model": self.jem.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "buffer": self.buffer.state_dict() if self.buffer is not None else None,
                "step": self.step,
            }
        )
        self._snapshot_step = self.step

    def _diverged(self, stats: dict[str, torch.Tensor]) -> str | None:
        """The cause of a divergence on any rank (every rank gets the same answer, so all rewind
        together), or None."""
        cause = self._local_divergence(stats)
        if self.world_size == 1:
            return cause
        ranks = ddp.flagged_ranks(cause is not None, self.device)
        if not ranks:
            return None
        causes = ddp.all_gather_objects(cause)
        return "; ".join(f"{causes[r]} on rank {r}" for r in ranks)

    def _local_divergence(self, stats: dict[str, torch.Tensor]) -> str | None:
        d = self.cfg.divergence
        keys = [k for k in ("loss", "energy_data", "energy_sample") if k in stats]
        values = dict(zip(keys, torch.stack([stats[k].float() for k in keys]).tolist()))
        for k, v in values.items():
            if not np.isfinite(v):
                return f"{k} is {v}"
        if abs(values["loss"]) > d.max_loss:
            return f"|loss| = {abs(values['loss']):.3g} > divergence.max_loss = {d.max_loss:.3g}"
        for k in ("energy_data", "energy_sample"):
            if k in values and abs(values[k]) > d.max_energy:
                return f"|{k}| = {abs(values[k]):.3g} > divergence.max_energy = {d.max_energy:.3g}"
        return None

    def _recover(self, cause: str) -> None:
        d = self.cfg.divergence
        self.retries += 1
        if self.retries > d.max_retries or self._snapshot is None:
            self._event("gave_up", cause=cause)
            raise DivergenceError(
                f"training diverged at step {self.step} ({cause}) after {d.max_retries} recoveries. "
                "Try a lower optim.lr, more sgld.steps, objective.energy_l2=0.1, a larger "
                "objective.data_noise (0.1 is more stable than 0.03), sgld.grad_clamp, or "
                "net.kwargs.activation=swish; resume from the last checkpoint with --resume."
            )
        snap = self._snapshot
        self.jem.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        if self.buffer is not None and snap["buffer"] is not None:
            self.buffer.load_state_dict(snap["buffer"])
        bad_step, self.step = self.step, snap["step"]
        self.lr_scale *= d.lr_factor
        seed_everything(ddp.rank_seed(self.cfg.seed + 7919 * self.retries, self.rank))
        msg = (
            f"divergence at step {bad_step} ({cause}): rewound to step {self.step}, reseeded, "
            f"lr scale now {self.lr_scale:.3g} (recovery {self.retries}/{d.max_retries})"
        )
        log.warning(msg)
        self._event(
            "recovery", cause=cause, at_step=bad_step, rewound_to=self.step, lr_scale=self.lr_scale, retry=self.retries
        )

    # -- logging -------------------------------------------------------------------------
    def _write_metrics(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.run.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _event(self, kind: str, **fields: Any) -> None:
        self._write_metrics({"event": kind, "step": self.step, "epoch": self.epoch, **fields})

    # -- the loop ------------------------------------------------------------------------
    def _batches(self, epoch: int):
        """This epoch's batches, in an order fixed by (seed, epoch) so resume is exact. Every rank
        draws the same order and takes its own slice of each global batch, so the ranks together
        see exactly the batches a single process would."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.x_train), generator=g).to(self.device)
        bs, lo = self.cfg.train.batch_size, self.rank * self.local_batch
        for i in range(self.steps_per_epoch):
            idx = perm[i * bs + lo : i * bs + lo + self.local_batch]
            yield self.x_train[idx], self.y_train[idx], self.labelled[idx]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step; returns the objective's diagnostics (device tensors)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step, self.epoch)
        if self.cfg.data.augment:
            flip = self.data.flip if self.cfg.data.flip is None else self.cfg.data.flip
            x = augment(x, pad=max(1, self.shape[-1] // 8), flip=flip)
        self.model.train()
        all_labelled = self.cfg.data.labels_per_class is None
        with autocast(self.cfg.train.amp, self.device):  # the chains and the loss; see torchjem.speed
            loss, stats = self.objective(
                self.model, x, y, self.sampler, self.buffer, None if all_labelled else labelled, sample_model=self.jem
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return stats

    def validate(self) -> dict[str, float]:
        """Validation accuracy and NLL; in a distributed run each rank scores a slice and the
        figures are combined, so every rank gets the same numbers (and makes the same saves)."""
        if len(self.data.x_val) == 0:
            return {}
        if self.world_size == 1:
            res = classification(self.jem, self.data.x_val, self.data.y_val)
            return {"val_acc": res["accuracy"], "val_nll": res["nll"]}
        x = self.data.x_val.tensor_split(self.world_size)[self.rank]
        y = self.data.y_val.tensor_split(self.world_size)[self.rank]
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if len(x):
            res = classification(self.jem, x, y)
            sums += torch.tensor([res["accuracy"] * len(x), res["nll"] * len(x), len(x)], dtype=torch.float64).to(
                self.device
            )
        acc, nll, n = ddp.all_reduce_sum(sums).tolist()
        return {"val_acc": acc / n, "val_nll": nll / n}

    def _setup_logging(self) -> logging.Handler | None:
        if not self.is_main:  # only rank 0 writes the run directory
            return None
        self.run.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.run.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        return handler

    def fit(self) -> dict[str, Any]:
        """Train until ``train.epochs`` (or ``train.max_steps``); returns the final figures."""
        cfg = self.cfg.train
        handler = self._setup_logging()
        try:
            if self.is_main:
                save_config(self.cfg, self.run.config)
            mode = "classifier (clf_only)" if cfg.clf_only else "JEM"
            log.info(
                "training %s on %s (%d images, %s) on %s into %s",
                mode,
                self.data.name,
                len(self.x_train),
                "x".join(map(str, self.shape)),
                self.device,
                self.run.path,
            )
            if self.world_size > 1:
                log.info(
                    "data-parallel on %d processes: global batch %d = %d x %d per rank, buffer shard %s per rank",
                    self.world_size,
                    cfg.batch_size,
                    self.world_size,
                    self.local_batch,
                    self.buffer.size if self.buffer is not None else "-",
                )
            if self._resume_note:
                if self.is_main:
                    log.warning(self._resume_note)
                self._event("resharded", note=self._resume_note)
                self._resume_note = None
            return self._loop()
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()

    def _done(self) -> bool:
        cfg = self.cfg.train
        if cfg.max_steps is not None:
            return self.step >= cfg.max_steps
        return self.epoch >= cfg.epochs

    def _loop(self) -> dict[str, Any]:
        cfg, div = self.cfg.train, self.cfg.divergence
        self._take_snapshot()
        total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        bar = tqdm(
            total=total,
            initial=min(self.step, total),
            disable=not (self.progress and self.is_main),
            desc="train",
            unit="it",
        )
        window = _Window()
        last_val: dict[str, float] = {}
        while not self._done():
            for i, (x, y, lab) in enumerate(self._batches(self.epoch)):
                stats = self.train_step(x, y, lab)
                window.add(stats)
                bar.update(1)
                # Also check before every checkpoint (end of epoch, end of run): never save a diverged state.
                boundary = i == self.steps_per_epoch - 1 or self._done()
                if self.step % div.check_every == 0 or boundary:
                    cause = self._diverged(stats)
                    if cause:
                        self._recover(cause)
                        window = _Window()
                        bar.n = self.step
                        continue
                    if self.step - self._snapshot_step >= div.snapshot_every:
                        self._take_snapshot()
                if self.step % cfg.log_every == 0:
                    self._log_window(window, bar)
                if self._done():
                    break
            else:
                self._end_epoch()
                last_val = self._maybe_validate() or last_val
                continue
            break  # max_steps reached mid-epoch
        self._log_window(window, bar)
        bar.close()
        if cfg.max_steps is not None:
            last_val = self.validate()
            self.save("last")
        self._event("done", retries=self.retries, **last_val)
        log.info("done: step %d, epoch %d, %s", self.step, self.epoch, last_val)
        return {"step": self.step, "epoch": self.epoch, "retries": self.retries, **last_val}

    def _log_window(self, window: _Window, bar: tqdm) -> None:
        """Write the mean diagnostics since the last line (one host synchronisation)."""
        means = window.flush()
        if means is None:
            return
        record = {"step": self.step, "epoch": self.epoch, "lr": self.lr_at(self.step, self.epoch), **means}
        self._write_metrics(record)
        bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means.get('acc', float('nan')):.3f}")

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.save("last")
        if self.epoch % self.cfg.train.save_every == 0:
            self.save(f"epoch_{self.epoch:04d}")

    def _maybe_validate(self) -> dict[str, float]:
        if self.epoch % self.cfg.train.eval_every and not self._done():
            return {}
        val = self.validate()
        if not val:
            return {}
        self._write_metrics({"step": self.step, "epoch": self.epoch, **val})
        log.info("epoch %d: val_acc %.4f val_nll %.4f", self.epoch, val["val_acc"], val["val_nll"])
        if val["val_acc"] > self.best_val:
            self.best_val = val["val_acc"]
            self.save("best")
            # keep "last" consistent with best_val so that a resume sees the same best
            self.save("last")
        return val


def train(
    cfg: Config, data: DataSplits | None = None, model: nn.Module | None = None, progress: bool = True
) -> Trainer:
    """Build a Trainer and fit it; returns the trainer (model, buffer, run directory)."""
    trainer = Trainer(cfg, data, model, progress)
    trainer.fit()
    return trainer
