"""``jem eval``: every evaluation of a run (and its baseline, side by side) into one report.

Loads the run directories, checks that the baseline saw the same data, builds the shared inputs
(test set, OOD sets, feature network) once, evaluates each model with
``torchjem.evaluate.evaluate_model`` and writes report.json / report.html / PNGs."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import build
from ..checkpoint import check_writable
from ..data import DataSplits
from ..errors import InputError
from ..evaluate.ood import SCORES, check_scores
from ..evaluate.results import RobustnessResult
from ..evaluate.suite import evaluate_model
from ..report import DataInfo, EvaluationReport, ModelReport, ReportSettings, write_report
from ..report.cost import headline_cost, headline_cost_text
from ..rundir import check_attack, read_attack
from ..utils import model_device
from .inputs import DEFAULT_OOD, HELD_OUT, build_ood_sets, check_ood_specs, resolve_feature_net
from .runs import check_same_data, load_run

log = logging.getLogger("torchjem")


@dataclass
class EvalOptions:
    """What ``evaluate_run`` evaluates and how (the CLI's ``jem eval`` options)."""

    ood: list[str] | None = None  # OOD sets (None: uniform, gaussian, interp [, held_out])
    limit: int | None = None  # at most this many test examples (and OOD inputs and samples)
    checkpoint: str = "last"
    device: str = "auto"
    refine_steps: int = 0  # also classify after this many SGLD steps on the inputs
    feature_net: str | nn.Module | None = "auto"  # auto | inception:PATH | a FeatureNet
    scores: list[str] = field(default_factory=lambda: list(SCORES))
    n_bins: int = 20  # calibration bins
    generate: bool = True  # sampling, FID/KID/IS, conditional accuracy
    per_class: int = 20  # class-conditional samples per class
    sample_steps: int | None = None  # SGLD steps per sample (None: as `jem sample`)
    input_noise: float = 0.0  # Gaussian noise sigma on the test and OOD inputs (the reference eval script's 0.03)
    seed: int | None = None  # of OOD sets, input noise, chains and samples (None: the run's own seed)
    progress: bool = True

    def check(self) -> EvalOptions:
        """Raise InputError for an invalid option (before any run is loaded)."""
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise InputError(f"limit must be a positive integer, got {self.limit!r}")
        if not isinstance(self.n_bins, int) or self.n_bins < 1:
            raise InputError(f"calibration bins must be a positive integer, got {self.n_bins!r}")
        if self.refine_steps < 0:
            raise InputError(f"refine_steps must be >= 0, got {self.refine_steps}")
        if self.per_class < 1:
            raise InputError(f"per_class must be >= 1, got {self.per_class}")
        if not 0 <= self.input_noise < float("inf"):
            raise InputError(f"input_noise must be a finite sigma >= 0, got {self.input_noise}")
        if self.sample_steps is not None and self.sample_steps < 0:
            raise InputError(f"sample_steps must be >= 0, got {self.sample_steps}")
        self.scores = check_scores(self.scores)
        if self.ood is not None:
            check_ood_specs(self.ood)
        return self


def evaluate_run(
    run_dir: str | Path,
    options: EvalOptions | None = None,
    *,
    baseline: str | Path | None = None,
    out: str | Path | None = None,
    robustness: dict[str, dict | RobustnessResult] | None = None,
    data: DataSplits | None = None,
    write: bool = True,
    **overrides: Any,
) -> EvaluationReport:
    """Evaluate the run in ``run_dir`` (and ``baseline``, side by side) and write the report.

    Args:
        run_dir: the run directory (role "model").
        options: what to evaluate and how; ``overrides`` set single options instead
            (``evaluate_run(run, limit=100)``).
        baseline: a second run directory shown side by side (role "baseline"); same data required.
        out: the report directory (default RUN_DIR/report).
        robustness: {role: attack.json dict or ``RobustnessResult``} (default: each run's
            RUN_DIR/attack/attack.json when present, else no robustness section).
        data: the DataSplits when the run's data is not loadable by name.
        write: write report.json, report.html and the PNGs (``report.files`` says where).

    Returns the typed ``EvaluationReport`` (plot arrays and metrics records included); report.json
    holds its figures without them. InputError (a ValueError) for a bad option, before any work;
    FileNotFoundError for a missing run directory.
    """
    o = replace(options or EvalOptions(), **overrides).check()
    loaded = {"model": load_run(run_dir, o.checkpoint, o.device)}
    out_dir = check_writable(Path(out) if out is not None else loaded["model"].dir.report) if write else None
    if baseline is not None:
        loaded["baseline"] = load_run(baseline, o.checkpoint, o.device)
        check_same_data(loaded["model"], loaded["baseline"])
    main = loaded["model"]
    seed = main.cfg.seed if o.seed is None else o.seed  # the docs' commands reproduce the run's own figures
    held = None
    if data is None:  # (a caller-provided DataSplits has no held-out classes to offer)
        data, held = main.data(), build.held_out_data(main.cfg)
    if list(data.shape) != list(main.shape) or data.n_classes != main.n_classes:
        raise InputError(f"data {data.name!r} {data.shape} does not match the run's {main.data_meta}")
    ood = o.ood if o.ood is not None else [*DEFAULT_OOD, *([HELD_OUT] if held is not None else [])]

    x_test, y_test = data.x_test[: o.limit], data.y_test[: o.limit]
    n_classes = data.n_classes
    per_class = max(1, min(o.per_class, o.limit // n_classes)) if o.limit is not None else o.per_class
    ood_sets, ood_desc = build_ood_sets(ood, x_test, held, seed=seed, limit=o.limit)
    if o.input_noise > 0:  # as the reference evaluation: noise on the in-distribution and the OOD inputs
        g = torch.Generator().manual_seed(seed + 1)
        x_test = x_test + o.input_noise * torch.randn(x_test.shape, generator=g)
        ood_sets = {k: v + o.input_noise * torch.randn(v.shape, generator=g) for k, v in ood_sets.items()}
    fnet = None
    if o.generate:
        fnet = resolve_feature_net(
            o.feature_net, data, main.dir.feature_net, device=model_device(main.jem), progress=o.progress
        )
    x_ref = data.x_train[: len(x_test)]

    models: dict[str, ModelReport] = {}
    for role, run in loaded.items():
        torch.manual_seed(seed)
        log.info("evaluating %s (%s)", role, run.path)
        evaluation = evaluate_model(
            run.jem, x_test, y_test, n_classes=n_classes, ood_sets=ood_sets, scores=o.scores, n_bins=o.n_bins,
            refine_steps=o.refine_steps, sampler=run.sampler if o.generate or o.refine_steps else None,
            feature_net=fnet, x_reference=x_ref, per_class=per_class, sample_steps=o.sample_steps,
            progress=o.progress,
        )
        given = (robustness or {}).get(role)
        given = given.to_dict() if isinstance(given, RobustnessResult) else given
        rob = check_attack(given, run.path) if given is not None else read_attack(run.path)
        history = run.dir.history()  # (imported checkpoints and `jem export` folders have none: no section)
        models[role] = ModelReport(
            label=run.label,
            kind="classifier" if run.cfg.train.clf_only else "JEM",
            run_dir=str(run.path),
            checkpoint=o.checkpoint,
            evaluation=evaluation,
            robustness=RobustnessResult.from_dict(rob) if rob is not None else None,
            dynamics=history.summary() if history.records else None,
            history=history if history.records else None,
            cost=run.cost,
        )
    if "baseline" in models and models["baseline"].label == models["model"].label:
        models["baseline"].label += " (baseline)"
    report = EvaluationReport(
        title="torchjem evaluation: " + " vs ".join(m.label for m in models.values()),
        created=datetime.datetime.now().isoformat(timespec="seconds"),
        data=DataInfo(name=data.name, shape=list(data.shape), n_classes=n_classes, n_test=len(x_test)),
        settings=ReportSettings(
            limit=o.limit, ood_sets=list(ood), scores=o.scores, n_bins=o.n_bins, refine_steps=o.refine_steps,
            input_noise=o.input_noise, feature_net=fnet.name if fnet is not None else None, seed=seed,
            ood_descriptions=ood_desc,
        ),
        models=models,
    )
    if write:
        report.files = write_report(report, out_dir)
        log.info("report written to %s", report.files["html"])
    return report


def headline(report: EvaluationReport, role: str) -> dict[str, Any]:
    """The figures `jem demo` and `jem eval` print for the model in ``role``: {"accuracy", "nll",
    "ece", "mce", "ood"?: {set: {score: {"auroc"}}}, "fid"?, "feature_net"?, "conditional_accuracy"?,
    "cost": {"units", "cpu_s", "includes_init", "since_step", "ratio"?: {"units", "cpu_s"}} or None
    (not recorded)}: the training cost's totals (the run it started from included) and, for the
    model beside a baseline, the ratios model / baseline (``report.cost.headline_cost``).
    KeyError for a role the report does not have."""
    ev = report.models[role].evaluation
    if ev is None:
        return {"cost": headline_cost(report, role)}
    clf, cal = ev.classification, ev.calibration  # (None for a one-class model: ev.skipped says why)
    out: dict[str, Any] = {
        "accuracy": clf.accuracy if clf is not None else None,
        "nll": clf.nll if clf is not None else None,
        "ece": cal.ece if cal is not None else None,
        "mce": cal.mce if cal is not None else None,
    }
    if ev.ood is not None:
        # sets: {set: {"n": size, score: {"auroc", ...}}}
        out["ood"] = {s: {k: {"auroc": v["auroc"]} for k, v in res.items() if isinstance(v, dict)}
                      for s, res in ev.ood.sets.items()}
    g = ev.generation
    if g is not None:
        out.update(fid=g.fid, feature_net=g.feature_net, conditional_accuracy=g.conditional_accuracy)
    out["cost"] = headline_cost(report, role)
    return out


def headline_text(label: str, h: dict[str, Any]) -> str:
    """A model's ``headline`` figures as readable lines (what `jem eval` prints): the figures, the
    OOD AUROCs, and "cost: U units, C CPU s (R x baseline units, ...)" when ``h`` has a cost entry."""
    figures = (("accuracy", "accuracy"), ("NLL", "nll"), ("ECE", "ece"))  # (None for a one-class model)
    parts = [f"{name} {h[k]:.4f}" for name, k in figures if h.get(k) is not None] or ["one class: no accuracy"]
    if h.get("fid") is not None:
        parts.append(f"FID {h['fid']:.2f} ({h['feature_net']})")
    if h.get("conditional_accuracy") is not None:
        parts.append(f"conditional accuracy {h['conditional_accuracy']:.4f}")
    text = f"{label}: " + ", ".join(parts)
    ood = {s: v["px"]["auroc"] for s, v in (h.get("ood") or {}).items() if "px" in v}
    if ood:
        text += "\n  OOD AUROC, log p(x): " + ", ".join(f"{s} {a:.4f}" for s, a in ood.items())
    if "cost" in h:
        text += "\n  " + headline_cost_text(h["cost"])
    return text
