"""The demo: a JEM and its plain-classifier baseline on digits, evaluated side by side."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .config import load_config
from .evaluate.classification import classification, predict_logits
from .samples import write_sample_grids
from .training import train

log = logging.getLogger("torchjem")
RECIPE = Path(__file__).parent / "configs" / "digits_demo.yaml"
# --quick: a smoke test of the whole pipeline, not the real figures.
QUICK = ["train.epochs=2", "sgld.steps=5", "buffer.size=200"]


def run_demo(
    out: str | Path = "runs/demo", device: str = "auto", seed: int = 1, quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train, evaluate and compare; writes ``out/summary.json`` and returns it."""
    t0 = time.perf_counter()
    out = Path(out)
    common = [f"device={device}", f"seed={seed}"] + (QUICK if quick else [])
    jem_cfg = load_config(RECIPE, common + [f"out={out / 'jem'}"])
    base_cfg = load_config(RECIPE, common + [f"out={out / 'baseline'}", "train.clf_only=true"])
    log.info("demo 1/2: training the JEM")
    jem = train(jem_cfg, progress=progress)
    log.info("demo 2/2: training the baseline classifier (same net, data and schedule)")
    base = train(base_cfg, data=jem.data, progress=progress)
    data = jem.data

    summary: dict[str, Any] = {"data": data.name, "quick": quick}
    for name, tr in (("jem", jem), ("baseline", base)):
        res = classification(tr.jem, data.x_test, data.y_test)
        summary[name] = {"test_accuracy": res["accuracy"], "test_nll": res["nll"], "run_dir": str(tr.run.path)}

    grids = write_sample_grids(jem.jem, jem.sampler, data.shape, data.n_classes, out / "samples", jem.buffer)
    pred = predict_logits(base.jem, grids["x_conditional"]).argmax(1)
    summary["jem"]["conditional_accuracy_by_baseline"] = float((pred == grids["y_conditional"]).float().mean())
    summary["samples"] = {"unconditional": str(grids["unconditional"]), "conditional": str(grids["conditional"])}

    # Further evaluations extend `summary` here.

    summary["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """A short table of the headline figures."""
    rows = [("test accuracy", "test_accuracy"), ("test NLL", "test_nll")]
    print(f"{'':24}{'JEM':>10}{'baseline':>10}")
    for label, key in rows:
        print(f"{label:24}{summary['jem'][key]:10.4f}{summary['baseline'][key]:10.4f}")
    print(f"{'conditional accuracy':24}{summary['jem']['conditional_accuracy_by_baseline']:10.4f}{'-':>10}")
    print(f"seconds: {summary['seconds']:.0f}   samples: {summary['samples']['conditional']}")


__all__ = ["run_demo", "print_summary"]
