"""torchvision's networks, drawn at random (never with ``weights=``: nothing is downloaded) and
regrouped, module by module and without rewriting any layer, into blocks at their natural
boundaries. Each is registered under its torchvision name.

Block 1 starts with an :class:`~transferscope.models.inputs.InputAdapter`: a grey image is repeated
to the three channels the stem expects, and an image smaller than the network needs is upsampled.
:func:`from_torchvision` regroups a torchvision model you built yourself (with weights you loaded,
say) the same way. Each network knows torchvision's name of each of its tensors
(:attr:`~transferscope.models.cutnet.CutNet.foreign_names`), so torchvision's checkpoints load into it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from transferscope.models.cutnet import CutNet
from transferscope.models.inputs import InputAdapter, check_dropout, check_min_size, upsampled_size
from transferscope.models.registry import LazyModule, register_model

if TYPE_CHECKING:
    from torchvision import models as tvm
else:
    tvm = LazyModule("torchvision.models")  # imported when a torchvision network is first built


#: the input torchvision's ImageNet weights expect (the crop they are evaluated at)
IMAGENET_INPUT = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                  "interpolation": "bilinear"}


def _seq(*named: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(named))


def _split(modules: Sequence[tuple[str, nn.Module]], starts_block) -> list[list[tuple[str, nn.Module]]]:
    """Consecutive (name, module) pairs grouped so that a new group begins at each module for which
    ``starts_block`` holds (except the first)."""
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, m in modules:
        if not groups or starts_block(m):
            groups.append([])
        groups[-1].append((name, m))
    return groups


def _resnet_blocks(m: tvm.ResNet, adapter: InputAdapter) -> CutNet:
    stem = _seq(("input", adapter), ("conv1", m.conv1), ("bn1", m.bn1), ("relu", m.relu), ("maxpool", m.maxpool))
    head = _seq(("avgpool", m.avgpool), ("flatten", nn.Flatten()), ("fc", m.fc))
    return CutNet([stem, m.layer1, m.layer2, m.layer3, m.layer4, head],
                  ["stem", "layer1", "layer2", "layer3", "layer4", "fc"])


def _fc_blocks(m: tvm.AlexNet | tvm.VGG, first: int) -> tuple[list[nn.Module], list[str]]:
    """fc6, fc7 and fc8 of AlexNet and VGG: their ``classifier`` in threes (AlexNet: dropout,
    Linear, ReLU, so a dropout stays with the Linear it feeds; VGG: Linear, ReLU, dropout), with the
    avgpool and flatten folded into fc6."""
    children = list(m.classifier.named_children())
    groups = [children[0:3], children[3:6], children[6:]]
    if [sum(isinstance(x, nn.Linear) for _, x in g) for g in groups] != [1, 1, 1]:
        raise TypeError(f"unexpected classifier in {type(m).__name__}: {m.classifier}")
    groups[0][:0] = [("avgpool", m.avgpool), ("flatten", nn.Flatten())]
    return [_seq(*g) for g in groups], [f"fc{first + i}" for i in range(len(groups))]


def _conv_fc_blocks(m: tvm.AlexNet | tvm.VGG, adapter: InputAdapter) -> CutNet:
    features = list(m.features.named_children())
    if isinstance(m, tvm.AlexNet):  # a block per conv, with its ReLU and the max-pool after it
        stages = _split(features, lambda x: isinstance(x, nn.Conv2d))
    else:  # VGG: a block per stage, up to and including its max-pool
        stages, rest = [], features
        while rest:
            end = next(i for i, (_, x) in enumerate(rest) if isinstance(x, nn.MaxPool2d)) + 1
            stages.append(rest[:end])
            rest = rest[end:]
    stages[0][:0] = [("input", adapter)]
    fc, fc_names = _fc_blocks(m, len(stages) + 1)
    return CutNet([_seq(*s) for s in stages] + fc, [f"conv{i + 1}" for i in range(len(stages))] + fc_names)


def _mobilenet_v3_blocks(m: tvm.MobileNetV3, adapter: InputAdapter) -> CutNet:
    features = list(m.features.children())
    stem = _seq(("input", adapter), ("conv", features[0]))
    hidden = _seq(("avgpool", m.avgpool), ("flatten", nn.Flatten()),
                  *list(m.classifier.named_children())[:-1])
    classifier = _seq(*list(m.classifier.named_children())[-1:])
    blocks = [stem, *features[1:-1], features[-1], hidden, classifier]
    names = ["stem", *(f"block{i}" for i in range(1, len(features) - 1)), "lastconv", "fc", "classifier"]
    return CutNet(blocks, names)


class PatchEmbedding(nn.Module):
    """A ViT's layer 1: its patch projection, class token, position embedding and embedding
    dropout (torchvision's own modules and parameters, held here)."""

    def __init__(self, vit: tvm.VisionTransformer, adapter: InputAdapter):
        super().__init__()
        self.input = adapter
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(self.input(x)).flatten(2).transpose(1, 2)  # (B, patches, hidden)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ClassTokenHead(nn.Module):
    """A ViT's classifier: the encoder's final LayerNorm, the class token, the head."""

    def __init__(self, vit: tvm.VisionTransformer):
        super().__init__()
        self.ln = vit.encoder.ln
        self.heads = vit.heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.ln(x)[:, 0])


