"""The one construction site: from a config to the network, the JEM, the chain sampler (with
its replay buffer or this rank's shard of it), the objective, the optimiser and the data.

The Trainer, ``load_run`` and every workflow (eval, attack, sample, demo) build through these
functions; nothing else constructs these objects from a config.

``net.name`` is a registered net (``jem nets``) or an import path ``package.module:factory``
(any callable returning an nn.Module, like Lightning's ``class_path``): the run's config then
records how to rebuild the user's own network, and every command works on the run. Importing
that module runs its code, as importing any Python module does; the checkpoint itself is still
read with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import Config, ConfigError, OptimConfig
from .data import DataSplits, held_out_classes, load_data
from .energy import JEM
from .nets import create_net, list_nets
from .objective import IGNORE, HybridObjective
from .sam import SAM
from .sampling import PYLD, SGLD, ChainSampler, ReplayBuffer, shard_size
from .speed import fused_optimizer_kwargs
from .utils import DATA_RANGE, has_batch_norm


# -- the network -------------------------------------------------------------------------------
def is_import_path(name: str) -> bool:
    return ":" in name


def net_factory(name: str) -> Callable[..., nn.Module]:
    """The constructor behind ``net.name``: a registered net or ``package.module:factory``."""
    if not is_import_path(name):
        if name not in list_nets():
            raise ConfigError(
                f"config net.name: unknown net {name!r}; use one of {', '.join(list_nets())} "
                "or an import path package.module:factory"
            )
        return lambda **kw: create_net(name, **kw)
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"config net.name = {name!r}: cannot import module {module_name!r} ({e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"config net.name = {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"config net.name = {name!r}: {attr!r} is not callable")
    return fn


def net_parameters(name: str) -> list[str]:
    """The constructor's argument names (``**kwargs`` included as ``**``)."""
    fn = net_factory(name)
    if not is_import_path(name):
        from .nets import net_options

        return net_options(name)
    params = inspect.signature(fn).parameters.values()
    return [p.name if p.kind is not p.VAR_KEYWORD else "**" for p in params]


def energy_head(cfg: Config) -> bool:
    """Whether the JEM has its own energy head: ``net.energy_head``, except for a plain classifier
    (``train.clf_only``), which is the bare network (log p(x) = the logsumexp of its logits)."""
    return cfg.net.energy_head and not cfg.train.clf_only


