"""The timm family (``timm/<name>``): each network computes what timm's model computes, bit for bit,
cut at its stages; its tensors keep timm's names; grey and small images work. Also the names of
torchvision's tensors on the torchvision family."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision import models as tvm

from transferscope.errors import UserError
from transferscope.models import create_model, layer_names, list_models, model_options
from transferscope.models.torchvision_nets import IMAGENET_INPUT, from_torchvision
from transferscope.surgery import freeze, transplant

#: name, options, the layers expected (a ViT with a small img_size keeps the suite fast)
TIMM = [("resnet18", {}, ("act1", "layer1", "layer2", "layer3", "layer4", "head")),
        ("convnext_atto", {}, ("stages_0", "stages_1", "stages_2", "stages_3", "head")),
        ("efficientnet_b0", {}, ("blocks_0", "blocks_1", "blocks_2", "blocks_4", "blocks_6", "head")),
        ("vit_tiny_patch16_224", {"img_size": 32}, ("embed", *(f"block{i}" for i in range(1, 13)), "head"))]
IDS = [t[0] for t in TIMM]
SHAPE = (3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def both(name: str, options: dict, num_classes: int = 5, seed: int = 3):
    """The CutNet and timm's own model, drawn from the same seed."""
    net = create_model(f"timm/{name}", num_classes, SHAPE, options, init_seed=seed)
    torch.manual_seed(seed)
    return net, timm.create_model(name, pretrained=False, num_classes=num_classes, **options)


@pytest.mark.parametrize("name,options,layers", TIMM, ids=IDS)
def test_blocks_compute_what_timm_computes(name, options, layers):
    net, model = both(name, options)
    net.eval(), model.eval()
    assert net.block_names == layers and list(net.cut_points) == list(range(1, len(layers)))
    assert layer_names(f"timm/{name}", SHAPE, options) == layers
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)
        assert torch.equal(y, model(x))
        assert y.shape == (2, 5)
        for n in net.cut_points:
            assert torch.equal(net.forward_suffix(net.forward_prefix(x, n), n), y), n


@pytest.mark.parametrize("name,options,layers", TIMM, ids=IDS)
def test_foreign_names_are_timms_and_only_the_head_depends_on_num_classes(name, options, layers):
    net, model = both(name, options)
    theirs, ours = model.state_dict(), net.state_dict()
    assert net.foreign_names.keys() == ours.keys()
    assert sorted(net.foreign_names.values()) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[f]) for k, f in net.foreign_names.items())
    other = create_model(f"timm/{name}", 7, SHAPE, options)
    for i, (a, b) in enumerate(zip(net.blocks, other.blocks)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert any(sa[k].shape != sb[k].shape for k in sa) == (i == net.num_layers - 1), i
    cfg = model.pretrained_cfg
    classifier = next(k for k, f in net.foreign_names.items() if f == cfg["classifier"] + ".weight")
    assert classifier.startswith(f"blocks.{net.num_layers - 1}.") and ours[classifier].shape[0] == 5
    assert net.input_config == {"input_size": tuple(cfg["input_size"]), "mean": tuple(cfg["mean"]),
                                "std": tuple(cfg["std"]), "interpolation": cfg["interpolation"],
                                "size_option": "img_size" if "vit" in name else "min_size"}
    assert net.input_config["input_size"] == (3, 224, 224)


@pytest.mark.parametrize("name,options,layers", TIMM, ids=IDS)
def test_a_grey_8x8_image_works(name, options, layers):
    net = create_model(f"timm/{name}", 4, (1, 8, 8), options).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_transplant_freeze_and_train_a_timm_network():
    """A deep copy keeps the blocks and the timm model they call consistent: the copy's head and
    embedding use the copy's tensors; dropout before the classifier follows the network's mode."""
    name, options = "vit_tiny_patch16_224", {"img_size": 32, "drop_rate": 0.5}
    source, fresh = (create_model(f"timm/{name}", k, SHAPE, options, init_seed=k) for k in (3, 5))
    net = freeze(transplant(source, fresh, 1), 1)
    x = torch.randn(2, *SHAPE)
    net.eval()
    with torch.no_grad():
        y = net(x)
        net.blocks[0].pos_embed.add_(1.0)  # the copy's own position embedding, not the source's
        assert not torch.equal(net(x), y)
        assert torch.equal(net(x), net(x))  # eval: no dropout
    net.train()
    torch.manual_seed(0)
    loss = F.cross_entropy(net(x), torch.tensor([0, 4]))
    loss.backward()
    assert all(p.grad is None for p in net.blocks[0].parameters())
    assert all(p.grad is not None for b in net.blocks[1:] for p in b.parameters())
    twin = copy.deepcopy(net)
    assert twin.blocks[0].model.cls_token is twin.blocks[0].cls_token is not net.blocks[0].cls_token


def test_family_registry_options_and_errors():
    assert list_models(families=True)["timm/<name>"] and "timm/<name>" not in list_models()
    assert model_options("timm/resnet18") == {"drop_rate": 0.0, "drop_path_rate": 0.0, "img_size": None,
                                              "min_size": 32}
    with pytest.raises(UserError, match=r"^model\.arch: unknown timm model 'resnet_nope'.*list_models\('resnet\*'\)"):
        create_model("timm/resnet_nope", 3, SHAPE)
    with pytest.raises(UserError, match=r"model\.options\.colour"):
        create_model("timm/resnet18", 3, SHAPE, {"colour": "red"})
    with pytest.raises(UserError, match=r"model\.options.*drop_rate must"):
        create_model("timm/resnet18", 3, SHAPE, {"drop_rate": 1.5})


def test_torchvision_networks_know_torchvisions_names():
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=5)
    net = from_torchvision(model, (1, 16, 16))
    theirs = model.state_dict()
    assert net.foreign_names.keys() == net.state_dict().keys() and sorted(net.foreign_names.values()) == sorted(theirs)
    assert net.foreign_names["blocks.0.conv1.weight"] == "conv1.weight"
    assert net.foreign_names["blocks.5.fc.bias"] == "fc.bias"
    assert net.input_config == {**IMAGENET_INPUT, "size_option": "min_size"}
    assert net.input_config["mean"] == (0.485, 0.456, 0.406)
    assert create_model("resnet18", 3, (3, 32, 32)).foreign_names["blocks.1.0.bn1.running_mean"] == "layer1.0.bn1.running_mean"
    assert create_model("convnet", 3, (3, 8, 8)).input_config is None
