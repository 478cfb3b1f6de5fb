"""Data sets (built-in and read from disk), their splits, and batch augmentation."""

from .augment import augment
from .datasets import (
    DataSplits,
    check_data,
    held_out_classes,
    list_datasets,
    load_data,
    register_dataset,
    restrict_classes,
)

__all__ = [
    "DataSplits",
    "augment",
    "check_data",
    "held_out_classes",
    "list_datasets",
    "load_data",
    "register_dataset",
    "restrict_classes",
]
