"""The report's training-dynamics section: the summary of a run's metrics.jsonl, its figure, and
the section in report.html / report.json (the end-to-end check through `jem eval` is in
test_report.py)."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.image import imread

from torchjem.report import EvaluationReport, ModelReport, plot_dynamics, write_report
from torchjem.rundir import History, RunDir, dynamics_summary
from torchjem.rundir.history import superseded as _superseded

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def window(step, lr, loss, acc, e_data=None, e_sample=None, epoch=0):
    r = {"step": step, "epoch": epoch, "lr": lr, "loss": loss, "ce": loss, "acc": acc}
    if e_data is not None:
        r.update(loss_px=e_data - e_sample, energy_data=e_data, energy_sample=e_sample)
    return {**r, "it_per_s": 50.0}


# steps 5, 10, 15; divergence at step 17, rewound to 10 (the event's own "step" is 10: it is written
# after the rewind); steps 15, 20 again at half the lr; then a divergence at 23 with no retry left
RECORDS = [
    window(5, 0.1, 2.0, 0.25, -1.0, 0.5),
    window(10, 0.1, 1.5, 0.5, -2.0, -0.5),
    {"step": 10, "epoch": 1, "val_acc": 0.4, "val_nll": 1.2},
    window(15, 0.1, 1.2, 0.55, -2.5, -1.0, epoch=1),
    {"event": "recovery", "step": 10, "epoch": 1, "cause": "loss is nan", "at_step": 17, "rewound_to": 10,
     "lr_scale": 0.5, "retry": 1},
    window(15, 0.05, 1.1, 0.6, -3.0, -2.25, epoch=1),
    window(20, 0.05, 1.0, 0.75, -4.0, -3.5, epoch=1),
    {"event": "gave_up", "step": 23, "epoch": 1, "cause": "|loss| = 1e+05 > divergence.max_loss = 1e+04"},
]
CLF_ONLY = [
    window(5, 0.1, 2.0, 0.25),
    window(10, 0.1, 1.0, 0.5),
    {"step": 10, "epoch": 1, "val_acc": 0.45, "val_nll": 1.1},
    {"event": "done", "step": 12, "epoch": 1, "retries": 0, "val_acc": 0.5, "val_nll": 1.0},
]


NO_CHAIN_HEALTH = {"out_of_range": None, "norm_ratio": None, "class_balance": None, "buffer_age": None}


def test_summary_of_a_run_that_recovered_once_then_gave_up():
    assert dynamics_summary(RECORDS).to_dict() == {
        "steps": 23,  # the last record's step
        "recoveries": 1,
        "gave_up": True,
        "first_trouble_step": 17,  # the recovery's at_step, not the step it rewound to
        "cause": "|loss| = 1e+05 > divergence.max_loss = 1e+04",  # the give-up's
        "best_val_acc": 0.4,
        "final": {"loss": 1.0, "acc": 0.75, "energy_data": -4.0, "energy_sample": -3.5, "energy_gap": 0.5,
                  "lr": 0.05, **NO_CHAIN_HEALTH},  # (records written before chain health was logged)
        # the gap's least-squares slope over the kept windows (steps 5, 10, 15, 20; gaps 1.5, 1.5, 0.75,
        # 0.5), per 100 steps: sum((s - 12.5)(g - 1.0625)) / sum((s - 12.5)^2) = -9.375 / 125
        "gap_trend": pytest.approx(-0.075 * 100),
    }


def test_summary_of_a_clean_classifier_only_run():
    s = dynamics_summary(CLF_ONLY)
    assert s.steps == 12 and s.recoveries == 0 and s.gave_up is False and s.first_trouble_step is None
    assert s.cause is None and s.best_val_acc == 0.45  # validation records only (the "done" event repeats one)
    assert s.final == {"loss": 1.0, "acc": 0.5, "energy_data": None, "energy_sample": None, "energy_gap": None,
                          "lr": 0.1, **NO_CHAIN_HEALTH}
    assert s.gap_trend is None
    assert dynamics_summary([]).steps is None


def test_records_a_rewind_went_back_past_are_superseded():
    # file-order steps of two nested rewinds: 10 20 30 | back to 15: 20 30 | back to 12: 15 20 40
    steps = [10, 20, 30, 20, 30, 15, 20, 40]
    gone = _superseded(steps)
    assert gone.tolist() == [False, True, True, True, True, False, False, False]
    kept = [s for s, g in zip(steps, gone) if not g]
    assert kept == sorted(set(kept))  # what is left is one increasing history
    assert not _superseded([5, 10, 15]).any()


@pytest.mark.parametrize("records, panels", [(RECORDS, 5), (CLF_ONLY, 4)])
def test_dynamics_png_has_a_panel_per_curve(tmp_path, records, panels):
    path = plot_dynamics(records, tmp_path / "d.png", "run")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    img = imread(path)
    # figsize (6.4, 1.65 per panel + 1.1) inches at 96 dpi: a classifier-only run has no gap panel
    assert img.shape[1] == pytest.approx(6.4 * 96, abs=1)
    assert img.shape[0] == pytest.approx((1.65 * panels + 1.1) * 96, abs=1)
    assert img[..., :3].std() > 0.05  # something is drawn


def _report(models):
    return EvaluationReport(title="t", created="now", models=models)


def test_section_in_html_and_json(tmp_path):
    models = {
        "model": ModelReport(label="jem", kind="JEM", dynamics=dynamics_summary(RECORDS), history=History(RECORDS)),
        "baseline": ModelReport(label="imported", kind="classifier"),  # e.g. an imported checkpoint: no metrics.jsonl
    }
    report = _report(models)
    before = report.to_dict()
    paths = write_report(report, tmp_path)
    assert report.to_dict() == before  # the report is not changed by writing it
    data = json.loads((tmp_path / "report.json").read_text())
    m = data["models"]["model"]
    assert "arrays" not in m["dynamics"] and m["dynamics"]["first_trouble_step"] == 17
    assert m["png"]["dynamics"] == "model_dynamics.png" and paths["model_dynamics"] == tmp_path / "model_dynamics.png"
    assert "dynamics" not in data["models"]["baseline"] and "dynamics" not in data["models"]["baseline"]["png"]
    html = (tmp_path / "report.html").read_text()
    assert "<h2>Training dynamics</h2>" in html
    imgs = re.findall(r'<img [^>]*alt="([^"]*)"[^>]*src="data:image/png;base64,([^"]*)"', html)
    assert [alt for alt, _ in imgs] == ["training dynamics (model)"]  # only the run with records
    assert len(imgs[0][1]) > 5000
    key = json.dumps(["models", "model", "dynamics", "first_trouble_step"]).replace('"', "&quot;")
    assert f'<td data-key="{key}">17</td>' in html
    key = json.dumps(["models", "model", "dynamics", "final", "lr"]).replace('"', "&quot;")
    assert f'<td data-key="{key}">0.0500</td>' in html
    write_report(_report({"model": ModelReport(label="imported", kind="JEM")}), tmp_path / "none")
    assert "Training dynamics" not in (tmp_path / "none" / "report.html").read_text()


def test_a_half_written_metrics_line_is_skipped(tmp_path):
    assert RunDir(tmp_path).read_metrics() == []  # no metrics.jsonl
    lines = [json.dumps(r) for r in CLF_ONLY[:2]] + ['{"step": 15, "epo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert RunDir(tmp_path).read_metrics() == CLF_ONLY[:2]
