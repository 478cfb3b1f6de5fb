"""The chains' noise and drift pinned statistically (the by-hand SGLD checks elsewhere use noise=0).

With a zero-gradient energy (a net whose weights are zero: its logits, hence log p(x) and every
f(x)[y], do not depend on x) a chain is a pure random walk: after K steps of noise sigma,
x_K - x_0 has mean 0 and standard deviation sigma * sqrt(K). With a linear energy (one class,
f(x) = w . x, so d log p / dx = w everywhere) each SGLD step moves by step_size * w on average.
Tolerances: 1.5% on a standard deviation estimated from >= 120,000 values (its standard error is
about 0.2%), seeded; a noise 10x (or sqrt(K)x) off, or a missing step, is far outside them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchjem import JEM
from torchjem.sampling import PYLD, SGLD, ChainSampler, ReplayBuffer

SHAPE, C, N = (1, 8, 8), 4, 2000  # 128,000 values per chain batch
REL = 0.015


def flat_net(n_classes: int = C) -> JEM:
    """A JEM whose log p(x) and log p(x, y) have zero gradient in x (zero weights, non-zero biases)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), n_classes))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(torch.arange(n_classes, dtype=torch.float32))
    return JEM(net)


def check_walk(delta: torch.Tensor, sigma: float) -> None:
    d = delta.flatten().double()
    assert float(d.std()) == pytest.approx(sigma, rel=REL)
    assert abs(float(d.mean())) < 5 * sigma / math.sqrt(len(d))


def sampler(kind: str, noise: float, steps: int):
    if kind == "sgld":
        return SGLD(n_steps=steps, step_size=1.0, noise=noise)
    return PYLD(n_steps=steps, inner_steps=3, inner_step_size=0.2, noise=noise)


@pytest.mark.parametrize("kind", ["sgld", "pyld"])
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_zero_gradient_chain_is_a_random_walk_of_the_configured_noise(kind, steps, conditional):
    torch.manual_seed(10 + steps)
    jem, sigma = flat_net(), 0.03
    x0 = 0.5 * (2 * torch.rand(N, *SHAPE) - 1)  # well inside [-1, 1]: PYLD's data-range clamp is idle
    y = torch.arange(N) % C if conditional else None
    x = sampler(kind, sigma, steps).run(jem, x0, y)
    assert x.shape == x0.shape and not x.requires_grad
    check_walk(x - x0, sigma * math.sqrt(steps))
    # each value moves on its own: neighbouring pixels' steps are uncorrelated
    d = (x - x0).flatten(1)
    assert abs(float(torch.corrcoef(torch.stack([d[:, 0], d[:, 1]]))[0, 1])) < 0.1


@pytest.mark.parametrize("kind", ["sgld", "pyld"])
def test_conditional_chains_from_the_replay_buffer_have_the_configured_noise(kind):
    """Through ChainSampler: chains of class c start from class c's block (filled with the value
    0.1 c here, no re-initialisation), run K steps, and are written back."""
    torch.manual_seed(3)
    buf = ReplayBuffer(N, SHAPE, n_classes=C, reinit_freq=0.0)
    buf.x.copy_(0.1 * buf.labels.float().view(-1, 1, 1, 1).expand_as(buf.x))
    chains = ChainSampler(sampler(kind, 0.02, 2), buf)
    y = torch.arange(N) % C
    x = chains.sample(flat_net(), y=y)
    check_walk(x - 0.1 * y.float().view(-1, 1, 1, 1), 0.02 * math.sqrt(2))
    start = 0.1 * buf.labels.float().view(-1, 1, 1, 1)
    moved = (buf.x != start).flatten(1).any(1)  # the entries the chains came from now hold their final states
    assert int(moved.sum()) > N // 4 and torch.equal(buf.labels[moved].unique(), torch.arange(C))


def test_sgld_step_is_drift_plus_noise():
    """One class, f(x) = w . x + b: log p(x) = f(x), gradient w. After K steps of size a and noise s:
    mean displacement K a w, standard deviation s sqrt(K) around it."""
    torch.manual_seed(4)
    d = math.prod(SHAPE)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 1))
    with torch.no_grad():
        net[1].weight.copy_(torch.linspace(-0.05, 0.05, d))
    jem, w = JEM(net), net[1].weight.detach()[0]
    x0 = torch.zeros(N, *SHAPE)
    for steps, a, s in ((1, 0.5, 0.02), (3, 1.0, 0.01)):
        x = SGLD(n_steps=steps, step_size=a, noise=s).run(jem, x0)
        delta = (x - x0).flatten(1)
        drift = delta.mean(0)
        assert torch.allclose(drift, steps * a * w, atol=5 * s * math.sqrt(steps) / math.sqrt(N))
        check_walk(delta - steps * a * w, s * math.sqrt(steps))
    # noise=0: exactly the gradient step
    x = SGLD(n_steps=2, step_size=0.5, noise=0.0).run(jem, x0)
    assert torch.allclose((x - x0).flatten(1), (2 * 0.5 * w).expand(N, d), atol=1e-6)


def test_conditional_sgld_follows_its_class_logit():
    """Given labels, a chain ascends f(x)[y], not log p(x): with f(x) = W x + b each step moves
    example i by step_size * W[y_i] exactly (noise 0), while the unconditional chain moves by the
    softmax-weighted mix of the rows (the gradient of logsumexp)."""
    d = math.prod(SHAPE)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, C))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(C, d, generator=torch.Generator().manual_seed(8)) * 0.1)
    jem, w = JEM(net).double(), net[1].weight.detach()
    x0 = torch.zeros(8, *SHAPE, dtype=torch.float64)
    y = torch.arange(8) % C
    x = SGLD(n_steps=1, step_size=0.5, noise=0.0).run(jem, x0, y)
    assert torch.allclose((x - x0).flatten(1), 0.5 * w[y], atol=1e-12)
    x_u = SGLD(n_steps=1, step_size=0.5, noise=0.0).run(jem, x0)
    mix = net(x0).softmax(1) @ w  # d logsumexp / dx at x0
    assert torch.allclose((x_u - x0).flatten(1), 0.5 * mix, atol=1e-12)
    assert not torch.allclose(x, x_u, atol=1e-3)
