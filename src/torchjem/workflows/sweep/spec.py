"""What a sweep is: the base config, the swept keys (a grid, or ranges for a sampler), the seeds,
checked against the config before any trial starts (``plan_sweep``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ...config import ConfigError, get_value, load_config, merge, nest, parse_overrides
from ...errors import InputError
from ..train import resolve_recipe

NOT_SWEEPABLE = ("seed", "out", "device")  # seeds: --seeds; out: each trial's own folder


@dataclass
class SweepSpec:
    """A sweep: the base config, the swept keys, the seeds and the search.

    ``grid``: key -> values (every combination is run, unless ``trials`` is set: then they are
    categorical choices of the sampler); ``ranges``: key -> [low, high, log] for the sampler;
    ``trials``: number of settings the sampler draws (None: grid search)."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    ranges: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [1])
    trials: int | None = None
    sampler: str = "tpe"

    @property
    def keys(self) -> list[str]:
        return [*self.grid, *self.ranges]

    def settings(self) -> list[dict[str, Any]]:
        """Every grid combination (grid search), in a fixed order."""
        combos: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            combos = [{**c, key: v} for c in combos for v in values]
        return combos

    def n_runs(self) -> int:
        return (self.trials if self.trials is not None else len(self.settings())) * len(self.seeds)

    def trial_overrides(self, params: dict[str, Any], seed: int) -> dict[str, Any]:
        """The config overrides of one trial (a nested dict): the fixed ones, then its setting and seed."""
        return merge(parse_overrides(self.overrides), nest({**params, "seed": seed}))

    def describe(self) -> str:
        """The sweep in one line: config, swept values, seeds and trials."""
        parts = [f"config {self.config}", *(f"{k}={','.join(map(str, v))}" for k, v in self.grid.items())]
        parts += [f"{k}={lo}:{hi}{':log' if lg else ''}" for k, (lo, hi, lg) in self.ranges.items()]
        return ", ".join(parts + [f"{len(self.seeds)} seeds"] + ([f"{self.trials} trials"] if self.trials else []))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        """The spec saved in SWEEP_DIR/spec.json (``to_dict``'s shape)."""
        return cls(**data)


def _split_assignment(item: str, what: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise InputError(
            f"{what} {item!r} must look like section.key={'LOW:HIGH[:log]' if what == '--range' else 'V1,V2,...'}"
        )
    return key.strip(), raw.strip()


def plan_sweep(
    config: str | None,
    overrides: list[str] | None = None,
    grid: list[str] | None = None,
    *,
    ranges: list[str] | None = None,
    seeds: int = 1,
    trials: int | None = None,
    sampler: str = "tpe",
) -> SweepSpec:
    """Check a sweep before any trial starts: every key exists (the error names the closest valid
    key) and every value is valid for it.

    Args:
        config: a YAML file or the name of a shipped recipe (None: the defaults).
        overrides: fixed ``KEY=VALUE`` overrides of every trial.
        grid: ``["optim.lr=1e-4,1e-3", ...]``: every combination is run (with ``trials``: categorical
            choices of the sampler).
        ranges: ``["optim.lr=1e-4:1e-2:log", ...]`` for the sampler (needs ``trials``).
        seeds: seeds per setting, counted from the config's seed.
        trials: settings the sampler draws (None: grid search).
        sampler: ``tpe`` or ``random``.

    Raises ConfigError (an unknown key, a bad value) or InputError (a malformed item, a key that
    cannot be swept, nothing to sweep)."""
    overrides, grid, ranges = list(overrides or []), list(grid or []), list(ranges or [])
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    if trials is not None and trials < 1:
        raise InputError(f"--trials must be >= 1, got {trials}")
    if sampler not in ("tpe", "random"):
        raise InputError(f"--sampler must be tpe or random, got {sampler!r}")
    if ranges and trials is None:
        raise InputError("--range needs --trials N (a sampler draws N settings from the ranges)")
    recipe = resolve_recipe(config)
    base = load_config(recipe, overrides)
    spec = SweepSpec(config=config, overrides=overrides, trials=trials, sampler=sampler)
    seen: set[str] = set()
    for item in grid:
        key, raw = _split_assignment(item, "--grid")
        values = []
        for v in raw.split(","):
            typed = get_value(load_config(recipe, [*overrides, f"{key}={v.strip()}"]), key)  # names the closest key
            if not isinstance(typed, (int, float, str, bool)):
                raise ConfigError(f"--grid {key}: only numbers, strings and booleans can be swept, got {typed!r}")
            values.append(typed)
        if len(set(map(repr, values))) != len(values):
            raise InputError(f"--grid {key} lists a value twice: {raw}")
        spec.grid[key] = values
        seen.add(key)
    for item in ranges:
        key, raw = _split_assignment(item, "--range")
        parts = raw.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise InputError(f"--range {item!r} must look like {key}=LOW:HIGH or {key}=LOW:HIGH:log")
        lo, hi = (get_value(load_config(recipe, [*overrides, f"{key}={p}"]), key) for p in parts[:2])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or not lo < hi:
            raise InputError(f"--range {key}: LOW < HIGH, both numbers, expected; got {parts[0]}:{parts[1]}")
        log_scale = len(parts) == 3
        if log_scale and lo <= 0:
            raise InputError(f"--range {key}: a log range needs LOW > 0, got {lo}")
        if key in seen:
            raise InputError(f"{key} is given twice (--grid and --range)")
        spec.ranges[key] = [lo, hi, log_scale]
        seen.add(key)
    bad = [k for k in spec.keys if k.split(".")[0] in NOT_SWEEPABLE]
    if bad:
        raise InputError(f"{bad[0]} cannot be swept: use --seeds for seeds; each trial has its own folder")
    if not spec.keys:
        raise InputError("nothing to sweep: give --grid KEY=V1,V2,... (or --range KEY=LOW:HIGH with --trials)")
    for setting in spec.settings() if trials is None else []:  # cross-field checks of every combination
        load_config(recipe, merge(parse_overrides(overrides), nest(setting)))
    spec.seeds = [base.seed + i for i in range(seeds)]
    return spec
