"""``train.init_from``: a new run that starts from the weights of another one.

The source is a run directory (its last checkpoint), a `jem export` folder or a .safetensors file
of the JEM's state_dict (``net.*`` keys, as `jem export` writes them) or of the bare classifier
(the same keys without ``net.``). Only the weights are taken: no optimiser state, no replay buffer,
no progress. Every key and shape is checked before anything is loaded, so a source that does not
fit the network is one error line before training starts.

A plain classifier (a ``--clf-only`` run, or any classifier whose last layer is a Linear) also
seeds a JEM with a separate energy head (``net.energy_head``) of the same backbone: its last
layer becomes the class head and the energy head starts as built (it is new). That is the one
difference allowed, and only when it is exactly that: the source's extra keys are one Linear's
weight (classes x features) and bias, the JEM's missing ones its ``class_head`` of those shapes
and its ``energy_head``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..energy import JEM
from ..errors import CheckpointError, MissingError
from ..rundir import Cost, RunDir, read_state

PREFIX = "net."  # the JEM's name for its classifier: a bare classifier's keys lack it
SHOWN = 4  # keys named per kind of difference in the error line


@dataclass
class InitRecord:
    """Where a run's initial weights came from.

    ``source``: the resolved path; ``kind``: "run", "export" or "safetensors"; ``tensors``: how
    many state_dict entries were loaded; ``fingerprint``: the first 16 hex digits of the sha256
    of the loaded weights (``fingerprint``, under the source's own keys); ``cost``: the source's
    training cost (None for a bare .safetensors file or a run written before costs were recorded);
    ``class_head``: the source's layer that became the JEM's class head (a classifier seeding an
    energy-head JEM; None otherwise)."""

    source: str
    kind: str
    tensors: int
    fingerprint: str
    cost: Cost | None = None
    class_head: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the metrics event "init_from")."""
        return {
            "source": self.source,
            "kind": self.kind,
            "tensors": self.tensors,
            "fingerprint": self.fingerprint,
            "cost": self.cost.to_dict() if self.cost is not None else None,
            "class_head": self.class_head,
        }


def fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """The first 16 hex digits of the sha256 over the keys in sorted order, each key's UTF-8 bytes
    followed by its tensor's raw bytes (CPU, contiguous, native byte order)."""
    h = hashlib.sha256()
    for key in sorted(weights):
        h.update(key.encode())
        h.update(weights[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def init_from(jem: JEM, source: str | Path) -> InitRecord:
    """Load the weights of ``source`` into ``jem`` (a freshly built JEM, on any device) and say
    what was loaded.

    ``source``: a run directory (its ``last`` checkpoint), a `jem export` folder, or a .safetensors
    file of the JEM's state_dict or of its bare classifier's. Raises MissingError when the path, or
    a run directory's checkpoint, does not exist; CheckpointError (one line naming the source and
    the differing keys) when the file cannot be read or its keys or shapes do not match ``jem``'s,
    in which case ``jem`` is left unchanged."""
    path = Path(source).expanduser()
    if not path.exists():
        raise MissingError(f"train.init_from: {str(source)!r} does not exist")
    path = path.resolve()
    cost: Cost | None = None
    if path.is_dir():
        kind = "export" if RunDir(path).is_export() else "run"
        state = read_state(path)
        weights, cost = state.model, state.cost
    elif path.suffix == ".safetensors":
        kind, weights = "safetensors", _read_safetensors(path)
    else:
        raise CheckpointError(
            f"train.init_from: {str(path)!r} is not a run directory, a `jem export` folder or a .safetensors file"
        )
    target = jem.state_dict()
    weights = _as_jem_keys(weights, target)
    fp = fingerprint(weights)
    weights, last = _onto_heads(weights, target)
    fresh = {k: v for k, v in target.items() if k.startswith(ENERGY_HEAD)} if last is not None else {}
    _check_fits({**weights, **fresh}, target, path)
    jem.load_state_dict({**weights, **fresh})
    return InitRecord(str(path), kind, len(weights), fp, cost, last)


ENERGY_HEAD, CLASS_HEAD = "energy_head.", "class_head."


def _onto_heads(weights: dict[str, torch.Tensor], target: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str | None]:
    """A plain classifier's weights for an energy-head JEM: its last Linear (the only extra layer,
    of the class head's shapes) renamed to the class head (module docstring). Returns the weights
    (unchanged when the case does not apply) and the renamed layer's name, or None."""
    heads = {k for k in target if k.startswith((CLASS_HEAD, ENERGY_HEAD))}
    if not heads or heads & weights.keys() or heads != target.keys() - weights.keys():
        return weights, None
    extra = sorted(weights.keys() - target.keys())
    layers = {k.rsplit(".", 1)[0] for k in extra}
    if len(layers) != 1 or {k.rsplit(".", 1)[1] for k in extra} != {"weight", "bias"}:
        return weights, None
    (layer,) = layers
    if any(weights[f"{layer}.{p}"].shape != target[f"{CLASS_HEAD}{p}"].shape for p in ("weight", "bias")):
        return weights, None
    renamed = {k: v for k, v in weights.items() if k not in extra}
    renamed.update({f"{CLASS_HEAD}{p}": weights[f"{layer}.{p}"] for p in ("weight", "bias")})
    return renamed, layer


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"train.init_from: {str(path)!r} cannot be read as safetensors ({e})") from None


def _as_jem_keys(weights: dict[str, torch.Tensor], target: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights under the JEM's keys: as they are, or (a bare classifier's) with ``net.``
    prepended, whichever matches more of the JEM's keys."""
    prefixed = {PREFIX + k: v for k, v in weights.items()}
    return prefixed if len(prefixed.keys() & target.keys()) > len(weights.keys() & target.keys()) else weights


def _check_fits(weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path) -> None:
    """CheckpointError (one line) listing the keys ``weights`` lacks, the extra ones and the shapes
    that differ from ``target``'s."""
    missing = sorted(target.keys() - weights.keys())
    extra = sorted(weights.keys() - target.keys())
    shapes = [
        f"{k} ({_shape(weights[k])} there, {_shape(target[k])} here)"
        for k in sorted(weights.keys() & target.keys())
        if weights[k].shape != target[k].shape
    ]
    parts = [f"{what}: {_shorten(keys)}" for what, keys in
             (("missing", missing), ("unexpected", extra), ("other shapes", shapes)) if keys]
    if parts:
        raise CheckpointError(
            f"train.init_from: the weights of {str(path)!r} do not fit this network ({'; '.join(parts)}); "
            "start from a run of the same net and net.kwargs"
        )


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"
