"""Every evaluation of a run (and its baseline), side by side, into one report.

``evaluate_model`` runs the evaluations on one model; ``evaluate_run`` loads run directories,
builds the shared inputs (test set, OOD sets, feature network) once, evaluates each model and
writes report.json / report.html / PNGs (``torchjem.report``). ``jem eval`` is a thin layer over it.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSplits, held_out_classes, list_datasets, load_data
from ..sampling import SGLD, ReplayBuffer
from .calibration import calibration
from .classification import classification
from .features import FeatureNet, resolve_feature_net
from .generation import generation
from .ood import BUILTIN_SETS, SCORES, builtin_ood_set, check_scores, named_ood_set, ood_detection

log = logging.getLogger("torchjem")

DEFAULT_OOD = ("uniform", "gaussian", "interp")
HELD_OUT = "held_out"  # the test images of the classes a run was not trained on (data.classes)


def evaluate_model(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    n_classes: int,
    ood_sets: dict[str, torch.Tensor] | None = None,
    scores: Sequence[str] = tuple(SCORES),
    n_bins: int = 20,
    refine_steps: int = 0,
    sampler: SGLD | None = None,
    buffer: ReplayBuffer | None = None,
    feature_net: FeatureNet | None = None,
    x_reference: torch.Tensor | None = None,
    per_class: int = 20,
    sample_steps: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Classification, calibration, OOD detection (with ``ood_sets``) and generation (with a
    ``sampler`` and a ``feature_net``) of ``model``, any classifier returning logits.

    Returns {"classification", "classification_refined"?, "calibration", "ood"?, "generation"?}.
    """
    out: dict[str, Any] = {}
    log.info("evaluate: classification and calibration on %d test examples", len(x_test))
    out["classification"] = classification(model, x_test, y_test, batch_size)
    if refine_steps:
        log.info("evaluate: classification after %d SGLD refinement steps", refine_steps)
        out["classification_refined"] = classification(
            model, x_test, y_test, batch_size, refine_steps=refine_steps, sampler=sampler, progress=progress
        )
    out["calibration"] = calibration(model, x_test, y_test, n_bins, batch_size)
    if ood_sets:
        log.info("evaluate: OOD detection against %s", ", ".join(ood_sets))
        out["ood"] = ood_detection(model, x_test, ood_sets, scores, batch_size, progress)
    if sampler is not None and feature_net is not None:
        log.info("evaluate: generation (%s)", "replay buffer" if buffer is not None else "fresh chains")
        out["generation"] = generation(
            model,
            sampler,
            x_test,
            n_classes,
            feature_net,
            buffer,
            per_class=per_class,
            n_steps=sample_steps,
            x_reference=x_reference,
            batch_size=batch_size,
            progress=progress,
        )
    return out


def check_ood_specs(specs: Sequence[str]) -> list[str]:
    """OOD set names: built-in sets, ``held_out``, or data sets (``NAME`` or ``NAME:ROOT``)."""
    specs = list(specs)
    known = list_datasets()
    for s in specs:
        if s in BUILTIN_SETS or s == HELD_OUT:
            continue
        if s.partition(":")[0] not in known:
            raise ValueError(
                f"unknown OOD set {s!r}; use {', '.join(BUILTIN_SETS)}, {HELD_OUT} (runs trained on data.classes) "
                f"or a data set name (NAME or NAME:ROOT) from: {', '.join(known)}"
            )
    if len(set(specs)) != len(specs):
        raise ValueError(f"OOD sets listed twice: {specs}")
    return specs


