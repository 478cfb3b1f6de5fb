import pytest
import torch

from torchjem import load_config

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


def tiny_config(out, *extra: str):
    return load_config(None, TINY + [f"out={out}", "device=cpu"] + list(extra))
