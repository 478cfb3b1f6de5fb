"""``jem sweep``: a study over config keys on Optuna, where a divergence is a result.

Each trial is one ordinary run directory, SWEEP_DIR/trials/pNNN-sS (setting NNN, seed S), so
``jem eval``, ``jem sample`` and ``--resume`` work on it. The study lives in an Optuna storage
(default: SQLite in SWEEP_DIR/study.db; any database URL SQLAlchemy accepts, for workers on several
machines). Workers claim waiting trials one at a time; a killed worker's trial loses its heartbeat,
is failed by the next worker that looks and queued again, and the copy continues the run directory
from its last checkpoint. Re-running the command continues the study: finished trials are never run
twice. A user error in any trial stops the whole sweep.

- spec.py     ``SweepSpec``, ``plan_sweep``: the swept keys, checked against the config first
- layout.py   ``SweepDir``: where a sweep keeps each thing (spec.json, study.db, trials/, report/)
- study.py    ``Study``: all of Optuna (storage, claim, tell, re-queue, heartbeat)
- open.py     ``Sweep``, ``open_sweep``: create or continue a sweep folder and its study
- trial.py    ``run_trial``: one trial into its run directory -> a ``TrialRecord`` (RUN_DIR/trial.json)
- records.py  ``sweep_records``, ``report_sweep``: the finished trials and their report
- workers.py  ``run_worker``, ``run_sweep``: worker processes, re-queueing, the console
"""

from ...sweep_report import TrialRecord
from .layout import SweepDir, trial_name
from .open import Sweep, open_sweep
from .records import report_sweep, sweep_records
from .spec import NOT_SWEEPABLE, SweepSpec, plan_sweep
from .study import MAX_RETRY, Claim, Study
from .trial import mark_collapse, run_trial
from .workers import quiet_trials_on_console, run_sweep, run_worker

__all__ = [
    "MAX_RETRY",
    "NOT_SWEEPABLE",
    "Claim",
    "Study",
    "Sweep",
    "SweepDir",
    "SweepSpec",
    "TrialRecord",
    "mark_collapse",
    "open_sweep",
    "plan_sweep",
    "quiet_trials_on_console",
    "report_sweep",
    "run_sweep",
    "run_trial",
    "run_worker",
    "sweep_records",
    "trial_name",
]
