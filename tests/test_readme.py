"""The README's promises: every Python block runs as written, its config reference is complete."""

import re
from pathlib import Path

import pytest
import torch

from torchjem.config import CONFIG_DIR, Config, ConfigError, config_reference, load_config

README = Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_every_python_block_of_the_readme_runs_as_written(tmp_path, monkeypatch):
    """The blocks in order, in one namespace (as a reader pastes them into one session), in an empty
    folder: nothing they use is defined by the test."""
    blocks = python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__readme__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), scope)

    # the hand-written loop: one pass over the built-in digits
    assert scope["samples"].shape == (64, 1, 8, 8)
    loss, stats = scope["loss"], scope["stats"]
    # the last batch's loss is its two weighted terms (pyx = px = 1), its gap the energies' difference
    assert float(loss.detach()) == pytest.approx(float(stats["ce"] + stats["loss_px"]), rel=1e-6)
    assert float(stats["energy_gap"]) == pytest.approx(float(stats["energy_sample"] - stats["energy_data"]), abs=1e-5)
    # every chain the loop and the final call ran was written back: the buffer moved away from U(-1, 1)
    assert scope["buffer"].x.abs().amax() > 1
    # one pass of the loop already taught the net the digits, far above chance (0.1)
    data = scope["data"]
    with torch.no_grad():
        acc = (scope["jem"].logits(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert acc > 0.5

    # the Trainer block: the recipe's settings (not the CIFAR defaults), the user's net, a run directory
    trainer, result = scope["trainer"], scope["result"]
    assert result["step"] == 20 and 0 <= result["val_acc"] <= 1
    assert trainer.cfg.optim.lr == load_config(CONFIG_DIR / "digits_demo.yaml").optim.lr != Config().optim.lr
    assert trainer.jem.net is scope["net"]
    assert (tmp_path / "runs" / "mine-py" / "checkpoints" / "last.pt").is_file()


def test_load_config_takes_shipped_recipe_names_like_the_cli():
    assert load_config("digits_demo") == load_config(CONFIG_DIR / "digits_demo.yaml")
    cfg = load_config("mnist", {"train": {"epochs": 2}})
    assert cfg.data.name == "mnist" and cfg.train.epochs == 2
    with pytest.raises(ConfigError, match="no recipe has that name.*digits_demo"):
        load_config("digits_dem")


def test_readme_lists_every_config_option_and_the_two_commands():
    text = README.read_text()
    assert config_reference() in text
    assert "make demo" in text and "make test" in text
