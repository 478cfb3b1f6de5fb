"""Drawing samples from a JEM and writing them as PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402
from .sampling import SGLD, ReplayBuffer  # noqa: E402


def draw_samples(
    model: nn.Module,
    sampler: SGLD,
    n: int,
    shape: tuple[int, ...],
    buffer: ReplayBuffer | None = None,
    y: torch.Tensor | None = None,
    n_steps: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` samples (or one per label in ``y``, class-conditional).

    With a ``buffer`` the chains start from buffer entries (their class's block when ``y`` is
    given) and run ``n_steps`` more steps (default 0 unconditional, the sampler's count
    conditional); without one they start from U(-1, 1) noise and run ``n_steps`` (default
    the sampler's count).
    """
    device = device or next(model.parameters()).device
    if y is not None:
        y = y.to(device)
        n = len(y)
    if buffer is not None:
        idx = (
            torch.randint(0, buffer.size, (n,), device=buffer.device)
            if y is None
            else y.to(buffer.device) * buffer.block + torch.randint(0, buffer.block, (n,), device=buffer.device)
        )
        x0 = buffer.x[idx].to(device)
        steps = n_steps if n_steps is not None else (0 if y is None else sampler.n_steps)
    else:
        x0 = torch.rand((n, *shape), device=device) * 2 - 1
        steps = n_steps if n_steps is not None else sampler.n_steps
    return sampler.run(model, x0, y, n_steps=steps)


def grid_image(x: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> one (H', W') or (H', W', 3) array in [0, 1]."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
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
    """Write a PNG grid of images (N, C, H, W), or of line plots for 1-D signals (N, C, L)."""
    import io

    path = Path(path)
    if x.ndim == 4:
        img = grid_image(x, nrow)
        scale = max(1, 256 // max(img.shape[:2]))
        fig, ax = plt.subplots(
            figsize=(img.shape[1] * scale / 64, img.shape[0] * scale / 64 + (0.3 if title else 0)), dpi=96
        )
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    elif x.ndim == 3:
        n = len(x)
        nrow = nrow or math.ceil(math.sqrt(n))
        rows = math.ceil(n / nrow)
        fig, axes = plt.subplots(rows, nrow, figsize=(1.2 * nrow, 0.8 * rows), dpi=96, squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i < n:
                for ch in x[i].detach().float().cpu().numpy():
                    ax.plot(ch, lw=0.8)
            ax.axis("off")
    else:
        raise ValueError(f"save_grid expects (N, C, H, W) images or (N, C, L) signals, got shape {tuple(x.shape)}")
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_sample_grids(
    model: nn.Module,
    sampler: SGLD,
    shape: tuple[int, ...],
    n_classes: int,
    out_dir: str | Path,
    buffer: ReplayBuffer | None = None,
    n: int = 100,
    per_class: int = 10,
    n_steps: int | None = None,
) -> dict[str, object]:
    """Unconditional and class-conditional grids (one row per class) in ``out_dir``.

    Returns the paths and the samples, so callers can score them.
    """
    out_dir = Path(out_dir)
    x_u = draw_samples(model, sampler, n, shape, buffer, n_steps=n_steps)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x_c = draw_samples(model, sampler, len(y), shape, buffer, y=y, n_steps=n_steps)
    src = "buffer" if buffer is not None else "fresh chains"
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