def build_net(cfg: Config, shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The configured network; ``in_channels``, ``in_features``, ``n_classes`` and ``image_size``
    (and ``image_height``, for non-square images) are filled in from the data when the constructor
    takes them and the config does not set them.
    With an energy head (``energy_head(cfg)``) it is built with ``n_classes=0`` (a feature backbone)."""
    fn = net_factory(cfg.net.name)
    params = net_parameters(cfg.net.name)
    kwargs = dict(cfg.net.kwargs)
    filled = {
        "in_channels": shape[0],
        "in_features": math.prod(shape),
        "n_classes": 0 if energy_head(cfg) else n_classes,
        "image_size": shape[-1],
        "image_height": shape[-2] if len(shape) >= 3 else None,  # non-square images (nets that take it)
    }
    for key, value in filled.items():
        if key in params and (key not in kwargs or (key == "n_classes" and energy_head(cfg))):
            kwargs[key] = value
    try:
        net = fn(**kwargs)
    except (TypeError, ValueError) as e:
        hint = "; on the command line net.kwargs={} clears a recipe's net.kwargs" if cfg.net.kwargs else ""
        raise ConfigError(f"config net ({cfg.net.name!r} with net.kwargs {kwargs}): {e}{hint}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"config net.name = {cfg.net.name!r} returned {type(net).__name__}, not an nn.Module")
    return net


def build_jem(cfg: Config, shape: tuple[int, ...], n_classes: int, model: nn.Module | None = None) -> JEM:
    """The configured network (or ``model``, any classifier) as a JEM (energy head per config)."""
    if isinstance(model, JEM):
        return model
    net = model if model is not None else build_net(cfg, shape, n_classes)
    if not energy_head(cfg):
        return JEM(net)
    if getattr(net, "num_features", None) is None:
        raise ConfigError(
            f"config net.energy_head = true needs a backbone with a num_features attribute (timm's name for the "
            f"feature size); {cfg.net.name!r} has none"
        )
    return JEM(net, energy_head=True, n_classes=n_classes, residual=cfg.net.residual_energy)


# -- what a config implies for training, decided once ------------------------------------------
@dataclass(frozen=True)
class TrainingPlan:
    """What a training config implies, resolved in one place (``training_plan``); the trainer only
    wires the objects built from it.

    ``pyx``, ``px``, ``pxy``, ``energy_l2``: the objective's weights (p(x), p(x|y) and the energy
    penalty off for a plain classifier, ``train.clf_only``); ``sampler``: whether the run needs
    chains (a p(x) or p(x|y) term); ``separate_passes``: data and samples through separate forward
    passes (a net with batch norm, so the samples do not enter the data's batch statistics; under
    DDP both run in the wrapper's one forward); ``sync_bn``: batch norms convert to SyncBatchNorm
    (``train.sync_bn`` on a batch-norm net under DDP);
    ``ddp_unused_parameters``: an energy head that gets no gradient (no p(x) term) under DDP;
    ``augment``: (pad, flip) of the training batches' augmentation, None without; ``augment_px``:
    whether the p(x) term sees the augmented batch (else the un-augmented one, as SADA-JEM);
    ``labels_per_class``: semi-supervised, the labels kept per class (the rest become -100);
    ``chains``: the p(x) chains per step on this process (``sgld.chains`` split over the
    processes; None: one per data example);
    ``chain_mode``: the net's mode in the chains (``sgld.model_mode`` with ``auto`` resolved by
    ``chain_mode``: train for a net with batch norm); ``chain_warning``: why that mode is a risk
    (eval mode forced on a net with batch norm), logged at the start, or None."""

    pyx: float
    px: float
    pxy: float
    energy_l2: float
    sampler: bool
    separate_passes: bool
    ddp_unused_parameters: bool
    augment: tuple[int, bool] | None
    augment_px: bool
    labels_per_class: int | None
    chain_mode: str = "eval"
    chain_warning: str | None = None
    sync_bn: bool = False
    chains: int | None = None


def chain_mode(cfg: Config, jem: nn.Module | None) -> str:
    """The net's mode in the chains: ``sgld.model_mode``, with ``auto`` resolved to ``train`` for a
    net with batch norm (eval mode uses the running statistics of data, which samples far from the
    data do not share: the chains run away, the reference code's best-known failure) and ``eval``
    otherwise (or when ``jem`` is None)."""
    mode = cfg.sgld.model_mode
    if mode != "auto":
        return mode
    return "train" if jem is not None and has_batch_norm(jem) else "eval"


def training_plan(
    cfg: Config,
    jem: JEM | None = None,
    shape: tuple[int, ...] | None = None,
    *,
    world_size: int = 1,
    data_flip: bool = False,
) -> TrainingPlan:
    """Resolve ``cfg`` for training ``jem`` on inputs of ``shape`` on ``world_size`` processes
    (``jem`` None: the objective's weights only, no batch-norm or DDP decision; ``shape`` None: no
    augmentation). ``data_flip``: the data set's own horizontal-flip default (``data.flip`` null).
    Raises ConfigError for a combination that cannot train (clf_only without cross-entropy;
    SyncBatchNorm with p(x|y) chains on semi-supervised data, whose ranks may sample unequally).

    Args:
        cfg: the run's config.
        jem: the model to train (None: the objective's weights only, no batch-norm, chain-mode or
            DDP decision).
        shape: one input's shape, e.g. (C, H, W) (None: no augmentation decision).
        world_size: the number of training processes (default 1: no DDP).
        data_flip: the data set's own horizontal-flip default, used when ``data.flip`` is null
            (default False: no flips).
    """
    o, clf = cfg.objective, cfg.train.clf_only
    if clf and o.pyx == 0:
        raise ConfigError("config train.clf_only = true needs objective.pyx > 0")
    if not clf and o.energy_l2 > 0 and o.px == 0:  # it acts on the p(x) term's energies only
        raise ConfigError(
            f"config objective.energy_l2 = {o.energy_l2} penalises the energies of the p(x) term, which "
            "objective.px = 0 turns off: set objective.energy_l2 = 0, or objective.px > 0"
        )
    px, pxy = (0.0, 0.0) if clf else (o.px, o.pxy)
    sampler = px != 0 or pxy != 0
    separate = sampler and jem is not None and has_batch_norm(jem)  # (under DDP both passes are one forward)
    sync_bn = cfg.train.sync_bn and world_size > 1 and jem is not None and has_batch_norm(jem)
    if sync_bn and pxy != 0 and cfg.data.labels_per_class is not None:  # a rank without labels draws no chains
        raise ConfigError(
            "config train.sync_bn = true with objective.pxy > 0 and data.labels_per_class: ranks may sample "
            "unequal p(x|y) chains, which synchronised batch norm cannot run; turn one of them off"
        )
    d = cfg.data
    flip = d.flip if d.flip is not None else data_flip
    return TrainingPlan(
        pyx=o.pyx,
        px=px,
        pxy=pxy,
        energy_l2=0.0 if clf else o.energy_l2,
        sampler=sampler,
        separate_passes=separate,
        # an energy head gets no gradient without a p(x) term, or on the steps that skip it
        ddp_unused_parameters=world_size > 1 and jem is not None and jem.energy_head is not None
        and (px == 0 or o.px_from_epoch > 0 or o.px_every > 1),
        augment=(max(1, shape[-1] // 8), bool(flip)) if d.augment and shape is not None else None,
        augment_px=d.augment_px,
        labels_per_class=d.labels_per_class,
        sync_bn=sync_bn,
        chains=None if cfg.sgld.chains is None else max(1, cfg.sgld.chains // world_size),
        chain_mode=chain_mode(cfg, jem),
        chain_warning=(
            "sgld.model_mode = eval on a net with batch norm: the chains use the running statistics of the data "
            "and tend to run away (samples far outside the data range); sgld.model_mode=auto (the default) runs "
            "them in train mode" if sampler and jem is not None and has_batch_norm(jem)
            and cfg.sgld.model_mode == "eval" else None
        ),
    )


# -- sampling ----------------------------------------------------------------------------------
def build_sgld(cfg: Config, mode: str | None = None) -> SGLD | PYLD:
    """The chains' sampler: SGLD (``sgld.kind = sgld``) or JEM++'s proximal Langevin (``pyld``;
    ``sgld.grad_clamp`` null means 0.01 there, ``sgld.step_size`` is not used). ``mode``: the
    net's mode in the chains as resolved by ``chain_mode`` (None: ``sgld.model_mode``, auto = eval)."""
    s = cfg.sgld
    mode = mode if mode is not None else chain_mode(cfg, None)
    clamp = DATA_RANGE if s.clamp else None
    if s.kind == "pyld":
        grad_clamp = 0.01 if s.grad_clamp is None else s.grad_clamp
        return PYLD(s.steps, s.inner_steps, s.inner_step_size, s.noise, clamp, grad_clamp, s.first_layer,
                    mode=mode)
    return SGLD(s.steps, s.step_size, s.noise, clamp, s.grad_clamp, mode=mode)


def buffer_size(cfg: Config, n_classes: int, world_size: int = 1) -> int:
    """Entries of one buffer (or of one rank's shard): ``buffer.size`` in per-class blocks."""
    if world_size > 1:
        return shard_size(cfg.buffer.size, n_classes, world_size)
    size = cfg.buffer.size - cfg.buffer.size % n_classes
    if size < n_classes:
        raise ConfigError(f"config buffer.size = {cfg.buffer.size} is smaller than the {n_classes} classes")
    return size


def build_sampler(
    cfg: Config,
    shape: tuple[int, ...],
    n_classes: int,
    *,
    device: torch.device | str = "cpu",
    world_size: int = 1,
    fit: tuple[torch.Tensor, torch.Tensor] | None = None,
    buffer: bool = True,
    mode: str | None = None,
) -> ChainSampler:
    """The chain sampler: SGLD with a replay buffer (this rank's shard of ``buffer.size`` when
    ``world_size`` > 1), or fresh chains with ``buffer=False``. ``fit`` (x, y): the training data,
    for ``buffer.init=gaussian`` or ``gaussian_full``. ``mode``: the chains' resolved mode
    (``chain_mode(cfg, jem)``; None: ``sgld.model_mode`` with auto = eval).

    Args:
        cfg: the run's config (``sgld.*`` and ``buffer.*``).
        shape: one input's shape, e.g. (C, H, W): the chains' states are (N, *shape).
        n_classes: the number of classes (the buffer's per-class blocks).
        device: where the buffer lives (default "cpu"; it follows the model it samples for).
        world_size: the number of processes; > 1 keeps this rank's shard of ``buffer.size``
            (default 1: the whole buffer).
        fit: the training data (x (N, *shape) in [-1, 1], y (N,) int64) for ``buffer.init=gaussian``
            or ``gaussian_full`` (default None: not needed for a uniform init).
        buffer: False for fresh chains with no replay buffer (default True).
        mode: the chains' resolved model mode, "eval" or "train" (``chain_mode(cfg, jem)``; default
            None: ``sgld.model_mode``, with auto read as eval).
    """
    sgld = build_sgld(cfg, mode)
    if not buffer:
        return ChainSampler(sgld, shape=shape)
    size = buffer_size(cfg, n_classes, world_size)
    replay = ReplayBuffer(size, shape, n_classes, cfg.buffer.reinit_freq, "uniform", device)
    b = cfg.buffer
    if b.init in ("gaussian", "gaussian_full") and fit is not None:
        replay.fit_gaussian(*fit, full=b.init == "gaussian_full", rank=b.init_rank, full_max_dim=b.init_full_max_dim)
    return ChainSampler(sgld, replay)


def build_training_sampler(
    cfg: Config,
    plan: TrainingPlan,
    shape: tuple[int, ...],
    *,
    n_classes: int,
    device: torch.device | str,
    world_size: int = 1,
    train_xy: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ChainSampler | None:
    """The sampler a training run needs (None when ``plan`` has no p(x) / p(x|y) term);
    ``train_xy``: the in-memory training data, needed by ``buffer.init=gaussian`` / ``gaussian_full``.

    Args:
        cfg: the run's config.
        plan: the run's ``training_plan`` (None is returned when it has no p(x) / p(x|y) term).
        shape: one input's shape, e.g. (C, H, W).
        n_classes: the number of classes.
        device: the training device (where the buffer lives).
        world_size: the number of processes (default 1; > 1: this rank's shard of the buffer).
        train_xy: the in-memory training data (x (N, *shape), y (N,)), needed by
            ``buffer.init=gaussian`` / ``gaussian_full`` (default None).
    """
    if not plan.sampler:
        return None
    gaussian = cfg.buffer.init in ("gaussian", "gaussian_full")
    if gaussian and train_xy is None:
        raise ConfigError(f"config buffer.init = {cfg.buffer.init} needs in-memory training data (a DataSplits)")
    fit = train_xy if gaussian else None
    return build_sampler(cfg, shape, n_classes, device=device, world_size=world_size, fit=fit, mode=plan.chain_mode)


def build_objective(cfg: Config, sampler: ChainSampler | None, plan: TrainingPlan | None = None) -> HybridObjective:
    """The hybrid loss with ``plan``'s weights (default: ``training_plan(cfg)``, one pass for data
    and samples; cross-entropy alone for ``train.clf_only``)."""
    plan = plan if plan is not None else training_plan(cfg)
    return HybridObjective(
        sampler if plan.sampler else None,
        pyx=plan.pyx,
        px=plan.px,
        pxy=plan.pxy,
        data_noise=cfg.objective.data_noise,
        energy_l2=plan.energy_l2,
        separate_passes=plan.separate_passes,
        n_chains=plan.chains,
    )


# -- optimisation ------------------------------------------------------------------------------
def build_optimizer(
    cfg: Config, params: Iterable[nn.Parameter], device: torch.device | str
) -> torch.optim.Optimizer | SAM:
    """Adam or SGD (fused kernels where this torch has them), wrapped in SAM / ASAM when
    ``optim.sam_rho`` > 0."""
    o = cfg.optim
    params = [p for p in params if p.requires_grad]
    fused = fused_optimizer_kwargs(device)  # CUDA, and CPU since torch 2.4
    try:
        if o.name == "adam":
            opt = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **fused)
        else:
            opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, **fused)
    except ValueError as e:
        raise ConfigError(f"config optim ({o.name}, lr {o.lr}, weight_decay {o.weight_decay}): {e}") from None
    return SAM(opt, o.sam_rho, o.sam_adaptive) if o.sam_rho > 0 else opt


