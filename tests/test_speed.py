"""Speed options: bf16 autocast with fp32 logits, channels_last, compile, fused optimiser."""

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_config
from torchjem import JEM, SGLD, ConfigError, Trainer
from torchjem.config import TrainConfig
from torchjem.nets import create_net
from torchjem.speed import autocast, compile_module, configure_speed, fused_optimizer_kwargs


def _jem():
    torch.manual_seed(0)
    return JEM(create_net("convnet", width=8))


def test_bf16_autocast_keeps_logits_chains_and_losses_in_fp32():
    jem = configure_speed(_jem(), TrainConfig(amp="bf16"), "cpu")
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    with autocast("bf16", "cpu"):
        inner = []
        jem.net[0].register_forward_hook(lambda m, i, o: inner.append(o.dtype))
        logits = jem.logits(x)
        x_q = SGLD(n_steps=2).run(jem, x)
    assert inner == [torch.bfloat16, torch.bfloat16, torch.bfloat16]  # the convolutions ran in bf16
    assert logits.dtype == torch.float32 and x_q.dtype == torch.float32
    # bf16 logits stay close to the fp32 ones (8-bit mantissa)
    assert torch.allclose(logits, jem.logits(x), atol=0.05, rtol=0.05)


def test_bf16_energy_head_outputs_are_fp32():
    torch.manual_seed(0)
    jem = JEM(create_net("convnet", width=8, n_classes=0), energy_head=True, n_classes=10, feature_dim=8 * 2 * 16)
    configure_speed(jem, TrainConfig(amp="bf16"), "cpu")
    with autocast("bf16", "cpu"):
        logits, lpx = jem.joint(torch.rand(4, 1, 8, 8))
    assert logits.dtype == lpx.dtype == torch.float32


def test_bf16_training_step_runs_and_leaves_fp32_state(tmp_path):
    tr = Trainer(tiny_config("train.amp=bf16", "train.max_steps=2"), progress=False, out=tmp_path)
    x, y = next(tr.batches.epoch(0))
    stats = tr.train_step(x, y)
    assert torch.isfinite(stats["loss"]) and stats["loss"].dtype == torch.float32
    assert tr.buffer.x.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in tr.jem.parameters())


def test_unknown_amp_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.amp"):
        Trainer(tiny_config("train.amp=fp8"), progress=False, out=tmp_path)
    with pytest.raises(ValueError, match="amp"):
        with autocast("fp16", "cpu"):
            pass


def test_channels_last_changes_layout_not_values_or_keys():
    jem = _jem()
    x = torch.rand(4, 1, 8, 8)
    ref, keys = jem.logits(x), list(jem.state_dict())
    configure_speed(jem, TrainConfig(channels_last=True), "cpu")
    assert jem.net[2].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(jem.logits(x), ref, atol=1e-5)
    assert list(jem.state_dict()) == keys


def test_compile_module_traces_a_sequential_in_place():
    torch._dynamo.reset()
    net = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    ref, keys = net(x), list(net.state_dict())
    compile_module(net, backend="eager")  # Dynamo capture only: no C++ compiler needed
    assert torch.allclose(net(x), ref)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # really captured
    assert list(net.state_dict()) == keys
    twin = copy.deepcopy(net)  # copies are plain modules with their own weights
    assert twin._compiled_call_impl is None
    with torch.no_grad():
        twin[0].weight.zero_()
    assert torch.allclose(net(x), ref)


def test_fused_optimizer_where_torch_has_it():
    kwargs = fused_optimizer_kwargs("cpu")
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert kwargs == ({"fused": True} if (major, minor) >= (2, 4) else {})
