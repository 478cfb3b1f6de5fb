"""A sweep folder's layout: the one place that spells where a sweep keeps each thing.

SWEEP_DIR/spec.json      the sweep ({"spec", "storage", "study"}: what `--report` and a re-run read)
SWEEP_DIR/study.db       the Optuna study, by default (SQLite; `--storage` puts it in any database)
SWEEP_DIR/.claim.lock    one claimer at a time on this machine (SQLite does not lock rows)
SWEEP_DIR/trials/        one ordinary run directory per trial: trials/pNNN-sS (setting NNN, seed S)
SWEEP_DIR/report/        sweep.html, sweep.json and the heat maps
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...checkpoint import atomic_write_text


def trial_name(point: int, seed: int) -> str:
    """A trial's run directory name (and its name in the study): setting ``point`` on ``seed``."""
    return f"p{point:03d}-s{seed}"


class SweepDir:
    """Paths inside one sweep folder (nothing is created until something is written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepDir({str(self.path)!r})"

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"

    @property
    def claim_lock(self) -> Path:
        return self.path / ".claim.lock"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    @property
    def report(self) -> Path:
        return self.path / "report"

    def trial(self, name: str) -> Path:
        """The run directory of the trial ``name`` (``trial_name``)."""
        return self.trials / name

    def read_saved(self) -> dict[str, Any] | None:
        """spec.json's content ({"spec": SweepSpec.to_dict(), "storage": url, "study": name}), or None."""
        return json.loads(self.spec.read_text()) if self.spec.is_file() else None

    def save(self, spec: dict[str, Any], storage: str, study: str) -> None:
        """Write spec.json (atomically), creating the folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.spec, json.dumps({"spec": spec, "storage": storage, "study": study}, indent=2))
