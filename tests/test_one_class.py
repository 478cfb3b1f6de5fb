"""One-class runs work end to end (issue 19, item 5): an energy model of one digit trains, and
eval, sample and attack run on it; the classification and calibration sections say why they are
skipped, and the held-out digits are scored as OOD, all of them."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config
from torchjem import Trainer
from torchjem.cli import main
from torchjem.data import load_data


@pytest.fixture(scope="module")
def one_class(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    Trainer(tiny_config("train.max_steps=2", "data.classes=[0]"), progress=False, out=out).fit()
    return out


def test_a_one_class_run_evaluates_with_held_out_digits_as_ood(one_class, tmp_path, capsys):
    assert main(["eval", str(one_class), "--ood", "held_out", "uniform", "--no-generation", "--out",
                 str(tmp_path / "r"), "--quiet"]) == 0
    assert "one class: no accuracy" in capsys.readouterr().out
    m = json.loads((tmp_path / "r" / "report.json").read_text())["models"]["model"]
    assert "classification" not in m and "calibration" not in m
    assert set(m["skipped"]) == {"classification", "calibration"} and "one class" in m["skipped"]["calibration"]
    digits = load_data("digits")
    assert m["ood"]["sets"]["held_out"]["n"] == int((digits.y_test != 0).sum())  # every other digit, whole
    assert m["ood"]["n_in"] == int((digits.y_test == 0).sum())
    assert 0 <= m["ood"]["sets"]["held_out"]["px"]["auroc"] <= 1
    html = (tmp_path / "r" / "report.html").read_text()
    assert "no classification: one class" in html and "no calibration: one class" in html


def test_a_one_class_run_samples_and_is_attacked(one_class, tmp_path):
    assert main(["sample", str(one_class), "--n", "4", "--per-class", "2", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    assert main(["attack", str(one_class), "--limit", "4", "--refine-steps", "0", "--eps", "0", "0.1", "--steps",
                 "2", "--out", str(tmp_path / "a"), "--quiet"]) == 0
