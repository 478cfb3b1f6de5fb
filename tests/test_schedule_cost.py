"""predict_cost (training/schedule.py): the passes of a config's schedule, against counts derived by
hand and against what the meter counted in a real tiny run of the same config."""

import pytest

from conftest import tiny_config
from torchjem import Trainer
from torchjem.rundir import RunState
from torchjem.training.schedule import predict_cost

# 3 epochs of 10 steps (320 examples, batch 32); p(x) from epoch 1 on every 3rd step; K = 2, 4, 6 by
# epoch; 8 chains; SAM's second pass on every 2nd step.
OPTIONS = ("train.epochs=3", "data.limit=320", "objective.px_from_epoch=1", "objective.px_every=3",
           "sgld.steps_by_epoch=[2,4,6]", "sgld.chains=8", "optim.sam_rho=0.05", "optim.sam_every=2",
           "train.eval_every=2")


def hand_counts():
    """By hand: p(x) steps are 12, 15, 18 (epoch 1, K=4) and 21, 24, 27 (epoch 2, K=6); SAM steps are
    the 15 even ones, three of them (12, 18, 24) with 8 samples besides the 32 data examples."""
    data = 30 * 32
    samples = 6 * 8
    sgld = 3 * 8 * 4 + 3 * 8 * 6
    sam = 15 * 32 + 3 * 8
    return {"data": data, "samples": samples, "sgld": sgld, "sam": sam}


def test_predicted_passes_equal_the_hand_count():
    cfg = tiny_config(*OPTIONS)
    cost = predict_cost(cfg, n_train=320, n_val=50)
    h = hand_counts()
    for kind in ("data", "samples", "sam"):
        assert cost.count(kind, "forward") == cost.count(kind, "backward") == h[kind]
    assert cost.count("sgld", "forward") == cost.count("sgld", "input_backward") == h["sgld"]
    assert cost.count("validation", "forward") == 50 * 2  # after epoch 2 (eval_every) and epoch 3 (the last)
    assert cost.units == 3 * (h["data"] + h["samples"] + h["sam"]) + 2 * h["sgld"] + 100
    assert cost.steps == 30


def test_predicted_classifier_and_pyld_passes():
    clf = predict_cost(tiny_config("train.epochs=2", "train.clf_only=true"), n_train=100, n_val=0)
    assert clf.passes == {"data": {"forward": 6 * 32, "backward": 6 * 32}}  # 100 // 32 = 3 steps an epoch
    pyld = predict_cost(tiny_config("train.max_steps=4", "sgld.kind=pyld", "sgld.steps=2", "sgld.inner_steps=3"),
                        n_train=320, n_val=10)
    assert pyld.count("sgld", "forward") == 4 * 32 * 2
    assert pyld.count("sgld_inner", "input_backward") == 4 * 32 * 2 * 3
    assert pyld.units == 3 * 4 * 32 * 2 + 2 * 4 * 32 * 2 + 10  # inner steps are left out of units
    assert pyld.count("validation", "forward") == 10  # a max_steps run inside its first epoch: once, at its end


@pytest.mark.slow
def test_the_meter_counts_what_was_predicted(tmp_path):
    cfg = tiny_config(*OPTIONS)
    trainer = Trainer(cfg, progress=False, out=tmp_path / "run")
    assert trainer.steps_per_epoch == 10  # the premise of the hand count
    trainer.fit()
    cost = RunState.load(trainer.run.checkpoint("last")).cost
    n_val = len(trainer.data.x_val)
    predicted = predict_cost(cfg, n_train=trainer.batches.n, n_val=n_val)
    assert cost.passes == predicted.passes
    h = hand_counts()
    assert cost.count("sgld", "forward") == h["sgld"] and cost.count("sam", "backward") == h["sam"]
    assert cost.steps == 30 and cost.cpu_s > 0 and cost.wall_s > 0 and cost.device_s is None
