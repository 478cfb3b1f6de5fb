"""``jem sweep``: a study over config keys on Optuna, where a divergence is a result.

Each trial is one ordinary run directory, SWEEP_DIR/trials/pNNN-sS (setting NNN, seed S), so
``jem eval``, ``jem sample`` and ``--resume`` work on it. The study lives in an Optuna storage
(default: SQLite in SWEEP_DIR/study.db; any database URL Optuna accepts, for workers on several
machines). Workers claim waiting trials one at a time; a killed worker's trial loses its heartbeat,
is failed by the next worker that looks and queued again (Optuna's RetryFailedTrialCallback), and
the copy continues the run directory from its last checkpoint. Re-running the command continues
the study: finished trials are never run twice.

Per trial, recorded in the study (user attributes) and in RUN_DIR/trial.json: diverged (training
gave up after its recoveries), recoveries, first step of trouble, the cause, validation and test
accuracy, ECE, NLL, energy gap and seconds. A user error in any trial stops the whole sweep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing as mp
import os
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..config import ConfigError, get_value, load_config
from ..errors import InputError, RunDirError, UserError
from ..evaluate.calibration import calibration
from ..evaluate.classification import classification
from ..report import dynamics_summary
from ..rundir import RunDir, RunLock
from ..sweep_report import write_sweep_report
from ..training import Trainer
from ..training.guard import DivergenceError
from .train import resolve_recipe

log = logging.getLogger("torchjem.sweep")

SPEC_FILE = "spec.json"
NOT_SWEEPABLE = ("seed", "out", "device")  # seeds: --seeds; out: each trial's own folder
COLLAPSE = 0.8  # a finished run below this fraction of its best val accuracy collapsed (counted as diverged)
MAX_RETRY = 5  # re-queues of a trial whose worker died, before it is left failed


# -- what a sweep is ----------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """A sweep: the base config, the swept keys, the seeds and the search.

    ``grid``: key -> values (every combination is run, unless ``trials`` is set: then they are
    categorical choices of the sampler); ``ranges``: key -> [low, high, log] for the sampler;
    ``trials``: number of settings the sampler draws (None: grid search)."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    ranges: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [1])
    trials: int | None = None
    sampler: str = "tpe"

    @property
    def keys(self) -> list[str]:
        return [*self.grid, *self.ranges]

    def settings(self) -> list[dict[str, Any]]:
        """Every grid combination (grid search), in a fixed order."""
        combos: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            combos = [{**c, key: v} for c in combos for v in values]
        return combos

    def n_runs(self) -> int:
        return (self.trials if self.trials is not None else len(self.settings())) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _split_assignment(item: str, what: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise InputError(
            f"{what} {item!r} must look like section.key={'LOW:HIGH[:log]' if what == '--range' else 'V1,V2,...'}"
        )
    return key.strip(), raw.strip()


def plan_sweep(
    config: str | None,
    overrides: list[str] | None = None,
    grid: list[str] | None = None,
    ranges: list[str] | None = None,
    *,
    seeds: int = 1,
    trials: int | None = None,
    sampler: str = "tpe",
) -> SweepSpec:
    """Check a sweep before any trial starts: every key exists (the error names the closest valid
    key) and every value is valid for it. ``grid``: ["optim.lr=1e-4,1e-3", ...]; ``ranges``:
    ["optim.lr=1e-4:1e-2:log", ...] (with ``trials``); ``seeds``: the count, from the config's seed."""
    overrides, grid, ranges = list(overrides or []), list(grid or []), list(ranges or [])
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    if trials is not None and trials < 1:
        raise InputError(f"--trials must be >= 1, got {trials}")
    if sampler not in ("tpe", "random"):
        raise InputError(f"--sampler must be tpe or random, got {sampler!r}")
    if ranges and trials is None:
        raise InputError("--range needs --trials N (a sampler draws N settings from the ranges)")
    recipe = resolve_recipe(config)
    base = load_config(recipe, overrides)
    spec = SweepSpec(config=config, overrides=overrides, trials=trials, sampler=sampler)
    seen: set[str] = set()
    for item in grid:
        key, raw = _split_assignment(item, "--grid")
        values = []
        for v in raw.split(","):
            typed = get_value(load_config(recipe, [*overrides, f"{key}={v.strip()}"]), key)  # names the closest key
            if not isinstance(typed, (int, float, str, bool)):
                raise ConfigError(f"--grid {key}: only numbers, strings and booleans can be swept, got {typed!r}")
            values.append(typed)
        if len(set(map(repr, values))) != len(values):
            raise InputError(f"--grid {key} lists a value twice: {raw}")
        spec.grid[key] = values
        seen.add(key)
    for item in ranges:
        key, raw = _split_assignment(item, "--range")
        parts = raw.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise InputError(f"--range {item!r} must look like {key}=LOW:HIGH or {key}=LOW:HIGH:log")
        lo, hi = (get_value(load_config(recipe, [*overrides, f"{key}={p}"]), key) for p in parts[:2])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not lo < hi:
            raise InputError(f"--range {key}: LOW < HIGH, both numbers, expected; got {parts[0]}:{parts[1]}")
        log_scale = len(parts) == 3
        if log_scale and lo <= 0:
            raise InputError(f"--range {key}: a log range needs LOW > 0, got {lo}")
        if key in seen:
            raise InputError(f"{key} is given twice (--grid and --range)")
        spec.ranges[key] = [lo, hi, log_scale]
        seen.add(key)
    bad = [k for k in spec.keys if k.split(".")[0] in NOT_SWEEPABLE]
    if bad:
        raise InputError(f"{bad[0]} cannot be swept: use --seeds for seeds; each trial has its own folder")
    if not spec.keys:
        raise InputError("nothing to sweep: give --grid KEY=V1,V2,... (or --range KEY=LOW:HIGH with --trials)")
    for setting in spec.settings() if trials is None else []:  # cross-field checks of every combination
        load_config(recipe, [*overrides, *(f"{k}={_yaml(v)}" for k, v in setting.items())])
    spec.seeds = [base.seed + i for i in range(seeds)]
    return spec


def _yaml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, str)) else repr(value)


