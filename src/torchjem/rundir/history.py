"""A run's history: RUN_DIR/metrics.jsonl read into windows, validations and events, and what
they say about the run (its dynamics summary, trouble, collapse).

Record kinds (one JSON object per line, file order):
- window: the means of the per-step diagnostics since the last one (``step``, ``loss``, ``acc``,
  ``energy_data``, ``energy_sample``, ``lr``, ...);
- validation: the end of an epoch (``epoch``, ``step``, ``val_acc``, ...; no ``event``);
- event: ``{"event": "recovery" | "gave_up" | "done" | "resharded" | ..., "step", ...}``. A
  recovery is written after its rewind: its ``step`` is the step rewound to and ``at_step`` the
  divergence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DYNAMICS_FINAL = ("loss", "acc", "energy_data", "energy_sample", "energy_gap", "lr",
                  "out_of_range", "norm_ratio", "class_balance", "buffer_age")
TREND_WINDOWS = 10  # the energy gap's trend: the slope over the last this many windows
COLLAPSE = 0.8  # a finished run below this fraction of its best val accuracy collapsed (counted as diverged)


def number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def record_step(record: dict) -> int | None:
    s = record.get("step")
    return s if isinstance(s, int) and not isinstance(s, bool) else None


def is_window(record: dict) -> bool:
    """A window record (the means of the per-step diagnostics since the last one)."""
    return "event" not in record and "loss" in record and record_step(record) is not None


def trouble_step(event: dict) -> int | None:
    """Where a recovery or give-up happened (a recovery's ``at_step``: its ``step`` is where it rewound to)."""
    return event.get("at_step", record_step(event)) if event.get("event") == "recovery" else record_step(event)


def superseded(steps: list[int]) -> np.ndarray:
    """Which records (file order) a later record of their kind has at the same or an earlier step:
    training was rewound (a recovery, or a resume from an older checkpoint) past them and those
    steps were done again, so the record is not part of the run's history as it stands."""
    out, later = np.zeros(len(steps), dtype=bool), math.inf
    for i in range(len(steps) - 1, -1, -1):
        out[i] = later <= steps[i]
        later = min(later, steps[i])
    return out


@dataclass(frozen=True)
class DynamicsSummary:
    """What a run's history says in a few figures.

    ``steps``: the last record's step; ``recoveries``: divergence recoveries; ``gave_up``: whether
    the guard gave up; ``first_trouble_step``: the step of the first divergence (recovery or
    give-up) or None; ``cause``: why it gave up (None otherwise); ``best_val_acc``: the best
    validation accuracy recorded; ``final``: the last window's means of loss, acc, energy_data,
    energy_sample, energy_gap (sample - data) and lr, and the chains' health: out_of_range (fraction
    of sample values outside the data range), norm_ratio (sample norm / data norm), class_balance
    (spread of the samples' predicted classes, 1 = even) and buffer_age (mean continuations of a
    chain since its restart) (None where the run did not log them: no energies or chains without
    a p(x) term); ``gap_trend``: the slope of the energy gap over the last ``TREND_WINDOWS`` kept
    windows, per 100 steps (None with fewer than 3)."""

    steps: int | None
    recoveries: int
    gave_up: bool
    first_trouble_step: int | None
    cause: str | None
    best_val_acc: float | None
    final: dict[str, float | None]
    gap_trend: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class History:
    """The records of one run's metrics.jsonl, in file order (``RunDir.history()``)."""

    records: list[dict[str, Any]]

    @property
    def windows(self) -> list[dict[str, Any]]:
        return [r for r in self.records if is_window(r)]

    @property
    def validations(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "event" not in r and number(r.get("val_acc")) is not None]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "event" in r]

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(steps, values, superseded) of the records holding a number under ``key``."""
        picked = [(record_step(r), number(r.get(key))) for r in self.records]
        picked = [(s, v) for s, v in picked if s is not None and v is not None]
        steps = [s for s, _ in picked]
        return np.asarray(steps, dtype=float), np.asarray([v for _, v in picked], dtype=float), superseded(steps)

    def summary(self) -> DynamicsSummary:
        steps = [s for s in map(record_step, self.records) if s is not None]
        trouble = [r for r in self.events if r["event"] in ("recovery", "gave_up")]
        gave_up = [r for r in trouble if r["event"] == "gave_up"]
        windows = self.windows
        last = windows[-1] if windows else {}
        final = {k: number(last.get(k)) for k in DYNAMICS_FINAL}
        e_data, e_sample = final["energy_data"], final["energy_sample"]
        final["energy_gap"] = e_sample - e_data if e_data is not None and e_sample is not None else None
        vals = [number(r["val_acc"]) for r in self.validations]
        return DynamicsSummary(
            steps=steps[-1] if steps else None,
            recoveries=sum(r["event"] == "recovery" for r in trouble),
            gave_up=bool(gave_up),
            first_trouble_step=trouble_step(trouble[0]) if trouble else None,
            cause=gave_up[-1].get("cause") if gave_up else None,
            best_val_acc=max(vals) if vals else None,
            final=final,
            gap_trend=self.gap_trend(),
        )

    def gap_trend(self) -> float | None:
        """The least-squares slope of the energy gap over the last ``TREND_WINDOWS`` kept windows,
        per 100 steps; None with fewer than 3 such windows."""
        pairs = [(record_step(r), number(r.get("energy_sample")), number(r.get("energy_data"))) for r in self.windows]
        pairs = [(s, e_s - e_d) for s, e_s, e_d in pairs if e_s is not None and e_d is not None]
        gone = superseded([s for s, _ in pairs])
        steps = np.asarray([s for s, _ in pairs], dtype=float)[~gone][-TREND_WINDOWS:]
        gap = np.asarray([g for _, g in pairs], dtype=float)[~gone][-TREND_WINDOWS:]
        if len(steps) < 3 or np.ptp(steps) == 0:
            return None
        return float(np.polyfit(steps, gap, 1)[0] * 100)

    def collapse(self, final_val_acc: float | None) -> str | None:
        """Why a run that finished at ``final_val_acc`` counts as collapsed (below COLLAPSE times
        its own best validation accuracy, with no divergence check tripped), or None. On digits,
        with the reference's thresholds, such runs ended near chance."""
        best = self.summary().best_val_acc
        if final_val_acc is None or best is None or final_val_acc >= COLLAPSE * best:
            return None
        return (
            f"collapsed: final val acc {final_val_acc:.3f} < {COLLAPSE} x its best {best:.3f}, "
            "no divergence check tripped"
        )


def dynamics_summary(records: list[dict]) -> DynamicsSummary:
    """The summary of a run's metrics.jsonl records (file order)."""
    return History(list(records)).summary()
