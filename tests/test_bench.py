"""The step benchmark runs in its CI-sized form and writes valid, self-consistent JSON.

No timing is asserted: only the structure, the arithmetic relations between the fields, the
FLOP count (deterministic) and the memory count (tensor bytes, deterministic on CPU)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    bench.main(["--quick", "--device", "cpu", "--json", str(path)])
    return json.loads(path.read_text())


def test_quick_run_writes_one_record_with_the_required_fields(quick):
    assert quick["meta"]["torch"]
    (rec,) = quick["records"]
    for key in ("device", "net", "batch", "K", "clf_step_s", "jem_step_s", "sgld_step_s", "ratio", "work_ratio"):
        assert key in rec, key
    assert rec["device"] == "cpu" and rec["net"] == "convnet" and rec["K"] == 3 and rec["batch"] == 16
    assert rec["repeats"] == {"clf": 8, "jem": 2, "sgld": 8}
    for key in ("clf_step_s", "jem_step_s", "sgld_step_s"):
        assert rec[key] > 0
    assert rec["ratio"] == pytest.approx(rec["jem_step_s"] / rec["clf_step_s"])
    assert rec["work_ratio"] == pytest.approx((6 + 2 * 3) / 3)
    for part in ("clf", "jem", "sgld"):
        s = rec[part]
        assert s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]


def test_flop_count_matches_the_work_count(quick):
    rec = quick["records"][0]
    # (6 + 2K) F against 3 F; the first convolution needs no input gradient in the classifier
    # step but does in the chains, so the counted ratio is a little above the estimate.
    assert rec["flop_ratio"] == pytest.approx(rec["work_ratio"], rel=0.05)
    assert rec["jem_flops"] > rec["clf_flops"] > 0


def test_memory_of_the_jem_step_exceeds_the_classifier_step(quick):
    rec = quick["records"][0]
    # The JEM step's loss runs over data and samples together: about twice the activations.
    assert rec["jem_peak_mb"] > 1.5 * rec["clf_peak_mb"] > 0
    assert rec["state_mb"]["jem"] > rec["state_mb"]["clf"]  # the replay buffer


def test_options_reach_the_trainer(bench):
    presets, opt, _ = bench.parse_args(["--quick", "--device", "cpu", "--amp", "bf16", "--K", "2", "--unfused"])
    tr = bench.build_trainer(presets[0], opt, clf_only=False)
    assert tr.cfg.train.amp == "bf16" and tr.cfg.sgld.steps == 2
    assert not tr.optimizer.defaults.get("fused")
    assert bench.work_ratio(20) == pytest.approx(15.333, abs=1e-3)
