"""The chains' samplers and their replay buffer, one concept a module:

- ``base``: the Langevin update (``langevin_update``) and ``LangevinSampler``, the run of a chain
  with the parameters frozen, shared by the samplers (``run``, ``scale_step``);
- ``sgld``: ``SGLD``, the paper's Langevin dynamics;
- ``pyld``: ``PYLD``, JEM++'s proximal Langevin dynamics;
- ``buffer``: ``ReplayBuffer`` (persistent chains), its serialised form (``buffer_state``,
  ``buffer_settings``) and the per-rank shard layout (``shard_size``, ``merge_shards``, ``split_shard``);
- ``chain``: ``ChainSampler``, a sampler with its buffer: what the objective and evaluations call.
"""

from .base import LangevinSampler, add_noise, langevin_update
from .buffer import INITS, JITTER, ReplayBuffer, buffer_settings, buffer_state, merge_shards, shard_size, split_shard
from .chain import ChainSampler
from .pyld import PYLD
from .sgld import SGLD

__all__ = [
    "INITS",
    "JITTER",
    "PYLD",
    "SGLD",
    "ChainSampler",
    "LangevinSampler",
    "ReplayBuffer",
    "add_noise",
    "buffer_settings",
    "buffer_state",
    "langevin_update",
    "merge_shards",
    "shard_size",
    "split_shard",
]
