"""Datasets (registry + loaders), class splits into tasks A and B, per-class partitions."""

# importing a loader module registers its datasets
from transferscope.data import digits, imagefolder, npz, torchvision_sets  # noqa: F401
from transferscope.data.registry import ImageData, list_datasets, load_dataset, register_dataset

__all__ = ["ImageData", "list_datasets", "load_dataset", "register_dataset"]
