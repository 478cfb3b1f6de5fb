"""Batch augmentation on the device (reflect-pad + random crop, horizontal flip, Gaussian noise)
and resizing of other data sets to a model's input shape.

Everything works on whole batches of tensors already on the device, so no per-image PIL work
and no host round trip. Randomness comes from ``generator`` when given (it must live on the
batch's device): the same generator state gives the same batch, bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..utils import DATA_RANGE
from .readers import to_float

# The paper's per-data-set choices: 4-pixel reflect pad + crop for 32x32 images, horizontal flip
# except where it changes the meaning (digits, house numbers); each data set's loader sets its
# ``DataSplits.flip``. The paper's Gaussian data noise (sigma 0.03) is the objective's
# ``data_noise``, added in the loss, so ``noise`` is 0 here by default.


def default_pad(shape: tuple[int, ...]) -> int:
    """Reflect-pad for random crops: side // 8 (4 for 32x32 as in the paper, 1 for 8x8 digits)."""
    return max(1, shape[-1] // 8)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Reflect-pad by ``pad`` and crop back to size at a random offset per image."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    if pad >= min(h, w):
        raise DataError(f"augment pad={pad} must be smaller than the image side ({h}x{w}) for reflect padding")
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2."""
    flip = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, sigma^2), not clamped (as the paper's data noise)."""
    if sigma <= 0:
        return x
    return x + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def augment(
    x: torch.Tensor,
    pad: int = 4,
    flip: bool = True,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The paper's augmentation for a batch of images (N, C, H, W): random crop from a
    ``pad``-pixel reflect padding, a random horizontal ``flip``, then Gaussian ``noise``.
    1-D signals (N, C, L) get the noise only.

    Args:
        x: the batch, float in [-1, 1]: images (N, C, H, W) or 1-D signals (N, C, L).
        pad: the reflect padding of the random crop, in pixels (default 4; 0: no crop).
        flip: whether to flip each image horizontally with probability 1/2 (default True).
        noise: the std of the added Gaussian noise, in data units (default 0.0: none).
        generator: the random generator to draw from (default None: the global RNG).
    """
    if x.ndim == 4:
        x = random_crop(x, pad, generator)
        if flip:
            x = random_flip(x, generator)
    elif x.ndim != 3:
        raise DataError(f"augment expects a batch (N, C, H, W) or (N, C, L), got shape {tuple(x.shape)}")
    return gaussian_noise(x, noise, generator)


class BatchAugment:
    """Augmentation settings bound once (e.g. from a data set's defaults), applied per batch."""

    def __init__(self, pad: int = 4, flip: bool = True, noise: float = 0.0) -> None:
        if pad < 0 or noise < 0:
            raise DataError(f"augmentation pad ({pad}) and noise ({noise}) must be >= 0")
        self.pad, self.flip, self.noise = pad, flip, noise

    @classmethod
    def for_data(cls, data, pad: int | None = None, flip: bool | None = None, noise: float = 0.0) -> BatchAugment:
        """Defaults from a DataSplits: ``default_pad`` of its shape and its ``flip`` flag."""
        return cls(
            default_pad(data.shape) if pad is None else pad,
            data.flip if flip is None else flip,
            noise,
        )

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return augment(x, self.pad, self.flip, noise=self.noise, generator=generator)

    def __repr__(self) -> str:
        return f"BatchAugment(pad={self.pad}, flip={self.flip}, noise={self.noise})"


# ITU-R BT.601 luma weights; they sum to 1, so [-1, 1] stays [-1, 1].
_LUMA = (0.299, 0.587, 0.114)


def resize_to(x: torch.Tensor, shape: tuple[int, ...] | torch.Size, chunk: int = 4096) -> torch.Tensor:
    """Bring a batch to a model's input ``shape`` (C, H, W) or (C, L): channels 1 -> 3 by
    repetition, 3 -> 1 by luma, 4 -> 3 by dropping alpha; sides by antialiased bilinear
    (linear for signals) interpolation. uint8 input is first mapped to [-1, 1]; the result is
    float in [-1, 1], on ``x``'s device, computed ``chunk`` images at a time."""
    shape = tuple(int(s) for s in shape)
    if x.ndim != len(shape) + 1 or len(shape) not in (2, 3):
        raise DataError(
            f"resize_to: cannot bring a batch of shape {tuple(x.shape)} to inputs of shape {shape}; "
            "expected (N, C, H, W) to (C, H, W) or (N, C, L) to (C, L)"
        )
    c_in, c_out = x.shape[1], shape[0]
    if c_in != c_out and (c_in, c_out) not in ((1, 3), (3, 1), (4, 3), (4, 1)):
        raise DataError(f"resize_to: cannot map {c_in} channels to {c_out}; supported: 1<->3, 4->3, 4->1")
    outs = []
    for part in torch.split(x, chunk):
        part = to_float(part)
        if c_in == 4:
            part = part[:, :3]
        if part.shape[1] == 1 and c_out == 3:
            part = part.expand(-1, 3, *part.shape[2:])
        elif part.shape[1] == 3 and c_out == 1:
            w = torch.tensor(_LUMA, dtype=part.dtype, device=part.device).view(1, 3, *([1] * (part.ndim - 2)))
            part = (part * w).sum(1, keepdim=True)
        if tuple(part.shape[2:]) != shape[1:]:
            if part.ndim == 4:
                part = F.interpolate(part, size=shape[1:], mode="bilinear", align_corners=False, antialias=True)
            else:
                part = F.interpolate(part, size=shape[1:], mode="linear", align_corners=False)
        outs.append(part.clamp(*DATA_RANGE).contiguous())
    if not outs:
        return x.new_zeros((0, *shape), dtype=torch.float32)
    return torch.cat(outs)
