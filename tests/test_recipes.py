"""Every shipped recipe parses, builds its full network (on the meta device: no memory, no time)
and its data pipeline on tiny stand-in files, and trains for two steps when shrunk."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from test_data_readers import write_cifar10, write_cifar100, write_mnist, write_svhn
from torchjem import load_config
from torchjem.build import build_jem
from torchjem.cli import main as cli_main
from torchjem.data import BatchAugment, load_data
from torchjem.nets import create_net
from torchjem.training import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "torchjem" / "configs"
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
STANDINS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn, "mnist": write_mnist}


def test_the_expected_recipes_ship() -> None:
    want = {"cifar10_paper", "cifar100_paper", "svhn_paper", "mnist", "mnist1d", "digits_demo", "digits_semisup"}
    assert want <= set(RECIPES)
    assert (Path(__file__).resolve().parents[1] / "configs" / "cifar10_paper.yaml").is_file()  # the symlink


def test_wrn_28_10_has_36_5m_parameters() -> None:
    n = sum(p.numel() for p in create_net("wrn").parameters())  # the one real WRN-28-10 of the suite
    assert round(n / 1e6, 1) == 36.5


def test_cifar10_recipe_is_the_papers() -> None:
    cfg = load_config(CONFIGS / "cifar10_paper.yaml")
    assert cfg.net.name == "wrn" and cfg.net.kwargs == {"depth": 28, "width": 10, "norm": "none", "dropout": 0.0}
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.betas, cfg.optim.warmup_iters) == ("adam", 1e-4, [0.9, 0.999], 1000)
    assert (cfg.optim.decay_epochs, cfg.optim.decay_rate, cfg.train.epochs) == ([160, 180], 0.3, 200)
    assert (cfg.sgld.steps, cfg.sgld.step_size, cfg.sgld.noise) == (20, 1.0, 0.01)
    assert (cfg.buffer.size, cfg.buffer.reinit_freq, cfg.train.batch_size) == (10000, 0.05, 64)
    assert (cfg.objective.data_noise, cfg.objective.pxy, cfg.data.augment, cfg.data.val_size) == (0.03, 0.0, True, 5000)
    svhn = load_config(CONFIGS / "svhn_paper.yaml")
    assert svhn.data.augment and svhn.data.flip is False and svhn.data.name == "svhn"
    assert load_config(CONFIGS / "cifar100_paper.yaml").data.name == "cifar100"
    semi = load_config(CONFIGS / "digits_semisup.yaml")
    assert semi.data.labels_per_class == 10 and semi.objective.px > 0


def test_jem_recipes_lists_each_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["recipes"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    for name in RECIPES:
        first = (CONFIGS / f"{name}.yaml").read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20
        assert lines[name] == first[2:]


def _data_for(cfg, tmp_path: Path):
    name = cfg.data.name
    if name == "mnist1d":
        pytest.importorskip("mnist1d")
    if name in STANDINS:
        root = tmp_path / name
        STANDINS[name](root)
        return load_data(name, root=str(root), val_size=2, split_seed=cfg.data.split_seed)
    return load_data(name, cfg.data.root, cfg.data.val_size, split_seed=cfg.data.split_seed)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_net_and_pipeline_and_trains(recipe: str, tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / f"{recipe}.yaml", ["device=cpu"])
    data = _data_for(cfg, tmp_path)
    # the full network, wired to this data: shapes check out without allocating a parameter
    with torch.device("meta"):
        jem = build_jem(cfg, data.shape, data.n_classes)
        logits = jem(torch.empty(2, *data.shape))
    assert logits.shape == (2, data.n_classes)
    n_params = sum(p.numel() for p in jem.parameters())
    if cfg.net.name == "wrn":
        # WRN-28-10; the head grows with the classes; batch norm adds a scale and a shift per channel
        bn = sum(2 * m.num_features for m in jem.modules() if isinstance(m, torch.nn.BatchNorm2d))
        head = 641 if cfg.net.energy_head else 0  # a separate energy head: 640 weights and a bias
        assert n_params == 36_471_338 + 641 * (data.n_classes - 10) + bn + head
        assert (bn > 0) == (cfg.net.kwargs.get("norm") == "batch")
    # the augmentation the recipe asks for keeps shapes and range
    if cfg.data.augment:
        aug = BatchAugment.for_data(data, flip=cfg.data.flip)
        assert aug.flip == (recipe != "svhn_paper") and (aug.pad == 4 or data.shape[-1] != 32)
        out = aug(data.x_train[:8], torch.Generator().manual_seed(0))
        assert out.shape == data.x_train[:8].shape and out.abs().max() <= 1
    # shrunk (small WRN, short chains, tiny buffer), the recipe trains end to end
    small = ["sgld.steps=2", "buffer.size=100", "train.max_steps=2", "optim.warmup_iters=1"]
    if cfg.net.name == "wrn":
        small += ["net.kwargs.depth=10", "net.kwargs.width=1"]
    if cfg.buffer.init.startswith("gaussian") and torch.bincount(data.y_train, minlength=data.n_classes).min() < 2:
        small.append("buffer.init=uniform")  # a per-class Gaussian needs 2 images a class; the stand-in has fewer
    cfg = load_config(CONFIGS / f"{recipe}.yaml", ["device=cpu"] + small)
    if cfg.data.labels_per_class:
        per_class = torch.bincount(data.y_train, minlength=data.n_classes).min()
        assert per_class >= cfg.data.labels_per_class
    trainer = Trainer(cfg, data=data, progress=False, out=tmp_path / "run")
    result = trainer.fit()
    assert result["step"] == 2
    losses = [m["loss"] for m in trainer.run.read_metrics() if "loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)
