"""Training data beyond in-memory splits: any Dataset or DataLoader, and 8-bit images kept as
uint8 on the device."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from conftest import tiny_config
from torchjem import Trainer
from torchjem.data import DataSplits, load_data, to_float
from torchjem.training.batches import as_uint8


class PairDataset(Dataset):
    """What a user's folder-backed Dataset looks like to the trainer: (x, y) items, n_classes."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int = 10) -> None:
        self.x, self.y, self.n_classes, self.reads = x, y, n_classes, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], int(self.y[i])


def _params(t: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in t.jem.parameters()])


def test_as_uint8_keeps_8bit_images_exactly_and_other_data_as_is():
    u = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(as_uint8(to_float(u)), u)
    digits = load_data("digits").x_train  # 17 grey levels: not on the 8-bit grid
    assert as_uint8(digits) is digits
    almost = to_float(u)
    almost[0, 0, 0, 0] += 1e-3
    assert as_uint8(almost) is almost


def test_8bit_in_memory_data_lives_on_the_device_as_uint8(tmp_path):
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(96) % 10
    x = to_float(u)
    data = DataSplits("bytes", x, y, x[:0], y[:0], x[:0], y[:0], 10)
    t = Trainer(tiny_config("train.max_steps=2"), data=data, progress=False, out=tmp_path / "r")
    assert t.batches.x.dtype == torch.uint8 and t.batches.x.element_size() * 4 == x.element_size()
    seen = torch.cat([xb for xb, _ in t.batches.epoch(0)])
    assert seen.dtype == torch.float32 and len(seen) == 96  # three full batches of 32
    # every batch row is one of the float images, exactly
    assert all((row == x).flatten(1).all(1).any() for row in seen)


def test_a_dataset_trains_exactly_as_the_same_data_in_memory(tmp_path):
    digits = load_data("digits", limit=320)
    extra = ["train.max_steps=12", "train.eval_every=1"]
    ref = Trainer(tiny_config(*extra), data=digits, progress=False, out=tmp_path / "mem")
    ref.fit()
    ds = PairDataset(digits.x_train, digits.y_train)
    val = PairDataset(digits.x_val, digits.y_val)
    t = Trainer(tiny_config(*extra), data=DataLoader(ds, batch_size=7), val=val, progress=False, out=tmp_path / "ds")
    res = t.fit()
    # same order (seeded by epoch), same values, same steps: the same parameters bit for bit
    assert torch.equal(_params(t), _params(ref))
    # item by item (plus one probe of the shape and five examples fingerprinted), never loaded whole
    assert ds.reads == 12 * 32 + 1 + 5
    assert res["val_acc"] == pytest.approx(ref.validate()["val_acc"])
    # and it resumes from its checkpoint with the data given again
    more = Trainer.resume(t.run.path, data=ds, val=val, progress=False, overrides=["train.max_steps=14"])
    assert more.step == 12 and more.fit()["step"] == 14


def test_a_dataset_without_class_count_is_refused(tmp_path):
    class Bare(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(1, 8, 8), 0

    with pytest.raises(ValueError, match="n_classes attribute or a classes list"):
        Trainer(tiny_config(), data=Bare(), progress=False, out=tmp_path / "r")
    ds = PairDataset(torch.zeros(64, 1, 8, 8), torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="labels_per_class needs in-memory data"):
        Trainer(tiny_config("data.labels_per_class=2"), data=ds, progress=False, out=tmp_path / "r")
    with pytest.raises(ValueError, match="gaussian needs in-memory"):
        Trainer(tiny_config("buffer.init=gaussian"), data=ds, progress=False, out=tmp_path / "r")
