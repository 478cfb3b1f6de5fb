"""SIGKILL a training process at random moments, resume it until it finishes, and compare the
result with an uninterrupted run bit for bit (weights, optimiser state, replay buffer, RNGs)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from conftest import TINY
from torchjem.checkpoint import load_checkpoint

# 10 batches an epoch, 3 epochs, a mid-epoch checkpoint every 4 steps
ARGS = [*TINY, "data.limit=320", "train.epochs=3", "train.checkpoint_every=4", "--device=cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torchjem.cli", "train", *extra]
    return subprocess.Popen(cmd + ([] if "--resume" in extra else [*ARGS, f"--out={out}"]), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _flat(state: dict) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in state["model"].items()}
    for i, s in state["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    out["buffer"] = state["buffer"]["x"]
    out["rng"] = state["rng"]["torch"]
    return out


def run_with_kills(out: Path, delays: list[float]) -> list[tuple[int, int]]:
    """Train into ``out``, killing the process after each delay (seconds from its start) and
    resuming; returns the (step, batch) each resume started from (-1, -1: killed before the
    first checkpoint), one per kill that landed before the run finished."""
    resumed, proc = [], _train(out)
    for delay in delays:
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            last = out / "checkpoints" / "last.pt"
            state = load_checkpoint(last) if last.is_file() else {"step": -1, "batch": -1}
            resumed.append((int(state["step"]), int(state["batch"])))
        if not (out / "checkpoints" / "last.pt").is_file():  # killed before the first checkpoint
            proc = _train(out, "--overwrite") if out.exists() else _train(out)
        else:
            proc = _train(out, "--resume", str(out))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return resumed


def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path):
    ref = _train(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    want = _flat(load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt"))
    rng = random.Random(0)
    t0 = time.perf_counter()
    for trial in range(2):
        out = tmp_path / f"trial{trial}"
        kills = run_with_kills(out, [rng.uniform(2.0, 6.0) for _ in range(3)])  # timing decides where they land
        got = load_checkpoint(out / "checkpoints" / "last.pt")
        assert (got["step"], got["epoch"]) == (30, 3)
        flat = _flat(got)
        assert flat.keys() == want.keys()
        bad = [k for k in want if not torch.equal(want[k], flat[k])]
        assert not bad, f"trial {trial} (resumed from {kills}) differs in {bad[:5]}"
        assert not list((out / "checkpoints").glob("*.tmp"))
    assert time.perf_counter() - t0 < 600
