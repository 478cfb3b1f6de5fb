"""The workers: each claims trials from the study and runs them until none is left; ``run_sweep``
starts them (in this process, or as spawned processes with their own torch threads), re-queues the
trials that failed before, and writes the report at the end."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...errors import InputError, Interrupted, UserError
from ...sweep_report import TrialRecord
from ...training.interrupt import SIGNALS, signal_name
from .open import Sweep, open_sweep
from .records import report_sweep, sweep_records
from .spec import SweepSpec
from .trial import run_trial

log = logging.getLogger("torchjem.sweep")
AGAIN = "continue with the same jem sweep command (an interrupted trial continues from its checkpoint)"


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _outcome(record: TrialRecord) -> str:
    if record.status == "collapsed":
        return f"collapsed (val_acc {record.val_acc:.4f}, best {record.best_val_acc:.4f})"
    if record.diverged:
        return f"diverged at step {record.first_trouble_step}"
    return f"val_acc {record.val_acc:.4f}" if record.val_acc is not None else "done"


def run_worker(sweep: Sweep, worker: int = 0, progress: bool = False) -> int:
    """Claim and run trials until none is left to start and none runs elsewhere; returns the
    number this worker ran. A user error in a trial stops every worker (the study records it) and
    is raised here."""
    study, ran = sweep.study, 0
    study.plan_grid()
    while True:
        stopped = study.stopped()
        if stopped:
            raise UserError(f"the sweep was stopped by an error in {stopped}")
        claim = study.claim()
        if claim is None:
            if not study.running():
                return ran
            time.sleep(sweep.heartbeat)  # running elsewhere, or a dead worker's trial going stale
            continue
        name, params, seed = claim.run, claim.params, claim.seed
        log.info("[worker %d] trial %d: %s %s", worker, claim.number, name, _fmt(params))
        try:
            with study.beating(claim):
                record = run_trial(sweep.spec, sweep.folder.trial(name), params, seed=seed, progress=progress)
        except UserError as e:
            study.tell(claim, None)
            study.stop(claim, f"trial {name} ({_fmt(params)}, seed {seed}): {e}")
            raise
        except Interrupted as e:  # its last.pt is written: failed, so the next run queues it again and resumes it
            _ignore_signals()
            study.tell(claim, None)
            raise Interrupted(e.signum, f"interrupted by {signal_name(e.signum)} in trial {name}; {AGAIN}") from None
        except BaseException:
            study.tell(claim, None)
            raise
        record = replace(record, number=claim.number)
        # Optuna's value: the validation accuracy, 0 for a diverged trial (TPE steers away from those)
        value = 0.0 if record.diverged or record.val_acc is None else record.val_acc
        study.tell(claim, value, record.to_dict())
        ran += 1
        what = f"{_outcome(record)}, {record.recoveries} recoveries, {record.seconds:.0f} s"
        log.info("[worker %d] %s: %s", worker, name, what)


def quiet_trials_on_console() -> None:
    """Console handlers show the sweep's lines and the trials' warnings; the trials' info lines
    still go to each run's train.log."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: r.name != "torchjem" or r.levelno >= logging.WARNING)


def _ignore_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Between trials SIGINT and SIGTERM end the worker at once (nothing to save: Interrupted, and
    later signals ignored); while a trial trains, its trainer's handlers save it first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        _ignore_signals()
        raise Interrupted(signum, f"interrupted by {signal_name(signum)}; {AGAIN}")

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _child(out: str, worker: int, threads: int, heartbeat: float) -> None:
    """Entry point of a worker process (--workers N); exits 128 + the signal when interrupted."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    quiet_trials_on_console()
    torch.set_num_threads(threads)
    try:
        with signals_interrupt():
            run_worker(open_sweep(out, heartbeat=heartbeat), worker)
    except UserError as e:
        log.error("[worker %d] %s", worker, e)
        raise SystemExit(2) from None
    except Interrupted as e:
        log.warning("[worker %d] %s", worker, e.message)
        raise SystemExit(e.exit_code) from None


def _join(procs: list[Any]) -> int | None:
    """Wait for the worker processes; a SIGINT or SIGTERM meanwhile is passed on to them (each saves
    its trial and stops). Returns the signal that stopped them, or None."""
    got: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        got.append(signum)
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in SIGNALS} if main else {}
    try:
        for p in procs:
            p.join()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = [p.exitcode - 128 for p in procs if p.exitcode in (128 + signal.SIGINT, 128 + signal.SIGTERM)]
    return got[0] if got else (codes[0] if codes else None)


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
    """Run (or continue) a sweep, then write its report.

    Args:
        spec: the sweep (``plan_sweep``).
        out: the sweep folder (created, or continued when it holds the same sweep).
        storage: an SQLAlchemy URL for the study (default: SQLite in SWEEP_DIR/study.db).
        study_name: the study's name in the storage (default: from the folder's name).
        workers: local worker processes (1: in this process).
        threads: torch threads per worker process (default: the cores divided by ``workers``).
        heartbeat: seconds between a running trial's heartbeats; silent for 3, it is run again.
        progress: progress bars of the trials (one worker only).

    Returns {"records": [TrialRecord, ...], "report": {"html", "json", ...: path}}. Raises InputError
    for bad options, UserError when a trial failed with one (after the fix, the same call continues),
    RuntimeError when a worker process crashed."""
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    if heartbeat <= 0:
        raise InputError(f"--heartbeat must be > 0 seconds, got {heartbeat}")
    sweep = open_sweep(out, spec, storage=storage, study_name=study_name, heartbeat=heartbeat)
    for run in sweep.study.requeue_failed():
        log.info("trial %s failed before: queued again", run)
    log.info("sweep %s: %d trials (%s), study %r", sweep.path, spec.n_runs(), spec.describe(), sweep.study.name)
    if workers == 1:
        with signals_interrupt():
            run_worker(sweep, 0, progress)
    else:
        per = threads or max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_child, args=(str(sweep.path), i, per, heartbeat)) for i in range(workers)]
        for p in procs:
            p.start()
        signum = _join(procs)
        if signum is not None:
            raise Interrupted(signum, f"interrupted by {signal_name(signum)}; {AGAIN}")
        stopped = sweep.study.stopped()
        if stopped:
            raise UserError(f"the sweep stopped: {stopped}")
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"{len(bad)} sweep worker(s) failed (exit codes {bad}); see their messages above")
    files = report_sweep(sweep)
    log.info("sweep report written to %s", files["html"])
    return {"records": sweep_records(sweep), "report": files}
