"""One registry of datasets: a name maps to a loader that returns the whole labelled image set.

A loader takes the study's ``[data]`` configuration and returns :class:`ImageData`: either every
image as one uint8 tensor (N, C, H, W) in memory, or, for sets too large for memory, an
:class:`ImageReader` that decodes images from their files on demand (streamed through DataLoader
workers). Labels, class names in label order and, where the dataset has them, class groups
(e.g. superclasses, alphabets) come with it, and the dataset's own test images where it has an
official test split, and a fingerprint that is equal if and only if the decoded set is the same
(see :mod:`transferscope.data.fingerprint`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from transferscope.config import DataConfig
from transferscope.data.fingerprint import data_fingerprint, tensor_digest
from transferscope.errors import UserError


class ImageReader(Protocol):
    """Decodes image i of a file-backed dataset to a uint8 (C, H, W) tensor of ``shape``.

    A reader may also have ``fingerprint() -> str``, a digest of the images it reads (e.g. of its
    files' paths, sizes and modification times); an ImageData with a reader that has none needs
    its ``fingerprint`` given."""

    shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def read(self, index: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class ImageData:
    y: torch.Tensor  # int64 (N,)
    class_names: tuple[str, ...]
    x: torch.Tensor | None = None  # uint8 (N, C, H, W), or None when images stream from `reader`
    reader: ImageReader | None = None
    groups: dict[str, str] = field(default_factory=dict)  # class name -> group name
    name: str = ""
    #: whether a horizontal flip keeps an image in its class (not for digits or characters)
    flip_ok: bool = False
    #: bool (N,): the dataset's own test images, where it has an official test split
    is_test: torch.Tensor | None = None
    #: unreadable files that were skipped (with data.skip_corrupt = true)
    skipped: tuple[str, ...] = ()
    #: equal if and only if the decoded dataset is the same (24 hex digits; see
    #: :mod:`transferscope.data.fingerprint`). Loaders give it (from file statistics, or from the
    #: decoded cache); when empty it is computed here: from the pixels in memory, or from the
    #: reader's ``fingerprint()``, with the labels, test flags, class names and groups.
    #: ``dataclasses.replace`` copies it: pass ``fingerprint=""`` when replacing content.
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if (self.x is None) == (self.reader is None):
            raise ValueError(f"{self.name}: give either images in memory (x) or a reader, not both or neither")
        if self.x is not None and (self.x.dtype != torch.uint8 or self.x.ndim != 4):
            raise ValueError(f"{self.name}: images must be a uint8 (N, C, H, W) tensor, got {self.x.dtype} {tuple(self.x.shape)}")
        n = self.x.shape[0] if self.x is not None else len(self.reader)  # type: ignore[arg-type]
        if self.y.shape != (n,):
            raise ValueError(f"{self.name}: {self.y.shape[0]} labels for {n} images")
        if self.is_test is not None and self.is_test.shape != (n,):
            raise ValueError(f"{self.name}: is_test must have one entry per image")
        if not self.fingerprint:
            if self.x is not None:
                images = tensor_digest(self.x)
            elif callable(getattr(self.reader, "fingerprint", None)):
                images = self.reader.fingerprint()  # type: ignore[union-attr]
            else:
                raise ValueError(f"{self.name}: a reader without a fingerprint() method needs "
                                 "ImageData(fingerprint=...): a digest that changes whenever its images do")
            object.__setattr__(self, "fingerprint",
                               data_fingerprint(images, self.y, self.is_test, self.class_names, self.groups))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.x is not None:
            return tuple(self.x.shape[1:])  # type: ignore[return-value]
        return self.reader.shape  # type: ignore[union-attr]


Loader = Callable[..., ImageData]  # (cfg) or (cfg, decode=...)
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


def load_dataset(cfg: DataConfig | str, decode: bool = True) -> ImageData:
    """Load the dataset that ``cfg`` names (a bare name means its default options). With ``decode``
    false, a set of image files not decoded before is not decoded now: its images stream from their
    files (labels, classes and the image shape are all a plan needs; see ``--dry-run``). Loaders
    that read image files take ``decode``; the others load arrays, cheap either way."""
    if isinstance(cfg, str):
        cfg = DataConfig(dataset=cfg)
    if cfg.dataset not in _DATASETS:
        raise UserError(f"data.dataset: unknown dataset {cfg.dataset!r}; available: {', '.join(sorted(_DATASETS))}")
    loader, _ = _DATASETS[cfg.dataset]
    if not decode and "decode" in inspect.signature(loader).parameters:
        return loader(cfg, decode=False)
    return loader(cfg)
