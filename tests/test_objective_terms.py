"""Every term of the hybrid objective computed by hand and compared with the library's.

A fixed tiny net (float64), fixed data, fixed labels with unlabelled (-100) examples, and fixed
SGLD samples injected through a stub sampler, so that the reference below depends on nothing in
torchjem: its logits, log p(x), cross-entropy, contrastive p(x) term, p(x|y) term and energy
penalty are written out from the formulas (JEM_REFERENCE.md) with explicit weight matrices and
per-example loops. Compared: the loss, every logged statistic and every parameter gradient, for
the paper's model (log p(x) = logsumexp of the logits) and the energy-head model, with and
without the un-augmented p(x) batch (``x_px``), in one forward pass and in separate passes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchjem import JEM, HybridObjective
from torchjem.build import build_objective
from torchjem.config import load_config

DIM, C, N = 4, 3, 6
Y = torch.tensor([0, 2, -100, 1, -100, 2])  # two unlabelled examples
WEIGHTS = {"pyx": 1.3, "px": 0.7, "pxy": 0.4, "energy_l2": 0.15}  # all different: a mixed-up weight shows


def fixed(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * (2 * torch.rand(*shape, generator=g, dtype=torch.float64) - 1)


X = fixed(N, 1, 2, 2, seed=1)  # data (as the cross-entropy sees it: augmented)
X_PX = fixed(N, 1, 2, 2, seed=2)  # the same images un-augmented: what the p(x) term sees when given
X_Q = fixed(N, 1, 2, 2, seed=3, scale=3.0)  # "SGLD samples" of the p(x) term
XY_Q = fixed(4, 1, 2, 2, seed=4, scale=1.5)  # "conditional samples", one per labelled example


class FixedSamples:
    """A stand-in for ChainSampler: returns known samples and records what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, torch.Tensor | None]] = []

    def sample(self, model, n=None, y=None, n_steps=None, update=True, reinit=True):
        self.calls.append((n, None if y is None else y.clone()))
        return X_Q[:n].clone() if y is None else XY_Q[: len(y)].clone()


def make_model(kind: str) -> tuple[JEM, dict[str, torch.Tensor]]:
    """The JEM and its parameters by name (the by-hand forward reads them directly)."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(DIM, 5), nn.Tanh())
    if kind == "lse":
        net = nn.Sequential(*backbone, nn.Linear(5, C))
        jem = JEM(net).double()
        p = {"w1": net[1].weight, "b1": net[1].bias, "wc": net[3].weight, "bc": net[3].bias}
    else:
        backbone.num_features = 5
        jem = JEM(backbone, energy_head=True, n_classes=C).double()
        p = {"w1": backbone[1].weight, "b1": backbone[1].bias, "wc": jem.class_head.weight, "bc": jem.class_head.bias,
             "we": jem.energy_head.weight, "be": jem.energy_head.bias}
    with torch.no_grad():  # larger weights than the default init: logits spread, terms far apart
        for t in p.values():
            t.mul_(3.0)
    assert {id(t) for t in p.values()} == {id(t) for t in jem.parameters()}
    return jem, p


def hand_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits (n, C), [log p(x_i)]) written out: h = tanh(W1 x + b1), logits = Wc h + bc;
    log p(x) = logsumexp of the logits, or we . h + be with an energy head."""
    v = x.reshape(len(x), -1)
    h = torch.tanh(v @ p["w1"].T + p["b1"])
    logits = h @ p["wc"].T + p["bc"]
    lpx = []
    for i in range(len(x)):
        if "we" in p:
            lpx.append((h[i] * p["we"][0]).sum() + p["be"][0])
        else:
            m = logits[i].max().detach()
            lpx.append(m + torch.log(sum(torch.exp(logits[i, c] - m) for c in range(C))))
    return logits, lpx


def mean(values: list[torch.Tensor]) -> torch.Tensor:
    return sum(values) / len(values)


