"""Typed run configuration: dataclasses, YAML files, dotted command-line overrides, validation."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError

log = logging.getLogger("torchjem")
CONFIG_DIR = Path(__file__).parent / "configs"  # the shipped recipes
MAY_BE_INFINITE = {"divergence.max_loss", "divergence.max_energy", "divergence.max_gap",
                   "divergence.max_norm_ratio"}  # inf: that check is off


@dataclass
class DataConfig:
    name: str = "digits"  # built-in data set name, or a reader name (see torchjem.data)
    root: str | None = None  # directory or file for data read from disk
    val_size: float = 0.1  # fraction (< 1) or count (>= 1) of training images held out
    split_seed: int = 0  # seed of the train/validation split, independent of the run seed
    labels_per_class: int | None = None  # semi-supervised: labels kept per class (rest p(x) only)
    classes: list[int] | None = None  # train on these classes only (others become an OOD set)
    augment: bool = False  # pad-and-crop (+ flip where the data set allows it) on training batches
    augment_px: bool = True  # the p(x) term sees the augmented batch too (false: un-augmented, as SADA-JEM)
    flip: bool | None = None  # horizontal flip; None = the data set's default
    limit: int | None = None  # use at most this many training images (quick runs)
    image_size: list[int] | None = None  # image_folder: resize every image on load to this side, or [height, width]


@dataclass
class NetConfig:
    name: str = "convnet"  # a registered net (see `jem nets`) or an import path package.module:factory
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the net's constructor
    energy_head: bool = False  # separate scalar energy head instead of logsumexp of the logits (not with clf_only)
    residual_energy: bool = False  # with energy_head: log p(x) = logsumexp of the logits (class head frozen) + the head


@dataclass
class SGLDConfig:
    steps: int = 20  # SGLD steps per training iteration
    step_size: float = 1.0  # alpha: x += alpha * d log p(x) / dx (sgld)
    noise: float = 0.01  # sigma of the Gaussian noise added each step
    clamp: bool = False  # clamp samples to the data range [-1, 1]
    grad_clamp: float | None = None  # clamp the input gradient elementwise (JEM++); pyld: null means 0.01
    kind: str = "sgld"  # sgld | pyld (JEM++'s proximal Langevin: `steps` outer steps, inner ones via the first layer)
    inner_steps: int = 5  # pyld: inner steps per outer step
    inner_step_size: float = 0.2  # pyld: step of the inner steps (JEM++'s pyld_lr)
    first_layer: str | None = None  # pyld: module path of the first layer (e.g. net.conv1); null: found by a probe
    model_mode: str = "auto"  # auto | eval | train: the net's mode in the chains (auto: train with batch norm)
    chains: int | None = None  # chains run per training step (null: one per data example, the paper's)
    steps_by_epoch: list[int] | None = None  # K per epoch ([10, 5, 5]: 10 in epoch 0, then 5; the last repeats)


@dataclass
class BufferConfig:
    size: int = 10000  # replay buffer entries (rounded down to a multiple of the classes)
    reinit_freq: float = 0.05  # fraction of chains restarted from fresh noise
    init: str = "uniform"  # uniform | gaussian (per-class diagonal Gaussian) | gaussian_full (full covariance, JEM++)
    init_rank: int = 256  # gaussian_full above init_full_max_dim values: top principal directions kept + diagonal
    init_full_max_dim: int = 1024  # gaussian_full: full covariance (C*D^2 floats) up to this many values per example


@dataclass
class ObjectiveConfig:
    pyx: float = 1.0  # weight of log p(y|x) (cross-entropy)
    px: float = 1.0  # weight of log p(x)
    pxy: float = 0.0  # weight of log p(x|y)
    data_noise: float = 0.03  # Gaussian noise sigma added to data inputs
    energy_l2: float = 0.0  # weight of the L2 penalty on energies
    energy_anchor: str = "zero"  # zero | start: energy_l2 holds log p(x) near 0, or near the data's at p(x)'s start
    px_from_epoch: int = 0  # the p(x) / p(x|y) terms start at this epoch (before it: classifier steps, no chains)
    px_every: int = 1  # the p(x) / p(x|y) terms on every n-th step only (the others: classifier steps)
    px_ramp_steps: int = 0  # their weights rise linearly from 0 over this many steps after they start


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 1e-4  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam only
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # L2 weight decay
    warmup_iters: int = 1000  # linear learning-rate ramp over these iterations
    decay_epochs: list[int] = field(default_factory=lambda: [160, 180])  # lr step decay at these epochs
    decay_rate: float = 0.3  # lr multiplier at each decay epoch
    sam_rho: float = 0.0  # sharpness-aware minimisation radius (SADA-JEM: 2 with sam_adaptive); 0: off
    sam_adaptive: bool = False  # ASAM: the neighbourhood scaled by |w| (Kwon et al. 2021)
    sam_every: int = 1  # SAM's second pass on every n-th step only (the others: plain steps)


@dataclass
class TrainConfig:
    epochs: int = 150  # passes over the training set
    max_steps: int | None = None  # stop after this many iterations (overrides epochs)
    batch_size: int = 64  # images per iteration (and SGLD chains per iteration)
    clf_only: bool = False  # train the same network as a plain classifier (the baseline)
    eval_every: int = 1  # validation every N epochs
    save_every: int = 10  # keep a checkpoint every N epochs (besides last and best)
    checkpoint_every: int | None = None  # also write last every N iterations (mid-epoch; resumes at that batch)
    log_every: int = 20  # iterations between metric lines (and host synchronisation)
    amp: str = "none"  # none | bf16: bf16 autocast for the network (log-sum-exp, energies and losses in fp32)
    channels_last: bool = False  # NHWC weights and activations (faster convolutions on CUDA tensor cores)
    compile: bool = False  # torch.compile the network (first steps are slow while it compiles)
    sync_bn: bool = False  # under torchrun: batch-norm statistics over the global batch (every rank's slice)
    tensorboard: bool = False  # also write metrics, validations, events and epoch sample grids to RUN_DIR/tb
    init_from: str | None = None  # start from these weights: a run directory, a `jem export` folder or a .safetensors


@dataclass
class DivergenceConfig:
    max_loss: float = 1e8  # |loss| above this is divergence (the reference code's threshold)
    max_energy: float = 1e5  # |mean energy| of data or samples above this is divergence
    max_gap: float = 1e3  # |E(samples) - E(data)| above this is divergence: runaway chains (collapses max_loss misses)
    max_retries: int = 3  # rewinds before giving up
    max_out_of_range: float = 0.5  # chain health: fraction of sample values beyond [-1.1, 1.1] above this ...
    max_norm_ratio: float = 4.0  # ... or mean sample norm / mean data norm above this ...
    health_checks: int = 3  # ... at this many checks in a row is divergence (runaway chains)
    lr_factor: float = 0.5  # multiply the learning rate by this at each rewind (1 = keep)
    step_factor: float = 0.5  # multiply the SGLD step size (pyld: inner step) by this at each rewind (1 = keep)
    check_every: int = 10  # iterations between checks; a check synchronises host and device
    snapshot_every: int = 100  # iterations between in-memory good states to rewind to


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    net: NetConfig = field(default_factory=NetConfig)
    sgld: SGLDConfig = field(default_factory=SGLDConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> Config:
        """Raise ConfigError naming the first invalid value; returns self."""
        checks = [
            ("data.val_size", self.data.val_size >= 0, ">= 0"),
            ("data.labels_per_class", self.data.labels_per_class is None or self.data.labels_per_class > 0, "> 0"),
            ("data.limit", self.data.limit is None or self.data.limit > 0, "> 0"),
            (
                "data.image_size",
                self.data.image_size is None or (len(self.data.image_size) in (1, 2) and min(self.data.image_size) > 0),
                "a side or [height, width], > 0",
            ),
            ("sgld.steps", self.sgld.steps >= 0, ">= 0"),
            ("sgld.step_size", self.sgld.step_size > 0, "> 0"),
            ("sgld.noise", self.sgld.noise >= 0, ">= 0"),
            ("sgld.grad_clamp", self.sgld.grad_clamp is None or self.sgld.grad_clamp > 0, "> 0"),
            ("sgld.kind", self.sgld.kind in ("sgld", "pyld"), "sgld or pyld"),
            ("sgld.inner_steps", self.sgld.inner_steps >= 1, ">= 1"),
            ("sgld.inner_step_size", self.sgld.inner_step_size > 0, "> 0"),
            (
                "sgld.first_layer",
                self.sgld.first_layer is None or bool(self.sgld.first_layer.strip()),
                "a module path such as net.conv1, or null",
            ),
            ("sgld.model_mode", self.sgld.model_mode in ("auto", "eval", "train"), "auto, eval or train"),
            ("sgld.chains", self.sgld.chains is None or self.sgld.chains >= 1, ">= 1, or null (one per example)"),
            (
                "sgld.steps_by_epoch",
                self.sgld.steps_by_epoch is None or (len(self.sgld.steps_by_epoch) > 0
                                                     and min(self.sgld.steps_by_epoch) >= 0),
                "a non-empty list of step counts >= 0, or null",
            ),
            ("objective.px_from_epoch", self.objective.px_from_epoch >= 0, ">= 0"),
            ("objective.energy_anchor", self.objective.energy_anchor in ("zero", "start"), "zero or start"),
            ("objective.px_every", self.objective.px_every >= 1, ">= 1"),
            ("objective.px_ramp_steps", self.objective.px_ramp_steps >= 0, ">= 0"),
            ("optim.sam_every", self.optim.sam_every >= 1, ">= 1"),
            ("train.init_from", self.train.init_from is None or bool(self.train.init_from.strip()),
             "a run directory, an export folder or a .safetensors file, or null"),
            ("buffer.size", self.buffer.size > 0, "> 0"),
            ("buffer.reinit_freq", 0 <= self.buffer.reinit_freq <= 1, "in [0, 1]"),
            (
                "buffer.init",
                self.buffer.init in ("uniform", "gaussian", "gaussian_full"),
                "uniform, gaussian or gaussian_full",
            ),
            ("buffer.init_rank", self.buffer.init_rank >= 1, ">= 1"),
            ("buffer.init_full_max_dim", self.buffer.init_full_max_dim >= 1, ">= 1"),
            ("objective.pyx", self.objective.pyx >= 0, ">= 0"),
            ("objective.px", self.objective.px >= 0, ">= 0"),
            ("objective.pxy", self.objective.pxy >= 0, ">= 0"),
            ("objective.data_noise", self.objective.data_noise >= 0, ">= 0"),
            ("objective.energy_l2", self.objective.energy_l2 >= 0, ">= 0"),
            ("optim.name", self.optim.name in ("adam", "sgd"), "adam or sgd"),
            ("optim.lr", self.optim.lr > 0, "> 0"),
            (
                "optim.betas",
                len(self.optim.betas) == 2 and all(0 <= b < 1 for b in self.optim.betas),
                "two values in [0, 1)",
            ),
            ("optim.warmup_iters", self.optim.warmup_iters >= 0, ">= 0"),
            ("optim.decay_rate", 0 < self.optim.decay_rate <= 1, "in (0, 1]"),
            ("train.epochs", self.train.epochs > 0, "> 0"),
            ("train.max_steps", self.train.max_steps is None or self.train.max_steps > 0, "> 0"),
            ("train.batch_size", self.train.batch_size > 0, "> 0"),
            ("train.eval_every", self.train.eval_every > 0, "> 0"),
            ("train.save_every", self.train.save_every > 0, "> 0"),
            ("train.checkpoint_every", self.train.checkpoint_every is None or self.train.checkpoint_every > 0, "> 0"),
            ("train.log_every", self.train.log_every > 0, "> 0"),
            ("train.amp", self.train.amp in ("none", "bf16"), "none or bf16"),
            ("divergence.max_retries", self.divergence.max_retries >= 0, ">= 0"),
            ("divergence.max_loss", self.divergence.max_loss > 0, "> 0 (inf: no loss check)"),
            ("divergence.max_energy", self.divergence.max_energy > 0, "> 0 (inf: no energy check)"),
            ("divergence.max_gap", self.divergence.max_gap > 0, "> 0 (inf: no energy-gap check)"),
            ("optim.weight_decay", self.optim.weight_decay >= 0, ">= 0"),
            ("divergence.max_out_of_range", 0 < self.divergence.max_out_of_range <= 1, "in (0, 1] (1: no range check)"),
            ("divergence.max_norm_ratio", self.divergence.max_norm_ratio > 0, "> 0 (inf: no norm-ratio check)"),
            ("divergence.health_checks", self.divergence.health_checks >= 1, ">= 1"),
            ("optim.sam_rho", self.optim.sam_rho >= 0, ">= 0 (0: off)"),
            ("optim.momentum", 0 <= self.optim.momentum < 1, "in [0, 1)"),
            ("divergence.lr_factor", 0 < self.divergence.lr_factor <= 1, "in (0, 1]"),
            ("divergence.step_factor", 0 < self.divergence.step_factor <= 1, "in (0, 1]"),
            ("divergence.check_every", self.divergence.check_every > 0, "> 0"),
            ("divergence.snapshot_every", self.divergence.snapshot_every > 0, "> 0"),
            (
                "device",
                self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "auto, cpu, cuda or cuda:N",
            ),
        ]
        for section in fields(self):
            value = getattr(self, section.name)
            for f in fields(value) if dataclasses.is_dataclass(value) else []:
                v, key = getattr(value, f.name), f"{section.name}.{f.name}"
                if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and key not in MAY_BE_INFINITE)):
                    raise ConfigError(f"config {key} = {v!r} is invalid: expected a finite number")
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"config {key} = {get_value(self, key)!r} is invalid: expected {expected}")
        if self.objective.pyx == 0 and self.objective.px == 0 and self.objective.pxy == 0:
            raise ConfigError("config objective: every loss weight is 0; set pyx, px or pxy > 0")
        if self.net.residual_energy and not self.net.energy_head:
            raise ConfigError("config net.residual_energy = true needs net.energy_head = true (the residual is "
                              "that head)")
        if self.objective.pxy > 0 and self.net.energy_head:
            raise ConfigError("config objective.pxy > 0 needs net.energy_head = false (p(x|y) uses the logits)")
        return self


def get_value(cfg: Any, dotted: str) -> Any:
    """The value of a dotted key (``optim.lr``, ``net.kwargs.width``) in a Config."""
    for part in dotted.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Coerce a YAML/CLI value to the field's type, or raise ConfigError."""
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"config {key} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_convert(v, args[0], key) for v in value] if args else list(value)
    if origin is dict or hint is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"config {key} expects a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config {key} expects true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"config {key} expects a number, got {value!r}")
        try:
            number = float(value) if hint is float else value
            if hint is int:
                if isinstance(value, str):
                    number = float(value)
                if float(number) != int(float(number)):
                    raise ValueError
                number = int(float(number))
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config {key} expects {hint.__name__} (finite), got {value!r}") from None
        if math.isnan(number) or (math.isinf(number) and key not in MAY_BE_INFINITE):
            raise ConfigError(f"config {key} expects a finite number, got {value!r}")
        return number
    if hint is str:
        return str(value)
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config option {full!r}{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config {full} is a section; give a mapping, not {value!r}")
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _convert(value, hints[key], full))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.epochs=5', 'net.kwargs.width=32'] -> nested dict (values parsed as YAML). Only the
    command line's KEY=VALUE strings come through here; code passes values as dicts (``nest``)."""
    flat: list[tuple[str, Any]] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
        flat.append((key.strip(), value))
    return nest(flat)