# -- the study ------------------------------------------------------------------------------------
def _storage(url: str, heartbeat: float) -> Any:
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # concurrent workers on one file wait for each other's writes
        kwargs = {"connect_args": {"timeout": 120}}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=max(1, round(heartbeat)),
                grace_period=max(2, round(3 * heartbeat)),
                heartbeat_stale_trial_callback=retry,
            )
    except Exception as e:  # a bad URL, a missing driver, a database that does not answer
        raise InputError(f"--storage {_redact(url)!r} cannot be opened: {str(e).splitlines()[0][:300]}") from None


def _redact(url: str) -> str:
    head, at, tail = url.partition("@")
    if not at or "://" not in head:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.split(':')[0]}:***@{tail}"


def _distributions(spec: SweepSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists: dict[str, Any] = {k: CategoricalDistribution(v) for k, v in spec.grid.items()}
    for key, (lo, hi, log_scale) in spec.ranges.items():
        both_int = isinstance(lo, int) and isinstance(hi, int)
        dists[key] = IntDistribution(lo, hi, log=log_scale) if both_int else FloatDistribution(lo, hi, log=log_scale)
    return dists


@dataclass
class Sweep:
    """An open sweep: its folder, spec and Optuna study."""

    path: Path
    spec: SweepSpec
    study: Any
    heartbeat: float

    trials = property(lambda self: self.path / "trials")

    @contextlib.contextmanager
    def claim_lock(self) -> Iterator[None]:
        """One claimer at a time on this machine (SQLite does not lock rows; other databases do)."""
        import fcntl

        with open(self.path / ".claim.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def open_sweep(
    out: str | Path,
    spec: SweepSpec | None = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    heartbeat: float = 60.0,
) -> Sweep:
    """Create or continue the sweep in ``out``. With ``spec`` None the saved one is used (for
    ``--report``); a different spec on an existing sweep is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(out)
    saved_file = path / SPEC_FILE
    saved = json.loads(saved_file.read_text()) if saved_file.is_file() else None
    if spec is None:
        if saved is None:
            raise RunDirError(f"{str(path)!r} holds no sweep (no {SPEC_FILE}); start one with jem sweep --out")
        spec = SweepSpec(**saved["spec"])
    elif saved is not None and saved["spec"] != spec.to_dict():
        raise RunDirError(
            f"{str(path)!r} holds a different sweep ({_describe(SweepSpec(**saved['spec']))}); run the same "
            "command to continue it, or choose another --out"
        )
    if storage is None:
        storage = saved["storage"] if saved is not None else f"sqlite:///{(path / 'study.db').resolve()}"
    study_name = study_name or (saved["study"] if saved is not None else f"torchjem-sweep-{path.resolve().name}")
    path.mkdir(parents=True, exist_ok=True)
    if saved is None:
        atomic_write_text(saved_file, json.dumps({"spec": spec.to_dict(), "storage": storage, "study": study_name},
                                                 indent=2))  # fmt: skip
    sampler = (
        optuna.samplers.TPESampler(seed=spec.seeds[0])
        if spec.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=spec.seeds[0])
    )
    study = optuna.create_study(
        storage=_storage(storage, heartbeat), study_name=study_name, direction="maximize", sampler=sampler,
        load_if_exists=True,
    )  # fmt: skip
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec.to_dict())
    elif stored != spec.to_dict():
        raise RunDirError(f"study {study_name!r} in {_redact(storage)} holds a different sweep; use another --study")
    return Sweep(path, spec, study, heartbeat)


def _describe(spec: SweepSpec) -> str:
    parts = [f"config {spec.config}", *(f"{k}={','.join(map(str, v))}" for k, v in spec.grid.items())]
    parts += [f"{k}={lo}:{hi}{':log' if lg else ''}" for k, (lo, hi, lg) in spec.ranges.items()]
    return ", ".join(parts + [f"{len(spec.seeds)} seeds"] + ([f"{spec.trials} trials"] if spec.trials else []))


def _trial_attrs(point: int, seed: int) -> dict[str, Any]:
    """How a trial is named in the study: its run directory, seed and setting."""
    return {"run": f"p{point:03d}-s{seed}", "seed": seed, "point": point}


def _plan_grid(sweep: Sweep) -> None:
    """Queue every (setting, seed) of a grid search once, in the study (under the claim lock)."""
    study, spec = sweep.study, sweep.spec
    if spec.trials is not None or study.user_attrs.get("planned"):
        return
    for i, setting in enumerate(spec.settings()):
        for seed in spec.seeds:
            study.enqueue_trial(setting, user_attrs=_trial_attrs(i, seed))
    study.set_user_attr("planned", True)


def _claim(sweep: Sweep) -> Any | None:
    """The next trial for this worker, marked running (or None when nothing is left to start)."""
    import optuna
    from optuna.trial import TrialState

    study, storage = sweep.study, sweep.study._storage
    with warnings.catch_warnings():  # (marked experimental since Optuna 2.9)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if "run" not in frozen.user_attrs:  # a sampled trial whose worker died before naming it
            continue
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                trial = optuna.trial.Trial(study, frozen._trial_id)
                break
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    else:
        spec = sweep.spec
        points = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False)} - {None}
        if spec.trials is None or len(points) >= spec.trials:
            return None
        with warnings.catch_warnings():  # heartbeats are recorded here, not by Study.optimize
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()  # a new setting from the sampler, and its other seeds queued
        point = len(points)
        params = {k: _suggest(trial, k, d) for k, d in _distributions(spec).items()}
        for seed in spec.seeds[1:]:
            study.enqueue_trial(params, user_attrs=_trial_attrs(point, seed))
        for k, v in _trial_attrs(point, spec.seeds[0]).items():
            trial.set_user_attr(k, v)
    storage.record_heartbeat(trial._trial_id)  # from now a killed worker leaves a stale heartbeat
    return trial


def _suggest(trial: Any, key: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


@contextlib.contextmanager
def _heartbeat(sweep: Sweep, trial_id: int) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(sweep.heartbeat):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                sweep.study._storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- one trial ------------------------------------------------------------------------------------
def run_trial(sweep: Sweep, name: str, params: dict[str, Any], seed: int, progress: bool = False) -> dict[str, Any]:
    """Train (or continue) the trial's run directory, evaluate it and write RUN_DIR/trial.json;
    returns the record. A divergence that training gives up on is a result (``diverged``)."""
    run_dir = sweep.trials / name
    done_file = run_dir / "trial.json"
    RunLock(RunDir(run_dir)).wait()  # re-queued while its first worker still runs it (a missed heartbeat)
    if done_file.is_file():  # finished before, but its result never reached the study
        return json.loads(done_file.read_text())
    t0 = time.perf_counter()
    resumed = RunDir(run_dir).checkpoint("last").is_file()
    spec = sweep.spec
    overrides = [*spec.overrides, *(f"{k}={_yaml(v)}" for k, v in params.items()), f"seed={seed}", f"out={run_dir}"]
    if resumed:
        trainer = Trainer.resume(run_dir, progress=progress)
    else:
        trainer = Trainer(load_config(resolve_recipe(spec.config), overrides), progress=progress, overwrite=True)
    try:
        final = trainer.fit()
        diverged = False
    except DivergenceError:
        final, diverged = {}, True
    metrics = RunDir(run_dir).read_metrics()
    record: dict[str, Any] = {"run": name, "params": params, "seed": seed, **_trouble(metrics)}
    record.update(diverged=diverged, status="diverged" if diverged else "done", steps=trainer.step, resumed=resumed)
    figures = dict.fromkeys(("val_acc", "test_acc", "ece", "nll"))
    if not diverged:
        figures.update(_figures(trainer, final))
    else:
        record["energy_gap"] = None
    record.update(figures, seconds=time.perf_counter() - t0)  # this attempt's (a resumed run's earlier ones not)
    mark_collapse(record, metrics)
    atomic_write_text(done_file, json.dumps(record, indent=2))
    return record


def mark_collapse(record: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Count a run that finished far below its own best validation accuracy (under COLLAPSE times
    it) as diverged, status "collapsed": the chains ran away without tripping the divergence
    checks (on digits, with the reference's thresholds, such runs ended near chance). Adds
    ``best_val_acc``; returns the record."""
    vals = [r["val_acc"] for r in metrics if "event" not in r and isinstance(r.get("val_acc"), (int, float))]
    best = record["best_val_acc"] = max(vals) if vals else None
    final = record.get("val_acc")
    if not record["diverged"] and final is not None and best is not None and final < COLLAPSE * best:
        why = f"collapsed: final val acc {final:.3f} < {COLLAPSE} x its best {best:.3f}, no divergence check tripped"
        record.update(diverged=True, status="collapsed", cause=why)
    return record


def _trouble(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Recoveries, the first step of trouble, the cause of giving up and the final energy gap,
    from a run's metrics.jsonl records."""
    summary = dynamics_summary(records)
    gave_up = [r for r in records if r.get("event") == "gave_up"]
    gap = summary["final"]["energy_gap"]
    return {
        "recoveries": summary["recoveries"],
        "first_trouble_step": summary["first_trouble_step"],
        "cause": gave_up[-1].get("cause") if gave_up else None,
        "energy_gap": gap if gap is None or math.isfinite(gap) else None,
    }


def _figures(trainer: Trainer, final: dict[str, Any]) -> dict[str, float | None]:
    """Validation (from the end of training when it validated there) and test figures."""
    val = final if "val_acc" in final else trainer.validate()
    out: dict[str, float | None] = {"val_acc": val.get("val_acc")}
    data = trainer.data
    x, y = getattr(data, "x_test", None), getattr(data, "y_test", None)
    if x is not None and len(x):
        c = classification(trainer.jem, x, y)
        out.update(test_acc=c.accuracy, nll=c.nll, ece=calibration(trainer.jem, x, y).ece)
    return out


# -- workers --------------------------------------------------------------------------------------
def run_worker(sweep: Sweep, worker: int = 0, progress: bool = False) -> int:
    """Claim and run trials until none is left to start and none runs elsewhere; returns the
    number this worker ran. A user error in a trial stops every worker (the study records it)."""
    from optuna.trial import TrialState

    study, ran = sweep.study, 0
    with sweep.claim_lock():
        _plan_grid(sweep)
    while True:
        stopped = study.user_attrs.get("stopped")
        if stopped:
            raise UserError(f"the sweep was stopped by an error in {stopped['why']}")
        with sweep.claim_lock():
            trial = _claim(sweep)
        if trial is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                return ran
            time.sleep(sweep.heartbeat)  # running elsewhere, or a dead worker's trial going stale
            continue
        attrs = trial.user_attrs
        params = {k: _suggest(trial, k, d) for k, d in _distributions(sweep.spec).items()}
        name, seed = attrs["run"], attrs["seed"]
        log.info("[worker %d] trial %d: %s %s", worker, trial.number, name, _fmt(params))
        try:
            with _heartbeat(sweep, trial._trial_id):
                record = run_trial(sweep, name, params, seed, progress)
        except UserError as e:
            _tell(study, trial, None)
            study.set_user_attr(
                "stopped", {"trial": trial.number, "why": f"trial {name} ({_fmt(params)}, seed {seed}): {e}"}
            )
            raise
        except BaseException:
            _tell(study, trial, None)
            raise
        record["number"] = trial.number
        for k, v in record.items():
            trial.set_user_attr(k, v)
        _tell(study, trial, 0.0 if record["diverged"] or record["val_acc"] is None else record["val_acc"])
        ran += 1
        if record["status"] == "collapsed":
            state = f"collapsed (val_acc {record['val_acc']:.4f}, best {record['best_val_acc']:.4f})"
        elif record["diverged"]:
            state = f"diverged at step {record['first_trouble_step']}"
        else:
            state = f"val_acc {record['val_acc']:.4f}" if record["val_acc"] is not None else "done"
        log.info("[worker %d] %s: %s, %d recoveries, %.0f s", worker, name, state, record["recoveries"],
                 record["seconds"])  # fmt: skip


def _tell(study: Any, trial: Any, value: float | None) -> None:
    from optuna.trial import TrialState

    try:
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    except Exception as e:  # failed as stale meanwhile: its re-queued copy records the result
        log.warning("trial %d: result not recorded in the study (%s); its copy will record it", trial.number, e)


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def quiet_trials_on_console() -> None:
    """Console handlers show the sweep's lines and the trials' warnings; the trials' info lines
    still go to each run's train.log."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: r.name != "torchjem" or r.levelno >= logging.WARNING)


def _child(out: str, worker: int, threads: int, heartbeat: float) -> None:
    """Entry point of a worker process (--workers N)."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    quiet_trials_on_console()
    torch.set_num_threads(threads)
    try:
        run_worker(open_sweep(out, heartbeat=heartbeat), worker)
    except UserError as e:
        log.error("[worker %d] %s", worker, e)
        raise SystemExit(2) from None


# -- the whole job ------------------------------------------------------------------------------
def sweep_records(sweep: Sweep) -> list[dict[str, Any]]:
    """The record of every finished trial (the latest per run directory), in run order."""
    from optuna.trial import TrialState

    latest: dict[str, dict[str, Any]] = {}
    for t in sweep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "diverged" in t.user_attrs:
            record = dict(t.user_attrs)
            metrics = sweep.trials / record["run"] / "metrics.jsonl"
            if "best_val_acc" not in record and metrics.is_file():  # recorded before collapses were
                mark_collapse(record, RunDir(metrics.parent).read_metrics())
            latest[record["run"]] = record
    return [latest[k] for k in sorted(latest)]


def report_sweep(sweep: Sweep) -> dict[str, Path]:
    """Write SWEEP_DIR/report/sweep.html and sweep.json from the finished trials."""
    records = sweep_records(sweep)
    if not records:
        raise RunDirError(f"sweep {str(sweep.path)!r} has no finished trial yet")
    cfg = load_config(resolve_recipe(sweep.spec.config), sweep.spec.overrides)
    t = cfg.train
    budget = f"{t.max_steps} steps" if t.max_steps is not None else f"{t.epochs} epochs"
    notes = [
        f"config {sweep.spec.config or '(defaults)'} {' '.join(sweep.spec.overrides)}".rstrip(),
        f"budget per trial: {budget} of batch {t.batch_size} on {cfg.data.name}; seeds {sweep.spec.seeds}; "
        f"divergence recovery: up to {cfg.divergence.max_retries} rewinds (lr x{cfg.divergence.lr_factor} each)",
        f"{len(records)} of {sweep.spec.n_runs()} trials finished",
        f"diverged: training gave up after its recoveries, or finished below {COLLAPSE} x its best validation "
        "accuracy (collapsed: the chains ran away without tripping a divergence check)",
    ]
    title = f"torchjem sweep: {sweep.path.name}"
    return write_sweep_report(records, sweep.spec.keys, sweep.path / "report", title=title, notes=notes)


def _requeue_failed(sweep: Sweep) -> None:
    """On a re-run: queue again every trial whose last attempt failed (a user error that stopped
    the sweep, a crash, a worker that died more often than the retries allow) and that has no
    copy waiting, running or finished. After a fix it runs; otherwise the same error stops it again."""
    from optuna.trial import TrialState

    study = sweep.study
    with sweep.claim_lock():
        by_run: dict[str, list[Any]] = {}
        for t in study.get_trials(deepcopy=False):
            if "run" in t.user_attrs:
                by_run.setdefault(t.user_attrs["run"], []).append(t)
        for run, trials in sorted(by_run.items()):
            if all(t.state == TrialState.FAIL for t in trials):
                last = trials[-1]
                attrs = {k: last.user_attrs[k] for k in ("run", "seed", "point")}
                study.enqueue_trial(last.params, user_attrs=attrs)
                log.info("trial %s failed before: queued again", run)
        if study.user_attrs.get("stopped"):
            study.set_user_attr("stopped", None)


def run_sweep(
    spec: SweepSpec,
    out: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    threads: int | None = None,
    heartbeat: float = 60.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (or continue) a sweep with ``workers`` local processes (1: in this process), each with
    ``threads`` torch threads; then write the report. Returns {"records", "report"}."""
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if heartbeat <= 0:
        raise InputError(f"--heartbeat must be > 0 seconds, got {heartbeat}")
    sweep = open_sweep(out, spec, storage=storage, study_name=study_name, heartbeat=heartbeat)
    _requeue_failed(sweep)
    log.info("sweep %s: %d trials (%s), study %r", sweep.path, spec.n_runs(), _describe(spec), sweep.study.study_name)
    if workers == 1:
        run_worker(sweep, 0, progress)
    else:
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_child, args=(str(sweep.path), i, per, heartbeat)) for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        stopped = sweep.study.user_attrs.get("stopped")
        if stopped:
            raise UserError(f"the sweep stopped: {stopped['why']}")
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"{len(bad)} sweep worker(s) failed (exit codes {bad}); see their messages above")
    files = report_sweep(sweep)
    log.info("sweep report written to %s", files["html"])
    return {"records": sweep_records(sweep), "report": files}
