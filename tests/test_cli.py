import subprocess
import sys

import pytest
import torch
import yaml

from conftest import TINY
from torchjem.checkpoint import load_checkpoint
from torchjem.cli import main


def test_help_lists_every_command_and_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "sample", "demo", "recipes", "nets", "config"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key in ("--resume", "--device", "--seed", "labels_per_class", "reinit_freq", "max_retries"):
        assert key in out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", *TINY, "train.epochs=1", f"--out={out}", "--device=cpu", "--seed=3", "--quiet"]
    assert main(args) == 0
    return out


def test_train_writes_a_run_directory(run_dir):
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["sgld"]["steps"] == 5
    assert "out" not in cfg  # the run directory is where the config lies, not a value in it
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "train.log").read_text().count("training JEM on digits") == 1


def test_resume_continues_with_more_epochs(run_dir):
    before = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert main(["train", "--resume", str(run_dir), "train.epochs=2", "--quiet"]) == 0
    after = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (before["epoch"], after["epoch"]) == (1, 2)
    assert after["step"] == 2 * before["step"]


def test_sample_writes_png_grids(run_dir, tmp_path):
    assert main(["sample", str(run_dir), "--n", "16", "--per-class", "2", "--out", str(tmp_path), "--seed", "0"]) == 0
    for name in ("unconditional.png", "conditional.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 500
    assert (
        main(
            [
                "sample",
                str(run_dir),
                "--fresh",
                "--steps",
                "3",
                "--n",
                "4",
                "--per-class",
                "1",
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
    assert (tmp_path / "f" / "conditional.png").is_file()


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "net.name=resnet9000", f"--out={tmp_path / 'x'}"]) == 2
    assert "unknown net 'resnet9000'" in capsys.readouterr().err


def test_threads_option_sets_torch_threads_for_the_command(tmp_path, monkeypatch, capsys):
    import torchjem.workflows.interop as interop

    seen = []  # torch's thread count while the command runs
    monkeypatch.setattr(interop, "export_run", lambda *a, **k: seen.append(torch.get_num_threads()) or tmp_path)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["export", str(tmp_path), "--threads", "1"]) == 0
        assert seen == [1] and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["export", str(tmp_path)]) == 0
        assert seen == [1, 2]  # no --threads: torch's setting is left alone
        capsys.readouterr()
        assert main(["export", str(tmp_path), "--threads", "0"]) == 2
        err = capsys.readouterr().err
        assert err == "jem export: error: --threads must be >= 1, got 0\n" and seen == [1, 2]  # not run
    finally:
        torch.set_num_threads(old)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "--threads N" in capsys.readouterr().out


def test_listings(capsys):
    assert main(["recipes"]) == 0
    assert "digits_demo" in capsys.readouterr().out
    assert main(["nets"]) == 0
    assert "wrn: depth, width" in capsys.readouterr().out


def test_console_script_module_entry(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torchjem.cli", "config"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "reinit_freq: 0.05" in res.stdout

