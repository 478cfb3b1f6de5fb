"""The small dead ends of issue 19 (item 7): each gives a working path or one clear line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import tiny_config
from torchjem import Trainer
from torchjem.build import build_net
from torchjem.config import ConfigError, load_config


def test_the_default_convnet_takes_non_square_images(tmp_path):
    cfg = tiny_config()
    net = build_net(cfg, (1, 7, 9), 3)
    assert net(torch.zeros(2, 1, 7, 9)).shape == (2, 3)
    # its head sees 2 * width channels on a ceil(7/2) x ceil(9/2) map
    assert net[-1].in_features == 2 * 8 * 4 * 5
    assert build_net(cfg, (1, 8, 8), 10)[-1].in_features == 2 * 8 * 4 * 4  # square: as before


def test_an_empty_kwargs_mapping_clears_the_recipes():
    assert load_config("digits_demo", ["net.name=mlp"]).net.kwargs == {"width": 32}
    cfg = load_config("digits_demo", ["net.name=mlp", "net.kwargs={}"])
    assert cfg.net.kwargs == {} and cfg.optim.lr == 0.001  # the rest of the recipe stays
    assert build_net(cfg, (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"no option width.*net.kwargs=\{\} clears a recipe's net.kwargs"):
        build_net(load_config("digits_demo", ["net.name=mlp"]), (1, 8, 8), 10)


def test_resuming_with_another_buffer_size_says_it_is_fixed(tmp_path):
    Trainer(tiny_config("train.max_steps=2"), progress=False, out=tmp_path / "r").fit()
    with pytest.raises(ConfigError, match="buffer.size = 100: the replay buffer's size is fixed for a run.*holds 200"):
        Trainer.resume(tmp_path / "r", overrides=["buffer.size=100"], progress=False)


def test_float_npz_in_unit_range_is_named(tmp_path, caplog):
    from torchjem.data import read_npz

    x = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)  # [0, 1]
    np.savez(tmp_path / "u.npz", x=x, y=np.arange(6) % 2)
    with caplog.at_level(logging.WARNING, logger="torchjem"):
        read_npz(tmp_path / "u.npz")
    assert "within [0, 1]" in caplog.text and "x * 2 - 1" in caplog.text
    caplog.clear()
    np.savez(tmp_path / "s.npz", x=x * 2 - 1, y=np.arange(6) % 2)
    with caplog.at_level(logging.WARNING, logger="torchjem"):
        read_npz(tmp_path / "s.npz")
    assert "within [0, 1]" not in caplog.text
