"""Evaluations, one module each; every one takes a model (any classifier returning logits) and tensors
and returns a typed result (a dataclass from ``results``: fields, plus ``arrays`` for plots) whose
``to_dict()`` is the plain dict the report and report.json are built from.

classification  accuracy and NLL, optionally after SGLD refinement
calibration     ECE / MCE and reliability-diagram bins
ood             OOD scores (px, py, pxgrad, maxlogit), AUROC / AUPR / FPR95, built-in synthetic OOD sets
generation      FID / KID / Inception-style score and conditional accuracy of samples
features        the feature networks behind the generation figures
results         the result dataclasses, one schema for all of the above
suite           every evaluation of one model (evaluate_model -> ModelEvaluation)

The functions named like their module (classification, calibration, generation) are imported
from the module itself. Names are imported lazily, so that ``import torchjem`` (training) does not load torchmetrics.

Nothing here reads or writes files, loads data sets or trains: the OOD sets named by specs and the
default feature network (trained once, cached) are built by ``torchjem.workflows.inputs``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "predict_logits": "classification",
    "refine": "classification",
    "calibration_from_probs": "calibration",
    "ood_detection": "ood",
    "ood_scores": "ood",
    "ood_metrics": "ood",
    "pxgrad": "ood",
    "builtin_ood_set": "ood",
    "fit_to_shape": "ood",
    "sample_quality": "generation",
    "conditional_accuracy": "generation",
    "frechet_distance": "generation",
    "FeatureNet": "features",
    "ClassifierFeatures": "features",
    "InceptionFeatures": "features",
    "ModuleFeatures": "features",
    "evaluate_model": "suite",
    "ClassificationResult": "results",
    "CalibrationResult": "results",
    "OODResult": "results",
    "SampleQuality": "results",
    "ConditionalAccuracy": "results",
    "GenerationResult": "results",
    "ModelEvaluation": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
