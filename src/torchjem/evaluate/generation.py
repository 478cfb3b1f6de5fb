"""Sample quality: FID, KID and an Inception-style score under a pluggable feature network, and the
conditional accuracy of class-conditional samples.

Features are computed once per set (batched, with progress) and handed to torchmetrics'
FrechetInceptionDistance / KernelInceptionDistance / InceptionScore through a pass-through module,
so the metric definitions are torchmetrics' own while the network is ours (see ``features.py``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import fields

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance
from tqdm.auto import tqdm

from ..errors import InputError
from ..sampling import ChainSampler
from ..utils import DATA_RANGE, frozen_eval, model_device, predict_logits
from .features import FeatureNet, feature_label
from .results import ConditionalAccuracy, GenerationResult, SampleQuality


class _Given(nn.Module):
    """Hands precomputed features to a torchmetrics image metric unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f


@torch.no_grad()
def embed(
    net: FeatureNet, x: torch.Tensor, batch_size: int = 256, *, progress: bool = False, desc: str = "features"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of ``x`` under ``net``, float64 on the CPU.

    Args:
        net: the feature network.
        x: inputs (N, ...) in [-1, 1].
        batch_size: inputs per batch (default 256).
        progress: show a progress bar (default False).
        desc: the progress bar's label (default "features").
    """
    if len(x) == 0:
        raise InputError(f"{desc}: the set is empty")
    device = model_device(net, x.device)
    feats, logits = [], []
    with frozen_eval(net):
        for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
            xb = x[i : i + batch_size].to(device)
            feats.append(net.features(xb).flatten(1).double().cpu())
            logits.append(net.logits(xb).double().cpu())
    feats, logits = torch.cat(feats), torch.cat(logits)
    check_finite(feats, f"{desc} of feature net {net.name!r}")
    check_finite(logits, f"{desc}: class logits of feature net {net.name!r}")
    return feats, logits


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise InputError when ``values`` hold NaN or infinite entries, saying how many and in how many rows."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        rows = int(bad.reshape(len(values), -1).any(1).sum()) if values.ndim > 1 else int(bad.sum())
        raise InputError(
            f"{what}: expected finite values, found {int(torch.isnan(values).sum())} NaN and "
            f"{int(torch.isinf(values).sum())} infinite entries (in {rows} of {len(values)} rows)"
        )


def _check_feature_sets(f_real: torch.Tensor, f_fake: torch.Tensor, metric: str) -> None:
    """Two (N, D) feature sets with the same D and finite values, for ``metric`` (FID, KID)."""
    if f_real.ndim != 2 or f_fake.ndim != 2 or f_real.shape[1] != f_fake.shape[1]:
        raise InputError(
            f"{metric} needs two (N, D) feature sets with the same D, got {tuple(f_real.shape)} and "
            f"{tuple(f_fake.shape)}"
        )
    check_finite(f_real, f"{metric}: the real features")
    check_finite(f_fake, f"{metric}: the generated features")


def frechet_distance(f_real: torch.Tensor, f_fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D) (torchmetrics' formula); NaN or infinite features raise
    InputError (torchmetrics would return NaN, which must not read as a score)."""
    if len(f_real) < 2 or len(f_fake) < 2:
        raise InputError(f"FID needs at least 2 examples per set, got {len(f_real)} and {len(f_fake)}")
    _check_feature_sets(f_real, f_fake, "FID")
    fid = FrechetInceptionDistance(feature=_Given(f_real.shape[1]))
    fid.update(f_real.double(), real=True)
    fid.update(f_fake.double(), real=False)
    value = float(fid.compute())
    if not math.isfinite(value):  # finite features so large that their covariances overflow
        big = max(float(f_real.abs().max()), float(f_fake.abs().max()))
        raise InputError(
            f"FID: the distance is {value} for features as large as {big:.3g}; expected features of moderate "
            "size (their covariances overflow float64)"
        )
    return max(0.0, value)  # the matrix square root can leave a tiny negative rounding error


def fid_bootstrap_std(f_real: torch.Tensor, f_fake: torch.Tensor, resamples: int = 10, seed: int = 0) -> float:
    """The std of the FID over ``resamples`` bootstrap resamples (with replacement) of both feature
    sets: the spread of the figure that comes from the finite samples (seeded: deterministic)."""
    if resamples < 2:
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        i = torch.randint(len(f_real), (len(f_real),), generator=g)
        j = torch.randint(len(f_fake), (len(f_fake),), generator=g)
        values.append(frechet_distance(f_real[i], f_fake[j]))
    return float(torch.tensor(values, dtype=torch.float64).std())


def kernel_distance(
    f_real: torch.Tensor, f_fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000
) -> tuple[float, float]:
    """KID (mean, std over random subsets) between two feature sets.

    Subsets hold at most half of the smaller set, so that they differ and the std means something.
    """
    if len(f_real) < 2 or len(f_fake) < 2:
        raise InputError(f"KID needs at least 2 examples per set, got {len(f_real)} and {len(f_fake)}")
    _check_feature_sets(f_real, f_fake, "KID")
    size = min(subset_size, max(2, min(len(f_real), len(f_fake)) // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(f_real.shape[1]), subsets=subsets, subset_size=size)
    kid.update(f_real.double(), real=True)
    kid.update(f_fake.double(), real=False)
    mean, std = kid.compute()
    return float(mean), float(std)


def inception_style_score(logits: torch.Tensor, splits: int | None = None) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) (mean, std over ``splits``; std NaN for one split) from class logits
    or log-probabilities.

    The score is biased down when a split holds few examples per class, so ``splits`` defaults to
    one per 1,000 examples (at most 10, the usual protocol on 50,000 samples; at least 1).
    """
    if len(logits) < 1:
        raise InputError("Inception-style score needs at least 1 example")
    check_finite(logits, "Inception-style score: the class logits")
    splits = splits or min(10, max(1, len(logits) // 1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        score = InceptionScore(feature=_Given(logits.shape[1]), splits=min(splits, len(logits)))
        score.update(logits.double())
        mean, std = score.compute()  # std is NaN for a single split
    return float(mean), float(std)


def sample_quality(
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    net: FeatureNet,
    *,
    x_reference: torch.Tensor | None = None,
    batch_size: int = 256,
    progress: bool = False,
    fid_resamples: int = 10,
) -> SampleQuality:
    """FID, KID and Inception-style score of ``x_fake`` against ``x_real`` under ``net``; the FID's
    spread as the std over ``fid_resamples`` bootstrap resamples of both sets (``fid_bootstrap_std``).

    With ``x_reference`` (other real data, e.g. training images), also its FID and KID against
    ``x_real`` and its score: the values real data gets at this sample size, to read the others against.

    Args:
        x_real: real inputs (N, ...) in [-1, 1].
        x_fake: samples (M, ...) of the same shape.
        net: the feature network (features for FID / KID, logits for the score).
        x_reference: other real inputs to read the figures against (default None: none).
        batch_size: inputs per batch (default 256).
        progress: show a progress bar (default False).
        fid_resamples: bootstrap resamples for the FID's spread (default 10).
    """
    if x_fake.shape[1:] != x_real.shape[1:]:
        raise InputError(f"samples have shape {tuple(x_fake.shape[1:])} but the real set {tuple(x_real.shape[1:])}")
    f_real, _ = embed(net, x_real, batch_size, progress=progress, desc="features (real)")
    f_fake, l_fake = embed(net, x_fake, batch_size, progress=progress, desc="features (samples)")
    kid_mean, kid_std = kernel_distance(f_real, f_fake)
    is_mean, is_std = inception_style_score(l_fake)
    out = SampleQuality(
        feature_net=net.name,
        feature_label=feature_label(net),
        n_real=len(x_real),
        n_fake=len(x_fake),
        fid=frechet_distance(f_real, f_fake),
        fid_std=fid_bootstrap_std(f_real, f_fake, fid_resamples),
        fid_resamples=fid_resamples,
        kid_mean=kid_mean,
        kid_std=kid_std,
        is_mean=is_mean,
        is_std=is_std,
    )
    if x_reference is not None:
        f_ref, l_ref = embed(net, x_reference, batch_size, progress=progress, desc="features (reference)")
        out.fid_real_reference = frechet_distance(f_real, f_ref)
        out.kid_real_reference = kernel_distance(f_real, f_ref)[0]
        out.is_real_reference = inception_style_score(l_ref)[0]
    return out


@torch.no_grad()
def conditional_accuracy(
    classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> ConditionalAccuracy:
    """Fraction of class-conditional samples ``x`` that ``classifier`` assigns to the class ``y`` they
    were drawn for, overall and per class."""
    if len(x) == 0 or len(x) != len(y):
        raise InputError(f"conditional accuracy needs as many labels as samples (> 0), got {len(x)} and {len(y)}")
    if isinstance(classifier, FeatureNet):
        _, logits = embed(classifier, x, batch_size)
        pred = logits.argmax(1)
    else:
        pred = predict_logits(classifier, x, batch_size).argmax(1)
    y = y.cpu()
    hit = (pred == y).float()
    per_class = [float(hit[y == c].mean()) if (y == c).any() else float("nan") for c in range(int(y.max()) + 1)]
    return ConditionalAccuracy(conditional_accuracy=float(hit.mean()), per_class=per_class, n=len(y))


def generate(
    model: nn.Module,
    sampler: ChainSampler,
    n: int,
    *,
    y: torch.Tensor | None = None,
    n_steps: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "sampling",
) -> torch.Tensor:
    """``n`` samples (or one per label in ``y``) drawn in batches with a progress bar (``sampler.draw``:
    the buffer is left as it is), on the CPU.

    Args:
        model: the JEM (or any classifier returning logits) to sample from.
        sampler: the chain sampler.
        n: the number of samples (ignored with ``y``).
        y: labels (M,) int64 for class-conditional samples (default None: unconditional).
        n_steps: SGLD steps per chain (default None: the sampler's K).
        batch_size: chains per batch (default 256).
        progress: show a progress bar (default False).
        desc: the progress bar's label (default "sampling").
    """
    n = len(y) if y is not None else n
    out = []
    for i in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        yb = y[i : i + batch_size] if y is not None else None
        out.append(sampler.draw(model, min(batch_size, n - i), yb, n_steps).cpu())
    return torch.cat(out)


def generation(
    model: nn.Module,
    sampler: ChainSampler,
    x_real: torch.Tensor,
    *,
    n_classes: int,
    feature_net: FeatureNet,
    n: int | None = None,
    per_class: int = 20,
    n_steps: int | None = None,
    x_reference: torch.Tensor | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> GenerationResult:
    """Unconditional and class-conditional samples, their quality and conditional accuracy.

    Samples start from the sampler's replay buffer when it has one (unconditional: the buffer's entries after
    ``n_steps`` more steps, default 0; conditional: the class's block after the sampler's K
    steps), otherwise from fresh U(-1, 1) chains of ``n_steps`` (default K) steps. ``n`` defaults
    to ``len(x_real)``. Samples are clipped to the data range [-1, 1] before scoring (as in the
    grids); ``out_of_range`` is the fraction of unconditional sample values that were outside it.
    The samples themselves are in ``arrays`` (for the grids).

    Args:
        model: the JEM (or any classifier returning logits).
        sampler: the chain sampler (with or without a replay buffer).
        x_real: real test inputs (N, ...) in [-1, 1].
        n_classes: the number of classes.
        feature_net: the feature network for FID, KID and the score.
        n: unconditional samples (default None: ``len(x_real)``).
        per_class: conditional samples per class (default 20).
        n_steps: SGLD steps (default None: 0 more from a buffer, K from fresh chains).
        x_reference: other real inputs to read the figures against (default None: none).
        batch_size: chains and inputs per batch (default 256).
        progress: show a progress bar (default False).
    """
    if len(x_real) < 2:
        raise InputError(f"generation needs at least 2 real examples, got {len(x_real)}")
    if per_class < 1 or n_classes < 1:
        raise InputError(f"generation needs per_class >= 1 and n_classes >= 1, got {per_class}, {n_classes}")
    n = len(x_real) if n is None else n
    if n < 2:
        raise InputError(f"generation needs at least 2 samples, got n={n}")
    draw = {"n_steps": n_steps, "batch_size": batch_size, "progress": progress}
    x_u = generate(model, sampler, n, y=None, **draw, desc="samples (unconditional)")
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x_c = generate(model, sampler, len(y), y=y, **draw, desc="samples (conditional)")
    if not (torch.isfinite(x_u).all() and torch.isfinite(x_c).all()):
        raise InputError("generation: the sampler produced NaN or infinite samples (the model may have diverged)")
    # Unclamped SGLD can leave the data range; scored as shown: clipped to [-1, 1].
    out_of_range = float(((x_u < DATA_RANGE[0]) | (x_u > DATA_RANGE[1])).float().mean())
    x_u, x_c = x_u.clamp(*DATA_RANGE), x_c.clamp(*DATA_RANGE)
    quality = sample_quality(
        x_real, x_u, feature_net, x_reference=x_reference, batch_size=batch_size, progress=progress
    )
    cond = conditional_accuracy(feature_net, x_c, y, batch_size)
    buffer = sampler.buffer is not None
    steps_u = n_steps if n_steps is not None else (0 if buffer else sampler.n_steps)
    steps_c = n_steps if n_steps is not None else sampler.n_steps
    start = "from each class's block of the replay buffer" if buffer else "from U(-1, 1) noise"
    return GenerationResult(
        source="replay buffer" if buffer else "fresh chains from U(-1, 1)",
        steps_unconditional=steps_u,
        steps_conditional=steps_c,
        conditional_protocol=f"{start}, {steps_c} SGLD steps up log p(x, y) = f(x)[y] (the class's logit)",
        **{f.name: getattr(quality, f.name) for f in fields(quality)},  # SampleQuality's fields, flat
        conditional_accuracy=cond.conditional_accuracy,
        conditional_accuracy_per_class=cond.per_class,
        per_class=per_class,
        out_of_range=out_of_range,
        arrays={"unconditional": x_u, "conditional": x_c, "y_conditional": y},
    )
