"""Where training batches come from: an in-memory training set kept on the device (the fast
path; uint8 when the pixels are 8-bit, converted per batch), or any torch Dataset read through a
DataLoader (a data set larger than memory). Both give each epoch an order fixed by (seed, epoch),
so a resumed run sees the same batches, and give each rank its slice of every global batch, so
the ranks together see exactly the batches one process would."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config, ConfigError
from ..data import DataSplits, check_splits, to_float
from ..errors import InputError
from ..rundir import DataSpec
from ..utils import predict_logits


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch`` (fixed by the run's seed)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    """``x`` as uint8 pixels when it is exactly ``to_float`` of 8-bit pixels, else ``x`` itself."""
    if x.dtype == torch.uint8 or not x.is_floating_point() or x.numel() == 0:
        return x
    u = ((x + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return u if torch.equal(to_float(u), x) else x


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full global batches an epoch (at least one)."""
    return max(1, n // batch_size)


def batch_indices(
    n: int, batch_size: int, rank: int, *, world: int, seed: int, epoch: int, start: int = 0, device=None
) -> Iterator[torch.Tensor]:
    """This rank's slice of each global batch of epoch ``epoch``, from batch ``start`` on: the one
    order both batch sources follow.

    Args:
        n: the training set's length.
        batch_size: the global batch size.
        rank: this process's rank.
        world: the number of processes.
        seed: the run's data-order seed.
        epoch: the epoch (the order's permutation depends on seed and epoch).
        start: the first batch of the epoch to yield (default 0).
        device: where the permutation lives (default None: the CPU).
    """
    perm = epoch_order(n, seed, epoch)
    if device is not None:
        perm = perm.to(device)
    local = batch_size // world
    lo = rank * local
    for i in range(start, steps_per_epoch(n, batch_size)):
        yield perm[i * batch_size + lo : i * batch_size + lo + local]


class TensorBatches:
    """Batches of an in-memory training set that lives on ``device``."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int, world: int, seed: int, device
    ) -> None:
        self.x = as_uint8(x).to(device)  # a quarter of the memory for 8-bit images
        self.y = y.to(device)
        self.batch_size, self.local = batch_size, batch_size // world
        self.rank, self.world, self.seed, self.device = rank, world, seed, device
        self.n = len(x)
        self.steps_per_epoch = steps_per_epoch(self.n, batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = batch_indices(
            self.n,
            self.batch_size,
            self.rank,
            world=self.world,
            seed=self.seed,
            epoch=epoch,
            start=start,
            device=self.device,
        )
        for idx in order:  # the permutation lives on the device: no copy per batch
            yield to_float(self.x[idx]), self.y[idx]


class _EpochSampler(Sampler[int]):
    """This rank's indices of an epoch, from batch ``start`` on (set before each epoch)."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int) -> None:
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.local = batch_size // world
        self.steps = steps_per_epoch(n, batch_size)
        self.epoch, self.start = 0, 0

    def __iter__(self) -> Iterator[int]:
        order = batch_indices(
            self.n, self.batch_size, self.rank, world=self.world, seed=self.seed, epoch=self.epoch, start=self.start
        )
        for idx in order:
            yield from idx.tolist()

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
            generator=torch.Generator().manual_seed(seed),  # its worker seeds must not draw from the global RNG
        )
        self.device = device

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch, self.sampler.start = epoch, start
        for x, y in self.loader:
            yield to_float(x, self.device), y.to(self.device, non_blocking=True)


def describe(data: Any) -> tuple[tuple[int, ...], int, tuple[torch.Tensor, torch.Tensor] | None]:
    """(input shape, classes, in-memory (x_train, y_train) or None) of the training data."""
    if isinstance(data, DataSplits):
        check_splits(data)  # user data gets the same checks as the built-in loaders
        return data.shape, data.n_classes, (data.x_train, data.y_train)
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(dataset, Dataset) or not hasattr(dataset, "__len__") or len(dataset) == 0:
        raise InputError(f"training data must be a DataSplits or a non-empty map-style Dataset, got {type(data)}")
    n_classes = getattr(dataset, "n_classes", None) or len(getattr(dataset, "classes", []))
    if not n_classes:
        raise InputError(
            f"the training Dataset {type(dataset).__name__} needs an n_classes attribute or a classes list "
            "(as torchvision's ImageFolder has)"
        )
    x0, _ = dataset[0]
    return tuple(torch.as_tensor(x0).shape), int(n_classes), None


