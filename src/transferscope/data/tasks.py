"""One task's images, partitioned per class into train, validation and test parts.

Labels are remapped to 0..k-1 in the order of the task's (sorted) class indices. The partition is
seeded per (study seed, replicate, task), so every run that targets a task in a replicate (its base
network and all transfers into it) trains and is tested on exactly the same images. Where the
dataset has an official test split, its test images are the test part and validation images are
carved from its training images.

A part yields uint8 batches: from memory (:class:`Part`) or decoded from files by DataLoader
workers (:class:`StreamPart`, for datasets larger than ``data.memory_limit_gb``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from transferscope.data.registry import ImageData, ImageReader
from transferscope.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Part:
    """Images held in memory as one uint8 tensor."""

    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,), task labels 0..k-1

    def __len__(self) -> int:
        return self.y.shape[0]

    def batches(self, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False) -> Iterator[Batch]:
        n = len(self)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
            yield self.x[idx], self.y[idx]


class _Images(Dataset):
    def __init__(self, reader: ImageReader, index: torch.Tensor, y: torch.Tensor):
        self.reader, self.index, self.y = reader, index, y

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Batch:
        return self.reader.read(int(self.index[i])), self.y[i]


@dataclass(frozen=True)
class StreamPart:
    """Images decoded from their files on demand, by ``workers`` DataLoader processes."""

    reader: ImageReader
    index: torch.Tensor  # dataset indices of this part's images
    y: torch.Tensor
    workers: int = 2

    def __len__(self) -> int:
        return self.y.shape[0]

    def batches(self, batch_size: int, order: torch.Tensor | None = None, drop_last: bool = False) -> Iterator[Batch]:
        if order is None:
            order = torch.arange(len(self))
        images = _Images(self.reader, self.index[order], self.y[order])
        loader = DataLoader(images, batch_size=batch_size, num_workers=self.workers, drop_last=drop_last and len(self) >= batch_size,
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        yield from loader

    def sample(self, count: int, seed: int) -> torch.Tensor:
        pick = np.random.default_rng(seed).permutation(len(self))[:count]
        return torch.stack([self.reader.read(int(self.index[i])) for i in pick])


AnyPart = Part | StreamPart


@dataclass(frozen=True)
class Task:
    name: str  # "A" or "B"
    class_names: tuple[str, ...]
    train: AnyPart
    val: AnyPart
    test: AnyPart
    mean: tuple[float, ...]  # per-channel mean / std of the training images, in [0, 1] units
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _per_class(idx: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.permutation(idx)
    k = round(len(idx) * fraction)
    return idx[:k], idx[k:]


def reduced(y: torch.Tensor, num_classes: int, size: float | int) -> torch.Tensor:
    """The positions, in order, of the training images (labels ``y``) that a reduced ``size``
    keeps: a fraction of each class (at least one image) or a number of images per class."""
    keep = []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()  # the partition already shuffled each class
        count = max(1, round(len(idx) * size)) if isinstance(size, float) else min(int(size), len(idx))
        keep.append(idx[:count])
    return torch.cat(keep).sort().values


def reduce_train(task: Task, size: float | int) -> Task:
    """The same task with fewer training images per class (see :func:`reduced`). Smaller sizes
    are subsets of larger ones, and the validation and test parts are unchanged."""
    y = task.train.y
    sel = reduced(y, task.num_classes, size)
    train = task.train
    part = Part(train.x[sel], y[sel]) if isinstance(train, Part) else StreamPart(train.reader, train.index[sel], y[sel], train.workers)
    return Task(task.name, task.class_names, part, task.val, task.test, task.mean, task.std)


def partition(data: ImageData, classes: tuple[int, ...], val_fraction: float, test_fraction: float, seed: int,
              train_per_class: int | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Part name -> the dataset indices of its images and their task labels. It reads labels
    only, so the driver can count a task's images without holding any."""
    rng = np.random.default_rng(seed)
    y_all = data.y.numpy()
    official = data.is_test.numpy() if data.is_test is not None else None
    chosen: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label, c in enumerate(classes):
        idx = np.flatnonzero(y_all == c)
        if official is not None:
            test, rest = idx[official[idx]], idx[~official[idx]]
        else:
            test, rest = _per_class(idx, test_fraction, rng)
        val, train = _per_class(rest, val_fraction / (1 - (0 if official is not None else test_fraction)), rng)
        if train_per_class is not None:
            train = train[:train_per_class]  # already in random order
        if min(len(test), len(val), len(train)) < 1:
            raise UserError(f"data: class {data.class_names[c]!r} has {len(idx)} images, too few for "
                            f"val_fraction={val_fraction} and test_fraction={test_fraction}; each part needs one")
        for part, sel in (("train", train), ("val", val), ("test", test)):
            chosen[part].append(sel)
            labels[part].append(np.full(len(sel), label))
    return {p: (torch.from_numpy(np.concatenate(chosen[p])), torch.from_numpy(np.concatenate(labels[p])).long())
            for p in chosen}


def make_task(data: ImageData, name: str, classes: tuple[int, ...], val_fraction: float,
              test_fraction: float, seed: int, workers: int = 2, train_per_class: int | None = None) -> Task:
    parts = partition(data, classes, val_fraction, test_fraction, seed, train_per_class)

    def part(p: str) -> AnyPart:
        sel, y = parts[p]
        if data.x is not None:
            return Part(data.x[sel].contiguous(), y)
        return StreamPart(data.reader, sel, y, workers)  # type: ignore[arg-type]

    train = part("train")
    pixels = train.x if isinstance(train, Part) else train.sample(2000, seed)
    pixels = pixels.float().div_(255).transpose(0, 1).reshape(pixels.shape[1], -1)
    return Task(name, tuple(data.class_names[c] for c in classes), train, part("val"), part("test"),
                mean=tuple(pixels.mean(1).tolist()), std=tuple(pixels.std(1).clamp_min(1e-3).tolist()))
