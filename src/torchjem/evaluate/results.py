"""The typed results of the evaluation functions, one schema in one place.

Each result is a dataclass, so that its fields show in an editor and a typo fails at once rather
than as a KeyError deep in a report. ``to_dict()`` gives the plain dict the report (report.json and
``torchjem.report``) is built from: keys in field order, optional parts (None) left out. It is
built field by field, not with ``dataclasses.asdict``, which would deep-copy the sample tensors;
nested lists, dicts and tensors are therefore shared with the result, not copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

OPTIONAL = {"optional": True}  # field metadata: left out of to_dict() when None


def _optional() -> Any:
    """A field that defaults to None and is left out of ``to_dict()`` when None (as the dicts did)."""
    return field(default=None, metadata=OPTIONAL)


class _Result:
    """``to_dict()`` for the result dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        """The result as the plain dict of report.json (nested results converted, arrays included)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            out[f.name] = value.to_dict() if isinstance(value, _Result) else value
        return out


@dataclass(kw_only=True)
class ClassificationResult(_Result):
    """Accuracy and mean NLL on ``n`` examples, after ``refine_steps`` SGLD steps on the inputs (0: none)."""

    accuracy: float
    nll: float
    n: int
    refine_steps: int


@dataclass(kw_only=True)
class CalibrationResult(_Result):
    """ECE / MCE of the max-softmax confidence over ``n_bins`` equal-width bins, and the bins themselves.

    ``accuracy`` and ``confidence`` are over all ``n`` examples; ``bins`` (the reliability diagram) holds
    "edges" (n_bins + 1) and per bin "confidence", "accuracy" (means; 0 for an empty bin) and "count".
    """

    ece: float
    mce: float
    n_bins: int
    n: int
    accuracy: float
    confidence: float
    bins: dict[str, list[float] | list[int]]


@dataclass(kw_only=True)
class OODResult(_Result):
    """OOD detection of ``n_in`` in-distribution inputs against each OOD set, for each of ``scores``.

    ``sets``: {set: {"n": size, score: {"auroc", "aupr_in", "aupr_out", "fpr95"}}};
    ``arrays``: the raw scores {"in" | set: {score: list}} for the histograms.
    """

    n_in: int
    scores: list[str]
    sets: dict[str, dict[str, Any]]
    arrays: dict[str, dict[str, list[float]]]


@dataclass(kw_only=True)
class SampleQuality(_Result):
    """FID, KID (mean, std) and Inception-style score (mean, std) of ``n_fake`` samples against ``n_real``
    real inputs under the feature network ``feature_net``.

    ``fid_std``: the FID's spread from the finite samples, the std over ``fid_resamples`` bootstrap
    resamples of both feature sets (a new draw of samples moves the FID by about this much).
    The ``*_real_reference`` figures (other real data against the real set, given ``x_reference``) are
    what real data scores at this sample size, the scale to read the others on; None (and left out
    of ``to_dict()``) without a reference.
    """

    feature_net: str
    feature_label: str
    n_real: int
    n_fake: int
    fid: float
    fid_std: float
    fid_resamples: int
    kid_mean: float
    kid_std: float
    is_mean: float
    is_std: float
    fid_real_reference: float | None = _optional()
    kid_real_reference: float | None = _optional()
    is_real_reference: float | None = _optional()


@dataclass(kw_only=True)
class ConditionalAccuracy(_Result):
    """Fraction of ``n`` class-conditional samples classified as their class, overall and per class
    (NaN for a class without samples)."""

    conditional_accuracy: float
    per_class: list[float]
    n: int


@dataclass(kw_only=True)
class GenerationResult(_Result):
    """Where the samples came from, their quality (the fields of ``SampleQuality``) and conditional accuracy.

    ``per_class``: conditional samples per class; ``out_of_range``: fraction of unconditional sample
    values outside [-1, 1] before clipping; ``arrays``: the samples {"unconditional", "conditional",
    "y_conditional"} (CPU tensors) for the grids.
    """

    source: str
    steps_unconditional: int
    steps_conditional: int
    conditional_protocol: str  # how the class-conditional samples were drawn, in words
    feature_net: str
    feature_label: str
    n_real: int
    n_fake: int
    fid: float
    fid_std: float
    fid_resamples: int
    kid_mean: float
    kid_std: float
    is_mean: float
    is_std: float
    fid_real_reference: float | None = _optional()
    kid_real_reference: float | None = _optional()
    is_real_reference: float | None = _optional()
    conditional_accuracy: float
    conditional_accuracy_per_class: list[float]
    per_class: int
    out_of_range: float
    arrays: dict[str, torch.Tensor]


@dataclass(kw_only=True)
class RobustAccuracy(_Result):
    """``robust_accuracy``'s result: PGD at each of ``eps`` (E radii, increasing) on ``n`` inputs.

    ``accuracy`` (E): robust accuracy per eps, transferred ``candidates`` included;
    ``accuracy_direct`` (E): the direct attack alone; ``x_adv`` (E, N, ...): the adversarial kept per
    eps and input (CPU); ``robust`` (E, N) bool: whether each input is robust at each eps.
    """

    eps: list[float]
    accuracy: list[float]
    accuracy_direct: list[float]
    n: int
    x_adv: torch.Tensor
    robust: torch.Tensor


@dataclass(kw_only=True)
class DistalResult(_Result):
    """``distal_report``'s figures on ``n`` distal adversarials (``steps`` of signed gradient ascent
    on log p(y|x) from noise): mean target confidence, the fraction classified as the target
    (``hit_rate``), mean log p(x) of the adversarials and mean / std of the data's, the AUROC with
    which log p(x) tells data (positive) from them, and the fraction below the data's 5th percentile."""

    n: int
    steps: int
    confidence_mean: float
    hit_rate: float
    log_px_mean: float
    log_px_data_mean: float
    log_px_data_std: float
    auroc_log_px: float
    frac_below_data_p5: float


