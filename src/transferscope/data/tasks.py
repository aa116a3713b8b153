"""One task's images, partitioned per class into train, validation and test parts.

Labels are remapped to 0..k-1 in the order of the task's (sorted) class indices. The partition is
seeded per (study seed, replicate, task), so every run that targets a task in a replicate (its base
network and all transfers into it) trains and is tested on exactly the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from transferscope.data.registry import ImageData
from transferscope.errors import UserError


@dataclass(frozen=True)
class Part:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,), task labels 0..k-1

    def __len__(self) -> int:
        return self.y.shape[0]


@dataclass(frozen=True)
class Task:
    name: str  # "A" or "B"
    class_names: tuple[str, ...]
    train: Part
    val: Part
    test: Part
    mean: tuple[float, ...]  # per-channel mean / std of the training images, in [0, 1] units
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_task(data: ImageData, name: str, classes: tuple[int, ...], val_fraction: float,
              test_fraction: float, seed: int) -> Task:
    rng = np.random.default_rng(seed)
    y_all = data.y.numpy()
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label, c in enumerate(classes):
        idx = np.flatnonzero(y_all == c)
        n_test, n_val = round(len(idx) * test_fraction), round(len(idx) * val_fraction)
        if len(idx) - n_test - n_val < 1 or n_test < 1 or n_val < 1:
            raise UserError(f"data: class {data.class_names[c]!r} has {len(idx)} images, too few for "
                            f"val_fraction={val_fraction} and test_fraction={test_fraction}; each part needs one")
        idx = rng.permutation(idx)
        for part, sel in (("test", idx[:n_test]), ("val", idx[n_test : n_test + n_val]), ("train", idx[n_test + n_val :])):
            parts[part].append(sel)
            labels[part].append(np.full(len(sel), label))

    def part(p: str) -> Part:
        sel = torch.from_numpy(np.concatenate(parts[p]))
        return Part(data.x[sel].contiguous(), torch.from_numpy(np.concatenate(labels[p])).long())

    train = part("train")
    pixels = train.x.float().div_(255).transpose(0, 1).reshape(train.x.shape[1], -1)
    return Task(name, tuple(data.class_names[c] for c in classes), train, part("val"), part("test"),
                mean=tuple(pixels.mean(1).tolist()), std=tuple(pixels.std(1).clamp_min(1e-3).tolist()))
