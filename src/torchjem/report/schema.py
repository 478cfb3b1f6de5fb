"""The evaluation report as typed results: what ``torchjem.workflows.eval.evaluate_run``
produces and ``write_report`` turns into report.json, the PNGs and report.html.

``to_dict()`` gives report.json's shape: {"version", "title", "created", "data", "settings",
"models": {role: {"label", "kind", "run_dir", "checkpoint", <ModelEvaluation's parts>,
"robustness"?, "dynamics"?, "cost", "png"}}, "cost_ratio"?}: ``cost`` is the run's training cost
(``report.cost.cost_entry``; null: not recorded), ``cost_ratio`` model / baseline (``cost_ratio``,
with a baseline only). Plot arrays (OOD scores, samples, the metrics records)
stay in the results and go into the PNGs only (``page.clean_json`` drops them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluate.results import ModelEvaluation, RobustnessResult
from ..rundir.cost import Cost
from ..rundir.history import DynamicsSummary, History
from .cost import cost_entry, cost_ratio


@dataclass(kw_only=True)
class DataInfo:
    """The evaluation data: its name, input ``shape`` (C, H, W), classes and test examples used."""

    name: str
    shape: list[int]
    n_classes: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "n_classes": self.n_classes, "n_test": self.n_test}


@dataclass(kw_only=True)
class ReportSettings:
    """How the models were evaluated (``EvalOptions`` as resolved); ``ood_descriptions``: {set: words}."""

    limit: int | None = None
    ood_sets: list[str] = field(default_factory=list)
    scores: list[str] = field(default_factory=list)
    n_bins: int = 20
    refine_steps: int = 0
    input_noise: float = 0.0
    feature_net: str | None = None
    seed: int = 0
    ood_descriptions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(kw_only=True)
class ModelReport:
    """One model's column of the report: the run it came from and its typed results.

    ``evaluation``: ``evaluate_model``'s result (None: only the other sections); ``robustness``: its
    attack.json record (None: no section); ``dynamics`` and ``history``: the summary and records of
    the run's metrics.jsonl (None: a run without one, e.g. an imported checkpoint); ``cost``: what
    its training cost (its checkpoint's ``RunState.cost``; None: not recorded).
    """

    label: str
    kind: str = "JEM"  # JEM | classifier
    run_dir: str | None = None
    checkpoint: str | None = None
    evaluation: ModelEvaluation | None = None
    robustness: RobustnessResult | None = None
    dynamics: DynamicsSummary | None = None
    history: History | None = None
    cost: Cost | None = None

    def to_dict(self, png: dict[str, str] | None = None) -> dict[str, Any]:
        """The model's entry of report.json (arrays included: ``page.clean_json`` drops them);
        ``png``: {figure: file name} of its plots."""
        out: dict[str, Any] = {"label": self.label, "kind": self.kind}
        out.update({k: v for k, v in (("run_dir", self.run_dir), ("checkpoint", self.checkpoint)) if v is not None})
        if self.evaluation is not None:
            out.update(self.evaluation.to_dict())
        if self.robustness is not None:
            out["robustness"] = self.robustness.to_dict()
        if self.dynamics is not None:
            out["dynamics"] = self.dynamics.to_dict()
        out["cost"] = cost_entry(self.cost) if self.cost is not None else None
        out["png"] = dict(png or {})
        return out


@dataclass(kw_only=True)
class SideReport:
    """A study beside the main models, shown in the same page: other runs answering one more
    question (the demo's runs trained on digits 0-4, scored on 5-9 as OOD). ``note``: HTML, what
    they are and why they are separate."""

    title: str
    note: str
    report: EvaluationReport


@dataclass(kw_only=True)
class EvaluationReport:
    """Every model's results side by side (roles "model", "baseline") and how they were obtained.

    ``side``: {key: SideReport}, studies of other runs shown in the same page (report.json's
    "side": {key: {"title", "note", <that report's content>}}); their PNGs are named
    ``<key>_<role>_<figure>.png``.
    ``files``: where ``write_report`` wrote it ({"json", "html", "<role>_<figure>"}; empty when not
    written; not part of report.json).
    """

    title: str
    created: str
    data: DataInfo | None = None
    settings: ReportSettings = field(default_factory=ReportSettings)
    models: dict[str, ModelReport]
    side: dict[str, SideReport] = field(default_factory=dict)
    version: int = 1
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self, png: dict[str, Any] | None = None) -> dict[str, Any]:
        """report.json's content (arrays included until cleaned); ``png``: {role: {figure: file}},
        and {key: {role: {figure: file}}} of the side studies."""
        png = png or {}
        side = {k: {"title": s.title, "note": s.note, **s.report.to_dict(png.get(k))} for k, s in self.side.items()}
        return {
            "version": self.version,
            "title": self.title,
            "created": self.created,
            "data": self.data.to_dict() if self.data is not None else {},
            "settings": self.settings.to_dict(),
            "models": {r: m.to_dict(png.get(r)) for r, m in self.models.items()},
            **({"cost_ratio": cost_ratio(self.models["model"].cost, self.models["baseline"].cost)}
               if "model" in self.models and "baseline" in self.models else {}),
            **({"side": side} if side else {}),
        }


__all__ = ["DataInfo", "EvaluationReport", "ModelReport", "ReportSettings", "SideReport"]
