"""Every evaluation of one model on tensors: ``evaluate_model`` (classification, calibration, OOD
detection, generation). Run directories, baselines and the report are the workflow's
(torchjem.workflows.eval); the OOD sets and the feature network it is given too
(torchjem.workflows.inputs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..sampling import ChainSampler
from .calibration import calibration
from .classification import classification
from .features import FeatureNet
from .generation import generation
from .ood import SCORES, ood_detection
from .results import ModelEvaluation

log = logging.getLogger("torchjem")


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
    sampler: ChainSampler | None = None,
    feature_net: FeatureNet | None = None,
    x_reference: torch.Tensor | None = None,
    per_class: int = 20,
    sample_steps: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> ModelEvaluation:
    """Classification, calibration, OOD detection (with ``ood_sets``) and generation (with a
    ``sampler`` and a ``feature_net``) of ``model``, any classifier returning logits. Refinement
    (``refine_steps``) uses the sampler's SGLD (the paper's default without one).

    The parts not asked for (``classification_refined``, ``ood``, ``generation``) are None.

    Args:
        model: any classifier returning logits.
        x_test: test inputs (N, ...) in [-1, 1].
        y_test: test labels (N,) int64.
        n_classes: the number of classes.
        ood_sets: {name: inputs (M, ...)} for OOD detection (default None: no OOD section).
        scores: OOD score names from ``SCORES`` (default: all).
        n_bins: calibration bins (default 20).
        refine_steps: SGLD refinement steps before classifying (default 0: no refined figures).
        sampler: the run's chain sampler (default None: no generation; refinement uses the paper's SGLD).
        feature_net: the feature network for generation (default None: no generation).
        x_reference: other real inputs for generation's reference figures (default None).
        per_class: conditional samples per class (default 20).
        sample_steps: SGLD steps of the samples (default None: see ``generation``).
        batch_size: inputs per batch (default 256).
        progress: show progress bars (default False).
    """
    if n_classes < 2:  # one class: every prediction is that class, certainly; nothing to measure
        why = "one class: every prediction is that class with probability 1 (a one-class energy model: see OOD)"
        log.info("evaluate: no classification or calibration (%s)", why)
        out = ModelEvaluation(skipped={"classification": why, "calibration": why})
    else:
        log.info("evaluate: classification and calibration on %d test examples", len(x_test))
        clf, refined = classification(model, x_test, y_test, batch_size=batch_size), None
        if refine_steps:
            log.info("evaluate: classification after %d SGLD refinement steps", refine_steps)
            sgld = sampler.langevin if sampler is not None else None
            refined = classification(
                model, x_test, y_test, batch_size=batch_size, refine_steps=refine_steps, sampler=sgld, progress=progress
            )
        cal = calibration(model, x_test, y_test, n_bins=n_bins, batch_size=batch_size)
        out = ModelEvaluation(classification=clf, classification_refined=refined, calibration=cal)
    if ood_sets:
        log.info("evaluate: OOD detection against %s", ", ".join(ood_sets))
        out.ood = ood_detection(model, x_test, ood_sets, scores=scores, batch_size=batch_size, progress=progress)
    if sampler is not None and feature_net is not None:
        log.info("evaluate: generation (%s)", "replay buffer" if sampler.buffer is not None else "fresh chains")
        out.generation = generation(
            model,
            sampler,
            x_test,
            n_classes=n_classes,
            feature_net=feature_net,
            per_class=per_class,
            n_steps=sample_steps,
            x_reference=x_reference,
            batch_size=batch_size,
            progress=progress,
        )
    return out
