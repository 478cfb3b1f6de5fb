import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from torchjem.energy import JEM
from torchjem.evaluate.ood import (
    BUILTIN_SETS,
    builtin_ood_set,
    fit_to_shape,
    ood_detection,
    ood_metrics,
    ood_scores,
    pxgrad,
)
from torchjem.workflows.inputs import build_ood_sets, check_ood_specs


def test_separable_scores_give_perfect_metrics_and_reversed_ones_the_worst():
    s_in, s_out = torch.linspace(1, 2, 50), torch.linspace(-2, -1, 70)
    good = ood_metrics(s_in, s_out)
    assert good == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    bad = ood_metrics(s_out, s_in)
    assert bad["auroc"] == 0.0 and bad["fpr95"] == 1.0


def test_identical_scores_are_chance():
    assert ood_metrics(torch.zeros(30), torch.zeros(40))["auroc"] == pytest.approx(0.5)


def test_fpr95_matches_a_brute_force_threshold_search():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 300)
    best = min(np.mean(s_out >= t) for t in np.concatenate([s_in, s_out]) if np.mean(s_in >= t) >= 0.95)
    assert ood_metrics(s_in, s_out)["fpr95"] == pytest.approx(best)


def test_large_log_px_scores_are_not_saturated():
    # Scores far outside [0, 1] (e.g. log p(x) ~ 50) must keep their order: AUROC 1, not 0.5.
    assert ood_metrics(torch.tensor([60.0, 61.0, 62.0]), torch.tensor([50.0, 51.0]))["auroc"] == 1.0


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).double()


def test_pxgrad_matches_finite_differences():
    net = small_net()
    x = torch.randn(3, 3, 4, dtype=torch.float64)
    eps = 1e-6
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(x[0].numel()):
            d = torch.zeros(x[0].numel(), dtype=torch.float64)
            d[i] = eps
            d = d.view(1, *x.shape[1:])
            fd.view(3, -1)[:, i] = (net(x + d).logsumexp(1) - net(x - d).logsumexp(1)) / (2 * eps)
    expected = -fd.flatten(1).norm(dim=1)
    assert torch.allclose(pxgrad(net, x), expected, rtol=1e-6, atol=1e-9)
    assert all(p.requires_grad for p in net.parameters())  # parameters unfrozen afterwards


def test_scores_are_the_documented_functions_of_the_logits():
    net = small_net()
    x = torch.randn(10, 3, 4, dtype=torch.float64)
    s = ood_scores(net, x)
    with torch.no_grad():
        logits = net(x)
    assert torch.allclose(s["px"], logits.logsumexp(1))
    assert torch.allclose(s["py"], logits.softmax(1).amax(1))
    assert torch.allclose(s["maxlogit"], logits.amax(1))
    assert torch.allclose(s["pxgrad"], pxgrad(net, x))


def test_energy_head_model_uses_its_own_log_px():
    torch.manual_seed(0)
    jem = JEM(nn.Sequential(nn.Flatten(), nn.Linear(12, 8)), energy_head=True, n_classes=3, feature_dim=8)
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        assert torch.allclose(ood_scores(jem, x, ["px"])["px"].float(), jem.log_px(x), atol=1e-6)


def test_ood_detection_reports_every_set_and_score_consistently():
    net = small_net().float()
    x_in = torch.rand(40, 3, 4) * 0.2
    sets = {"uniform": builtin_ood_set("uniform", x_in, 30), "interp": builtin_ood_set("interp", x_in)}
    res = ood_detection(net, x_in, sets)
    assert list(res.sets) == ["uniform", "interp"] and res.n_in == 40
    assert res.sets["uniform"]["n"] == 30
    for name in sets:
        for score in ("px", "py", "pxgrad", "maxlogit"):
            expected = ood_metrics(res.arrays["in"][score], res.arrays[name][score])
            assert res.sets[name][score] == pytest.approx(expected)


def test_ood_result_aurocs_match_sklearn_and_keep_the_report_schema():
    net = small_net().float()
    x_in, x_out = torch.rand(40, 3, 4) * 0.2, builtin_ood_set("uniform", torch.rand(40, 3, 4), 30)
    res = ood_detection(net, x_in, {"uniform": x_out}, scores=["px", "py"])
    with torch.no_grad():
        l_in, l_out = net(x_in).double(), net(x_out).double()
    labels = np.r_[np.ones(40), np.zeros(30)]
    px = np.r_[l_in.logsumexp(1).numpy(), l_out.logsumexp(1).numpy()]
    py = np.r_[l_in.softmax(1).amax(1).numpy(), l_out.softmax(1).amax(1).numpy()]
    assert res.sets["uniform"]["px"]["auroc"] == pytest.approx(roc_auc_score(labels, px))
    assert res.sets["uniform"]["py"]["auroc"] == pytest.approx(roc_auc_score(labels, py))
    d = res.to_dict()
    assert list(d) == ["n_in", "scores", "sets", "arrays"]
    assert d["n_in"] == 40 and d["scores"] == ["px", "py"] and list(d["arrays"]) == ["in", "uniform"]
    assert list(d["sets"]["uniform"]) == ["n", "px", "py"] and d["sets"]["uniform"]["n"] == 30


@pytest.mark.parametrize("name", list(BUILTIN_SETS))
def test_builtin_sets_have_the_in_distribution_shape_and_range(name):
    x_in = torch.rand(25, 1, 8, 8) * 2 - 1
    x = builtin_ood_set(name, x_in, seed=3)
    assert x.shape == x_in.shape and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, builtin_ood_set(name, x_in, seed=3))  # seeded
    assert not torch.equal(x, x_in)


def test_interp_mixes_neighbouring_examples():
    x_in = torch.stack([torch.full((1, 2, 2), v) for v in (-0.8, 0.0, 0.8)])
    x = builtin_ood_set("interp", x_in, n=200)
    # Means of two of {-0.8, 0, 0.8} plus noise 0.03: every value within 0.15 of -0.4, 0 or 0.4.
    dist = torch.stack([(x - c).abs() for c in (-0.4, 0.0, 0.4)]).amin(0)
    assert float(dist.max()) < 0.15


def test_fit_to_shape_resizes_and_rejects_what_it_cannot_convert():
    x = fit_to_shape(torch.rand(6, 1, 16, 16) * 2 - 1, (1, 8, 8), "big")
    assert x.shape == (6, 1, 8, 8)
    with pytest.raises(ValueError, match="OOD set 'two' .*channels"):
        fit_to_shape(torch.rand(6, 2, 8, 8), (1, 8, 8), "two")
    with pytest.raises(ValueError, match="empty"):
        fit_to_shape(torch.rand(0, 1, 8, 8), (1, 8, 8), "none")


def test_bad_input_gives_a_clear_error():
    net, x = small_net().float(), torch.rand(5, 3, 4)
    with pytest.raises(ValueError, match="unknown OOD score 'energy'.*px, py, pxgrad, maxlogit"):
        ood_detection(net, x, {"u": torch.rand(5, 3, 4)}, scores=["px", "energy"])
    with pytest.raises(ValueError, match="OOD set 'u' is empty"):
        ood_detection(net, x, {"u": torch.rand(0, 3, 4)})
    with pytest.raises(ValueError, match="OOD set 'u' has inputs of shape"):
        ood_detection(net, x, {"u": torch.rand(5, 2, 4)})
    with pytest.raises(ValueError, match="unknown OOD set 'svhn2'"):
        check_ood_specs(["uniform", "svhn2"])
    with pytest.raises(ValueError, match="data.classes"):
        build_ood_sets(["held_out"], x, held_out=None)
