"""objective.energy_anchor = start: the energy penalty holds log p(x) near the data's level when
the p(x) term starts (not near 0), set once, kept in the checkpoint, the same after a resume."""

import math

import torch

from conftest import tiny_config
from torchjem import HybridObjective, Trainer
from torchjem.energy import JEM
from torchjem.objective import Batch
from torchjem.rundir import RunState


def test_the_anchored_penalty_is_the_formula_by_hand():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    jem = JEM(net)
    x, x_q = torch.randn(5, 1, 2, 2), torch.randn(2, 1, 2, 2)
    obj = HybridObjective(sampler=object(), pyx=0.0, px=1.0, data_noise=0.0, energy_l2=0.5)
    obj.energy_anchor = 7.0
    _, stats = obj.loss(jem, Batch(x, torch.zeros(5, dtype=torch.long), None, x_q, None, None))
    with torch.no_grad():
        lse_d, lse_q = net(x).logsumexp(1), net(x_q).logsumexp(1)
    by_hand = 0.5 * (((lse_d - 7.0) ** 2).mean() + ((lse_q - 7.0) ** 2).mean())
    assert torch.allclose(stats["loss_energy_l2"], by_hand, atol=1e-5)
    assert not torch.allclose(by_hand, 0.5 * (lse_d.pow(2).mean() + lse_q.pow(2).mean()))  # the anchor matters


def test_the_anchor_is_set_once_when_px_starts_and_survives_a_resume(tmp_path):
    cfg = tiny_config("data.limit=128", "train.epochs=2", "objective.px_from_epoch=1", "objective.energy_l2=0.1",
                      "objective.energy_anchor=start")
    t = Trainer(cfg, progress=False, out=tmp_path / "run")
    batches = list(t.batches.epoch(0))
    for x, y in batches:  # epoch 0: classifier steps, no anchor yet
        t.train_step(x, y)
    assert math.isnan(t.state.progress.energy_anchor)
    t.state.progress.epoch, t.state.progress.batch = 1, 0
    x, y = next(t.batches.epoch(1))
    t.jem.eval()
    with torch.no_grad():
        expected = float(t.jem.log_px(x).mean())  # the weights before the first p(x) step
    t.train_step(x, y)
    anchor = t.state.progress.energy_anchor
    assert math.isclose(anchor, expected, rel_tol=1e-5) and t.objective.energy_anchor == anchor
    t.train_step(*next(t.batches.epoch(1, start=1)))
    assert t.state.progress.energy_anchor == anchor  # set once
    t.save("last")
    assert RunState.load(t.run.checkpoint("last")).progress.energy_anchor == anchor
    t.lock.release()  # (fit() releases it; these steps were taken by hand)
    resumed = Trainer.resume(tmp_path / "run", progress=False)
    assert resumed.state.progress.energy_anchor == anchor
    resumed.train_step(*next(resumed.batches.epoch(1, start=2)))
    assert resumed.objective.energy_anchor == anchor
