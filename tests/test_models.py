"""Every registered architecture, built tiny: its layers, its cut points, surgery at every cut, one
training step, its options. torchvision's networks are checked against torchvision's own forward."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from transferscope.errors import UserError
from transferscope.models import CutNet, create_model, layer_names, list_models, model_options, register_model, registry
from transferscope.models.caffenet import MIN_SIDE, pool5_side
from transferscope.models.torchvision_nets import from_torchvision
from transferscope.surgery import freeze, trainable_parameters, transplant

ARCHS = sorted(list_models())
#: the paper's layer counts, and torchvision's natural blocks
EXPECTED_LAYERS = {"convnet": 6, "caffenet": 8, "resnet18": 6, "resnet50": 6, "vgg11_bn": 8, "alexnet": 8,
                   "mobilenet_v3_small": 15, "vit_b_16": 14}
#: small versions where the architecture has a width option, so the suite stays fast
TINY_OPTIONS = {"convnet": {"widths": [4, 8, 8], "fc": [16, 16]}, "caffenet": {"width": 1 / 16},
                "mobilenet_v3_small": {"width_mult": 0.25}}
#: grey and non-square, smaller than any network's minimum: every network upsamples it
SHAPE = (1, 16, 20)
#: networks too big to copy and train at every cut point in a fast suite: their first, middle, last
BIG = {"resnet50", "vgg11_bn", "alexnet", "vit_b_16"}

_built: dict[tuple[str, int, int], CutNet] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(arch: str, seed: int = 0, num_classes: int = 3) -> CutNet:
    """A tiny network, built once per (arch, seed, num_classes) and shared; callers must not change
    it. The tests use two per architecture: (seed 0, 3 classes) and (seed 1, 5 classes)."""
    key = (arch, seed, num_classes)
    if key not in _built:
        _built[key] = create_model(arch, num_classes, SHAPE, TINY_OPTIONS.get(arch), init_seed=seed)
    return _built[key]


def cuts_to_train(arch: str) -> list[int]:
    L = EXPECTED_LAYERS[arch]
    return sorted({1, L // 2, L - 1}) if arch in BIG else list(range(1, L))


def test_every_expected_architecture_is_registered():
    assert set(EXPECTED_LAYERS) <= set(ARCHS)
    assert all(list_models().values())  # each has a description


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_and_cut_points(arch):
    net = build(arch)
    assert net.num_layers == EXPECTED_LAYERS.get(arch, net.num_layers)
    assert list(net.cut_points) == list(range(1, net.num_layers))
    assert len(set(net.block_names)) == net.num_layers
    # the registry's cheap look-up (a meta-device build) gives the same layers
    assert layer_names(arch, SHAPE, TINY_OPTIONS.get(arch)) == net.block_names


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_then_suffix_is_the_whole_network(arch):
    net = build(arch).eval()
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3)
        for n in net.cut_points:
            assert torch.equal(net.forward_suffix(net.forward_prefix(x, n), n), y), n


@pytest.mark.parametrize("arch", ARCHS)
def test_num_classes_changes_only_the_classifier(arch):
    a, b = build(arch, 0, 3), build(arch, 1, 5)
    for i, (ba, bb) in enumerate(zip(a.blocks, b.blocks)):
        sa, sb = ba.state_dict(), bb.state_dict()
        assert sa.keys() == sb.keys()
        differ = [k for k in sa if sa[k].shape != sb[k].shape]
        assert bool(differ) == (i == a.num_layers - 1), (i, differ)


@pytest.mark.parametrize("arch,n", [(a, n) for a in sorted(EXPECTED_LAYERS) for n in cuts_to_train(a)])
def test_transplant_freeze_and_train_at_every_cut(arch, n):
    source, fresh = build(arch, 0, 3), build(arch, 1, 5)
    net = freeze(transplant(source, fresh, n), n)
    for i in range(net.num_layers):
        donor = source if i < n else fresh
        for k, v in net.blocks[i].state_dict().items():
            assert torch.equal(v, donor.blocks[i].state_dict()[k]), (i, k)
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in net.blocks]
    opt = torch.optim.SGD(trainable_parameters(net), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, *SHAPE, generator=gen), torch.tensor([0, 4])
    net.train()
    torch.manual_seed(0)
    for _ in range(2):  # two steps: ViT's head starts at zero, so the first step reaches only the head
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    for i, block in enumerate(net.blocks):
        after = block.state_dict()
        if i < n:  # weights and buffers (BatchNorm statistics) untouched, and no gradient
            assert all(torch.equal(before[i][k], after[k]) for k in after), i
            assert all(p.grad is None for p in block.parameters()), i
        else:  # every parameter reached by the loss, and the block trained (some updates are below
            # float32 resolution: a norm's scale of 1.0 moved by 1e-8, say)
            assert all(p.grad is not None for p in block.parameters()), i
            assert any(not torch.equal(before[i][k], p) for k, p in block.named_parameters()), i


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_option_is_refused_by_name(arch):
    with pytest.raises(UserError, match=r"model\.options\.colour"):
        create_model(arch, 3, SHAPE, {"colour": "red"})


BAD_OPTIONS = [("convnet", "norm", "group"), ("convnet", "widths", []), ("convnet", "fc", [0]),
               ("convnet", "dropout", 1.5), ("caffenet", "width", 0), ("caffenet", "min_size", MIN_SIDE - 1),
               ("caffenet", "init", "xavier"), ("caffenet", "dropout", -0.1), ("resnet18", "min_size", 0),
               ("resnet50", "min_size", 0.5), ("vgg11_bn", "min_size", 31), ("vgg11_bn", "dropout", 1.0),
               ("alexnet", "min_size", 62), ("mobilenet_v3_small", "width_mult", -1),
               ("vit_b_16", "image_size", 40), ("vit_b_16", "dropout", "high")]


@pytest.mark.parametrize("arch,option,value", BAD_OPTIONS)
def test_bad_option_value_names_the_option(arch, option, value):
    assert option in model_options(arch)
    with pytest.raises(UserError, match=rf"model\.options.*\b{option} must"):
        create_model(arch, 3, SHAPE, {option: value})


def test_caffenet_is_caffes_reference_model_at_227_px():
    with torch.device("meta"):  # shapes only: nothing allocated or computed
        net = create_model("caffenet", 1000, (3, 227, 227))
        x = torch.empty(1, 3, 227, 227)
        conv1 = net.blocks[0].conv1(x)
        shapes = [tuple(net.forward_prefix(x, n).shape[1:]) for n in range(1, 9)]
    assert tuple(conv1.shape[1:]) == (96, 55, 55)
    assert shapes == [(96, 27, 27), (256, 13, 13), (384, 13, 13), (384, 13, 13), (256, 6, 6), (4096,), (4096,),
                      (1000,)]
    assert net.blocks[0].input.size is None  # 227 px is not resized
    assert net.blocks[5].fc6.in_features == 9216
    assert [b.groups for b in net.modules() if isinstance(b, nn.Conv2d)] == [1, 2, 1, 2, 2]
    lrn = net.blocks[0].norm1
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert sum(p.numel() for p in net.parameters()) == 60_965_224  # Caffe's bvlc_reference_caffenet


def test_caffenet_uses_caffes_initialisation():
    net = create_model("caffenet", 10, (3, 64, 64), {"width": 0.25})
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    biases = [float(m.bias.detach().unique()) for m in layers]
    assert biases == [0, 1, 0, 1, 1, 1, 1, 0]
    stds = [float(m.weight.detach().std()) for m in layers]
    for std, want in zip(stds, [0.01] * 5 + [0.005, 0.005, 0.01]):
        assert math.isclose(std, want, rel_tol=0.15), stds


def test_caffenet_smallest_input():
    assert pool5_side(MIN_SIDE) == 1 and pool5_side(MIN_SIDE - 1) == 0 and pool5_side(227) == 6
    net = create_model("caffenet", 3, (3, MIN_SIDE, MIN_SIDE + 7), {"width": 1 / 16, "min_size": MIN_SIDE})
    assert net.blocks[0].input.size is None
    assert net(torch.randn(2, 3, MIN_SIDE, MIN_SIDE + 7)).shape == (2, 3)


def test_small_images_are_upsampled_as_the_first_op_of_layer_1():
    net = build("resnet18").eval()  # grey 16x20 -> 3 x 32x40, aspect kept
    assert net.blocks[0].input.size == (32, 40)
    x = torch.randn(2, *SHAPE)
    up = F.interpolate(x, size=(32, 40), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    stem = net.blocks[0]
    with torch.no_grad():
        want = stem.maxpool(stem.relu(stem.bn1(stem.conv1(up))))
        assert torch.equal(net.forward_prefix(x, 1), want)
    assert build("alexnet").blocks[0].input.size == (64, 80)
    assert build("vit_b_16").blocks[0].input.size == (32, 32)  # ViT: square, a multiple of 16
    assert layer_names("vit_b_16", (3, 40, 24)) == layer_names("vit_b_16")
    with torch.device("meta"):
        assert create_model("vit_b_16", 3, (3, 40, 24)).blocks[0].input.size == (48, 48)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (3, 32, 32), (1, 64, 64), (3, 12, 40), (1, 64, 9)])
def test_convnet_takes_any_small_image(shape):
    net = create_model("convnet", 4, shape, {"widths": [4, 4, 4, 4], "fc": [8]})
    assert net.num_layers == 6
    assert net(torch.randn(2, *shape)).shape == (2, 4)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_convnet_pools_before_relu_with_the_same_values_and_gradients(dtype):
    """The conv block pools before its ReLU (cheaper); conv-BN-ReLU-pool must give bit-identical
    outputs and gradients, windows that are all negative (ReLU gives 0) included."""
    net = create_model("convnet", 3, (3, 8, 8), {"widths": [6], "fc": []}, init_seed=0).train()
    conv, bn, pool, relu = net.blocks[0]
    assert isinstance(pool, nn.MaxPool2d) and isinstance(relu, nn.ReLU)
    x = torch.randn(4, 3, 8, 8)
    grads = []
    for order in ((conv, bn, pool, relu), (conv, bn, nn.ReLU(), nn.MaxPool2d(2))):
        net.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            h = x
            for m in order:
                h = m(h)
        h.float().pow(2).sum().backward()
        grads.append((h.detach(), [p.grad.clone() for p in net.blocks[0].parameters()]))
    (h1, g1), (h2, g2) = grads
    assert (h1 == 0).any() and (h1 > 0).any()
    assert torch.equal(h1, h2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


#: torchvision models, and an image size each takes as it is (so no resizing in block 1)
TORCHVISION = [("resnet18", lambda: tvm.resnet18(num_classes=5), 32),
               ("resnet50", lambda: tvm.resnet50(num_classes=5), 32),
               ("vgg11_bn", lambda: tvm.vgg11_bn(num_classes=5), 32),
               ("alexnet", lambda: tvm.alexnet(num_classes=5), 64),
               ("mobilenet_v3_small", lambda: tvm.mobilenet_v3_small(num_classes=5, width_mult=0.25), 32),
               ("vit_b_16", lambda: tvm.vit_b_16(num_classes=5, image_size=32), 32)]


@pytest.mark.parametrize("arch,make,size", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_blocks_compute_what_torchvision_computes(arch, make, size):
    torch.manual_seed(0)
    model = make().eval()
    if isinstance(model, tvm.VisionTransformer):  # its head starts at zero: make the outputs mean something
        nn.init.normal_(model.heads.head.weight, std=0.05)
    net = from_torchvision(model, (3, size, size))
    assert net.num_layers == EXPECTED_LAYERS[arch]
    # every parameter of torchvision's model is in exactly one block
    assert sum(p.numel() for b in net.blocks for p in b.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        got, want = net(x), model(x)
    # the blocks call torchvision's own modules in its order, so the same kernels run on the same
    # tensors: bit-identical on every kernel tried (oneDNN AVX-512 bf16, AVX-512, AVX2, SSE4.1; MKL
    # AVX2 and compatible mode). The tolerance only admits a split that reorders float32 work (a few
    # ulps per layer), relative to the outputs' scale: mobilenet's logits here are about 5e-8.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))


def test_a_network_of_your_own(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))  # registered for this test only

    @register_model("test_mynet", "two conv layers and a classifier")
    def mynet(num_classes: int, image_shape: tuple[int, int, int], width: int = 4) -> CutNet:
        c, _, _ = image_shape
        return CutNet([nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                     nn.MaxPool2d(2)),
                       nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)),
                       nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))], ["conv1", "conv2", "fc3"])

    assert "test_mynet" in list_models() and model_options("test_mynet") == {"width": 4}
    assert layer_names("test_mynet", (3, 8, 8)) == ("conv1", "conv2", "fc3")
    a = create_model("test_mynet", 2, (3, 8, 8), {"width": 6}, init_seed=1)
    b = create_model("test_mynet", 4, (3, 8, 8), {"width": 6}, init_seed=2)
    assert torch.equal(a.blocks[0][0].weight, create_model("test_mynet", 2, (3, 8, 8), {"width": 6}, 1).blocks[0][0].weight)
    net = freeze(transplant(a, b, 1), 1).train()
    frozen = {k: v.clone() for k, v in net.blocks[0].state_dict().items()}
    opt = torch.optim.SGD(trainable_parameters(net), lr=0.1)
    F.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in net.blocks[0].state_dict().items())
    assert not torch.equal(net.blocks[2][1].weight, b.blocks[2][1].weight)
    with pytest.raises(UserError, match=r"model\.options\.depth"):
        create_model("test_mynet", 2, (3, 8, 8), {"depth": 3})