def _vit_blocks(m: tvm.VisionTransformer, adapter: InputAdapter) -> CutNet:
    layers = list(m.encoder.layers.children())
    return CutNet([PatchEmbedding(m, adapter), *layers, ClassTokenHead(m)],
                  ["embed", *(f"block{i + 1}" for i in range(len(layers))), "head"])


def from_torchvision(model: nn.Module, image_shape: tuple[int, int, int], min_size: int = 32) -> CutNet:
    """A torchvision ResNet, VGG, AlexNet, MobileNetV3 or VisionTransformer regrouped into blocks
    (sharing its modules), for images of ``image_shape``: a grey image is repeated to three
    channels; an image whose shorter side is under ``min_size`` is upsampled to it (a ViT's input
    is always resized to its ``image_size``). The network's :attr:`~CutNet.foreign_names` are
    torchvision's keys, its :attr:`~CutNet.input_config` torchvision's ImageNet preprocessing."""
    net = _blocks(model, image_shape, min_size)
    net.adopt_foreign_names(model)
    net.input_config = {**IMAGENET_INPUT,
                        "size_option": "image_size" if isinstance(model, tvm.VisionTransformer) else "min_size"}
    return net


def _blocks(model: nn.Module, image_shape: tuple[int, int, int], min_size: int) -> CutNet:
    c, h, w = image_shape
    if isinstance(model, tvm.VisionTransformer):
        return _vit_blocks(model, InputAdapter(c, 3, (model.image_size, model.image_size)))
    adapter = InputAdapter(c, 3, upsampled_size(h, w, min_size))
    if isinstance(model, tvm.ResNet):
        return _resnet_blocks(model, adapter)
    if isinstance(model, (tvm.AlexNet, tvm.VGG)):
        return _conv_fc_blocks(model, adapter)
    if isinstance(model, tvm.MobileNetV3):
        return _mobilenet_v3_blocks(model, adapter)
    raise TypeError(f"cannot cut a {type(model).__name__} into blocks")


@register_model("resnet18", "torchvision ResNet-18, random init: stem, layer1-4, fc")
def resnet18(num_classes: int, image_shape: tuple[int, int, int], min_size: int = 32) -> CutNet:
    """torchvision's ResNet-18, random init. Layers: stem (conv1, bn1, ReLU, max-pool), layer1..layer4
    (two basic blocks each), fc (average pool, Linear). Images whose shorter side is under
    ``min_size`` (default 32; any value >= 1) are upsampled to it, keeping their aspect ratio."""
    min_size = check_min_size(min_size, 1, "resnet18")
    return from_torchvision(tvm.resnet18(num_classes=num_classes), image_shape, min_size)


@register_model("resnet50", "torchvision ResNet-50, random init: stem, layer1-4, fc")
def resnet50(num_classes: int, image_shape: tuple[int, int, int], min_size: int = 32) -> CutNet:
    """torchvision's ResNet-50, random init. Layers: stem (conv1, bn1, ReLU, max-pool), layer1..layer4
    (3, 4, 6, 3 bottleneck blocks), fc (average pool, Linear). Images whose shorter side is under
    ``min_size`` (default 32; any value >= 1) are upsampled to it, keeping their aspect ratio."""
    min_size = check_min_size(min_size, 1, "resnet50")
    return from_torchvision(tvm.resnet50(num_classes=num_classes), image_shape, min_size)


