"""Interruption is a checkpoint: SIGINT / SIGTERM during training finish the step, write last.pt at
the current batch, name the resume command and exit 130 / 143; the resumed run equals an
uninterrupted one bit for bit. The signals are paced by the run's own progress (a logged step in
metrics.jsonl, or the objective's call count in-process), never by the clock alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, tiny_config
from torchjem import Trainer
from torchjem.checkpoint import load_checkpoint
from torchjem.errors import Interrupted

# 1000 images: 31 batches in the one epoch, a record each step; no checkpoint but the last
ARGS = [*TINY, "data.limit=1000", "train.epochs=1", "train.log_every=1", "--device=cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _flat(state: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in state["model"].items()}
    for i, s in state["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    out["buffer"], out["rng"] = state["buffer"]["x"], state["rng"]["torch"]
    return out


def _same(a: dict, b: dict) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    return [k for k in fa if not torch.equal(fa[k], fb[k])]


def _jem(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torchjem.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _logged_step(metrics: Path) -> int:
    step = -1
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                step = max(step, int(json.loads(line).get("step", -1)))
            except ValueError:  # a line being written
                pass
    return step


def _signal_at(proc: subprocess.Popen, metrics: Path, step: int, *signums: int) -> None:
    """Send ``signums`` once the run has logged ``step`` (polled: the run's progress decides when)."""
    deadline = time.time() + 240
    while proc.poll() is None and _logged_step(metrics) < step and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[1][-2000:]}"
    for s in signums:
        proc.send_signal(s)


@pytest.mark.slow
def test_sigint_and_sigterm_mid_epoch_save_name_the_resume_and_resume_bit_exact(tmp_path):
    ref = _jem("train", *ARGS, f"--out={tmp_path / 'ref'}")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    want = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    total = int(want["step"])
    assert total == 31  # 900 training images, the last batch short

    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / signal.Signals(signum).name
        proc = _jem("train", *ARGS, f"--out={out}")
        # a second signal right behind the first: ignored while the step ends and the checkpoint is written
        _signal_at(proc, out / "metrics.jsonl", 5, signum, signum)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err
        assert "Traceback" not in err
        last = load_checkpoint(out / "checkpoints" / "last.pt")
        step = int(last["step"])
        assert 5 < step < total and last["batch"] == step and last["epoch"] == 0  # mid-epoch, at the current batch
        lines = [line for line in err.splitlines() if "continue with" in line]
        name = signal.Signals(signum).name
        assert lines == [f"jem train: interrupted by {name} at step {step} of {total}; the checkpoint is saved; "
                         f"continue with: jem train --resume {out}"]
        events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
        assert events == [{"event": "interrupted", "step": step, "epoch": 0, "signal": int(signum)}]

        again = _jem(*lines[0].split("continue with: ")[1].split()[1:], "--quiet")  # the printed command
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        got = load_checkpoint(out / "checkpoints" / "last.pt")
        assert got["step"] == total
        assert not _same(want, got), f"{name}: the resumed run differs from the uninterrupted one"


class SignalAt:
    """Wraps an objective: sends ``signum`` to this process at its ``at``-th loss call (a step)."""

    def __init__(self, inner, at: int, signum: int = signal.SIGINT) -> None:
        self.inner, self.at, self.signum, self.calls = inner, at, signum, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return self.inner.loss(*args, **kwargs)


def test_in_process_interrupt_saves_the_step_ignores_a_second_signal_and_restores_handlers(tmp_path):
    extra = ["train.max_steps=12", "data.limit=600"]
    full = Trainer(tiny_config(*extra), progress=False, out=tmp_path / "full")
    full.fit()

    before = signal.getsignal(signal.SIGINT)
    t = Trainer(tiny_config(*extra), progress=False, out=tmp_path / "cut")
    t.objective = SignalAt(t.objective, at=5)
    saves = []
    save = t.state.save

    def save_with_a_second_signal(path):  # Ctrl-C again while the checkpoint is written: ignored
        os.kill(os.getpid(), signal.SIGINT)
        saves.append(path)
        return save(path)

    t.state.save = save_with_a_second_signal
    with pytest.raises(Interrupted) as info:
        t.fit()
    assert info.value.exit_code == 130 and isinstance(info.value, KeyboardInterrupt)
    assert "at step 5 of 12" in info.value.message and f"jem train --resume {tmp_path / 'cut'}" in info.value.message
    assert saves == [t.run.checkpoint("last")]
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are the caller's again
    assert load_checkpoint(t.run.checkpoint("last"))["step"] == 5

    resumed = Trainer.resume(tmp_path / "cut", progress=False)
    assert resumed.step == 5
    resumed.fit()
    assert not _same(load_checkpoint(full.run.checkpoint("last")), load_checkpoint(resumed.run.checkpoint("last")))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_sweep_worker_interrupted_saves_its_trial_and_the_same_command_continues_it(tmp_path, workers):
    out = tmp_path / "sw"
    args = ["sweep", "--grid", "optim.lr=0.001,0.002", "--out", str(out), "--heartbeat", "1", "--quiet",
            "--workers", str(workers), "--threads", "1",
            *TINY, "data.limit=256", "train.max_steps=40", "train.log_every=1", "device=cpu"]
    proc = _jem(*args)
    trial = out / "trials" / "p000-s1"
    # SIGTERM to the sweep's process only: with workers, it passes the signal on to them
    _signal_at(proc, trial / "metrics.jsonl", 3, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "continue with the same jem sweep command" in err
    cut = int(load_checkpoint(trial / "checkpoints" / "last.pt")["step"])
    assert 3 < cut < 40

    again = _jem(*args)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    record = json.loads((trial / "trial.json").read_text())
    assert record["resumed"] and record["steps"] == 40
    metrics = [json.loads(x) for x in (trial / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "loss" in m]
    assert steps == list(range(1, 41))  # continued from the interrupted step: none redone, none lost


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").is_file(), reason="no torchrun")
def test_torchrun_sigterm_every_rank_stops_after_the_same_step_and_the_resume_is_exact(tmp_path):
    """torchrun passes SIGTERM to both ranks; they agree on the step, write one checkpoint of both
    shards, and a torchrun resume equals an uninterrupted 2-process run bit for bit."""
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", "--rdzv-backend=c10d",
                "--rdzv-endpoint=127.0.0.1:0", "-m", "torchjem.cli", "train"]
    args = [*TINY, "data.limit=640", "train.epochs=1", "train.log_every=1", "--device=cpu", "--quiet"]

    def launch(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([*torchrun, *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    ref = launch(*args, f"--out={tmp_path / 'ref'}")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    want = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")

    out = tmp_path / "cut"
    proc = launch(*args, f"--out={out}")
    _signal_at(proc, out / "metrics.jsonl", 4, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun reports its workers' exit (and its own SignalException)
    assert err.count("jem train: interrupted by SIGTERM at step") == 1, err[-3000:]  # rank 0's line only
    cut = load_checkpoint(out / "checkpoints" / "last.pt")
    assert cut["distributed"]["world_size"] == 2 and 4 < cut["step"] < want["step"]
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events] == ["interrupted"] and events[0]["step"] == cut["step"]

    again = launch("--resume", str(out), "--quiet")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert not _same(want, load_checkpoint(out / "checkpoints" / "last.pt"))
