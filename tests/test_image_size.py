"""A folder of images of mixed sizes is no dead end: ``data.image_size`` resizes every image on
load, the run records it in config.yaml, and every command reads the data the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from torchjem.cli import main
from torchjem.config import load_config
from torchjem.data import load_data
from torchjem.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of greyscale images, 12x12 and 10x14 (mixed sizes): bright blobs left or right."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir()
        for i in range(40):
            h, w = (12, 12) if i % 2 else (10, 14)
            a = rng.integers(0, 60, (h, w)).astype(np.uint8)
            cols = slice(0, w // 2) if c == 0 else slice(w // 2, w)
            a[:, cols] += 150
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


def test_mixed_sizes_train_evaluate_sample_and_attack_from_the_cli(folder, tmp_path, capsys):
    data = ["data.name=image_folder", f"data.root={folder}", "--device=cpu", "--quiet"]
    run = tmp_path / "run"
    # without the key: one error line that names it (the convnet takes square images: one side)
    assert main(["train", *TINY, *data, "train.max_steps=2", f"--out={tmp_path / 'no'}"]) == 2
    assert "set data.image_size=SIDE" in capsys.readouterr().err

    assert main(["train", *TINY, *data, "data.image_size=8", "train.max_steps=6", f"--out={run}"]) == 0
    capsys.readouterr()
    assert "image_size:\n  - 8\n" in (run / "config.yaml").read_text()  # recorded in the run
    assert main(["eval", str(run), "--no-generation", "--ood", "uniform", "--limit", "10", "--device=cpu",
                 "--quiet"]) == 0
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["data"]["shape"] == [1, 8, 8] and report["models"]["model"]["classification"]["n"] == 10
    assert main(["sample", str(run), "--n", "4", "--per-class", "2", "--steps", "2", "--device=cpu", "--quiet"]) == 0
    assert sorted(p.name for p in (run / "samples").glob("*.png"))
    assert main(["attack", str(run), "--eps", "0.1", "--limit", "6", "--steps", "2", "--refine-steps", "0",
                 "--device=cpu", "--quiet"]) == 0
    attack = json.loads((run / "attack" / "attack.json").read_text())
    assert attack["n"] == 6 and attack["eps"] == [0.1]


def test_image_size_is_checked_and_applies_to_image_folders_only(folder):
    assert load_config(None, {"data": {"image_size": 16}}).data.image_size == [16]
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(None, {"data": {"image_size": [0, 4]}})
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(None, {"data": {"image_size": [4, 4, 4]}})
    with pytest.raises(DataError, match="'digits' is not resized on load.*image_folder"):
        load_data("digits", size=16)
    data = load_data("image_folder", str(folder), size=(8, 6))
    assert data.shape == (1, 8, 6) and len(data.x_train) + len(data.x_val) + len(data.x_test) == 80
