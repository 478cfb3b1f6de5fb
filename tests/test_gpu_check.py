"""benchmarks/gpu_check.py (`make gpu-check`) on a machine without a GPU: it says so and exits 0
without running anything; forced onto the CPU it runs every check's code path and writes the JSON
and the summary (no GPU figure is asserted: only the structure and the relations between fields)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "gc")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.startswith("no GPU: torch.cuda.is_available() is False") and "nothing was run" in proc.stdout
    assert not (tmp_path / "gc").exists()


def test_summary_names_every_check_and_variant(gc):
    variant = {"name": "bf16 channels_last", "status": "ok", "jem_ms": 123.45, "clf_ms": 8.5, "ratio": 14.52,
               "work_ratio": 15.33, "jem_images_per_s": 518.4, "jem_tflops_per_s": 283.5, "jem_peak_mb": 10240.0,
               "host_syncs": 0}
    result = {
        "status": "failed",
        "meta": {"device_name": "GPU-X", "device_count": 2, "torch": "2.x", "cuda": "12.x", "wall_s": 301.2},
        "checks": {
            "cuda_tests": {"status": "failed", "passed": 3, "failed": 1, "skipped": 0, "failures": ["t::a"]},
            "step_benchmark": {"status": "ok", "variants": [variant, {"name": "fp32 compile", "status": "skipped"}]},
            "ddp": {"status": "ok", "runs": [{"nproc": 1, "status": "ok"}, {"nproc": 2, "status": "ok"}]},
            "sada_run": {"status": "ok", "steps": 100, "steps_per_s": 3.21, "final_loss": 1.5, "recoveries": 0,
                         "peak_mb": 20480.0},
        },
    }
    lines = gc.summary_text(result).splitlines()
    assert lines[0] == "gpu-check: failed on GPU-X x2 (torch 2.x, CUDA 12.x) in 301 s"
    assert lines[1] == "cuda tests: failed: 3 passed, 1 failed, 0 skipped (t::a)"
    assert lines[3] == ("  bf16 channels_last          JEM 123.5 ms, clf 8.50 ms, b/a 14.52 (count 15.33), 518 img/s, "
                        "283.5 TFLOP/s, peak 10240 MB, syncs 0")
    assert lines[4] == "  fp32 compile                skipped"
    assert lines[5] == "ddp: ok (1 proc ok, 2 proc ok)"
    assert lines[6].startswith("SADA-JEM run: ok: 100 steps at 3.21 steps/s, final loss 1.500, 0 recoveries")


@pytest.mark.slow
def test_forced_onto_the_cpu_every_check_runs_and_writes_the_schema(gc, tmp_path):
    out = tmp_path / "gc"
    assert gc.main(["--force-cpu", "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["schema"] == gc.SCHEMA and result["status"] == "ok"
    assert set(result["checks"]) == set(gc.CHECKS)
    assert result["meta"]["device"] == "cpu" and result["meta"]["device_count"] == 0
    tests = result["checks"]["cuda_tests"]
    assert tests["status"] == "ok" and tests["passed"] == 0 and tests["skipped"] >= 4  # no CUDA here: skipped
    variants = result["checks"]["step_benchmark"]["variants"]
    assert [v["name"] for v in variants] == [name for name, *_ in gc.VARIANTS]
    assert [v["status"] for v in variants] == ["ok", "ok", "ok", "skipped", "skipped"]  # --quick: no compile
    for v in variants[:3]:
        assert v["jem_ms"] > 0 and v["ratio"] == pytest.approx(v["jem_ms"] / v["clf_ms"])
        assert v["work_ratio"] == pytest.approx((6 + 2 * v["K"]) / 3)
    assert [(v["amp"], v["channels_last"]) for v in variants[:3]] == [("none", False), ("bf16", False), ("bf16", True)]
    (run,) = result["checks"]["ddp"]["runs"]
    assert run["status"] == "ok" and run["world_size"] == 1 and run["backend"] == "gloo"
    sada = result["checks"]["sada_run"]
    assert sada["status"] == "ok" and sada["steps"] == 4 and sada["finite"] and sada["K"] == 2
    assert (out / "summary.txt").read_text() == gc.summary_text(result) + "\n"
