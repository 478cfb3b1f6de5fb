"""The demo: a JEM and its plain-classifier baseline on digits, evaluated side by side."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..config import CONFIG_DIR, load_config
from ..evaluate.attacks import JEMDefence
from ..evaluate.classification import classification
from ..evaluate.robustness import robustness_comparison
from ..report import plot_curves
from ..training import train
from .evaluate import evaluate_run, headline

log = logging.getLogger("torchjem")
RECIPE = CONFIG_DIR / "digits_demo.yaml"
# --quick: a smoke test of the whole pipeline, not the real figures.
QUICK = ["train.epochs=2", "sgld.steps=5", "buffer.size=200"]


def run_demo(
    out: str | Path = "runs/demo", device: str = "auto", seed: int = 1, quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train, evaluate and compare; writes ``out/summary.json`` and returns it."""
    t0 = time.perf_counter()
    out = Path(out)
    common = [f"device={device}", f"seed={seed}"] + (QUICK if quick else [])
    jem_cfg = load_config(RECIPE, common + [f"out={out / 'jem'}"])
    base_cfg = load_config(RECIPE, common + [f"out={out / 'baseline'}", "train.clf_only=true"])
    log.info("demo 1/2: training the JEM")
    jem = train(jem_cfg, progress=progress, overwrite=True)
    log.info("demo 2/2: training the baseline classifier (same net, data and schedule)")
    base = train(base_cfg, data=jem.data, progress=progress, overwrite=True)
    data = jem.data

    summary: dict[str, Any] = {"data": data.name, "quick": quick}
    for name, tr in (("jem", jem), ("baseline", base)):
        res = classification(tr.jem, data.x_test, data.y_test)
        summary[name] = {"test_accuracy": res.accuracy, "test_nll": res.nll, "run_dir": str(tr.run.path)}

    # Robustness (docs/robustness.md): L-inf PGD on test digits against JEM-0, JEM-n (SGLD-refined,
    # attacked through the chains and with JEM-0's adversarials transferred) and the baseline.
    n_refine, n_chains = 3, 2
    refined = JEMDefence.from_sampler(jem.jem, jem.sampler.sgld, n_refine, n_chains, jem_cfg.objective.data_noise)
    n_robust, eps = (50 if quick else 100), [0.0, 0.05, 0.1, 0.2, 0.3]
    log.info("demo: robustness (PGD L-inf on %d test digits)", n_robust)
    robust = robustness_comparison(
        {"jem": jem.jem, "jem_refined": refined, "baseline": base.jem},
        data.x_test[:n_robust],
        data.y_test[:n_robust],
        eps,
        norm="linf",
        transfer={"jem_refined": "jem"},
        steps=10 if quick else 20,
        progress=progress,
    )
    summary["jem_refined"] = {"refine_steps": n_refine, "n_chains": n_chains}
    for name, curve in robust.items():
        summary[name]["robust_accuracy"] = {"linf": curve}
    summary["robust_accuracy_n"] = n_robust
    curves = {"JEM-0": robust["jem"], f"JEM-{n_refine}": robust["jem_refined"], "baseline": robust["baseline"]}
    png = plot_curves({k: list(v.values()) for k, v in curves.items()}, eps, "linf", out / "robust_accuracy.png")
    attack = {"norm": "linf", "eps": eps, "n": n_robust, "png": str(png.resolve())}
    robustness = {
        "model": {**attack, "curves": {k: list(curves[k].values()) for k in ("JEM-0", f"JEM-{n_refine}")}},
        "baseline": {**attack, "curves": {"baseline": list(curves["baseline"].values())}},
    }

    # The paper's evaluations, JEM beside the baseline (docs/evaluation.md): calibration, OOD
    # detection, sample quality, with the robustness above; the report goes to out/report/.
    report = evaluate_run(
        jem.run.path,
        baseline=base.run.path,
        out=out / "report",
        limit=100 if quick else None,
        data=data,
        seed=seed,
        progress=progress,
        robustness=robustness,
    )
    for name, role in (("jem", "model"), ("baseline", "baseline")):
        figures = headline(report, role)
        summary[name].update(ece=figures["ece"], nll=figures["nll"], ood=figures["ood"])
    gen = report["models"]["model"]["generation"]
    summary["jem"].update(
        fid=gen["fid"], fid_feature_net=gen["feature_net"], conditional_accuracy=gen["conditional_accuracy"]
    )
    summary["report"] = report["files"]["html"]

    # Held-out classes: the demo models saw all ten digits, so two small side runs (JEM and
    # baseline, same recipe, fewer epochs) train on digits 0-4 and meet 5-9 as OOD.
    ho_common = common + ["data.classes=[0,1,2,3,4]", f"train.epochs={2 if quick else 12}"]
    ho_cfg = load_config(RECIPE, ho_common + [f"out={out / 'held_out' / 'jem'}"])
    ho_jem = train(ho_cfg, progress=progress, overwrite=True)
    ho_base = train(
        load_config(RECIPE, ho_common + [f"out={out / 'held_out' / 'baseline'}", "train.clf_only=true"]),
        data=ho_jem.data,
        progress=progress,
    )
    ho = evaluate_run(
        ho_jem.run.path,
        baseline=ho_base.run.path,
        ood=["held_out"],
        generate=False,
        out=out / "held_out" / "report",
        seed=seed,
        progress=progress,
    )
    for name, role in (("jem", "model"), ("baseline", "baseline")):
        summary[name]["ood"]["held_out"] = headline(ho, role)["ood"]["held_out"]
    summary["held_out_classes"] = {
        "trained_on": [0, 1, 2, 3, 4],
        "ood": [5, 6, 7, 8, 9],
        "note": "ood.held_out comes from the side runs in held_out/, not from the main models",
        "report": ho["files"]["html"],
    }

    summary["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
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
    print(f"seconds: {summary['seconds']:.0f}   report: {summary['report']}")


__all__ = ["run_demo", "print_summary"]
