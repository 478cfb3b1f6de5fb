"""The sweep report (torchjem.sweep_report): expected values are derived by hand from small,
hand-made trial records, and means are recomputed here with numpy."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import replace

import numpy as np
import pytest

from torchjem.errors import InputError
from torchjem.sweep_report import (
    TrialRecord,
    best_setting,
    cheapest_within,
    pareto_front,
    plot_heatmaps,
    stable_region,
    summarize,
    write_sweep_report,
)

LR, STEP = [1e-3, 3e-3, 1e-2], [0.3, 1.0, 3.0]
KEYS = ["optim.lr", "sgld.step_size"]
PNG = b"\x89PNG\r\n\x1a\n"


def record(run, params, seed, diverged, val=None, recoveries=0, number=0, cause=None):
    return TrialRecord(
        run=run,
        number=number,
        params=params,
        seed=seed,
        status="diverged" if diverged else "done",
        diverged=diverged,
        recoveries=recoveries,
        first_trouble_step=40 if (diverged or recoveries) else None,
        cause=(cause or "loss is NaN after 3 recoveries") if diverged else None,
        steps=40 if diverged else 100,
        val_acc=None if diverged else val,
        test_acc=None if diverged else (None if val is None else val - 0.01),
        ece=None if diverged else 0.05 + seed / 100,
        nll=None if diverged else 0.3 + seed / 10,
        energy_gap=None if diverged else 1.5,
        seconds=10.0 + seed,
    )


def grid() -> list[TrialRecord]:
    """3x3 x 2 seeds. Diverged: every trial at step_size 3 or lr 1e-2, except seed 0 of (1e-2, 0.3)
    (so that setting has one diverged seed of two). Seed 0 of (3e-3, 1) recovered once.
    val acc = 0.9 + 0.01 i_lr + 0.001 i_step + 0.0001 seed."""
    out = []
    for i, lr in enumerate(LR):
        for j, step in enumerate(STEP):
            for seed in (0, 1):
                diverged = step == 3.0 or (lr == 1e-2 and not (step == 0.3 and seed == 0))
                out.append(
                    record(
                        f"p{3 * i + j:03d}-s{seed}",
                        {"optim.lr": lr, "sgld.step_size": step},
                        seed,
                        diverged,
                        val=0.9 + 0.01 * i + 0.001 * j + 0.0001 * seed,
                        recoveries=1 if (lr, step, seed) == (3e-3, 1.0, 0) else 0,
                        number=len(out),
                    )
                )
    return out


def test_stable_region_of_the_grid_is_the_hand_derived_box():
    region = stable_region(grid(), KEYS)
    # settings without a diverged seed: lr in {1e-3, 3e-3} x step in {0.3, 1} (4 settings, 8 trials);
    # outside: 10 trials, 9 diverged ((1e-2, 0.3) seed 0 survived)
    assert region["text"] == "optim.lr <= 0.003 with sgld.step_size <= 1: 0/8 diverged (outside it: 9/10)"
    assert region["bounds"] == {"optim.lr": (1e-3, 3e-3), "sgld.step_size": (0.3, 1.0)}
    assert region["where"] == {"optim.lr": "<= 0.003", "sgld.step_size": "<= 1"}
    assert (region["n"], region["settings"], region["diverged"], region["troubled"]) == (8, 4, 0, 1)
    assert region["outside"] == {"n": 10, "diverged": 9, "troubled": 9}
    vals = [0.9 + 0.01 * i + 0.001 * j + 0.0001 * s for i in (0, 1) for j in (0, 1) for s in (0, 1)]
    assert region["val_acc_mean"] == pytest.approx(np.mean(vals))


def test_without_recovery_the_run_that_recovered_counts_as_diverged():
    region = stable_region(grid(), KEYS, without_recovery=True)
    # (3e-3, 1) is now out; two boxes of 2 settings / 4 trials remain: lr 1e-3 x step {0.3, 1}
    # (mean val 0.90055) and lr {1e-3, 3e-3} x step 0.3 (mean val 0.90505): the second wins
    assert region["text"] == (
        "optim.lr <= 0.003 with sgld.step_size <= 0.3: 0/4 would have diverged without recovery (outside it: 10/14)"
    )
    assert region["bounds"] == {"optim.lr": (1e-3, 3e-3), "sgld.step_size": (0.3, 0.3)}
    assert (region["n"], region["settings"], region["troubled"]) == (4, 2, 0)
    assert region["val_acc_mean"] == pytest.approx(np.mean([0.9, 0.9001, 0.91, 0.9101]))
    # without any recovery the two variants agree
    calm = [replace(r, recoveries=0) for r in grid()]
    with_r, without_r = stable_region(calm, KEYS), stable_region(calm, KEYS, without_recovery=True)
    assert with_r["bounds"] == without_r["bounds"] and with_r["n"] == without_r["n"] == 8


def test_summarize_matches_numpy_over_the_non_diverged_seeds():
    records = grid()
    rows = summarize(records, KEYS)
    assert [tuple(r["params"].values()) for r in rows] == [(lr, s) for lr in LR for s in STEP]
    for row in rows:
        mine = [r for r in records if r.params == row["params"]]
        ok = [r for r in mine if not r.diverged]
        assert row["n"] == 2 and row["seeds"] == [0, 1]
        assert row["diverged"] == 2 - len(ok) and row["divergence_rate"] == (2 - len(ok)) / 2
        assert row["seconds_mean"] == pytest.approx(10.5)
        if not ok:
            assert row["val_acc_mean"] is None and row["test_acc_mean"] is None and row["ece_mean"] is None
            continue
        for m in ("val_acc", "test_acc"):
            v = np.array([getattr(r, m) for r in ok])
            assert row[f"{m}_mean"] == pytest.approx(v.mean())
            assert row[f"{m}_std"] == (pytest.approx(v.std(ddof=1)) if len(v) > 1 else None)
        assert row["ece_mean"] == pytest.approx(np.mean([r.ece for r in ok]))
        assert row["nll_mean"] == pytest.approx(np.mean([r.nll for r in ok]))
    by = {tuple(r["params"].values()): r for r in rows}
    assert (by[(1e-2, 0.3)]["diverged"], by[(1e-2, 0.3)]["troubled"]) == (1, 1)
    assert by[(1e-2, 0.3)]["val_acc_mean"] == pytest.approx(0.92) and by[(1e-2, 0.3)]["val_acc_std"] is None
    assert (by[(3e-3, 1.0)]["diverged"], by[(3e-3, 1.0)]["troubled"], by[(3e-3, 1.0)]["recoveries"]) == (0, 1, 1)
    assert by[(1e-3, 3.0)]["troubled"] == 2


def test_best_setting_skips_settings_with_a_diverged_seed():
    best = best_setting(grid(), KEYS)
    # (1e-2, 0.3) has the best surviving seed (0.92) but one diverged seed; among the clean four
    # settings (3e-3, 1) is highest: (0.911 + 0.9111) / 2
    assert best["params"] == {"optim.lr": 3e-3, "sgld.step_size": 1.0}
    assert best["val_acc_mean"] == pytest.approx(0.91105) and best["test_acc_mean"] == pytest.approx(0.90105)
    assert best["n"] == 2 and best["troubled"] == 1
    assert best["text"].startswith("optim.lr = 0.003, sgld.step_size = 1: val acc 0.9111")
    everything_diverged = [replace(r, diverged=True, status="diverged", val_acc=None) for r in grid()]
    assert best_setting(everything_diverged, KEYS) is None


@pytest.mark.parametrize(
    "sgd_ok, text, bounds",
    [
        # sgd diverges only at 1e-2: lr <= 3e-3 for both optimisers (4 settings) beats adam alone (3)
        (
            {1e-3, 3e-3},
            "optim.lr <= 0.003 with any optim.name: 0/4 diverged (outside it: 1/2)",
            {"optim.name": ["adam", "sgd"], "optim.lr": (1e-3, 3e-3)},
        ),
        # sgd survives only at 1e-3: adam at any lr (3 settings) beats lr 1e-3 for both (2)
        (
            {1e-3},
            "optim.name = adam with any optim.lr: 0/3 diverged (outside it: 2/3)",
            {"optim.name": ["adam"], "optim.lr": (1e-3, 1e-2)},
        ),
    ],
)
def test_a_categorical_key_is_one_value_or_all(sgd_ok, text, bounds):
    records = [
        record(f"{name}-{lr:g}", {"optim.name": name, "optim.lr": lr}, 0, name == "sgd" and lr not in sgd_ok, 0.9)
        for name in ("sgd", "adam")
        for lr in LR
    ]
    region = stable_region(records, ["optim.name", "optim.lr"])
    assert region["text"] == text and region["bounds"] == bounds


def test_wording_when_no_trial_or_every_setting_diverged():
    calm = [replace(r, diverged=False, status="done", recoveries=0, val_acc=0.9) for r in grid()]
    region = stable_region(calm, KEYS)
    assert region["text"] == "no trial diverged: 0/18"
    assert region["bounds"] == {"optim.lr": (1e-3, 1e-2), "sgld.step_size": (0.3, 3.0)} and region["n"] == 18
    assert stable_region(calm, KEYS, without_recovery=True)["text"] == (
        "no trial needed a recovery: 0/18 would have diverged without recovery"
    )
    # one diverged seed in every setting: no region at all
    bad = [replace(r, diverged=r.seed == 1, status="diverged" if r.seed == 1 else "done") for r in calm]
    region = stable_region(bad, KEYS)
    assert region["bounds"] is None and region["n"] == 0
    assert region["text"] == "every setting diverged (at least one seed each): 9/18 trials diverged"
    # nothing diverged, but a recovery in every setting
    shaky = [replace(r, recoveries=1 if r.seed == 0 else 0) for r in calm]
    assert stable_region(shaky, KEYS)["text"] == "no trial diverged: 0/18"
    assert stable_region(shaky, KEYS, without_recovery=True)["text"] == (
        "every setting needed a recovery or diverged (at least one seed each): "
        "9/18 trials would have diverged without recovery"
    )


@pytest.mark.parametrize(
    "bad_lrs, words",
    [({1e-1}, "<= 0.01"), ({1e-4}, ">= 0.001"), ({1e-4, 1e-1}, "in 0.001..0.01"), ({1e-4, 1e-2, 1e-1}, "= 0.001")],
)
def test_a_single_swept_key(bad_lrs, words):
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    records = [
        record(f"lr{i}-s{s}", {"optim.lr": lr}, s, lr in bad_lrs, 0.9) for i, lr in enumerate(lrs) for s in (0, 1)
    ]
    region = stable_region(records, ["optim.lr"])
    n_ok = 2 * (4 - len(bad_lrs))
    assert region["text"] == f"optim.lr {words}: 0/{n_ok} diverged (outside it: {8 - n_ok}/{8 - n_ok})"


def test_a_single_key_gets_one_strip(tmp_path):
    records = [record(f"lr{i}", {"optim.lr": lr}, 0, lr == 1e-1, 0.9) for i, lr in enumerate([1e-3, 1e-2, 1e-1])]
    paths = plot_heatmaps(records, ["optim.lr"], tmp_path)
    assert [p.name for p in paths] == ["heatmap_optim_lr.png"] and paths[0].read_bytes()[:8] == PNG
    assert list(tmp_path.iterdir()) == paths  # no temporary file left behind


def random_search(n=30, seed=0) -> list[TrialRecord]:
    """Log-uniform lr over [1e-4, 1e-1], uniform step over [0.6, 1.9] with the extremes 0.5 and
    2.0 placed at a small lr; diverged exactly when lr > 0.02."""
    rng = np.random.default_rng(seed)
    lrs = 10 ** rng.uniform(-4, -1, n)
    steps = rng.uniform(0.6, 1.9, n)
    lrs[:2], steps[:2] = 2e-4, (0.5, 2.0)
    return [
        record(f"t{k:03d}", {"optim.lr": float(lr), "sgld.step_size": float(st)}, 0, lr > 0.02, 0.9 + lr, number=k)
        for k, (lr, st) in enumerate(zip(lrs, steps))
    ]


def test_random_search_keys_are_binned_and_the_region_stops_at_the_first_divergence(tmp_path):
    records = random_search()
    lrs = np.array([r.params["optim.lr"] for r in records])
    ok = lrs[lrs <= 0.02]
    assert 0 < len(ok) < 30
    # divergence depends on lr only: every trial with lr <= 0.02, at any step size
    region = stable_region(records, KEYS)
    n_bad = 30 - len(ok)
    assert region["text"] == f"optim.lr <= {ok.max():g} with any sgld.step_size: 0/{len(ok)} diverged " + (
        f"(outside it: {n_bad}/{n_bad})"
    )
    assert region["bounds"]["optim.lr"] == (lrs.min(), ok.max())
    paths = write_sweep_report(records, KEYS, tmp_path, title="random search")
    assert sorted(paths) == ["html", "json", "png_optim_lr__sgld_step_size"]
    axes = json.loads(paths["json"].read_text())["axes"]
    # 30 lr values spanning 1e-4..1e-1 (> 10x): 5 log-spaced bins; step 0.5..2 (4x): 5 linear bins
    edges = np.geomspace(lrs.min(), lrs.max(), 6)
    assert axes["optim.lr"]["binned"] and axes["optim.lr"]["edges"] == pytest.approx(edges)
    assert axes["optim.lr"]["labels"] == [f"{a:.2g}–{b:.2g}" for a, b in zip(edges, edges[1:])]
    assert axes["sgld.step_size"]["labels"] == ["0.5–0.8", "0.8–1.1", "1.1–1.4", "1.4–1.7", "1.7–2"]
    # a grid key with 3 values is not binned
    assert json.loads(write_sweep_report(grid(), KEYS, tmp_path / "g", title="g")["json"].read_text())["axes"][
        "optim.lr"
    ] == {"values": LR, "labels": ["0.001", "0.003", "0.01"], "binned": False, "edges": None}


def test_html_embeds_the_images_lists_every_trial_and_escapes(tmp_path):
    records = grid()
    records[-1] = replace(records[-1], cause="<script>alert(1)</script> & NaN")
    notes = ["budget: 100 steps per trial <small>"]
    paths = write_sweep_report(records, KEYS, tmp_path, title="lr x step <sweep>", notes=notes)
    page = paths["html"].read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 and base64.b64decode(images[0])[:8] == PNG
    assert paths["png_optim_lr__sgld_step_size"].read_bytes() == base64.b64decode(images[0])
    for r in records:
        assert f">{r.run}<" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; NaN" in page
    assert "lr x step &lt;sweep&gt;" in page and "budget: 100 steps per trial &lt;small&gt;" in page
    assert html.escape(stable_region(records, KEYS)["text"]) in page
    assert html.escape(stable_region(records, KEYS, without_recovery=True)["text"]) in page
    assert html.escape(best_setting(records, KEYS)["text"]) in page
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "heatmap_optim_lr__sgld_step_size.png",
        "sweep.html",
        "sweep.json",
    ]


def test_sweep_json_round_trips(tmp_path):
    records = grid()
    doc = json.loads(write_sweep_report(records, KEYS, tmp_path, title="t", notes=["n"])["json"].read_text())
    assert doc["records"] == [r.to_dict() for r in records]
    assert [TrialRecord.from_dict(r) for r in doc["records"]] == records
    assert doc["summary"] == summarize(records, KEYS)
    plain = json.loads(json.dumps(stable_region(records, KEYS)))  # the bounds' tuples become lists
    assert doc["stable_region"]["with_recovery"] == plain
    assert doc["stable_region"]["without_recovery"] == json.loads(
        json.dumps(stable_region(records, KEYS, without_recovery=True))
    )
    assert doc["best"] == best_setting(records, KEYS)
    assert (doc["title"], doc["notes"], doc["keys"], doc["n_trials"]) == ("t", ["n"], KEYS, 18)
    assert doc["heatmaps"] == ["heatmap_optim_lr__sgld_step_size.png"]


@pytest.mark.slow
def test_three_keys_give_one_png_per_pair(tmp_path):
    records = [
        replace(r, params={**r.params, "optim.name": name}, run=f"{r.run}-{name}")
        for r in grid()
        for name in ("adam", "sgd")
    ]
    paths = plot_heatmaps(records, [*KEYS, "optim.name"], tmp_path)
    assert [p.name for p in paths] == [
        "heatmap_optim_lr__sgld_step_size.png",
        "heatmap_optim_lr__optim_name.png",
        "heatmap_sgld_step_size__optim_name.png",
    ]
    # the name never matters: the same box as the 2-key grid, any optim.name
    assert stable_region(records, [*KEYS, "optim.name"])["text"] == (
        "optim.lr <= 0.003 with sgld.step_size <= 1 with any optim.name: 0/16 diverged (outside it: 18/20)"
    )


def test_bad_input_is_a_user_error():
    with pytest.raises(InputError, match="lack the swept keys"):
        summarize(grid(), ["optim.lr", "optim.wd"])
    with pytest.raises(InputError, match="distinct"):
        stable_region(grid(), ["optim.lr", "optim.lr"])
    with pytest.raises(InputError):
        best_setting(grid(), [])


# RUN_DIR/trial.json as written before TrialRecord existed (keys in that code's order), and the same
# trial in the study's user attributes (with the Optuna number and the setting's index)
TRIAL_JSON = """{"run": "p001-s2", "params": {"optim.lr": 0.003, "sgld.step_size": 1.0}, "seed": 2, "recoveries": 1,
 "first_trouble_step": 17, "cause": null, "energy_gap": 0.25, "diverged": false, "status": "done", "steps": 60,
 "resumed": true, "val_acc": 0.9, "test_acc": 0.875, "ece": 0.03, "nll": 0.4, "seconds": 12.5, "best_val_acc": 0.92}"""


def test_a_record_written_before_the_type_reads_back_in_the_same_json_shape():
    saved = json.loads(TRIAL_JSON)
    rec = TrialRecord.from_dict(saved)
    assert (rec.run, rec.seed, rec.recoveries, rec.first_trouble_step, rec.resumed) == ("p001-s2", 2, 1, 17, True)
    assert (rec.val_acc, rec.best_val_acc, rec.number, rec.point) == (0.9, 0.92, None, None)
    assert rec.troubled and not rec.diverged
    assert rec.to_dict() == saved  # trial.json keeps its keys: no number or point before the study has them
    in_study = {**saved, "number": 7, "point": 1}
    assert TrialRecord.from_dict(in_study).to_dict() == in_study
    # older records: no best_val_acc, a status without the flag; keys this type does not know are ignored
    old = TrialRecord.from_dict({"run": "x", "params": {}, "status": "diverged", "recoveries": None, "later": 1})
    assert old.diverged and old.recoveries == 0 and old.best_val_acc is None
    for bad in ({"params": {}}, {"run": "x"}, {"run": "x", "params": [1]}, "p000-s1"):
        with pytest.raises(InputError, match="trial record"):
            TrialRecord.from_dict(bad)
    with pytest.raises(InputError, match="expected a TrialRecord"):
        summarize([saved], ["optim.lr"])


def test_every_figure_on_the_page_is_printed_from_sweep_json_at_the_path_its_cell_names(tmp_path):
    paths = write_sweep_report(grid(), KEYS, tmp_path, title="t")
    doc, page = json.loads(paths["json"].read_text()), paths["html"].read_text()
    found = re.findall(r'<td data-key="([^"]+)">([^<]*)</td>', page)
    cells = [(json.loads(html.unescape(k)), text) for k, text in found]
    assert len(cells) == 9 * 5 + 18 * 11  # per setting: n, recoveries, ECE, NLL, seconds; per trial: 11 figures
    for path, text in cells:
        value = doc
        for p in path:
            value = value[p]
        assert (text == "n/a") == (value is None), (path, text)
        if value is not None:
            assert float(text) == pytest.approx(value, rel=1e-3, abs=5e-5), (path, text)


# -- cost against figures (issue 22) ------------------------------------------------------------
def costed(run, units, test_acc, ece, *, diverged=False, val=None):
    return TrialRecord(run=run, params={"optim.lr": units / 1e6}, seed=1, diverged=diverged,
                       status="diverged" if diverged else "done", val_acc=val, test_acc=None if diverged else test_acc,
                       ece=None if diverged else ece, cost_units=units, cpu_s=units / 100, wall_s=units / 50)


COSTED = [  # by hand: best accuracy 0.950 at 1000 units; 0.948 at 300 is within 0.003 of it, 0.946 is not
    costed("a", 1000, 0.950, 0.050),
    costed("b", 300, 0.948, 0.052),
    costed("c", 100, 0.946, 0.060),
    costed("d", 50, 0.930, 0.040),  # the best (lowest) ECE, and the cheapest trial
    costed("e", 10, None, None, diverged=True),  # diverged: left out although cheapest
    replace(costed("f", 20, 0.999, 0.001), cost_units=None, cpu_s=None, wall_s=None),  # no cost recorded: left out
]


def test_pareto_front_by_hand():
    pts = [(1, 0.90), (2, 0.95), (3, 0.93), (4, 0.97), (4, 0.96)]
    assert pareto_front(pts) == [0, 1, 3]  # (3, .93) is beaten by (2, .95), (4, .96) by (4, .97)
    assert pareto_front([(1, 0.05), (2, 0.03), (3, 0.04), (3, 0.03)], higher_better=False) == [0, 1]
    assert pareto_front([(1, 0.5), (1, 0.5)]) == [0, 1]  # equal points are both on it


def test_cheapest_trial_within_the_tolerance_by_hand():
    rows = {r["metric"]: r for r in cheapest_within(COSTED)}
    assert set(rows) == {"test_acc", "ece"}  # no trial has a validation accuracy here
    acc = rows["test_acc"]
    assert (acc["best_run"], acc["run"], acc["units"], acc["value"]) == ("a", "b", 300, 0.948)
    assert acc["target"] == pytest.approx(0.947) and acc["saving"] == pytest.approx(1000 / 300)
    assert acc["params"] == {"optim.lr": 300 / 1e6} and acc["cpu_s"] == 3.0
    ece = rows["ece"]  # lower is better: the best is d's 0.040, target 0.043: d itself is the cheapest
    assert (ece["best_run"], ece["run"], ece["saving"]) == ("d", "d", 1.0) and ece["target"] == pytest.approx(0.043)
    assert cheapest_within(COSTED, tolerance=0.005)[0]["run"] == "c"  # 0.946 >= 0.945


def test_cost_plot_and_table_in_the_report_and_old_records_without_cost(tmp_path):
    paths = write_sweep_report(COSTED, ["optim.lr"], tmp_path / "new")
    assert paths["png_cost"].read_bytes()[:8] == PNG
    doc, page = json.loads(paths["json"].read_text()), paths["html"].read_text()
    assert doc["cost"]["png"] == paths["png_cost"].name and doc["cost"]["why_not"] is None
    assert doc["cost"]["cheapest"] == json.loads(json.dumps(cheapest_within(COSTED)))
    assert "1 of 5 trials that did not diverge have no recorded cost" in doc["cost"]["left_out"]
    assert "<h2>Cost</h2>" in page and "cheapest trial reaching it" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2  # the heat map strip and the cost plot
    assert [r["cost_units"] for r in doc["records"][:4]] == [1000, 300, 100, 50]
    assert "cost_units" not in doc["records"][5]  # a record without a cost keeps its old JSON shape
    assert TrialRecord.from_dict(COSTED[0].to_dict()) == COSTED[0]
    # records written before costs were recorded: no plot, a line saying why
    paths = write_sweep_report(grid(), KEYS, tmp_path / "old")
    doc = json.loads(paths["json"].read_text())
    assert "png_cost" not in paths and doc["cost"]["png"] is None and doc["cost"]["cheapest"] == []
    assert "before costs were recorded" in doc["cost"]["why_not"]
    assert "No cost plot: no trial that did not diverge has a recorded cost" in paths["html"].read_text()
