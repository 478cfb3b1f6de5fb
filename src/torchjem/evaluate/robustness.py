"""Adversarial robustness as in the JEM paper: robust accuracy against epsilon for JEM-0, JEM-n and
a baseline, distal adversarials, and re-evaluation of saved adversarials on any model.

An input counts as robust at eps only if the model classifies correctly every adversarial kept for
it at every eps' <= eps (the ball grows with eps, so an adversarial found at a smaller eps is one at
a larger eps too). Curves therefore never rise with eps, and eps = 0 is the clean accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ..checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint, save_checkpoint  # noqa: E402
from ..energy import as_jem  # noqa: E402
from ..sampling import frozen_eval  # noqa: E402
from .attacks import DATA_RANGE, JEMDefence, _check_norm, _check_range, distal_adversarials, pgd  # noqa: E402
from .classification import predict_logits  # noqa: E402

log = logging.getLogger("torchjem")
# Default eps lists in the [-1, 1] data scale (8/255 in [0, 1] is 16/255 ~ 0.063 here).
DEFAULT_EPS = {"linf": [0.0, 0.025, 0.05, 0.1, 0.2, 0.3], "l2": [0.0, 0.25, 0.5, 1.0, 2.0, 3.0]}


def eps_key(eps: float) -> str:
    """The string form of an epsilon used as a JSON key: 0, 0.05, 0.1, ..."""
    return f"{eps:g}"


def _check_eps(eps: Sequence[float]) -> list[float]:
    eps = [float(e) for e in eps]
    if not eps:
        raise ValueError("attack eps list is empty")
    if any(e < 0 or not math.isfinite(e) for e in eps) or eps != sorted(eps):
        raise ValueError(f"attack eps must be finite, >= 0 and in increasing order, got {eps}")
    return eps


def adversarial_accuracy(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> tuple[list[float], torch.Tensor]:
    """Robust accuracy per eps of adversarials ``x_adv`` (E, N, ...) for labels ``y`` (N,).

    Returns (accuracy per eps, robust mask (E, N)): an input is robust at eps index k when the
    model classifies all of its adversarials 0..k correctly.
    """
    if x_adv.ndim < 3 or x_adv.shape[1] != len(y):
        raise ValueError(f"adversarials must have shape (n_eps, {len(y)}, ...), got {tuple(x_adv.shape)}")
    robust = _correct(model, x_adv, y, batch_size).cumprod(dim=0).bool()
    return robust.float().mean(1).tolist(), robust


def _correct(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(E, N) bool: whether ``model`` classifies each adversarial correctly."""
    return torch.stack([predict_logits(model, xe, batch_size).argmax(1) == y.cpu() for xe in x_adv])


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    *,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    eot: int = 1,
    batch_size: int = 100,
    data_range: tuple[float, float] = DATA_RANGE,
    candidates: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "PGD",
) -> dict[str, Any]:
    """PGD at every eps (increasing) against ``model``; robust accuracy per eps and the adversarials.

    Returns {"eps", "accuracy", "accuracy_direct", "n", "x_adv" (E, N, ...) on the CPU, "robust"
    (E, N) bool}. At each eps the adversarial from the previous eps is kept unless the new attack
    found a successful one where it had not. ``candidates`` (E, N, ...): adversarials made against
    another model (e.g. JEM-0's against JEM-n, a transfer attack); where one fools ``model`` and the
    direct attack did not, it is kept instead ("accuracy_direct" is the figure without them).
    Targeted attacks aim at a random wrong class per input (seeded by the global RNG); accuracy
    still counts correct classifications. ``step_size`` None: 2.5 eps / steps.
    """
    _check_norm(norm)
    eps = _check_eps(eps)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"robust_accuracy needs as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    _check_range(x, data_range)
    if candidates is not None and tuple(candidates.shape) != (len(eps), *x.shape):
        raise ValueError(f"candidates must have shape {(len(eps), *x.shape)}, got {tuple(candidates.shape)}")
    device = next(model.parameters()).device
    n_classes = predict_logits(model, x[:2].to(device)).shape[1]
    targets = (y + torch.randint(1, n_classes, y.shape)) % n_classes if targeted else y
    x_adv = torch.empty((len(eps), *x.shape), dtype=x.dtype)
    n_batches = math.ceil(len(x) / batch_size)
    bar = tqdm(total=n_batches * len(eps), desc=desc, disable=not progress, leave=False)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        tb = targets[i : i + batch_size].to(device)
        prev, prev_success = xb, None
        for k, e in enumerate(eps):
            if e > 0:
                res = pgd(
                    model, xb, tb, e, norm=norm, steps=steps, step_size=step_size, random_start=random_start,
                    restarts=restarts, targeted=targeted, eot=eot, data_range=data_range,
                )  # fmt: skip
                xa, success = res.x_adv, res.success
                if prev_success is not None:
                    carry = prev_success & ~success
                    xa = torch.where(carry.view(-1, *[1] * (xa.ndim - 1)), prev, xa)
                    success = success | prev_success
                prev, prev_success = xa, success
            x_adv[k, i : i + len(xb)] = prev.detach().cpu()
            bar.update(1)
    bar.close()
    # One evaluation per adversarial decides (a randomised defence is not re-drawn), so the figure
    # with candidates is never above the direct one, and equals ``adversarial_accuracy`` of the kept
    # adversarials for a deterministic model.
    correct = _correct(model, x_adv, y, batch_size)
    direct = correct.cumprod(dim=0).float().mean(1).tolist()
    if candidates is not None:
        fooled_by_candidate = ~_correct(model, candidates, y, batch_size)
        use = correct & fooled_by_candidate
        x_adv = torch.where(use.view(*use.shape, *[1] * (x_adv.ndim - 2)), candidates.to(x_adv.dtype), x_adv)
        correct = correct & ~fooled_by_candidate
    robust = correct.cumprod(dim=0).bool()
    accuracy = robust.float().mean(1).tolist()
    return {"eps": eps, "accuracy": accuracy, "accuracy_direct": direct, "n": len(x), "x_adv": x_adv, "robust": robust}


