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

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, from_dict, load_config, save_config
from .data import DataSplits, augment, load_data
from .energy import JEM, as_jem
from .evaluate.classification import classification
from .objective import HybridObjective
from .run import RunDir, build_buffer, build_jem, build_sampler, resolve_device

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
        if not self.count:
            return None
        means = dict(zip(self.sums, (torch.stack(list(self.sums.values())) / self.count).tolist()))
        means["it_per_s"] = self.count / (time.perf_counter() - self.t0)
        self.sums, self.count, self.t0 = {}, 0, time.perf_counter()
        return means


class Trainer:
    """Hybrid JEM training (or a plain classifier with ``train.clf_only``) into a run directory.

    ``model`` may be any classifier nn.Module (returning logits); by default the configured net
    is built. ``data`` defaults to the configured data set.
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
        self.device = resolve_device(cfg.device)
        self.progress = progress
        d = cfg.data
        self.data = data or load_data(d.name, d.root, d.val_size, d.split_seed, d.classes, d.limit)
        self.shape, self.n_classes = self.data.shape, self.data.n_classes
        seed_everything(cfg.seed)
        self.jem: JEM = (as_jem(model) if model is not None else build_jem(cfg, self.shape, self.n_classes)).to(
            self.device
        )
        self._check_model()
        self.model: nn.Module = self.jem  # what the loss runs through (DDP wraps it here)
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
            self.buffer = build_buffer(cfg, self.shape, self.n_classes, self.device)
            if cfg.buffer.init == "gaussian":
                self.buffer.fit_gaussian(self.data.x_train, self.data.y_train)
        self.optimizer = self._make_optimizer()
        self.x_train = self.data.x_train.to(self.device)
        self.y_train = self.data.y_train.to(self.device)
        self.labelled = labelled_mask(self.data.y_train, d.labels_per_class, self.n_classes, d.split_seed).to(
            self.device
        )
        self.steps_per_epoch = max(1, len(self.x_train) // cfg.train.batch_size)
        self.step = 0
        self.epoch = 0  # completed epochs
        self.lr_scale = 1.0
        self.retries = 0
        self.best_val = -1.0
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_step = -1

    # -- set-up --------------------------------------------------------------------------
    def _check_model(self) -> None:
        probe = self.data.x_train[:2].to(self.device)
        try:
            with torch.no_grad():
                out = self.jem.eval().logits(probe)
        except RuntimeError as e:
            raise ValueError(
                f"the network cannot take inputs of shape {tuple(probe.shape[1:])} "
                f"from data set {self.data.name!r}: {e}"
            ) from None
        finally:
            self.jem.train()
        if out.ndim != 2 or out.shape[1] != self.n_classes:
            raise ValueError(
                f"the network returns shape {tuple(out.shape)}; "
                f"expected (N, {self.n_classes}) logits for {self.n_classes} classes"
            )

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = [p for p in self.jem.parameters() if p.requires_grad]
        fused = {"fused": True} if self.device.type == "cuda" else {}
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
        return {
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.jem.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.buffer is not None and state.get("buffer") is not None:
            self.buffer.load_state_dict(state["buffer"])
        set_rng_state(state["rng"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.lr_scale, self.retries = float(state["lr_scale"]), int(state["retries"])
        self.best_val = float(state["best_val"])

    def save(self, name: str) -> Path:
        path = self.run.checkpoint(name)
        save_checkpoint(path, self.state_dict())
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
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"cannot resume {str(run.path)!r}: no checkpoint at {ckpt} (it is written after the first epoch)"
            )
        state = load_checkpoint(ckpt)
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
        seed_everything(self.cfg.seed + 7919 * self.retries)
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
        with open(self.run.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _event(self, kind: str, **fields: Any) -> None:
        self._write_metrics({"event": kind, "step": self.step, "epoch": self.epoch, **fields})

    # -- the loop ------------------------------------------------------------------------
    def _batches(self, epoch: int):
        """This epoch's batches, in an order fixed by (seed, epoch) so resume is exact."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.x_train), generator=g).to(self.device)
        bs = self.cfg.train.batch_size
        for i in range(self.steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
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
        loss, stats = self.objective(
            self.model, x, y, self.sampler, self.buffer, None if all_labelled else labelled, sample_model=self.jem
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return stats

    def validate(self) -> dict[str, float]:
        if len(self.data.x_val) == 0:
            return {}
        res = classification(self.jem, self.data.x_val, self.data.y_val)
        return {"val_acc": res["accuracy"], "val_nll": res["nll"]}

    def _setup_logging(self) -> logging.Handler:
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
            return self._loop()
        finally:
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
        bar = tqdm(total=total, initial=min(self.step, total), disable=not self.progress, desc="train", unit="it")
        window = _Window()
        last_val: dict[str, float] = {}
        while not self._done():
            for x, y, lab in self._batches(self.epoch):
                stats = self.train_step(x, y, lab)
                window.add(stats)
                bar.update(1)
                if self.step % div.check_every == 0:
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
