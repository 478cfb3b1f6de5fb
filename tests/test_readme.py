"""The README's promises: its example runs and its config reference is complete."""

import re
from pathlib import Path

import pytest

from torchjem.config import config_reference
from torchjem.data import load_data

README = Path(__file__).parent.parent / "README.md"


def test_readme_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    data = load_data("digits")
    y = data.y_train.clone()
    y[1::2] = -100  # half the examples unlabelled: they feed only p(x)
    loader = [(data.x_train[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    scope = {"loader": loader}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["samples"].shape == (64, 1, 8, 8)
    loss, stats = scope["loss"], scope["stats"]
    # the last batch's loss is its two weighted terms (pyx = px = 1), its gap the energies' difference
    assert float(loss.detach()) == pytest.approx(float(stats["ce"] + stats["loss_px"]), rel=1e-6)
    assert float(stats["energy_gap"]) == pytest.approx(float(stats["energy_sample"] - stats["energy_data"]), abs=1e-5)
    # accuracy over the batch's 16 labelled examples only (the unlabelled half does not count): k / 16
    assert float(stats["acc"]) * 16 == pytest.approx(round(float(stats["acc"]) * 16), abs=1e-5)
    # every chain the loop and the final call ran was written back: the buffer moved away from U(-1, 1)
    assert scope["buffer"].x.abs().amax() > 1


def test_readme_lists_every_config_option_and_the_two_commands():
    text = README.read_text()
    assert config_reference() in text
    assert "make demo" in text and "make test" in text
