"""UCI optical digits, bundled with scikit-learn: the default data, present on every machine."""

from __future__ import annotations

import torch

from transferscope.config import DataConfig
from transferscope.data.images import from_arrays
from transferscope.data.registry import ImageData, register_dataset


@register_dataset("digits", "UCI optical digits from scikit-learn: 10 classes, 1,797 8x8 grey images (bundled)")
def load_digits(cfg: DataConfig) -> ImageData:
    from sklearn.datasets import load_digits as sk_load

    bunch = sk_load()
    # pixel values are counts 0..16 of an 8x8 block: scale to the uint8 range
    x = torch.from_numpy(bunch.images).mul_(255.0 / 16.0).round_().clamp_(0, 255).to(torch.uint8)
    return from_arrays(cfg, x.unsqueeze(1).contiguous(), torch.from_numpy(bunch.target).long(),
                       tuple(str(c) for c in bunch.target_names), name="digits")  # data.image_size resizes them
