"""Drawing samples from a JEM and writing them as PNG grids.

Figures are drawn with matplotlib's object-oriented API (``Figure``, no pyplot), so importing
this module leaves the user's matplotlib backend as it is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .errors import InputError
from .figures import save_image, save_png
from .sampling import ChainSampler
from .utils import DATA_RANGE


def grid_image(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> one (H', W') or (H', W', 3) array in [0, 1]."""
    lo, hi = DATA_RANGE
    x = ((x.detach().float().cpu().clamp(lo, hi) - lo) / (hi - lo)).numpy()
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid[0] if c == 1 else grid[:3].transpose(1, 2, 0)


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, title: str | None = None) -> Path:
    """Write a PNG grid of images (N, C, H, W), or of line plots for 1-D signals (N, C, L).
    InputError for any other shape."""
    path = Path(path)
    if x.ndim == 4:
        img = grid_image(x, nrow)
        scale = max(1, 256 // max(img.shape[:2]))
        fig = Figure(figsize=(img.shape[1] * scale / 64, img.shape[0] * scale / 64 + (0.3 if title else 0)), dpi=96)
        ax = fig.subplots()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    elif x.ndim == 3:
        n = len(x)
        nrow = nrow or math.ceil(math.sqrt(n))
        rows = math.ceil(n / nrow)
        fig = Figure(figsize=(1.2 * nrow, 0.8 * rows), dpi=96)
        axes = fig.subplots(rows, nrow, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i < n:
                for ch in x[i].detach().float().cpu().numpy():
                    ax.plot(ch, lw=0.8)
            ax.axis("off")
    else:
        raise InputError(f"save_grid expects (N, C, H, W) images or (N, C, L) signals, got shape {tuple(x.shape)}")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path, tight=True)  # a Figure of its own: no pyplot, no backend switch


def save_samples(x: torch.Tensor, path: str | Path, nrow: int | None = None, width: int = 480) -> Path:
    """A sample grid as a crisp PNG about ``width`` pixels wide: the pixels themselves, upscaled by
    an integer factor (nearest neighbour), no axes or title (the report's grids); 1-D signals
    (N, C, L) as line plots (``save_grid``)."""
    if x.ndim != 4:
        return save_grid(x, path, nrow)
    img = grid_image(x, nrow)
    scale = max(1, width // img.shape[1])
    return save_image(np.repeat(np.repeat(img, scale, axis=0), scale, axis=1), path)


def check_grid_options(n: int, per_class: int, n_steps: int | None) -> None:
    """The counts of ``write_sample_grids`` (``jem sample --n --per-class --steps``), checked."""
    if n < 1 or per_class < 1:
        raise InputError(f"sample grids need n (--n) >= 1 and per_class (--per-class) >= 1, got {n} and {per_class}")
    if n_steps is not None and n_steps < 0:
        raise InputError(f"SGLD steps (--steps) must be >= 0, got {n_steps}")


def write_sample_grids(
    model: nn.Module,
    sampler: ChainSampler,
    n_classes: int,
    *,
    out_dir: str | Path,
    n: int = 100,
    per_class: int = 10,
    n_steps: int | None = None,
) -> dict[str, object]:
    """Unconditional and class-conditional grids (one row per class) in ``out_dir``, drawn with
    ``sampler.draw`` (the buffer is left as it is). Returns the paths and the samples, so callers
    can score them.

    Args:
        model: the JEM (or any classifier returning logits) to sample from.
        sampler: the chain sampler.
        n_classes: the number of classes (rows of the conditional grid).
        out_dir: the folder the PNGs are written to.
        n: unconditional samples (default 100).
        per_class: conditional samples per class (default 10).
        n_steps: SGLD steps (default None: the sampler's default for ``draw``).
    """
    check_grid_options(n, per_class, n_steps)
    out_dir = Path(out_dir)
    x_u = sampler.draw(model, n, n_steps=n_steps)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x_c = sampler.draw(model, y=y, n_steps=n_steps)
    src = "buffer" if sampler.buffer is not None else "fresh chains"
    return {
        "unconditional": save_grid(x_u, out_dir / "unconditional.png", title=f"unconditional samples ({src})"),
        "conditional": save_grid(
            x_c,
            out_dir / "conditional.png",
            nrow=per_class,
            title=f"class-conditional samples, one row per class ({src})",
        ),
        "x_unconditional": x_u,
        "x_conditional": x_c,
        "y_conditional": y,
    }
