"""A batch-norm JEM data-parallel: a Wide-ResNet with batch norm and the SADA-JEM options (train-mode
chains, clamped SGLD, ASAM's second pass, energy penalty, full-covariance buffer, augmentation kept
out of p(x)) on 2 CPU processes with gloo (spawned, file:// rendezvous in tmp_path).

The data and sample passes are one DDP forward (torchjem.training.distributed._JointOutputs), so
the refusal of batch norm under torchrun is gone. What must equal a single-process run of the same
global batch, and what cannot:

- with ``train.sync_bn`` the batch statistics are the global batch's, so a step on given data and
  samples equals the single-process step (parameters and running statistics);
- without it each rank normalises its own slice: the ranks stay identical to each other, but not
  to the single process (the difference is asserted, so the statement stays true);
- the chains and data noise draw from each rank's own seed, so whole runs agree in their losses
  only closely (as for nets without batch norm, tests/test_distributed.py).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import Faulty, spawn_workers, tiny_config
from torchjem import RunDir, Trainer, build, load_run
from torchjem.checkpoint import load_checkpoint
from torchjem.objective import Batch
from torchjem.training import distributed as ddp

WORLD = 2
# WRN-10-1 with batch norm on digits, SADA-JEM's options; 128 images / global batch 32 = 4 steps an epoch
SADA = [
    "net.name=wrn", "net.kwargs.depth=10", "net.kwargs.width=1", "net.kwargs.norm=batch", "net.kwargs.bn_momentum=0.9",
    "sgld.steps=3", "sgld.noise=0", "sgld.clamp=true", "sgld.grad_clamp=1", "sgld.model_mode=train",
    "optim.name=sgd", "optim.lr=0.01", "optim.sam_rho=0.5", "optim.sam_adaptive=true",
    "objective.energy_l2=0.1", "objective.data_noise=0", "buffer.init=gaussian_full",
    "data.augment=true", "data.augment_px=false", "data.limit=128",
    "train.epochs=2", "train.save_every=1", "train.log_every=2",
]
SYNC = ["train.sync_bn=true"]
TB = ["train.tensorboard=true"] if importlib.util.find_spec("tensorboard") else []
JEMPP = ["sgld.kind=pyld", "sgld.steps=2", "sgld.inner_steps=2", "train.max_steps=2"]


def cfg(*extra):
    return tiny_config(*SADA, *extra)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _bn_stats(model):
    return torch.cat([b.detach().float().flatten() for n, b in model.named_buffers() if "running" in n]).clone()


class FixedDraw:
    """The objective with its random draw replaced by a given global batch (data and samples), of
    which this rank takes its slice: the rest of the step (DDP's one forward, ASAM, the optimiser) is real."""

    def __init__(self, inner, x, y, x_q, rank=0, world=1):
        n = len(x) // world
        part = slice(rank * n, (rank + 1) * n)
        self.inner, self.batch = inner, Batch(x[part], y[part], None, x_q[part], None, None)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def draw(self, model, x, y, *, x_px=None, **schedule):  # (the step plan's scale and K: fixed here)
        return self.batch


def fixed_inputs(trainer):
    g = torch.Generator().manual_seed(5)
    x, y = trainer.data.x_train[:32], trainer.data.y_train[:32]
    return x, y, torch.rand(32, 1, 8, 8, generator=g) * 2 - 1


def two_fixed_steps(trainer, rank=0, world=1):
    """Two optimiser steps on the fixed inputs; (parameters, running statistics, first step's loss)."""
    x, y, x_q = fixed_inputs(trainer)
    trainer.objective = FixedDraw(trainer.objective, x, y, x_q, rank, world)
    loss = ddp.all_reduce_mean(trainer.train_step(x, y)["loss"]).item()
    trainer.train_step(x, y)
    return _params(trainer.jem), _bn_stats(trainer.jem), loss


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    ddp.init_distributed("cpu", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD, timeout_s=120)
    out: dict = {}
    try:
        # one step on given data and samples: with and without synchronised batch norm
        for name, extra in (("sync", SYNC), ("local", [])):
            t = Trainer(cfg(*extra, "data.augment=false"), progress=False, out=tmp_path / f"eq_{name}")
            out[f"{name}_sync_modules"] = sum(isinstance(m, ddp.SyncBatchNorm) for m in t.jem.modules())
            out[name] = two_fixed_steps(t, rank, WORLD)

        # the SADA-JEM run, uninterrupted; then killed in epoch 2 and resumed on 2 processes
        full = Trainer(cfg(*SYNC, *TB), progress=False, out=tmp_path / "full")
        full.fit()
        out["full_params"], out["full_bn"], out["full_buffer"] = _params(full.jem), _bn_stats(full.jem), full.buffer.x
        killed = Trainer(cfg(*SYNC), progress=False, out=tmp_path / "killed")
        # killed in step 6 (two loss calls a step with ASAM)
        killed.objective = Faulty(killed.objective, kill_at=2 * killed.steps_per_epoch + 3)
        try:
            killed.fit()
        except KeyboardInterrupt:
            out["killed_at"] = killed.step
        resumed = Trainer.resume(tmp_path / "killed", progress=False)
        out["resumed_from"] = resumed.step
        resumed.fit()
        out["resumed_params"], out["resumed_bn"] = _params(resumed.jem), _bn_stats(resumed.jem)
        out["resumed_buffer"] = resumed.buffer.x

        # a single-process checkpoint of the same recipe continued on 2 processes
        up = Trainer.resume(tmp_path / "single", progress=False, overrides=["train.epochs=3"])
        up.fit()
        out["up_step"], out["up_params"] = up.step, _params(up.jem)

        # JEM++'s proximal Langevin (PYLD) with batch norm, without sync
        pp = Trainer(cfg(*JEMPP), progress=False, out=tmp_path / "jempp")
        out["jempp"] = pp.fit(), _params(pp.jem)
    finally:
        torch.save(out, tmp_path / f"result_{rank}.pt")
        ddp.shutdown_distributed()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_bn")
    reference = two_fixed_steps(Trainer(cfg("data.augment=false"), progress=False, out=tmp / "eq_single"))
    single = Trainer(cfg(), progress=False, out=tmp / "single")
    single.fit()
    spawn_workers(_worker, tmp, WORLD)  # the workers also resume `single` on 2 processes (into the same run directory)
    ranks = [torch.load(tmp / f"result_{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"tmp": tmp, "reference": reference, "ranks": ranks}


def test_batch_norm_jem_is_no_longer_refused_under_ddp():
    jem = build.build_jem(cfg(), (1, 8, 8), 10)
    plan = build.training_plan(cfg(*SYNC), jem, (1, 8, 8), world_size=2)
    assert plan.separate_passes and plan.sync_bn and plan.sampler
    assert not build.training_plan(cfg(*SYNC), jem, (1, 8, 8), world_size=1).sync_bn  # one process: plain BN


@pytest.mark.slow  # 2 training processes (the module fixture)
def test_sync_bn_step_equals_single_process_step_on_the_global_batch(runs):
    params, bn, loss = runs["reference"]
    for r in runs["ranks"]:
        assert r["sync_sync_modules"] == 7 and r["local_sync_modules"] == 0  # WRN-10-1: 7 batch norms
        p, s, dist_loss = r["sync"]
        assert torch.allclose(p, params, atol=2e-5), (p - params).abs().max()
        assert torch.allclose(s, bn, atol=2e-5), (s - bn).abs().max()  # running statistics of the global batch
        assert dist_loss == pytest.approx(loss, abs=1e-5)  # mean of the ranks' losses = the global batch's


@pytest.mark.slow  # 2 training processes (the module fixture)
def test_per_rank_batch_norm_keeps_ranks_identical_but_not_equal_to_one_process(runs):
    params, _, _ = runs["reference"]
    r0, r1 = runs["ranks"]
    assert torch.equal(r0["local"][0], r1["local"][0])  # DDP: identical replicas
    assert (r0["local"][0] - params).abs().max() > 1e-4  # each rank normalised its own 16 images


@pytest.mark.slow  # 2 training processes (the module fixture)
def test_sada_jem_trains_and_resumes_exactly_on_two_processes(runs):
    r0, r1 = runs["ranks"]
    for r in (r0, r1):
        assert r["killed_at"] == 5 and r["resumed_from"] == 4  # killed in epoch 2, resumed at its start
        assert torch.equal(r["resumed_params"], r["full_params"])
        assert torch.equal(r["resumed_bn"], r["full_bn"])
        assert torch.equal(r["resumed_buffer"], r["full_buffer"])
        assert torch.isfinite(r["full_params"]).all()
    assert torch.equal(r0["full_params"], r1["full_params"]) and torch.equal(r0["full_bn"], r1["full_bn"])
    assert not torch.equal(r0["full_buffer"], r1["full_buffer"])  # each rank its own chains
    records = RunDir(runs["tmp"] / "full").read_metrics()
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]  # rank 0's log, means over ranks
    assert [r["event"] for r in records if "event" in r] == ["done"]
    text = RunDir(runs["tmp"] / "full").log.read_text()
    assert "batch norm: data and sample passes in one DDP forward; batch statistics of the global batch" in text
    if TB:  # TensorBoard: rank 0's event file only
        assert len(list((runs["tmp"] / "full" / "tb").glob("events.out.tfevents.*"))) == 1
    run = load_run(runs["tmp"] / "full", "last", "cpu")  # a plain batch-norm net in one process
    assert not any(isinstance(m, ddp.SyncBatchNorm) for m in run.jem.modules())
    assert torch.equal(_params(run.jem), r0["full_params"])


@pytest.mark.slow  # 2 training processes (the module fixture)
def test_two_process_checkpoint_resumes_in_one_process_and_back(runs, tmp_path):
    r0, r1 = runs["ranks"]
    assert r0["up_step"] == r1["up_step"] == 12 and torch.equal(r0["up_params"], r1["up_params"])
    shutil.copytree(runs["tmp"] / "full", tmp_path / "full")
    state = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    assert state["distributed"]["world_size"] == 2
    t = Trainer.resume(tmp_path / "full", progress=False, overrides=["train.epochs=3"])
    assert t.world_size == 1 and t.step == 8
    assert not any(isinstance(m, ddp.SyncBatchNorm) for m in t.jem.modules())  # plain batch norm again
    assert torch.equal(_params(t.jem), r0["full_params"])
    t.fit()
    assert t.step == 12 and torch.isfinite(_params(t.jem)).all()
    assert "checkpoint written by 2 process(es), resumed on 1" in t.run.log.read_text()


@pytest.mark.slow  # 2 training processes (the module fixture)
def test_jempp_pyld_chains_with_batch_norm_run_data_parallel(runs):
    (res0, p0), (res1, p1) = runs["ranks"][0]["jempp"], runs["ranks"][1]["jempp"]
    assert res0["step"] == res1["step"] == 2 and torch.equal(p0, p1) and torch.isfinite(p0).all()


# -- the command line under torchrun -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_trains_and_resumes_the_sada_jem_recipe_with_batch_norm(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "run"
    launch = [torchrun, "--nproc_per_node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "-m",
              "torchjem.cli", "train"]
    recipe = ["--config", "sadajem_cifar10", "data.name=digits", "data.val_size=0.1", "net.kwargs.depth=10",
              "net.kwargs.width=1", "train.batch_size=16", "buffer.size=200", "train.sync_bn=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*launch, *recipe, "train.max_steps=3", "--device=cpu", f"--out={out}", "--quiet"],
                           capture_output=True, text=True, timeout=240, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "one process only" not in first.stderr and "terminate called" not in first.stderr
    again = subprocess.run([*launch, "--resume", str(out), "train.max_steps=5", "--device=cpu", "--quiet"],
                           capture_output=True, text=True, timeout=240, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count('"step": 5') == 1  # rank 0 prints the result
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["distributed"]["world_size"] == 2 and state["step"] == 5
    assert [r["step"] for r in RunDir(out).read_metrics() if r.get("event") == "done"] == [3, 5]
