"""Data-parallel training on 2 CPU processes with gloo (spawned, file:// rendezvous in tmp_path).

One spawn runs every distributed scenario in a single process group (starting processes is the
expensive part); each rank saves what it saw and the tests below compare it with single-process
runs of the same global batch.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import Faulty, spawn_workers, tiny_config
from torchjem import RunDir, Trainer, load_run, sampling
from torchjem.checkpoint import load_checkpoint
from torchjem.evaluate.classification import classification
from torchjem.training import distributed as ddp

pytestmark = pytest.mark.slow  # processes that train: seconds to a minute each

WORLD = 2
# 192 images / global batch 32 = 6 steps an epoch; 3 epochs with an lr decay at epoch 2.
BASE = ["data.limit=192", "train.epochs=3", "optim.decay_epochs=[2]", "train.save_every=1", "train.log_every=3"]
CLF = ["train.clf_only=true", "objective.data_noise=0", "train.max_steps=6"]
FAULT = ["train.max_steps=16", "divergence.snapshot_every=5", "divergence.check_every=1"]


def cfg(*extra):
    return tiny_config(*BASE, *extra)


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.jem.parameters()]).clone()


def _worker(rank: int, tmp: str) -> None:
    """Every distributed scenario, in order, on one rank; results go to tmp/<name>_<rank>.pt."""
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    ddp.init_distributed("cpu", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD, timeout_s=120)
    out: dict = {}
    try:
        # a global batch that does not split over the ranks is refused before any work
        try:
            Trainer(cfg("train.batch_size=33"), progress=False, out=tmp_path / "bad")
        except ValueError as e:
            out["bad_batch"] = str(e)

        # an uninterrupted run
        full = Trainer(cfg(), progress=False, out=tmp_path / "full")
        out["local_batch"], out["shard_size"] = full.batches.local, full.buffer.size
        full.fit()
        out["full_params"], out["full_buffer"] = _params(full), full.buffer.x.clone()
        out["full_val"] = full.validate()

        # the same run killed mid-way through epoch 2 on every rank, then resumed
        killed = Trainer(cfg(), progress=False, out=tmp_path / "killed")
        killed.objective = Faulty(killed.objective, kill_at=killed.steps_per_epoch + 3)
        try:
            killed.fit()
        except KeyboardInterrupt:
            out["killed_at"] = killed.step
        resumed = Trainer.resume(tmp_path / "killed", progress=False)
        out["resumed_from"] = (resumed.epoch, resumed.step)
        resumed.fit()
        out["resumed_params"], out["resumed_buffer"] = _params(resumed), resumed.buffer.x.clone()

        # a NaN loss on rank 1 only: every rank must rewind
        fault = Trainer(cfg(*FAULT), progress=False, out=tmp_path / "fault")
        if rank == 1:
            fault.objective = Faulty(fault.objective, nan_at={12})
        res = fault.fit()
        out["fault"] = {"result": res, "lr_scale": fault.state.progress.lr_scale, "params": _params(fault)}

        # a plain classifier without noise: must follow the single-process run of the same global batch
        clf = Trainer(cfg(*CLF), progress=False, out=tmp_path / "clf")
        clf.fit()
        out["clf_params"] = _params(clf)

        # a single-process checkpoint resumed on 2 processes (buffer re-split, RNGs re-seeded), with a
        # larger buffer: rank 0's shard comes whole from the checkpoint, rank 1's half new
        up = Trainer.resume(tmp_path / "single", progress=False, overrides=["train.epochs=4", "buffer.size=300"])
        out["up_shard"] = up.buffer.x.clone()
        up.fit()
        out["up_params"], out["up_step"] = _params(up), up.step
    finally:
        torch.save(out, tmp_path / f"result_{rank}.pt")
        ddp.shutdown_distributed()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    single = Trainer(cfg(), progress=False, out=tmp / "single")
    single.fit()
    clf_single = Trainer(cfg(*CLF), progress=False, out=tmp / "clf_single")
    clf_single.fit()
    spawn_workers(_worker, tmp, WORLD)  # the workers also resume `single` on 2 processes (into the same run directory)
    ranks = [torch.load(tmp / f"result_{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"tmp": tmp, "single": single, "clf_single": clf_single, "ranks": ranks}


# -- identical replicas, the same optimisation as one process ----------------------------------
def test_ranks_end_with_identical_parameters_but_own_buffers(runs):
    r0, r1 = runs["ranks"]
    for key in ("full_params", "resumed_params", "clf_params", "up_params"):
        assert torch.equal(r0[key], r1[key]), key
    assert torch.equal(r0["fault"]["params"], r1["fault"]["params"])
    # the SGLD chains (run with frozen parameters outside DDP) differ per rank: own seeds, own shards
    assert r0["shard_size"] == r1["shard_size"] == 100
    assert not torch.equal(r0["full_buffer"], r1["full_buffer"])


def test_global_batch_is_split_over_ranks(runs):
    r0, _ = runs["ranks"]
    assert r0["local_batch"] == 16
    assert "train.batch_size=33" in r0["bad_batch"] and "divisible by the 2 processes" in r0["bad_batch"]


def test_classifier_follows_single_process_run_of_the_same_global_batch(runs):
    # no noise anywhere: the averaged gradients of two 16-image halves are the 32-image gradient
    single = runs["clf_single"]
    assert torch.allclose(runs["ranks"][0]["clf_params"], _params(single), atol=1e-5)
    dist_loss = [r["loss"] for r in RunDir(runs["tmp"] / "clf").read_metrics() if "loss" in r]
    single_loss = [r["loss"] for r in single.run.read_metrics() if "loss" in r]
    assert len(dist_loss) == len(single_loss) == 2
    assert dist_loss == pytest.approx(single_loss, abs=1e-5)


def test_jem_loss_matches_single_process_run(runs):
    # JEM runs draw different noise (data noise, chains) per rank, so the losses agree only closely
    # (steps past 18 in `single` are the workers' 2-process continuation)
    single = [r for r in runs["single"].run.read_metrics() if "loss" in r and r["step"] <= 18]
    dist = [r for r in RunDir(runs["tmp"] / "full").read_metrics() if "loss" in r]
    assert [r["step"] for r in dist] == [r["step"] for r in single]
    for a, b in zip(dist, single):
        assert a["loss"] == pytest.approx(b["loss"], abs=0.01), a["step"]
    assert dist[0]["acc"] == pytest.approx(single[0]["acc"], abs=0.1)


def test_validation_is_combined_over_ranks(runs):
    val = runs["ranks"][0]["full_val"]
    assert val == runs["ranks"][1]["full_val"]
    run = load_run(runs["tmp"] / "full", "last", "cpu")
    data = runs["single"].data
    ref = classification(run.jem, data.x_val, data.y_val)
    assert val["val_acc"] == pytest.approx(ref.accuracy, abs=1e-6)
    assert val["val_nll"] == pytest.approx(ref.nll, abs=1e-5)


# -- only rank 0 writes; checkpoints hold every rank ----------------------------------------------
def test_only_rank_zero_writes_the_run_directory(runs):
    run = RunDir(runs["tmp"] / "full")
    text = run.log.read_text()
    assert text.count("training JEM on digits") == 1
    assert "data-parallel on 2 processes: global batch 32 = 2 x 16 per rank" in text
    steps = [r["step"] for r in run.read_metrics() if "loss" in r]
    assert steps == sorted(set(steps)) == [3, 6, 9, 12, 15, 18]


def test_checkpoint_holds_every_shard_and_rng_state(runs):
    r0, r1 = runs["ranks"]
    state = load_checkpoint(runs["tmp"] / "full" / "checkpoints" / "last.pt")
    assert state["distributed"]["world_size"] == 2
    rngs = state["distributed"]["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])
    assert torch.equal(state["buffer"]["x"], sampling.merge_shards([r0["full_buffer"], r1["full_buffer"]], 10))
    loaded = load_run(runs["tmp"] / "full", "last", "cpu")  # readable as a single-process run
    assert loaded.buffer.size == 200 and torch.equal(loaded.buffer.x, state["buffer"]["x"])


def test_resumed_distributed_run_equals_uninterrupted_run(runs):
    for r in runs["ranks"]:
        assert r["killed_at"] == 8 and r["resumed_from"] == (1, 6)
        assert torch.equal(r["resumed_params"], r["full_params"])
        assert torch.equal(r["resumed_buffer"], r["full_buffer"])


# -- coordinated divergence recovery -----------------------------------------------------------
def test_fault_on_one_rank_rewinds_every_rank(runs):
    for r in runs["ranks"]:
        f = r["fault"]
        assert f["result"]["step"] == 16 and f["result"]["retries"] == 1 and f["lr_scale"] == 0.5
        assert torch.isfinite(f["params"]).all()
    events = [r for r in RunDir(runs["tmp"] / "fault").read_metrics() if r.get("event") == "recovery"]
    assert len(events) == 1
    assert "loss is nan on rank 1" in events[0]["cause"]  # (averaged NaN gradients reach rank 0 weights too)
    # snapshots: each epoch end (6 steps) and 5 steps after the last one: 6, 11
    assert events[0]["at_step"] == 12 and events[0]["rewound_to"] == 11


# -- another world size --------------------------------------------------------------------------
def test_single_process_checkpoint_resumes_on_two_processes(runs):
    r0, r1 = runs["ranks"]
    single = runs["single"]
    # the single buffer's per-class blocks of 20 chains feed two shards of 15 per class: rank 0 takes
    # chains 0-14 of each class, rank 1 chains 15-19 and 10 new ones per class (fresh noise)
    blocks = single.buffer.x.reshape(10, 20, 1, 8, 8)
    assert torch.equal(r0["up_shard"], blocks[:, :15].reshape(150, 1, 8, 8))
    up1 = r1["up_shard"].reshape(10, 15, 1, 8, 8)
    assert torch.equal(up1[:, :5], blocks[:, 15:])
    new = up1[:, 5:]
    assert new.min() >= -1 and new.max() <= 1 and new.std() > 0.3  # U(-1, 1), not copies
    assert r0["up_step"] == 24
    text = single.run.log.read_text()
    assert (
        "checkpoint written by 1 process(es), resumed on 2: replay buffer re-split into 2 shard(s) of 150 entries "
        "(100 new chains), RNGs re-seeded per rank" in text
    )
    assert any(r.get("event") == "resharded" for r in single.run.read_metrics())


def test_distributed_checkpoint_resumes_in_one_process(runs, tmp_path):
    shutil.copytree(runs["tmp"] / "full", tmp_path / "full")
    merged = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["buffer"]["x"]
    t = Trainer.resume(tmp_path / "full", progress=False, overrides=["train.epochs=4"])
    assert t.world_size == 1 and t.step == 18 and torch.equal(t.buffer.x, merged)
    t.fit()
    assert t.step == 24
    assert "checkpoint written by 2 process(es), resumed on 1" in t.run.log.read_text()


# -- helpers without a process group ---------------------------------------------------------------
def test_single_process_creates_no_process_group(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ddp.init_distributed("cpu") == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert ddp.get_world_size() == 1 and ddp.is_main_process()
    t = torch.arange(3.0)
    assert ddp.all_reduce_mean(t) is t and ddp.flagged_ranks(True) == [0] and ddp.run_on_main(lambda: 5) == 5


def test_buffer_shards_merge_and_split_back():
    shards = [torch.randn(30, 1, 2, 2) for _ in range(3)]  # 3 ranks, 10 classes x 3 chains
    merged = sampling.merge_shards(shards, 10)
    assert merged.shape == (90, 1, 2, 2)
    assert torch.equal(merged[:3], shards[0][:3]) and torch.equal(merged[3:6], shards[1][:3])
    for r in range(3):
        back, missing = sampling.split_shard(merged, 10, r, world=3, size=30)
        assert missing == 0 and torch.equal(back, shards[r])
    # onto 2 ranks of 5 per class: 4 + 5 = 9 per class exist, 1 per class missing on rank 1
    back, missing = sampling.split_shard(merged, 10, 1, world=2, size=50)
    assert missing == 1 and back.flatten(1).isnan().any(1).sum() == 10
    with pytest.raises(ValueError, match="buffer.size=15 is too small for 2 processes"):
        sampling.shard_size(15, 10, 2)


def test_device_per_rank_rejects_a_fixed_gpu(monkeypatch):
    with pytest.raises(ValueError, match="cuda:LOCAL_RANK"):
        ddp._rank_device("cuda:1")


# -- the command line under torchrun ---------------------------------------------------------------
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_cli_trains_and_exits_cleanly(tmp_path):
    from conftest import TINY

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "run"
    cmd = [
        torchrun, "--nproc_per_node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "-m", "torchjem.cli",
        "train", *TINY, "data.limit=96", "train.max_steps=4", "--device=cpu", f"--out={out}", "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr and "Abort" not in proc.stderr
    assert proc.stdout.count('"step": 4') == 1  # only rank 0 prints the result
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["distributed"]["world_size"] == 2 and state["step"] == 4
