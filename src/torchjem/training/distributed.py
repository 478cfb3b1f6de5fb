"""Data-parallel training with torch.distributed: joining torchrun's process group, rank helpers,
the few collectives the trainer needs, the DDP wrapper, per-rank RNG states, and a clean shutdown
(the layout of the replay-buffer shards is torchjem.sampling's).

Launch with ``torchrun --nproc_per_node=N -m torchjem.cli train ...`` (see docs/distributed.md).
Without torchrun (``WORLD_SIZE`` unset or 1) nothing here creates a process group and every
helper is a no-op, so the single-process path pays nothing.

Conventions of a distributed run:
- ``train.batch_size`` is the *global* batch: each of the W ranks trains on ``batch_size / W``
  images and runs as many SGLD chains, so a run's steps, learning-rate schedule and epochs are
  the same on any number of processes (and a checkpoint resumes on another world size).
- Every rank draws its own noise (data noise, augmentation, SGLD, buffer re-initialisation)
  from its own seed (:func:`rank_seed`) and keeps its own replay-buffer shard of
  ``buffer.size / W`` chains, laid out in per-class blocks like the single-process buffer.
- Backends: NCCL for CUDA tensors (gradients), gloo for CPU tensors and Python objects
  (``"cpu:gloo,cuda:nccl"`` on GPUs); gloo alone on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import rng_state, set_rng_state
from ..energy import JEM
from ..errors import InputError
from ..objective import joint_passes
from ..utils import resolve_device

log = logging.getLogger("torchjem")
T = TypeVar("T")


# -- environment and ranks -----------------------------------------------------------------
def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """``RANK`` as torchrun sets it (0 when unset); valid before the group exists."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """``LOCAL_RANK``: this process's index on its node, hence its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes logs, metrics and checkpoints."""
    return get_rank() == 0


def rank_seed(seed: int, rank: int) -> int:
    """This rank's seed: ``seed`` itself on rank 0 (so rank 0 draws what a single process would),
    distinct values elsewhere."""
    return seed + 104_729 * rank