def robustness_comparison(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    norm: str = "linf",
    transfer: dict[str, str] | None = None,
    progress: bool = True,
    **attack: Any,
) -> dict[str, dict[str, float]]:
    """{model name: {eps as string: robust accuracy}} for several models under the same attack.

    ``transfer`` {target: source}: the source model's adversarials (attacked earlier in ``models``'
    order) are also tried against the target (see ``robust_accuracy``'s ``candidates``).
    """
    transfer = transfer or {}
    names = list(models)
    for target, source in transfer.items():
        if target not in models or source not in models or names.index(source) > names.index(target):
            raise ValueError(f"transfer {target!r} <- {source!r}: both must be models, the source listed first")
    out, adversarials = {}, {}
    for name, model in models.items():
        cand = adversarials[transfer[name]] if name in transfer else None
        res = robust_accuracy(
            model, x, y, eps, norm=norm, candidates=cand, progress=progress, desc=f"PGD {name}", **attack
        )
        adversarials[name] = res["x_adv"]
        out[name] = {eps_key(e): a for e, a in zip(res["eps"], res["accuracy"])}
    return out


@torch.no_grad()
def _log_px(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    jem = as_jem(model)
    device = next(jem.parameters()).device
    with frozen_eval(jem):
        parts = [jem.log_px(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(parts)


def distal_report(
    model: nn.Module,
    x_data: torch.Tensor,
    n: int = 100,
    *,
    steps: int = 100,
    step_size: float = 0.02,
    data_range: tuple[float, float] = DATA_RANGE,
) -> tuple[dict[str, float], torch.Tensor]:
    """Distal adversarials for classes 0, 1, 2, ... (``n`` in all) and how the model sees them.

    Returns (figures, the adversarials). Figures: mean target confidence, the fraction classified
    as the target, mean log p(x) of the adversarials and of ``x_data``, the AUROC with which log p(x)
    tells data (positive) from distal adversarials, and the fraction of adversarials whose log p(x)
    is below the 5th percentile of the data's. A JEM should give high confidence and still a low
    log p(x); a plain classifier's logsumexp does not carry that meaning.
    """
    from sklearn.metrics import roc_auc_score

    if n < 1 or len(x_data) == 0:
        raise ValueError(f"distal_report needs n >= 1 and some data, got n={n}, {len(x_data)} data points")
    n_classes = predict_logits(model, x_data[:2]).shape[1]
    y = torch.arange(n) % n_classes
    x = distal_adversarials(model, y, tuple(x_data.shape[1:]), steps=steps, step_size=step_size, data_range=data_range)
    prob = predict_logits(model, x).softmax(1)
    lp_adv, lp_data = _log_px(model, x), _log_px(model, x_data)
    labels = torch.cat([torch.ones(len(lp_data)), torch.zeros(len(lp_adv))])
    figures = {
        "n": n,
        "steps": steps,
        "confidence_mean": float(prob.gather(1, y[:, None]).mean()),
        "hit_rate": float((prob.argmax(1) == y).float().mean()),
        "log_px_mean": float(lp_adv.mean()),
        "log_px_data_mean": float(lp_data.mean()),
        "log_px_data_std": float(lp_data.std()) if len(lp_data) > 1 else 0.0,
        "auroc_log_px": float(roc_auc_score(labels.numpy(), torch.cat([lp_data, lp_adv]).numpy())),
        "frac_below_data_p5": float((lp_adv < torch.quantile(lp_data, 0.05)).float().mean()),
    }
    return figures, x.cpu()


def plot_curves(curves: dict[str, list[float]], eps: Sequence[float], norm: str, path: str | Path) -> Path:
    """A PNG of robust accuracy against eps, one line per setting."""
    import io

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
    for name, acc in curves.items():
        ax.plot(list(eps), acc, marker="o", label=name)
    ax.set_xlabel(f"epsilon ({'L-inf' if norm == 'linf' else 'L2'}, data in [-1, 1])")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"PGD {norm}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_adversarials(path: str | Path, result: dict[str, Any], y: torch.Tensor, **meta: Any) -> Path:
    """Write a ``robust_accuracy`` result's adversarials (loadable without running code)."""
    state = {"x_adv": result["x_adv"], "y": y.cpu(), "eps": list(result["eps"]), "accuracy": list(result["accuracy"])}
    state.update(meta)
    save_checkpoint(path, state)
    return Path(path)


def evaluate_saved(path: str | Path, model: nn.Module, batch_size: int = 256) -> dict[str, Any]:
    """Re-evaluate saved adversarials (from ``attack_run`` / ``save_adversarials``) on any model.

    Returns {"file", "setting", "norm", "eps", "n", "accuracy", "accuracy_at_save"}: the robust
    accuracy per eps of ``model`` on those inputs (cumulative over eps, as when they were made).
    """
    state = load_checkpoint(path)
    missing = [k for k in ("x_adv", "y", "eps") if k not in state]
    if missing:
        raise ValueError(f"{path} is not a saved-adversarials file: it lacks {missing}")
    x_adv, y = state["x_adv"], state["y"]
    try:
        accuracy, _ = adversarial_accuracy(model, x_adv, y, batch_size)
    except RuntimeError as e:
        shape = tuple(x_adv.shape[2:])
        raise ValueError(f"the model cannot classify the adversarials of {path} (inputs {shape}): {e}") from None
    return {
        "file": str(path),
        "setting": state.get("setting"),
        "norm": state.get("norm"),
        "eps": list(state["eps"]),
        "n": len(y),
        "accuracy": accuracy,
        "accuracy_at_save": state.get("accuracy"),
    }


def defence_settings(
    run: Any, refine_steps: Sequence[int], n_chains: int = 5, init_noise: float | None = None, gradient: str = "exact"
) -> dict[str, nn.Module]:
    """{"JEM-n": model} for a loaded run (``torchjem.run.load_run``): JEM-0 is the run's model itself,
    JEM-n its ``JEMDefence`` with the run's SGLD settings (``init_noise`` default: the run's data noise)."""
    init = run.cfg.objective.data_noise if init_noise is None else init_noise
    return {
        f"JEM-{n}": run.jem if n == 0 else JEMDefence.from_sampler(run.jem, run.sampler, n, n_chains, init, gradient)
        for n in sorted(refine_steps)
    }


def attack_run(
    run_dir: str | Path,
    *,
    norm: str = "linf",
    eps: Sequence[float] | None = None,
    refine_steps: Sequence[int] = (0, 1, 10),
    baseline: str | Path | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    checkpoint: str = "last",
    steps: int = 40,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    eot: int = 1,
    n_chains: int = 5,
    init_noise: float | None = None,
    gradient: str = "exact",
    transfer: bool = True,
    distal: int = 100,
    batch_size: int = 100,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Robust accuracy against eps of a run's JEM-n for each n in ``refine_steps`` (and a baseline run).

    Writes ``out`` (default RUN_DIR/attack): attack.json, robust_accuracy.png,
    adversarials_<setting>.pt per setting and, with ``distal`` > 0, distal adversarials. The defence
    uses the run's SGLD step size and noise; ``init_noise`` defaults to the run's training data noise;
    ``gradient`` is how the attack differentiates through it ("exact" or "bpda"). With ``transfer``
    (and 0 in ``refine_steps``), JEM-0's adversarials are also tried against every JEM-n; attack.json's
    "curves" are then the stronger of both and "curves_direct" the direct attack alone.
    """
    from ..data import load_data
    from ..run import load_run

    _check_norm(norm)
    eps = _check_eps(eps if eps is not None else DEFAULT_EPS[norm])
    if not refine_steps or any(n < 0 for n in refine_steps) or len(set(refine_steps)) != len(refine_steps):
        raise ValueError(f"refine_steps must be distinct counts >= 0, got {list(refine_steps)}")
    counts = {"limit": 1 if limit is None else limit, "steps": steps, "restarts": restarts, "eot": eot}
    counts.update({"n_chains": n_chains, "batch_size": batch_size})
    bad = {k: v for k, v in counts.items() if v < 1} | ({"distal": distal} if distal < 0 else {})
    if bad:
        raise ValueError(f"attack options must be >= 1 (distal >= 0), got {bad}")
    t0 = time.perf_counter()
    run = load_run(run_dir, checkpoint, device)
    base = load_run(baseline, checkpoint, device) if baseline is not None else None
    meta = run.state["data"]
    same = base is None or all(base.state["data"][k] == meta[k] for k in ("shape", "n_classes"))
    if not same:
        raise ValueError(f"baseline run {baseline} was trained on other data ({base.state['data']}) than {meta}")
    d = run.cfg.data
    data = load_data(d.name, d.root, d.val_size, d.split_seed, d.classes, d.limit)
    x, y = data.x_test, data.y_test
    if limit is not None:
        x, y = x[:limit], y[:limit]
    init = run.cfg.objective.data_noise if init_noise is None else init_noise
    settings = defence_settings(run, refine_steps, n_chains, init, gradient)
    if base is not None:
        settings["baseline"] = base.jem
    run_path = Path(run_dir)
    out = Path(out) if out is not None else run_path / "attack"
    attack = dict(
        norm=norm,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        restarts=restarts,
        targeted=targeted,
        eot=eot,
        batch_size=batch_size,
        progress=progress,
    )
    curves, direct, files = {}, {}, {}
    source = None
    for name, model in settings.items():
        log.info("attack: %s, %s PGD at eps %s on %d test inputs", name, norm, eps, len(x))
        cand = source if transfer and name.startswith("JEM-") and name != "JEM-0" else None
        res = robust_accuracy(model, x, y, eps, candidates=cand, desc=f"PGD {name}", **attack)
        if name == "JEM-0":
            source = res["x_adv"]
        curves[name], direct[name] = res["accuracy"], res["accuracy_direct"]
        path = save_adversarials(
            out / f"adversarials_{name}.pt", res, y, norm=norm, setting=name, run_dir=str(run_dir), x=x.cpu()
        )
        files[name] = str(path)
    png = plot_curves(curves, eps, norm, out / "robust_accuracy.png")
    try:
        png_ref = str(png.resolve().relative_to(run_path.resolve()))
    except ValueError:
        png_ref = str(png)
    result: dict[str, Any] = {
        "norm": norm,
        "eps": eps,
        "n": len(x),
        "curves": curves,
        "png": png_ref,
        "curves_direct": direct,
        "attack": {
            "steps": steps,
            "step_size": step_size if step_size is not None else "2.5*eps/steps",
            "random_start": random_start,
            "restarts": restarts,
            "targeted": targeted,
            "eot": eot,
            "n_chains": n_chains,
            "init_noise": init,
            "sgld_step_size": run.sampler.step_size,
            "sgld_noise": run.sampler.noise,
            "gradient": gradient,
            "transfer_from_jem0": transfer,
            "checkpoint": checkpoint,
        },
        "adversarials": files,
    }
    if distal > 0:
        result["distal"] = {}
        models = {"jem": run.jem, **({"baseline": base.jem} if base is not None else {})}
        for name, model in models.items():
            figures, xd = distal_report(model, x, distal)
            result["distal"][name] = figures
            save_checkpoint(out / f"distal_{name}.pt", {"x": xd, "y": torch.arange(len(xd)) % int(meta["n_classes"])})
    result["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "attack.json", json.dumps(result, indent=2))
    return result


__all__ = [
    "DEFAULT_EPS",
    "adversarial_accuracy",
    "attack_run",
    "defence_settings",
    "distal_report",
    "eps_key",
    "evaluate_saved",
    "plot_curves",
    "robust_accuracy",
    "robustness_comparison",
    "save_adversarials",
]
