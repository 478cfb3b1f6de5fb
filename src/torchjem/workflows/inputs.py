"""The shared inputs of an evaluation, built from files and data sets so that ``torchjem.evaluate``
stays a set of pure functions of (model, tensors):

- the OOD sets named by specs (``check_ood_specs``, ``build_ood_sets``): the built-in synthetic
  sets (``torchjem.evaluate.ood.builtin_ood_set``), the held-out classes of a run, ``letters``
  (natural non-digits rendered by the data layer, ``torchjem.data.glyphs``), and data sets the data
  layer reads (``named_ood_set``), resized to the model's input;
- the feature network for FID / KID / the Inception-style score (``resolve_feature_net``): the
  default classifier, trained once per data set and cached on disk (``default_feature_net``), or a
  TorchScript Inception-v3 read from a local file (``load_inception``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import list_datasets, load_data, read_folder_inputs, read_npz_inputs, to_float
from ..data.glyphs import MIN_SIDE, describe_glyphs, glyph_images
from ..errors import CheckpointError, InputError, MissingError, WriteError
from ..evaluate.features import ClassifierFeatures, FeatureNet, InceptionFeatures, ModuleFeatures
from ..evaluate.ood import BUILTIN_SETS, builtin_ood_set, fit_to_shape

log = logging.getLogger("torchjem")

DEFAULT_OOD = ("uniform", "gaussian", "interp")
HELD_OUT = "held_out"  # the test images of the classes a run was not trained on (data.classes)
LETTERS = "letters"  # natural non-digits: letters and symbols rendered from matplotlib's fonts, MNIST-style
LETTERS_N = 10_000  # the size of ``letters`` when no count is given (MNIST's test set)


# -- OOD sets from specs ----------------------------------------------------------------------
def check_ood_specs(specs: Sequence[str]) -> list[str]:
    """OOD set names: built-in sets, ``held_out``, ``letters``, or data sets (``NAME`` or ``NAME:ROOT``).

    Raises InputError for an unknown name or a name listed twice (nothing is loaded)."""
    specs = list(specs)
    known = list_datasets()
    for s in specs:
        if s in BUILTIN_SETS or s in (HELD_OUT, LETTERS):
            continue
        if s.partition(":")[0] not in known:
            raise InputError(
                f"unknown OOD set {s!r}; use {', '.join(BUILTIN_SETS)}, {LETTERS}, {HELD_OUT} (runs trained on "
                f"data.classes) or a data set name (NAME or NAME:ROOT) from: {', '.join(known)}"
            )
    if len(set(specs)) != len(specs):
        raise InputError(f"OOD sets listed twice: {specs}")
    return specs


FILE_SETS = ("npz", "image_folder")  # OOD sets read from a file or folder: used whole, labels not needed


def named_ood_set(spec: str, shape: Sequence[int], n: int | None = None, *, seed: int = 0) -> torch.Tensor:
    """A data set the data layer can read, as ``NAME`` or ``NAME:ROOT``, resized to ``shape``, at
    most ``n`` examples (None: all). A file or folder (``npz:FILE``, ``image_folder:DIR``) is used
    whole, every input it holds, with or without labels; a named data set gives its test split
    (the training split when it has no test split). ``letters`` renders ``n`` (None: 10,000) glyph
    images at the model's height and width (``torchjem.data.glyphs.glyph_images``, seeded by
    ``seed``; 3 channels by repetition).

    Raises the data layer's errors for a set it cannot load, InputError when it cannot be resized
    (``letters``: inputs that are not (1 or 3, H, W) images with H, W >= 8)."""
    name, _, root = spec.partition(":")
    if spec == LETTERS:
        if len(shape) != 3 or min(shape[1:]) < MIN_SIDE:
            raise InputError(
                f"OOD set {LETTERS!r} is images of at least {MIN_SIDE}x{MIN_SIDE} pixels; the model takes inputs "
                f"of shape {tuple(shape)}"
            )
        x = glyph_images(LETTERS_N if n is None else n, size=(int(shape[1]), int(shape[2])), seed=seed)
    elif name in FILE_SETS and root:
        size = tuple(shape[-2:]) if len(shape) == 3 else None
        raw = read_npz_inputs(Path(root).expanduser()) if name == "npz" else read_folder_inputs(root, size)
        x = to_float(raw)
    else:
        data = load_data(name, root or None, val_size=0)
        x = data.x_test if len(data.x_test) else data.x_train
    return fit_to_shape(x[:n] if n else x, shape, spec)


def describe_named_set(spec: str, n: int | None = None, seed: int = 0) -> str:
    """One line saying what the set ``spec`` of :func:`named_ood_set` is (``n``, ``seed``: those it was
    built with, for ``letters``)."""
    if spec == LETTERS:
        return describe_glyphs(LETTERS_N if n is None else n, seed)
    name, _, root = spec.partition(":")
    if name in FILE_SETS and root:
        return f"every input of {root}, resized"
    return f"test split of data set {spec}, resized"


def build_ood_sets(
    specs: Sequence[str],
    x_in: torch.Tensor,
    held_out: torch.Tensor | None = None,
    *,
    seed: int = 0,
    limit: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The OOD sets named in ``specs`` (each (n, *x_in.shape[1:])) and their descriptions. The
    i-th built-in synthetic set is seeded with ``seed + i`` and has ``len(x_in)`` inputs; ``held_out``
    (the test images of the classes a run was not trained on) serves the ``held_out`` spec; it and
    the sets read from data sets, files or folders are used whole, or their first ``limit`` inputs.
    ``letters`` (glyphs rendered from matplotlib's fonts) has ``len(x_in)`` inputs, at most ``limit``,
    and is seeded like the synthetic sets.

    Raises InputError for an unknown spec, or ``held_out`` asked for without (or with empty) images.

    Args:
        specs: OOD set specs (``uniform``, ``letters``, ``held_out``, a data set name, a file or a folder).
        x_in: the in-distribution test inputs (N, ...) in [-1, 1].
        held_out: test inputs of the classes the run was not trained on (default None).
        seed: the seed of the first synthetic set (default 0).
        limit: the most inputs taken from a read set (default None: all).
    """
    sets, desc = {}, {}
    n, shape = len(x_in), tuple(x_in.shape[1:])
    for i, spec in enumerate(check_ood_specs(specs)):
        if spec in BUILTIN_SETS:
            sets[spec], desc[spec] = builtin_ood_set(spec, x_in, n, seed + i), BUILTIN_SETS[spec]
        elif spec == HELD_OUT:
            if held_out is None:
                raise InputError(
                    f"OOD set {HELD_OUT!r} needs a run trained on a subset of the classes (data.classes=[...])"
                )
            if len(held_out) == 0:
                raise InputError(f"OOD set {HELD_OUT!r} is empty: no test images outside the trained classes")
            sets[spec] = held_out[:limit].float()
            desc[spec] = "test images of the classes the model was not trained on"
        elif spec == LETTERS:
            m = min(n, limit) if limit else n
            sets[spec] = named_ood_set(spec, shape, m, seed=seed + i)
            desc[spec] = describe_named_set(spec, m, seed + i)
        else:
            sets[spec], desc[spec] = named_ood_set(spec, shape, limit), describe_named_set(spec)
    return sets, desc


