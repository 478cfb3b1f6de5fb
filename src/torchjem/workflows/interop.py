"""``jem import`` and ``jem export``: the published JEM, JEM++ and SADA-JEM checkpoints as ordinary
torchjem run directories, and a run's weights out as safetensors + JSON (docs/interop.md).

The three reference projects save ``{"model_state_dict": ..., "replay_buffer": ...}`` with
``torch.save``; the model is their ``CCF`` (or, with ``--uncond``, ``F``): a pre-activation
Wide-ResNet ``f`` whose pooled features feed ``class_output`` (logits) and ``energy_output``.
torchjem's ``wrn`` net has the same structure, so the import is a renaming of keys:

    f.conv1.*                       -> net.conv1.*
    f.layer{s}.{j}.{bn1,conv1,bn2,conv2}.*  -> net.blocks.{(s-1)*n+j}.{...}.*   (n blocks a stage)
    f.layer{s}.{j}.shortcut.0.*     -> net.blocks.{...}.shortcut.*
    f.bn1.*                         -> net.bn.*
    class_output.*                  -> net.fc.*   (--uncond: class_head.*, energy_output -> energy_head.*)

Left out on purpose: ``f.linear`` (JEM's unused classifier inside ``f``), ``energy_output`` (unused by
the CCF model), and JEM++'s YOPO aliases ``f.layer_one`` / ``f.other_layers.*`` (the same tensors as
``f.conv1`` / ``f.layer1-3`` / ``f.bn1``, checked equal). Any other key is an error listing them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch

from .. import build, sampling
from ..checkpoint import load_checkpoint
from ..config import CONFIG_DIR, Config, from_dict, load_config, merge, parse_overrides, save_config
from ..errors import CheckpointError, InputError, UserError, one_line
from ..rundir import DataSpec, RunDir, RunLock, RunState, save_export
from .runs import load_run

log = logging.getLogger("torchjem")

FORMATS = {
    "jem": "wgrathwohl/JEM train_wrn_ebm.py: {'model_state_dict': the CCF model (f = Wide_ResNet with conv1, "
    "layer1-3, bn1, linear; energy_output; class_output), 'replay_buffer': (N, C, H, W) in [-1, 1]}",
    "jempp": "sndnyang/JEMPP train_jempp.py (e.g. jempp_M10.pt): as jem, f the YOPO Wide_ResNet (layer_one and "
    "other_layers alias conv1, layer1-3 and bn1), batch norm, no f.linear",
    "sadajem": "sndnyang/SADAJEM train_sadajem.py (e.g. sadajem10_948_withbuffer.pt): as jem without f.linear, "
    "batch norm",
    "torchjem": "a folder written by `jem export` (model.safetensors + torchjem.json)",
}
# Sampling settings of each project, so that `jem sample` / `jem attack` on the import behave like it.
# sgld.model_mode stays auto: the chains of a batch-norm net (JEM++, SADA-JEM) run in train mode, as theirs.
SAMPLING = {
    "jem": {"sgld": {"steps": 20, "step_size": 1.0, "noise": 0.01}, "objective": {"data_noise": 0.03}},
    # JEM++ samples with PYLD as train_jempp.py (and the jempp_* recipes): 5 outer x 5 inner steps, pyld_lr 0.2,
    # gradients clamped, no noise, x clamped to [-1, 1]
    "jempp": {
        "sgld": {"kind": "pyld", "steps": 5, "inner_steps": 5, "inner_step_size": 0.2, "grad_clamp": 1.0,
                 "noise": 0.0, "clamp": True},
        "objective": {"data_noise": 0.03},
    },
    "sadajem": {
        "sgld": {"steps": 5, "step_size": 1.0, "noise": 0.0, "clamp": True, "grad_clamp": 1.0},
        "objective": {"data_noise": 0.0},
    },
}
BLOCK = re.compile(r"^f\.layer([123])\.(\d+)\.(bn1|conv1|bn2|conv2|shortcut\.0)\.(\w+)$")
ALIAS = re.compile(r"^f\.(layer_one|other_layers\.(\d+))\.(.+)$")


def reference_layout(sd: dict[str, torch.Tensor], norm: str | None = None) -> dict[str, Any]:
    """Depth, width, input channels, classes and norm of a reference Wide-ResNet state_dict."""
    for key in ("f.conv1.weight", "class_output.weight", "f.layer1.0.conv1.weight"):
        if key not in sd:
            raise CheckpointError(f"the model has no {key!r}")
    blocks = {int(m.group(2)) for k in sd if (m := BLOCK.match(k)) and m.group(1) == "1"}
    n, k = len(blocks), sd["f.layer1.0.conv1.weight"].shape[0] // 16
    if any(f"f.bn1.{p}" in sd for p in ("loc", "scale")):
        raise CheckpointError("the model uses ActNorm (norm=act), which torchjem's wrn does not have")
    found = "batch" if "f.bn1.running_mean" in sd else ("affine" if "f.bn1.weight" in sd else "none")
    if found == "affine":
        if norm not in ("instance", "layer"):
            raise InputError("the model has an affine norm without running statistics: pass --norm instance or layer")
        found = norm
    elif norm is not None and norm != found:
        raise InputError(f"--norm {norm} but the model's norm layers are {found!r}")
    return {
        "depth": 6 * n + 4,
        "width": k,
        "in_channels": int(sd["f.conv1.weight"].shape[1]),
        "n_classes": int(sd["class_output.weight"].shape[0]),
        "norm": found,
    }


def map_reference(sd: dict[str, torch.Tensor], n_blocks: int, uncond: bool = False) -> dict[str, torch.Tensor]:
    """Rename a reference CCF/F state_dict to torchjem's JEM over ``wrn``; raises with every key
    that has no place."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}  # nn.DataParallel's prefix
    out: dict[str, torch.Tensor] = {}
    unknown, aliases = [], {}
    for key, value in sd.items():
        if m := BLOCK.match(key):
            stage, j, part, name = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            part = "shortcut" if part == "shortcut.0" else part
            out[f"net.blocks.{(stage - 1) * n_blocks + j}.{part}.{name}"] = value
        elif key.startswith("f.conv1."):
            out["net.conv1." + key.removeprefix("f.conv1.")] = value
        elif key.startswith("f.bn1."):
            out["net.bn." + key.removeprefix("f.bn1.")] = value
        elif key.startswith("class_output."):
            out[("class_head." if uncond else "net.fc.") + key.removeprefix("class_output.")] = value
        elif key.startswith("energy_output."):
            if uncond:
                out["energy_head." + key.removeprefix("energy_output.")] = value
        elif key.startswith("f.linear."):
            pass  # JEM's classifier inside f, unused by its model
        elif m := ALIAS.match(key):
            aliases[key] = value
        else:
            unknown.append(key)
    for key, value in aliases.items():  # JEM++ YOPO: the same tensors under a second name
        m = ALIAS.match(key)
        idx, rest = m.group(2), m.group(3)
        primary = "f.conv1." + rest if m.group(1) == "layer_one" else (
            f"f.layer{int(idx) + 1}.{rest}" if int(idx) < 3 else f"f.bn1.{rest}")
        if primary not in sd or not torch.equal(sd[primary], value):
            unknown.append(f"{key} (not an alias of {primary})")
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise CheckpointError(f"{len(unknown)} key(s) have no place in torchjem's model: {shown}")
    return out