def learning_rate(o: OptimConfig, step: int, epoch: int, scale: float = 1.0) -> float:
    """Base lr x warm-up ramp x step decay x ``scale`` (the divergence back-off)."""
    warm = min(1.0, (step + 1) / o.warmup_iters) if o.warmup_iters > 0 else 1.0
    decay = o.decay_rate ** sum(epoch >= e for e in o.decay_epochs)
    return o.lr * warm * decay * scale


# -- data --------------------------------------------------------------------------------------
def build_data(cfg: Config, **options: Any) -> DataSplits:
    """The run's data set, as configured (classes, limit and image size included)."""
    d = cfg.data
    return load_data(
        d.name,
        d.root,
        d.val_size,
        split_seed=d.split_seed,
        classes=d.classes,
        limit=d.limit,
        **_data_options(cfg),
        **options,
    )


def _data_options(cfg: Config) -> dict[str, Any]:
    """The loader's options a config sets: ``size`` from data.image_size."""
    size = cfg.data.image_size
    return {} if size is None else {"size": size[0] if len(size) == 1 else tuple(size)}


def held_out_data(cfg: Config) -> torch.Tensor | None:
    """For a run trained on ``data.classes``: the test images of the other classes, else None."""
    d = cfg.data
    if d.classes is None:
        return None
    data = load_data(d.name, d.root, d.val_size, split_seed=d.split_seed, **_data_options(cfg))
    return held_out_classes(data, d.classes)


