"""timm's networks as one family: ``model.arch = "timm/<name>"`` for any name ``timm.list_models()``
gives (a pretrained tag such as ``resnet18.a1_in1k`` picks that tag's input configuration).

Each is drawn at random (never ``pretrained=True``: weights come from a checkpoint you load) and
regrouped, module by module and without rewriting any layer, into blocks at its natural stages:

* a convolutional network, at the modules its ``feature_info`` names (block 1: the stem up to its
  first feature map, then one block per stage), then a head block: whatever ``forward_features``
  applies after the last stage (a last 1x1 conv, a norm), then the model's own ``forward_head``
  (pooling, dropout, classifier). Exact for networks whose ``forward_features`` applies its
  children in turn, as timm's CNNs do (ResNet, ConvNeXt, EfficientNet, MobileNet, RegNet, ...);
* a ``VisionTransformer``: embed (patch embedding, the model's ``_pos_embed``, patch dropout,
  pre-norm), one block per transformer block, head (final norm, then ``forward_head``).

Block 1 starts with an :class:`~transferscope.models.inputs.InputAdapter`, as in the torchvision
family. Each network keeps timm's name of each of its tensors (``foreign_names``) and the model's
pretrained input configuration (``input_config``).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict

from typing import TYPE_CHECKING

import torch
from torch import nn

from transferscope.errors import UserError
from transferscope.models.cutnet import CutNet
from transferscope.models.inputs import InputAdapter, check_dropout, check_min_size, upsampled_size
from transferscope.models.registry import Builder, LazyModule, register_family

if TYPE_CHECKING:
    import timm
    from timm.models.vision_transformer import VisionTransformer
else:
    timm = LazyModule("timm")  # imported when a timm name is first looked up


def _is_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)

#: the first child of a timm model's classifier head, by timm's naming (everything from it on is
#: ``forward_head``'s; children between the last stage and it are ``forward_features``')
HEAD_STARTS = ("global_pool", "attn_pool", "fc_norm", "head_drop", "head", "fc", "classifier")


class _ModelCall(nn.Module):
    """A block that calls methods of the timm model it was cut from. It registers the model's
    modules and tensors it holds (so its state dict is its own); the model itself is held
    unregistered, sharing them (a deep copy of the network copies it consistently)."""

    def __init__(self, model: nn.Module, named: list[tuple[str, nn.Module]]):
        super().__init__()
        for name, module in named:
            self.add_module(name.replace(".", "_"), module)
        object.__setattr__(self, "model", model)


class ViTEmbed(_ModelCall):
    """A ViT's layer 1: patch embedding, class/register tokens and position embedding (the model's
    ``_pos_embed``), patch dropout, pre-norm."""

    def __init__(self, vit: VisionTransformer, adapter: InputAdapter, named: list[tuple[str, nn.Module]]):
        super().__init__(vit, [("input", adapter), *named])
        for name, p in vit.named_parameters(recurse=False):  # tokens and position embedding
            self.register_parameter(name, p)
        for name, b in vit.named_buffers(recurse=False):
            self.register_buffer(name, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model._pos_embed(self.patch_embed(self.input(x)))
        return self.norm_pre(self.patch_drop(x))


class TimmHead(_ModelCall):
    """The last block: the rest of ``forward_features`` (modules applied in turn), then the
    model's ``forward_head``."""

    def __init__(self, model: nn.Module, features: list[tuple[str, nn.Module]], head: list[tuple[str, nn.Module]]):
        super().__init__(model, features + head)
        self.features = [n.replace(".", "_") for n, _ in features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.features:
            x = getattr(self, name)(x)
        self.model.training = self.training  # forward_head's functional dropout reads the model's mode
        return self.model.forward_head(x)


def _stage_units(model: nn.Module, feature_modules: list[str]) -> list[tuple[str, nn.Module]]:
    """The model's children in order, a Sequential whose children ``feature_info`` names
    (``blocks.2``) replaced by its children."""
    units = []
    for name, child in model.named_children():
        inner = [f for f in feature_modules if f.startswith(name + ".")]
        if not inner:
            units.append((name, child))
        elif isinstance(child, nn.Sequential) and all(f.count(".") == 1 for f in inner):
            units += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            raise TypeError(f"its feature module {inner[0]!r} is not a stage of a Sequential")
    return units


def _cnn_blocks(model: nn.Module, adapter: InputAdapter) -> CutNet:
    if any(True for _ in model.parameters(recurse=False)):
        raise TypeError("it has tensors of its own outside its modules (an embedding the forward adds)")
    feature_modules = [f["module"] for f in model.feature_info]
    units = _stage_units(model, feature_modules)
    names = [n for n, _ in units]
    if any(f not in names for f in feature_modules):
        raise TypeError(f"its feature modules {feature_modules} are not among its children")
    blocks, block_names, start = [], [], 0
    for f in feature_modules:
        end = names.index(f) + 1
        named = units[start:end]
        if not blocks:
            named = [("input", adapter), *named]
        blocks.append(nn.Sequential(OrderedDict((n.replace(".", "_"), m) for n, m in named)))
        block_names.append(f.replace(".", "_"))
        start = end
    tail = units[start:]
    head_at = next((i for i, (n, _) in enumerate(tail) if n in HEAD_STARTS), None)
    if head_at is None:
        raise TypeError(f"none of its last children {[n for n, _ in tail]} is a classifier head")
    blocks.append(TimmHead(model, tail[:head_at], tail[head_at:]))
    return CutNet(blocks, [*block_names, "head"])


def _vit_blocks(vit: VisionTransformer, adapter: InputAdapter) -> CutNet:
    children = list(vit.named_children())
    at = [n for n, _ in children].index("blocks")
    layers = list(vit.blocks.children())
    tail = children[at + 1:]
    head_at = next(i for i, (n, _) in enumerate(tail) if n in HEAD_STARTS)
    return CutNet([ViTEmbed(vit, adapter, children[:at]), *layers, TimmHead(vit, tail[:head_at], tail[head_at:])],
                  ["embed", *(f"block{i + 1}" for i in range(len(layers))), "head"])


def from_timm(model: nn.Module, image_shape: tuple[int, int, int], min_size: int = 32) -> CutNet:
    """A timm model regrouped into blocks (sharing its modules), for images of ``image_shape``: a grey
    image is repeated to the model's channels; a ViT's input is resized to its ``img_size``, any
    other image whose shorter side is under ``min_size`` upsampled to it (aspect ratio kept)."""
    c, h, w = image_shape
    channels = model.pretrained_cfg.get("input_size", (3,))[0]
    if _is_vit(model):
        net = _vit_blocks(model, InputAdapter(c, channels, tuple(model.patch_embed.img_size)))
    elif getattr(model, "feature_info", None):
        net = _cnn_blocks(model, InputAdapter(c, channels, upsampled_size(h, w, min_size)))
    else:
        raise TypeError("it has no feature_info naming its stages")
    net.adopt_foreign_names(model)
    cfg = model.pretrained_cfg
    net.input_config = {"input_size": tuple(cfg["input_size"]), "mean": tuple(cfg["mean"]),
                        "std": tuple(cfg["std"]), "interpolation": cfg.get("interpolation", "bicubic"),
                        "size_option": "img_size" if _is_vit(model) else "min_size"}
    return net


def timm_model(name: str, num_classes: int, image_shape: tuple[int, int, int], drop_rate: float = 0.0,
               drop_path_rate: float = 0.0, img_size: int | None = None, min_size: int = 32) -> CutNet:
    """timm's ``name``, random init, cut at its stages (see the module). ``drop_rate``: dropout
    before the classifier; ``drop_path_rate``: stochastic depth; ``img_size``: a ViT's input side
    (default: its pretrained size; smaller is faster); ``min_size``: a CNN's least input side."""
    kwargs = {}
    if check_dropout(drop_rate, "drop_rate"):
        kwargs["drop_rate"] = drop_rate
    if check_dropout(drop_path_rate, "drop_path_rate"):
        kwargs["drop_path_rate"] = drop_path_rate
    if img_size is not None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be a positive integer, not {img_size!r}")
        kwargs["img_size"] = img_size
    min_size = check_min_size(min_size, 1, f"timm/{name}")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return from_timm(model, image_shape, min_size)
    except TypeError as e:
        raise UserError(f"model.arch: timm/{name} cannot be cut into blocks: {e}") from None


def timm_builder(name: str) -> Builder:
    """The builder of ``timm/<name>``; UserError for a name timm does not know."""
    if not timm.is_model(name):
        pattern = re.sub(r"[^a-z].*", "", name.lower()) + "*"
        raise UserError(f"model.arch: unknown timm model {name!r}; timm.list_models({pattern!r}) lists "
                        f"the names like it, timm.list_models('*') all")
    return functools.partial(timm_model, name)


register_family("timm/", timm_builder, "any timm model, random init, cut at its stages (feature_info) or, for a "
                "ViT, at its transformer blocks; options: drop_rate, drop_path_rate, img_size (ViT), min_size")
