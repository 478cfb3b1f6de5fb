"""torchjem: any classifier as a Joint Energy-based Model (Grathwohl et al., ICLR 2020)."""

from .config import Config, ConfigError, load_config
from .energy import JEM, as_jem
from .objective import HybridObjective
from .run import LoadedRun, RunDir, load_run
from .sampling import SGLD, ReplayBuffer
from .training import DivergenceError, Trainer, train

__version__ = "0.1.0"

__all__ = [
    "JEM",
    "SGLD",
    "Config",
    "ConfigError",
    "DivergenceError",
    "HybridObjective",
    "LoadedRun",
    "ReplayBuffer",
    "RunDir",
    "Trainer",
    "as_jem",
    "load_config",
    "load_run",
    "train",
]