def build_ood_sets(
    specs: Sequence[str],
    x_in: torch.Tensor,
    held_out: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The OOD sets named in ``specs`` (each as large as ``x_in`` at most) and their descriptions."""
    sets, desc = {}, {}
    n, shape = len(x_in), tuple(x_in.shape[1:])
    for i, spec in enumerate(check_ood_specs(specs)):
        if spec in BUILTIN_SETS:
            sets[spec], desc[spec] = builtin_ood_set(spec, x_in, n, seed + i), BUILTIN_SETS[spec]
        elif spec == HELD_OUT:
            if held_out is None:
                raise ValueError(
                    f"OOD set {HELD_OUT!r} needs a run trained on a subset of the classes (data.classes=[...])"
                )
            if len(held_out) == 0:
                raise ValueError(f"OOD set {HELD_OUT!r} is empty: no test images outside the trained classes")
            sets[spec], desc[spec] = held_out[:n].float(), "test images of the classes the model was not trained on"
        else:
            sets[spec], desc[spec] = named_ood_set(spec, shape, n), f"test split of data set {spec}, resized"
    return sets, desc


def run_data(cfg: Any) -> tuple[DataSplits, torch.Tensor | None]:
    """A run's data (as configured) and, when it was trained on ``data.classes``, the held-out images."""
    d = cfg.data
    data = load_data(d.name, d.root, d.val_size, d.split_seed, d.classes)
    held = None
    if d.classes is not None:
        held = held_out_classes(load_data(d.name, d.root, d.val_size, d.split_seed), d.classes)
    return data, held


def evaluate_run(
    run_dir: str | Path,
    baseline: str | Path | None = None,
    ood: Sequence[str] | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    checkpoint: str = "last",
    device: str = "auto",
    refine_steps: int = 0,
    feature_net: str | nn.Module | None = "auto",
    scores: Sequence[str] = tuple(SCORES),
    n_bins: int = 20,
    generate: bool = True,
    per_class: int = 20,
    sample_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    robustness: dict[str, dict] | None = None,
    data: DataSplits | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` (and ``baseline``, side by side) and write the report.

    ``ood``: OOD sets (default uniform, gaussian, interp, plus held_out for runs trained on a
    subset of the classes); ``limit``: at most this many test examples (and as many OOD inputs and
    generated samples); ``out``: report directory (default RUN_DIR/report); ``feature_net``:
    "auto" (a classifier trained on the run's data, cached in RUN_DIR/feature_net),
    "inception:PATH" or a FeatureNet; ``robustness``: {role: attack dict} (default: each run's
    attack/attack.json when present); ``data``: the DataSplits when the run's data is not
    loadable by name. Returns the report dict (with plot arrays); report.json holds the same
    figures without the arrays.
    """
    from ..report import check_robustness, load_robustness, write_report
    from ..run import load_run

    # Check everything cheap before any long work.
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"calibration bins must be a positive integer, got {n_bins!r}")
    if refine_steps < 0:
        raise ValueError(f"refine_steps must be >= 0, got {refine_steps}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    scores = check_scores(scores)
    runs = {"model": Path(run_dir)}
    if baseline is not None:
        runs["baseline"] = Path(baseline)
    loaded = {role: load_run(path, checkpoint, device) for role, path in runs.items()}
    main = loaded["model"]
    if "baseline" in loaded:
        a, b = main.state["data"], loaded["baseline"].state["data"]
        if (a["name"], list(a["shape"]), a["n_classes"]) != (b["name"], list(b["shape"]), b["n_classes"]) or (
            main.cfg.data.classes != loaded["baseline"].cfg.data.classes
        ):
            raise ValueError(
                f"baseline run {str(baseline)!r} was trained on other data ({b}) than {str(run_dir)!r} ({a})"
            )
    held = None
    if data is None:  # (a caller-provided DataSplits has no held-out classes to offer)
        data, held = run_data(main.cfg)
    if list(data.shape) != list(main.state["data"]["shape"]) or data.n_classes != main.state["data"]["n_classes"]:
        raise ValueError(f"data {data.name!r} {data.shape} does not match the run's {main.state['data']}")
    if ood is None:
        ood = [*DEFAULT_OOD, *([HELD_OUT] if held is not None else [])]
    check_ood_specs(ood)
    dev = next(main.jem.parameters()).device

    x_test, y_test = data.x_test[:limit], data.y_test[:limit]
    n_classes = data.n_classes
    if limit is not None:
        per_class = max(1, min(per_class, limit // n_classes))
    ood_sets, ood_desc = build_ood_sets(ood, x_test, held, seed)
    fnet = None
    if generate:
        fnet = resolve_feature_net(feature_net, data, runs["model"] / "feature_net", dev, progress)
    x_ref = data.x_train[: len(x_test)]

    models: dict[str, Any] = {}
    for role, run in loaded.items():
        torch.manual_seed(seed)
        log.info("evaluating %s (%s)", role, runs[role])
        res = evaluate_model(
            run.jem,
            x_test,
            y_test,
            n_classes=n_classes,
            ood_sets=ood_sets,
            scores=scores,
            n_bins=n_bins,
            refine_steps=refine_steps,
            sampler=run.sampler if generate or refine_steps else None,
            buffer=run.buffer,
            feature_net=fnet,
            x_reference=x_ref,
            per_class=per_class,
            sample_steps=sample_steps,
            progress=progress,
        )
        rob = (robustness or {}).get(role)
        rob = check_robustness(rob, runs[role]) if rob is not None else load_robustness(runs[role])
        models[role] = {
            "label": runs[role].name or role,
            "kind": "classifier" if run.cfg.train.clf_only else "JEM",
            "run_dir": str(runs[role]),
            "checkpoint": checkpoint,
            **res,
            **({"robustness": rob} if rob is not None else {}),
        }
    if "baseline" in models and models["baseline"]["label"] == models["model"]["label"]:
        models["baseline"]["label"] += " (baseline)"
    report: dict[str, Any] = {
        "version": 1,
        "title": "torchjem evaluation: " + " vs ".join(m["label"] for m in models.values()),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "data": {"name": data.name, "shape": list(data.shape), "n_classes": n_classes, "n_test": len(x_test)},
        "settings": {
            "limit": limit,
            "ood_sets": list(ood),
            "scores": scores,
            "n_bins": n_bins,
            "refine_steps": refine_steps,
            "feature_net": fnet.name if fnet is not None else None,
            "seed": seed,
            "ood_descriptions": ood_desc,
        },
        "models": models,
    }
    if write:
        out_dir = Path(out) if out is not None else runs["model"] / "report"
        files = write_report(report, out_dir)
        report["files"] = {k: str(v) for k, v in files.items()}
        log.info("report written to %s", files["html"])
    return report


def headline(report: dict[str, Any], role: str) -> dict[str, Any]:
    """The figures `jem demo` and `jem eval` print: accuracy, NLL, ECE, OOD AUROCs, FID, conditional accuracy."""
    m = report["models"][role]
    out: dict[str, Any] = {
        "accuracy": m["classification"]["accuracy"],
        "nll": m["classification"]["nll"],
        "ece": m["calibration"]["ece"],
        "mce": m["calibration"]["mce"],
    }
    if "ood" in m:
        out["ood"] = {
            s: {k: {"auroc": v["auroc"]} for k, v in res.items() if isinstance(v, dict)}
            for s, res in m["ood"]["sets"].items()
        }
    if "generation" in m:
        g = m["generation"]
        out.update(fid=g["fid"], feature_net=g["feature_net"], conditional_accuracy=g["conditional_accuracy"])
    return out
