import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config
from torchjem.cli import main
from torchjem.data import load_data
from torchjem.evaluate.attacks import JEMDefence, distal_adversarials, pgd, project
from torchjem.evaluate.robustness import PGDSettings, adversarial_accuracy, distal_report, robust_accuracy
from torchjem.training import train
from torchjem.workflows.attack import evaluate_saved, save_adversarials


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def clf(digits):
    """A small conv classifier trained for a few hundred steps (about 97% test accuracy)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.SiLU(),
        nn.Flatten(), nn.Linear(16 * 16, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(300):
        idx = torch.randint(0, len(digits.x_train), (64,))
        loss = F.cross_entropy(net(digits.x_train[idx]), digits.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def test_set(digits):
    return digits.x_test[:120], digits.y_test[:120]


def _defence(clf, **kw):
    return JEMDefence(clf, **{"n_steps": 2, "n_chains": 2, "step_size": 0.05, "noise": 0.01, "init_noise": 0.03, **kw})


def test_eps_zero_is_clean_accuracy_and_curve_never_rises(clf, test_set):
    x, y = test_set
    with torch.no_grad():
        clean = (clf(x).argmax(1) == y).float().mean().item()
    res = robust_accuracy(clf, x, y, eps=[0.0, 0.05, 0.1, 0.2, 0.4], attack=PGDSettings(steps=10), progress=False)
    acc = res.accuracy
    assert acc[0] == pytest.approx(clean, abs=1e-6)
    assert all(b <= a for a, b in zip(acc, acc[1:]))
    assert acc[-1] < acc[0] - 0.3  # the attack does bite at large eps
    # the stochastic defence too: cumulative robustness cannot rise
    d = robust_accuracy(_defence(clf), x[:40], y[:40], eps=[0.0, 0.1, 0.2], attack=PGDSettings(steps=5), progress=False)
    assert all(b <= a for a, b in zip(d.accuracy, d.accuracy[1:]))
    assert not any(m.training for m in clf.modules())  # the wrapped classifier is left in eval mode


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.5)])
def test_adversarials_stay_in_ball_and_data_range(clf, test_set, norm, eps):
    x, y = test_set
    res = pgd(clf, x, y, eps=eps, norm=norm, steps=10, restarts=2)
    d = (res.x_adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (dist <= eps + 1e-5).all()
    assert res.x_adv.min() >= -1 and res.x_adv.max() <= 1
    assert res.success.float().mean() > 0.2
    # success reported = what the model does on the returned adversarials
    assert torch.equal(clf(res.x_adv).argmax(1) != y, res.success)


def test_l2_projection_is_the_nearest_feasible_point():
    torch.manual_seed(1)
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1
    x = x0 + torch.randn_like(x0) * 0.8
    eps = 1.0
    p = project(x, x0, eps, norm="l2")
    assert ((p - x0).flatten(1).norm(dim=1) <= eps + 1e-5).all() and p.abs().max() <= 1
    assert torch.allclose(project(p, x0, eps, norm="l2"), p, atol=1e-5)  # idempotent
    # clamping after a plain ball projection is feasible but never nearer, and here strictly farther
    d = x - x0
    naive = (x0 + d * (eps / d.flatten(1).norm(dim=1).clamp_min(eps)).view(-1, 1, 1, 1)).clamp(-1, 1)
    ours, theirs = (p - x).flatten(1).norm(dim=1), (naive - x).flatten(1).norm(dim=1)
    assert (ours <= theirs + 1e-5).all() and (ours < theirs - 1e-3).any()
    # no feasible point on the segment towards x beats it: random feasible points are all farther
    for _ in range(20):
        q = project(x0 + torch.randn_like(x0) * 0.5, x0, eps, norm="l2")
        assert ((q - x).flatten(1).norm(dim=1) >= ours - 1e-5).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("norm,eps", [("linf", 0.12), ("l2", 1.2)])
def test_agrees_with_foolbox_pgd(clf, test_set, norm, eps):
    fb = pytest.importorskip("foolbox")  # test-only dependency (the `test` extra)
    attack = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    x, y = test_set
    step = eps / 8
    ours = pgd(clf, x, y, eps=eps, norm=norm, steps=15, step_size=step, random_start=False)
    fmodel = fb.PyTorchModel(clf, bounds=(-1, 1))
    _, adv, success = attack(abs_stepsize=step, steps=15, random_start=False)(fmodel, x, y, epsilons=eps)
    ours_acc, theirs_acc = 1 - ours.success.float().mean().item(), 1 - success.float().mean().item()
    assert 0.3 < theirs_acc < 0.95  # a regime where the attacks are informative
    assert abs(ours_acc - theirs_acc) <= 0.025
    if norm == "linf":  # same path exactly; we keep the best iterate, foolbox the last
        assert ours_acc <= theirs_acc + 1e-6


def test_refinement_defence_is_differentiable_end_to_end(clf, test_set):
    x = test_set[0][:4].double().requires_grad_(True)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.SiLU(), nn.Linear(16, 10)).double()
    defence = JEMDefence(net, n_steps=3, n_chains=1, step_size=0.5, noise=0.0, init_noise=0.0)
    (g,) = torch.autograd.grad(defence(x)[:, 0].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the gradient goes through the SGLD steps (second derivatives), checked by finite differences
    v = torch.randn_like(x)
    h = 1e-6
    with torch.no_grad():
        fd = (defence(x + h * v)[:, 0].sum() - defence(x - h * v)[:, 0].sum()) / (2 * h)
    assert float((g * v).sum()) == pytest.approx(float(fd), rel=1e-5)
    # ... and differs from the straight-through (BPDA) gradient, which ignores them
    bpda = JEMDefence(net, n_steps=3, n_chains=1, step_size=0.5, noise=0.0, gradient="bpda")
    (g_bpda,) = torch.autograd.grad(bpda(x)[:, 0].sum(), x)
    assert not torch.allclose(g, g_bpda, rtol=1e-3)
    # on the real classifier with noise, in float32
    xf = test_set[0][:4].clone().requires_grad_(True)
    (gf,) = torch.autograd.grad(F.cross_entropy(_defence(clf)(xf), test_set[1][:4]), xf)
    assert torch.isfinite(gf).all() and gf.abs().sum() > 0


class _Trap(nn.Module):
    """Class 1 wins once the single pixel exceeds 0.075, and its gradient is zero below 0.05: PGD
    succeeds only from random starts above 0.05 (one in four at eps 0.1)."""

    def forward(self, x):
        z = 40 * torch.relu(x.flatten(1)[:, :1] - 0.05) - 1
        return torch.cat([torch.zeros_like(z), z], 1)


def test_restarts_keep_the_best_adversarial(clf, test_set):
    x, y = torch.zeros(400, 1, 1, 1), torch.zeros(400, dtype=torch.long)
    torch.manual_seed(5)
    multi = pgd(_Trap(), x, y, eps=0.1, restarts=4, steps=5)
    torch.manual_seed(5)
    singles = [pgd(_Trap(), x, y, eps=0.1, restarts=1, steps=5) for _ in range(4)]
    rates = [s.success.float().mean().item() for s in singles]
    assert all(0.15 < r < 0.35 for r in rates)
    any_single = torch.stack([s.success for s in singles]).any(0)
    assert torch.equal(multi.success, any_single)  # any restart that succeeds counts, later failures don't undo it
    assert multi.success.float().mean() > max(rates) + 0.2
    assert torch.equal(_Trap()(multi.x_adv).argmax(1) != y, multi.success)  # the kept ones do fool it
    # where no restart succeeds, the kept adversarial is the one with the highest loss over all restarts
    x, y = test_set
    torch.manual_seed(6)
    multi = pgd(clf, x, y, eps=0.05, restarts=3, steps=2)
    torch.manual_seed(6)
    best_loss = torch.stack([pgd(clf, x, y, eps=0.05, restarts=1, steps=2).loss for _ in range(3)]).amax(0)
    failed = ~multi.success
    assert failed.sum() > 50 and torch.allclose(multi.loss[failed], best_loss[failed], atol=1e-5)


def test_targeted_and_eot(clf, test_set):
    x, y = test_set[0][:40], test_set[1][:40]
    target = (y + 1) % 10
    res = pgd(clf, x, target, eps=0.5, steps=20, targeted=True)
    assert res.success.float().mean() > 0.8
    assert torch.equal(clf(res.x_adv).argmax(1) == target, res.success)

    class Counting(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x):
            self.calls += 1
            return self.net(x + 0.01 * torch.randn_like(x))

    model = Counting(clf)
    pgd(model, x[:1], y[:1], eps=0.01, steps=3, eot=4, random_start=False)
    assert model.calls == 3 * 4 + 1  # 4 gradient draws per step, then one look at the last iterate


def test_bad_input_is_rejected(clf, test_set):
    x, y = test_set
    with pytest.raises(ValueError, match="norm"):
        pgd(clf, x, y, eps=0.1, norm="l3")
    with pytest.raises(ValueError, match="increasing"):
        robust_accuracy(clf, x, y, eps=[0.2, 0.1], progress=False)
    with pytest.raises(ValueError, match="data range"):
        pgd(clf, x * 3, y, eps=0.1)
    with pytest.raises(ValueError, match="labels"):
        pgd(clf, x, y + 10, eps=0.1)


def test_saved_adversarials_reevaluate_to_the_same_figures(clf, test_set, tmp_path):
    x, y = test_set
    res = robust_accuracy(clf, x, y, eps=[0.0, 0.1, 0.2], attack=PGDSettings(steps=5), progress=False)
    path = save_adversarials(tmp_path / "adv.pt", res, y, norm="linf", setting="clf")
    again = evaluate_saved(path, clf)
    assert again["accuracy"] == res.accuracy and again["eps"] == [0.0, 0.1, 0.2]
    # on another model (transfer) the figures differ but follow the same rule
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert evaluate_saved(path, other)["accuracy"] == adversarial_accuracy(other, res.x_adv, y)[0]


def test_transfer_candidates_only_lower_the_figure(clf, test_set):
    x, y = test_set[0][:40], test_set[1][:40]
    source = robust_accuracy(clf, x, y, eps=[0.0, 0.3], attack=PGDSettings(steps=5), progress=False)
    weak = nn.Sequential(clf, nn.Identity())  # the same function: the transferred adversarials fool it
    weak_pgd = PGDSettings(steps=1, step_size=1e-4, random_start=False)
    res = robust_accuracy(weak, x, y, eps=[0.0, 0.3], attack=weak_pgd, candidates=source.x_adv, progress=False)
    assert res.accuracy_direct[1] > source.accuracy[1] + 0.2  # the direct attack alone is too weak
    assert res.accuracy[1] <= source.accuracy[1] + 1e-6  # every transferred success counts
    # with a randomised defence too, adding candidates never raises the figure
    res = robust_accuracy(_defence(clf), x, y, eps=[0.0, 0.3], attack=weak_pgd, candidates=source.x_adv, progress=False)
    assert all(a <= d for a, d in zip(res.accuracy, res.accuracy_direct))


def test_distal_adversarials_are_confident(clf, digits):
    x = distal_adversarials(clf, torch.arange(20) % 10, (1, 8, 8), steps=50)
    assert x.min() >= -1 and x.max() <= 1
    figures, xd = distal_report(clf, digits.x_test[:100], 20, steps=50)
    assert figures.hit_rate >= 0.9 and figures.confidence_mean > 0.8
    with torch.no_grad():
        assert figures.log_px_data_mean == pytest.approx(float(clf(digits.x_test[:100]).logsumexp(1).mean()), 1e-4)
    assert 0 <= figures.auroc_log_px <= 1 and xd.shape == (20, 1, 8, 8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("attack") / "run"
    train(tiny_config("train.max_steps=40", "seed=2"), data=digits, progress=False, out=out)
    return out


def test_cli_attack_writes_results_and_reevaluates(run_dir, tmp_path, capsys):
    args = ["attack", str(run_dir), "--eps", "0", "0.1", "0.3", "--refine-steps", "0", "1", "--limit", "20"]
    args += ["--steps", "3", "--chains", "2", "--distal", "10", "--baseline", str(run_dir), "--no-random-start"]
    assert main(args + ["--quiet", "--seed", "0"]) == 0
    res = json.loads((run_dir / "attack" / "attack.json").read_text())
    assert res["norm"] == "linf" and res["eps"] == [0.0, 0.1, 0.3] and res["n"] == 20
    assert set(res["curves"]) == {"JEM-0", "JEM-1", "baseline"}
    assert res["curves"]["JEM-0"] == res["curves"]["baseline"]  # the same run, deterministic
    assert all(len(c) == 3 and c[2] <= c[1] <= c[0] for c in res["curves"].values())
    assert res["png"] == "attack/robust_accuracy.png"
    assert (run_dir / res["png"]).read_bytes()[:4] == b"\x89PNG"
    assert set(res["distal"]) == {"jem", "baseline"} and res["distal"]["jem"]["n"] == 10
    capsys.readouterr()
    saved = run_dir / "attack" / "adversarials_JEM-0.pt"
    assert main(["attack", "--evaluate-saved", str(saved), "--model", str(run_dir), "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["JEM-0"]["accuracy"] == res["curves"]["JEM-0"]
    assert main(["attack", str(run_dir), "--norm", "l2", "--eps", "0.1", "nan", "--quiet"]) == 2  # not finite
    assert main(["attack", "--evaluate-saved", str(saved), "--quiet"]) == 2  # no model given
