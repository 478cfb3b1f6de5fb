"""The published JEM, JEM++ and SADA-JEM checkpoints in, safetensors out (docs/interop.md).

The test writes checkpoints in each project's layout (key names and shapes as their
Wide_ResNet and CCF/F modules produce, random weights) and checks the imported model against a
forward pass written here, functionally, from the raw tensors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import TINY
from test_data_readers import write_cifar10
from torchjem import load_run
from torchjem.cli import main
from torchjem.workflows.eval import evaluate_run

DEPTH, WIDTH = 10, 1  # one block a stage: WRN-10-1


def reference_state(kind: str, norm: str | None, n_classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with the key names and shapes of the reference ``CCF`` model of ``kind``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    def norm_params(prefix, c):
        if norm == "batch":
            stats = {"running_mean": r(c), "running_var": r(c).abs() + 0.5, "num_batches_tracked": torch.tensor(7)}
            sd.update({prefix + k: v for k, v in {"weight": 1 + r(c), "bias": r(c), **stats}.items()})

    n, stages = (DEPTH - 4) // 6, [16, 16 * WIDTH, 32 * WIDTH, 64 * WIDTH]
    sd = {"f.conv1.weight": r(16, 3, 3, 3), "f.conv1.bias": r(16)}
    c_in = 16
    for s in (1, 2, 3):
        for j in range(n):
            c_out, stride, p = stages[s], (1 if s == 1 else 2) if j == 0 else 1, f"f.layer{s}.{j}."
            norm_params(p + "bn1.", c_in)
            sd.update({p + "conv1.weight": r(c_out, c_in, 3, 3), p + "conv1.bias": r(c_out)})
            norm_params(p + "bn2.", c_out)
            sd.update({p + "conv2.weight": r(c_out, c_out, 3, 3), p + "conv2.bias": r(c_out)})
            if stride != 1 or c_in != c_out:
                sd.update({p + "shortcut.0.weight": r(c_out, c_in, 1, 1), p + "shortcut.0.bias": r(c_out)})
            c_in = c_out
    norm_params("f.bn1.", c_in)
    if kind == "jem":
        sd.update({"f.linear.weight": r(10, c_in), "f.linear.bias": r(10)})
    sd.update({"energy_output.weight": r(1, c_in), "energy_output.bias": r(1)})
    sd.update({"class_output.weight": r(n_classes, c_in), "class_output.bias": r(n_classes)})
    if kind == "jempp":  # YOPO: conv1 again as layer_one, layer1-3 and bn1 again in other_layers
        for k in list(sd):
            if k.startswith("f.conv1."):
                sd["f.layer_one." + k[len("f.conv1.") :]] = sd[k]
            for i, name in enumerate(("f.layer1.", "f.layer2.", "f.layer3.", "f.bn1.")):
                if k.startswith(name):
                    sd[f"f.other_layers.{i}." + k[len(name) :]] = sd[k]
    return sd


def reference_features(sd: dict[str, torch.Tensor], x: torch.Tensor, norm: str | None) -> torch.Tensor:
    """The reference Wide_ResNet's forward, written from the raw tensors (eval mode)."""

    def bn(p, h):
        if norm != "batch":
            return h
        return F.batch_norm(h, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"])

    def act(h):
        return F.leaky_relu(h, 0.2)

    h = F.conv2d(x, sd["f.conv1.weight"], sd["f.conv1.bias"], padding=1)
    for s in (1, 2, 3):
        for j in range((DEPTH - 4) // 6):
            p, stride = f"f.layer{s}.{j}.", (1 if s == 1 else 2) if j == 0 else 1
            o = F.conv2d(act(bn(p + "bn1.", h)), sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
            o = F.conv2d(act(bn(p + "bn2.", o)), sd[p + "conv2.weight"], sd[p + "conv2.bias"], stride=stride, padding=1)
            sc = p + "shortcut.0."
            h = o + (F.conv2d(h, sd[sc + "weight"], sd[sc + "bias"], stride=stride) if sc + "weight" in sd else h)
    return F.avg_pool2d(act(bn("f.bn1.", h)), 8).flatten(1)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding (1e-5 of the largest value: the two forwards sum in other orders)."""
    return bool((a - b).abs().max() <= 1e-5 * b.abs().max().clamp_min(1.0))


def write_ckpt(path, sd, buffer=None, **extra):
    torch.save({"model_state_dict": sd, **({"replay_buffer": buffer} if buffer is not None else {}), **extra}, path)
    return path


@pytest.mark.parametrize(("kind", "norm"), [("jem", None), ("jempp", "batch"), ("sadajem", "batch")])
def test_imported_logits_equal_the_reference_forward(tmp_path, kind, norm):
    sd = reference_state(kind, norm)
    buffer = torch.rand(25, 3, 32, 32) * 2 - 1  # 25 entries: 20 kept, in 10 per-class blocks
    extra = {"args": argparse.Namespace(lr=0.1, norm=norm)} if kind == "jempp" else {}  # stored by some scripts
    ckpt = write_ckpt(tmp_path / f"{kind}.pt", sd, buffer, **extra)
    assert main(["import", kind, str(ckpt), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = load_run(tmp_path / "run", device="cpu")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    feats = reference_features(sd, x, norm)
    logits = F.linear(feats, sd["class_output.weight"], sd["class_output.bias"])
    assert close(run.jem.logits(x), logits)
    assert close(run.jem.log_px(x), logits.logsumexp(1))  # CCF: log p(x) = LSE
    assert torch.equal(run.buffer.x, buffer[:20]) and run.buffer.n_classes == 10
    kw = run.cfg.net.kwargs
    assert (kw["depth"], kw["width"], kw["norm"]) == (DEPTH, WIDTH, norm or "none")
    if norm == "batch":  # the reference's batch-norm momentum convention is kept for further training
        assert run.jem.net.blocks[0].bn1.momentum == 0.9
    assert run.state.net["imported"]["format"] == kind and run.cfg.data.name == "cifar10"


def test_the_unconditional_model_keeps_its_energy_head(tmp_path):
    sd = reference_state("sadajem", "batch", seed=3)
    ckpt = write_ckpt(tmp_path / "f.pt", sd)
    assert main(["import", "sadajem", str(ckpt), "--out", str(tmp_path / "run"), "--uncond", "--quiet"]) == 0
    run = load_run(tmp_path / "run", device="cpu")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    feats = reference_features(sd, x, "batch")
    energy = F.linear(feats, sd["energy_output.weight"], sd["energy_output.bias"]).squeeze(1)
    assert close(run.jem.log_px(x), energy)
    assert close(run.jem.logits(x), F.linear(feats, sd["class_output.weight"], sd["class_output.bias"]))
    assert run.buffer is None


def test_files_that_do_not_map_give_one_error_listing_every_key(tmp_path, capsys):
    sd = reference_state("sadajem", "batch")
    out, zero, ones = tmp_path / "run", torch.zeros(1), torch.ones(16)
    cases = {
        "truncated": lambda p: p.write_bytes(write_ckpt(tmp_path / "ok.pt", sd).read_bytes()[:300]),
        "foreign": lambda p: torch.save({"weights": sd}, p),
        "extra keys": lambda p: write_ckpt(p, {**sd, "f.layer9.0.conv1.weight": zero, "head.w": zero}),
        "alias mismatch": lambda p: write_ckpt(p, {**reference_state("jempp", "batch"), "f.layer_one.bias": ones}),
        "missing part": lambda p: write_ckpt(p, {k: v for k, v in sd.items() if not k.startswith("f.layer2.0.conv2")}),
        "bad buffer": lambda p: write_ckpt(p, sd, torch.zeros(10, 1, 28, 28)),
    }
    expect = {
        "truncated": "cannot be read",
        "foreign": "has no model_state_dict (its keys: weights), so it is not a sadajem checkpoint",
        "extra keys": "2 key(s) have no place in torchjem's model: f.layer9.0.conv1.weight, head.w",
        "alias mismatch": "f.layer_one.bias (not an alias of f.conv1.bias)",
        "missing part": "does not fill torchjem's model",
        "bad buffer": "replay_buffer is (10, 1, 28, 28), expected (N, 3, 32, 32)",
    }
    errors = {}
    for name, write in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        write(path)
        assert main(["import", "sadajem", str(path), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect[name] in err[0], (name, err)
        assert not out.exists(), name  # no partial run directory
        errors[name] = err[0]
    for name in ("truncated", "foreign", "extra keys"):
        assert "sndnyang/SADAJEM train_sadajem.py" in errors[name]  # the expected format is named


def test_export_is_safetensors_and_every_command_reads_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "train.max_steps=3", f"--out={run_dir}", "--device=cpu", "--quiet"]) == 0
    assert main(["export", str(run_dir), "--out", str(tmp_path / "exp")]) == 0
    weights = load_file(tmp_path / "exp" / "model.safetensors")  # plain safetensors, no torchjem
    meta = json.loads((tmp_path / "exp" / "torchjem.json").read_text())
    run = load_run(run_dir, device="cpu")
    assert weights.keys() == run.jem.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in run.jem.state_dict().items())
    assert meta["net"]["name"] == "convnet" and meta["data"]["shape"] == [1, 8, 8] and meta["step"] == 3
    exported = load_run(tmp_path / "exp", device="cpu")
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    assert torch.equal(exported.jem.logits(x), run.jem.logits(x))  # bit for bit
    assert torch.equal(exported.buffer.x, run.buffer.x)
    # and back into a run directory
    assert main(["import", "torchjem", str(tmp_path / "exp"), "--out", str(tmp_path / "back"), "--quiet"]) == 0
    assert torch.equal(load_run(tmp_path / "back", device="cpu").jem.logits(x), run.jem.logits(x))
    assert main(["sample", str(tmp_path / "exp"), "--n", "4", "--per-class", "1", "--out", str(tmp_path / "s")]) == 0
    assert main(["eval", str(tmp_path / "exp"), "--limit", "10", "--no-generation", "--quiet"]) == 0


def test_an_imported_run_is_evaluated_with_the_reference_input_noise(tmp_path):
    write_cifar10(tmp_path / "cifar", n=20)
    ckpt = write_ckpt(tmp_path / "jem.pt", reference_state("jem", None))
    over = ["data.val_size=0.1"]
    assert main(["import", "jem", str(ckpt), "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "cifar"),
                 *over, "--quiet"]) == 0
    kw = dict(ood=["uniform"], generate=False, limit=16, write=False, progress=False)
    clean = evaluate_run(tmp_path / "run", **kw)
    noisy = evaluate_run(tmp_path / "run", input_noise=0.5, **kw)
    assert clean.settings.input_noise == 0 and noisy.settings.input_noise == 0.5
    assert noisy.settings.seed == load_run(tmp_path / "run", device="cpu").cfg.seed
    run = load_run(tmp_path / "run", device="cpu")
    data = run.data()
    x, y = data.x_test[:16], data.y_test[:16]
    g = torch.Generator().manual_seed(run.cfg.seed + 1)  # the evaluation's seed (the run's own) + 1
    x_noisy = x + 0.5 * torch.randn(x.shape, generator=g)
    want = F.cross_entropy(run.jem.logits(x_noisy), y).item()
    assert noisy.models["model"].evaluation.classification.nll == pytest.approx(want, rel=1e-5)
    assert clean.models["model"].evaluation.classification.nll == pytest.approx(
        F.cross_entropy(run.jem.logits(x), y).item(), rel=1e-5
    )
    # and it can be trained further (fine-tuning: a fresh optimiser from the imported weights)
    resume = ["train", "--resume", str(tmp_path / "run"), "train.max_steps=2", "train.batch_size=8", "sgld.steps=2"]
    assert main([*resume, "--quiet", "--device=cpu"]) == 0
    assert load_run(tmp_path / "run", device="cpu").state.progress.step == 2
