"""Batched, on-device image transforms: uint8 batch in, normalised float batch out."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, H, W), per-channel standardised."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float().div_(255) - m) / s


def random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Pad by ``pad`` pixels (reflect) and crop back at a random offset per image: random
    translation of up to ``pad`` pixels, done for the whole batch with one gather."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=g).to(x.device)
    rows = (off[0].view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    xp = xp.gather(2, rows)
    cols = (off[1].view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return xp.gather(3, cols)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g).to(x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def augment(x: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
    """The training augmentation: random translation by 1/8 of the image side, and horizontal
    flips where the dataset allows them (never for digits or characters)."""
    pad = max(1, x.shape[-1] // 8)
    x = random_crop(x, pad, g)
    return random_flip(x, g) if flip else x
