"""The CUDA code paths (marker ``cuda``; skipped without a device, run first by `make gpu-check`):
a JEM step in bf16 with channels_last on the GPU, no host synchronisation inside a step, a GPU
run's checkpoint read on the CPU, torchjem's SyncBatchNorm equal to batch norm in one process."""

import pytest
import torch

from conftest import tiny_config
from torchjem import Trainer, load_run
from torchjem.training import distributed as ddp

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def _trainer(tmp_path, *extra):
    cfg = tiny_config("device=cuda", "data.limit=128", "train.max_steps=4", *extra)
    return Trainer(cfg, progress=False, out=tmp_path / "run")


def test_bf16_channels_last_jem_step_on_the_gpu(tmp_path):
    t = _trainer(tmp_path, "train.amp=bf16", "train.channels_last=true")
    x, y = next(t.batches.epoch(0))
    before = [p.detach().clone() for p in t.jem.parameters()]
    stats = t.train_step(x, y)
    assert x.is_cuda and t.buffer.x.is_cuda
    assert stats["loss"].dtype == torch.float32 and torch.isfinite(stats["loss"]).item()
    assert any(not torch.equal(a, b) for a, b in zip(before, t.jem.parameters()))


def test_a_jem_step_does_not_synchronise_with_the_host(tmp_path):
    t = _trainer(tmp_path)
    x, y = next(t.batches.epoch(0))
    t.train_step(x, y)  # warm-up: allocations, cuDNN autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        t.train_step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_gpu_checkpoint_loads_on_the_cpu(tmp_path):
    t = _trainer(tmp_path, "net.name=wrn", "net.kwargs.depth=10", "net.kwargs.width=1", "net.kwargs.norm=batch")
    t.fit()
    run = load_run(tmp_path / "run", "last", "cpu")
    for a, b in zip(run.jem.parameters(), t.jem.parameters()):
        assert a.device.type == "cpu" and torch.equal(a, b.cpu())


def test_sync_batch_norm_is_batch_norm_in_one_process():
    bn = torch.nn.BatchNorm2d(4).cuda()
    sync = ddp.convert_sync_batch_norm(torch.nn.Sequential(torch.nn.BatchNorm2d(4))).cuda()
    x = torch.randn(8, 4, 5, 5, device="cuda")
    assert torch.allclose(sync(x), bn(x)) and torch.allclose(sync[0].running_mean, bn.running_mean)


def test_a_gpu_run_records_its_device_seconds(tmp_path):
    from torchjem.rundir import RunState

    t = _trainer(tmp_path)
    t.fit()
    cost = RunState.load(t.run.checkpoint("last")).cost
    assert cost.device_s is not None and 0 < cost.device_s <= cost.wall_s  # CUDA events around each step
    assert cost.steps == 4 and cost.count("data", "forward") == 4 * 32