def val_batches(data: Any, val: Dataset | None, rank: int, *, world: int, batch_size: int = 512):
    """This rank's share of the validation set, in batches.

    Args:
        data: the run's data (DataSplits, or None with a Dataset ``val``).
        val: a validation Dataset of (x, y) (default None: ``data``'s validation split).
        rank: this process's rank.
        world: the number of processes.
        batch_size: inputs per batch (default 512).
    """
    if isinstance(data, DataSplits) and val is None:
        x, y = data.x_val.tensor_split(world)[rank], data.y_val.tensor_split(world)[rank]
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    if val is None:
        return
    part = torch.utils.data.Subset(val, list(range(rank, len(val), world)))
    for x, y in DataLoader(part, batch_size=batch_size, generator=torch.Generator()):  # leaves the global RNG alone
        yield to_float(x), y


def make_batches(
    cfg: Config, data: Any, train_xy: tuple[torch.Tensor, torch.Tensor] | None, *, n_classes: int, rank: int,
    world: int, device: torch.device,
) -> TensorBatches | LoaderBatches:
    """The batch source of a run: in memory (labels thinned out by ``data.labels_per_class``) or a
    DataLoader over a Dataset; checks that the global batch splits over the ranks and fills.

    Args:
        cfg: the run's config (``train.batch_size``, ``data.labels_per_class``, the seed).
        data: the run's data (DataSplits or a map-style Dataset).
        train_xy: the in-memory training data (x (N, ...), y (N,)), or None for a Dataset.
        n_classes: the number of classes.
        rank: this process's rank.
        world: the number of processes.
        device: the training device.
    """
    batch = cfg.train.batch_size
    if batch % world:
        raise ConfigError(
            f"config train.batch_size={batch} is the global batch and must be divisible by the {world} processes"
        )
    args = (batch, rank, world, cfg.seed, device)
    if train_xy is None:
        if cfg.data.labels_per_class is not None:
            raise ConfigError("config data.labels_per_class needs in-memory data; label a Dataset's items -100")
        batches: TensorBatches | LoaderBatches = LoaderBatches(data, *args)
    else:  # (labels already thinned out by data.labels_per_class)
        batches = TensorBatches(train_xy[0], train_xy[1], *args)
    if world > 1 and batches.n < batch:
        raise ConfigError(
            f"{batches.n} training images cannot fill one global batch of train.batch_size={batch} on {world} "
            "processes; lower train.batch_size"
        )
    return batches


def validation_sums(jem: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """(correct, summed NLL, count) over ``batches``, float64 on the CPU (summed over ranks by the caller)."""
    sums = torch.zeros(3, dtype=torch.float64)
    for x, y in batches:
        logits, y = predict_logits(jem, x), y.cpu()
        nll = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        sums += torch.tensor([float((logits.argmax(1) == y).sum()), float(nll), len(y)], dtype=torch.float64)
    return sums


def data_spec(data: Any, name: str, described: tuple[tuple[int, ...], int] | None = None) -> DataSpec:
    """The identity of a run's training data, recorded in its checkpoints and checked on resume:
    ``name``, input shape, classes, class names (a DataSplits' ``class_names``, a Dataset's
    ``class_names`` or ``classes`` list), the training set's length and a fingerprint of a few of
    its examples (sha1 of the first, quartile and last examples' values and labels: five reads of
    a Dataset). ``described``: (shape, n_classes) when ``describe`` already gave them."""
    shape, n_classes = described if described is not None else describe(data)[:2]
    if isinstance(data, DataSplits):
        names, n = list(data.class_names or []) or None, len(data.x_train)

        def example(i: int) -> tuple[Any, Any]:
            return data.x_train[i], data.y_train[i]
    else:
        dataset = data.dataset if isinstance(data, DataLoader) else data
        names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
        names = [str(c) for c in names] if names is not None and len(names) == n_classes else None
        n = len(dataset)

        def example(i: int) -> tuple[Any, Any]:
            return dataset[i]
    h = hashlib.sha1()
    for i in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):
        x, y = example(i)
        h.update(to_float(torch.as_tensor(x)).detach().cpu().float().contiguous().numpy().tobytes())
        h.update(str(int(torch.as_tensor(y))).encode())
    return DataSpec(name, tuple(shape), int(n_classes), names, n, h.hexdigest()[:16])
