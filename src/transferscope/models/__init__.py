"""Architectures: the CutNet container (the definition of layer n), the registry, the builders.

Registered: ``convnet`` (paper-style net for small images), ``caffenet`` (the paper's network),
and torchvision's ``resnet18``, ``resnet50``, ``vgg11_bn``, ``alexnet``, ``mobilenet_v3_small`` and
``vit_b_16``, drawn at random and cut at their natural blocks; and the family ``timm/<name>``
(:mod:`~transferscope.models.timm_nets`): any timm model, drawn at random and cut at its stages (a
ViT at its transformer blocks). ``transferscope models`` lists them with their options;
:func:`layer_names` gives an architecture's layers cheaply. A network regrouped from torchvision or
timm knows the library's name of each of its tensors (``CutNet.foreign_names``) and the input its
pretrained weights expect (``CutNet.input_config``).

Your own network
----------------
Register a builder that returns the network as an ordered list of blocks, one per layer as the
paper counts them (a weight layer or natural block together with the ReLU, pooling and
normalisation after it), the last block being the classifier::

    from torch import nn
    from transferscope.models import CutNet, register_model

    @register_model("mynet", "two conv layers and a classifier")
    def mynet(num_classes: int, image_shape: tuple[int, int, int], width: int = 16) -> CutNet:
        c, h, w = image_shape
        return CutNet([
            nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)),
            nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes)),
        ], ["conv1", "conv2", "fc3"])

Import the module that defines it before the study runs, then use ``model.arch = "mynet"`` and
``model.options = {width = 32}``. The rules: the builder's first two arguments are
``num_classes`` and ``image_shape`` (C, H, W), its options keyword arguments with defaults (an
unknown option is refused by name; raise ValueError for a bad value, and name the option);
weights are drawn inside the builder (``create_model`` seeds it); every block is an ``nn.Module``
whose state dict has the same keys and shapes whatever ``num_classes`` is, except the last;
and block i+1 takes what block i returns, so the blocks in turn are the whole network. A model you
built yourself from torchvision can be cut the same way with
:func:`~transferscope.models.torchvision_nets.from_torchvision`.
"""

from transferscope.models import caffenet, convnet, timm_nets, torchvision_nets  # noqa: F401  (register them)
from transferscope.models.cutnet import CutNet
from transferscope.models.layers import layer_names
from transferscope.models.registry import create_model, list_models, model_options, register_family, register_model

__all__ = ["CutNet", "create_model", "layer_names", "list_models", "model_options", "register_family",
           "register_model"]
