import json

import pytest
import torch

from conftest import Faulty, tiny_config
from torchjem import DivergenceError, HybridObjective, Trainer, load_run
from torchjem.build import semi_supervised_labels
from torchjem.checkpoint import load_checkpoint, save_checkpoint
from torchjem.errors import CheckpointError
from torchjem.evaluate.classification import classification


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config("train.epochs=4", "net.kwargs.width=16", "sgld.steps=10")
    trainer = Trainer(cfg, progress=False, out=out)
    trainer.fit()
    return trainer


@pytest.mark.slow
def test_short_run_beats_chance_and_prefers_data_to_noise(trained):
    res = classification(trained.jem, trained.data.x_test, trained.data.y_test)
    assert res.accuracy > 0.6  # chance is 0.1
    x = trained.data.x_test
    with torch.no_grad():
        data_lpx = trained.jem.log_px(x).mean()
        noise_lpx = trained.jem.log_px(torch.rand_like(x) * 2 - 1).mean()
    assert data_lpx > noise_lpx


def test_run_directory_contents(trained):
    run = trained.run
    assert run.config.is_file() and run.log.is_file()
    for name in ("last", "best"):
        assert run.checkpoint(name).is_file()
    records = run.read_metrics()
    assert any("val_acc" in r for r in records)
    assert any("energy_gap" in r and "sample_norm" in r for r in records)
    assert records[-1]["event"] == "done"
    loaded = load_run(run.path, "last", "cpu")
    assert loaded.buffer is not None and torch.equal(loaded.buffer.x, trained.buffer.x)
    x = trained.data.x_test[:5]
    assert torch.allclose(loaded.jem.logits(x), trained.jem.eval().logits(x))


