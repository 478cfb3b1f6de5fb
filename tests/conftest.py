import os

# One thread per process: tiny nets gain nothing from two, and OpenMP threads that wait for a
# preempted peer make a busy 2-core machine many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Feature networks cached by the tests stay out of the user's ~/.cache.
os.environ.setdefault("TORCHJEM_CACHE", __import__("tempfile").mkdtemp(prefix="torchjem-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

from torchjem import load_config  # noqa: E402

torch.set_num_threads(1)

# Small and fast: a narrow conv net, short chains, a small buffer.
TINY = [
    "net.kwargs.width=8",
    "sgld.steps=5",
    "buffer.size=200",
    "optim.lr=0.001",
    "optim.warmup_iters=10",
    "optim.decay_epochs=[]",
    "train.log_every=5",
    "train.batch_size=32",
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_config(*extra: str):
    """A small, fast config on CPU (the run directory is given to the Trainer: ``out=``)."""
    return load_config(None, TINY + ["device=cpu"] + list(extra))


class Faulty:
    """Wraps an objective: NaN loss on the given calls, KeyboardInterrupt at ``kill_at``."""

    def __init__(self, inner, nan_at=(), kill_at=None):
        self.inner, self.nan_at, self.kill_at, self.calls = inner, set(nan_at), kill_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, model, x, y, x_px=None):
        return self.loss(model, self.inner.draw(model, x, y, x_px=x_px))

    def loss(self, *args, **kwargs):  # the trainer calls draw() then loss(): one loss call per step
        self.calls += 1
        if self.calls == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        loss, stats = self.inner.loss(*args, **kwargs)
        if self.calls in self.nan_at or "always" in self.nan_at:
            loss = loss * float("nan")
            stats["loss"] = loss.detach()
        return loss, stats


def spawn_workers(worker, tmp, nprocs: int = 2, timeout_s: float = 240.0) -> None:
    """Run ``worker(rank, str(tmp))`` on ``nprocs`` processes; fail the test (killing them) when
    they are still running after ``timeout_s`` (a collective mismatch hangs instead of raising)."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.spawn(worker, args=(str(tmp),), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers still running after {timeout_s} s (a collective mismatch?)")
