"""Training: the loop (Trainer) and its parts: the train state, the divergence guard, the metrics
log, the batch sources and the data-parallel helpers."""

from .guard import DivergenceError, DivergenceGuard
from .state import Progress, TrainState
from .trainer import Trainer, train

__all__ = ["DivergenceError", "DivergenceGuard", "Progress", "TrainState", "Trainer", "train"]
