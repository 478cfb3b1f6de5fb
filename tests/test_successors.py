"""The successors' training options: SAM / ASAM (SADA-JEM), the p(x) term on un-augmented data,
and separate forward passes for nets with batch norm."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Faulty, tiny_config
from torchjem import JEM, SGLD, ChainSampler, HybridObjective, ReplayBuffer, Trainer
from torchjem.sam import SAM


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_steps_with_the_gradient_at_the_perturbed_point(adaptive):
    a = np.array([1.0, -2.0, 0.5])
    w0 = np.array([0.3, 0.7, -1.2])
    w = nn.Parameter(torch.tensor(w0))
    sam = SAM(torch.optim.SGD([w], lr=0.1), rho=0.05, adaptive=adaptive)

    def loss():  # L(w) = sum(a * w^3): its gradient 3 a w^2 changes with w
        return (torch.tensor(a) * w**3).sum()

    loss().backward()
    sam.perturb()
    sam.zero_grad()
    loss().backward()
    sam.restore()
    sam.step()
    # the same step by hand
    g = 3 * a * w0**2
    e = 0.05 * (np.abs(w0) ** 2 * g / np.linalg.norm(np.abs(w0) * g) if adaptive else g / np.linalg.norm(g))
    want = w0 - 0.1 * 3 * a * (w0 + e) ** 2
    assert np.allclose(w.detach().numpy(), want, atol=1e-12)


def test_a_sam_step_draws_the_samples_once_and_runs_the_loss_twice(tmp_path):
    t = Trainer(tiny_config("optim.sam_rho=0.05", "train.max_steps=3"), progress=False, out=tmp_path / "r")
    draws = []
    real = t.sampler.sample
    t.sampler.sample = lambda *a, **k: draws.append(1) or real(*a, **k)
    t.objective = Faulty(t.objective)
    t.fit()
    assert (len(draws), t.objective.calls) == (3, 6)  # one SGLD draw, two loss passes per step
    plain = Trainer(tiny_config("train.max_steps=3"), progress=False, out=tmp_path / "p")
    plain.fit()
    sam_w = torch.cat([p.flatten() for p in t.jem.parameters()])
    plain_w = torch.cat([p.flatten() for p in plain.jem.parameters()])
    assert not torch.equal(sam_w, plain_w)  # the second gradient, not the first, was applied


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.SiLU(), nn.Flatten(), nn.Linear(4 * 64, 10))

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


def test_separate_passes_keep_samples_out_of_the_batch_norm_statistics():
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 10
    samples = torch.randn(16, 1, 8, 8) * 3  # far from the data: they would move the statistics
    results = {}
    for separate in (True, False):
        torch.manual_seed(0)
        net = BNNet()
        ref = copy.deepcopy(net)
        obj = HybridObjective(ChainSampler(SGLD(0), ReplayBuffer(20, (1, 8, 8), 10)), data_noise=0.0,
                              separate_passes=separate)
        obj.sampler.sample = lambda *a, **k: samples  # fixed samples
        net.train()
        obj(JEM(net), x, y)
        ref.train()
        ref(x)  # the data alone, computed here
        results[separate] = torch.allclose(net.bn.running_mean, ref.bn.running_mean, atol=1e-6) and torch.allclose(
            net.bn.running_var, ref.bn.running_var, atol=1e-6
        )
    assert results == {True: True, False: False}


def test_the_px_term_sees_the_unaugmented_batch_when_asked():
    torch.manual_seed(0)
    jem = JEM(nn.Sequential(nn.Flatten(), nn.Linear(16, 5)))
    x_aug, x_plain = torch.rand(6, 1, 4, 4), torch.rand(6, 1, 4, 4)
    y = torch.arange(6) % 5
    obj = HybridObjective(ChainSampler(SGLD(1), ReplayBuffer(10, (1, 4, 4), 5)), data_noise=0.0)
    _, stats = obj(jem, x_aug, y, x_px=x_plain)
    assert torch.allclose(stats["energy_data"], -jem.logits(x_plain).logsumexp(1).mean())  # p(x) on the plain batch
    assert torch.allclose(stats["ce"], nn.functional.cross_entropy(jem.logits(x_aug), y))  # CE on the augmented one


def test_augment_px_false_reaches_the_objective(tmp_path):
    t = Trainer(tiny_config("data.augment=true", "data.augment_px=false", "train.max_steps=1"),
                progress=False, out=tmp_path / "r")
    seen = {}
    real = t.objective.draw
    t.objective.draw = lambda m, x, y, x_px=None, **k: seen.update(x=x, x_px=x_px) or real(m, x, y, x_px=x_px, **k)
    t.fit()
    assert seen["x_px"] is not None and not torch.equal(seen["x"], seen["x_px"])


def test_sam_leaves_batch_norm_statistics_as_a_plain_step_does(tmp_path):
    net = BNNet()
    stats = []
    for rho in (0.0, 0.05):
        t = Trainer(tiny_config(f"optim.sam_rho={rho}", "train.max_steps=1"),
                    model=copy.deepcopy(net), progress=False, out=tmp_path / f"r{rho}")
        assert t.objective.separate_passes  # a net with batch norm: one pass for data, one for samples
        t.fit()
        stats.append(t.jem.net.bn.running_mean.clone())
    assert torch.equal(stats[0], stats[1])  # SAM's second pass added nothing to them


def test_chains_in_train_mode_use_batch_statistics_and_leave_them_alone():
    torch.manual_seed(0)
    net = BNNet()
    net.train()
    net(torch.randn(32, 1, 8, 8) * 2 + 1)  # running statistics far from the chains' batch
    net.eval()
    jem = JEM(net)
    before = (net.bn.running_mean.clone(), net.bn.running_var.clone(), int(net.bn.num_batches_tracked))
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    moved = SGLD(n_steps=1, step_size=0.1, noise=0.0, mode="train").run(jem, x)
    # by hand: one step up LSE with the batch norm normalising by this batch's statistics
    ref = copy.deepcopy(net).train()
    ref.bn.momentum = 0.0
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ref(xr).logsumexp(1).sum(), xr)
    assert torch.allclose(moved, x + 0.1 * g, atol=1e-6)
    eval_moved = SGLD(n_steps=1, step_size=0.1, noise=0.0).run(jem, x)
    assert not torch.allclose(eval_moved, moved, atol=1e-4)  # eval mode uses the running statistics
    after = (net.bn.running_mean, net.bn.running_var, int(net.bn.num_batches_tracked))
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1]) and before[2] == after[2]
    assert not net.training and all(p.grad is None for p in net.parameters())
