"""train.tensorboard: the event files in RUN_DIR/tb hold what metrics.jsonl holds (read back with
TensorBoard's own event reader), the epoch grids of the chains, and a sweep's trials as separate runs."""

import sys
from collections import defaultdict

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install tensorboard)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402

from conftest import TINY, Faulty, tiny_config  # noqa: E402
from torchjem import RunDir, Trainer  # noqa: E402
from torchjem.errors import ConfigError  # noqa: E402
from torchjem.training.metrics import MetricsLog  # noqa: E402
from torchjem.training.tensorboard import numbers, open_writer  # noqa: E402
from torchjem.workflows.sweep import plan_sweep, run_sweep  # noqa: E402

ALL = {"scalars": 0, "images": 0, "tensors": 0}  # keep every event


def scalars(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """The scalars metrics.jsonl's records should have become (tag -> sorted (step, value))."""
    out = defaultdict(list)
    for r in records:
        if "event" in r:
            out[f"events/{r['event']}"].append((r["step"], 1.0))
            prefix = f"events/{r['event']}/"
        else:
            prefix = "train/" if "loss" in r else "val/"
        for k, v in numbers(r).items():
            out[prefix + k].append((r["step"], v))
    return {k: sorted(v) for k, v in out.items()}


def test_event_files_hold_every_metrics_record_and_epoch_grids(tmp_path):
    # 4 steps an epoch, 2 epochs; a NaN loss at the 3rd step rewinds once (a recovery event)
    cfg = tiny_config("data.limit=128", "train.epochs=2", "train.log_every=2", "divergence.check_every=1",
                      "train.tensorboard=true")
    t = Trainer(cfg, progress=False, out=tmp_path / "run")
    t.objective = Faulty(t.objective, nan_at={3})
    t.fit()
    records = t.run.read_metrics()
    kinds = [r["event"] for r in records if "event" in r]
    assert kinds == ["recovery", "done"]
    acc = EventAccumulator(str(RunDir(tmp_path / "run").tensorboard), size_guidance=ALL)
    acc.Reload()
    got, want = scalars(acc), expected(records)
    assert set(got) == set(want)
    assert {"train/loss", "train/acc", "train/energy_gap", "train/lr", "val/val_acc", "events/recovery"} <= set(got)
    for tag, values in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in values], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in values], rel=1e-6, abs=1e-6), tag
    texts = acc.Tensors("events/recovery/text_summary")
    assert len(texts) == 1 and b"loss is nan" in texts[0].tensor_proto.string_val[0]
    images = acc.Images("samples/buffer")
    assert [e.step for e in images] == [r["step"] for r in records if "val_acc" in r and "event" not in r]
    assert images[0].width == 8 * 9 + 1  # 64 of the buffer's 8x8 chains, 8 to a row, 1-pixel gaps


@pytest.mark.slow
def test_sweep_trials_are_separate_tensorboard_runs(tmp_path):
    spec = plan_sweep(None, [*TINY, "data.limit=128", "train.max_steps=4", "device=cpu", "train.tensorboard=true"],
                      ["optim.lr=0.001,0.002"], seeds=1)
    result = run_sweep(spec, tmp_path / "sw", heartbeat=1)
    assert len(result["records"]) == 2
    mux = EventMultiplexer(size_guidance=ALL).AddRunsFromDirectory(str(tmp_path / "sw" / "trials"))
    mux.Reload()
    runs = sorted(mux.Runs())
    assert runs == ["p000-s1/tb", "p001-s1/tb"]
    lrs = [max(v for _, v in scalars(mux.GetAccumulator(r))["train/lr"]) for r in runs]
    assert lrs[0] < lrs[1]  # each trial its own setting
    for run, record in zip(runs, sorted(result["records"], key=lambda r: r.run)):
        acc = mux.GetAccumulator(run)
        assert set(acc.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info",
                                                          "_hparams_/session_end_info"}
        start = HParamsPluginData.FromString(acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(record.params["optim.lr"])
        assert scalars(acc)["hparams/val_acc"][0][1] == pytest.approx(record.val_acc, abs=1e-6)
        assert scalars(acc)["hparams/diverged"][0][1] == float(record.diverged)


def test_only_the_writing_rank_opens_event_files(tmp_path):
    log = MetricsLog(RunDir(tmp_path / "r"), enabled=False, tensorboard=True)  # a rank other than 0
    with log.to_file():
        log.write({"step": 1, "epoch": 0, "loss": 1.0})
    assert not (tmp_path / "r").exists()


def test_missing_tensorboard_package_is_a_config_error_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="train.tensorboard = true needs the tensorboard package"):
        Trainer(tiny_config("data.limit=64", "train.tensorboard=true"), progress=False, out=tmp_path / "run")
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        open_writer(tmp_path / "tb")


def test_a_resumed_run_replaces_the_killed_runs_later_events(tmp_path):
    # killed in epoch 2 after its step-6 window; resumed from the epoch-1 checkpoint (step 4), it logs step 6 again
    cfg = tiny_config("data.limit=128", "train.epochs=2", "train.log_every=2", "train.tensorboard=true")
    t = Trainer(cfg, progress=False, out=tmp_path / "run")
    t.objective = Faulty(t.objective, kill_at=7)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    Trainer.resume(tmp_path / "run", progress=False).fit()
    logged = [r["step"] for r in t.run.read_metrics() if "loss" in r]
    assert logged == [2, 4, 6, 6, 8]  # metrics.jsonl keeps the killed run's window
    acc = EventAccumulator(str(t.run.tensorboard), size_guidance=ALL)
    acc.Reload()
    assert [s for s, _ in scalars(acc)["train/loss"]] == [2, 4, 6, 8]  # TensorBoard shows each step once


def test_overwrite_clears_the_event_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.tensorboard.mkdir(parents=True)
    (run.tensorboard / "events.out.tfevents.1").write_bytes(b"")
    run.clear()
    assert not run.tensorboard.exists()
