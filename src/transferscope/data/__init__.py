"""Datasets (registry + loaders), class splits into tasks A and B, per-class partitions."""

from transferscope.data import digits  # noqa: F401  (registers the bundled dataset)
from transferscope.data.registry import ImageData, list_datasets, load_dataset, register_dataset

__all__ = ["ImageData", "list_datasets", "load_dataset", "register_dataset"]
