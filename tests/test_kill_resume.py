"""SIGKILL a training process at random points of its progress, resume it until it finishes, and
compare the result with an uninterrupted run bit for bit (weights, optimiser state, replay buffer,
RNGs). The kills are paced by the run's own progress (its checkpoints and logged steps), so they
land mid-run on a fast machine as on a slow one, and the test checks that they did."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from torchjem.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # processes that train: seconds to a minute each

# 10 batches an epoch, 3 epochs, a mid-epoch checkpoint every 4 steps
ARGS = [*TINY, "data.limit=320", "train.epochs=3", "train.checkpoint_every=4", "--device=cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torchjem.cli", "train", *extra]
    return subprocess.Popen(cmd + ([] if "--resume" in extra else [*ARGS, f"--out={out}"]), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _flat(state: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in state["model"].items()}
    for i, s in state["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    out["buffer"] = state["buffer"]["x"]
    out["rng"] = state["rng"]["torch"]
    return out


def _progress(out: Path, metrics_from: int, seen: dict) -> int:
    """How far the live process has got, in optimiser steps: its last checkpoint's step (re-read when
    the file changes) or a later step it logged (metrics.jsonl lines written after ``metrics_from``)."""
    step = -1
    last = out / "checkpoints" / "last.pt"
    try:
        mtime = last.stat().st_mtime_ns
        if seen.get("mtime") != mtime:
            seen["mtime"], seen["step"] = mtime, int(load_checkpoint(last)["step"])
        step = seen["step"]
    except (OSError, KeyError, ValueError, RuntimeError):
        pass  # not written yet, or being replaced this instant: the next poll sees it
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        with open(metrics) as f:
            f.seek(metrics_from)
            for line in f.read().splitlines():
                try:
                    step = max(step, int(json.loads(line).get("step", -1)))
                except (ValueError, TypeError):
                    pass  # a line still being written
    return step


def run_with_kills(out: Path, n_kills: int, rng: random.Random, total: int = 30) -> list[dict]:
    """Train into ``out``; SIGKILL the process once its progress reaches a random step (paced by the
    run itself, not the clock), resume, and again, ``n_kills`` times; then let it finish. Returns
    one record per kill: the target, whether the process was still running when the signal went
    (``alive``), and the (step, batch) of the checkpoint the next process resumed from."""
    kills: list[dict] = []
    proc, resumed_from, metrics_from = _train(out), 0, 0
    for _ in range(n_kills):
        target = min(total - 1, resumed_from + rng.randint(1, 8))
        seen: dict = {}
        while proc.poll() is None and _progress(out, metrics_from, seen) < target:
            time.sleep(0.005)  # polling interval only: when to kill is decided by the progress above
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        last = out / "checkpoints" / "last.pt"
        state = load_checkpoint(last) if last.is_file() else {"step": -1, "batch": -1}
        kills.append({"target": target, "alive": alive, "step": int(state["step"]), "batch": int(state["batch"])})
        if not alive and state["step"] == total:
            break  # finished before the signal (a fast machine): nothing to resume
        resumed_from = max(0, int(state["step"]))
        metrics = out / "metrics.jsonl"
        metrics_from = metrics.stat().st_size if metrics.is_file() else 0
        if not last.is_file():  # killed before the first checkpoint
            proc = _train(out, "--overwrite") if out.exists() else _train(out)
        else:
            proc = _train(out, "--resume", str(out))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return kills


def test_sigkill_mid_run_then_resume_is_bit_exact(tmp_path):
    ref = _train(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    want = _flat(load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt"))
    rng = random.Random(0)
    for trial in range(2):
        out = tmp_path / f"trial{trial}"
        kills = run_with_kills(out, 3, rng)
        # the kills landed mid-run: the process was running and its last checkpoint was short of the end
        mid_run = [k for k in kills if k["alive"] and 0 <= k["step"] < 30]
        assert mid_run, f"trial {trial}: no kill landed mid-run ({kills})"
        got = load_checkpoint(out / "checkpoints" / "last.pt")
        assert (got["step"], got["epoch"]) == (30, 3)
        flat = _flat(got)
        assert flat.keys() == want.keys()
        bad = [k for k in want if not torch.equal(want[k], flat[k])]
        assert not bad, f"trial {trial} (kills {kills}) differs in {bad[:5]}"
        assert not list((out / "checkpoints").glob("*.tmp"))
