"""Every evaluation of one model on tensors: ``evaluate_model`` (classification, calibration, OOD
detection, generation) and the OOD sets it is given. Run directories, baselines and the report are
the workflow's (torchjem.workflows.evaluate)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..data import list_datasets
from ..errors import InputError
from ..sampling import ChainSampler
from .calibration import calibration
from .classification import classification
from .features import FeatureNet
from .generation import generation
from .ood import BUILTIN_SETS, SCORES, builtin_ood_set, named_ood_set, ood_detection
from .results import ModelEvaluation

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
    """
    log.info("evaluate: classification and calibration on %d test examples", len(x_test))
    clf, refined = classification(model, x_test, y_test, batch_size), None
    if refine_steps:
        log.info("evaluate: classification after %d SGLD refinement steps", refine_steps)
        sgld = sampler.sgld if sampler is not None else None
        refined = classification(
            model, x_test, y_test, batch_size, refine_steps=refine_steps, sampler=sgld, progress=progress
        )
    cal = calibration(model, x_test, y_test, n_bins, batch_size)
    out = ModelEvaluation(classification=clf, classification_refined=refined, calibration=cal)
    if ood_sets:
        log.info("evaluate: OOD detection against %s", ", ".join(ood_sets))
        out.ood = ood_detection(model, x_test, ood_sets, scores, batch_size, progress)
    if sampler is not None and feature_net is not None:
        log.info("evaluate: generation (%s)", "replay buffer" if sampler.buffer is not None else "fresh chains")
        out.generation = generation(
            model,
            sampler,
            x_test,
            n_classes,
            feature_net,
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
            raise InputError(
                f"unknown OOD set {s!r}; use {', '.join(BUILTIN_SETS)}, {HELD_OUT} (runs trained on data.classes) "
                f"or a data set name (NAME or NAME:ROOT) from: {', '.join(known)}"
            )
    if len(set(specs)) != len(specs):
        raise InputError(f"OOD sets listed twice: {specs}")
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
                raise InputError(
                    f"OOD set {HELD_OUT!r} needs a run trained on a subset of the classes (data.classes=[...])"
                )
            if len(held_out) == 0:
                raise InputError(f"OOD set {HELD_OUT!r} is empty: no test images outside the trained classes")
            sets[spec], desc[spec] = held_out[:n].float(), "test images of the classes the model was not trained on"
        else:
            sets[spec], desc[spec] = named_ood_set(spec, shape, n), f"test split of data set {spec}, resized"
    return sets, desc