def nest(values: dict[str, Any] | list[tuple[str, Any]]) -> dict[str, Any]:
    """Dotted keys and typed values as the nested dict ``load_config`` takes:
    ``{"optim.lr": 0.1, "seed": 2}`` -> ``{"optim": {"lr": 0.1}, "seed": 2}`` (later pairs win)."""
    nested: dict[str, Any] = {}
    for key, value in values.items() if isinstance(values, dict) else values:
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}={value!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return nested


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values in ``extra`` win."""
    out = dict(base)
    for k, v in extra.items():
        # (an empty mapping replaces: net.kwargs={} clears a recipe's net.kwargs)
        out[k] = merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """Build a validated Config from defaults (or ``base``), a YAML file or the name of a shipped
    recipe (``"digits_demo"``, see ``jem recipes``), and overrides (a nested dict, or KEY=VALUE strings)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = resolve_recipe(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
        values = loaded
    values = _drop_run_path(values, f"config file {str(path)!r}")
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        if "out" in extra:
            raise ConfigError(
                "out is not a config key: the run directory is an argument (jem train --out DIR, Trainer(cfg, out=DIR))"
            )
        values = merge(values, extra)
    cfg = from_dict(base.to_dict()) if base is not None else Config()
    _apply(cfg, values)
    return cfg.validate()


def resolve_recipe(name: str | Path) -> Path:
    """A config file's path, or that of the recipe shipped under this name (torchjem/configs)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.stem}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {str(name)!r} does not exist, and no recipe has that name ({names})")


def from_dict(values: dict[str, Any]) -> Config:
    """Config from a plain dict (as saved in a run directory), validated. The ``out`` key that
    runs saved before the run's path left the config is ignored."""
    cfg = Config()
    _apply(cfg, without_run_path(values))
    return cfg.validate()


def without_run_path(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict without ``out``: the run directory, a config key in files written before it
    became an argument (saved configs, checkpoints, exports)."""
    return {k: v for k, v in values.items() if k != "out"}


def _drop_run_path(values: dict[str, Any], where: str) -> dict[str, Any]:
    """A config file's values without ``out``, with a warning that it is ignored."""
    if "out" in values:
        log.warning("%s: ignoring 'out: %s'; the run directory is an argument (jem train --out DIR)", where,
                    values["out"])
    return without_run_path(values)


def save_config(cfg: Config, path: str | Path) -> None:
    from .checkpoint import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_reference() -> str:
    """Every config option with its default and meaning (from the dataclass source comments)."""
    import inspect

    lines = []
    for f in fields(Config):
        default = getattr(Config(), f.name)
        if not dataclasses.is_dataclass(default):
            continue
        lines.append(f"{f.name}:")
        comments = {}
        for src in inspect.getsource(type(default)).splitlines():
            if ":" in src and "#" in src:
                comments[src.split(":")[0].strip()] = src.split("#", 1)[1].strip()
        for g in fields(default):
            value = getattr(default, g.name)
            note = f"  # {comments[g.name]}" if g.name in comments else ""
            shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"  {g.name}: {shown}{note}")
    lines.append("seed: 1  # seeds every RNG of the run")
    lines.append("device: auto  # auto | cpu | cuda | cuda:N")
    return "\n".join(lines)
