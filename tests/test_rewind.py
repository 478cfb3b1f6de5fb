"""A divergence rewind restores the last good state exactly.

The guard keeps an in-memory snapshot; ``recover`` must bring back the weights, the optimiser's
state (Adam's moments and step counts), the replay buffer and the run's position (step, epoch,
batch, best score), back off the learning rate and SGLD step, count the retry and reseed the
RNGs (a fixed stream per retry, not the snapshot's: replaying the snapshot's stream would walk
into the same divergence). The strongest check: after the rewind, with the snapshot's RNG state
put back by hand, the same batches reproduce the steps taken after the snapshot bit for bit,
which needs every piece of state above (the chains start from the buffer, the lr follows the step).
"""

from __future__ import annotations

import copy
import inspect
import random
from dataclasses import asdict

import numpy as np
import pytest
import torch

from conftest import TINY
from torchjem import Trainer
from torchjem.config import load_config


def rng_states() -> tuple:
    return torch.get_rng_state().clone(), copy.deepcopy(np.random.get_state()), random.getstate()


def set_rng_states(s: tuple) -> None:
    torch.set_rng_state(s[0])
    np.random.set_state(s[1])
    random.setstate(s[2])


def rng_equal(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and all(np.array_equal(u, v) for u, v in zip(a[1], b[1])) and a[2] == b[2]


def model_state(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.jem.state_dict().items()}


def opt_state(t: Trainer) -> dict:
    return copy.deepcopy(t.optimizer.state_dict())


def same_tree(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tree(u, v) for u, v in zip(a, b))
    return a == b


def steps(t: Trainer, batches: list, n: int) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in t.train_step(x, y).items()} for x, y in batches[:n]]


def make_trainer(out, *extra: str) -> Trainer:
    """A tiny run on CPU into ``out`` (the run directory: a Trainer argument, or the config's
    ``out`` in the older API)."""
    if "out" in inspect.signature(Trainer).parameters:
        return Trainer(load_config(None, [*TINY, "device=cpu", *extra]), progress=False, out=out)
    return Trainer(load_config(None, [*TINY, "device=cpu", f"out={out}", *extra]), progress=False)


def release(t: Trainer) -> None:
    """The run directory's lock (``fit`` releases it; these tests step by hand)."""
    lock = getattr(t, "lock", None)
    if lock is not None and hasattr(lock, "release"):
        lock.release()


@pytest.fixture
def trainer(tmp_path):
    t = make_trainer(tmp_path / "r", "train.epochs=1", "divergence.lr_factor=0.5", "divergence.step_factor=0.25")
    yield t
    release(t)


def test_rewind_restores_the_snapshot_exactly(trainer):
    t = trainer
    assert t.buffer is not None
    batches = list(t.batches.epoch(0))
    steps(t, batches, 3)  # optimiser moments and buffer chains that are not the initial ones
    t.guard.snapshot()
    want_model, want_opt, want_buf = model_state(t), opt_state(t), t.buffer.x.clone()
    want_prog, want_rng = asdict(t.state.progress), rng_states()
    first = steps(t, batches[3:], 3)  # the steps the rewind takes back
    after_model, after_buf = model_state(t), t.buffer.x.clone()
    assert not same_tree(after_model, want_model) and not torch.equal(after_buf, want_buf)
    assert not same_tree(opt_state(t)["state"], want_opt["state"]) and t.state.progress.step == want_prog["step"] + 3

    fields = t.guard.recover("a test")
    assert same_tree(model_state(t), want_model)
    assert same_tree(opt_state(t), want_opt)
    assert torch.equal(t.buffer.x, want_buf)
    got_prog = asdict(t.state.progress)
    for k in ("step", "epoch", "batch", "best_val"):
        assert got_prog[k] == want_prog[k], k
    assert got_prog["retries"] == want_prog["retries"] + 1 == 1
    assert got_prog["lr_scale"] == want_prog["lr_scale"] * 0.5
    assert got_prog["step_scale"] == want_prog["step_scale"] * 0.25
    assert fields["rewound_to"] == want_prog["step"] and fields["at_step"] == want_prog["step"] + 3
    reseeded = rng_states()
    assert not rng_equal(reseeded, want_rng)  # a new stream, not the one that diverged

    # Replaying from the restored state with the snapshot's RNG (and lr scale) retraces the same steps.
    t.state.progress.lr_scale = want_prog["lr_scale"]
    set_rng_states(want_rng)
    again = steps(t, batches[3:], 3)
    assert again == first
    assert same_tree(model_state(t), after_model) and torch.equal(t.buffer.x, after_buf)


def test_the_reseeded_stream_is_fixed_by_seed_and_retry(tmp_path):
    """Two identical runs rewound at the same point draw the same stream afterwards; the second
    rewind of a run draws another one."""
    out = []
    for i in range(2):
        t = make_trainer(tmp_path / f"r{i}", "train.epochs=1")
        try:
            batches = list(t.batches.epoch(0))
            steps(t, batches, 2)
            t.guard.snapshot()
            steps(t, batches[2:], 1)
            t.guard.recover("a test")
            first = rng_states()
            steps(t, batches[2:], 1)
            t.guard.recover("a test")
            out.append((first, rng_states()))
        finally:
            release(t)
    (a1, a2), (b1, b2) = out
    assert rng_equal(a1, b1) and rng_equal(a2, b2)
    assert not rng_equal(a1, a2)
