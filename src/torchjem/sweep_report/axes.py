"""The swept keys laid out for tables, regions and heat maps: each key an axis of its sorted
distinct values (binned when a random search gave many), and the checks of the records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .record import TrialRecord

MAX_EXACT_VALUES = 8  # a numeric key with more distinct values (random / TPE search) is binned
N_BINS = 5
MAX_REGIONS = 2_000_000  # above this many candidate regions, stable_region bins like the heat maps


def is_number(v: Any) -> bool:
    """A number that is not a bool (numpy scalars included)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def check(records: Sequence[TrialRecord], keys: Iterable[str]) -> list[str]:
    """The swept keys as a list; raises InputError unless they are distinct strings and every record
    is a TrialRecord whose params hold them."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    if not keys or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise InputError(f"keys: expected distinct swept config keys (strings), got {keys!r}")
    for r in records:
        if not isinstance(r, TrialRecord) or not isinstance(r.params, dict):
            raise InputError(
                f"trial record {r!r}: expected a TrialRecord with a params dict (TrialRecord.from_dict reads one)"
            )
        missing = [k for k in keys if k not in r.params]
        if missing:
            raise InputError(f"trial {r.run!r}: params lack the swept keys {missing}")
    return keys


def setting(r: TrialRecord, keys: list[str]) -> tuple:
    """The record's values of ``keys``, in that order."""
    return tuple(r.params[k] for k in keys)


def value_text(v: Any) -> str:
    """A swept value in words: 0.003, 1, 1e-05, adam."""
    if is_number(v):
        return f"{float(v):g}" if isinstance(v, (float, np.floating)) else str(int(v))
    return str(v)


class Axis:
    """One swept key laid out as positions 0..size-1: its sorted distinct values, or (``bin_many``
    and more than MAX_EXACT_VALUES numeric values) N_BINS bins, log-spaced when every value is
    positive and they span more than 10x, else linear."""

    def __init__(self, key: str, values: Iterable[Any], bin_many: bool) -> None:
        distinct = list(dict.fromkeys(values))
        self.key = key
        self.numeric = all(is_number(v) for v in distinct)
        if self.numeric:
            self.values = sorted(distinct, key=float)
        else:
            self.values = sorted(distinct, key=lambda v: (type(v).__name__, str(v)))
        self.binned = bin_many and self.numeric and len(self.values) > MAX_EXACT_VALUES
        self.edges: list[float] | None = None
        if self.binned:
            lo, hi = float(self.values[0]), float(self.values[-1])
            log = lo > 0 and hi / lo > 10
            edges = np.geomspace(lo, hi, N_BINS + 1) if log else np.linspace(lo, hi, N_BINS + 1)
            self.edges = [float(e) for e in edges]
            self.log = log
            where = np.clip(np.searchsorted(edges, [float(v) for v in self.values], side="right") - 1, 0, N_BINS - 1)
            self.position = {v: int(b) for v, b in zip(self.values, where)}
            self.labels = [f"{edges[i]:.2g}–{edges[i + 1]:.2g}" for i in range(N_BINS)]
        else:
            self.log = False
            self.position = {v: i for i, v in enumerate(self.values)}
            self.labels = [value_text(v) for v in self.values]
        self.size = len(self.labels)

    def options(self) -> list[tuple[int, int]]:
        """The candidate intervals (first, last position): every interval of a numeric key; one
        value or all of them for a categorical one."""
        n = self.size
        if self.numeric:
            return [(i, j) for i in range(n) for j in range(i, n)]
        return [(i, i) for i in range(n)] + ([(0, n - 1)] if n > 1 else [])

    def describe(self) -> dict:
        return {"values": list(self.values), "labels": self.labels, "binned": self.binned, "edges": self.edges}
