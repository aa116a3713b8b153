"""What an architecture's layers are, without building its weights."""

from __future__ import annotations

from typing import Any

import torch

from transferscope.models.registry import create_model


def layer_names(name: str, image_shape: tuple[int, int, int] = (3, 32, 32),
                options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The names of layers 1..L of a registered architecture (its cut points are 1..L-1). Built on
    PyTorch's meta device, so it allocates and initialises nothing: fast even for ViT-B/16."""
    with torch.device("meta"):
        return create_model(name, 2, image_shape, options).block_names
