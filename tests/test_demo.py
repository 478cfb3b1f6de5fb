"""`jem demo --quick` end to end, twice into one folder (`make demo` run again): the second run
replaces every output, its summary and report agree, and a run that fails part way leaves no
summary or report of the earlier run behind."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import torchjem.workflows.demo as demo
from torchjem import load_run
from torchjem.build import held_out_data
from torchjem.cli import main
from torchjem.errors import InputError

pytestmark = pytest.mark.slow  # processes that train: seconds to a minute each

ARGS = ["demo", "--quick", "--quiet", "--device=cpu"]


def _outputs(out):
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in (out / "summary.json", out / "report" / "report.html")}
    return summary, report, stamps


def _check_figures(out, summary, report):
    """The figures recomputed from the saved checkpoints, independently of the evaluation code."""
    held_report = json.loads((out / "held_out" / "report" / "report.json").read_text())
    limit, n_robust = report["settings"]["limit"], summary["robust_accuracy_n"]
    for model, role in (("jem", "model"), ("baseline", "baseline")):
        s, r = summary[model], report["models"][role]
        run = load_run(s["run_dir"], "last", "cpu")
        data = run.data()
        with torch.no_grad():
            logits = run.jem.eval().logits(data.x_test).double()
        right = (logits.argmax(1) == data.y_test).double()
        assert s["test_accuracy"] == pytest.approx(float(right.mean()), abs=1e-6)
        assert s["test_nll"] == pytest.approx(float(F.cross_entropy(logits, data.y_test)), rel=1e-4)
        assert r["classification"]["accuracy"] == pytest.approx(float(right[:limit].mean()), abs=1e-6)
        assert r["classification"]["n"] == limit
        # robust accuracy at eps 0 is the clean accuracy on the attacked examples
        curve = s["robust_accuracy"]["linf"]
        assert curve["0"] == pytest.approx(float(right[:n_robust].mean()), abs=1e-6)
        # held-out digits: the side run's log p(x) AUROC equals sklearn's on scores computed here
        side = load_run(out / "held_out" / model, "last", "cpu")
        x_in = side.data().x_test
        x_out = held_out_data(side.cfg)[: len(x_in)]
        with torch.no_grad():
            px_in, px_out = side.jem.eval().log_px(x_in).double(), side.jem.log_px(x_out).double()
        labels = [1] * len(x_in) + [0] * len(x_out)
        auroc = roc_auc_score(labels, torch.cat([px_in, px_out]).numpy())
        held_auroc = s["ood"]["held_out"]["px"]["auroc"]
        assert held_auroc == pytest.approx(auroc, abs=1e-9)
        assert held_report["models"][role]["ood"]["sets"]["held_out"]["px"]["auroc"] == held_auroc
    gen = report["models"]["model"]["generation"]
    per_class = gen["conditional_accuracy_per_class"]
    assert gen["conditional_accuracy"] == pytest.approx(sum(per_class) / len(per_class), abs=1e-6)


def _check_summary(summary, report, out):
    """The summary and the report are one run's: the same figures; every output is there."""
    for model in ("jem", "baseline"):
        s = summary[model]
        curve = list(s["robust_accuracy"]["linf"].values())
        assert curve == sorted(curve, reverse=True)  # never rises with eps
    assert summary["quick"] is True
    for name in ("report.html", "report.json", "model_samples_conditional.png", "model_robust_accuracy.png"):
        assert (out / "report" / name).is_file(), name
    models = report["models"]
    for name, role in (("jem", "model"), ("baseline", "baseline")):
        s, r = summary[name], models[role]
        assert s["ece"] == r["calibration"]["ece"] and s["nll"] == r["classification"]["nll"]
        for ood_set in ("uniform", "gaussian", "interp"):
            assert s["ood"][ood_set]["px"]["auroc"] == r["ood"]["sets"][ood_set]["px"]["auroc"]
    gen = models["model"]["generation"]
    assert summary["jem"]["fid"] == gen["fid"] and summary["jem"]["conditional_accuracy"] == gen["conditional_accuracy"]
    # robustness has one producer: the JEM run's attack.json, which the report shows
    curves = models["model"]["robustness"]["curves"]
    for name, setting in (("jem", "JEM-0"), ("jem_refined", "JEM-3"), ("baseline", "baseline")):
        assert list(summary[name]["robust_accuracy"]["linf"].values()) == curves[setting]
    assert models["model"]["robustness"]["n"] == summary["robust_accuracy_n"] == 50


def test_demo_quick_twice_into_one_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert main([*ARGS, "--out", str(out)]) == 0
    first, first_report, first_stamps = _outputs(out)
    _check_summary(first, first_report, out)
    _check_figures(out, first, first_report)
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "robust acc. L-inf 0.3 (JEM-3)" in printed

    # A demo that fails part way removes the earlier summary and reports first: nothing stale stays
    # beside what it wrote (here it fails before writing anything).
    def broken_train(*args, **kwargs):
        raise InputError("training failed")

    with monkeypatch.context() as m:
        m.setattr(demo, "train", broken_train)
        assert main([*ARGS, "--out", str(out)]) == 2
    assert not (out / "summary.json").exists() and not (out / "report").exists()
    assert not (out / "held_out" / "report").exists()
    assert (out / "jem" / "checkpoints").is_dir()  # the run directories wait for their next training

    assert main([*ARGS, "--out", str(out)]) == 0  # the bug: "already holds a run" after minutes of work
    second, second_report, second_stamps = _outputs(out)
    _check_summary(second, second_report, out)
    assert all(second_stamps[p] > first_stamps[p] for p in first_stamps)
    assert second_report["created"] >= first_report["created"]
    # the same seed: the same figures again (the runs were retrained from scratch, not resumed)
    assert second["jem"]["test_accuracy"] == pytest.approx(first["jem"]["test_accuracy"])
