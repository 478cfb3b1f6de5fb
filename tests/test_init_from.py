"""`jem train --init-from SOURCE` (train.init_from): a new run starts from the weights of a run
directory, a `jem export` folder or a .safetensors file; a resumed run ignores it."""

import hashlib
import json
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import TINY, tiny_config
from torchjem.cli import main
from torchjem.errors import CheckpointError, MissingError
from torchjem.rundir import RunState
from torchjem.training import Trainer

QUICK = ("data.limit=256", "train.log_every=1")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A short classifier run (3 steps) and its `jem export` folder."""
    root = tmp_path_factory.mktemp("init_src")
    run = root / "run"
    Trainer(tiny_config(*QUICK, "train.clf_only=true", "train.max_steps=3"), progress=False, out=run).fit()
    assert main(["export", str(run), "--out", str(root / "exp")]) == 0
    return run, root / "exp"


def last_state(run) -> RunState:
    return RunState.load(run / "checkpoints" / "last.pt")


def sha16(weights: dict) -> str:
    """The documented fingerprint, computed here on its own: sorted keys, each key then its bytes."""
    h = hashlib.sha256()
    for k in sorted(weights):
        h.update(k.encode())
        h.update(weights[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def assert_same_weights(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k].cpu(), want[k].cpu()), k


def events(run, kind: str) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("event") == kind]


def test_a_new_run_starts_from_a_run_directory_and_records_it(source, tmp_path):
    src, _ = source
    want = last_state(src)
    cfg = tiny_config(*QUICK, f"train.init_from={src}", "train.max_steps=2")
    t = Trainer(cfg, progress=False, out=tmp_path / "new")
    assert_same_weights(t.jem.state_dict(), want.model)  # step 0: the source's weights ...
    fresh = Trainer(tiny_config(*QUICK, "train.max_steps=2"), progress=False, out=tmp_path / "fresh")
    fresh.lock.abandon()
    # ... not what the same seed builds without it
    assert any(not torch.equal(fresh.jem.state_dict()[k], v) for k, v in want.model.items())
    assert t.step == 0 and t.init_record.kind == "run" and t.init_record.tensors == len(want.model)
    t.fit()

    new = tmp_path / "new"
    assert yaml.safe_load((new / "config.yaml").read_text())["train"]["init_from"] == str(src)
    (event,) = events(new, "init_from")
    assert event["step"] == 0 and event["kind"] == "run" and event["source"] == str(src.resolve())
    assert event["fingerprint"] == sha16(want.model)
    assert want.cost is not None and want.cost.steps == 3
    state = last_state(new)
    assert state.progress.step == 2 and state.optimizer is not None
    assert state.cost.init.to_dict() == want.cost.to_dict()  # the source's cost, carried along
    assert state.cost.steps == 2 and state.cost.total_units == state.cost.units + want.cost.units


def test_a_new_run_starts_from_an_export_folder(source, tmp_path):
    src, exp = source
    t = Trainer(tiny_config(*QUICK, f"train.init_from={exp}", "train.max_steps=1"), progress=False, out=tmp_path / "r")
    want = load_file(exp / "model.safetensors")
    assert_same_weights(t.jem.state_dict(), want)
    assert t.init_record.kind == "export" and t.init_record.fingerprint == sha16(want)
    t.fit()
    assert last_state(tmp_path / "r").cost.init.to_dict() == last_state(src).cost.to_dict()


def test_a_safetensors_file_of_the_bare_classifier_is_accepted(source, tmp_path):
    src, _ = source
    model = last_state(src).model
    bare = {k.removeprefix("net."): v * 1.01 for k, v in model.items() if v.is_floating_point()}
    assert all(k.startswith("net.") for k in model)  # the JEM's keys: bare ones lack the prefix
    save_file(bare, tmp_path / "clf.safetensors")
    t = Trainer(tiny_config(*QUICK, f"train.init_from={tmp_path / 'clf.safetensors'}", "train.max_steps=1",
                            "train.clf_only=true"),
                progress=False, out=tmp_path / "r")
    assert_same_weights(t.jem.state_dict(), {"net." + k: v for k, v in bare.items()})
    assert t.init_record.kind == "safetensors" and t.init_record.cost is None
    assert t.init_record.fingerprint == sha16({"net." + k: v for k, v in bare.items()})
    t.fit()
    assert last_state(tmp_path / "r").cost.init is None  # a bare file records no training cost


def test_the_cli_option_sets_the_config_key(source, tmp_path):
    _, exp = source
    weights = load_file(exp / "model.safetensors")
    save_file(weights, tmp_path / "w.safetensors")  # a file with the JEM's own keys
    out = tmp_path / "r"
    argv = ["train", *TINY, *QUICK, "train.max_steps=1", "--init-from", str(tmp_path / "w.safetensors"),
            f"--out={out}", "--device=cpu", "--quiet"]
    assert main(argv) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["init_from"] == str(tmp_path / "w.safetensors")
    (event,) = events(out, "init_from")
    assert event["kind"] == "safetensors" and event["fingerprint"] == sha16(weights) and event["cost"] is None
    assert main(["train", "--resume", str(out), "--init-from", str(exp)]) == 2  # one or the other


def test_weights_of_another_width_are_one_error_line_and_nothing_is_trained(source, tmp_path):
    src, exp = source
    for where in (src, exp):
        out = tmp_path / "wide"
        with pytest.raises(CheckpointError) as e:
            Trainer(tiny_config(*QUICK, f"train.init_from={where}", "net.kwargs.width=16"), progress=False, out=out)
        msg = str(e.value)
        assert "\n" not in msg and str(where.resolve()) in msg
        assert re.search(r"other shapes: net\.\S+ \(8 there, 16 here\)", msg)  # width 8 there, 16 here
        assert re.search(r"net\.\S+ \(8x8x3x3 there, 16x16x3x3 here\).* and \d+ more\)", msg)
        assert not out.exists()  # the refused run leaves no directory behind
    extra = {**load_file(exp / "model.safetensors"), **{f"net.extra{i}": torch.zeros(1) for i in range(7)}}
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected: net\.extra0, net\.extra1, .* and 3 more"):
        Trainer(tiny_config(*QUICK, f"train.init_from={tmp_path / 'extra.safetensors'}"), progress=False,
                out=tmp_path / "x")
    with pytest.raises(MissingError, match="nowhere"):
        Trainer(tiny_config(*QUICK, f"train.init_from={tmp_path / 'nowhere'}"), progress=False, out=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_resumed_run_continues_from_its_own_checkpoint_not_the_source(source, tmp_path):
    src, _ = source
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    run = tmp_path / "r"
    Trainer(tiny_config(*QUICK, f"train.init_from={copy}", "train.max_steps=2"), progress=False, out=run).fit()
    own = last_state(run)
    shutil.rmtree(copy)  # the source is gone: a resume must not need it

    t = Trainer.resume(run, progress=False, overrides={"train": {"max_steps": 4}})
    assert t.init_record is None and t.step == 2
    assert_same_weights(t.jem.state_dict(), own.model)
    assert not all(torch.equal(own.model[k], v) for k, v in last_state(src).model.items())  # it had trained on
    t.fit()
    final = last_state(run)
    assert final.progress.step == 4 and final.config["train"]["init_from"] == str(copy)
    assert final.cost.init.to_dict() == last_state(src).cost.to_dict()  # still counted after the resume
    assert len(events(run, "init_from")) == 1


def test_a_classifier_seeds_an_energy_head_jem_of_the_same_backbone(source, tmp_path):
    src, _ = source
    want = last_state(src).model  # a --clf-only run: the convnet's last Linear gives the logits
    head = "energy_head=true"
    t = Trainer(tiny_config(*QUICK, f"net.{head}", f"train.init_from={src}", "train.max_steps=1"), progress=False,
                out=tmp_path / "head")
    fresh = Trainer(tiny_config(*QUICK, f"net.{head}", "train.max_steps=1"), progress=False, out=tmp_path / "f")
    fresh.lock.abandon()
    got, new = t.jem.state_dict(), fresh.jem.state_dict()
    (last,) = {k.rsplit(".", 1)[0] for k in set(want) - set(got)}  # by hand: the one layer the JEM lacks
    assert t.init_record.class_head == last
    assert torch.equal(got["class_head.weight"], want[f"{last}.weight"])
    assert torch.equal(got["class_head.bias"], want[f"{last}.bias"])
    for k in got:
        if k.startswith("net."):
            assert torch.equal(got[k], want[k]), k  # the backbone is the classifier's
    for k in ("energy_head.weight", "energy_head.bias"):  # the energy head is new: as the same seed builds it
        assert torch.equal(got[k], new[k]), k
    t.fit()
    assert events(tmp_path / "head", "init_from")[0]["class_head"] == last
    # another backbone is still one error line
    with pytest.raises(CheckpointError, match="do not fit"):
        Trainer(tiny_config(*QUICK, f"net.{head}", "net.kwargs.width=16", f"train.init_from={src}"),
                progress=False, out=tmp_path / "wide")
