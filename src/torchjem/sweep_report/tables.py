"""What a sweep found, from its trial records: one row per setting, the best setting, and the stable
region (the largest box of swept values in which no trial diverged, with and without recovery)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .axes import MAX_REGIONS, Axis, check, is_number, setting, value_text
from .record import TrialRecord

_CHUNK = 250_000  # candidate regions scored at once


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and is_number(v) and math.isfinite(v)]


def _mean(values: Iterable[Any]) -> float | None:
    v = _finite(values)
    return float(np.mean(v)) if v else None


def _std(values: Iterable[Any]) -> float | None:
    """Sample standard deviation (ddof=1); None with fewer than two values."""
    v = _finite(values)
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


# -- tables -----------------------------------------------------------------------------------
def summarize(records: Sequence[TrialRecord], keys: Sequence[str]) -> list[dict]:
    """One row per setting (distinct values of ``keys``), aggregated over its seeds, in the order
    of the swept values. Accuracies, ECE, NLL and energy gap are over the non-diverged seeds (None
    when all diverged); the std is the sample std (ddof=1; None with one such seed); seconds are
    over all seeds. ``troubled``: seeds that diverged or needed a recovery."""
    keys = check(records, keys)
    groups: dict[tuple, list[TrialRecord]] = {}
    for r in records:
        groups.setdefault(setting(r, keys), []).append(r)
    axes = [Axis(k, [s[i] for s in groups], bin_many=False) for i, k in enumerate(keys)]
    order = sorted(groups, key=lambda s: tuple(ax.position[v] for ax, v in zip(axes, s)))
    rows = []
    for s in order:
        rs = groups[s]
        ok = [r for r in rs if not r.diverged]
        n, d = len(rs), len(rs) - len(ok)
        row: dict[str, Any] = {
            "params": dict(zip(keys, s)),
            "n": n,
            "seeds": sorted((r.seed for r in rs), key=lambda x: (not is_number(x), x if is_number(x) else 0)),
            "diverged": d,
            "divergence_rate": d / n,
            "troubled": sum(r.troubled for r in rs),
            "recoveries": sum(int(r.recoveries or 0) for r in rs),
        }
        for m in ("val_acc", "test_acc"):
            row[f"{m}_mean"] = _mean(getattr(r, m) for r in ok)
            row[f"{m}_std"] = _std(getattr(r, m) for r in ok)
        for m in ("ece", "nll", "energy_gap"):
            row[f"{m}_mean"] = _mean(getattr(r, m) for r in ok)
        row["seconds_mean"] = _mean(r.seconds for r in rs)
        rows.append(row)
    return rows


def best_setting(records: Sequence[TrialRecord], keys: Sequence[str]) -> dict | None:
    """The setting with the highest mean val accuracy among those where no seed diverged (ties:
    higher mean test accuracy, then more seeds); None when there is none."""
    rows = [r for r in summarize(records, keys) if r["diverged"] == 0 and r["val_acc_mean"] is not None]
    if not rows:
        return None

    def rank(r: dict) -> tuple:
        test = r["test_acc_mean"]
        return (r["val_acc_mean"], -math.inf if test is None else test, r["n"])

    row = max(rows, key=rank)
    out = {k: row[k] for k in ("params", "n", "troubled", "val_acc_mean", "val_acc_std", "test_acc_mean")}
    out.update({k: row[k] for k in ("test_acc_std", "ece_mean", "nll_mean", "seconds_mean")})
    acc = f"val acc {row['val_acc_mean']:.4f}" + (
        f" ± {row['val_acc_std']:.4f}" if row["val_acc_std"] is not None else ""
    )
    if row["test_acc_mean"] is not None:
        acc += f", test acc {row['test_acc_mean']:.4f}"
    seeds = f"{row['n']} seed" + ("s" if row["n"] != 1 else "")
    trouble = f"; {row['troubled']} needed a recovery" if row["troubled"] else ""
    params = ", ".join(f"{k} = {value_text(v)}" for k, v in row["params"].items())
    out["text"] = f"{params}: {acc} over {seeds} (none diverged{trouble})"
    return out


# -- the stable region ------------------------------------------------------------------------
def _search(
    records: Sequence[TrialRecord], keys: list[str], axes: list[Axis], bad_of: Callable[[TrialRecord], bool]
) -> tuple[tuple, ...] | None:
    """The (first, last) positions per key of the best region: no bad trial, then most settings,
    most trials, highest mean val accuracy, most grid cells (the widest box: its edges stop at a
    bad trial, not where the trials happen to thin out). Box sums come
    from d-dimensional prefix sums, so each candidate costs 2^d look-ups."""
    shape = tuple(ax.size for ax in axes)
    settings = np.zeros(shape, np.int64)
    trials, bad, acc_n = (np.zeros(shape, np.int64) for _ in range(3))
    acc_sum = np.zeros(shape)
    seen = set()
    for r in records:
        s = setting(r, keys)
        cell = tuple(ax.position[v] for ax, v in zip(axes, s))
        if s not in seen:
            seen.add(s)
            settings[cell] += 1
        trials[cell] += 1
        bad[cell] += bad_of(r)
        v = r.val_acc
        if not r.diverged and v is not None and math.isfinite(v):
            acc_sum[cell] += v
            acc_n[cell] += 1

    def prefix(a: np.ndarray) -> np.ndarray:
        p = np.zeros(tuple(n + 1 for n in shape), a.dtype)
        c = a
        for ax in range(len(shape)):
            c = np.cumsum(c, axis=ax)
        p[tuple(slice(1, None) for _ in shape)] = c
        return p

    sums = [prefix(a) for a in (settings, trials, bad, acc_sum, acc_n)]
    opts = [np.array(ax.options(), np.int64) for ax in axes]
    sizes = [len(o) for o in opts]
    total = math.prod(sizes)
    corners = list(itertools.product((0, 1), repeat=len(axes)))
    best: tuple | None = None
    for start in range(0, total, _CHUNK):
        flat = np.arange(start, min(total, start + _CHUNK))
        idx = np.unravel_index(flat, sizes)
        lo = [o[i, 0] for o, i in zip(opts, idx)]
        hi = [o[i, 1] + 1 for o, i in zip(opts, idx)]
        box = []
        for p in sums:
            acc = np.zeros(len(flat), p.dtype)
            for c in corners:
                sign = 1 if (len(axes) - sum(c)) % 2 == 0 else -1
                acc += sign * p[tuple(h if ci else lo_ for ci, lo_, h in zip(c, lo, hi))]
            box.append(acc)
        s, t, b, a_sum, a_n = box
        ok = np.flatnonzero((b == 0) & (s > 0))
        if not len(ok):
            continue
        mean = np.where(a_n[ok] > 0, np.round(a_sum[ok] / np.maximum(a_n[ok], 1), 9), -np.inf)
        cells = np.prod(np.stack([h[ok] - lo_[ok] for lo_, h in zip(lo, hi)]), axis=0)
        i = ok[np.lexsort((-flat[ok], cells, mean, t[ok], s[ok]))[-1]]
        j = int(np.searchsorted(ok, i))
        rank = (int(s[i]), int(t[i]), float(mean[j]), int(cells[j]), -int(flat[i]))
        if best is None or rank > best[0]:
            best = (rank, tuple((int(a[i]), int(h[i]) - 1) for a, h in zip(lo, hi)))
    return None if best is None else best[1]


def stable_region(records: Sequence[TrialRecord], keys: Sequence[str], *, without_recovery: bool = False) -> dict:
    """The largest region, a product of per-key intervals over the swept values (numeric keys: an
    interval of their sorted distinct values; categorical keys: one value or all), in which no
    trial diverged (``without_recovery``: no trial diverged or needed a recovery). Largest: most
    settings; ties: more trials, then higher mean val accuracy (non-diverged trials), then the
    widest box (an interval stops at a value whose trials inside the other intervals went bad).

    Returns {"bounds": {key: (lo, hi) for a numeric key, [values] for a categorical one} or None,
    "where": {key: the bound in words, "any" when it covers every value}, "n": trials inside,
    "settings", "diverged": 0, "troubled", "val_acc_mean", "outside": {"n", "diverged", "troubled"},
    "without_recovery", "binned": keys searched over bins, "text": one sentence}. When the number of
    candidate regions passes MAX_REGIONS, keys with many values are searched over the heat maps'
    bins (their bounds: the extreme swept values inside the chosen bins)."""
    keys = check(records, keys)

    def bad_of(r: TrialRecord) -> bool:
        return r.troubled if without_recovery else r.diverged

    what = "would have diverged without recovery" if without_recovery else "diverged"
    n_all, bad_all = len(records), sum(bad_of(r) for r in records)
    out: dict[str, Any] = {
        "without_recovery": without_recovery,
        "bounds": None,
        "where": None,
        "n": 0,
        "settings": 0,
        "diverged": 0,
        "troubled": 0,
        "val_acc_mean": None,
        "outside": {
            "n": n_all,
            "diverged": sum(r.diverged for r in records),
            "troubled": sum(r.troubled for r in records),
        },
        "binned": [],
    }
    if not records:
        return {**out, "text": "no trials"}
    axes = [Axis(k, [r.params[k] for r in records], bin_many=False) for k in keys]
    if math.prod(len(ax.options()) for ax in axes) > MAX_REGIONS:
        axes = [Axis(k, [r.params[k] for r in records], bin_many=True) for k in keys]
    region = _search(records, keys, axes, bad_of) if bad_all else tuple((0, ax.size - 1) for ax in axes)
    if region is None:
        every = "needed a recovery or diverged" if without_recovery else "diverged"
        text = f"every setting {every} (at least one seed each): {bad_all}/{n_all} trials {what}"
        return {**out, "binned": [ax.key for ax in axes if ax.binned], "text": text}

    def inside(r: dict) -> bool:
        return all(lo <= ax.position[v] <= hi for ax, v, (lo, hi) in zip(axes, setting(r, keys), region))

    ins = [r for r in records if inside(r)]
    outs = [r for r in records if not inside(r)]
    bounds: dict[str, Any] = {}
    where: dict[str, str] = {}
    conds, anys = [], []
    for ax, (lo, hi) in zip(axes, region):
        vals = [v for v in ax.values if lo <= ax.position[v] <= hi]
        full = lo == 0 and hi == ax.size - 1
        if ax.numeric:
            bounds[ax.key] = (vals[0], vals[-1])
            vlo, vhi = value_text(vals[0]), value_text(vals[-1])
            if full:
                words = "any"
            elif lo == 0:
                words = f"<= {vhi}"
            elif hi == ax.size - 1:
                words = f">= {vlo}"
            elif vlo == vhi:
                words = f"= {vlo}"
            else:
                words = f"in {vlo}..{vhi}"
        else:
            bounds[ax.key] = vals
            words = "any" if full else f"= {value_text(ax.values[lo])}"
        where[ax.key] = words
        (anys if full else conds).append(f"any {ax.key}" if full else f"{ax.key} {words}")
    out.update(
        bounds=bounds,
        where=where,
        n=len(ins),
        settings=len({setting(r, keys) for r in ins}),
        troubled=sum(r.troubled for r in ins),
        val_acc_mean=_mean(r.val_acc for r in ins if not r.diverged),
        outside={"n": len(outs), "diverged": sum(r.diverged for r in outs), "troubled": sum(r.troubled for r in outs)},
        binned=[ax.key for ax in axes if ax.binned],
    )
    if not bad_all:
        none = "needed a recovery" if without_recovery else "diverged"
        out["text"] = f"no trial {none}: 0/{n_all}" + (f" {what}" if without_recovery else "")
    else:
        bad_out = sum(map(bad_of, outs))
        where_ = " with ".join(conds + ([" and ".join(anys)] if anys else []))
        out["text"] = f"{where_}: 0/{len(ins)} {what} (outside it: {bad_out}/{len(outs)})"
    return out
