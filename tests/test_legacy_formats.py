"""Runs written before the run-directory package (main at e7f4a1b, checkpoint format version 2,
export format version 1) keep loading and evaluate to the figures that code gave them.

The fixtures were written by that code: a tiny conv net (width 4) trained 80 steps on the
``digits`` built-in (seed 3), its run directory (config.yaml with the old ``out`` key,
metrics.jsonl, checkpoints/last.pt) and its ``jem export`` folder. The expected figures were
computed by that same code on the digits test split (360 images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from torchjem.evaluate.classification import classification
from torchjem.workflows.runs import load_run

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_v2"
ACCURACY, NLL, BUFFER_SUM = 0.7277777791023254, 1.152943730354309, -339.5947570800781


@pytest.mark.parametrize("folder", ["run", "export"])
def test_legacy_run_loads_and_evaluates_unchanged(folder, tmp_path):
    path = shutil.copytree(FIXTURES / folder, tmp_path / folder)  # loading must not need to write
    run = load_run(path, device="cpu")
    data = run.data()
    assert len(data.y_test) == 360
    c = classification(run.jem, data.x_test, data.y_test)
    assert c.accuracy == pytest.approx(ACCURACY, abs=1e-7) and c.nll == pytest.approx(NLL, rel=1e-6)
    assert run.buffer is not None and tuple(run.buffer.x.shape) == (20, 1, 8, 8)
    assert float(run.buffer.x.sum()) == pytest.approx(BUFFER_SUM, rel=1e-6)
    assert run.langevin.n_steps == 5 and run.cfg.net.kwargs["width"] == 4
    assert torch.isfinite(run.jem.log_px(data.x_test[:4])).all()
