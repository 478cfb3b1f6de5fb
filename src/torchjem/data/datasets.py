"""Data sets as in-memory tensors in [-1, 1], split into train / validation / test."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError
from ..utils import frozen_eval

_LOADERS: dict[str, Callable[..., DataSplits]] = {}


@dataclass
class DataSplits:
    """Train / validation / test tensors. ``x`` float in [-1, 1] (N, C, H, W) or (N, C, L)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    flip: bool = False  # whether horizontal flips are a valid augmentation
    class_names: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> DataSplits:
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def register_dataset(name: str) -> Callable[[Callable[..., DataSplits]], Callable[..., DataSplits]]:
    def wrap(fn: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        _LOADERS[name] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def split_train_val(
    x: torch.Tensor, y: torch.Tensor, val_size: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded split; ``val_size`` < 1 is a fraction, >= 1 a count."""
    n_val = int(round(val_size * len(x))) if val_size < 1 else int(val_size)
    if n_val >= len(x):
        raise DataError(f"data.val_size={val_size} leaves no training data out of {len(x)} images")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]


@register_dataset("digits")
def load_digits(val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """scikit-learn's 8x8 digits (1,797 images, shipped with the package), 1x8x8 in [-1, 1].

    A fixed test split of 20% (seed 0, stratified) that never depends on the run; the rest is
    split into train and validation by ``split_seed``.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0) * 2 - 1
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    xt, yt = torch.from_numpy(x_tr)[:, None], torch.from_numpy(y_tr)
    x_train, y_train, x_val, y_val = split_train_val(xt, yt, val_size, split_seed)
    return DataSplits(
        "digits",
        x_train,
        y_train,
        x_val,
        y_val,
        torch.from_numpy(x_te)[:, None],
        torch.from_numpy(y_te),
        n_classes=10,
        flip=False,
        class_names=[str(i) for i in range(10)],
    )


def check_data(x: torch.Tensor, y: torch.Tensor, n_classes: int, what: str) -> None:
    """Raise a clear error for wrong shapes, labels out of range, NaN or out-of-range pixels."""
    if x.ndim < 3:
        raise DataError(f"{what}: inputs must be (N, C, ...) with a channel axis, got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise DataError(f"{what}: the set is empty")
    if not x.is_floating_point():
        raise DataError(f"{what}: inputs must be float in [-1, 1], got dtype {x.dtype} (map uint8 with to_float)")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{what}: labels must be shape ({len(x)},), got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{what}: labels must be integers, got dtype {y.dtype}")
    if not torch.isfinite(x).all():
        raise DataError(f"{what}: inputs contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0001 or hi > 1.0001:
        raise DataError(f"{what}: inputs must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}]")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(f"{what}: labels must be in [0, {n_classes - 1}], found [{int(y.min())}, {int(y.max())}]")


def load_data(
    name: str,
    root: str | None = None,
    val_size: float = 0.1,
    *,
    split_seed: int = 0,
    classes: list[int] | None = None,
    limit: int | None = None,
    **options: object,
) -> DataSplits:
    """Load a registered data set by name, optionally restricted to some classes.

    With ``classes``, labels are re-indexed to 0..len(classes)-1 in the given order.
    ``options`` go to the data set's loader, which ignores those it does not take (e.g.
    ``size=(32, 32), max_images=2000`` for ``image_folder``).

    Args:
        name: a registered data set (``available_datasets()``).
        root: the folder of its files (default None: the data set's default location).
        val_size: the fraction of the training set kept for validation (default 0.1).
        split_seed: the seed of the validation split (default 0).
        classes: keep only these classes, re-indexed in this order (default None: all).
        limit: keep the first this many training examples (default None: all).
        **options: passed on to the data set's loader (e.g. ``size``, ``max_images``).
    """
    if name not in _LOADERS:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(list_datasets())}")
    if options.get("size") is not None and "size" not in inspect.signature(_LOADERS[name]).parameters:
        takes = sorted(k for k, fn in _LOADERS.items() if "size" in inspect.signature(fn).parameters)
        raise DataError(f"data set {name!r} is not resized on load (data.image_size); only {', '.join(takes)} are")
    data = _LOADERS[name](root=root, val_size=val_size, split_seed=split_seed, **options)
    if classes is not None:
        data = restrict_classes(data, classes)
    if limit is not None:
        data.x_train, data.y_train = data.x_train[:limit], data.y_train[:limit]
    check_splits(data)
    return data


def check_splits(data: DataSplits) -> None:
    """check_data on every split, plus: the splits share one input shape and there are classes.
    Validation and test splits may be empty (training alone needs neither)."""
    if data.n_classes < 1:
        raise DataError(f"data set {data.name!r}: n_classes must be >= 1, got {data.n_classes}")
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if split != "train" and len(x) == 0:
            continue
        check_data(x, y, data.n_classes, f"data set {data.name!r} ({split} split)")
        if tuple(x.shape[1:]) != data.shape:
            raise DataError(
                f"data set {data.name!r}: {split} inputs are {tuple(x.shape[1:])} but training inputs are {data.shape}"
            )


def check_model_input(model: torch.nn.Module, shape: tuple[int, ...], n_classes: int, what: str = "data") -> None:
    """A clear error when a network cannot take inputs of ``shape`` or does not return
    ``n_classes`` logits: the first layer's channel count is compared before a probe forward."""
    first = next((m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))), None)
    if first is not None and first.in_channels != shape[0]:
        raise DataError(
            f"the network's first layer takes {first.in_channels} channels but {what} has {shape[0]} "
            f"(inputs {tuple(shape)}); build the net with in_channels={shape[0]} or resize the data (resize_to)"
        )
    if first is not None and first.kernel_size and len(first.kernel_size) != len(shape) - 1:
        raise DataError(
            f"the network starts with a {type(first).__name__} but {what} inputs are {tuple(shape)}; "
            f"expected {'(C, L) signals' if isinstance(first, torch.nn.Conv1d) else '(C, H, W) images'}"
        )
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    probe = torch.zeros((2, *shape), device=param.device if param is not None else "cpu", dtype=dtype)
    try:
        with torch.no_grad(), frozen_eval(model):  # every module's mode comes back as it was
            out = model(probe)
    except RuntimeError as e:
        raise DataError(f"the network cannot take inputs of shape {tuple(shape)} from {what}: {e}") from None
    if out.ndim != 2 or out.shape[1] != n_classes:
        raise DataError(f"the network returns shape {tuple(out.shape)}; expected (N, {n_classes}) logits")


def restrict_classes(data: DataSplits, classes: list[int]) -> DataSplits:
    """Keep only ``classes`` (re-labelled 0..k-1)."""
    if len(set(classes)) != len(classes) or any(not 0 <= c < data.n_classes for c in classes):
        raise DataError(f"data.classes={classes} must be distinct labels in [0, {data.n_classes - 1}]")
    lut = torch.full((data.n_classes,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    out = {}
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        keep = lut[y] >= 0
        out[f"x_{split}"], out[f"y_{split}"] = x[keep], lut[y[keep]]
    names = [data.class_names[c] for c in classes] if data.class_names else []
    return DataSplits(data.name, **out, n_classes=len(classes), flip=data.flip, class_names=names)


def held_out_classes(data: DataSplits, classes: list[int]) -> torch.Tensor:
    """Test images of the classes *not* in ``classes``: the held-out-class OOD set."""
    keep = ~torch.isin(data.y_test, torch.tensor(classes))
    return data.x_test[keep]
