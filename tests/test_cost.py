"""The training cost of a run (issue 22): the pass counts a checkpoint keeps, checked against
numbers derived by hand from the batch size n, steps S, SGLD steps K, chains m, SAM, the p(x)
schedule and the validations; the seconds; a resume adding up; metrics.jsonl's cumulative units;
the step schedule of training/schedule.py.

Hand-derived cost model (rundir/cost.py): per step the loss passes its n data examples forward and
backward (3n units); on a p(x) step also the m samples (3m) and the chains' K steps on m chains
(forward + input backward: 2Km); SAM's second pass repeats the loss's passes (3 (n [+ m])); a
validation passes its examples forward once. PYLD's inner steps are counted apart and not in units.
"""

import math

import pytest

from conftest import TINY, tiny_config
from torchjem import Trainer
from torchjem.cli import main
from torchjem.config import load_config
from torchjem.rundir import RunDir, RunState
from torchjem.training.schedule import step_plan

N = 8  # batch size
K = 2  # SGLD steps
VAL = 40  # validation examples (data.val_size=40: a count)
BASE = ["train.batch_size=8", "data.limit=64", "data.val_size=40", "sgld.steps=2", "buffer.size=40",
        "train.log_every=100"]  # data.limit=64: 8 steps an epoch


def train_run(path, *extra, steps):
    """A fresh tiny run of ``steps`` steps; returns (trainer, the cost of its last.pt)."""
    t = Trainer(tiny_config(*BASE, f"train.max_steps={steps}", *extra), progress=False, out=path)
    t.fit()
    return t, RunState.load(t.run.checkpoint("last")).cost


def passes(**kinds):
    """{kind: {direction: examples}} from kind=(forward, backward) or kind=(forward, backward,
    input_backward) tuples; zero counts left out, as the meter leaves them."""
    names = ("forward", "backward", "input_backward")
    out = {k: {d: n for d, n in zip(names, v) if n} for k, v in kinds.items()}
    return {k: v for k, v in out.items() if v}


def jem_passes(n, steps, px_steps, *, m=None, k=K, validations=1, sam=0):
    """The passes of a JEM run of ``steps`` steps, ``px_steps`` of them with the p(x) term."""
    m = n if m is None else m
    return passes(
        data=(n * steps, n * steps), samples=(m * px_steps, m * px_steps), sgld=(m * k * px_steps, 0, m * k * px_steps),
        sam=(sam, sam), validation=(VAL * validations, 0),
    )


def units(p):
    return sum({"forward": 1, "backward": 2, "input_backward": 1}[d] * c
               for kind, v in p.items() if kind != "sgld_inner" for d, c in v.items())


def test_px_every_second_step_counts_by_hand(tmp_path):
    # S=5, px_every=2: p(x) on steps 0, 2, 4 (ceil(5/2) = 3); one validation (the end of max_steps)
    _, cost = train_run(tmp_path / "r", "objective.px_every=2", steps=5)
    assert cost.passes == {
        "data": {"forward": 40, "backward": 40},
        "samples": {"forward": 24, "backward": 24},
        "sgld": {"forward": 48, "input_backward": 48},
        "validation": {"forward": 40},
    }
    # 3nS + (3 + 2K) m ceil(S/2) + validation = 120 + 7 * 8 * 3 + 40
    assert cost.units == cost.total_units == 3 * N * 5 + (3 + 2 * K) * N * math.ceil(5 / 2) + VAL == 328
    assert cost.steps == 5 and cost.since_step == 0 and cost.init is None
    assert cost.cpu_s > 0 and cost.wall_s > 0 and cost.device_s is None  # (a CPU run: no device time)


@pytest.mark.parametrize("extra, steps, expected", [
    # m = 3 chains per step (sgld.chains), p(x) every step: samples 3 S, sgld 3 K S
    (["sgld.chains=3"], 4, jem_passes(N, 4, 4, m=3)),
    # SAM every 3rd step (steps 0, 3), p(x) every 2nd (0, 2, 4): step 0 repeats n + m, step 3 only n
    (["optim.sam_rho=0.05", "optim.sam_every=3", "objective.px_every=2"], 5, jem_passes(N, 5, 3, sam=(N + N) + N)),
    # SAM on every step, a classifier: the second pass is n each step
    (["train.clf_only=true", "optim.sam_rho=0.05"], 3, passes(data=(24, 24), sam=(24, 24), validation=(VAL, 0))),
    # a classifier: data only, no samples, no chains
    (["train.clf_only=true"], 5, passes(data=(40, 40), validation=(VAL, 0))),
])
def test_chains_sam_and_classifier_counts_by_hand(tmp_path, extra, steps, expected):
    _, cost = train_run(tmp_path / "r", *extra, steps=steps)
    assert cost.passes == expected
    assert cost.units == units(expected)


def test_px_from_epoch_steps_by_epoch_and_eval_every_count_by_hand(tmp_path):
    # 32 examples / 8 = 4 steps an epoch; S=10: epoch 0 = steps 0-3 (classifier steps: px_from_epoch=1),
    # epoch 1 = steps 4-7 (K=3), epoch 2 = steps 8-9 (K=1, the last value repeating). The ramp changes
    # weights only. Validations: epoch 1's end skipped (eval_every=2), epoch 2's end, the end of max_steps.
    _, cost = train_run(tmp_path / "r", "data.limit=32", "objective.px_from_epoch=1", "objective.px_ramp_steps=3",
                        "sgld.steps_by_epoch=[5,3,1]", "train.eval_every=2", steps=10)
    expected = passes(data=(80, 80), samples=(6 * N, 6 * N), sgld=(N * (3 * 4 + 1 * 2), 0, N * (3 * 4 + 1 * 2)),
                      validation=(2 * VAL, 0))
    assert cost.passes == expected
    assert cost.units == 3 * 80 + 3 * 48 + 2 * 112 + 2 * VAL == 688


