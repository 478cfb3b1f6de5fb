"""Nothing lost, nothing half-done: one writer per run directory, exact resume (mid-epoch
included), divergence rewinds that redo the lost steps, and every bad input a clean message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY, Faulty, tiny_config
from torchjem import DivergenceError, Trainer
from torchjem.checkpoint import load_checkpoint, save_checkpoint
from torchjem.cli import main
from torchjem.errors import RunDirError


def small(*extra: str):
    """The tiny config on 320 digits: 10 batches of 32 an epoch."""
    return tiny_config("data.limit=320", *extra)


def _state(t: Trainer) -> dict[str, torch.Tensor]:
    """Everything that must match bit for bit: weights, optimiser moments, replay buffer."""
    out = {f"model.{k}": v for k, v in t.jem.state_dict().items()}
    for i, s in enumerate(t.optimizer.state_dict()["state"].values()):
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    if t.buffer is not None:
        out["buffer"] = t.buffer.x
    return out


def _same(a: Trainer, b: Trainer) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- one writer ----------------------------------------------------------------------------------
def test_a_second_trainer_on_the_same_directory_is_refused(tmp_path):
    first = Trainer(small("train.max_steps=2"), progress=False, out=tmp_path / "r")
    with pytest.raises(RunDirError, match=r"is in use by pid \d+ on"):
        Trainer(small("train.max_steps=2"), progress=False, out=tmp_path / "r")
    first.fit()  # the first one trains, then lets go
    with pytest.raises(RunDirError, match="already holds a run.*--resume.*--overwrite"):
        Trainer(small("train.max_steps=2"), progress=False, out=tmp_path / "r")
    again = Trainer(small("train.max_steps=3"), progress=False, overwrite=True, out=tmp_path / "r")
    assert not again.run.metrics.exists()  # the old run's files are gone, not appended to
    assert again.fit()["step"] == 3


@pytest.mark.slow
def test_the_cli_refuses_a_finished_run_and_a_running_one(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", *TINY, "train.max_steps=2", f"--out={out}", "--device=cpu", "--quiet"]
    assert main(args) == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
    # another process holds the lock: a trainer in a subprocess that waits on stdin
    code = (
        "import sys; sys.path.insert(0, 'tests'); from conftest import tiny_config; from torchjem import Trainer; "
        f"t = Trainer(tiny_config('train.max_steps=1'), progress=False, out={str(tmp_path / 'busy')!r}); "
        "print('ready', flush=True); sys.stdin.readline()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        busy = ["train", *TINY, f"--out={tmp_path / 'busy'}", "--device=cpu", "--quiet"]
        assert main(busy) == 2 and f"in use by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.communicate("\n", timeout=60)
    assert main([*busy[:-1], "train.max_steps=1", "--quiet"]) == 0  # its lock went with it


# -- exact resume --------------------------------------------------------------------------------
def test_a_max_steps_run_resumes_mid_epoch_exactly(tmp_path):
    extra = ["optim.decay_epochs=[1]", "train.max_steps=27"]  # 10 batches an epoch: ends mid-epoch 3
    full = Trainer(small(*extra), progress=False, out=tmp_path / "full")
    full.fit()
    part = Trainer(small("optim.decay_epochs=[1]", "train.max_steps=13"), progress=False, out=tmp_path / "part")
    part.fit()
    assert load_checkpoint(part.run.checkpoint("last"))["batch"] == 3
    more = Trainer.resume(part.run.path, progress=False, overrides=["train.max_steps=27"])
    assert (more.epoch, more.state.progress.batch) == (1, 3)
    more.fit()
    _same(full, more)


def test_a_kill_after_a_mid_epoch_checkpoint_resumes_there_exactly(tmp_path):
    extra = ["train.epochs=2", "train.checkpoint_every=4"]
    full = Trainer(small(*extra), progress=False, out=tmp_path / "full")
    full.fit()
    killed = Trainer(small(*extra), progress=False, out=tmp_path / "killed")
    killed.objective = Faulty(killed.objective, kill_at=16)  # after the checkpoint of step 12 (epoch 2, batch 2)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    (killed.run.checkpoints / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a killed write
    resumed = Trainer.resume(killed.run.path, progress=False)
    assert (resumed.step, resumed.epoch, resumed.state.progress.batch) == (12, 1, 2)
    assert not list(killed.run.checkpoints.glob("*.tmp"))
    resumed.fit()
    _same(full, resumed)
    assert load_checkpoint(resumed.run.checkpoint("best"))["epoch"] == 2


def test_a_kill_during_the_epoch_end_writes_redoes_the_epoch_end(tmp_path):
    extra = ["train.epochs=2"]
    full = Trainer(small(*extra), progress=False, out=tmp_path / "full")
    full.fit()
    t = Trainer(small(*extra), progress=False, out=tmp_path / "cut")
    real, calls = t.save, []

    def save_then_die(name: str):
        calls.append(name)
        if name == "best" and t.epoch == 2:
            real(name)
            raise KeyboardInterrupt("killed between best.pt and last.pt")
        return real(name)

    t.save = save_then_die
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert load_checkpoint(t.run.checkpoint("last"))["epoch"] == 1  # last is the commit: epoch 2 not done
    resumed = Trainer.resume(t.run.path, progress=False)
    resumed.fit()
    _same(full, resumed)
    assert load_checkpoint(resumed.run.checkpoint("last"))["epoch"] == 2
    assert [r["epoch"] for r in resumed.run.read_metrics() if "val_acc" in r and "event" not in r] == [1, 2, 2]


# -- divergence ----------------------------------------------------------------------------------
def test_a_rewind_redoes_the_lost_steps_across_an_epoch_end(tmp_path):
    cfg = small("train.epochs=3", "divergence.snapshot_every=4", "divergence.check_every=1")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    t.objective = Faulty(t.objective, nan_at={12})  # in epoch 2 (10 batches an epoch)
    result = t.fit()
    (event,) = [r for r in t.run.read_metrics() if r.get("event") == "recovery"]
    assert (event["at_step"], event["rewound_to"]) == (12, 10)  # the epoch-end snapshot
    assert result["step"] == 30 and result["epoch"] == 3  # every planned step was taken
    assert load_checkpoint(t.run.checkpoint("last"))["step"] == 30


def test_a_diverged_update_is_never_saved(tmp_path):
    cfg = small("optim.name=sgd", "optim.lr=1e38", "optim.warmup_iters=0", "train.max_steps=1")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    with pytest.raises(DivergenceError, match="non-finite.*no checkpoint was written yet: start again"):
        t.fit()
    assert not t.run.checkpoint("last").exists()


def test_a_resume_with_a_new_lr_gets_a_fresh_retry_budget(tmp_path):
    cfg = small("train.epochs=3", "divergence.max_retries=1", "divergence.check_every=1")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    # one recovery in epoch 1 (call 5), then NaN from the first step of epoch 2 on (call 16): gives up
    t.objective = Faulty(t.objective, nan_at={5, *range(16, 60)})
    with pytest.raises(DivergenceError, match=r"then continue from .*last\.pt with `jem train --resume"):
        t.fit()
    saved = load_checkpoint(t.run.checkpoint("last"))
    assert saved["epoch"] == 1 and saved["retries"] == 1 and saved["lr_scale"] == 0.5
    same = Trainer.resume(t.run.path, progress=False)
    assert same.state.progress.retries == 1  # the same lr: the budget stays used
    same.lock.release()
    new = Trainer.resume(t.run.path, progress=False, overrides=["optim.lr=0.0005"])
    assert (new.state.progress.retries, new.state.progress.lr_scale) == (0, 1.0)
    assert new.fit()["step"] == 30


# -- bad input: one line, exit 2, nothing written --------------------------------------------------
def _bad_files(tmp_path):
    """Damaged files in each format the CLI reads."""
    d = tmp_path / "files"
    (d / "img" / "a").mkdir(parents=True)
    (d / "img" / "b").mkdir(parents=True)
    for c in "ab":
        for i in range(3):
            (d / "img" / c / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (d / "svhn").mkdir()
    for split in ("train", "test"):
        (d / "svhn" / f"{split}_32x32.mat").write_bytes(b"MATLAB 5.0 garbage" * 20)
    (d / "garbage.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(d / "neg.npz", x=np.zeros((10, 1, 4, 4), np.uint8), y=np.arange(10) - 3)
    (d / "bad.yaml").write_text("data: [1, 2\n")
    (d / "a_file").write_text("not a folder")
    run = tmp_path / "run"
    assert main(["train", *TINY, "train.max_steps=1", f"--out={run}", "--device=cpu", "--quiet"]) == 0
    good = load_checkpoint(run / "checkpoints" / "last.pt")
    bad_runs = {}
    for name, writer in {
        "truncated": lambda p: p.write_bytes((run / "checkpoints" / "last.pt").read_bytes()[:500]),
        "empty": lambda p: p.write_bytes(b""),
        "crafted": lambda p: torch.save({"model": Faulty(None)}, p),
        "foreign": lambda p: save_checkpoint(p, {"weights": good["model"]}),
    }.items():
        r = tmp_path / f"bad_{name}"
        (r / "checkpoints").mkdir(parents=True)
        writer(r / "checkpoints" / "last.pt")
        bad_runs[name] = r
    return d, run, bad_runs


@pytest.mark.slow
def test_every_bad_input_is_one_clean_line(tmp_path, capsys):
    d, run, bad = _bad_files(tmp_path)
    out = tmp_path / "never"
    train = ["train", *TINY, "train.max_steps=1", f"--out={out}", "--device=cpu", "--quiet"]
    cases = {
        "unknown key": [*train, "optim.lrr=0.1"],
        "lr inf": [*train, "optim.lr=inf"],
        "noise inf": [*train, "sgld.noise=inf"],
        "epochs inf": [*train, "train.epochs=inf"],
        "max_loss nan": [*train, "divergence.max_loss=nan"],
        "weight decay": [*train, "optim.weight_decay=-1"],
        "width abc": [*train, "net.kwargs.width=abc"],
        "yaml override": [*train, "data={a"],
        "yaml file": ["train", "--config", str(d / "bad.yaml"), f"--out={out}"],
        "unknown recipe": ["train", "--config", "no_such_recipe", f"--out={out}"],
        "unknown net": [*train, "net.name=resnet9000"],
        "bad import path": [*train, "net.name=no_such_module_xyz:make"],
        "out under a file": ["train", *TINY, f"--out={d / 'a_file' / 'run'}", "--quiet"],
        "corrupt png": [*train, "data.name=image_folder", f"data.root={d / 'img'}"],
        "garbage mat": [*train, "data.name=svhn", f"data.root={d / 'svhn'}"],
        "garbage npz": [*train, "data.name=npz", f"data.root={d / 'garbage.npz'}"],
        "negative labels": [*train, "data.name=npz", f"data.root={d / 'neg.npz'}"],
        "missing data": [*train, "data.name=cifar10", f"data.root={tmp_path / 'nowhere'}"],
        "bad device": ["train", *TINY, f"--out={out}", "--device=tpu"],
        "cuda without a gpu": ["sample", str(run), "--device=cuda"],
        "resume nothing": ["train", "--resume", str(tmp_path / "nowhere")],
        "resume and overwrite": ["train", "--resume", str(run), "--overwrite"],
        "sample n 0": ["sample", str(run), "--n", "0"],
        "sample steps -1": ["sample", str(run), "--steps", "-1"],
        "sample no run": ["sample", str(tmp_path / "nowhere")],
        "eval limit 0": ["eval", str(run), "--limit", "0"],
        "eval out under a file": ["eval", str(run), "--out", str(d / "a_file" / "r"), "--no-generation"],
        "eval bad ood": ["eval", str(run), "--ood", "no_such_set"],
        "attack out under a file": ["attack", str(run), "--out", str(d / "a_file" / "r"), "--limit", "2"],
        "attack bad eps": ["attack", str(run), "--eps", "-0.1", "0.1"],  # (any order is fine: sorted)
        "attack refine -1": ["attack", str(run), "--refine-steps", "-1"],
        "attack saved file missing": ["attack", "--evaluate-saved", str(tmp_path / "x.pt"), "--model", str(run)],
    }
    for name, r in bad.items():
        cases[f"{name} checkpoint: eval"] = ["eval", str(r), "--no-generation"]
        cases[f"{name} checkpoint: sample"] = ["sample", str(r)]
        cases[f"{name} checkpoint: attack"] = ["attack", str(r), "--limit", "2"]
        cases[f"{name} checkpoint: resume"] = ["train", "--resume", str(r)]
    failures = []
    for name, argv in cases.items():
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        ok = code == 2 and len(err) == 1 and ": error: " in err[0] and "Traceback" not in err[0]
        if not ok or out.exists():
            failures.append(f"{name}: exit {code}, stderr {err[-3:]}, wrote {out.exists()}")
    assert not failures, "\n".join(failures)
    assert len(cases) >= 45


def test_a_full_disk_is_a_message_naming_the_file_and_the_old_checkpoint_survives(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    args = ["train", *TINY, "train.max_steps=2", f"--out={out}", "--device=cpu", "--quiet"]
    assert main(args) == 0
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full_disk(obj, f, *a, **k):  # what torch's zip writer raises when the disk fills up mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(["train", "--resume", str(out), "train.max_steps=3", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write '{last}'" in err[0] and "free space" in err[0]
    assert last.read_bytes() == before and not list(last.parent.glob("*.tmp"))


def test_waiting_for_a_run_directory_returns_when_its_writer_lets_go(tmp_path):
    import threading

    from torchjem.rundir import RunDir, RunLock

    RunLock(RunDir(tmp_path / "none")).wait()  # no lock file: returns at once
    writer = RunLock(RunDir(tmp_path / "r"))
    writer.acquire()
    waiter = threading.Thread(target=RunLock(RunDir(tmp_path / "r")).wait)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # held by the writer
    writer.release()
    waiter.join(5)
    assert not waiter.is_alive()
