import pytest
import torch
from torch import nn

from torchjem import JEM, SGLD, ReplayBuffer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.SiLU(), nn.Dropout(0.5), nn.Linear(32, 4))


def test_noiseless_small_step_raises_log_px():
    jem = JEM(_net()).eval()
    x = torch.rand(16, 1, 4, 4) * 2 - 1
    before = jem.log_px(x).detach()
    after = jem.log_px(SGLD(n_steps=1, step_size=1e-3, noise=0.0).run(jem, x)).detach()
    assert (after > before).all()
    # conditional chains raise log p(x, y) for their class
    y = torch.randint(0, 4, (16,))
    x_y = SGLD(n_steps=1, step_size=1e-3, noise=0.0).run(jem, x, y)
    assert (jem.log_pxy(x_y, y) > jem.log_pxy(x, y)).all()


def test_sampler_leaves_no_parameter_gradients_and_restores_modes():
    net = _net()
    jem = JEM(net)
    jem.train()
    net[3].eval()  # a mixed state must come back exactly
    net[1].weight.requires_grad_(False)  # a frozen layer stays frozen
    modes = [m.training for m in jem.modules()]
    flags = [p.requires_grad for p in jem.parameters()]
    seen = []
    net[3].register_forward_hook(lambda m, i, o: seen.append(m.training))
    SGLD(n_steps=3).run(jem, torch.rand(8, 1, 4, 4))
    assert seen == [False] * 3  # eval mode while sampling
    assert all(p.grad is None for p in jem.parameters())
    assert [m.training for m in jem.modules()] == modes
    assert [p.requires_grad for p in jem.parameters()] == flags


def test_sampler_options_clamp_and_grad_clamp():
    jem = JEM(_net())
    x = torch.rand(8, 1, 4, 4) * 2 - 1
    out = SGLD(n_steps=5, step_size=10.0, noise=0.5, clamp=(-1.0, 1.0)).run(jem, x)
    assert out.min() >= -1 and out.max() <= 1
    moved = SGLD(n_steps=1, step_size=1.0, noise=0.0, grad_clamp=1e-3).run(jem, x)
    assert (moved - x).abs().max() <= 1e-3 + 1e-7
    assert not out.requires_grad


def test_reinit_fraction_matches_frequency():
    buf = ReplayBuffer(1000, (1, 2, 2), n_classes=10, reinit_freq=0.2)
    buf.x.fill_(5.0)  # outside [-1, 1]: fresh noise is recognisable
    x, _ = buf.draw(20000)
    fresh = (x.flatten(1).abs() <= 1).all(1).float().mean().item()
    assert abs(fresh - 0.2) < 0.015  # binomial sd is 0.003
    assert ((x.flatten(1) == 5.0).all(1) | (x.flatten(1).abs() <= 1).all(1)).all()


def test_class_blocks_and_write_back():
    buf = ReplayBuffer(100, (3,), n_classes=5, reinit_freq=0.0)
    y = torch.tensor([0, 1, 2, 3, 4] * 20)
    x, idx = buf.draw(0, y)
    assert torch.equal(idx // 20, y)
    assert torch.equal(x, buf.x[idx])
    buf.put(idx, torch.full_like(x, 0.5))
    assert (buf.x[idx] == 0.5).all()
    assert buf.x.min() >= -1 and buf.x.max() <= 1
    with pytest.raises(ValueError, match="multiple of n_classes"):
        ReplayBuffer(101, (3,), n_classes=5)


def test_buffer_state_round_trip_and_gaussian_init():
    buf = ReplayBuffer(40, (1, 2, 2), n_classes=2)
    data = torch.cat([torch.full((10, 1, 2, 2), -0.5), torch.full((10, 1, 2, 2), 0.5)]) + 0.01 * torch.randn(
        20, 1, 2, 2
    )
    buf.fit_gaussian(data, torch.tensor([0] * 10 + [1] * 10))
    assert buf.x[:20].mean() < -0.4 and buf.x[20:].mean() > 0.4  # each block from its class
    other = ReplayBuffer(40, (1, 2, 2), n_classes=2)
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.x, buf.x) and other.init == "gaussian"
    with pytest.raises(ValueError, match="shape"):
        ReplayBuffer(20, (1, 2, 2), n_classes=2).load_state_dict(buf.state_dict())


def test_buffer_is_a_module_that_moves_and_saves_with_its_sampler():
    from torchjem import ChainSampler

    buf = ReplayBuffer(30, (1, 2, 2), n_classes=3, reinit_freq=0.25)
    sampler = ChainSampler(SGLD(n_steps=2), buf)
    state = sampler.state_dict()
    assert set(state) == {"buffer.x", "buffer.mean", "buffer.std", "buffer._extra_state"}
    assert state["buffer._extra_state"] == {"init": "uniform", "reinit_freq": 0.25}
    assert sampler.to(torch.float64).buffer.x.dtype == torch.float64  # .to() reaches the registered states
    # the buffer follows the model it samples for ("meta" stands in for a GPU on a CPU-only machine)
    jem = JEM(_net()).to("meta")
    x = ChainSampler(SGLD(n_steps=2), ReplayBuffer(30, (16,), n_classes=3)).sample(jem, 5)
    assert x.device.type == "meta"


def test_sample_writes_back_and_draw_leaves_the_buffer_alone():
    from torchjem import ChainSampler

    torch.manual_seed(0)
    jem = JEM(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    sampler = ChainSampler(SGLD(n_steps=3, noise=0.0), ReplayBuffer(30, (1, 2, 2), n_classes=3, reinit_freq=0.0))
    before = sampler.buffer.x.clone()
    shown = sampler.draw(jem, 8)  # unconditional from a buffer: its entries, 0 more steps
    assert torch.equal(sampler.buffer.x, before) and (shown == before[:, None]).flatten(2).all(2).any(0).all()
    y = torch.tensor([2, 0, 1])
    x = sampler.sample(jem, y=y)  # class-conditional: from each class's block, K steps, written back
    changed = (sampler.buffer.x != before).flatten(1).any(1).nonzero().flatten()
    assert (changed // 10).tolist() == [0, 1, 2]  # one entry changed in each class's block of 10
    assert all((sampler.buffer.x[i] == x).flatten(1).all(1).any() for i in changed)
    fresh = sampler.fresh().sample(jem, 6)
    assert fresh.shape == (6, 1, 2, 2) and sampler.fresh().buffer is None


def test_buffer_loads_the_pre_module_checkpoint_layout():
    buf = ReplayBuffer(40, (1, 2, 2), n_classes=2)
    old = {"x": torch.zeros(40, 1, 2, 2), "init": "gaussian", "reinit_freq": 0.1,
           "mean": torch.ones(2, 1, 2, 2), "std": torch.ones(2, 1, 2, 2)}  # fmt: skip
    buf.load_state_dict(old)
    assert buf.init == "gaussian" and buf.reinit_freq == 0.1 and torch.equal(buf.mean, old["mean"])
    assert torch.equal(buf.x, old["x"])
