"""``jem attack``: robust accuracy against eps of a run's JEM-0 / JEM-n (and a baseline run), distal
adversarials, the adversarials saved to files, and their re-evaluation on any run."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import check_writable, load_checkpoint, save_checkpoint
from ..errors import DataError, InputError
from ..evaluate.adaptive import ATTACKS, Counted, suite_settings
from ..evaluate.attacks import JEMDefence
from ..evaluate.masking import audit
from ..evaluate.results import RobustAccuracy, RobustnessResult
from ..evaluate.robustness import (
    DEFAULT_EPS,
    PGDSettings,
    adversarial_accuracy,
    check_eps,
    distal_report,
    robust_accuracy,
)
from ..report import plot_curves
from ..rundir import DataSpec, write_attack
from ..rundir.layout import ATTACK_PNG
from ..utils import model_device, seed_everything
from .runs import LoadedRun, check_same_data, load_run

log = logging.getLogger("torchjem")


@dataclass
class AttackOptions:
    """How ``attack_run`` attacks (the CLI's ``jem attack`` options)."""

    pgd: PGDSettings = field(default_factory=PGDSettings)  # norm, steps, step size, restarts, EOT, ...
    eps: list[float] | None = None  # radii in the [-1, 1] data scale, increasing (None: DEFAULT_EPS[norm])
    refine_steps: list[int] = field(default_factory=lambda: [0, 1, 10])  # n of each JEM-n
    limit: int | None = None  # attack only the first N test examples
    checkpoint: str = "last"
    n_chains: int = 5  # SGLD chains per input in JEM-n
    init_noise: float | None = None  # noise added to the chains (None: the run's data noise)
    gradient: str = "exact"  # exact | bpda: how PGD goes through the chains
    transfer: bool = True  # also try JEM-0's adversarials on each JEM-n
    distal: int = 100  # distal adversarials to make (0: none)
    batch_size: int = 100
    device: str = "auto"
    seed: int | None = None  # of random starts, targets, EOT draws and chains (None: the run's own seed)
    progress: bool = True
    suite: str | None = None  # an attack suite after PGD (evaluate.adaptive.SUITES: standard, quick) and its checks
    suite_limit: int | None = None  # the suite on the first N of the attacked inputs only (None: all)

    def check(self) -> AttackOptions:
        """Raise InputError for an invalid option (before any run is loaded); fills in eps."""
        self.pgd.check()
        self.eps = check_eps(self.eps if self.eps is not None else DEFAULT_EPS[self.pgd.norm])
        n = list(self.refine_steps)
        if not n or any(k < 0 for k in n) or len(set(n)) != len(n):
            raise InputError(f"refine_steps must be distinct counts >= 0, got {n}")
        counts = {"limit": 1 if self.limit is None else self.limit, "n_chains": self.n_chains}
        counts["batch_size"] = self.batch_size
        bad = {k: v for k, v in counts.items() if v < 1} | ({"distal": self.distal} if self.distal < 0 else {})
        if bad:
            raise InputError(f"attack options must be >= 1 (distal >= 0), got {bad}")
        if self.gradient not in ("exact", "bpda"):
            raise InputError(f"attack gradient must be 'exact' or 'bpda', got {self.gradient!r}")
        if self.suite is not None:
            suite_settings(self.suite, norm=self.pgd.norm)
            if self.suite_limit is not None and self.suite_limit < 1:
                raise InputError(f"suite_limit must be >= 1, got {self.suite_limit}")
            if max(self.eps) <= 0:
                raise InputError(f"the attack suite needs an eps > 0, got {self.eps}")
        return self


def defence_settings(
    run: LoadedRun, refine_steps: Sequence[int], n_chains: int = 5, *, init_noise: float | None = None,
    gradient: str = "exact",
) -> dict[str, nn.Module]:
    """{"JEM-n": model} for a loaded run: JEM-0 is the run's model itself, JEM-n its ``JEMDefence``
    with the run's SGLD settings (``init_noise`` default: the run's data noise).

    Args:
        run: the loaded run (its model and SGLD settings).
        refine_steps: the n of each JEM-n (SGLD steps; 0: the plain classifier).
        n_chains: noisy copies of each input per JEM-n, their logits averaged (default 5).
        init_noise: the std of the noise added to the copies, in data units (default None: the run's
            data noise).
        gradient: "exact" (through the chains) or "bpda" (straight through) (default "exact").
    """
    init = run.cfg.objective.data_noise if init_noise is None else init_noise
    return {
        f"JEM-{n}": run.jem if n == 0 else JEMDefence.from_sampler(
            run.jem, run.langevin, n, n_chains=n_chains, init_noise=init, gradient=gradient
        )
        for n in sorted(refine_steps)
    }


def save_adversarials(path: str | Path, result: RobustAccuracy, y: torch.Tensor, **meta: Any) -> Path:
    """Write a ``robust_accuracy`` result's adversarials (loadable without running code)."""
    state = {"x_adv": result.x_adv, "y": y.cpu(), "eps": list(result.eps), "accuracy": list(result.accuracy)}
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
        raise InputError(f"{path} is not a saved-adversarials file: it lacks {missing}")
    x_adv, y = state["x_adv"], state["y"]
    shape = tuple(x_adv.shape[2:])
    try:
        with torch.no_grad():
            n_classes = model(x_adv[0, :1].to(model_device(model))).shape[-1]
    except RuntimeError as e:
        raise InputError(f"the model cannot take the adversarials of {path} (inputs {'x'.join(map(str, shape))}): "
                         f"{str(e).splitlines()[0]}") from None
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(
            f"the adversarials of {path} have labels {int(y.min())}..{int(y.max())}, outside the model's "
            f"{n_classes} classes (0..{n_classes - 1}): they were made for another model"
        )
    try:
        accuracy, _ = adversarial_accuracy(model, x_adv, y, batch_size)
    except RuntimeError as e:
        shape = tuple(x_adv.shape[2:])
        raise InputError(f"the model cannot classify the adversarials of {path} (inputs {shape}): {e}") from None
    return {
        "file": str(path),
        "setting": state.get("setting"),
        "norm": state.get("norm"),
        "eps": list(state["eps"]),
        "n": len(y),
        "accuracy": accuracy,
        "accuracy_at_save": state.get("accuracy"),
    }


def evaluate_saved_run(path: str | Path, run_dir: str | Path, options: AttackOptions) -> dict[str, dict[str, Any]]:
    """``evaluate_saved`` on each JEM-n of ``options.refine_steps`` of the run in ``run_dir`` (its
    chains seeded by ``options.seed``, default the run's own); {setting: result}."""
    o = options.check()
    run = load_run(run_dir, o.checkpoint, o.device)
    check_saved_data(path, run)
    seed_everything(run.cfg.seed if o.seed is None else o.seed)
    models = defence_settings(run, o.refine_steps, o.n_chains, init_noise=o.init_noise, gradient=o.gradient)
    return {name: evaluate_saved(path, m, o.batch_size) for name, m in models.items()}


def check_saved_data(path: str | Path, run: LoadedRun) -> None:
    """DataError (one line) when saved adversarials were made on other data than ``run``'s: the
    data the file records (files written before issue 19 record none: then the input shape and the
    labels are checked by ``evaluate_saved``), or inputs of another shape."""
    state = load_checkpoint(path)
    saved = state.get("data") if isinstance(state, dict) else None
    if isinstance(saved, dict):
        spec = DataSpec.from_dict(saved)
        diff = spec.mismatch(run.state.data, fingerprints=False)
        if diff is not None:
            raise DataError(
                f"the adversarials of {path} were made on {spec.describe()}; run {str(run.path)!r} was trained on "
                f"{run.state.data.describe()} ({diff} differ)"
            )
    x_adv = state.get("x_adv") if isinstance(state, dict) else None
    if isinstance(x_adv, torch.Tensor) and tuple(x_adv.shape[2:]) != tuple(run.shape):
        raise DataError(
            f"the adversarials of {path} are inputs of {'x'.join(map(str, x_adv.shape[2:]))}; run {str(run.path)!r} "
            f"takes {'x'.join(map(str, run.shape))}"
        )


def suite_audit(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, res: RobustAccuracy, o: AttackOptions,
    pgd_cost: dict[str, float], name: str = "",
) -> dict[str, Any]:
    """The attack suite ``o.suite`` and its gradient-masking checks on ``model``, from where PGD
    (``res``, its cost ``pgd_cost``) left each input, on the first ``o.suite_limit`` inputs;
    a ``RobustnessAudit``'s dict (attack.json's "audit" of the setting).

    Args:
        model: the setting's classifier (a ``JEMDefence`` for JEM-n).
        x: the attacked test inputs (N, ...).
        y: their labels (N,).
        res: ``robust_accuracy``'s result on ``model``, ``x``, ``y`` (its ``robust`` (E, N)).
        o: the checked attack options (suite, suite_limit, eps, PGD settings, batch size).
        pgd_cost: PGD's cost {"forward", "backward", "seconds"}, recorded first under "PGD".
        name: the setting's name, for the log (default "").
    """
    m = len(x) if o.suite_limit is None else min(o.suite_limit, len(x))
    s = suite_settings(o.suite, norm=o.pgd.norm, eot=o.pgd.eot)
    log.info("attack: %s, suite %s (%s) on %d test inputs", name, s.name, ", ".join(ATTACKS), m)
    pgd_accuracy = res.robust[:, :m].float().mean(1).tolist()
    result = audit(model, x[:m], y[:m], eps=o.eps, settings=s, pgd=o.pgd, start=res.robust[:, :m],
                   pgd_accuracy=pgd_accuracy, batch_size=o.batch_size, progress=o.progress)
    result.cost = {"PGD": pgd_cost, **result.cost}
    out = result.to_dict()
    out["settings"]["pgd_n"] = len(x)  # PGD's cost is for all attacked inputs, the suite's for n
    return out


def attack_run(
    run_dir: str | Path,
    options: AttackOptions | None = None,
    *,
    baseline: str | Path | None = None,
    out: str | Path | None = None,
    **overrides: Any,
) -> RobustnessResult:
    """Robust accuracy against eps of a run's JEM-n for each n in ``options.refine_steps`` (and a
    ``baseline`` run): the one producer of robustness figures (`jem attack`, the demo).

    Writes ``out``: attack.json, the curves' PNG, adversarials_<setting>.pt per setting and, with
    ``distal`` > 0, distal adversarials. The defence uses the run's SGLD step size and noise. With
    ``transfer`` (and 0 in ``refine_steps``), JEM-0's adversarials are also tried against every
    JEM-n; "curves" are then the stronger of both and "curves_direct" the direct attack alone.

    Args:
        run_dir: the run attacked (settings JEM-n).
        options: how to attack; ``overrides`` set single options instead (``attack_run(run, limit=20)``).
        baseline: another run attacked alike (setting "baseline"); same data required.
        out: where to write (default RUN_DIR/attack, where `jem eval` reads it).

    Returns attack.json's record, with ``png_path`` (the written PNG) set. InputError for a bad
    option, before any run is loaded.
    """
    o = replace(options or AttackOptions(), **overrides).check()
    t0 = time.perf_counter()
    run = load_run(run_dir, o.checkpoint, o.device)
    seed = run.cfg.seed if o.seed is None else o.seed
    seed_everything(seed)  # the same command attacks alike, whatever ran before it in the process
    out = check_writable(Path(out) if out is not None else run.dir.attack)
    base = load_run(baseline, o.checkpoint, o.device) if baseline is not None else None
    if base is not None:
        check_same_data(run, base)
    data = run.data()
    x, y = data.x_test[: o.limit], data.y_test[: o.limit]
    init = run.cfg.objective.data_noise if o.init_noise is None else o.init_noise
    settings = defence_settings(run, o.refine_steps, o.n_chains, init_noise=init, gradient=o.gradient)
    if base is not None:
        settings["baseline"] = base.jem
    curves, direct, files, audits = {}, {}, {}, {}
    source = None
    for name, model in settings.items():
        log.info("attack: %s, %s PGD at eps %s on %d test inputs", name, o.pgd.norm, o.eps, len(x))
        cand = source if o.transfer and name.startswith("JEM-") and name != "JEM-0" else None
        t_pgd, counted = time.perf_counter(), Counted(model)
        res = robust_accuracy(
            counted, x, y, eps=o.eps, attack=o.pgd, candidates=cand, batch_size=o.batch_size, progress=o.progress,
            desc=f"PGD {name}",
        )
        if o.suite is not None:
            pgd_cost = {"forward": counted.forwards, "backward": counted.backwards,
                        "seconds": time.perf_counter() - t_pgd}
            audits[name] = suite_audit(model, x, y, res=res, o=o, pgd_cost=pgd_cost, name=name)
        if name == "JEM-0":
            source = res.x_adv
        curves[name], direct[name] = res.accuracy, res.accuracy_direct
        path = save_adversarials(
            out / f"adversarials_{name}.pt", res, y, norm=o.pgd.norm, setting=name, run_dir=str(run_dir), x=x.cpu(),
            data=run.state.data.to_dict(),
        )
        files[name] = str(path)
    png = plot_curves(curves, o.eps, o.pgd.norm, out / ATTACK_PNG)
    try:
        png_ref = str(png.resolve().relative_to(run.path.resolve()))
    except ValueError:
        png_ref = str(png)
    distal = None
    if o.distal > 0:
        distal = {}
        models = {"jem": run.jem, **({"baseline": base.jem} if base is not None else {})}
        for name, model in models.items():
            figures, xd = distal_report(model, x, o.distal)
            distal[name] = figures.to_dict()
            save_checkpoint(out / f"distal_{name}.pt", {"x": xd, "y": torch.arange(len(xd)) % run.n_classes})
    result = RobustnessResult(
        norm=o.pgd.norm,
        eps=o.eps,
        n=len(x),
        curves=curves,
        png=png_ref,
        curves_direct=direct,
        attack={
            **{k: v for k, v in o.pgd.to_dict().items() if k != "norm"},
            "n_chains": o.n_chains,
            "init_noise": init,
            "sgld_step_size": run.langevin.step_size,
            "sgld_noise": run.langevin.noise,
            "gradient": o.gradient,
            "transfer_from_jem0": o.transfer,
            "checkpoint": o.checkpoint,
            "seed": seed,
        },
        adversarials=files,
        distal=distal,
        audit=audits or None,
        seconds=time.perf_counter() - t0,
    )
    write_attack(out, result.to_dict())
    return replace(result, png_path=str(png))