def test_pyld_inner_steps_are_counted_apart_and_left_out_of_units(tmp_path):
    # K=2 outer steps, 3 inner steps each, S=3, p(x) every step
    _, cost = train_run(tmp_path / "r", "sgld.kind=pyld", "sgld.inner_steps=3", steps=3)
    expected = {**jem_passes(N, 3, 3), "sgld_inner": {"forward": N * K * 3 * 3, "input_backward": N * K * 3 * 3}}
    assert cost.passes == expected
    assert cost.units == 3 * 24 + (3 + 2 * K) * 24 + VAL == 280


def test_a_resume_adds_to_the_checkpoints_counts(tmp_path):
    # A: 3 steps (p(x) on 0, 2), then B on to 6 (p(x) on 4: the schedule counts the run's steps)
    _, a = train_run(tmp_path / "ab", "objective.px_every=2", steps=3)
    assert a.passes == jem_passes(N, 3, 2)
    resumed = Trainer.resume(tmp_path / "ab", progress=False, overrides=["train.max_steps=6"])
    resumed.fit()
    ab = RunState.load(resumed.run.checkpoint("last")).cost
    _, one = train_run(tmp_path / "one", "objective.px_every=2", steps=6)
    # training passes equal those of one run of 6 steps; each session validated once at its end
    assert ab.passes == jem_passes(N, 6, 3, validations=2)
    assert one.passes == jem_passes(N, 6, 3, validations=1)
    assert ab.steps == one.steps == 6 and ab.since_step == 0
    assert ab.cpu_s > a.cpu_s and ab.wall_s > a.wall_s


def test_jem_train_resume_adds_to_the_counts(tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--quiet", *TINY, *BASE, "device=cpu", "train.max_steps=2", "--out", str(run)]) == 0
    assert main(["train", "--quiet", "--resume", str(run), "train.max_steps=4"]) == 0
    cost = RunState.load(RunDir(run).checkpoint("last")).cost
    assert cost.passes == jem_passes(N, 4, 4, validations=2)


def test_cpu_seconds_grow_with_more_steps(tmp_path):
    _, short = train_run(tmp_path / "short", "sgld.steps=5", steps=2)
    _, long = train_run(tmp_path / "long", "sgld.steps=5", steps=16)
    assert long.units > 7 * short.units
    assert long.cpu_s > short.cpu_s > 0


def test_metrics_lines_carry_the_cumulative_units(tmp_path):
    # log_every=2, px_every=2: lines at steps 2, 4, 6 with 3n s + (3 + 2K) n ceil(s / 2) (no validation yet)
    t, cost = train_run(tmp_path / "r", "train.log_every=2", "objective.px_every=2", steps=6)
    lines = [r for r in t.run.read_metrics() if "cost_units" in r]
    assert [r["step"] for r in lines] == [2, 4, 6]
    assert [r["cost_units"] for r in lines] == [3 * N * s + (3 + 2 * K) * N * math.ceil(s / 2) for s in (2, 4, 6)]
    assert [r["cost_units"] for r in lines] == [104, 208, 312]
    assert all(b["cpu_s"] >= a["cpu_s"] and b["wall_s"] >= a["wall_s"] for a, b in zip(lines, lines[1:]))
    done = t.run.read_metrics()[-1]
    assert done["event"] == "done" and done["cost"]["units"] == 312 + VAL == cost.units


# -- the schedule (training/schedule.py), its docstring's examples ----------------------------------
def cfg(*overrides):
    return load_config(None, list(overrides))


def test_step_plan_px_every_gives_classifier_steps_between():
    c = cfg("objective.px_every=2")
    assert [step_plan(c, s, 0, 100).scale for s in range(4)] == [1.0, 0.0, 1.0, 0.0]
    assert [step_plan(cfg(), s, 0, 100).scale for s in range(3)] == [1.0, 1.0, 1.0]


def test_step_plan_ramps_after_px_from_epoch():
    c = cfg("objective.px_from_epoch=1", "objective.px_ramp_steps=4")
    got = [step_plan(c, s, s // 100, 100).scale for s in (0, 99, 100, 101, 102, 103, 104, 500)]
    assert got == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step_plan_k_per_epoch_and_sam_every():
    c = cfg("sgld.steps_by_epoch=[10,5]", "optim.sam_rho=0.05", "optim.sam_every=3")
    assert [step_plan(c, 0, e, 100).sgld_steps for e in (0, 1, 7)] == [10, 5, 5]
    assert step_plan(cfg(), 0, 3, 100).sgld_steps is None  # the sampler's own K
    assert [step_plan(c, s, 0, 100).sam for s in range(7)] == [True, False, False, True, False, False, True]
    assert not any(step_plan(cfg("optim.sam_every=3"), s, 0, 100).sam for s in range(4))  # sam_rho=0: off
