"""jem sweep: every trial ends with a record, re-runs skip finished trials, workers never run a
trial twice, a killed worker's trial is continued, divergence is a result, bad keys fail first."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from conftest import TINY
from torchjem.cli import main
from torchjem.errors import ConfigError, DataError, InputError, RunDirError, UserError
from torchjem.evaluate.calibration import calibration
from torchjem.evaluate.classification import classification
from torchjem.rundir import History, RunDir, RunState
from torchjem.workflows.runs import load_run
from torchjem.workflows.sweep import (
    TrialRecord,
    mark_collapse,
    open_sweep,
    plan_sweep,
    run_sweep,
    run_trial,
    sweep_records,
)

BASE = [*TINY, "data.limit=256", "train.max_steps=6", "device=cpu"]
# divergence.max_loss 1e-6 flags every checked step: the run rewinds once, then gives up
GRID = ["optim.lr=0.001,0.002", "divergence.max_loss=1e8,1e-6"]
# RUN_DIR/trial.json's keys (the study's user attributes add the trial's number and point)
TRIAL_KEYS = {"run", "params", "seed", "recoveries", "first_trouble_step", "cause", "energy_gap", "diverged", "status",
              "steps", "resumed", "val_acc", "test_acc", "ece", "nll", "seconds", "best_val_acc", "cost_units", "cpu_s",
              "wall_s", "auroc_uniform", "auroc_interp"}


def trials_in(out: Path) -> list[optuna.trial.FrozenTrial]:
    return open_sweep(out).study.optuna.get_trials(deepcopy=False)


def done_events(run_dir: Path) -> int:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line).get("event") == "done" for line in lines)


@pytest.mark.slow
def test_grid_records_every_trial_divergence_is_a_result_and_rerun_skips(tmp_path):
    spec = plan_sweep(None, [*BASE, "divergence.max_retries=1"], GRID, seeds=1)
    out = tmp_path / "sw"
    result = run_sweep(spec, out, heartbeat=1)
    recs = {r.run: r for r in result["records"]}
    assert sorted(recs) == ["p000-s1", "p001-s1", "p002-s1", "p003-s1"]  # 2 x 2 settings, seed 1
    for r in recs.values():
        run_dir = out / "trials" / r.run
        assert (run_dir / "trial.json").is_file() and (run_dir / "config.yaml").is_file()
        saved = json.loads((run_dir / "trial.json").read_text())
        scored = set() if r.diverged else {"auroc_uniform", "auroc_interp"}  # (a diverged trial scores nothing)
        assert set(saved) == TRIAL_KEYS - {"auroc_uniform", "auroc_interp"} | scored
        assert TrialRecord.from_dict(saved) == replace(r, number=None, point=None)
        if r.params["divergence.max_loss"] == 1e-6:
            assert r.diverged and r.status == "diverged"
            assert "divergence.max_loss" in r.cause and r.recoveries == 1
            assert r.first_trouble_step is not None and r.val_acc is None
        else:
            assert not r.diverged and r.cause is None and r.recoveries == 0
            assert r.steps == 6
            # the record's figures are the run's: its final validation, and its checkpoint on the test split
            history = RunDir(run_dir).history()
            (done,) = [e for e in history.events if e["event"] == "done"]  # max_steps: validated at the end
            assert r.val_acc == done["val_acc"]
            assert r.energy_gap == pytest.approx(history.summary().final["energy_gap"])
            run = load_run(run_dir, device="cpu")
            data = run.data()
            c, cal = classification(run.jem, data.x_test, data.y_test), calibration(run.jem, data.x_test, data.y_test)
            assert (r.test_acc, r.nll, r.ece) == pytest.approx((c.accuracy, c.nll, cal.ece), rel=1e-6)
    # the trial's own config has the swept value and the trial's seed
    cfg = (out / "trials" / "p001-s1" / "config.yaml").read_text()
    assert "max_loss: 1.0e-06" in cfg and "seed: 1" in cfg
    # recorded in the study too, with Optuna's value = val accuracy (0 for a diverged trial)
    complete = [t for t in trials_in(out) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    for t in complete:
        assert t.value == (0.0 if t.user_attrs["diverged"] else t.user_attrs["val_acc"])
        scored = set() if t.user_attrs["diverged"] else {"auroc_uniform", "auroc_interp"}
        assert set(t.user_attrs) == TRIAL_KEYS - {"auroc_uniform", "auroc_interp"} | scored | {"number", "point"}
        assert t.user_attrs["number"] == t.number
    assert (out / "report" / "sweep.html").is_file()

    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/trial.json")}
    again = run_sweep(spec, out, heartbeat=1)  # the same command again: nothing is run twice
    assert {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/trial.json")} == stamps
    assert len(trials_in(out)) == 4 and len(again["records"]) == 4
    assert all(done_events(out / "trials" / r) == 1 for r in recs if not recs[r].diverged)

    other = plan_sweep(None, [*BASE, "divergence.max_retries=1"], ["optim.lr=0.001,0.003"], seeds=1)
    with pytest.raises(RunDirError, match="different sweep"):
        run_sweep(other, out, heartbeat=1)


@pytest.mark.slow
def test_two_worker_processes_never_run_a_trial_twice(tmp_path):
    spec = plan_sweep(None, BASE, ["optim.lr=0.001,0.002,0.003"], seeds=2)
    out = tmp_path / "sw"
    result = run_sweep(spec, out, workers=2, threads=1, heartbeat=1)
    runs = sorted(r.run for r in result["records"])
    assert runs == [f"p{i:03d}-s{s}" for i in range(3) for s in (1, 2)]
    states = [t.state for t in trials_in(out)]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6 and len(states) == 6
    for run in runs:  # each run directory was trained once, from step 0 to 6
        assert done_events(out / "trials" / run) == 1
        assert not json.loads((out / "trials" / run / "trial.json").read_text())["resumed"]


@pytest.mark.slow
def test_a_killed_workers_trial_is_continued_from_its_checkpoint(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "--grid", "optim.lr=0.001,0.002", "--out", str(out), "--heartbeat", "1", "--quiet",
            *BASE, "train.max_steps=150", "train.checkpoint_every=5", "train.log_every=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = f"import sys; from torchjem.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, start_new_session=True)
    last = out / "trials" / "p000-s1" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.is_file(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_before = [json.loads(x)["step"] for x in (last.parent.parent / "metrics.jsonl").read_text().splitlines()]

    spec = plan_sweep(None, [*BASE, "train.max_steps=150", "train.checkpoint_every=5", "train.log_every=5"],
                      ["optim.lr=0.001,0.002"], seeds=1)
    result = run_sweep(spec, out, heartbeat=1)
    recs = {r.run: r for r in result["records"]}
    assert set(recs) == {"p000-s1", "p001-s1"}
    assert recs["p000-s1"].resumed and recs["p000-s1"].steps == 150
    assert not recs["p001-s1"].resumed
    trials = trials_in(out)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["run"] for t in failed] == ["p000-s1"]  # the killed one, failed as stale, re-run
    metrics = [json.loads(x) for x in (last.parent.parent / "metrics.jsonl").read_text().splitlines()]
    first_new = [m["step"] for m in metrics[len(steps_before) :] if "step" in m and "event" not in m][0]
    assert first_new > 5  # continued from a checkpoint, not from step 0
    assert sum(m.get("event") == "done" for m in metrics) == 1


@pytest.mark.slow
def test_sampler_runs_each_drawn_setting_on_every_seed(tmp_path):
    spec = plan_sweep(None, BASE, ranges=["optim.lr=1e-4:1e-2:log"], seeds=2, trials=3, sampler="random")
    result = run_sweep(spec, tmp_path / "sw", heartbeat=1)
    recs = result["records"]
    assert len(recs) == 6
    by_point: dict[str, list] = {}
    for r in recs:
        by_point.setdefault(r.run.split("-")[0], []).append(r)
    assert len(by_point) == 3
    for runs in by_point.values():
        assert sorted(r.seed for r in runs) == [1, 2]
        assert runs[0].params == runs[1].params
        assert 1e-4 <= runs[0].params["optim.lr"] <= 1e-2


def test_bad_grid_key_is_rejected_before_any_trial_naming_the_closest_key(tmp_path, capsys):
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        plan_sweep(None, BASE, ["optim.lrr=0.1,0.2"])
    out = tmp_path / "sw"
    code = main(["sweep", "--grid", "sgld.stepsize=0.3,1", "--out", str(out), *BASE])
    assert code == 2 and "did you mean sgld.step_size" in capsys.readouterr().err
    assert not out.exists()
    for bad, match in [
        (dict(grid=["optim.lr=0.1,abc"]), "optim.lr expects float"),
        (dict(grid=["seed=1,2"]), "cannot be swept"),
        (dict(ranges=["optim.lr=1e-2:1e-4"], trials=2), "LOW < HIGH"),
        (dict(ranges=["sgld.noise=0:1:log"], trials=2), "LOW > 0"),
        (dict(ranges=["optim.lr=1e-4:1e-2"]), "needs --trials"),
        (dict(grid=[]), "nothing to sweep"),
    ]:
        with pytest.raises((ConfigError, InputError), match=match):
            plan_sweep(None, BASE, **bad)


@pytest.mark.slow
def test_a_user_error_in_a_trial_stops_the_sweep(tmp_path):
    spec = plan_sweep(None, BASE, ["data.name=digits,no_such_data"], seeds=1)
    out = tmp_path / "sw"
    with pytest.raises(UserError, match="no_such_data") as err:
        run_sweep(spec, out, heartbeat=1)
    assert isinstance(err.value, (ConfigError, DataError))
    sweep = open_sweep(out)
    assert "no_such_data" in sweep.study.optuna.user_attrs["stopped"]["why"]
    assert [r.run for r in sweep_records(sweep)] == ["p000-s1"]
    with pytest.raises(UserError, match="no_such_data"):  # the same command again: the trial again, same error
        run_sweep(spec, out, heartbeat=1)
    assert not (out / "trials" / "p001-s1" / "trial.json").exists()


@pytest.mark.slow
def test_cli_report_of_a_finished_sweep(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "--grid", "optim.lr=0.001,0.002", "--out", str(out), "--quiet", *BASE]) == 0
    assert "2 trials, 0 diverged" in capsys.readouterr().out
    (out / "report" / "sweep.html").unlink()
    assert main(["sweep", "--report", str(out)]) == 0
    html = (out / "report" / "sweep.html").read_text()
    assert "p000-s1" in html and "p001-s1" in html and "data:image/png;base64," in html
    assert main(["sweep", "--report", str(tmp_path / "none")]) == 2


def test_a_run_that_finished_far_below_its_best_collapsed():
    metrics = [{"step": 20, "epoch": 1, "val_acc": 0.60}, {"step": 40, "epoch": 2, "val_acc": 0.95},
               {"event": "done", "step": 60, "val_acc": 0.14}, {"step": 60, "epoch": 3, "val_acc": 0.14}]
    metrics = History(metrics)
    rec = mark_collapse(TrialRecord("r", diverged=False, status="done", cause=None, val_acc=0.14), metrics)
    assert rec.diverged and rec.status == "collapsed" and rec.best_val_acc == 0.95
    assert rec.cause.startswith("collapsed: final val acc 0.140 < 0.8 x its best 0.950")
    # 0.77 >= 0.8 * 0.95 = 0.76: a dip, not a collapse; a run that gave up stays as it was
    assert not mark_collapse(TrialRecord("r", diverged=False, status="done", val_acc=0.77), metrics).diverged
    gave_up = mark_collapse(TrialRecord("r", diverged=True, status="diverged", cause="x", val_acc=None), metrics)
    assert gave_up.status == "diverged" and gave_up.cause == "x"


def test_claims_follow_the_queue_and_a_result_for_a_trial_failed_meanwhile_is_logged(tmp_path, caplog):
    spec = plan_sweep(None, BASE, ["optim.lr=0.001,0.002"], seeds=1)
    study = open_sweep(tmp_path / "sw", spec, heartbeat=1).study
    study.plan_grid()
    study.plan_grid()  # once only
    first = study.claim()
    assert (first.run, first.seed, first.params) == ("p000-s1", 1, {"optim.lr": 0.001}) and study.running()
    study.optuna.tell(first.number, state=optuna.trial.TrialState.FAIL)  # as fail_stale_trials does to a silent one
    with caplog.at_level(logging.WARNING, logger="torchjem.sweep"):
        study.tell(first, 0.9, {"diverged": False})  # the worker finishes late: logged, not raised
    assert "result not recorded" in caplog.text
    assert "diverged" not in study.optuna.trials[first.number].user_attrs
    assert study.requeue_failed() == ["p000-s1"]  # a re-run queues it again
    claims = [study.claim(), study.claim()]
    assert sorted((c.run, c.params["optim.lr"]) for c in claims) == [("p000-s1", 0.001), ("p001-s1", 0.002)]
    assert study.claim() is None and len(study.optuna.trials) == 3


def test_a_trial_records_its_training_cost(tmp_path):
    spec = plan_sweep(None, BASE, ["optim.lr=0.001"], seeds=1)
    rec = run_trial(spec, tmp_path / "p000-s1", {"optim.lr": 0.001}, seed=1)
    cost = RunState.load(RunDir(tmp_path / "p000-s1").checkpoint("last")).cost
    # by hand: 6 steps of 32 examples, K=5 on 32 chains each step, one validation (the end of max_steps)
    v = cost.count("validation", "forward")
    assert v > 0 and rec.cost_units == cost.total_units == 3 * 32 * 6 + (3 + 2 * 5) * 32 * 6 + v
    # seconds: folded just after training, a little after last.pt was written
    assert rec.cpu_s >= cost.total_cpu_s > 0 and rec.wall_s >= cost.total_wall_s > 0
    saved = json.loads((tmp_path / "p000-s1" / "trial.json").read_text())
    assert set(saved) == TRIAL_KEYS and saved["cost_units"] == rec.cost_units


def test_a_trials_log_px_aurocs_are_those_of_jem_eval(tmp_path):
    from torchjem.workflows.eval import evaluate_run

    spec = plan_sweep(None, BASE, ["optim.lr=0.001"], seeds=1)
    rec = run_trial(spec, tmp_path / "p000-s1", {"optim.lr": 0.001}, seed=1)
    report = evaluate_run(tmp_path / "p000-s1", ood=["uniform", "interp"], generate=False, progress=False,
                          write=False)
    sets = report.models["model"].evaluation.ood.sets
    assert rec.auroc_uniform == pytest.approx(sets["uniform"]["px"]["auroc"], abs=1e-9)
    assert rec.auroc_interp == pytest.approx(sets["interp"]["px"]["auroc"], abs=1e-9)
    assert 0 <= rec.auroc_interp <= 1 and rec.auroc_uniform != rec.auroc_interp
