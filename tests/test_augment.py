"""Batch augmentation on the device and resizing to a model's input shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchjem.data import BatchAugment, DataSplits, augment, default_pad, load_data, resize_to
from torchjem.data.augment import gaussian_noise, random_crop, random_flip


def _batch(n: int = 16, c: int = 3, side: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_augment_keeps_shape_and_range_and_is_seeded() -> None:
    x = _batch()
    a = augment(x, pad=3, flip=True, generator=torch.Generator().manual_seed(7))
    b = augment(x, pad=3, flip=True, generator=torch.Generator().manual_seed(7))
    c = augment(x, pad=3, flip=True, generator=torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= x.min() and a.max() <= x.max()  # crops and flips only move pixels
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = augment(x, pad=3)
    torch.manual_seed(3)
    assert torch.equal(d, augment(x, pad=3))  # the global generator is used when none is given


def test_crop_is_a_window_of_the_reflect_padded_image() -> None:
    x, pad = _batch(n=8), 2
    out = random_crop(x, pad, torch.Generator().manual_seed(0))
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    shifts = []
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 12, dx : dx + 12])
        ]
        assert len(hits) == 1
        shifts.append(hits[0])
    assert len(set(shifts)) > 1  # offsets differ between images
    assert torch.equal(random_crop(x, 0), x)
    with pytest.raises(ValueError, match="smaller than the image side"):
        random_crop(torch.zeros(2, 1, 3, 3), 3)


def test_flip_is_per_image_and_off_when_asked() -> None:
    x = _batch(n=200, side=6)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ kept).all()) and 70 < int(flipped.sum()) < 130
    assert torch.equal(augment(x, pad=0, flip=False), x)


def test_noise_and_signals() -> None:
    x = torch.zeros(64, 1, 40)
    g = torch.Generator().manual_seed(0)
    out = augment(x, pad=4, flip=True, noise=0.1, generator=g)  # 1-D: noise only
    assert out.shape == x.shape and abs(float(out.std()) - 0.1) < 0.01 and abs(float(out.mean())) < 0.01
    assert torch.equal(gaussian_noise(x, 0.0), x)
    assert torch.equal(augment(x, noise=0.0), x)
    with pytest.raises(ValueError, match="expects a batch"):
        augment(torch.zeros(3, 4))


def test_batch_augment_defaults_per_data_set() -> None:
    def fake(shape: tuple[int, ...], flip: bool) -> DataSplits:
        x, y = torch.zeros(2, *shape), torch.zeros(2, dtype=torch.long)
        return DataSplits("f", x, y, x, y, x, y, 2, flip=flip)

    cifar = BatchAugment.for_data(fake((3, 32, 32), True))
    svhn = BatchAugment.for_data(fake((3, 32, 32), False))
    assert (cifar.pad, cifar.flip, svhn.pad, svhn.flip) == (4, True, 4, False)  # the paper's choices
    assert BatchAugment.for_data(load_data("digits")).flip is False and default_pad((1, 8, 8)) == 1
    over = BatchAugment.for_data(fake((3, 32, 32), True), pad=2, flip=False, noise=0.03)
    assert (over.pad, over.flip, over.noise) == (2, False, 0.03)
    x = _batch(side=32)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(cifar(x, g1), augment(x, 4, True, noise=0.0, generator=g2))
    with pytest.raises(ValueError, match=">= 0"):
        BatchAugment(pad=-1)


# -- resize_to ------------------------------------------------------------------------------------
def test_resize_channels() -> None:
    grey = _batch(c=1, side=8)
    rgb = resize_to(grey, (3, 8, 8))
    assert rgb.shape == (16, 3, 8, 8) and torch.equal(rgb[:, 0], grey[:, 0]) and torch.equal(rgb[:, 2], grey[:, 0])
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [0.5, 0.5, 0.5]])[:, :, None, None].expand(3, 3, 4, 4)
    luma = resize_to(colours, (1, 4, 4))
    assert luma[:, 0, 0, 0].tolist() == pytest.approx([0.299 * 2 - 1, 0.587 * 2 - 1, 0.5], abs=1e-6)
    rgba = torch.cat([colours, torch.ones(3, 1, 4, 4)], 1)
    assert torch.equal(resize_to(rgba, (3, 4, 4)), colours)
    with pytest.raises(ValueError, match="cannot map 3 channels to 2"):
        resize_to(colours, (2, 4, 4))


def test_resize_sides_range_identity_and_uint8() -> None:
    x = _batch(c=3, side=64)
    small = resize_to(x, (3, 32, 32))
    assert small.shape == (16, 3, 32, 32) and small.min() >= -1 and small.max() <= 1
    # a +-1 checkerboard averages out (no aliasing into stripes); a constant stays constant
    idx = torch.arange(48)
    board = ((idx[:, None] + idx[None, :]) % 2 * 2 - 1).float().expand(1, 1, 48, 48)
    assert float(resize_to(board, (1, 13, 13)).abs().max()) < 0.15
    assert torch.allclose(resize_to(torch.full((1, 3, 48, 48), 0.25), (3, 13, 13)), torch.tensor(0.25))
    assert torch.equal(resize_to(x, (3, 64, 64)), x)
    u8 = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = resize_to(u8, (3, 32, 32))
    assert out.dtype == torch.float32 and torch.allclose(out, torch.ones(2, 3, 32, 32))
    sig = torch.linspace(-1, 1, 80).expand(2, 1, 80)
    assert resize_to(sig, (1, 40)).shape == (2, 1, 40)
    chunked = resize_to(x, (1, 20, 20), chunk=5)
    assert torch.allclose(chunked, resize_to(x, (1, 20, 20)))
    with pytest.raises(ValueError, match="cannot bring a batch"):
        resize_to(x, (32, 32))
