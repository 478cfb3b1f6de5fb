import json
import re
import shutil

import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score
from torch import nn

from conftest import tiny_config
from torchjem.cli import main
from torchjem.evaluate.ood import SCORES, builtin_ood_set
from torchjem.evaluate.results import OODResult
from torchjem.evaluate.suite import evaluate_model
from torchjem.report import EvaluationReport, ModelReport, write_report
from torchjem.report.page import fmt, get_path
from torchjem.rundir import Cost, RunDir, RunState
from torchjem.training import train
from torchjem.workflows.eval import evaluate_run, headline, headline_text
from torchjem.workflows.inputs import default_feature_net

ATTACK = {
    "norm": "linf",
    "eps": [0.0, 0.1, 0.2],
    "n": 50,
    "curves": {"JEM-0": [0.9, 0.42, 0.08], "JEM-1": [0.88, 0.55, 0.21]},
    "png": "attack/robust_accuracy.png",
    "distal": {"n": 10, "log_px_gap": 3.25},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny JEM and its baseline trained on digits 0-4 (so digits 5-9 are a held-out OOD set)."""
    root = tmp_path_factory.mktemp("runs")
    extra = ["data.classes=[0,1,2,3,4]", "train.max_steps=12"]
    jem = train(tiny_config(*extra), progress=False, out=root / "jem")
    train(tiny_config(*extra, "train.clf_only=true"), data=jem.data, progress=False, out=root / "base")
    default_feature_net(jem.data, root / "jem" / "feature_net", epochs=2)  # cached: the report reuses it
    (root / "jem" / "attack").mkdir()
    (root / "jem" / "attack" / "attack.json").write_text(json.dumps(ATTACK))
    fig = Figure(figsize=(2, 2))  # no pyplot: the test leaves the matplotlib backend alone too
    fig.subplots().plot(ATTACK["eps"], ATTACK["curves"]["JEM-0"])
    fig.savefig(root / "jem" / "attack" / "robust_accuracy.png")
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rep = evaluate_run(runs / "jem", baseline=runs / "base", limit=40, out=out, per_class=2, progress=False)
    return rep, out


@pytest.mark.slow
def test_report_has_every_section_for_both_models(report):
    rep, out = report
    html = (out / "report.html").read_text()
    for section in ["Summary", "Classification", "Calibration", "Out-of-distribution detection", "Generation"]:
        assert f"<h2>{section}</h2>" in html
    assert "<h2>Robustness</h2>" in html  # from the hand-written RUN_DIR/attack/attack.json
    data = json.loads((out / "report.json").read_text())
    assert list(data["models"]) == ["model", "baseline"]
    assert data["models"]["model"]["kind"] == "JEM" and data["models"]["baseline"]["kind"] == "classifier"
    for m in data["models"].values():
        assert set(m["ood"]["sets"]) == {"uniform", "gaussian", "interp", "held_out"}
        assert set(m["ood"]["sets"]["held_out"]) == {"n", "px", "py", "pxgrad", "maxlogit"}
        assert m["classification"]["n"] == 40 and m["calibration"]["n_bins"] == 20
        assert m["generation"]["feature_net"] == "classifier[digits]"
        assert "arrays" not in m["ood"] and "arrays" not in m["generation"]
    assert data["models"]["model"]["robustness"]["curves"] == ATTACK["curves"]
    assert "robustness" not in data["models"]["baseline"]
    assert data["models"]["model"]["generation"]["source"] == "replay buffer"
    assert data["models"]["baseline"]["generation"]["source"].startswith("fresh")


def test_training_dynamics_of_both_runs(runs, report):
    _, out = report
    assert "<h2>Training dynamics</h2>" in (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    for role, run in (("model", "jem"), ("baseline", "base")):
        records = RunDir(runs / run).read_metrics()
        d = data["models"][role]["dynamics"]
        assert "arrays" not in d
        assert d["steps"] == records[-1]["step"] == 12  # train.max_steps=12
        assert d["recoveries"] == 0 and d["gave_up"] is False and d["first_trouble_step"] is None
        last = [r for r in records if "loss" in r][-1]
        assert d["final"]["loss"] == pytest.approx(last["loss"]) and d["final"]["lr"] == pytest.approx(last["lr"])
        assert data["models"][role]["png"]["dynamics"] == f"{role}_dynamics.png"
        assert (out / f"{role}_dynamics.png").stat().st_size > 5000
    jem, base = data["models"]["model"]["dynamics"]["final"], data["models"]["baseline"]["dynamics"]["final"]
    assert jem["energy_gap"] == pytest.approx(jem["energy_sample"] - jem["energy_data"])
    assert base["energy_data"] is None and base["energy_gap"] is None  # clf_only: no p(x) term


def test_html_is_self_contained_with_every_plot(report):
    rep, out = report
    html = (out / "report.html").read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', html)
    assert len(srcs) == 2 * 5 + 1  # reliability, histograms, 2 sample grids, dynamics per model; robustness once
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', html))
    for name in ["reliability", "ood_histograms", "samples_unconditional", "samples_conditional", "dynamics"]:
        for role in ("model", "baseline"):
            assert (out / f"{role}_{name}.png").stat().st_size > 500
    assert (out / "model_robust_accuracy.png").is_file()


def test_json_holds_every_figure_the_html_shows(report):
    _, out = report
    html = (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    cells = re.findall(r"<td([^>]*)>([^<]*)</td>", html)
    keyed = 0
    for attrs, text in cells:
        if re.fullmatch(r"-?\d+(\.\d+)?|n/a", text.strip()):
            m = re.search(r'data-key="([^"]*)"', attrs)
            assert m, f"figure {text} in the HTML without a JSON path"
        m = re.search(r'data-key="([^"]*)"', attrs)
        if m:
            path = json.loads(m.group(1).replace("&quot;", '"'))
            assert fmt(get_path(data, path)) == text, path
            keyed += 1
    assert keyed > 100
    # and the headline figures are among them
    ece = data["models"]["model"]["calibration"]["ece"]
    assert (
        f'data-key="{json.dumps(["models", "model", "calibration", "ece"]).replace(chr(34), "&quot;")}">{fmt(ece)}<'
        in html
    )


def test_robustness_section_is_skipped_without_attack_json_and_taken_from_a_dict(runs, tmp_path):
    rep = evaluate_run(runs / "base", ood=["uniform"], generate=False, limit=20, out=tmp_path / "a", progress=False)
    assert rep.models["model"].history.records == RunDir(runs / "base").read_metrics()
    html = (tmp_path / "a" / "report.html").read_text()
    assert "Robustness" not in html and "<h2>Generation</h2>" not in html
    assert list(rep.models) == ["model"]
    given = {**ATTACK, "png": None, "curves": {"baseline": [0.95, 0.1, 0.0]}}
    evaluate_run(
        runs / "base", ood=["uniform"], generate=False, limit=20, out=tmp_path / "b", progress=False,
        robustness={"model": given},
    )
    html = (tmp_path / "b" / "report.html").read_text()
    assert "<h2>Robustness</h2>" in html and ">baseline</td>" in html
    with pytest.raises(ValueError, match="curve 'x' has 1 values for 3 eps"):
        evaluate_run(
            runs / "base", ood=["uniform"], generate=False, limit=20, write=False, progress=False,
            robustness={"model": {**ATTACK, "curves": {"x": [0.5]}}},
        )


def test_a_run_without_metrics_has_no_dynamics(runs, tmp_path):
    shutil.copytree(runs / "base", tmp_path / "copy", ignore=shutil.ignore_patterns("metrics.jsonl", "report"))
    rep = evaluate_run(tmp_path / "copy", ood=["uniform"], generate=False, limit=20, progress=False)
    assert rep.models["model"].dynamics is None and "model_dynamics" not in rep.files
    assert "Training dynamics" not in (tmp_path / "copy" / "report" / "report.html").read_text()


def test_headline_and_limit(report):
    rep, _ = report
    h = headline(rep, "model")
    assert set(h["ood"]) == {"uniform", "gaussian", "interp", "held_out"}
    ood = rep.models["model"].evaluation.ood  # the headline's AUROC is sklearn's on the scored sets
    scores_in, scores_out = ood.arrays["in"]["px"], ood.arrays["uniform"]["px"]
    labels = [1] * len(scores_in) + [0] * len(scores_out)
    assert h["ood"]["uniform"]["px"]["auroc"] == pytest.approx(roc_auc_score(labels, scores_in + scores_out))
    assert h["fid"] == rep.models["model"].evaluation.generation.fid
    assert rep.models["model"].evaluation.ood.sets["uniform"]["n"] == 40  # OOD sets limited too
    assert rep.models["model"].evaluation.generation.n_fake == 40


def test_cli_eval_writes_a_report_and_rejects_bad_input(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["eval", str(runs / "jem"), "--limit", "20", "--no-generation", "--ood", "uniform", "held_out",
                 "--out", str(out), "--refine-steps", "2", "--quiet"])
    assert code == 0 and (out / "report.json").is_file() and (out / "report.html").is_file()
    data = json.loads((out / "report.json").read_text())
    assert data["models"]["model"]["classification_refined"]["refine_steps"] == 2
    assert main(["eval", str(runs / "jem"), "--ood", "nosuchset", "--quiet"]) == 2
    assert "unknown OOD set 'nosuchset'" in capsys.readouterr().err
    assert main(["eval", str(runs / "jem"), "--scores", "px", "energy", "--quiet"]) == 2
    assert "unknown OOD score 'energy'" in capsys.readouterr().err


def test_model_evaluation_holds_the_parts_asked_for_and_gives_the_report_dict():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(60, 1, 4, 4) * 2 - 1, torch.arange(60) % 3
    res = evaluate_model(net, x, y, n_classes=3, ood_sets={"uniform": builtin_ood_set("uniform", x)}, n_bins=5)
    assert res.classification_refined is None and res.generation is None
    assert isinstance(res.ood, OODResult) and res.ood.n_in == 60
    with torch.no_grad():
        hits = (net(x).argmax(1) == y).numpy()
    d = res.to_dict()
    assert list(d) == ["classification", "calibration", "ood"]  # the parts not asked for are left out
    assert d["classification"] == {"accuracy": pytest.approx(hits.mean()), "nll": res.classification.nll, "n": 60,
                                   "refine_steps": 0}
    assert d["calibration"]["n_bins"] == 5 and sum(d["calibration"]["bins"]["count"]) == 60
    assert d["calibration"]["accuracy"] == pytest.approx(hits.mean())
    assert set(d["ood"]["sets"]["uniform"]) == {"n", *SCORES}
    refined = evaluate_model(net, x, y, n_classes=3, refine_steps=1)
    assert list(refined.to_dict()) == ["classification", "classification_refined", "calibration"]
    assert refined.classification_refined.refine_steps == 1 and refined.classification_refined.n == 60


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"limit": 0}, "limit"),
        ({"n_bins": 0}, "bins"),
        ({"ood": ["uniform", "uniform"]}, "twice"),
    ],
)
def test_bad_arguments_fail_before_any_work(runs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_run(runs / "jem", write=False, progress=False, **kwargs)


def test_missing_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_run(tmp_path / "nope", write=False)


def test_page_builder_prints_figures_from_the_document_by_path(tmp_path):
    from torchjem.report.page import Page, clean_json, write_json, write_page

    doc = clean_json({"title": "t", "rows": [{"acc": 0.91234, "lr": 2e-4, "bad": float("nan")}],
                      "arrays": [1, 2], "t": torch.tensor([1.5]), "p": tmp_path})
    assert doc == {"title": "t", "rows": [{"acc": 0.91234, "lr": 2e-4, "bad": None}], "t": [1.5], "p": str(tmp_path)}
    assert json.loads(write_json(tmp_path / "d.json", {"x": float("inf")}).read_text()) == {"x": None}
    page = Page("a <title>", tmp_path, doc)
    cells = [page.cell(["rows", 0, k]) for k in ("acc", "lr", "bad")]
    page.table(["run", "acc", "lr", "bad"], [[page.td("a", "l"), *cells]])
    page.add(page.img("missing.png", "plot"))
    html = write_page(tmp_path / "p.html", page).read_text()
    key = json.dumps(["rows", 0, "acc"]).replace('"', "&quot;")
    assert f'<td data-key="{key}">0.9123</td>' in html and ">0.0002</td>" in html and ">n/a</td>" in html
    assert "<title>a &lt;title&gt;</title>" in html and "(plot: no image)" in html
    assert fmt(None, missing="—") == "—" and fmt(3.14159, ".1f") == "3.1" and fmt(1234.5) == "1234.5"


# -- the training cost (issue 22) ---------------------------------------------------------------
def test_training_cost_section_ratio_and_headline(runs, report):
    rep, out = report
    data = json.loads((out / "report.json").read_text())
    model, base = data["models"]["model"]["cost"], data["models"]["baseline"]["cost"]
    assert rep.models["model"].cost == RunState.load(RunDir(runs / "jem").checkpoint("last")).cost
    # by hand: 12 steps of 32 examples, K=5 chains of 32 on every step; the baseline only the data;
    # each validated its (equal) validation set once
    v = model["passes"]["validation"]["forward"]
    assert v == base["passes"]["validation"]["forward"] > 0
    assert model["units"] == 3 * 32 * 12 + (3 + 2 * 5) * 32 * 12 + v
    assert base["units"] == 3 * 32 * 12 + v and base["passes"]["sgld"] == {"forward": 0, "input_backward": 0}
    assert model["total_units"] == model["units"] and model["complete"] and base["complete"]
    ratio = data["cost_ratio"]
    assert ratio["units"] == pytest.approx((3 * 32 * 12 + 13 * 32 * 12 + v) / (3 * 32 * 12 + v))
    assert ratio["cpu_s"] == pytest.approx(model["cpu_s"] / base["cpu_s"]) and ratio["why_not"] is None
    html = (out / "report.html").read_text()
    assert "<h2>Training cost</h2>" in html and "same machine with the same number of threads" in html
    key = json.dumps(["cost_ratio", "units"]).replace('"', "&quot;")
    assert f'data-key="{key}">{fmt(ratio["units"])}<' in html
    h = headline(rep, "model")
    assert h["cost"]["units"] == model["units"] and h["cost"]["ratio"]["units"] == pytest.approx(ratio["units"])
    assert "ratio" not in headline(rep, "baseline")["cost"]
    line = headline_text("jem", h).splitlines()[-1]
    assert line == (f"  cost: {model['units']:,} units, {model['cpu_s']:.1f} CPU s "
                    f"({ratio['units']:.2f} x baseline units, {ratio['cpu_s']:.2f} x its CPU s)")


def _cost_report(tmp_path, model, baseline):
    rep = EvaluationReport(title="t", created="now", models={
        "model": ModelReport(label="a", cost=model),
        "baseline": ModelReport(label="b", kind="classifier", cost=baseline),
    })
    files = write_report(rep, tmp_path)
    return rep, json.loads(files["json"].read_text()), files["html"].read_text()


def _cost(units_data, cpu, **kw):
    return Cost(passes={"data": {"forward": units_data, "backward": units_data}}, cpu_s=cpu, wall_s=cpu, **kw)


def test_cost_not_recorded_partial_init_and_other_device(tmp_path):
    # no cost for the baseline: "not recorded", no ratio
    rep, doc, html = _cost_report(tmp_path / "a", _cost(10, 2.0), None)
    assert doc["models"]["baseline"]["cost"] is None and doc["cost_ratio"]["units"] is None
    assert "not recorded" in html and "baseline&#x27;s cost is not recorded" in html
    assert headline_text("b", headline(rep, "baseline")).endswith("cost: not recorded")
    # a model resumed from a pre-cost checkpoint: flagged, no ratio
    rep, doc, html = _cost_report(tmp_path / "b", _cost(10, 2.0, since_step=7), _cost(5, 1.0))
    assert doc["cost_ratio"]["units"] is None and "partial" in html and "from step 7 on" in html
    assert "ratio" not in headline(rep, "model")["cost"]
    # started from another run: totals include it (3 * 10 + 3 * 20 units), stated; the ratio on totals
    rep, doc, html = _cost_report(tmp_path / "c", _cost(10, 2.0, init=_cost(20, 4.0)), _cost(15, 3.0))
    assert doc["models"]["model"]["cost"]["total_units"] == 90 and doc["models"]["model"]["cost"]["units"] == 30
    assert doc["cost_ratio"]["units"] == pytest.approx(90 / 45) and doc["cost_ratio"]["cpu_s"] == pytest.approx(2.0)
    assert "total units, this run and the run it started from" in html
    assert "with the run it started from" in headline_text("a", headline(rep, "model"))
    # a CUDA run against a CPU run: the units compare, the CPU seconds do not
    _, doc, html = _cost_report(tmp_path / "d", _cost(10, 2.0, device_s=1.0), _cost(5, 1.0))
    assert doc["cost_ratio"]["units"] == pytest.approx(2.0) and doc["cost_ratio"]["cpu_s"] is None
    assert "No ratio of CPU seconds" in html
