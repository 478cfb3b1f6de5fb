"""Where training batches come from: an in-memory training set kept on the device (the fast
path; uint8 when the pixels are 8-bit, converted per batch), or any torch Dataset read through a
DataLoader (a data set larger than memory). Both give each epoch an order fixed by (seed, epoch),
so a resumed run sees the same batches, and give each rank its slice of every global batch, so
the ranks together see exactly the batches one process would."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import to_float


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch`` (fixed by the run's seed)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    """``x`` as uint8 pixels when it is exactly ``to_float`` of 8-bit pixels, else ``x`` itself."""
    if x.dtype == torch.uint8 or not x.is_floating_point() or x.numel() == 0:
        return x
    u = ((x + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return u if torch.equal(to_float(u), x) else x


class TensorBatches:
    """Batches of an in-memory training set that lives on ``device``."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int, world: int, seed: int, device
    ) -> None:
        self.x = as_uint8(x).to(device)  # a quarter of the memory for 8-bit images
        self.y = y.to(device)
        self.batch_size, self.local = batch_size, batch_size // world
        self.rank, self.seed, self.device = rank, seed, device
        self.n = len(x)
        self.steps_per_epoch = max(1, self.n // batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = epoch_order(self.n, self.seed, epoch).to(self.device)
        bs, lo = self.batch_size, self.rank * self.local
        for i in range(start, self.steps_per_epoch):
            idx = perm[i * bs + lo : i * bs + lo + self.local]
            yield to_float(self.x[idx]), self.y[idx]


class _EpochSampler(Sampler[int]):
    """This rank's indices of an epoch, from batch ``start`` on (set before each epoch)."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.local = batch_size // world
        self.steps = max(1, n // batch_size)
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[int]:
        perm = epoch_order(self.n, self.seed, self.epoch)
        lo = self.rank * self.local
        for i in range(self.start, self.steps):
            yield from perm[i * self.batch_size + lo : i * self.batch_size + lo + self.local].tolist()

    def __len__(self) -> int:
        return (self.steps - self.start) * self.local


class LoaderBatches:
    """Batches of any map-style Dataset of (x, y) pairs, read by a DataLoader. ``x``: float in
    [-1, 1] or uint8 pixels (converted on the device); ``loader``'s workers, collate function and
    pinning are kept, its order and batch size are the run's."""

    def __init__(self, data: Dataset | DataLoader, batch_size: int, rank: int, world: int, seed: int, device) -> None:
        base = data if isinstance(data, DataLoader) else None
        dataset = base.dataset if base is not None else data
        self.n = len(dataset)
        self.sampler = _EpochSampler(self.n, batch_size, rank, world, seed)
        self.steps_per_epoch, self.local = self.sampler.steps, self.sampler.local
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size // world,
            sampler=self.sampler,
            num_workers=base.num_workers if base is not None else 0,
            collate_fn=base.collate_fn if base is not None else None,
            pin_memory=base.pin_memory if base is not None else False,
            drop_last=True,
        )
        self.device = device

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch, self.sampler.start = epoch, start
        for x, y in self.loader:
            yield to_float(x, self.device), y.to(self.device, non_blocking=True)
