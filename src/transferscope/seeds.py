"""Separate, named random streams derived from the study's declared seed.

Every random choice draws from its own stream, named by what it is for: the class split
(``split``, from ``split.seed`` and the replicate), the per-class partition of a task
(``partition``), and per run (from the run's seed key) weight initialisation (``init``), the
order of the training data (``order``), augmentation (``augment``) and dropout (``dropout``).
A stream's seed is a hash of its name, so it is the same on any machine and independent of the
order in which runs execute; and one stream's draws do not shift another's (turning augmentation
off leaves the data order as it was).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: the scheme of streams above, recorded in a study's study.json: a study whose runs drew their
#: numbers another way cannot be resumed (its new runs would not be comparable with the old)
STREAMS = "split(split.seed, replicate) partition init order augment dropout"

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text, e.g. ``derive_seed("init", 0, "r1-AnB-n3")``."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@dataclass(frozen=True)
class TrainingSeeds:
    """The seeds of a run's three training streams."""

    order: int  # the order of the training images, every epoch
    augment: int  # random crops and flips
    dropout: int  # dropout masks (modules that draw from torch's global stream)

    @classmethod
    def derive(cls, *parts: object) -> TrainingSeeds:
        """The three streams named by ``parts`` (the study's seed and the run's seed key)."""
        return cls(derive_seed("order", *parts), derive_seed("augment", *parts), derive_seed("dropout", *parts))


@dataclass(frozen=True)
class Seeds:
    """The seeds of the named streams one run drew from (kept in its record). Records of versions
    before the streams were separated have ``data`` (order, augmentation and dropout) instead of
    ``order``, ``augment`` and ``dropout``, and no ``split``."""

    study: int  # the study's declared seed, the root of every run's streams
    init: int  # weight initialisation
    partition: int  # the per-class train/val/test partition of the run's target task
    order: int | None = None
    augment: int | None = None
    dropout: int | None = None
    split: int | None = None  # the replicate's random class split (None: a split read from a file or groups)
    data: int | None = None  # earlier versions' one stream for order, augmentation and dropout

    @property
    def training(self) -> TrainingSeeds:
        if self.order is None or self.augment is None or self.dropout is None:
            raise ValueError("a record of an earlier version: its order, augmentation and dropout shared one stream")
        return TrainingSeeds(self.order, self.augment, self.dropout)