# -- the feature network for FID ----------------------------------------------------------------
def load_inception(path: str | Path, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The TorchScript Inception-v3 detector in the local file ``path`` (never downloaded), e.g. the
    ``inception-2015-12-05.pt`` of the StyleGAN2-ADA / clean-fid metrics, named after the file.

    Raises MissingError when the file does not exist, InputError when it is not TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"Inception weights file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format these files use
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location=device)
    except RuntimeError as e:
        raise InputError(f"{str(path)!r} is not a TorchScript Inception detector: {e}") from None
    return InceptionFeatures(net, f"inception-v3[{path.name}]")


# the default: a classifier trained once per data set and cached
FEATURE_NET_FORMAT = 2  # part of every cache key: bump it when the training changes, old entries are then unused


def default_cache_dir() -> Path:
    """The cache shared by runs: ``$TORCHJEM_CACHE/feature_nets`` when the variable is set, else
    ``$XDG_CACHE_HOME/torchjem/feature_nets``, else ``~/.cache/torchjem/feature_nets``."""
    root = os.environ.get("TORCHJEM_CACHE")
    if root:
        return Path(root).expanduser() / "feature_nets"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "torchjem" / "feature_nets"


def data_key(data: Any) -> str:
    """SHA-256 of what the default network is trained, stopped and scored on: the name, classes and
    every split's tensors (bytes, dtype and shape). Another split seed, class subset or file differs."""
    h = hashlib.sha256()
    h.update(json.dumps([data.name, int(data.n_classes), [str(c) for c in data.class_names]]).encode())
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        t = getattr(data, split).detach().cpu().contiguous()
        h.update(f";{split}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def default_feature_net(
    data: Any,
    cache_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    *,
    epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
    shared_cache: str | Path | bool = True,
    patience: int = 2,
    min_gain: float = 0.001,
) -> ClassifierFeatures:
    """A ClassifierFeatures for ``data`` (DataSplits), trained once and cached.

    Two places are looked at, in order, before training:

    - ``cache_dir`` (``jem eval`` passes RUN_DIR/feature_net): the run's own copy,
      ``classifier_<data>.pt``, used whenever it was trained on the same data (whatever its
      settings: delete it to retrain with others), so that a run's reports keep one network;
    - the cache shared by runs (``shared_cache``: True for :func:`default_cache_dir`, a folder, or
      False for none): ``classifier_<data>_<key>.pt``, where the key hashes the data
      (:func:`data_key`) and the training settings, so runs on the same data share one network and
      other data (another split seed, class subset, file) never gets it.

    Otherwise it is trained (at most ``epochs`` epochs, stopping once the validation accuracy has not
    gained ``min_gain`` (0.1 point) for ``patience`` epochs, keeping the best epoch's weights) and
    written atomically to both places. A cache file that cannot be read is retrained (a warning);
    a shared cache that cannot be written is a warning too. Training never touches the global RNG
    state (it runs under a forked, seeded RNG). ``net.history`` records the epochs trained.

    Args:
        data: the data (DataSplits) to train the classifier on.
        cache_dir: the run's own cache folder (default None: none).
        device: where to train (default "cpu").
        epochs: the most epochs (default 15).
        batch_size: training batch size (default 64).
        seed: the training seed (default 0).
        progress: show a progress bar (default False).
        shared_cache: True for :func:`default_cache_dir`, a folder, or False (default True).
        patience: epochs without ``min_gain`` before stopping (default 2).
        min_gain: the validation accuracy gain that counts, as a fraction (default 0.001).
    """
    if epochs < 1 or batch_size < 1 or patience < 1 or min_gain < 0:
        raise InputError(
            f"feature net: epochs, batch_size and patience must be >= 1 and min_gain >= 0, got epochs={epochs}, "
            f"batch_size={batch_size}, patience={patience}, min_gain={min_gain}"
        )
    shape, n_classes = tuple(data.shape), int(data.n_classes)
    name = f"classifier[{data.name}]"
    classes = [str(c) for c in data.class_names]
    dkey = data_key(data)
    settings = {
        "format": FEATURE_NET_FORMAT, "net": "ClassifierFeatures(width=32, feature_dim=128)", "max_epochs": epochs,
        "batch_size": batch_size, "seed": seed, "patience": patience, "min_gain": min_gain,
    }
    key = hashlib.sha256(json.dumps([dkey, settings], sort_keys=True).encode()).hexdigest()
    meta = {"data": data.name, "shape": list(shape), "n_classes": n_classes, "classes": classes, "data_key": dkey}
    pinned = Path(cache_dir) / f"classifier_{_file_name(data.name)}.pt" if cache_dir is not None else None
    root = default_cache_dir() if shared_cache is True else Path(shared_cache) if shared_cache else None
    shared = root / f"classifier_{_file_name(data.name)}_{key[:16]}.pt" if root is not None else None

    found = _load_cached(pinned, shape, n_classes, name, meta, "run's copy") if pinned else None
    if found is None and shared is not None:
        found = _load_cached(shared, shape, n_classes, name, {**meta, "key": key}, "shared cache")
        if found is not None and pinned is not None:
            save_checkpoint(pinned, found[1])  # the run keeps the network its report used
    if found is not None:
        return found[0].to(device).eval()

    where = " and ".join(str(p) for p in (shared, pinned) if p is not None)
    why = "trained once, cached" if where else "not cached"
    log.info(
        "%s: none cached for this data yet; training it (at most %d epochs, until the validation accuracy "
        "plateaus)%s",
        name, epochs, f", then cached in {where}" if where else "",
    )
    net = ClassifierFeatures(shape, n_classes, name=name)
    desc = f"FID feature net for {data.name} ({why})"
    net = _train_classifier(net, data, device, epochs, batch_size, seed, progress, patience, min_gain, desc)
    model = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    extra = {"settings": settings, "history": net.history, "test_accuracy": net.test_accuracy}
    state = {"model": model, "meta": {**meta, "key": key, **extra}}
    if shared is not None:
        try:
            save_checkpoint(shared, state)
        except WriteError as e:
            log.warning("feature net: not cached for other runs: %s", e)
    if pinned is not None:
        save_checkpoint(pinned, state)
    return net.eval()


