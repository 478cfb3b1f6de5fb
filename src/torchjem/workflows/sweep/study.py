"""All of the sweep's Optuna, behind one small class: the storage from a URL, the study, claiming a
waiting trial, telling a result, re-queueing failed and stale trials, and heartbeats.

Nothing else in torchjem imports Optuna (tests/test_architecture.py checks that no other module
touches a private Optuna attribute). Only public Optuna API is used here: the storage is built here,
so its public methods (``set_trial_state_values``, ``record_heartbeat``, the id look-ups) are called
on it directly instead of through ``Study._storage`` and ``Trial._trial_id``.

Claiming: grid settings are queued once as WAITING trials named by their run directory; a worker
claims one by moving it to RUNNING in the storage (the database refuses a second claimer) under a
file lock (SQLite does not lock rows) and, in PostgreSQL, an advisory lock of the study
(``exclusive``). With ``trials`` set, a worker with nothing waiting asks the
sampler for a new setting and queues its other seeds. From the claim on, the trial sends heartbeats;
a trial whose worker died falls silent, is failed by the next claimer (``fail_stale_trials``) and
queued again by Optuna's RetryHeartbeatStaleTrialCallback (up to MAX_RETRY times).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import threading
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ...errors import InputError, RunDirError
from ...rundir import FileLock
from .layout import trial_name
from .spec import SweepSpec

log = logging.getLogger("torchjem.sweep")

MAX_RETRY = 5  # re-queues of a trial whose worker died, before it is left failed
SCHEMA_ATTEMPTS = 5  # tries to open a storage while another worker creates its tables


def redact(url: str) -> str:
    """A storage URL with its password replaced by ***."""
    head, at, tail = url.partition("@")
    if not at or "://" not in head:
        return url
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.split(':')[0]}:***@{tail}" if ":" in user else url


POSTGRES_DRIVERS = ("psycopg", "psycopg2")  # SQLAlchemy's names of the PostgreSQL drivers, in order of preference
INSTALL_DRIVER = 'pip install "psycopg[binary]" (or torchjem[postgres])'


def with_driver(url: str) -> str:
    """``url`` with a PostgreSQL URL that names no driver (``postgresql://``, ``postgres://``) bound
    to the driver that is installed: SQLAlchemy 2.0 reads a bare ``postgresql://`` as psycopg2,
    2.1 as psycopg (3), so the same URL fails with the other one installed. A URL that names its
    driver (``postgresql+psycopg2://``) and any other URL are returned as they are. InputError when
    no PostgreSQL driver is installed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for driver in POSTGRES_DRIVERS:
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://{rest}"
    raise InputError(f"--storage {redact(url)!r}: no PostgreSQL driver is installed; {INSTALL_DRIVER}")


def storage_from_url(url: str, heartbeat: float) -> optuna.storages.RDBStorage:
    """An Optuna storage for any SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``: bound to
    the installed driver, ``with_driver``) with heartbeats every ``heartbeat`` seconds; raises
    InputError when it cannot be opened."""
    given, url = url, with_driver(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # concurrent workers on one file wait for each other's writes
        kwargs = {"connect_args": {"timeout": 120}}
    for attempt in range(SCHEMA_ATTEMPTS):
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
            # workers starting together on a new database race to create Optuna's tables: the loser
            # sees a unique violation, and the tables exist a moment later
            if attempt + 1 < SCHEMA_ATTEMPTS and re.search(r"duplicate key|already exists", str(e)):
                time.sleep(0.5 * (attempt + 1))
                continue
            hint = ""
            if isinstance(e, ImportError) and url.startswith("postgres"):  # a driver named in the URL, missing
                hint = "; pip install psycopg2-binary" if "+psycopg2" in url else f"; {INSTALL_DRIVER}"
            why = str(e).splitlines()[0][:300]
            raise InputError(f"--storage {redact(given)!r} cannot be opened: {why}{hint}") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def _distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    dists: dict[str, BaseDistribution] = {k: CategoricalDistribution(v) for k, v in spec.grid.items()}
    for key, (lo, hi, log_scale) in spec.ranges.items():
        both_int = isinstance(lo, int) and isinstance(hi, int)
        dists[key] = IntDistribution(lo, hi, log=log_scale) if both_int else FloatDistribution(lo, hi, log=log_scale)
    return dists


def _suggest(trial: optuna.trial.Trial, key: str, dist: BaseDistribution) -> Any:
    """The trial's value of ``key``: its queued value, or the sampler's draw."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log)


def _trial_attrs(point: int, seed: int) -> dict[str, Any]:
    """How a trial is named in the study: its run directory, seed and setting."""
    return {"run": trial_name(point, seed), "seed": seed, "point": point}


@dataclass(frozen=True)
class Claim:
    """A trial this worker holds, marked running in the study: its Optuna number, run directory
    name, seed and setting (swept key -> value)."""

    number: int
    run: str
    seed: int
    params: dict[str, Any]
    trial: optuna.trial.Trial = field(repr=False, compare=False)  # Optuna's handle: user attributes, tell
    trial_id: int = field(repr=False)  # the storage's id (heartbeats)


class Study:
    """A sweep's Optuna study (``optuna``: the study itself, for Optuna's own tools)."""

    def __init__(
        self, study: optuna.Study, storage: optuna.storages.RDBStorage, spec: SweepSpec, *, lock: Path, heartbeat: float
    ) -> None:
        """Wrap an opened study (``Study.open`` builds one from a URL).

        Args:
            study: the Optuna study.
            storage: its storage, as built here (``storage_from_url``).
            spec: the sweep it holds.
            lock: the claim lock's file (SWEEP_DIR/.claim.lock).
            heartbeat: seconds between a running trial's heartbeats."""
        self.optuna, self.spec, self.lock, self.heartbeat = study, spec, Path(lock), heartbeat
        self._storage = storage  # the study's own storage: built in `open`, so never read from Study._storage
        self._study_id = storage.get_study_id_from_name(study.study_name)

    @classmethod
    def open(cls, url: str, name: str, spec: SweepSpec, *, lock: Path, heartbeat: float) -> Study:
        """Create or load the study ``name`` in the storage at ``url``; refuses a study that holds
        another sweep (RunDirError). ``lock``: the claim lock's file; ``heartbeat``: seconds.

        Args:
            url: the Optuna storage URL.
            name: the study's name.
            spec: the sweep's spec (a study holding another sweep is refused).
            lock: the claim lock's file.
            heartbeat: the trials' heartbeat interval, in seconds.
        """
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seed = spec.seeds[0]
        sampler = (
            optuna.samplers.TPESampler(seed=seed) if spec.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
        )
        storage = storage_from_url(url, heartbeat)
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", sampler=sampler, load_if_exists=True
        )
        stored = study.user_attrs.get("spec")
        if stored is None:
            study.set_user_attr("spec", spec.to_dict())
        elif stored != spec.to_dict():
            raise RunDirError(f"study {name!r} in {redact(url)} holds a different sweep; use another --study")
        return cls(study, storage, spec, lock=lock, heartbeat=heartbeat)

    @property
    def name(self) -> str:
        return self.optuna.study_name

    def _trial_id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Queueing and claiming, one worker at a time: the sweep folder's file lock (SQLite does not
        lock rows) and, in PostgreSQL, an advisory lock of the study, so that machines with separate
        sweep folders starting together queue the grid once and number sampled settings once."""
        with FileLock(self.lock):
            if self._storage.engine.dialect.name != "postgresql":
                yield
                return
            key = zlib.crc32(f"torchjem-sweep:{self.name}".encode())
            with self._storage.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})

    # -- queueing and claiming -----------------------------------------------------------------
    def plan_grid(self) -> None:
        """Queue every (setting, seed) of a grid search once (nothing for a sampler's search)."""
        study, spec = self.optuna, self.spec
        with self.exclusive():
            if spec.trials is not None or study.user_attrs.get("planned"):
                return
            for i, setting in enumerate(spec.settings()):
                for seed in spec.seeds:
                    study.enqueue_trial(setting, user_attrs=_trial_attrs(i, seed))
            study.set_user_attr("planned", True)

    def claim(self) -> Claim | None:
        """The next trial for this worker, marked running, with its first heartbeat (None: nothing left
        to start). Stale trials (a dead worker's) are failed and queued again first."""
        with self.exclusive():
            trial = self._claim_waiting() or self._ask_new()
            if trial is None:
                return None
            trial_id = self._trial_id(trial.number)
            self._storage.record_heartbeat(trial_id)  # from now a killed worker leaves a stale heartbeat
            params = {k: _suggest(trial, k, d) for k, d in _distributions(self.spec).items()}
        attrs = trial.user_attrs
        return Claim(trial.number, attrs["run"], attrs["seed"], params, trial, trial_id)

    def _claim_waiting(self) -> optuna.trial.Trial | None:
        study = self.optuna
        with warnings.catch_warnings():  # (marked experimental since Optuna 2.9)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if "run" not in frozen.user_attrs:  # a sampled trial whose worker died before naming it
                continue
            trial_id = self._trial_id(frozen.number)
            try:
                if self._storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):  # False: taken
                    # not Study.ask(): with nothing claimable left it would create a trial outside the grid
                    return optuna.trial.Trial(study, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def _ask_new(self) -> optuna.trial.Trial | None:
        """A new setting from the sampler (its other seeds queued), while fewer than ``trials`` exist."""
        study, spec = self.optuna, self.spec
        points = {t.user_attrs.get("point") for t in study.get_trials(deepcopy=False)} - {None}
        if spec.trials is None or len(points) >= spec.trials:
            return None
        with warnings.catch_warnings():  # heartbeats are recorded here, not by Study.optimize
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        point = len(points)
        params = {k: _suggest(trial, k, d) for k, d in _distributions(spec).items()}
        for seed in spec.seeds[1:]:
            study.enqueue_trial(params, user_attrs=_trial_attrs(point, seed))
        for k, v in _trial_attrs(point, spec.seeds[0]).items():
            trial.set_user_attr(k, v)
        return trial

    @contextlib.contextmanager
    def beating(self, claim: Claim) -> Iterator[None]:
        """Send the claimed trial's heartbeat every ``heartbeat`` seconds while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                    self._storage.record_heartbeat(claim.trial_id)

        thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{claim.number}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def tell(self, claim: Claim, value: float | None, attrs: Mapping[str, Any] | None = None) -> None:
        """Finish the claimed trial: ``attrs`` as its user attributes, ``value`` as Optuna's value
        (None: failed). A trial failed as stale meanwhile keeps its state: its queued copy records
        the result (logged, not raised)."""
        try:
            for k, v in (attrs or {}).items():
                claim.trial.set_user_attr(k, v)
            if value is None:
                self.optuna.tell(claim.trial, state=TrialState.FAIL)
            else:
                self.optuna.tell(claim.trial, value)
        except Exception as e:
            log.warning("trial %d: result not recorded in the study (%s); its copy will record it", claim.number, e)

    def requeue_failed(self) -> list[str]:
        """Queue again every trial whose attempts all failed (a user error that stopped the sweep, a
        crash, a worker that died more often than the retries allow), and clear the stop; returns
        their run names."""
        study, again = self.optuna, []
        with self.exclusive():
            by_run: dict[str, list[optuna.trial.FrozenTrial]] = {}
            for t in study.get_trials(deepcopy=False):
                if "run" in t.user_attrs:
                    by_run.setdefault(t.user_attrs["run"], []).append(t)
            for run, trials in sorted(by_run.items()):
                if all(t.state == TrialState.FAIL for t in trials):
                    last = trials[-1]
                    study.enqueue_trial(
                        last.params, user_attrs={k: last.user_attrs[k] for k in ("run", "seed", "point")}
                    )
                    again.append(run)
            if study.user_attrs.get("stopped"):
                study.set_user_attr("stopped", None)
        return again

    # -- the study's state -----------------------------------------------------------------------
    def running(self) -> bool:
        """Whether a trial is running (here or elsewhere, or a dead worker's not yet stale)."""
        return bool(self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def stopped(self) -> str | None:
        """Why the sweep was stopped (a user error in a trial), or None."""
        stopped = self.optuna.user_attrs.get("stopped")
        return stopped["why"] if stopped else None

    def stop(self, claim: Claim, why: str) -> None:
        """Stop every worker: ``claim``'s trial failed with a user error, ``why``."""
        self.optuna.set_user_attr("stopped", {"trial": claim.number, "why": why})

    def finished(self) -> list[dict[str, Any]]:
        """The user attributes of every completed trial that holds a record, in trial order."""
        done = self.optuna.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return [dict(t.user_attrs) for t in done if "diverged" in t.user_attrs]
