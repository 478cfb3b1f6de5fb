"""``--seed`` means one thing in every command (issue 18): a new run's seed for train, sweep and
demo; for a command on a run (sample, eval, attack) the seed of its chains, noise and attacks,
by default the run's own, so that the docs' commands repeat the figures the run reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from torchjem import train
from torchjem.cli import main
from torchjem.workflows.attack import AttackOptions, attack_run
from torchjem.workflows.eval import evaluate_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed") / "r"
    train(tiny_config("train.max_steps=4", "data.limit=64", "seed=7"), progress=False, out=out)
    return out


def _eval(run, **kw):
    return evaluate_run(run, ood=["uniform"], limit=20, per_class=1, generate=True, write=False, progress=False,
                        feature_net=None, **kw)


def test_eval_defaults_to_the_runs_own_seed(run):
    torch.manual_seed(123)  # whatever ran before in the process does not matter
    default = _eval(run)
    torch.manual_seed(456)
    own = _eval(run, seed=7)
    other = _eval(run, seed=8)
    assert default.settings.seed == own.settings.seed == 7 and other.settings.seed == 8
    def figures(r):  # drawn from the seed: the uniform OOD set, the chains of the samples
        e = r.models["model"].evaluation
        return e.ood.sets["uniform"]["px"]["auroc"], e.generation.fid, e.generation.conditional_accuracy

    assert figures(default) == figures(own) and figures(default) != figures(other)


def test_sample_defaults_to_the_runs_own_seed(run, tmp_path):
    common = ["sample", str(run), "--fresh", "--n", "10", "--per-class", "1", "--steps", "2", "--device=cpu"]
    torch.manual_seed(1)
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    torch.manual_seed(2)
    assert main([*common, "--out", str(tmp_path / "b"), "--seed", "7"]) == 0
    assert main([*common, "--out", str(tmp_path / "c"), "--seed", "8"]) == 0
    pixels = {k: np.asarray(Image.open(tmp_path / k / "unconditional.png")) for k in "abc"}
    assert np.array_equal(pixels["a"], pixels["b"]) and not np.array_equal(pixels["a"], pixels["c"])


@pytest.mark.slow
def test_attack_defaults_to_the_runs_own_seed(run, tmp_path):
    opts = AttackOptions(eps=[0.0, 0.3], refine_steps=[1], n_chains=2, limit=20, distal=0, progress=False)
    torch.manual_seed(3)
    a = attack_run(run, opts, out=tmp_path / "a")
    b = attack_run(run, opts, out=tmp_path / "b", seed=7)
    c = attack_run(run, opts, out=tmp_path / "c", seed=8)
    assert a.attack["seed"] == b.attack["seed"] == 7 and c.attack["seed"] == 8
    xa, xb, xc = (torch.load(tmp_path / k / "adversarials_JEM-1.pt")["x_adv"] for k in "abc")
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)  # JEM-1's chains and PGD's start are seeded