def _load_cached(
    path: Path, shape: tuple[int, ...], n_classes: int, name: str, expect: dict[str, Any], what: str
) -> tuple[ClassifierFeatures, dict[str, Any]] | None:
    """The network cached in ``path`` with ``expect`` in its meta (and its state), or None: missing,
    for other data (an info line) or unreadable (a warning; it will be retrained and rewritten)."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path, map_location="cpu", required=("model", "meta"))
        meta = state["meta"]
        legacy = what == "run's copy" and "data_key" not in meta  # written before the data was hashed
        checked = [k for k in expect if k not in ("data_key", "key")] if legacy else list(expect)
        if any(meta.get(k) != expect[k] for k in checked):
            log.info("feature net: %s %s is for other data; not used", what, path)
            return None
        net = ClassifierFeatures(shape, n_classes, name=name)
        net.load_state_dict(state["model"])
        net.test_accuracy = float(meta["test_accuracy"])
        net.history = meta.get("history", {})
    except (CheckpointError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        log.warning("feature net: %s %s cannot be used (%s); training a new one", what, path, str(e)[:300])
        return None
    log.info("feature net: loaded %s from %s %s", name, what, path)
    return net, state


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if not len(y):
        return float("nan")
    was_training = net.training
    net.eval()
    with torch.no_grad():
        hits = torch.cat([net.logits(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)]) == y
    net.train(was_training)
    return float(hits.float().mean())


def _train_classifier(
    net: ClassifierFeatures,
    data: Any,
    device: torch.device | str,
    epochs: int,
    batch_size: int,
    seed: int,
    progress: bool,
    patience: int = 2,
    min_gain: float = 0.001,
    desc: str = "FID feature net",
) -> ClassifierFeatures:
    """Train ``net``'s architecture afresh on ``data.x_train``; stop early on the validation accuracy
    (``data.x_val``, or a seeded tenth of the training data when there is no validation split)."""
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net = ClassifierFeatures(net.shape, net.n_classes, name=net.name).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x, y = data.x_train.to(device), data.y_train.to(device)
        xv, yv = data.x_val.to(device), data.y_val.to(device)
        if not len(yv) and len(y) >= 50:  # no validation split: hold out a seeded tenth of the training data
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(device)
            n_val = len(y) // 10
            xv, yv, x, y = x[perm[:n_val]], y[perm[:n_val]], x[perm[n_val:]], y[perm[n_val:]]
        steps = max(1, len(x) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps)
        bar = tqdm(total=epochs * steps, desc=desc, disable=not progress, leave=False)
        val_acc: list[float] = []
        best, best_state, best_epoch, reference, stale = -1.0, None, 0, -1.0, 0
        for epoch in range(1, epochs + 1):
            bar.set_description(f"{desc}: epoch {epoch}")
            perm = torch.randperm(len(x), device=device)
            for i in range(steps):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                xb = x[idx] + 0.03 * torch.randn_like(x[idx])  # the JEM data noise: samples are noisy too
                loss = F.cross_entropy(net.logits(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            if not len(yv):  # nothing to stop on: every epoch, the last one kept
                continue
            acc = _accuracy(net, xv, yv)
            val_acc.append(acc)
            bar.set_postfix(val_acc=f"{acc:.4f}")
            if acc > best:
                best, best_epoch = acc, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if acc >= reference + min_gain:
                reference, stale = acc, 0
            else:
                stale += 1
                if stale >= patience:
                    break
        bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        net.test_accuracy = _accuracy(net, data.x_test.to(device), data.y_test.to(device))
    trained = len(val_acc) if val_acc else epochs
    net.history = {
        "epochs": trained, "max_epochs": epochs, "best_epoch": best_epoch or epochs, "stopped_early": trained < epochs,
        "val_accuracy": val_acc,
    }
    log.info(
        "feature net: %d of at most %d epochs (best: epoch %d%s), test accuracy %.4f",
        trained, epochs, net.history["best_epoch"], f", validation accuracy {best:.4f}" if val_acc else "",
        net.test_accuracy,
    )
    return net


def resolve_feature_net(
    spec: str | nn.Module | None,
    data: Any,
    cache_dir: str | Path | None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    shared_cache: str | Path | bool = True,
) -> FeatureNet:
    """``"auto"``/None: the default classifier (:func:`default_feature_net`: ``cache_dir`` holds the
    run's copy, ``shared_cache`` is the cache shared by runs); ``"inception:PATH"`` or a
    ``.pt``/``.pth`` path: a TorchScript Inception; a FeatureNet: itself; any other nn.Module: its
    logits as features.

    Args:
        spec: "auto", None, "inception:PATH", a .pt/.pth path, a FeatureNet or an nn.Module.
        data: the run's data (DataSplits), for the default classifier.
        cache_dir: the run's own cache folder (None: none).
        device: where the network runs (default "cpu").
        progress: show progress bars (default False).
        shared_cache: the cache shared by runs, as in :func:`default_feature_net` (default True).
    """
    if spec is None or spec == "auto":
        return default_feature_net(data, cache_dir, device, progress=progress, shared_cache=shared_cache)
    if isinstance(spec, FeatureNet):
        return spec.to(device).eval()
    if isinstance(spec, nn.Module):
        return ModuleFeatures(spec, type(spec).__name__).to(device).eval()
    if isinstance(spec, str):
        kind, sep, rest = spec.partition(":")
        if sep and kind == "inception":
            return load_inception(rest, device)
        if Path(spec).suffix in (".pt", ".pth", ".pts"):
            return load_inception(spec, device)
    raise InputError(f"feature net {spec!r}: expected 'auto', 'inception:PATH' or a path to a TorchScript .pt file")
