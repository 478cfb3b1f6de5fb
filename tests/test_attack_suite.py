"""The attack suite (APGD-CE, targeted APGD-DLR, Square) and the gradient-masking checks, on models
whose answer is known: linear models (the minimal adversarial distance in closed form), ART's APGD
as a reference on a deterministic net, and a model that masks its gradient by rounding its input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchjem.data import load_data
from torchjem.evaluate.adaptive import suite_settings
from torchjem.evaluate.apgd import apgd, checkpoints, dlr_loss
from torchjem.evaluate.art import art_apgd, square
from torchjem.evaluate.masking import audit
from torchjem.evaluate.robustness import PGDSettings, robust_accuracy

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::DeprecationWarning")


def _linear(n_classes: int, seed: int = 0, n: int = 200):
    """A linear model on 8x8 inputs near the middle of the data range (no box constraint binds
    within the radii used), its inputs, its own predictions as labels, and per input and class
    the margin z_y - z_j and the weight difference w_y - w_j."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes))
    x = torch.rand(n, 1, 8, 8) * 0.6 - 0.3
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = model[1].weight.detach()
    margin = z.gather(1, y[:, None]) - z  # (N, C), 0 for the own class
    dw = w[y][:, None, :] - w[None]  # (N, C, 64)
    return model, x, y, margin, dw


def _min_distance(margin: torch.Tensor, dw: torch.Tensor, norm: str) -> torch.Tensor:
    """The minimal distance to another class: margin / ||w_y - w_j|| (dual norm: L2 for L2, L1 for L-inf)."""
    scale = dw.norm(dim=2) if norm == "l2" else dw.abs().sum(2)
    d = margin / scale.clamp_min(1e-12)
    d[margin == 0] = float("inf")
    return d.min(1).values


@pytest.mark.parametrize("norm,eps", [("l2", 0.3), ("linf", 0.04)])
def test_apgd_on_a_binary_linear_model_finds_exactly_the_inputs_within_reach(norm, eps):
    model, x, y, margin, dw = _linear(2)
    d = _min_distance(margin, dw, norm)
    assert 0.2 < (d < eps).float().mean() < 0.95  # an informative radius
    res = apgd(model, x, y, eps=eps, norm=norm, steps=30)
    broken = model(res.x_adv).argmax(1) != y
    assert torch.equal(broken, res.success)
    assert not (broken & (d > eps * 1.0001)).any()  # nothing beyond the known distance
    assert broken[d < 0.99 * eps].all()  # everything within reach is found
    dist = (res.x_adv - x).flatten(1)
    assert ((dist.norm(dim=1) if norm == "l2" else dist.abs().amax(1)) <= eps + 1e-5).all()
    assert res.trace[-1] > res.trace[0]


@pytest.mark.parametrize("norm,eps", [("l2", 0.3), ("linf", 0.05)])
def test_targeted_dlr_over_all_targets_reaches_the_nearest_boundary(norm, eps):
    model, x, y, margin, dw = _linear(5, seed=1)
    d = _min_distance(margin, dw, norm)
    broken = torch.zeros(len(y), dtype=torch.bool)
    for t in range(1, 5):
        broken |= apgd(model, x, y, eps=eps, norm=norm, steps=40, loss="dlr", target=(y + t) % 5).success
    assert not (broken & (d > eps * 1.0001)).any()
    assert broken[d < 0.95 * eps].all()


def test_dlr_loss_and_checkpoints_follow_the_paper():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0]])
    y, t = torch.tensor([0]), torch.tensor([1])
    assert dlr_loss(z, y).item() == pytest.approx(-(3 - 1) / (3 - 0))  # -(z_y - max other) / (z1 - z3)
    assert dlr_loss(z, y, t).item() == pytest.approx(-(3 - 1) / (3 - (0 - 1) / 2))
    assert dlr_loss(2 * z + 7, y, t).item() == pytest.approx(dlr_loss(z, y, t).item())  # shift and scale invariant
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # p = .22, .41, .57, .70, .80, .87, .93, .99


