"""CaffeNet, the paper's network: the AlexNet variant of Caffe's reference model
(``models/bvlc_reference_caffenet/train_val.prototxt``), eight layers, cut points 1..7."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from transferscope.models.cutnet import CutNet
from transferscope.models.inputs import InputAdapter, check_dropout, check_min_size, upsampled_size
from transferscope.models.registry import register_model

#: (out channels, kernel, stride, padding, groups, max-pool after, LRN after) of conv1..conv5
_CONVS = ((96, 11, 4, 0, 1, True, True), (256, 5, 1, 2, 2, True, True), (384, 3, 1, 1, 1, False, False),
          (384, 3, 1, 1, 2, False, False), (256, 3, 1, 1, 2, True, False))
_FC = 4096
#: Caffe's fillers: (weight std, bias) of conv1..conv5, fc6, fc7, fc8
_CAFFE_INIT = ((0.01, 0.0), (0.01, 1.0), (0.01, 0.0), (0.01, 1.0), (0.01, 1.0), (0.005, 1.0), (0.005, 1.0),
               (0.01, 0.0))
#: the shortest image side at which every pooling window lies whole inside its map, pool5's map
#: then being 1x1 (Caffe and PyTorch would also pool a 2x2 map with a clipped window, from 39 px)
MIN_SIDE = 55


def pool5_side(side: int) -> int:
    """The side of pool5's map for an input side (0 when a pooling window would not fit whole)."""
    for _, k, s, p, _, pool, _ in _CONVS:
        side = (side + 2 * p - k) // s + 1
        if side < 1 or (pool and side < 3):
            return 0
        if pool:
            side = -(-(side - 3) // 2) + 1  # Caffe's pooling rounds up
    return side


def _channels(c: int, width: float) -> int:
    return max(2, 2 * round(c * width / 2))  # even, for the two groups


@register_model("caffenet", "the paper's network: CaffeNet, Caffe's AlexNet variant: conv1-5, fc6-8")
def caffenet(num_classes: int, image_shape: tuple[int, int, int], width: float = 1.0, dropout: float = 0.5,
             min_size: int = 64, init: str = "caffe") -> CutNet:
    """CaffeNet for images of any size; at 227x227 it is exactly Caffe's reference model.

    Layers: conv1 96 11x11/4, ReLU, max-pool 3/2, LRN(5, 1e-4, 0.75); conv2 256 5x5 pad 2 in 2
    groups, ReLU, max-pool, LRN; conv3 384 3x3; conv4 384 3x3 (2 groups); conv5 256 3x3 (2 groups),
    ReLU, max-pool; fc6 and fc7 4096 with ReLU and dropout; fc8 the classifier. Pooling rounds up,
    as Caffe's does; at 227 px the maps are 55, 27, 27, 13, 13, 13, 6, and fc6 sees 256*6*6 = 9216.

    Smaller images: an image whose shorter side is under ``min_size`` (default 64, at least
    55, the smallest side at which every pooling window fits whole, pool5 being 1x1) is first upsampled, bilinearly and keeping
    its aspect ratio, so its shorter side is ``min_size``; this is the first op of layer 1. fc6
    takes pool5's whole map at the resulting size (1x1 at 64 px, 6x6 at 227 px): no adaptive
    pooling, so nothing is replicated.

    ``width`` scales every layer's width (conv channels rounded to even numbers, at least 2; the
    fc layers to at least 1 unit): 1/8 gives a network small enough for a CPU. ``dropout`` is
    the rate after fc6 and fc7. ``init``: "caffe" (Caffe's fillers: Gaussian weights, std 0.01, and
    0.005 for fc6 and fc7; biases 0 for conv1, conv3 and fc8, 1 for conv2, conv4, conv5, fc6 and
    fc7) or "kaiming" (He-normal weights for the hidden layers, std 0.01 for fc8, zero biases),
    which trains more readily when the network is made narrow.
    """
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width must be a positive number, not {width!r}")
    dropout = check_dropout(dropout)
    min_size = check_min_size(min_size, MIN_SIDE, "caffenet")
    if init not in ("caffe", "kaiming"):
        raise ValueError(f"init must be 'caffe' or 'kaiming', not {init!r}")
    channels, h, w = image_shape
    size = upsampled_size(h, w, min_size)
    h, w = size or (h, w)
    blocks: list[nn.Module] = []
    names: list[str] = []
    weights: list[nn.Module] = []
    for i, (c, k, s, p, g, pool, lrn) in enumerate(_CONVS):
        out = _channels(c, width)
        conv = nn.Conv2d(channels, out, k, stride=s, padding=p, groups=g)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if i == 0:
            layers["input"] = InputAdapter(channels, channels, size)
        layers[f"conv{i + 1}"] = conv
        layers[f"relu{i + 1}"] = nn.ReLU(inplace=True)
        if pool:
            layers[f"pool{i + 1}"] = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        if lrn:
            layers[f"norm{i + 1}"] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        blocks.append(nn.Sequential(layers))
        names.append(f"conv{i + 1}")
        weights.append(conv)
        channels = out
    features = channels * pool5_side(h) * pool5_side(w)
    hidden = max(1, round(_FC * width))
    for j in (6, 7):
        fc = nn.Linear(features, hidden)
        layers = OrderedDict([("flatten", nn.Flatten())] if j == 6 else [])
        layers.update([(f"fc{j}", fc), (f"relu{j}", nn.ReLU(inplace=True)), (f"drop{j}", nn.Dropout(dropout))])
        blocks.append(nn.Sequential(layers))
        names.append(f"fc{j}")
        weights.append(fc)
        features = hidden
    fc8 = nn.Linear(features, num_classes)
    blocks.append(nn.Sequential(OrderedDict(fc8=fc8)))
    names.append("fc8")
    weights.append(fc8)
    for layer, (std, bias) in zip(weights, _CAFFE_INIT):
        if init == "kaiming" and layer is not fc8:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        else:
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.constant_(layer.bias, bias if init == "caffe" else 0.0)
    return CutNet(blocks, names)
