"""Chain health (issue 19): batch-norm nets sample in train mode by default, every window records
what the samples look like against the data, and the divergence guard treats runaway chains as a
divergence."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from conftest import tiny_config
from torchjem import JEM, Trainer
from torchjem.build import chain_mode, training_plan
from torchjem.objective import chain_health
from torchjem.rundir.history import History
from torchjem.sampling import ReplayBuffer

BN_NET = ["net.name=wrn", "net.kwargs={depth: 10, width: 1, norm: batch}"]


def bn_jem() -> JEM:
    return JEM(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 10)))


def plain_jem() -> JEM:
    return JEM(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))


def test_auto_mode_is_train_for_batch_norm_and_eval_otherwise():
    cfg = tiny_config()
    assert cfg.sgld.model_mode == "auto"
    assert chain_mode(cfg, bn_jem()) == "train" and chain_mode(cfg, plain_jem()) == "eval"
    plan = training_plan(cfg, bn_jem(), (1, 8, 8))
    assert plan.chain_mode == "train" and plan.chain_warning is None
    forced = training_plan(tiny_config("sgld.model_mode=eval"), bn_jem(), (1, 8, 8))
    assert forced.chain_mode == "eval" and "batch norm" in forced.chain_warning
    assert training_plan(tiny_config("sgld.model_mode=eval"), plain_jem(), (1, 8, 8)).chain_warning is None
    # a classifier-only run has no chains: nothing to warn about
    clf = tiny_config("sgld.model_mode=eval", "train.clf_only=true")
    assert training_plan(clf, bn_jem(), (1, 8, 8)).chain_warning is None


def test_trainer_builds_train_mode_chains_for_a_batch_norm_net_and_warns_when_eval_is_forced(tmp_path, caplog):
    t = Trainer(tiny_config(*BN_NET, "train.max_steps=1"), progress=False, out=tmp_path / "a")
    assert t.sampler.langevin.mode == "train"
    caplog.set_level(logging.INFO, logger="torchjem")
    t.fit()
    assert "net in train mode (sgld.model_mode = auto)" in caplog.text
    forced = Trainer(tiny_config(*BN_NET, "train.max_steps=1", "sgld.model_mode=eval"), progress=False,
                     out=tmp_path / "b")
    assert forced.sampler.langevin.mode == "eval"
    caplog.clear()
    forced.fit()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "batch norm" in r.getMessage()]
    assert len(warned) == 1


def test_chain_health_figures_match_a_hand_count():
    x = torch.full((2, 1, 2, 2), 0.5)  # norm of one input: 1.0
    x_q = torch.tensor([[1.05, -1.2, 3.0, 0.0], [0.0, 0.0, 0.0, -4.0]]).view(2, 1, 2, 2)
    logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]])  # both samples predicted class 1
    h = chain_health(x, x_q, logits)
    norms = [(1.05**2 + 1.2**2 + 9) ** 0.5, 4.0]
    assert float(h["sample_norm"]) == pytest.approx(sum(norms) / 2)
    assert float(h["norm_ratio"]) == pytest.approx(sum(norms) / 2 / 1.0)
    assert float(h["out_of_range"]) == pytest.approx(3 / 8)  # -1.2, 3.0, -4.0 (1.05 is within the margin)
    assert float(h["sample_rms"]) == pytest.approx(((1.05**2 + 1.2**2 + 9 + 16) / 8) ** 0.5)
    assert float(h["class_balance"]) == pytest.approx(0.0)  # one class only
    even = chain_health(x, x_q, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert float(even["class_balance"]) == pytest.approx(math.log(2) / math.log(3))


def test_guard_fires_on_runaway_chains_after_consecutive_checks_only(tmp_path):
    t = Trainer(tiny_config("train.max_steps=1", "divergence.health_checks=3"), progress=False, out=tmp_path / "r")
    ok = {"loss": torch.tensor(0.5), "energy_data": torch.tensor(-3.0), "energy_sample": torch.tensor(-2.0),
          "out_of_range": torch.tensor(0.01), "norm_ratio": torch.tensor(1.1)}
    away = {**ok, "out_of_range": torch.tensor(0.96)}
    assert t.guard.check(away) is None and t.guard.check(away) is None
    assert t.guard.check(ok) is None  # a healthy check in between starts the count again
    assert t.guard.check(away) is None and t.guard.check(away) is None
    cause = t.guard.check(away)
    assert "96% of sample values outside the data range > divergence.max_out_of_range = 0.5" in cause
    far = {**ok, "norm_ratio": torch.tensor(30.0), "sample_rms": torch.tensor(7.9)}
    t.guard.unhealthy = 0
    for _ in range(2):
        assert t.guard.check(far) is None
    assert "sample norm / data norm = 30 > divergence.max_norm_ratio = 4" in t.guard.check(far)
    # fresh uniform chains (RMS 0.58) against data of small norm: a large ratio, samples in range: healthy
    small_data = {**ok, "norm_ratio": torch.tensor(6.0), "sample_rms": torch.tensor(0.58)}
    assert all(t.guard.check(small_data) is None for _ in range(5))


def test_runaway_chains_are_recovered_then_given_up_with_the_cause(tmp_path):
    # SGLD noise of 1 per step: the chains leave the data range at once (default thresholds); the
    # guard rewinds, the chains run away again, and it gives up naming the cause
    from torchjem.training.guard import DivergenceError

    cfg = tiny_config("train.max_steps=40", "sgld.noise=1.0", "divergence.health_checks=2",
                      "divergence.max_retries=1", "divergence.snapshot_every=5", "divergence.max_gap=inf",
                      "divergence.max_energy=inf", "divergence.max_loss=inf")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    with pytest.raises(DivergenceError, match="runaway chains: .* of sample values outside the data range"):
        t.fit()
    events = [r for r in t.run.history().events if r["event"] in ("recovery", "gave_up")]
    assert [e["event"] for e in events] == ["recovery", "gave_up"]
    assert all("runaway chains" in e["cause"] for e in events)
    windows = t.run.history().windows
    assert windows and all(0 < w["norm_ratio"] and 0 <= w["out_of_range"] <= 1 for w in windows)


def test_buffer_age_counts_continuations_since_a_restart():
    buf = ReplayBuffer(10, (1, 2, 2), 1, reinit_freq=0.0)
    idx = torch.tensor([0, 1, 2])
    for _ in range(3):
        x, _ = buf.draw(1, reinit=True)  # (a random entry: ages elsewhere)
        buf.put(idx, buf.x[idx])
    x, got = buf.draw(4)
    want = sum(int(buf.age[i]) for i in got.tolist()) / 4
    assert float(buf.drawn_age) == pytest.approx(want)
    assert buf.age[:3].tolist() == [3.0, 3.0, 3.0]
    buf.reinit_freq = 1.0  # every chain restarts: age 0
    _, fresh = buf.draw(3)
    assert float(buf.drawn_age) == 0.0 and all(buf.age[i] == 0 for i in fresh.tolist())


def test_gap_trend_is_the_slope_per_100_steps():
    records = [{"step": s, "loss": 0.0, "energy_data": -3.0, "energy_sample": -2.5 + 0.02 * s}
               for s in range(10, 200, 10)]
    assert History(records).summary().gap_trend == pytest.approx(2.0)
    assert History(records[:2]).summary().gap_trend is None


def test_the_dynamics_figure_gets_a_chain_panel_also_across_a_rewind(tmp_path):
    from matplotlib.image import imread

    from torchjem.report import plot_dynamics

    def window(step, out):
        return {"step": step, "loss": 1.0, "acc": 0.5, "lr": 1e-3, "energy_data": -1.0, "energy_sample": -0.5,
                "norm_ratio": 1.0 + out * 10, "out_of_range": out}

    records = [window(10, 0.1), window(20, 0.9), window(30, 0.95),
               {"event": "recovery", "step": 10, "at_step": 30, "rewound_to": 10, "cause": "runaway chains: ...",
                "retry": 1}, window(20, 0.1), window(30, 0.1)]
    with_health = imread(plot_dynamics(records, tmp_path / "a.png"))
    plain = [{k: v for k, v in r.items() if k not in ("norm_ratio", "out_of_range")} for r in records]
    without = imread(plot_dynamics(plain, tmp_path / "b.png"))
    assert with_health.shape[0] > without.shape[0]  # one panel more: the chains'
