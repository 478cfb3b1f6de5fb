"""Run-level jobs shared by the command line and notebooks: load a run and its data, check a
baseline against it, train, evaluate, attack, sample, and the demo. Each takes a run directory
and a small options dataclass and calls the pure functions of torchjem.evaluate."""

from .runs import LoadedRun, check_same_data, load_run

__all__ = ["LoadedRun", "check_same_data", "load_run"]