def _config(
    kind: str, layout: dict[str, Any], data: str | None, data_root: str | None, uncond: bool, extra: dict[str, Any]
) -> Config:
    name = data or ("cifar100" if layout["n_classes"] == 100 else "cifar10")
    recipe = CONFIG_DIR / f"{name}_paper.yaml"
    kwargs = {k: layout[k] for k in ("depth", "width", "norm")} | {"bn_momentum": 0.9, "dropout": 0.0}
    values = merge({"data": {"name": name}, "net": {"kwargs": kwargs, "energy_head": uncond}}, SAMPLING[kind])
    if data_root is not None:
        values["data"]["root"] = data_root
    return load_config(recipe if recipe.is_file() else CONFIG_DIR / "cifar10_paper.yaml", merge(values, extra))


def import_checkpoint(
    kind: str,
    path: str | Path,
    out: str | Path,
    *,
    data: str | None = None,
    data_root: str | None = None,
    norm: str | None = None,
    uncond: bool = False,
    image_size: int = 32,
    overwrite: bool = False,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Path:
    """Write ``out``, an ordinary run directory (config.yaml, checkpoints/last.pt), from a published
    checkpoint of ``kind`` (jem, jempp, sadajem) or a ``jem export`` folder (torchjem). ``data``:
    the data set name (default cifar10, or cifar100 for 100 classes), ``data_root`` its files;
    ``overrides``: config changes, a nested dict or KEY=VALUE strings (the network's keys are the file's).

    Args:
        kind: jem, jempp, sadajem or torchjem.
        path: the checkpoint file (or a ``jem export`` folder).
        out: the run directory to write.
        data: the data set name (default None: cifar10, or cifar100 for 100 classes).
        data_root: the folder of the data set's files (default None: its default location).
        norm: instance or layer, for a network whose affine norm has no running statistics
            (default None: read from the file).
        uncond: the checkpoint is unconditional (default False).
        image_size: the input's side in pixels (default 32).
        overwrite: replace an existing run in ``out`` (default False: refused).
        overrides: config changes, a nested dict or KEY=VALUE strings (default None).
    """
    if kind not in FORMATS:
        raise InputError(f"unknown checkpoint format {kind!r}; expected one of {', '.join(FORMATS)}")
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    run = RunDir(out)
    with RunLock(run).claim(overwrite=overwrite):
        state = _imported_state(kind, Path(path), data, data_root, norm, uncond, image_size, extra)
        save_config(from_dict(state.config), run.config)
        state.save(run.checkpoint("last"))
    log.info("imported %s checkpoint %s into %s", kind, path, run.path)
    return run.path


def data_problem(run_dir: str | Path) -> str | None:
    """Why the data of an imported run cannot be loaded yet (its files not found: no or a wrong
    data.root, a package missing), or None when ``jem eval`` can read it."""
    try:
        load_run(run_dir, device="cpu").data()
    except (UserError, ImportError) as e:
        return one_line(str(e))
    return None


def _imported_state(
    kind: str, path: Path, data: str | None, data_root: str | None, norm: str | None, uncond: bool,
    image_size: int, extra: dict[str, Any],
) -> RunState:
    """The run state (step 0, no optimiser state) of an imported model, checked by loading it."""
    if kind == "torchjem":
        run = load_run(path, device="cpu")
        cfg = load_config(None, extra, base=run.cfg)
        meta, model, buffer = run.state.data, run.jem.state_dict(), run.buffer
        buffer_state = buffer.state_dict() if buffer is not None else None
    else:
        try:
            ckpt = load_checkpoint(path, allowed=(argparse.Namespace,))
        except CheckpointError as e:
            raise CheckpointError(f"{e}; expected {FORMATS[kind]}") from None
        if "model_state_dict" not in ckpt:
            keys = ", ".join(map(str, sorted(ckpt, key=str)[:8])) or "none"
            raise CheckpointError(f"{str(path)!r} has no model_state_dict (its keys: {keys}), so it is not a {kind} "
                                  f"checkpoint; expected {FORMATS[kind]}")
        sd = ckpt["model_state_dict"]
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            raise CheckpointError(f"{str(path)!r}: model_state_dict is not a dict of tensors; expected {FORMATS[kind]}")
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        try:
            layout = reference_layout(sd, norm)
            model = map_reference(sd, (layout["depth"] - 4) // 6, uncond)
        except CheckpointError as e:
            raise CheckpointError(f"{str(path)!r} is not a {kind} checkpoint: {e}; expected {FORMATS[kind]}") from None
        cfg = _config(kind, layout, data, data_root, uncond, extra)
        meta = DataSpec(cfg.data.name, (layout["in_channels"], image_size, image_size), layout["n_classes"])
        buffer_state = _buffer_state(ckpt.get("replay_buffer"), meta, path)
    jem = build.build_jem(cfg, meta.shape, meta.n_classes)
    try:
        jem.load_state_dict(model)  # strict: every parameter and statistic of torchjem's model filled
    except RuntimeError as e:
        raise CheckpointError(f"{str(path)!r} does not fill torchjem's model: {str(e)[:400]}") from None
    if buffer_state is not None:
        cfg.buffer.size = len(buffer_state["x"])
    return RunState(  # a run at its start
        model=jem.state_dict(),
        config=cfg.to_dict(),
        data=meta,
        net={"source": "config", "name": cfg.net.name, "imported": {"format": kind, "file": str(path)}},
        buffer=buffer_state,
    )


def _buffer_state(rb: Any, meta: DataSpec, path: Path) -> dict[str, Any] | None:
    if rb is None or (isinstance(rb, (list, tuple)) and len(rb) == 0):
        return None
    if not torch.is_tensor(rb) or rb.ndim != 4 or tuple(rb.shape[1:]) != meta.shape:
        shape = tuple(rb.shape) if torch.is_tensor(rb) else type(rb).__name__
        want = ", ".join(map(str, meta.shape))
        raise CheckpointError(f"{str(path)!r}: replay_buffer is {shape}, expected (N, {want})")
    keep = len(rb) - len(rb) % meta.n_classes  # per-class blocks, as the reference's conditional sampling
    return sampling.buffer_state(rb[:keep].float().clone(), init="uniform", reinit_freq=0.05)


def export_run(run_dir: str | Path, out: str | Path | None = None, which: str = "last", buffer: bool = True) -> Path:
    """Write RUN_DIR/export (or ``out``): model.safetensors, torchjem.json and, with ``buffer``,
    buffer.safetensors. safetensors and plain torch read it; ``load_run`` and every command too."""
    run = load_run(run_dir, which, device="cpu")
    buffer_sd = run.buffer.state_dict() if run.buffer is not None else None
    state = dataclasses.replace(run.state, model=run.jem.state_dict(), buffer=buffer_sd)
    out = Path(out) if out is not None else RunDir(run.path).export
    source = {"run_dir": str(run.path), "checkpoint": which, "step": state.progress.step}
    return save_export(out, state, source, buffer=buffer)
