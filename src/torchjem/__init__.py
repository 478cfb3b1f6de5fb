"""torchjem: any classifier as a Joint Energy-based Model (Grathwohl et al., ICLR 2020)."""

from .config import Config, ConfigError, load_config
from .energy import JEM, as_jem
from .objective import HybridObjective
from .rundir import RunDir
from .sampling import PYLD, SGLD, ChainSampler, ReplayBuffer
from .training import DivergenceError, Trainer, train
from .workflows import LoadedRun, load_run

__version__ = "0.1.0"

__all__ = [
    "JEM",
    "PYLD",
    "SGLD",
    "ChainSampler",
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
