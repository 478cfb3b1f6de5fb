"""Data identity wherever two things are compared or continued (issue 19, items 3, 4 and 6): a
run records what it trained on (name, shape, classes, class names, length, a fingerprint) and a
resume, saved adversarials or an import that does not match is refused with one line."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from test_data_sources import PairDataset
from torchjem import Trainer
from torchjem.checkpoint import save_checkpoint
from torchjem.cli import main
from torchjem.data import load_data
from torchjem.errors import DataError
from torchjem.rundir import DataSpec, read_state


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """A run trained on a user's Dataset: 200 digits (1x8x8, 10 classes), not the digits data set."""
    digits = load_data("digits")
    ds = PairDataset(digits.x_train[:200], digits.y_train[:200])
    out = tmp_path_factory.mktemp("ds") / "run"
    Trainer(tiny_config("train.max_steps=2", "train.batch_size=16"), data=ds, progress=False, out=out).fit()
    return out, ds


@pytest.fixture(scope="module")
def five_class_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("five") / "run"
    Trainer(tiny_config("train.max_steps=2", "data.classes=[5, 6, 7, 8, 9]"), progress=False, out=out).fit()
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def test_the_run_records_its_data_identity(user_run):
    out, ds = user_run
    spec = read_state(out).data
    assert (spec.name, spec.shape, spec.n_classes, spec.length) == ("PairDataset", (1, 8, 8), 10, 200)
    assert spec.fingerprint and len(spec.fingerprint) == 16
    # the same data again gives the same fingerprint; one changed example another
    from torchjem.training.batches import data_spec

    assert data_spec(ds, "PairDataset").fingerprint == spec.fingerprint
    changed = PairDataset(ds.x.clone(), ds.y)
    changed.x[0, 0, 0, 0] += 0.5
    assert data_spec(changed, "PairDataset").fingerprint != spec.fingerprint


def test_resume_without_the_users_data_is_refused(user_run, capsys):
    out, ds = user_run
    with pytest.raises(DataError, match=r"trained on 'PairDataset' \(1x8x8, 10 classes, 200 training examples.*"
                                        r"the data given is 'digits'.*name, length, examples differ"):
        Trainer.resume(out, progress=False)
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "pass the run's own data" in one_error_line(capsys)
    other = PairDataset(ds.x[:50], ds.y[:50] % 3, n_classes=3)  # another class count: one line, no traceback
    with pytest.raises(DataError, match="class count"):
        Trainer.resume(out, data=other, progress=False)


def test_old_data_descriptions_load_and_compare_on_what_they_have():
    old = DataSpec.from_dict({"name": "digits", "shape": [1, 8, 8], "n_classes": 10})
    assert old.class_names is None and old.length is None and old.fingerprint is None
    assert old.to_dict() == {"name": "digits", "shape": [1, 8, 8], "n_classes": 10}
    new = DataSpec("digits", (1, 8, 8), 10, [str(i) for i in range(10)], 1293, "0123456789abcdef")
    assert old.mismatch(new) is None and DataSpec.from_dict(new.to_dict()) == new
    renamed = DataSpec("digits", (1, 8, 8), 10, list("abcdefghij"), 1293, "f" * 16)
    assert new.mismatch(renamed) == "class names, examples"


def saved_adversarials(path, x_adv, y, data=None):
    state = {"x_adv": x_adv, "y": y, "eps": [0.0], "accuracy": [1.0]}
    if data is not None:
        state["data"] = data
    save_checkpoint(path, state)
    return str(path)


def test_saved_adversarials_for_other_classes_are_refused(five_class_run, tmp_path, capsys):
    x = torch.rand(1, 20, 1, 8, 8) * 2 - 1
    y = torch.arange(20) % 10  # labels 0-9: made on all ten digits
    recorded = saved_adversarials(tmp_path / "a.pt", x, y, {"name": "digits", "shape": [1, 8, 8], "n_classes": 10})
    assert main(["attack", "--evaluate-saved", recorded, "--model", str(five_class_run), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert "made on 'digits' (1x8x8, 10 classes)" in line and "5 classes" in line and "class count differ" in line
    legacy = saved_adversarials(tmp_path / "b.pt", x, y)  # a file without the data it was made on
    assert main(["attack", "--evaluate-saved", legacy, "--model", str(five_class_run), "--quiet"]) == 2
    assert "labels 0..9, outside the model's 5 classes" in one_error_line(capsys)
    big = saved_adversarials(tmp_path / "c.pt", torch.rand(1, 4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    assert main(["attack", "--evaluate-saved", big, "--model", str(five_class_run), "--quiet"]) == 2
    assert "inputs of 1x28x28" in one_error_line(capsys)
    fits = saved_adversarials(tmp_path / "d.pt", x, y % 5)
    assert main(["attack", "--evaluate-saved", fits, "--model", str(five_class_run), "--quiet"]) == 0


def test_a_jempp_import_samples_with_pyld_in_train_mode(tmp_path):
    from test_interop import reference_state, write_ckpt
    from torchjem.sampling import PYLD
    from torchjem.workflows.interop import import_checkpoint
    from torchjem.workflows.runs import load_run

    ckpt = write_ckpt(tmp_path / "jempp.pt", reference_state("jempp", "batch"))
    import_checkpoint("jempp", ckpt, tmp_path / "run")
    run = load_run(tmp_path / "run", device="cpu")
    assert isinstance(run.langevin, PYLD) and run.langevin.mode == "train"
    assert (run.langevin.n_steps, run.langevin.inner_steps) == (5, 5)
    jem_ckpt = write_ckpt(tmp_path / "jem.pt", reference_state("jem", None))
    import_checkpoint("jem", jem_ckpt, tmp_path / "jem")
    plain = load_run(tmp_path / "jem", device="cpu").langevin
    assert type(plain).__name__ == "SGLD" and plain.mode == "eval"  # no batch norm: eval mode
