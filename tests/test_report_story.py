"""The report tells the whole story (issue 20): a side study (the demo's held-out classes) inside
the same page, figures that do not apply to a plain classifier marked so, the FID with its spread
and the KID with a real-data reference, one robustness plot, labelled grid rows, retry labels
that do not overprint."""

from __future__ import annotations

import json
import re

import pytest
import torch
from matplotlib.image import imread

from conftest import tiny_config
from torchjem.evaluate.generation import fid_bootstrap_std, frechet_distance
from torchjem.report import SideReport, write_report
from torchjem.report.page import fmt, get_path
from torchjem.report.plots import _retry_labels, plot_class_grid, plot_curves, save_samples
from torchjem.training import train
from torchjem.workflows.eval import evaluate_run
from torchjem.workflows.inputs import default_feature_net

ATTACK = {"norm": "linf", "eps": [0.0, 0.1], "n": 20, "curves": {"JEM-0": [0.9, 0.4], "baseline": [0.95, 0.3]},
          "png": "attack/robust_accuracy.png"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A tiny JEM and its baseline on digits 0-4, evaluated; the same runs scored on digits 5-9 as a
    side study; one report with both."""
    root = tmp_path_factory.mktemp("story")
    extra = ["data.classes=[0,1,2,3,4]", "train.max_steps=8"]
    jem = train(tiny_config(*extra), progress=False, out=root / "jem")
    train(tiny_config(*extra, "train.clf_only=true"), data=jem.data, progress=False, out=root / "base")
    default_feature_net(jem.data, root / "jem" / "feature_net", epochs=1)
    (root / "jem" / "attack").mkdir()
    (root / "jem" / "attack" / "attack.json").write_text(json.dumps(ATTACK))
    plot_curves(ATTACK["curves"], ATTACK["eps"], "linf", root / "jem" / ATTACK["png"])
    common = {"baseline": root / "base", "limit": 30, "progress": False, "write": False}
    main = evaluate_run(root / "jem", ood=["uniform"], per_class=2, **common)
    side = evaluate_run(root / "jem", ood=["held_out"], generate=False, **common)
    main.side["held_out"] = SideReport(title="Held-out classes", note="side <b>runs</b>", report=side)
    out = root / "report"
    files = write_report(main, out)
    return main, out, (out / "report.html").read_text(), json.loads((out / "report.json").read_text()), files


def _cells(html: str) -> list[tuple[list, str]]:
    """(JSON path, printed text) of every keyed cell."""
    out = []
    for attrs, text in re.findall(r"<td([^>]*)>([^<]*)</td>", html):
        m = re.search(r'data-key="([^"]*)"', attrs)
        if m:
            out.append((json.loads(m.group(1).replace("&quot;", '"')), text))
    return out


def test_a_side_study_is_a_section_of_the_same_page_printed_from_report_json(written):
    main, out, html, doc, files = written
    assert "<h2>Held-out classes</h2>" in html and "side <b>runs</b>" in html
    side_cells = [(p, t) for p, t in _cells(html) if p[:2] == ["side", "held_out"]]
    assert len(side_cells) > 10
    for path, text in side_cells:  # every side figure is report.json's, at the path the cell names
        assert fmt(get_path(doc, path)) == text, path
    auroc = doc["side"]["held_out"]["models"]["model"]["ood"]["sets"]["held_out"]["px"]["auroc"]
    side = main.side["held_out"].report.models["model"].evaluation.ood.sets["held_out"]["px"]["auroc"]
    assert auroc == pytest.approx(side) and 0 <= auroc <= 1
    # in the summary too, beside the main models' rows
    summary = html[html.index("<h2>Summary</h2>") : html.index("<h2>Classification</h2>")]
    assert "held_out, px (side runs: Held-out classes, below)" in summary and fmt(auroc) in summary
    # its plots under their own names, embedded; the main models' keep theirs
    assert (out / "held_out_model_ood_histograms.png").is_file() and (out / "model_ood_histograms.png").is_file()
    assert files["held_out_model_ood_histograms"] == out / "held_out_model_ood_histograms.png"
    assert "OOD score histograms (model)" in html.split("<h2>Held-out classes</h2>")[1]


def test_a_plain_classifiers_conditional_accuracy_is_marked_not_applicable(written):
    _, _, html, doc, _ = written
    base = doc["models"]["baseline"]["generation"]["conditional_accuracy"]
    assert isinstance(base, float)  # report.json keeps the number ...
    keyed = {json.dumps(p) for p, _ in _cells(html)}
    assert json.dumps(["models", "baseline", "generation", "conditional_accuracy"]) not in keyed  # ... the page not
    assert json.dumps(["models", "model", "generation", "conditional_accuracy"]) in keyed
    assert html.count("<td class=na") == 2  # the summary's row and the generation table's
    assert "(classifier)</small>: not applicable" in html


def test_fid_has_its_spread_and_kid_a_real_reference_on_the_page(written):
    _, _, html, doc, _ = written
    gen = doc["models"]["model"]["generation"]
    assert gen["fid_std"] > 0 and gen["fid_resamples"] == 10
    assert gen["kid_real_reference"] is not None
    keyed = dict((json.dumps(p), t) for p, t in _cells(html))
    for key in ("fid_std", "kid_real_reference"):
        assert keyed[json.dumps(["models", "model", "generation", key])] == fmt(gen[key])
    assert "FID spread" in html and "(x·y/d + 1)<sup>3</sup>" in html


def test_one_robustness_plot_and_the_histograms_full_width(written):
    _, _, html, _, _ = written
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', html)
    assert sum(a.startswith("robust accuracy") for a in alts) == 1
    hist = re.findall(r'<img ([^>]*alt="OOD score histograms[^"]*")', html)
    assert len(hist) == 4 and all('class="wide"' in h for h in hist)  # main and side, two models each


def test_fid_spread_shrinks_with_the_sample_size_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4000, 8, generator=g), torch.randn(4000, 8, generator=g) + 0.3
    small = fid_bootstrap_std(real[:100], fake[:100])
    large = fid_bootstrap_std(real, fake)
    assert small == fid_bootstrap_std(real[:100], fake[:100])
    assert 0 < large < small / 3  # about 1/sqrt(40) of the small sets' spread
    assert large < frechet_distance(real, fake)


def test_class_grid_rows_are_labelled_and_retry_labels_never_overprint(tmp_path):
    x = torch.rand(30, 1, 8, 8) * 2 - 1
    plain = imread(save_samples(x, tmp_path / "plain.png", nrow=3))
    labelled = imread(plot_class_grid(x, 3, tmp_path / "grid.png"))
    assert labelled.shape[1] > plain.shape[1] + 20  # the class labels' margin on the left
    events = [{"at_step": s, "retry": i} for i, s in enumerate((200, 205, 212, 700), 1)]
    assert _retry_labels(events, (0, 1000)) == [(200, "#1-3"), (700, "#4")]
    assert _retry_labels(events, (0, 100)) == [(200, "#1"), (205, "#2"), (212, "#3"), (700, "#4")]
