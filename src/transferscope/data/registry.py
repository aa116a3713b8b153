"""One registry of datasets: a name maps to a loader that returns the whole labelled image set.

A loader returns :class:`ImageData`: every image as one uint8 tensor (N, C, H, W), integer labels,
class names in label order and, where the dataset has them, class groups (e.g. superclasses).
Images are decoded once here; everything after works on tensors in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transferscope.errors import UserError


@dataclass(frozen=True)
class ImageData:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)
    class_names: tuple[str, ...]
    groups: dict[str, str] = field(default_factory=dict)  # class name -> group name
    name: str = ""
    #: whether a horizontal flip keeps an image in its class (not for digits or characters)
    flip_ok: bool = False

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"{self.name}: images must be a uint8 (N, C, H, W) tensor, got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"{self.name}: {self.y.shape[0]} labels for {self.x.shape[0]} images")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


Loader = Callable[[Path | None, bool], ImageData]
_DATASETS: dict[str, tuple[Loader, str]] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        _DATASETS[name] = (fn, description)
        return fn

    return deco


def list_datasets() -> dict[str, str]:
    """Registered dataset names with one-line descriptions."""
    return {k: d for k, (_, d) in sorted(_DATASETS.items())}


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> ImageData:
    if name not in _DATASETS:
        raise UserError(f"data.dataset: unknown dataset {name!r}; available: {', '.join(sorted(_DATASETS))}")
    loader, _ = _DATASETS[name]
    return loader(Path(root) if root is not None else None, download)