def test_apgd_averages_eot_draws_and_counts_its_calls():
    model, x, y, _, _ = _linear(5, seed=4, n=8)

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.calls = model, 0

        def forward(self, x):
            self.calls += 1
            return self.net(x + 0.01 * torch.randn_like(x))

    noisy = Noisy()
    apgd(noisy, x, y, eps=1e-4, steps=6, eot=3)  # too small to succeed: no early stop
    assert noisy.calls == 3 * 6 + 1  # eot draws per gradient (start + 5 steps), one look at the last iterate
    from torchjem.evaluate.adaptive import Counted, is_randomised

    counted = Counted(model)
    apgd(counted, x, y, eps=1e-4, steps=6)
    assert (counted.forwards, counted.backwards) == (7 * 8, 6 * 8)  # per input
    assert is_randomised(noisy, x) and not is_randomised(model, x)


def test_square_on_a_linear_model_stays_within_the_known_distance():
    model, x, y, margin, dw = _linear(5, seed=2, n=100)
    eps = 0.05
    d = _min_distance(margin, dw, "linf")
    torch.manual_seed(0)
    xa = square(model, x, y, eps=eps, norm="linf", queries=300, n_classes=5)
    assert (xa - x).abs().max() <= eps + 1e-6 and xa.abs().max() <= 1
    broken = model(xa).argmax(1) != y
    assert not (broken & (d > eps * 1.0001)).any()
    assert broken[d < 0.8 * eps].float().mean() >= 0.9  # black-box: most of what is within reach


@pytest.fixture(scope="module")
def mlp():
    """A small MLP on digits (deterministic, about 90% test accuracy after 200 steps) and 200 test digits."""
    data = load_data("digits")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        idx = torch.randint(0, len(data.x_train), (64,))
        loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), data.x_test[:200], data.y_test[:200]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_apgd_is_at_least_as_strong_as_arts(mlp, norm, eps):
    net, x, y = mlp
    torch.manual_seed(0)
    ours = 1 - apgd(net, x, y, eps=eps, norm=norm, steps=50).success.float().mean().item()
    theirs = (net(art_apgd(net, x, y, eps=eps, norm=norm, steps=50, n_classes=10)).argmax(1) == y).float().mean().item()
    assert 0.1 < theirs < 0.9  # informative
    assert ours <= theirs + 0.02  # the same or lower robust accuracy, within sampling noise


def test_suite_worst_case_is_below_pgd_and_never_rises(mlp):
    net, x, y = mlp
    x, y = x[:60], y[:60]
    eps = [0.0, 0.05, 0.1, 0.2]
    pgd = PGDSettings(steps=10)
    torch.manual_seed(0)
    res = robust_accuracy(net, x, y, eps=eps, attack=pgd, progress=False)
    a = audit(net, x, y, eps=eps, settings=suite_settings("quick"), pgd=pgd, start=res.robust,
              pgd_accuracy=res.accuracy, progress=False)
    clean = (net(x).argmax(1) == y).float().mean().item()
    assert a.worst[0] == pytest.approx(clean) and a.pgd == res.accuracy
    assert all(w <= p + 1e-9 for w, p in zip(a.worst, a.pgd))
    assert all(b <= c for c, b in zip(a.worst, a.worst[1:]))
    # per attack, accuracy after it never rises along the suite, and the last is the worst case
    after = [a.attacks[k]["accuracy_after"] for k in ("APGD-CE", "APGD-T", "Square")]
    assert all(all(b <= c + 1e-9 for c, b in zip(p, q)) for p, q in zip([a.pgd, *after], after))
    assert after[-1] == a.worst
    assert all(c.passed for c in a.checks), [c.note for c in a.checks if not c.passed]
    assert a.cost["APGD-CE"]["backward"] > 0 and a.cost["Square"]["backward"] == 0
    assert "All 6 checks pass" in a.verdict


