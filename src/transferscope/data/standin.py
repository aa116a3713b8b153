"""Synthetic stand-ins: a dataset's shape without its images, for planning where the data is not
on this machine (``transferscope run --dry-run`` of the paper's ImageNet study on a laptop).

A stand-in has the dataset's classes (names, so that semantic splits such as natural vs man-made
work), its number of images per class and part, and its image shape at ``data.image_size``; its
images are seeded random pixels, decoded on demand. It plans and calibrates exactly like the real
dataset (the same splits, budgets, networks and step times); it never trains a study: nothing but
the dry run asks for one.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from transferscope.config import DataConfig
from transferscope.data.registry import ImageData
from transferscope.data.semantic import imagenet_wnids

#: ILSVRC-2012: 1,281,167 training images (732 to 1,300 per class) and 50,000 validation images
#: (50 per class), the validation images being the study's official test part
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50


class RandomReader:
    """Seeded random uint8 images of one shape: image i is the same every time it is read."""

    def __init__(self, count: int, shape: tuple[int, int, int]):
        self.count, self.shape = count, shape

    def __len__(self) -> int:
        return self.count

    def read(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(index)
        return torch.randint(0, 256, self.shape, dtype=torch.uint8, generator=g)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"random stand-in {self.count} {self.shape}".encode()).hexdigest()


def imagenet_standin(cfg: DataConfig) -> ImageData:
    """ILSVRC-2012's shape: its 1,000 WordNet ids, its training images spread as evenly as their
    total allows over the classes (the real counts vary from 732 to 1,300), 50 validation images
    per class, at ``data.image_size`` (224 where unset)."""
    wnids = imagenet_wnids()
    side = cfg.image_size or 224
    per_class = np.full(len(wnids), IMAGENET_TRAIN // len(wnids))
    per_class[: IMAGENET_TRAIN % len(wnids)] += 1
    train = np.repeat(np.arange(len(wnids)), per_class)
    val = np.repeat(np.arange(len(wnids)), IMAGENET_VAL)
    y = torch.from_numpy(np.concatenate([train, val]))
    is_test = torch.cat([torch.zeros(len(train), dtype=torch.bool), torch.ones(len(val), dtype=torch.bool)])
    return ImageData(y=y, class_names=wnids, reader=RandomReader(len(y), (3, side, side)), name="imagenet (stand-in)",
                     flip_ok=True, is_test=is_test)


#: dataset name -> its stand-in
STANDINS = {"imagenet": imagenet_standin}


def standin(cfg: DataConfig) -> ImageData | None:
    """The stand-in of ``cfg.dataset``, or None where there is none."""
    make = STANDINS.get(cfg.dataset)
    return None if make is None else make(cfg)
