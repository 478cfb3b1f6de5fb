"""The demo: a JEM and its plain-classifier baseline on digits, evaluated side by side."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..config import CONFIG_DIR, load_config, merge
from ..evaluate.classification import classification
from ..evaluate.robustness import PGDSettings, eps_key
from ..report import SideReport, write_report
from ..rundir.layout import ATTACK_PNG
from ..training import train
from .attack import AttackOptions, attack_run
from .eval import evaluate_run, headline

log = logging.getLogger("torchjem")
RECIPE = CONFIG_DIR / "digits_demo.yaml"
# --quick: a smoke test of the whole pipeline, not the real figures.
QUICK = {"train": {"epochs": 2}, "sgld": {"steps": 5}, "buffer": {"size": 200}}
# The demo folder (not a run directory): its runs, its reports and its summary, written last.
SUMMARY = "summary.json"
REPORT, HELD_OUT = "report", "held_out"
LEGACY = (ATTACK_PNG,)  # the curves' plot, written into the demo folder itself by earlier versions
HELD_OUT_NOTE = (
    "The models above saw all ten digits. To ask whether log p(x) flags classes a model never saw, two "
    "smaller runs of the same recipe (a JEM and its baseline, fewer epochs) train on digits 0-4 only; here they "
    "are scored with digits 5-9 of the test split as the OOD set (runs in <code>held_out/</code>)."
)
# the attack suite the demo runs, on its first N attacked digits: the quick suite on a few digits keeps the demo
# at a few minutes; `jem attack --suite standard` measures the full one (docs/robustness.md)
SUITE_DEMO, SUITE_LIMIT = "quick", 25


def demo_attack(quick: bool = False, device: str = "auto", progress: bool = True) -> AttackOptions:
    """The demo's robustness check (docs/robustness.md): L-inf PGD at eps 0 to 0.3 against JEM-0,
    JEM-3 (2 chains, JEM-0's adversarials transferred) and the baseline, 20 steps on 100 test
    digits (10 steps on 50 with ``quick``), no distal adversarials; then the attack suite
    (``SUITE_DEMO``: APGD-CE, targeted APGD-DLR, Square) and its gradient-masking checks on the first
    ``SUITE_LIMIT`` of them (10 with ``quick``)."""
    return AttackOptions(
        pgd=PGDSettings(norm="linf", steps=10 if quick else 20), eps=[0.0, 0.05, 0.1, 0.2, 0.3], refine_steps=[0, 3],
        n_chains=2, limit=50 if quick else 100, distal=0, device=device, progress=progress,
        suite=SUITE_DEMO, suite_limit=10 if quick else SUITE_LIMIT,
    )


def clear_outputs(out: Path) -> None:
    """Remove the outputs of an earlier demo in ``out`` that are not run directories (those are
    overwritten by their training): the summary first, then the reports, so that a demo that fails
    part way leaves no summary beside reports it did not write."""
    (out / SUMMARY).unlink(missing_ok=True)
    for folder in (out / REPORT, out / HELD_OUT / REPORT):
        shutil.rmtree(folder, ignore_errors=True)
    for name in LEGACY:
        (out / name).unlink(missing_ok=True)


def run_demo(
    out: str | Path = "runs/demo",
    device: str = "auto",
    seed: int | None = None,
    *,
    quick: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, attack, evaluate and compare; writes ``out/summary.json`` last (atomically) and
    returns it. Re-running into the same ``out`` replaces every output of the earlier run.

    Args:
        out: the demo folder: runs jem/, baseline/, held_out/{jem,baseline}/, report/, summary.json.
        device: where to train and evaluate (auto, cpu, cuda, ...).
        seed: the runs' seed (default the recipe's); the attack and the evaluations use the runs' seed.
        quick: a smoke test of the whole pipeline (fewer epochs, steps and examples), not the figures.
        progress: show progress bars.
    """
    t0 = time.perf_counter()
    out = Path(out)
    clear_outputs(out)
    common = merge({"device": device, **({"seed": seed} if seed is not None else {})}, QUICK if quick else {})
    clf_only = {"train": {"clf_only": True}}
    jem_cfg = load_config(RECIPE, common)
    base_cfg = load_config(RECIPE, merge(common, clf_only))
    log.info("demo 1/2: training the JEM")
    jem = train(jem_cfg, progress=progress, out=out / "jem", overwrite=True)
    log.info("demo 2/2: training the baseline classifier (same net, data and schedule)")
    base = train(base_cfg, data=jem.data, progress=progress, out=out / "baseline", overwrite=True)
    data = jem.data

    summary: dict[str, Any] = {"data": data.name, "quick": quick}
    for name, tr in (("jem", jem), ("baseline", base)):
        res = classification(tr.jem, data.x_test, data.y_test)
        summary[name] = {"test_accuracy": res.accuracy, "test_nll": res.nll, "run_dir": str(tr.run.path)}

    # Robustness, by `jem attack`'s workflow: RUN_DIR/attack/attack.json of the JEM (with the
    # baseline's curve), which the evaluation below reads as `jem eval` does.
    options = demo_attack(quick, device, progress)
    log.info("demo: robustness (PGD L-inf on %d test digits)", options.limit)
    attack = attack_run(jem.run.path, options, baseline=base.run.path)
    n_refine = max(options.refine_steps)
    summary["jem_refined"] = {"refine_steps": n_refine, "n_chains": options.n_chains}
    for name, setting in (("jem", "JEM-0"), ("jem_refined", f"JEM-{n_refine}"), ("baseline", "baseline")):
        curve = {eps_key(e): a for e, a in zip(attack.eps, attack.curves[setting])}
        summary[name]["robust_accuracy"] = {"linf": curve}
        audit = (attack.audit or {}).get(setting)
        if audit is not None:  # the suite's worst case beside PGD's figure, on its first n inputs
            summary[name]["robust_accuracy_suite"] = {
                "linf": {eps_key(e): w for e, w in zip(audit["eps"], audit["worst"])},
                "pgd_same_inputs": {eps_key(e): a for e, a in zip(audit["eps"], audit["pgd"])},
                "n": audit["n"],
                "suite": audit["suite"],
                "checks": {c["name"]: c["passed"] for c in audit["checks"]},
                "verdict": audit["verdict"],
            }
    summary["robust_accuracy_n"] = attack.n

    # The paper's evaluations, JEM beside the baseline (docs/evaluation.md): calibration, OOD
    # detection, sample quality, with the robustness above; the report goes to out/report/.
    report = evaluate_run(
        jem.run.path,
        baseline=base.run.path,
        out=out / REPORT,
        limit=100 if quick else None,
        data=data,
        progress=progress,
        write=False,  # written below, with the held-out study in the same page
    )
    for name, role in (("jem", "model"), ("baseline", "baseline")):
        figures = headline(report, role)
        summary[name].update(ece=figures["ece"], nll=figures["nll"], ood=figures["ood"])
    gen = report.models["model"].evaluation.generation
    summary["jem"].update(fid=gen.fid, fid_feature_net=gen.feature_net, conditional_accuracy=gen.conditional_accuracy)

    # Held-out classes: the demo models saw all ten digits, so two small side runs (JEM and
    # baseline, same recipe, fewer epochs) train on digits 0-4 and meet 5-9 as OOD.
    ho_common = merge(common, {"data": {"classes": [0, 1, 2, 3, 4]}, "train": {"epochs": 2 if quick else 12}})
    ho_jem = train(load_config(RECIPE, ho_common), progress=progress, out=out / HELD_OUT / "jem", overwrite=True)
    ho_base = train(
        load_config(RECIPE, merge(ho_common, clf_only)),
        data=ho_jem.data,
        progress=progress,
        out=out / HELD_OUT / "baseline",
        overwrite=True,
    )
    ho = evaluate_run(
        ho_jem.run.path,
        baseline=ho_base.run.path,
        ood=["held_out"],
        generate=False,
        out=out / HELD_OUT / REPORT,
        progress=progress,
    )
    for name, role in (("jem", "model"), ("baseline", "baseline")):
        summary[name]["ood"]["held_out"] = headline(ho, role)["ood"]["held_out"]
    report.side[HELD_OUT] = SideReport(title="Held-out classes", note=HELD_OUT_NOTE, report=ho)
    report.files = write_report(report, out / REPORT)
    summary["report"] = str(report.files["html"])
    summary["held_out_classes"] = {
        "trained_on": [0, 1, 2, 3, 4],
        "ood": [5, 6, 7, 8, 9],
        "note": "ood.held_out comes from the side runs in held_out/, not from the main models",
        "report": str(ho.files["html"]),
    }

    summary["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2))  # last: it vouches for everything above
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """A short table of the headline figures."""
    jem, base = summary["jem"], summary["baseline"]

    def row(label: str, a: float | None, b: float | None = None) -> None:
        cells = "".join(f"{v:10.4f}" if v is not None else f"{'-':>10}" for v in (a, b))
        print(f"{label:30}{cells}")

    print(f"{'':30}{'JEM':>10}{'baseline':>10}")
    row("test accuracy", jem["test_accuracy"], base["test_accuracy"])
    row("test NLL", jem["test_nll"], base["test_nll"])
    row("ECE (20 bins)", jem["ece"], base["ece"])
    for ood_set in jem["ood"]:
        row(f"OOD AUROC (log p(x)) {ood_set}", jem["ood"][ood_set]["px"]["auroc"], base["ood"][ood_set]["px"]["auroc"])
    row(f"FID ({jem['fid_feature_net']})", jem["fid"])
    row("conditional accuracy", jem["conditional_accuracy"])
    refined = summary["jem_refined"]["refine_steps"]
    for e, acc in jem["robust_accuracy"]["linf"].items():
        row(f"robust acc. L-inf {e} (JEM-0)", acc, base["robust_accuracy"]["linf"][e])
        row(f"robust acc. L-inf {e} (JEM-{refined})", summary["jem_refined"]["robust_accuracy"]["linf"][e])
    suites = {k: summary[k].get("robust_accuracy_suite") for k in ("jem", "jem_refined", "baseline")}
    if suites["jem"] is not None:
        n = suites["jem"]["n"]
        print(f"attack suite {suites['jem']['suite']}, worst case per input over PGD, APGD-CE, APGD-T and Square "
              f"(first {n} test digits; PGD on them in brackets):")
        for e in list(suites["jem"]["linf"])[1:]:
            for k, label in (("jem", "JEM-0"), ("jem_refined", f"JEM-{refined}"), ("baseline", "baseline")):
                name = f"suite L-inf {e} ({label})"
                print(f"{name:30}{suites[k]['linf'][e]:10.4f}  ({suites[k]['pgd_same_inputs'][e]:.4f})")
        for k, label in (("jem", "JEM-0"), ("jem_refined", f"JEM-{refined}"), ("baseline", "baseline")):
            flagged = [c for c, ok in suites[k]["checks"].items() if not ok]
            print(f"  checks {label}: {'all pass' if not flagged else 'FLAG ' + ', '.join(flagged)}")
    print(f"seconds: {summary['seconds']:.0f}   report: {summary['report']}")


__all__ = ["run_demo", "print_summary"]