@register_model("vgg11_bn", "torchvision VGG-11 with BatchNorm, random init: 5 conv stages, fc6-8")
def vgg11_bn(num_classes: int, image_shape: tuple[int, int, int], min_size: int = 32,
             dropout: float = 0.5) -> CutNet:
    """torchvision's VGG-11 with BatchNorm, random init. Layers: conv1..conv5, each a conv stage
    (conv, BN, ReLU; two of them in stages 3-5) up to and including its max-pool; fc6 (torchvision's
    7x7 adaptive average pool, Linear 25088-4096, ReLU, dropout), fc7 (Linear, ReLU, dropout), fc8
    (the classifier). Images whose shorter side is under ``min_size`` (default 32, the least: five
    halvings) are upsampled to it, keeping their aspect ratio. ``dropout``: after fc6 and fc7."""
    min_size = check_min_size(min_size, 32, "vgg11_bn")
    model = tvm.vgg11_bn(num_classes=num_classes, dropout=check_dropout(dropout))
    return from_torchvision(model, image_shape, min_size)


@register_model("alexnet", "torchvision AlexNet, random init: conv1-5, fc6-8")
def alexnet(num_classes: int, image_shape: tuple[int, int, int], min_size: int = 64,
            dropout: float = 0.5) -> CutNet:
    """torchvision's AlexNet ("one weird trick" variant: 64-192-384-256-256 channels, no LRN, no
    groups), random init. Layers: conv1..conv5, each with its ReLU and the max-pool after it;
    fc6 (torchvision's 6x6 adaptive average pool, dropout, Linear 9216-4096, ReLU), fc7 (dropout,
    Linear, ReLU), fc8 (the classifier). Images whose shorter side is under ``min_size``
    (default 64; at least 63, which leaves pool5 a 1x1 map) are upsampled to it, keeping their
    aspect ratio. ``dropout``: before fc6 and fc7. For the paper's own network see ``caffenet``."""
    min_size = check_min_size(min_size, 63, "alexnet")
    model = tvm.alexnet(num_classes=num_classes, dropout=check_dropout(dropout))
    return from_torchvision(model, image_shape, min_size)


@register_model("mobilenet_v3_small", "torchvision MobileNetV3-small, random init: stem, 11 blocks, lastconv, fc, "
                                      "classifier")
def mobilenet_v3_small(num_classes: int, image_shape: tuple[int, int, int], min_size: int = 32,
                       width_mult: float = 1.0, dropout: float = 0.2) -> CutNet:
    """torchvision's MobileNetV3-small, random init. Layers: stem (3x3 conv, BN, hardswish),
    block1..block11 (the inverted-residual blocks), lastconv (1x1 conv, BN, hardswish), fc
    (average pool, Linear, hardswish, dropout), classifier (Linear). Images whose shorter side is
    under ``min_size`` (default 32; any value >= 1) are upsampled to it, keeping their aspect
    ratio. ``width_mult`` scales the channels (torchvision's option); ``dropout``: after fc."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f"width_mult must be a positive number, not {width_mult!r}")
    min_size = check_min_size(min_size, 1, "mobilenet_v3_small")
    model = tvm.mobilenet_v3_small(num_classes=num_classes, width_mult=float(width_mult),
                                   dropout=check_dropout(dropout))
    return from_torchvision(model, image_shape, min_size)


@register_model("vit_b_16", "torchvision ViT-B/16, random init: embed, 12 encoder blocks, head")
def vit_b_16(num_classes: int, image_shape: tuple[int, int, int], image_size: int | None = None,
             dropout: float = 0.0) -> CutNet:
    """torchvision's ViT-B/16, random init (its head starts at zero, as torchvision draws it).
    Layers: embed (16x16 patch projection, class token, position embedding, dropout), block1..block12
    (the encoder blocks), head (final LayerNorm, class token, Linear). Every image is resized
    (bilinear) to ``image_size`` x ``image_size``, a multiple of 16; by default the longer side of
    ``image_shape`` rounded up to a multiple of 16, and at least 32 (4 patches). ``dropout``:
    torchvision's dropout rate (embedding, attention output and MLP)."""
    _, h, w = image_shape
    if image_size is None:
        image_size = max(32, 16 * math.ceil(max(h, w) / 16))
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16 or image_size % 16:
        raise ValueError(f"image_size must be a positive multiple of 16, not {image_size!r}")
    model = tvm.vit_b_16(num_classes=num_classes, image_size=image_size, dropout=check_dropout(dropout))
    return from_torchvision(model, image_shape)
