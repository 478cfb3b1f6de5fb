"""Open a sweep: create its folder and study, or continue the one saved there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import RunDirError
from .layout import SweepDir
from .spec import SweepSpec
from .study import Study


@dataclass
class Sweep:
    """An open sweep: its folder, spec and study; ``heartbeat``: seconds between a running trial's
    heartbeats (also how long an idle worker waits before it looks again)."""

    folder: SweepDir
    spec: SweepSpec
    study: Study
    heartbeat: float

    @property
    def path(self) -> Path:
        return self.folder.path


def open_sweep(
    out: str | Path,
    spec: SweepSpec | None = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    heartbeat: float = 60.0,
) -> Sweep:
    """Create or continue the sweep in ``out``.

    Args:
        out: the sweep folder.
        spec: the sweep; None: the one saved in the folder (for ``--report``).
        storage: an SQLAlchemy URL for the study (default: the saved one, else SQLite in SWEEP_DIR/study.db).
        study_name: the study's name (default: the saved one, else from the folder's name).
        heartbeat: seconds between a running trial's heartbeats.

    Raises RunDirError for a folder without a sweep (``spec`` None), or one that holds a different
    sweep; InputError for a storage that cannot be opened."""
    folder = SweepDir(out)
    saved = folder.read_saved()
    if spec is None:
        if saved is None:
            raise RunDirError(
                f"{str(folder.path)!r} holds no sweep (no {folder.spec.name}); start one with jem sweep --out"
            )
        spec = SweepSpec.from_dict(saved["spec"])
    elif saved is not None and saved["spec"] != spec.to_dict():
        raise RunDirError(
            f"{str(folder.path)!r} holds a different sweep ({SweepSpec.from_dict(saved['spec']).describe()}); run the "
            "same command to continue it, or choose another --out"
        )
    if storage is None:
        storage = saved["storage"] if saved is not None else f"sqlite:///{folder.study_db.resolve()}"
    study_name = study_name or (saved["study"] if saved is not None else f"torchjem-sweep-{folder.path.resolve().name}")
    folder.path.mkdir(parents=True, exist_ok=True)
    if saved is None:
        folder.save(spec.to_dict(), storage, study_name)
    study = Study.open(storage, study_name, spec, lock=folder.claim_lock, heartbeat=heartbeat)
    return Sweep(folder, spec, study, heartbeat)
