"""OOD sets read from files are scored whole (issue 19, item 2): for every reader, the number of
OOD inputs scored equals the number of inputs in the file or folder, labels or not, and the size
reaches report.json and report.html."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from torchjem import Trainer
from torchjem.cli import main
from torchjem.workflows.eval import evaluate_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ood") / "run"
    Trainer(tiny_config("train.max_steps=2"), progress=False, out=out).fit()
    return out


def images(n: int, seed: int, side: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)


def scored(run, spec: str, **kw) -> dict:
    report = evaluate_run(run, ood=[spec], generate=False, write=False, progress=False, **kw)
    return report.models["model"].evaluation.ood


def test_npz_with_labels_is_scored_whole(run, tmp_path):
    np.savez(tmp_path / "o.npz", x=images(37, 1), y=np.zeros(37, dtype=np.int64))
    assert scored(run, f"npz:{tmp_path / 'o.npz'}").sets[f"npz:{tmp_path / 'o.npz'}"]["n"] == 37


def test_npz_of_inputs_alone_is_accepted_and_scored_whole(run, tmp_path):
    np.savez(tmp_path / "x.npz", x=images(4, 2, side=12))  # no labels; another size: resized
    spec = f"npz:{tmp_path / 'x.npz'}"
    ood = scored(run, spec)
    assert ood.sets[spec]["n"] == 4 and 0 <= ood.sets[spec]["px"]["auroc"] <= 1


def test_npz_with_train_and_test_arrays_gives_both(run, tmp_path):
    np.savez(tmp_path / "s.npz", x_train=images(10, 3), y_train=np.zeros(10, dtype=np.int64), x_test=images(5, 4),
             y_test=np.zeros(5, dtype=np.int64))
    spec = f"npz:{tmp_path / 's.npz'}"
    assert scored(run, spec).sets[spec]["n"] == 15
    assert scored(run, spec, limit=6).sets[spec]["n"] == 6  # --limit caps it (and says so in the settings)


def test_image_folders_are_scored_whole(run, tmp_path):
    for i, a in enumerate(images(7, 5)):
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(a).save(tmp_path / "flat" / f"{i}.png")
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            folder = tmp_path / "split" / split / c
            folder.mkdir(parents=True)
            for i, a in enumerate(images(n, hash((split, c)) % 100)):
                Image.fromarray(a).save(folder / f"{i}.png")
    flat, split = f"image_folder:{tmp_path / 'flat'}", f"image_folder:{tmp_path / 'split'}"
    assert scored(run, flat).sets[flat]["n"] == 7
    assert scored(run, split).sets[split]["n"] == 2 * 3 + 2 * 2


def test_the_sizes_reach_report_json_and_the_page(run, tmp_path):
    np.savez(tmp_path / "o.npz", x=images(37, 6))
    spec = f"npz:{tmp_path / 'o.npz'}"
    assert main(["eval", str(run), "--ood", spec, "uniform", "--no-generation", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    ood = data["models"]["model"]["ood"]
    n_test = data["models"]["model"]["classification"]["n"]
    assert ood["sets"][spec]["n"] == 37 and ood["sets"]["uniform"]["n"] == n_test == ood["n_in"]
    html = (tmp_path / "r" / "report.html").read_text()
    assert f"OOD inputs scored ({spec})" in html