def test_checkpoint_round_trip_is_code_free(tmp_path, trained):
    state = trained.state.state_dict()
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["step"] == state["step"] and back["config"] == state["config"]
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v)
    # a pickled object that would run code on load is refused
    torch.save({"bad": Faulty(None)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    extra = ["train.epochs=3", "optim.decay_epochs=[2]", "train.save_every=1"]
    full = Trainer(tiny_config(*extra), progress=False, out=tmp_path / "full")
    full.fit()

    killed = Trainer(tiny_config(*extra), progress=False, out=tmp_path / "killed")
    per_epoch = killed.steps_per_epoch
    killed.objective = Faulty(killed.objective, kill_at=per_epoch + 3)  # mid-way through epoch 2
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert load_checkpoint(killed.run.checkpoint("last"))["epoch"] == 1

    resumed = Trainer.resume(tmp_path / "killed", progress=False)
    assert resumed.epoch == 1 and resumed.step == per_epoch
    resumed.fit()
    for (k, a), b in zip(full.jem.state_dict().items(), resumed.jem.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(full.buffer.x, resumed.buffer.x)


def test_divergence_is_recovered_and_logged(tmp_path):
    cfg = tiny_config("train.max_steps=30", "divergence.snapshot_every=5", "divergence.check_every=1")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    t.objective = Faulty(t.objective, nan_at={12})
    result = t.fit()
    assert result["step"] == 30 and result["retries"] == 1
    events = [r for r in t.run.read_metrics() if r.get("event") == "recovery"]
    assert len(events) == 1 and "loss is nan" in events[0]["cause"]
    assert events[0]["at_step"] == 12 and events[0]["rewound_to"] == 10
    assert "divergence at step 12" in t.run.log.read_text()
    assert all(torch.isfinite(p).all() for p in t.jem.parameters())
    assert t.state.progress.lr_scale == 0.5


@pytest.mark.slow
def test_step_factor_backs_off_the_sgld_step_at_each_rewind_and_a_resume_keeps_it(tmp_path):
    cfg = tiny_config("train.max_steps=30", "divergence.snapshot_every=5", "divergence.check_every=1",
                      "divergence.step_factor=0.5", "sgld.step_size=2.0")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    t.objective = Faulty(t.objective, nan_at={12, 20})
    t.fit()
    events = [r for r in t.run.read_metrics() if r.get("event") == "recovery"]
    assert [e["step_scale"] for e in events] == [0.5, 0.25]
    assert t.sampler.langevin.step_size == 0.5 and t.cfg.sgld.step_size == 2.0  # 2 x 0.5 x 0.5; the config keeps 2
    resumed = Trainer.resume(tmp_path / "r", progress=False, overrides=["train.max_steps=31"])
    assert resumed.state.progress.step_scale == 0.25 and resumed.sampler.langevin.step_size == 0.5
    resumed.lock.release()
    fresh = Trainer.resume(tmp_path / "r", progress=False, overrides=["sgld.step_size=1.0"])  # a new step: no back-off
    assert fresh.state.progress.step_scale == 1.0 and fresh.sampler.langevin.step_size == 1.0
    fresh.lock.release()


@pytest.mark.slow
def test_divergence_found_at_a_later_check_rewinds_to_a_checked_state(tmp_path):
    cfg = tiny_config("train.max_steps=40", "divergence.snapshot_every=5", "divergence.check_every=5")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    t.objective = Faulty(t.objective, nan_at={12})  # NaN weights from step 12 on, seen at the check of step 15
    result = t.fit()
    events = [r for r in t.run.read_metrics() if r.get("event") == "recovery"]
    assert [(e["at_step"], e["rewound_to"]) for e in events] == [(15, 10)]
    assert result["step"] == 40 and all(torch.isfinite(p).all() for p in t.jem.parameters())


def test_divergence_gives_up_with_advice(tmp_path):
    t = Trainer(tiny_config("train.max_steps=20", "divergence.max_retries=2"), progress=False, out=tmp_path / "r")
    t.objective = Faulty(t.objective, nan_at={"always"})
    with pytest.raises(DivergenceError, match="after 2 recoveries.*optim.lr"):
        t.fit()
    assert [r["event"] for r in t.run.read_metrics() if "event" in r] == ["recovery", "recovery", "gave_up"]


def test_exploding_energy_is_divergence(tmp_path):
    t = Trainer(tiny_config("train.max_steps=3", "divergence.max_energy=1e-9"), progress=False, out=tmp_path / "r")
    with pytest.raises(DivergenceError, match="energy"):
        t.fit()


def test_a_runaway_energy_gap_is_divergence_below_the_reference_thresholds(tmp_path):
    # as the collapsed digits runs of docs/stability.md: energies under 1e5, loss under 1e8, gap 2003
    t = Trainer(tiny_config("train.max_steps=1"), progress=False, out=tmp_path / "r")
    stats = {"loss": torch.tensor(-1990.0), "energy_data": torch.tensor(-3.0), "energy_sample": torch.tensor(2000.0)}
    assert "|energy gap| = |E(samples) - E(data)| = 2e+03 > divergence.max_gap = 1e+03" in t.guard.check(stats)
    assert t.guard.check({**stats, "energy_sample": torch.tensor(900.0)}) is None  # gap 903
    t.cfg.divergence.max_gap = float("inf")  # the check off
    assert t.guard.check(stats) is None


def test_semi_supervised_labels_keep_k_per_class():
    y = torch.arange(10).repeat(30)
    semi = semi_supervised_labels(y, 4, 10, seed=0)
    kept = semi != -100
    assert torch.equal(torch.bincount(semi[kept], minlength=10), torch.full((10,), 4))
    assert torch.equal(semi[kept], y[kept])  # kept labels are the true ones
    assert torch.equal(semi, semi_supervised_labels(y, 4, 10, seed=0))
    assert semi_supervised_labels(y, None, 10, seed=0) is y
    with pytest.raises(ValueError, match="class 0 has only 30"):
        semi_supervised_labels(y, 31, 10, seed=0)


def test_unlabelled_examples_do_not_feed_cross_entropy():
    torch.manual_seed(0)
    from torch import nn

    from torchjem import JEM

    jem = JEM(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    x = torch.randn(6, 1, 2, 2)
    obj = HybridObjective(px=0.0, data_noise=0.0)
    loss, stats = obj(jem, x, torch.tensor([0, 1, 2, -100, -100, -100]))  # -100: unlabelled
    # the mean cross-entropy of the three labelled examples, computed independently
    want = torch.nn.functional.cross_entropy(jem(x[:3]), torch.tensor([0, 1, 2]))
    assert torch.allclose(loss, want)
    assert stats["acc"] == (jem(x[:3]).argmax(1) == torch.tensor([0, 1, 2])).float().mean()
    # a batch with no label at all gives a zero cross-entropy, not NaN
    loss_none, _ = obj(jem, x, torch.full((6,), -100))
    assert loss_none.item() == 0.0


def test_semi_supervised_run_uses_all_images_for_px(tmp_path):
    t = Trainer(tiny_config("train.max_steps=4", "data.labels_per_class=5"), progress=False, out=tmp_path / "r")
    assert int((t.batches.y != -100).sum()) == 50 and len(t.batches.y) == len(t.data.x_train)
    t.fit()
    rec = [r for r in t.run.read_metrics() if "loss_px" in r]
    assert rec and all(torch.isfinite(torch.tensor(r["loss_px"])) for r in rec)


def test_clf_only_trains_without_sampling(tmp_path):
    t = Trainer(tiny_config("train.max_steps=5", "train.clf_only=true"), progress=False, out=tmp_path / "r")
    assert t.buffer is None and not t.objective.needs_samples
    t.fit()
    assert all("loss_px" not in r for r in t.run.read_metrics())


def test_network_that_does_not_fit_the_data_is_rejected(tmp_path):
    from torch import nn

    with pytest.raises(ValueError, match="cannot take inputs of shape"):
        Trainer(tiny_config(), model=nn.Sequential(nn.Flatten(), nn.Linear(10, 10)), progress=False, out=tmp_path / "r")
    with pytest.raises(ValueError, match=r"expected \(N, 10\) logits"):
        Trainer(tiny_config(), model=nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), progress=False, out=tmp_path / "r")


def test_metrics_are_json_lines(trained):
    records = [json.loads(line) for line in trained.run.metrics.read_text().splitlines()]
    windows = [r for r in records if "loss" in r and "event" not in r]
    steps = [r["step"] for r in windows]
    assert steps == list(range(5, trained.step + 1, 5)) + ([trained.step] if trained.step % 5 else [])  # log_every=5
    for r in windows:
        n = r["step"] - (r["step"] - 1) // 5 * 5  # steps in this window (the last may be short)
        # the logged means add up as the loss does (pyx = px = 1, no other term) and the gap is E(s) - E(d)
        assert r["loss"] == pytest.approx(r["ce"] + r["loss_px"], rel=1e-5, abs=1e-6)
        assert r["energy_gap"] == pytest.approx(r["energy_sample"] - r["energy_data"], abs=1e-4)
        assert r["lr"] == pytest.approx(1e-3 * min(1.0, (r["step"] + 1) / 10))  # optim.lr, 10 warm-up steps
        # accuracy: a mean over the window of k/32 per batch of 32, so 32 n acc is a whole number
        assert r["sample_norm"] > 0 and r["acc"] * 32 * n == pytest.approx(round(r["acc"] * 32 * n), abs=1e-3)
    assert [r["epoch"] for r in records if "val_acc" in r and "event" not in r] == [1, 2, 3, 4]
    done = records[-1]
    assert done["event"] == "done" and done["step"] == trained.step and done["retries"] == 0


def test_energy_head_config_trains_the_scalar_head(tmp_path):
    t = Trainer(tiny_config("train.max_steps=3", "net.energy_head=true"), progress=False, out=tmp_path / "r")
    before = t.jem.energy_head.weight.detach().clone()
    t.fit()
    assert not torch.equal(before, t.jem.energy_head.weight)
    loaded = load_run(t.run.path, "last", "cpu")
    x = t.data.x_test[:4]
    assert torch.allclose(loaded.jem.log_px(x), t.jem.eval().log_px(x))


def test_a_classifier_baseline_of_an_energy_head_recipe_is_the_bare_network(tmp_path):
    # `--clf-only` on a recipe with net.energy_head: its log p(x) is the logsumexp of its logits, not an
    # untrained head (the digits demo's baseline scored OOD AUROC 0.33 on uniform noise that way)
    cfg = tiny_config("net.energy_head=true", "train.clf_only=true", "train.max_steps=2")
    t = Trainer(cfg, progress=False, out=tmp_path / "c")
    t.fit()
    assert t.jem.energy_head is None and t.jem.class_head is None
    x = torch.rand(4, *t.shape) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(t.jem.log_px(x), torch.logsumexp(t.jem.net(x), 1))
    jem = Trainer(tiny_config("net.energy_head=true", "train.max_steps=1"), progress=False, out=tmp_path / "j").jem
    assert jem.energy_head is not None  # the JEM of the same recipe keeps its head
