"""The first op of block 1 of every architecture that needs it: grey to RGB, and upsampling small
images to the size the network needs. Inside block 1, so a frozen prefix, its cached features and
the full network all see the same input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def upsampled_size(height: int, width: int, min_size: int) -> tuple[int, int] | None:
    """The (H, W) an image is upsampled to so that its shorter side is ``min_size``, keeping its
    aspect ratio; None when the shorter side is already at least ``min_size``."""
    short = min(height, width)
    if short >= min_size:
        return None
    scale = min_size / short
    return max(min_size, math.ceil(height * scale - 1e-9)), max(min_size, math.ceil(width * scale - 1e-9))


def check_min_size(min_size: object, floor: int, arch: str) -> int:
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < floor:
        raise ValueError(f"min_size must be an integer >= {floor} (the smallest input {arch} accepts), "
                         f"not {min_size!r}")
    return min_size


def check_dropout(dropout: object, option: str = "dropout") -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{option} must be a number in [0, 1), not {dropout!r}")
    return float(dropout)


class InputAdapter(nn.Module):
    """Resizes (bilinear) to a fixed ``size`` when one is given, then repeats a grey channel to the
    ``channels`` the stem expects. No parameters; an identity when there is nothing to do."""

    def __init__(self, in_channels: int, channels: int, size: tuple[int, int] | None):
        super().__init__()
        if in_channels != channels and in_channels != 1:
            raise ValueError(f"image_shape has {in_channels} channels; this network takes 1 (repeated) or {channels}")
        self.in_channels, self.channels = in_channels, channels
        self.size = tuple(size) if size is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, channels={self.channels}, size={self.size}"
