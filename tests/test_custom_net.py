"""A user's own network end to end: by import path through every command, as a Python object,
and timm-style backbones under the energy head."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
import yaml
from torch import nn

from conftest import TINY, tiny_config
from torchjem import JEM, ConfigError, Trainer, load_run
from torchjem.checkpoint import load_checkpoint
from torchjem.cli import main

USER_MODULE = '''
from torch import nn


class Tiny(nn.Module):
    """A user's classifier: conv features, a linear head; timm's names for the feature size."""

    def __init__(self, in_channels=1, n_classes=10, width=6):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(), nn.Flatten())
        self.num_features = width * 64
        self.head = nn.Linear(self.num_features, n_classes) if n_classes else nn.Identity()

    def forward(self, x):
        return self.head(self.body(x))


def make(width=6, in_channels=1, n_classes=10):
    return Tiny(in_channels, n_classes, width)
'''


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "user_nets_e2e.py").write_text(textwrap.dedent(USER_MODULE))
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    run = root / "run"
    args = ["train", *TINY, "net.name=user_nets_e2e:make", "net.kwargs={width: 5}", "train.epochs=1"]
    assert main([*args, f"--out={run}", "--device=cpu", "--quiet"]) == 0
    yield run
    mp.undo()


def test_a_run_records_how_to_rebuild_the_users_net(user_run):
    cfg = yaml.safe_load((user_run / "config.yaml").read_text())
    assert cfg["net"]["name"] == "user_nets_e2e:make" and cfg["net"]["kwargs"] == {"width": 5}
    state = load_checkpoint(user_run / "checkpoints" / "last.pt")
    assert state["net"] == {"source": "config", "name": "user_nets_e2e:make"}
    run = load_run(user_run, device="cpu")
    assert type(run.jem.net).__name__ == "Tiny" and run.jem.net.num_features == 5 * 64
    assert torch.equal(run.jem.net.head.weight, state["model"]["net.head.weight"])


def test_eval_sample_attack_and_resume_work_on_it(user_run, tmp_path, capsys):
    assert main(["eval", str(user_run), "--limit", "20", "--no-generation", "--quiet", "--device=cpu"]) == 0
    report = json.loads((user_run / "report" / "report.json").read_text())
    assert report["models"]["model"]["classification"]["n"] == 20
    assert main(["sample", str(user_run), "--n", "4", "--per-class", "1", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "conditional.png").read_bytes()[:4] == b"\x89PNG"
    attack = ["attack", str(user_run), "--limit", "6", "--eps", "0", "0.1", "--refine-steps", "0", "1"]
    assert main([*attack, "--steps", "2", "--chains", "1", "--distal", "0", "--quiet", "--device=cpu"]) == 0
    curves = json.loads((user_run / "attack" / "attack.json").read_text())["curves"]
    assert set(curves) == {"JEM-0", "JEM-1"} and curves["JEM-0"][1] <= curves["JEM-0"][0]
    moved = tmp_path / "moved"
    shutil.copytree(user_run, moved)  # a run directory resumes wherever it now lives
    assert main(["train", "--resume", str(moved), "train.epochs=2", "--quiet"]) == 0
    assert load_checkpoint(moved / "checkpoints" / "last.pt")["epoch"] == 2
    assert load_checkpoint(user_run / "checkpoints" / "last.pt")["epoch"] == 1


def test_bad_import_paths_are_config_errors(tmp_path, capsys):
    for name, msg in (("no_such_module_xyz:make", "cannot import module"), ("torch.nn:NoSuchNet", "no attribute")):
        assert main(["train", *TINY, f"net.name={name}", f"--out={tmp_path / 'r'}"]) == 2
        assert msg in capsys.readouterr().err


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 10))


def test_a_run_trained_on_a_model_object_needs_it_to_load(tmp_path):
    t = Trainer(tiny_config("train.max_steps=2"), model=_net(), progress=False, out=tmp_path / "r")
    t.fit()
    with pytest.raises(ConfigError, match=r"network object passed in Python \(class torch.nn.modules.container:Seq"):
        load_run(t.run.path, device="cpu")
    with pytest.raises(ConfigError, match="net.name=package.module:factory"):
        Trainer.resume(t.run.path, progress=False)
    jem = JEM(_net())
    loaded = load_run(t.run.path, device="cpu", model=jem)  # a JEM is used as it is, not wrapped twice
    assert loaded.jem is jem and set(jem.state_dict()) == set(t.jem.state_dict())
    x = t.data.x_test[:5]
    assert torch.allclose(loaded.jem.logits(x), t.jem.eval().logits(x))
    resumed = Trainer.resume(t.run.path, model=_net(), progress=False, overrides=["train.max_steps=3"])
    assert resumed.step == 2 and resumed.fit()["step"] == 3


class TimmStyle(nn.Module):
    """The interface of a timm model: forward_features, forward_head(pre_logits=True), num_features."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features = 6
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6, 10)  # timm's own classifier, unused under an energy head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)  # unpooled (N, C, H, W), as timm returns

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_timm_style_backbone_plugs_into_the_energy_head():
    torch.manual_seed(0)
    net = TimmStyle()
    jem = JEM(net, energy_head=True, n_classes=4)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    pooled = net.stem(x).mean((2, 3))  # computed here, not through the JEM
    assert torch.allclose(jem.log_px(x), pooled @ jem.energy_head.weight[0] + jem.energy_head.bias[0], atol=1e-6)
    assert torch.allclose(jem.logits(x), pooled @ jem.class_head.weight.T + jem.class_head.bias, atol=1e-6)
    assert jem.logits(x).shape == (3, 4)