@dataclass(kw_only=True)
class MaskingCheck(_Result):
    """One gradient-masking check of a robustness audit (``evaluate.masking``): its ``name``, the
    ``rule`` that passing means (in words), whether it ``passed`` (False: flagged), the ``figures``
    behind it and the outcome in words (``note``)."""

    name: str
    rule: str
    passed: bool
    figures: dict[str, Any]
    note: str


@dataclass(kw_only=True)
class RobustnessAudit(_Result):
    """An attack suite's worst case and the checks on it for one model (``evaluate.masking.audit``).

    ``worst`` (per eps): robust accuracy under the worst case per input over the suite's attacks
    and the PGD adversarials it started from (``pgd``: their figure), cumulative over eps;
    ``attacks``: {attack: {"accuracy_after": robust accuracy per eps once it has run (attacks run in
    order, each on the inputs still robust), "broken": inputs it broke first, ...}}; ``checks``:
    the gradient-masking checks; ``cost``: {attack: {"forward", "backward" (model calls per input,
    summed), "seconds"}}; ``verdict``: how far the figure can be trusted, in one sentence.
    """

    suite: str
    norm: str
    eps: list[float]
    n: int
    randomised: bool
    worst: list[float]
    pgd: list[float] | None = _optional()
    attacks: dict[str, dict[str, Any]]
    checks: list[MaskingCheck] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    verdict: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["checks"] = [c.to_dict() for c in self.checks]
        return out


@dataclass(kw_only=True)
class RobustnessResult(_Result):
    """Robust accuracy curves of one or more settings (JEM-0, JEM-n, a baseline): the content of
    attack.json (``jem attack``; docs/robustness.md), as the report shows it.

    ``curves``: {setting: robust accuracy per eps} (the transfer attack included);
    ``curves_direct``: the direct attack alone; ``png``: the curves' plot as attack.json names it
    (relative to the run directory when inside it); ``png_path``: that file resolved, or None when
    it is missing (set when read, in report.json, never in attack.json); ``attack``: the attack's
    settings; ``adversarials``: {setting: saved file}; ``distal``: {model: a ``DistalResult``'s
    dict}; ``audit``: {setting: a ``RobustnessAudit``'s dict} (the attack suite and its gradient-masking
    checks); ``extra``: keys of a hand-written record this schema does not know (kept).
    """

    norm: str | None = _optional()  # linf | l2
    eps: list[float]
    n: int | None = _optional()  # inputs attacked
    curves: dict[str, list[float]]
    png: str | None = _optional()
    curves_direct: dict[str, list[float]] | None = _optional()
    attack: dict[str, Any] | None = _optional()
    adversarials: dict[str, str] | None = _optional()
    distal: dict[str, Any] | None = _optional()
    audit: dict[str, Any] | None = _optional()  # {setting: a RobustnessAudit's dict} (jem attack --suite)
    seconds: float | None = _optional()
    png_path: str | None = _optional()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(out.pop("extra"))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobustnessResult:
        """The record of an attack.json dict (validated first: ``torchjem.rundir.check_attack``)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})


@dataclass(kw_only=True)
class ModelEvaluation(_Result):
    """Every evaluation of one model (``evaluate_model``); a part is None when it was not asked for,
    or could not be computed: ``skipped`` says why ({part: reason}; e.g. a one-class model has no
    classification or calibration to measure, its OOD detection is its figure)."""

    classification: ClassificationResult | None = _optional()
    classification_refined: ClassificationResult | None = _optional()
    calibration: CalibrationResult | None = _optional()
    ood: OODResult | None = _optional()
    generation: GenerationResult | None = _optional()
    skipped: dict[str, str] | None = _optional()


__all__ = [
    "ClassificationResult",
    "CalibrationResult",
    "OODResult",
    "SampleQuality",
    "ConditionalAccuracy",
    "GenerationResult",
    "ModelEvaluation",
    "DistalResult",
    "MaskingCheck",
    "RobustAccuracy",
    "RobustnessAudit",
    "RobustnessResult",
]