class Rounded(nn.Module):
    """Masks its gradient: the input is rounded (zero gradient almost everywhere) before the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 2) / 2)


def test_masking_checks_flag_a_rounding_model_and_pass_its_linear_original():
    model, x, y, _, _ = _linear(5, seed=3, n=60)
    eps = [0.0, 0.02, 0.05]
    outcomes = {}
    for name, m in (("linear", model), ("rounded", Rounded(model))):
        yy = m(x).argmax(1).detach()
        torch.manual_seed(0)
        a = audit(m, x, yy, eps=eps, settings=suite_settings("quick"), pgd=PGDSettings(steps=10), progress=False)
        outcomes[name] = {c.name: c for c in a.checks}
        assert a.randomised is False
    assert all(c.passed for c in outcomes["linear"].values())
    r = outcomes["rounded"]
    # the gradient is zero: APGD never raises its loss; Square (no gradient) breaks what it could not
    assert not r["loss_rises"].passed and r["loss_rises"].figures["fraction"] == 0
    assert not r["black_box"].passed and max(r["black_box"].figures["square_broke"]) >= 5
    assert not r["unbounded"].passed and r["unbounded"].figures["accuracy"] > 0.05
    assert r["logits_and_range"].passed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import tiny_config
    from torchjem.training import train

    out = tmp_path_factory.mktemp("suite") / "run"
    train(tiny_config("train.max_steps=40", "seed=2"), data=load_data("digits"), progress=False, out=out)
    return out


@pytest.mark.slow
def test_jem_attack_suite_writes_the_audit_and_the_report_shows_it(run_dir, tmp_path, capsys):
    import json

    from torchjem.cli import main
    from torchjem.evaluate.results import RobustnessResult
    from torchjem.report import EvaluationReport, ModelReport, write_report
    from torchjem.rundir import read_attack

    args = ["attack", str(run_dir), "--eps", "0", "0.1", "0.3", "--refine-steps", "0", "1", "--limit", "12",
            "--steps", "3", "--chains", "1", "--distal", "0", "--suite", "quick", "--suite-limit", "8",
            "--quiet", "--seed", "0"]
    assert main(args) == 0
    assert "JEM-1, suite quick on 8 inputs: worst case" in capsys.readouterr().out
    res = read_attack(run_dir)
    assert set(res["audit"]) == {"JEM-0", "JEM-1"}
    for a in res["audit"].values():
        assert a["n"] == 8 and a["eps"] == [0.0, 0.1, 0.3]
        assert all(w <= p + 1e-9 for w, p in zip(a["worst"], a["pgd"]))
        assert a["worst"][2] <= a["worst"][1] <= a["worst"][0]
        assert [c["name"] for c in a["checks"]] == ["unbounded", "black_box", "stronger_pgd", "converged",
                                                    "loss_rises", "logits_and_range"]
        assert set(a["cost"]) == {"PGD", "APGD-CE", "APGD-T", "Square", "checks"}
        assert a["settings"]["pgd_n"] == 12 and a["verdict"]
    # JEM-1 draws noise: it is randomised, and its stronger-PGD check includes more EOT draws
    assert res["audit"]["JEM-1"]["randomised"] and "eot_x2" in res["audit"]["JEM-1"]["checks"][2]["figures"]
    assert not res["audit"]["JEM-0"]["randomised"]
    # the PGD figure the audit starts from: the saved PGD adversarials of the first 8 inputs, re-evaluated
    from torchjem.evaluate.robustness import adversarial_accuracy
    from torchjem.workflows.runs import load_run

    saved = torch.load(run_dir / "attack" / "adversarials_JEM-0.pt", weights_only=True)
    again, _ = adversarial_accuracy(load_run(run_dir).jem, saved["x_adv"][:, :8], saved["y"][:8])
    assert again == pytest.approx(res["audit"]["JEM-0"]["pgd"])
    # the report: an audit card whose cells name their paths in report.json
    rob = RobustnessResult.from_dict(res)
    report = EvaluationReport(title="t", created="now", models={"model": ModelReport(label="JEM", robustness=rob)})
    files = write_report(report, tmp_path)
    doc = json.loads(files["json"].read_text())
    html = files["html"].read_text()
    assert "Robustness audit" in html and (tmp_path / "model_robust_audit.png").is_file()
    key = json.dumps(["models", "model", "robustness", "audit", "JEM-1", "worst", 2]).replace('"', "&quot;")
    assert f'data-key="{key}"' in html
    assert doc["models"]["model"]["robustness"]["audit"]["JEM-1"]["worst"] == res["audit"]["JEM-1"]["worst"]
