"""A paper-style conv net for small images (8 to 64 pixels): conv layers, then fully connected
layers, then the classifier; each block one "layer" in the paper's sense."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from transferscope.models.cutnet import CutNet
from transferscope.models.inputs import check_dropout
from transferscope.models.registry import register_model


def _conv_block(cin: int, cout: int, pool: bool, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=norm != "batch")]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(cout))
    # max-pool before ReLU: the same function and gradient as ReLU then pool (ReLU is monotone),
    # with the ReLU on a quarter of the elements
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _fc_block(fin: int, fout: int, dropout: float, flatten: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    layers += [nn.Linear(fin, fout), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@register_model("convnet", "paper-style conv net for 8-64 px images: conv layers (BN, max-pool, ReLU) then fc layers")
def convnet(num_classes: int, image_shape: tuple[int, int, int], widths: Sequence[int] = (32, 64, 128),
            fc: Sequence[int] = (128, 64), norm: str = "batch", dropout: float = 0.0) -> CutNet:
    """``widths``: channels of each conv layer (each halves the image side while the shorter side
    is >= 2, so any image size works, grey or colour, square or not); ``fc``: widths of the hidden
    fully connected layers; together they give the depth, len(widths) + len(fc) + 1 layers.
    ``norm``: "batch" or "none"; ``dropout``: after each hidden fc layer."""
    if norm not in ("batch", "none"):
        raise ValueError(f"norm must be 'batch' or 'none', not {norm!r}")
    for option, values in (("widths", widths), ("fc", fc)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ValueError(f"{option} must be a list of positive integers, not {values!r}")
    if not widths:
        raise ValueError("widths must list at least one conv layer")
    check_dropout(dropout)
    channels, h, w = image_shape
    blocks: list[nn.Module] = []
    names: list[str] = []
    for i, width in enumerate(widths):
        pool = min(h, w) >= 2
        blocks.append(_conv_block(channels, width, pool, norm))
        names.append(f"conv{i + 1}")
        channels = width
        if pool:
            h, w = h // 2, w // 2
    features = channels * h * w
    for j, f in enumerate(fc):
        blocks.append(_fc_block(features, f, dropout, flatten=j == 0))
        names.append(f"fc{len(widths) + j + 1}")
        features = f
    head: list[nn.Module] = [nn.Flatten()] if not fc else []
    blocks.append(nn.Sequential(*head, nn.Linear(features, num_classes)))
    names.append(f"fc{len(blocks)}")
    return CutNet(blocks, names)