def semi_supervised_labels(y: torch.Tensor, per_class: int | None, n_classes: int, seed: int) -> torch.Tensor:
    """``y`` with all but ``per_class`` labels of each class (chosen by ``seed``) set to -100,
    the objective's mark of an unlabelled example; ``y`` itself when ``per_class`` is None."""
    if per_class is None:
        return y
    keep = torch.zeros(len(y), dtype=torch.bool)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    y_cpu = y.cpu()
    for c in range(n_classes):
        idx = perm[y_cpu[perm] == c]
        if len(idx) < per_class:
            raise ConfigError(
                f"config data.labels_per_class = {per_class} but class {c} has only {len(idx)} training images"
            )
        keep[idx[:per_class]] = True
    return torch.where(keep.to(y.device), y, torch.full_like(y, IGNORE))


def check_rebuildable(net: dict[str, str] | None, model: nn.Module | None, where: object) -> None:
    """A clear error when a run's network was a Python object and no ``model`` is given to rebuild it."""
    if model is None and net is not None and net.get("source") == "object":
        raise ConfigError(
            f"run {str(where)!r} was trained on a network object passed in Python (class {net['class']}); pass "
            "model= (a fresh instance) to load or resume it, or train with net.name=package.module:factory so "
            "that every command can rebuild the network"
        )
