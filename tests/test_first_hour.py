"""What a newcomer meets in the first hour (issue 20): an import without its data says how to give
it, `jem eval` ends in readable lines, a missing-data error reads as sentences, a finished run
resumed says there is nothing left to do, `--eps` may come in any order."""

from __future__ import annotations

import json

import pytest

from conftest import TINY
from test_data_readers import write_cifar10
from test_interop import reference_state, write_ckpt
from torchjem.cli import main, one_line
from torchjem.errors import InputError


def test_an_import_without_its_data_says_how_to_give_it(tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "jem.pt", reference_state("jem", None))
    assert main(["import", "jem", str(ckpt), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "its data cannot be loaded" in out and "--data-root DIR (or data.root=DIR) and --overwrite" in out
    assert "try `jem eval" not in out
    write_cifar10(tmp_path / "cifar", n=20)
    assert main(["import", "jem", str(ckpt), "--out", str(tmp_path / "a"), "--data-root", str(tmp_path / "cifar"),
                 "data.val_size=0.1", "--overwrite", "--quiet"]) == 0
    assert f"try `jem eval {tmp_path / 'a'}`" in capsys.readouterr().out


def test_messages_read_as_sentences_on_one_line():
    assert one_line("x not found: /d does not exist.\nExpected layout:\n  /d/a.bin\n  /d/b.bin\nSuch files come.") == (
        "x not found: /d does not exist. Expected layout: /d/a.bin; /d/b.bin; Such files come."
    )


def test_missing_data_is_one_readable_error_line(tmp_path, capsys):
    assert main(["train", "data.name=cifar10", f"data.root={tmp_path / 'nope'}", f"--out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".;" not in err and ":;" not in err
    assert "does not exist. Expected layout: " in err


def test_a_finished_run_resumed_says_so_and_writes_nothing(tmp_path, capsys, caplog):
    run = tmp_path / "r"
    assert main(["train", *TINY, "train.max_steps=3", "data.limit=200", "--device=cpu", f"--out={run}",
                 "--quiet"]) == 0
    before = (run / "metrics.jsonl").read_text()
    stamp = (run / "checkpoints" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "nothing left to do: the run already reached step 3" in caplog.text
    assert "resume with a larger train.max_steps" in caplog.text
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 3 and 0 <= result["val_acc"] <= 1
    assert (run / "metrics.jsonl").read_text() == before  # no second "done", no new record
    assert (run / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp

    # jem eval ends in readable lines, not a JSON dump
    assert main(["eval", str(run), "--no-generation", "--ood", "uniform", "--limit", "20", "--device=cpu",
                 "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("r: accuracy ") and ", NLL " in lines[0] and "{" not in lines[0]
    assert lines[1].startswith("  OOD AUROC, log p(x): uniform ")
    report = json.loads((run / "report" / "report.json").read_text())
    assert f"accuracy {report['models']['model']['classification']['accuracy']:.4f}" in lines[0]

    # --eps in any order (and repeated): attacked in increasing order
    assert main(["attack", str(run), "--eps", "0.2", "0", "0.1", "0.2", "--limit", "4", "--steps", "1",
                 "--refine-steps", "0", "--device=cpu", "--quiet"]) == 0
    assert json.loads((run / "attack" / "attack.json").read_text())["eps"] == [0.0, 0.1, 0.2]


def test_the_library_keeps_eps_strict():
    from torchjem.evaluate.robustness import check_eps

    with pytest.raises(InputError, match="increasing order"):
        check_eps([0.2, 0.1])
