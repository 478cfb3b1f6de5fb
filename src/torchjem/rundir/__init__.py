"""The run directory, the noun every command takes: its layout (every path spelled once), the
writer lock, the typed run state that alone builds and reads checkpoints, the export format, the
history of metrics.jsonl and the attack.json record."""

from .attack import check_attack, read_attack, write_attack
from .cost import Cost
from .export import EXPORT_FORMAT, load_export, save_export
from .history import COLLAPSE, DynamicsSummary, History, dynamics_summary
from .layout import RunDir
from .lock import FileLock, RunLock
from .state import DataSpec, Progress, RunState, read_state

__all__ = [
    "COLLAPSE",
    "Cost",
    "EXPORT_FORMAT",
    "DataSpec",
    "DynamicsSummary",
    "FileLock",
    "History",
    "Progress",
    "RunDir",
    "RunLock",
    "RunState",
    "check_attack",
    "dynamics_summary",
    "load_export",
    "read_attack",
    "read_state",
    "save_export",
    "write_attack",
]