def hand_loss(p, x, y, x_px, x_q, xy_q, w) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss and the statistics a step logs; a term with weight 0 is absent (no statistics)."""
    f = lambda t: float(t.detach())  # noqa: E731
    logits, _ = hand_forward(p, x)
    labelled = [i for i in range(len(y)) if int(y[i]) != -100]
    stats: dict[str, float] = {}
    loss = torch.zeros((), dtype=torch.float64)
    if w["pyx"] > 0:  # cross-entropy over the labelled examples only: -log softmax(logits_i)[y_i]
        nll = []
        for i in labelled:
            z = logits[i]
            nll.append(torch.log(sum(torch.exp(z[c]) for c in range(C))) - z[int(y[i])])
        ce = mean(nll) if labelled else torch.zeros((), dtype=torch.float64)
        right = [int(logits[i].argmax()) == int(y[i]) for i in labelled]
        stats["ce"], stats["acc"] = f(ce), (sum(right) / len(right) if labelled else 0.0)
        loss = loss + w["pyx"] * ce
    if w["px"] > 0:  # contrastive p(x): E(x) = -log p(x); loss_px = E(data) - E(samples)
        _, lpx_data = hand_forward(p, x_px if x_px is not None else x)
        _, lpx_q = hand_forward(p, x_q)
        e_data, e_sample = -mean(lpx_data), -mean(lpx_q)
        loss_px = e_data - e_sample
        loss = loss + w["px"] * loss_px
        if w["energy_l2"] > 0:
            penalty = w["energy_l2"] * (mean([v**2 for v in lpx_data]) + mean([v**2 for v in lpx_q]))  # E^2
            loss = loss + penalty
            stats["loss_energy_l2"] = f(penalty)
        norms = [math.sqrt(float((s**2).sum())) for s in x_q]
        data_norms = [math.sqrt(float((s**2).sum())) for s in x]
        stats.update(loss_px=f(loss_px), energy_data=f(e_data), energy_sample=f(e_sample),
                     energy_gap=f(e_sample - e_data), sample_norm=mean(norms), data_norm=mean(data_norms),
                     norm_ratio=mean(norms) / mean(data_norms))
        # chain health: values beyond [-1, 1] by more than 0.1; the spread of the samples' predicted classes
        values = [float(v) for v in x_q.flatten()]
        stats["out_of_range"] = sum(abs(v) > 1.1 for v in values) / len(values)
        stats["sample_rms"] = math.sqrt(sum(v * v for v in values) / len(values))
        q_logits_px, _ = hand_forward(p, x_q)
        picked = [int(z.argmax()) for z in q_logits_px]
        freq = [picked.count(c) / len(picked) for c in range(C)]
        stats["class_balance"] = -sum(q * math.log(q) for q in freq if q > 0) / math.log(C)
    if w["pxy"] > 0:  # p(x|y): -(mean f(x_i)[y_i] over labelled data - mean f(x'_j)[y_j] over the samples)
        if labelled:
            q_logits, _ = hand_forward(p, xy_q)
            f_data = mean([logits[i, int(y[i])] for i in labelled])
            f_q = mean([q_logits[j, int(y[i])] for j, i in enumerate(labelled)])
            loss_pxy = -(f_data - f_q)
        else:
            loss_pxy = torch.zeros((), dtype=torch.float64)
        loss = loss + w["pxy"] * loss_pxy
        stats["loss_pxy"] = f(loss_pxy)
    stats["loss"] = f(loss)
    return loss, stats


def library_objective(sampler, **w) -> HybridObjective:
    """Built from a config, as the Trainer builds it."""
    cfg = load_config(None, [f"objective.{k}={v}" for k, v in w.items()] + ["objective.data_noise=0"])
    obj = build_objective(cfg, sampler)
    assert (obj.pyx, obj.px, obj.pxy, obj.energy_l2, obj.data_noise) == (
        w.get("pyx", 1.0), w.get("px", 1.0), w.get("pxy", 0.0), w.get("energy_l2", 0.0), 0.0)
    return obj


def compare(kind: str, y: torch.Tensor, x_px, separate: bool, w: dict[str, float]) -> None:
    jem, p = make_model(kind)
    sampler = FixedSamples()
    obj = library_objective(sampler, **w)
    obj.separate_passes = separate
    loss, stats = obj(jem, X, y, x_px)
    loss.backward()

    want_loss, want = hand_loss(p, X, y, x_px, X_Q, XY_Q, {"pyx": 1.0, "px": 1.0, "pxy": 0.0, "energy_l2": 0.0, **w})
    want_grads = (torch.autograd.grad(want_loss, list(p.values()), allow_unused=True)  # (unused: zero)
                  if want_loss.requires_grad else [None] * len(p))

    # the sampler was asked for one p(x) sample per example and one conditional sample per labelled one
    labelled = y[y != -100]
    if w.get("px", 1.0) > 0:
        assert sampler.calls[0] == (N, None)
    cond = [c for c in sampler.calls if c[1] is not None]
    if w.get("pxy", 0.0) > 0 and len(labelled):
        assert len(cond) == 1 and torch.equal(cond[0][1], labelled)
    else:
        assert not cond

    assert float(loss.detach()) == pytest.approx(float(want_loss.detach()), rel=1e-12, abs=1e-12)
    got = {k: float(v) for k, v in stats.items()}
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k
    for (name, t), g in zip(p.items(), want_grads):
        g = torch.zeros_like(t) if g is None else g
        got_g = torch.zeros_like(t) if t.grad is None else t.grad
        assert torch.allclose(got_g, g, rtol=1e-10, atol=1e-12), (name, got_g, g)
    assert any(float(g.abs().max()) > 1e-3 for g in want_grads if g is not None)


@pytest.mark.parametrize("separate", [False, True], ids=["one_pass", "separate_passes"])
@pytest.mark.parametrize("x_px", [None, X_PX], ids=["px_on_x", "px_on_unaugmented"])
@pytest.mark.parametrize("kind", ["lse", "head"])
def test_every_term_loss_stats_and_gradients_match_the_formulas(kind, x_px, separate):
    compare(kind, Y, x_px, separate, WEIGHTS)


@pytest.mark.parametrize("kind", ["lse", "head"])
def test_an_all_unlabelled_batch_trains_only_p_x(kind):
    y = torch.full((N,), -100)
    compare(kind, y, None, False, WEIGHTS)
    _, stats = hand_loss(make_model(kind)[1], X, y, None, X_Q, XY_Q, {**WEIGHTS})
    assert stats["ce"] == 0 and stats["loss_pxy"] == 0  # nothing labelled: no cross-entropy, no p(x|y)


@pytest.mark.parametrize("kind", ["lse", "head"])
def test_each_term_alone(kind):
    """One weight at a time (the others zero, where the config allows): each term is what its formula says."""
    compare(kind, Y, X_PX, False, {"pyx": 1.0, "px": 0.0, "pxy": 0.0})  # cross-entropy alone: no sampling
    compare(kind, Y, X_PX, False, {"pyx": 0.0, "px": 1.0})
    compare(kind, Y, None, False, {"pyx": 0.0, "px": 0.0, "pxy": 1.0})
    compare(kind, Y, None, False, {"pyx": 0.0, "px": 1.0, "energy_l2": 1.0})


def test_the_fixture_exercises_every_term():
    """The fixed inputs are not degenerate: accuracy strictly between 0 and 1, terms well apart from
    zero and from each other, x_px's energies not x's (a wrong slice would show)."""
    for kind in ("lse", "head"):
        _, p = make_model(kind)
        with torch.no_grad():
            _, s = hand_loss(p, X, Y, None, X_Q, XY_Q, WEIGHTS)
            _, s_px = hand_loss(p, X, Y, X_PX, X_Q, XY_Q, WEIGHTS)
        assert 0 < s["acc"] < 1
        for k in ("ce", "loss_px", "loss_pxy", "energy_data", "energy_sample"):
            assert abs(s[k]) > 0.05, (kind, k, s[k])
        assert abs(s["energy_data"] - s_px["energy_data"]) > 0.02  # (the comparisons hold to 1e-12)


def test_data_noise_has_the_configured_sigma_on_both_data_views():
    """data_noise: N(0, sigma^2) added to x and, independently, to x_px (seeded; tolerance 2%,
    about 12 standard errors of a std estimated from 80,000 values)."""
    torch.manual_seed(5)
    jem, _ = make_model("lse")
    obj = HybridObjective(None, pyx=1.0, px=0.0, pxy=0.0, data_noise=0.05)
    x, x_px = fixed(20_000, 1, 2, 2, seed=6), fixed(20_000, 1, 2, 2, seed=7)
    b = obj.draw(jem, x, torch.zeros(20_000, dtype=torch.long), x_px=x_px)
    e, e_px = (b.x - x).flatten(), (b.x_px - x_px).flatten()
    for noise in (e, e_px):
        assert float(noise.std()) == pytest.approx(0.05, rel=0.02)
        assert abs(float(noise.mean())) < 4 * 0.05 / math.sqrt(len(noise))
    assert abs(float(torch.corrcoef(torch.stack([e, e_px]))[0, 1])) < 0.02


def test_the_energy_penalty_is_logged_and_refused_where_it_would_act_on_nothing():
    from torchjem.build import training_plan
    from torchjem.config import ConfigError

    # logged: a run's loss is ce + loss_px + loss_energy_l2 (compare() checks its value by hand)
    compare("logsumexp", Y, None, False, {"energy_l2": 0.15})
    # with p(x) off the penalty has no energies to act on: one line, not a silently ignored setting
    with pytest.raises(ConfigError, match="objective.energy_l2 = 0.1 penalises the energies of the p\\(x\\) term"):
        training_plan(load_config(None, {"objective": {"px": 0.0, "pxy": 1.0, "energy_l2": 0.1}}))
    training_plan(load_config(None, {"objective": {"px": 0.0, "pxy": 1.0}}))  # fine without it
    training_plan(load_config(None, {"objective": {"energy_l2": 0.1}, "train": {"clf_only": True}}))  # turned off