# -- set-up and shutdown ---------------------------------------------------------------------
def _rank_device(device: str) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for auto/cuda when CUDA is there, else CPU."""
    if device.startswith("cuda:"):
        raise InputError(
            f"device {device!r}: under torchrun each process uses cuda:LOCAL_RANK; "
            "set device=cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    n = torch.cuda.device_count()
    if local_rank() >= n:
        raise InputError(f"LOCAL_RANK={local_rank()} but this node has only {n} GPU(s); lower --nproc_per_node")
    return torch.device("cuda", local_rank())


def init_distributed(
    device: str = "auto",
    *,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    timeout_s: float = 1800.0,
) -> torch.device:
    """Join the process group (once) and return this rank's device.

    ``rank``/``world_size``/``init_method`` default to torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` via ``env://``). With a world size of 1 no
    group is created and the device is resolved as in a single-process run. On CUDA the group
    is ``cpu:gloo,cuda:nccl`` (gradients over NCCL, objects and barriers over gloo) and the
    rank's GPU becomes the current device; on CPU it is gloo.

    Args:
        device: auto | cpu | cuda | cuda:N (default auto).
        init_method: the rendezvous URL (default None: torchrun's ``env://``).
        rank: this process's rank (default None: ``RANK``).
        world_size: the number of processes (default None: ``WORLD_SIZE``, 1 without it).
        timeout_s: the process group's timeout in seconds (default 1800).
    """
    world = env_world_size() if world_size is None else world_size
    if world <= 1 and not is_distributed():
        return resolve_device(device)
    dev = _rank_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=init_method or "env://",
            rank=env_rank() if rank is None else rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        log.info("process group: rank %d of %d, backend %s, device %s", get_rank(), world, backend, dev)
    elif dev.type == "cuda" and "nccl" not in str(dist.get_backend()):
        raise InputError(f"the process group uses {dist.get_backend()!r}; device {dev} needs NCCL")
    return dev


def shutdown_distributed(clean: bool = True) -> None:
    """Leave the process group: a barrier (when ``clean``, so no rank tears down its sockets
    while another still talks to it) and ``destroy_process_group`` while the interpreter is
    alive (gloo's worker threads crash with SIGABRT when it is left to interpreter exit)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if clean and dist.get_world_size() > 1:
            dist.barrier()
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session() -> Iterator[None]:
    """Around a command: on the way out, leave any process group that was joined inside,
    with a barrier on success and without one on an error (the other ranks may be gone)."""
    try:
        yield
    except BaseException:
        shutdown_distributed(clean=False)
        raise
    shutdown_distributed(clean=True)


# -- collectives (no-ops in a single process) ------------------------------------------------
def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (SUM / W: gloo has no AVG)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max_int(value: int) -> int:
    """The largest ``value`` over ranks (a CPU tensor: gloo, also beside NCCL); ``value`` alone
    in a single process. The ranks' agreement on a stop signal (training/interrupt.py)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def flagged_ranks(flag: bool, device: torch.device | str = "cpu") -> list[int]:
    """The ranks on which ``flag`` is true (every rank gets the same list)."""
    if not is_distributed():
        return [0] if flag else []
    flags = torch.zeros(dist.get_world_size(), device=device)
    flags[dist.get_rank()] = float(flag)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return [r for r, f in enumerate(flags.tolist()) if f]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_objects(obj: T) -> list[T] | None:
    """Every rank's ``obj`` in rank order on rank 0; None elsewhere."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_tensors(t: torch.Tensor) -> list[torch.Tensor] | None:
    """Every rank's ``t`` (same shape everywhere) on rank 0, on the CPU; None elsewhere.

    Sent from the CPU over gloo, so that a large replay buffer is not duplicated W times in
    rank 0's GPU memory."""
    if not is_distributed():
        return [t.detach().cpu()]
    t = t.detach().cpu().contiguous()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())] if dist.get_rank() == 0 else None
    dist.gather(t, out, dst=0)
    return out


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result (or its exception) broadcast to every rank.

    For reading a checkpoint that only rank 0's node may see; every rank raises together."""
    if not is_distributed():
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # re-raised on every rank below
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


# -- the model -------------------------------------------------------------------------------
class _JointOutputs(nn.Module):
    """What DDP wraps: a JEM whose forward returns ``(logits, log p(x))`` of the data and the
    samples, in one pass or (batch norm) two, so that the objective's passes are one DDP forward:
    DDP's gradient hooks then fire once per parameter, and a batch-norm JEM trains data-parallel."""

    def __init__(self, jem: JEM) -> None:
        super().__init__()
        self.jem = jem

    def forward(
        self, x: torch.Tensor, samples: torch.Tensor | None = None, separate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return joint_passes(self.jem, x, samples, separate)


class JEMDistributedDataParallel(DistributedDataParallel):
    """DistributedDataParallel over a JEM with the JEM methods the objective calls.

    ``joint_passes``, ``joint`` and ``logits`` run through DDP (gradients are averaged over
    ranks); ``jem`` is the underlying model (``as_jem`` returns it), on which the SGLD chains run
    without DDP (with SyncBatchNorm in train-mode chains, the batch statistics are still shared).
    """

    @property
    def jem(self) -> JEM:
        return self.module.jem

    def joint_passes(
        self, x: torch.Tensor, samples: torch.Tensor | None, separate: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x, samples, separate)

    def joint(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[0]

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[1]


def wrap_ddp(jem: JEM, device: torch.device, find_unused_parameters: bool = False) -> JEMDistributedDataParallel:
    """DDP over ``jem`` on this rank's device (parameters and buffers broadcast from rank 0 here,
    buffers again at each forward)."""
    ids = [device.index] if device.type == "cuda" else None
    return JEMDistributedDataParallel(
        _JointOutputs(jem),
        device_ids=ids,
        output_device=ids[0] if ids else None,
        find_unused_parameters=find_unused_parameters,
    )


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: the sum over ranks of the output's gradients (each
    rank's input enters every rank's output)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch (every rank's slice),
    as ``torch.nn.SyncBatchNorm``, which runs on CUDA only; this one runs on any backend (gloo
    on the CPU, NCCL on GPUs) with one differentiable all-reduce of 2C + 1 numbers per call.
    Outside a process group, and in eval mode, it is plain batch norm; its state_dict is batch
    norm's (checkpoints load into the plain net). Every rank must run the same train-mode passes
    (the trainer's steps and chains do)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        c, dims = x.shape[1], [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        # sums around a shift every rank shares (the running mean) keep E[x^2] - E[x]^2 accurate
        shift = self.running_mean.detach().float() if self.running_mean is not None else x.new_zeros(c).float()
        d = x.float() - shift.view(shape)
        count = d.new_full((1,), x.numel() // c, dtype=torch.float64)  # exact beyond 2^24 values
        total = _SumOverRanks.apply(torch.cat([torch.cat([d.sum(dims), d.pow(2).sum(dims)]).double(), count]))
        n = total[-1]
        m1 = total[:c] / n
        mean, var = (shift + m1).float(), (total[c : 2 * c] / n - m1.pow(2)).clamp_min(0).float()
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=f)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm replaced by :class:`SyncBatchNorm` in place (the same
    parameter objects, so an optimiser built before or after sees the same tensors)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, key, getattr(child, key))
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batch_norm(child)
    return module


# -- per-rank RNG state ------------------------------------------------------------------------
def rank_rng_state(device: torch.device) -> dict[str, Any]:
    """This rank's RNGs: CPU torch, numpy, python, and its own GPU's generator only."""
    state = rng_state()
    state.pop("cuda", None)
    if device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rank_rng_state(state: dict[str, Any], device: torch.device) -> None:
    set_rng_state({k: v for k, v in state.items() if k != "cuda_device"})
    if device.type == "cuda" and "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"].cpu(), device)
