"""Separate, named random streams derived from the study's declared seed.

Every random choice (class split, per-class partition, weight initialisation, data order and
augmentation) draws from its own stream, named by what it is for. A stream's seed is a hash of its
name, so it is the same on any machine and independent of the order in which runs execute.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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
class Seeds:
    """The seeds of the named streams one run drew from (kept in its record)."""

    study: int  # the study's declared seed, the root of every stream below
    init: int  # weight initialisation
    data: int  # the data order and augmentation
    partition: int  # the per-class train/val/test partition of the run's target task
    split: int | None = None  # the replicate's random class split (None: a split read from a file or groups)
