import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config
from torchjem import JEM, SGLD, ChainSampler, ReplayBuffer, Trainer, load_config
from torchjem.build import build_sampler, build_sgld
from torchjem.errors import ConfigError
from torchjem.sampling import PYLD


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
    assert set(state) == {"buffer.x", "buffer.age", "buffer.mean", "buffer.std", "buffer.factor", "buffer._extra_state"}
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
           "mean": torch.ones(2, 1, 2, 2), "std": torch.ones(2, 1, 2, 2)}
    buf.load_state_dict(old)
    assert buf.init == "gaussian" and buf.reinit_freq == 0.1 and torch.equal(buf.mean, old["mean"])
    assert torch.equal(buf.x, old["x"])


# -- buffer.init = gaussian_full: per-class Gaussians with full (or low-rank + diagonal) covariance --
def _correlated_classes(n=600, dim=6, seed=0):
    """Two classes of ``dim`` values with one chosen covariance (correlations up to ~0.9, stds
    0.1: draws stay well inside [-1, 1]), means -0.2 and 0.3, and 50 unlabelled outliers at 0.9."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim)) + 2.0  # a shared component: strong correlations
    cov = a @ a.T
    d = np.sqrt(np.diag(cov))
    cov = 0.01 * cov / np.outer(d, d)
    chol = np.linalg.cholesky(cov)
    x = np.concatenate([-0.2 + rng.normal(size=(n, dim)) @ chol.T, 0.3 + rng.normal(size=(n, dim)) @ chol.T])
    y = np.array([0] * n + [1] * n)
    x = np.concatenate([x, np.full((50, dim), 0.9)]).astype(np.float32)  # unlabelled: left out of the fit
    y = np.concatenate([y, np.full(50, -100)])
    return x, y


def test_gaussian_full_draws_have_the_class_covariance():
    x, y = _correlated_classes()
    buf = ReplayBuffer(100, (2, 3), n_classes=2, reinit_freq=1.0)
    buf.fit_gaussian(torch.from_numpy(x).view(-1, 2, 3), torch.from_numpy(y), full=True)
    assert buf.init == "gaussian_full" and buf.factor.shape == (2, 6, 6) and buf.std.numel() == 0
    diagonal = ReplayBuffer(100, (2, 3), n_classes=2)
    diagonal.fit_gaussian(torch.from_numpy(x).view(-1, 2, 3), torch.from_numpy(y))
    for c in (0, 1):
        xc = x[y == c]
        target = np.cov(xc.T) + 1e-4 * np.eye(6)  # the class's sample covariance + the jitter
        draws = buf.noise(torch.full((20000,), c)).flatten(1).double().numpy()
        assert np.abs(draws).max() < 1  # no draw reached the clamp: the covariance is the Gaussian's
        tol = 0.05 * np.abs(target).max()  # ~5 sd of a covariance entry estimated from 20000 draws
        assert np.abs(np.cov(draws.T) - target).max() < tol
        assert np.abs(draws.mean(0) - xc.mean(0)).max() < 0.01  # the -100 outliers at 0.9 are left out
        # the check can fail: the correlations are far beyond the tolerance, and the diagonal fit misses them
        off = target - np.diag(np.diag(target))
        assert np.abs(off).max() > 10 * tol
        diag_draws = diagonal.noise(torch.full((20000,), c)).flatten(1).double().numpy()
        assert np.abs(np.cov(diag_draws.T) - target).max() > 5 * tol
    # fresh chains (reinit) come from the same Gaussians: each from its class's
    xs, _ = buf.draw(0, torch.tensor([1] * 4000))
    assert np.abs(xs.flatten(1).mean(0).numpy() - x[y == 1].mean(0)).max() < 0.01
    assert buf.x[:50].mean() < -0.15 and buf.x[50:].mean() > 0.25  # the buffer itself starts from them


def test_gaussian_full_low_rank_form_keeps_the_top_eigenvalues():
    rng = np.random.default_rng(1)
    dim, n = 40, 800
    basis = np.linalg.qr(rng.normal(size=(dim, 2)))[0]  # a rank-2 structure ...
    x = (rng.normal(size=(n, 2)) * [0.3, 0.15]) @ basis.T + 0.01 * rng.normal(size=(n, dim))  # ... + small noise
    x = x.astype(np.float32)
    buf = ReplayBuffer(10, (dim,), n_classes=1)
    buf.fit_gaussian(torch.from_numpy(x), torch.zeros(n, dtype=torch.long), full=True, rank=4, full_max_dim=16)
    assert buf.factor.shape == (1, dim, 4) and buf.std.shape == (1, dim)  # 40 > 16 values: low rank + diagonal
    draws = buf.noise(torch.zeros(20000, dtype=torch.long)).double().numpy()
    top_data = np.linalg.eigh(np.cov(x.T))[0][-2:]
    top_draws = np.linalg.eigh(np.cov(draws.T))[0][-2:]
    assert np.allclose(top_draws, top_data, rtol=0.05)
    # the diagonal keeps each value's variance: principal part + residual = the data's variance (+ jitter)
    assert np.allclose(np.diag(np.cov(draws.T)), np.diag(np.cov(x.T)) + 1e-4, rtol=0.06, atol=2e-5)
    # at or below the threshold the same call keeps the full covariance
    buf.fit_gaussian(torch.from_numpy(x), torch.zeros(n, dtype=torch.long), full=True, rank=4, full_max_dim=40)
    assert buf.factor.shape == (1, dim, dim) and buf.std.numel() == 0


@pytest.mark.parametrize("full_max_dim", [1024, 4])
def test_gaussian_full_state_round_trip_gives_identical_draws(full_max_dim):
    x, y = _correlated_classes(n=50)
    buf = ReplayBuffer(40, (6,), n_classes=2, reinit_freq=0.5)
    buf.fit_gaussian(torch.from_numpy(x), torch.from_numpy(y), full=True, rank=3, full_max_dim=full_max_dim)
    other = ReplayBuffer(40, (6,), n_classes=2)
    other.load_state_dict(buf.state_dict())
    assert other.init == "gaussian_full" and other.reinit_freq == 0.5
    for key in ("x", "mean", "std", "factor"):
        assert torch.equal(getattr(other, key), getattr(buf, key))
    labels = torch.tensor([1, 0, 0, 1, 1, 0, 1])
    draws = []
    for b in (buf, other):
        torch.manual_seed(7)
        draws.append((b.noise(labels), b.draw(0, labels)[0]))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert buf.to(torch.float64).factor.dtype == torch.float64  # .to() carries the fitted tensors


def test_gaussian_full_memory_stays_within_the_stated_bounds():
    n_classes, shape, dim, rank = 10, (3, 32, 32), 3072, 16
    x = torch.rand(n_classes * 20, *shape) * 2 - 1
    y = torch.arange(n_classes).repeat_interleave(20)
    buf = ReplayBuffer(n_classes, shape, n_classes=n_classes)
    buf.fit_gaussian(x, y, full=True, rank=rank)  # D = 3072 > 1024: low rank + diagonal
    fitted = sum(t.numel() for t in (buf.mean, buf.std, buf.factor))
    assert fitted <= n_classes * dim * (rank + 2)  # docs/samplers.md: C * D * (r + 2) floats
    assert fitted < n_classes * dim * dim / 100  # instead of C * D^2
    small = ReplayBuffer(2, (6,), n_classes=2)
    xs, ys = _correlated_classes(n=20)
    small.fit_gaussian(torch.from_numpy(xs), torch.from_numpy(ys), full=True)
    assert sum(t.numel() for t in (small.mean, small.std, small.factor)) == 2 * 6 * (6 + 1)  # C * D * (D + 1)


def test_gaussian_full_from_the_config():
    x, y = _correlated_classes(n=40)
    cfg = load_config(None, ["buffer.init=gaussian_full", "buffer.size=20", "buffer.init_full_max_dim=4",
                             "buffer.init_rank=2"])
    sampler = build_sampler(cfg, (6,), 2, fit=(torch.from_numpy(x), torch.from_numpy(y)))
    assert sampler.buffer.init == "gaussian_full" and sampler.buffer.factor.shape == (2, 6, 2)
    for bad, key in [("buffer.init=gauss", "buffer.init"), ("buffer.init_rank=0", "buffer.init_rank"),
                     ("buffer.init_full_max_dim=0", "buffer.init_full_max_dim")]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


# -- sgld.kind = pyld: JEM++'s proximal Langevin ---------------------------------------------------
def _pyld_net():
    torch.manual_seed(0)  # an in-place ReLU right after the first layer, as many nets have
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.Tanh(),
                         nn.Linear(8, 3))


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("eps", [10.0, 0.02])
def test_pyld_moves_x_through_the_first_layer_only(conditional, eps):
    net = _pyld_net()
    jem = JEM(net)
    x = torch.rand(5, 1, 2, 3) - 0.5
    y = torch.tensor([0, 2, 1, 1, 0]) if conditional else None
    pyld = PYLD(n_steps=1, inner_steps=3, inner_step_size=0.1, noise=0.0, grad_clamp=eps)
    assert pyld.find_first_layer(jem, x)[0] == "net.1"
    out = pyld.run(jem, x, y)
    # by hand: p = d log p / d h on the full net (once), h = W x + b; each inner step ascends <W x + b, p>
    h = net[1](net[0](x)).detach().requires_grad_(True)
    logits = net[5](net[4](net[3](torch.relu(h))))
    logp = logits.logsumexp(1) if y is None else logits.gather(1, y[:, None])
    (p,) = torch.autograd.grad(logp.sum(), h)
    step = (p @ net[1].weight.detach()).view_as(x).clamp(-eps, eps)  # d <W x + b, p> / dx, clamped
    expected = x.clone()
    for _ in range(3):
        expected = (expected + 0.1 * step).clamp(-1, 1)
    assert torch.allclose(out, expected, atol=1e-6)
    if eps > 1:  # unclamped: differentiating through the later layers at every inner step moves x elsewhere
        through = SGLD(n_steps=3, step_size=0.1, noise=0.0, clamp=(-1.0, 1.0)).run(jem, x, y)
        assert not torch.allclose(through, expected, atol=1e-4)


def test_pyld_finds_the_first_layer_in_forward_order_or_by_name():
    class Reversed(nn.Module):  # the head is registered before the layer that runs first
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.body = nn.Linear(6, 8)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x.flatten(1))))

    jem, x = JEM(Reversed()), torch.rand(4, 6)
    assert PYLD().find_first_layer(jem, x) == ("net.body", jem.net.body)
    assert PYLD(first_layer="body").find_first_layer(jem, x) == ("net.body", jem.net.body)  # in the classifier
    assert PYLD(first_layer="net.head").find_first_layer(jem, x) == ("net.head", jem.net.head)  # in the JEM


def test_noiseless_pyld_raises_log_px():
    jem = JEM(_net()).eval()
    x = torch.rand(64, 1, 4, 4) * 2 - 1
    pyld = PYLD(n_steps=3, inner_steps=5, inner_step_size=0.2, noise=0.0)
    assert jem.log_px(pyld.run(jem, x)).mean() > jem.log_px(x).mean() + 1e-3
    y = torch.randint(0, 4, (64,))
    assert jem.log_pxy(pyld.run(jem, x, y), y).mean() > jem.log_pxy(x, y).mean() + 1e-3
    out = PYLD(n_steps=4, inner_step_size=5.0, grad_clamp=1.0).run(jem, x)
    assert out.min() >= -1 and out.max() <= 1 and not out.requires_grad  # inner steps stay in the data range


def test_pyld_leaves_no_parameter_gradients_and_restores_modes():
    net = _net()
    jem = JEM(net)
    jem.train()
    net[3].eval()
    net[1].weight.requires_grad_(False)
    modes = [m.training for m in jem.modules()]
    flags = [p.requires_grad for p in jem.parameters()]
    seen = []
    net[3].register_forward_hook(lambda m, i, o: seen.append(m.training))
    PYLD(n_steps=3, inner_steps=2, noise=0.01).run(jem, torch.rand(8, 1, 4, 4))
    assert seen == [False] * 3  # eval mode; the inner steps stop at the first layer, before the dropout
    assert all(p.grad is None for p in jem.parameters())
    assert [m.training for m in jem.modules()] == modes
    assert [p.requires_grad for p in jem.parameters()] == flags
    assert not any(m._forward_hooks for m in jem.modules() if m is not net[3])  # its hooks are gone

    def compiled(*args, **kwargs):  # train.compile installs the compiled call in place; its graph hides h
        raise AssertionError("PYLD ran the compiled call")

    net._compiled_call_impl = compiled
    assert PYLD(n_steps=1, inner_steps=1).run(jem, torch.rand(8, 1, 4, 4)).shape == (8, 1, 4, 4)
    assert net._compiled_call_impl is compiled  # eager while sampling, compiled again after


def test_pyld_unknown_first_layer_is_a_config_error_naming_it():
    jem = JEM(_net())
    with pytest.raises(ConfigError, match=r"sgld.first_layer = 'net.conv9'.*no module"):
        PYLD(first_layer="net.conv9").run(jem, torch.rand(4, 1, 4, 4))
    cfg = load_config(None, ["sgld.kind=pyld", "sgld.first_layer=conv1"])
    with pytest.raises(ConfigError, match="'conv1'"):
        build_sgld(cfg).run(jem, torch.rand(4, 1, 4, 4))
    with pytest.raises(ConfigError, match="sgld.first_layer"):
        load_config(None, ["sgld.first_layer=' '"])
    with pytest.raises(ConfigError, match="sgld.kind"):
        load_config(None, ["sgld.kind=hmc"])
    with pytest.raises(ConfigError, match="sgld.inner_steps"):
        load_config(None, ["sgld.inner_steps=0"])


def test_pyld_from_the_config_drives_the_chain_sampler_and_training(tmp_path):
    pyld = build_sgld(load_config(None, ["sgld.kind=pyld", "sgld.steps=5", "sgld.noise=0.001"]))
    assert isinstance(pyld, PYLD) and (pyld.n_steps, pyld.inner_steps, pyld.inner_step_size) == (5, 5, 0.2)
    assert pyld.grad_clamp == 0.01 and pyld.noise == 0.001 and pyld.first_layer is None
    assert isinstance(build_sgld(load_config(None, [])), SGLD)  # the default stays SGLD
    sampler = ChainSampler(pyld, ReplayBuffer(20, (1, 4, 4), n_classes=4))
    before = sampler.buffer.x.clone()
    x = sampler.sample(JEM(_net()), 6)
    assert x.shape == (6, 1, 4, 4) and not torch.equal(sampler.buffer.x, before)  # written back
    cfg = tiny_config("train.max_steps=3", "sgld.kind=pyld", "sgld.steps=2", "sgld.inner_steps=2",
                      "buffer.init=gaussian_full")
    t = Trainer(cfg, progress=False, out=tmp_path / "r")
    assert isinstance(t.sampler.langevin, PYLD) and t.buffer.factor.shape == (10, 64, 64)
    t.fit()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in t.run.read_metrics() if "loss" in r)


def test_the_defence_and_sgld_take_the_same_langevin_steps():
    from torchjem.evaluate.attacks import JEMDefence

    net = _net().eval()  # the defence runs the model in the mode it is given; SGLD.run sets eval
    x = torch.rand(6, 1, 4, 4) * 2 - 1
    settings = {"step_size": 0.3, "noise": 0.05, "clamp": (-0.9, 0.9), "grad_clamp": 0.2}
    # by hand: x <- clamp(x + step * clamp(d LSE f(x) / dx) + noise * N(0, I)), one normal draw a step
    torch.manual_seed(7)
    want = x.clone()
    for _ in range(3):
        xr = want.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.logsumexp(net(xr), dim=1).sum(), xr)
        want = (want + 0.3 * g.clamp(-0.2, 0.2) + 0.05 * torch.randn_like(want)).clamp(-0.9, 0.9)
    torch.manual_seed(7)
    chains = SGLD(n_steps=3, **settings).run(net, x)
    defence = JEMDefence(net, n_steps=3, n_chains=1, init_noise=0.0, **settings)
    torch.manual_seed(7)
    refined = defence.refine(x)
    torch.manual_seed(7)
    exact = defence.refine(x.clone().requires_grad_(True))  # the attack's path: the steps keep their graph
    assert torch.allclose(chains, want, atol=1e-6) and not torch.equal(chains, x)
    assert torch.equal(refined, chains)  # the same update and the same draws, bit for bit
    assert exact.requires_grad and torch.allclose(exact.detach(), chains, atol=1e-7)


def test_scale_step_scales_the_step_the_sampler_was_built_with():
    sgld = SGLD(n_steps=1, step_size=2.0)
    sgld.scale_step(0.5)
    assert sgld.step_size == 1.0
    sgld.scale_step(0.5)  # relative to the built step, not cumulative: a resume re-applies the saved factor
    assert sgld.step_size == 1.0 and sgld.base_step_size == 2.0
    sgld.scale_step(1.0)
    assert sgld.step_size == 2.0
    pyld = PYLD(inner_step_size=0.2)
    pyld.scale_step(0.25)  # PYLD's step is its inner step
    assert pyld.inner_step_size == pyld.step_size == 0.2 * 0.25 and pyld.base_step_size == 0.2


def test_buffer_state_is_what_a_replay_buffer_loads_and_buffer_settings_reads_it_back():
    from torchjem.errors import InputError
    from torchjem.sampling import buffer_settings, buffer_state

    x, mean, std = torch.rand(20, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    buf = ReplayBuffer(20, (1, 2, 2), n_classes=2)
    buf.load_state_dict(buffer_state(x, init="gaussian", reinit_freq=0.3, mean=mean, std=std))
    assert torch.equal(buf.x, x) and torch.equal(buf.mean, mean) and torch.equal(buf.std, std)
    assert (buf.init, buf.reinit_freq) == ("gaussian", 0.3) and buf.fitted()
    assert buffer_settings(buf.state_dict()) == {"init": "gaussian", "reinit_freq": 0.3}
    assert buffer_settings({"x": x, "init": "uniform", "reinit_freq": 0.1}) == {"init": "uniform", "reinit_freq": 0.1}
    # settings left out keep the loading buffer's own; no Gaussians given: the buffer keeps its own
    other = ReplayBuffer(20, (1, 2, 2), n_classes=2, reinit_freq=0.2)
    other.load_state_dict(buffer_state(x))
    assert (other.init, other.reinit_freq) == ("uniform", 0.2) and torch.equal(other.x, x)
    assert buffer_settings(buffer_state(x)) == {}
    with pytest.raises(InputError, match="unknown replay buffer tensors"):
        buffer_state(x, labels=torch.zeros(20))
