"""The run's own path is an argument, not a config value: it is used exactly as given, never saved
in the config, and an ``out=`` override is refused with one line (issue 18: ``--out "runs/x: y"``
used to become the directory ``{'runs/x': 'y'}``, ``--out yes`` the directory ``True``)."""

from __future__ import annotations

import logging

import pytest
import yaml

from conftest import TINY, tiny_config
from torchjem import Trainer, load_config
from torchjem.cli import main
from torchjem.config import ConfigError, from_dict


@pytest.mark.parametrize("name", ["runs/x: y", "yes", "[1, 2]"])
def test_train_writes_into_exactly_the_directory_given(tmp_path, name, capsys):
    out = tmp_path / name
    args = ["train", *TINY, "train.max_steps=1", "data.limit=64", f"--out={out}", "--device=cpu", "--quiet"]
    assert main(args) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name.split("/")[0]]  # nothing written beside it
    assert "out" not in yaml.safe_load((out / "config.yaml").read_text())


def test_an_out_override_is_refused_with_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="out is not a config key"):
        load_config(None, [f"out={tmp_path / 'r'}"])
    assert main(["train", *TINY, f"out={tmp_path / 'r'}", "--device=cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out is not a config key" in err[0] and "--out" in err[0]
    assert not (tmp_path / "r").exists()


def test_a_saved_config_with_the_old_out_key_still_loads(tmp_path, caplog):
    saved = tiny_config().to_dict() | {"out": "somewhere/else"}
    assert from_dict(saved).to_dict() == tiny_config().to_dict()
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(saved))
    with caplog.at_level(logging.WARNING, logger="torchjem"):
        assert load_config(path).to_dict() == tiny_config().to_dict()
    assert "ignoring 'out: somewhere/else'" in caplog.text


def test_resume_keeps_writing_where_the_run_now_is(tmp_path):
    first = Trainer(tiny_config("train.max_steps=2", "data.limit=64"), progress=False, out=tmp_path / "a")
    first.fit()
    (tmp_path / "a").rename(tmp_path / "b")
    again = Trainer.resume(tmp_path / "b", progress=False, overrides={"train": {"max_steps": 3}})
    assert again.run.path == tmp_path / "b" and again.fit()["step"] == 3
    assert not (tmp_path / "a").exists()
