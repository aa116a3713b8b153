"""Pretrained sources: checkpoint files in a network's own names or its library's, timm's weights
(from a file, or from a local cache that is never downloaded into), another study's base networks;
every bad input one line naming the field and the file. Real files, written here."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch
from safetensors.torch import save_file
from torchvision import models as tvm

from transferscope import run_study
from transferscope.config import ModelConfig, load_config
from transferscope.errors import UserError
from transferscope.models.registry import create_model
from transferscope.sources import SourceSpec, load_source_weights
from transferscope.store import Store
from conftest import RunsCode

SMALL = {"widths": [8, 16], "fc": [16], "dropout": 0.5}
SHAPE = (1, 8, 8)  # the default study's digits


def convnet(num_classes: int = 5, seed: int = 0, **options) -> torch.nn.Module:
    return create_model("convnet", num_classes, SHAPE, {**SMALL, **options}, init_seed=seed)


def file_source(path) -> SourceSpec:
    return SourceSpec("checkpoint", path=str(path))


def refused(source: SourceSpec, net, layers: int = 1, **kw) -> str:
    """The one-line message ``source`` is refused with."""
    with pytest.raises(UserError) as e:
        load_source_weights(source, net, layers=layers, **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


def assert_bitwise(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    for k, v in loaded.items():
        assert v.dtype == expected[k].dtype and v.shape == expected[k].shape, k
        assert torch.equal(v.view(torch.uint8) if v.is_floating_point() else v,
                           expected[k].view(torch.uint8) if v.is_floating_point() else expected[k]), k


def foreign(net) -> dict[str, str]:
    names = getattr(net, "foreign_names", None)
    if names is None:
        pytest.xfail("CutNet.foreign_names (the library's key names) has not landed in models/ yet")
    return names


# -- checkpoints in the CutNet's own names -------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_a_transferscope_network_loads_back_bit_for_bit(tmp_path, suffix):
    source = convnet(seed=1)
    state = source.state_dict()
    path = tmp_path / f"net{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    net = convnet(seed=2)
    layers = net.num_layers - 1
    loaded = load_source_weights(file_source(path), net, layers=layers)
    assert sorted(loaded) == sorted(k for k in state if int(k.split(".")[1]) < layers)
    assert_bitwise(loaded, state)
    net.load_state_dict(loaded, strict=False)
    assert torch.equal(net.blocks[0][0].weight, source.blocks[0][0].weight)


@pytest.mark.parametrize("nest", ["state_dict", "model"])
def test_a_state_dict_nested_in_a_training_checkpoint(tmp_path, nest):
    state = convnet(seed=1).state_dict()
    torch.save({nest: state, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    loaded = load_source_weights(file_source(tmp_path / "ckpt.pth"), convnet(), layers=2)
    assert len(loaded) == 12
    assert_bitwise(loaded, state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_are_widened_exactly(tmp_path, dtype):
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in convnet(seed=1).state_dict().items()}
    save_file(state, tmp_path / "half.safetensors")
    loaded = load_source_weights(file_source(tmp_path / "half.safetensors"), convnet(), layers=3)
    assert_bitwise(loaded, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def test_only_layers_up_to_the_cut_are_read_and_the_classifier_may_differ(tmp_path):
    """A source trained for 10 classes, with its own classifier keys, gives layers 1..n to a
    5-class network: the classifier's keys neither count as unexpected nor get copied."""
    state = convnet(num_classes=10, seed=1).state_dict()
    state["blocks.3.extra_head.weight"] = torch.ones(3)
    save_file(state, tmp_path / "ten.safetensors")
    loaded = load_source_weights(file_source(tmp_path / "ten.safetensors"), convnet(), layers=1)
    assert sorted(loaded) == sorted(k for k in state if k.startswith("blocks.0."))
    with pytest.raises(ValueError, match="1..3"):
        load_source_weights(file_source(tmp_path / "ten.safetensors"), convnet(), layers=4)


# -- checkpoints in the library's names -----------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_resnet18_loads_through_its_own_names(tmp_path, suffix):
    torch.manual_seed(3)
    model = tvm.resnet18()  # 1000 classes, as torchvision's pretrained weights
    state = model.state_dict()
    path = tmp_path / f"resnet18{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    net = create_model("resnet18", 5, (3, 32, 32))
    names = foreign(net)
    loaded = load_source_weights(file_source(path), net, layers=5)
    assert sorted(loaded) == sorted(k for k in net.state_dict() if not k.startswith("blocks.5."))
    assert_bitwise(loaded, {k: state[names[k]] for k in loaded})


def _timm_net():
    timm = pytest.importorskip("timm")
    try:
        net = create_model("timm/resnet18", 5, (3, 32, 32))
    except UserError:
        pytest.xfail("the timm family (models/timm_nets.py, 'timm/resnet18') has not landed yet")
    foreign(net)
    return timm, net


def _timm_resnet18(timm) -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def test_timm_weights_from_a_file(tmp_path):
    timm, net = _timm_net()
    state = _timm_resnet18(timm)
    save_file(state, tmp_path / "resnet18.safetensors")
    loaded = load_source_weights(SourceSpec("timm", name="resnet18", path=str(tmp_path / "resnet18.safetensors")),
                                 net, layers=net.num_layers - 1)
    assert_bitwise(loaded, {k: state[net.foreign_names[k]] for k in loaded})


def test_timm_weights_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    """The file where huggingface_hub keeps a download: refs/main names the snapshot."""
    timm, net = _timm_net()
    state = _timm_resnet18(timm)
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "0123abcd" / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_source_weights(SourceSpec("timm", name="resnet18.a1_in1k"), net, layers=2)
    assert_bitwise(loaded, {k: state[net.foreign_names[k]] for k in loaded})


def test_timm_weights_not_cached_say_where_they_were_looked_for(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    message = refused(SourceSpec("timm", name="resnet18.a1_in1k"), convnet())
    assert message.startswith("source.name: no pretrained weights for timm model 'resnet18.a1_in1k'")
    assert str(tmp_path / "hf" / "hub") in message and "timm/resnet18.a1_in1k" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18_a1_0-d63eafa0.pth") in message
    assert 'source.path = "...safetensors"' in message
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.safetensors"))
    assert refused(SourceSpec("timm", name="no_such_net"), convnet()) == (
        "source.name: timm has no pretrained weights for 'no_such_net'; "
        "timm.list_pretrained() lists the models that have")
    assert refused(SourceSpec("timm", name="resnet18.bogus"), convnet()) == (
        "source.name: Invalid pretrained tag (bogus) for resnet18. (timm.list_pretrained('resnet18.*') lists its tags)")


# -- another study's base networks ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study")
    run_study(load_config(None, ["train.epochs=1", "treatments.replicates=1", 'treatments.names=["base"]',
                                 "model.options={widths=[8,16],fc=[16],dropout=0.5}"]), out, progress=False,
              report=False)
    return out


def test_a_base_network_of_another_study(study_dir):
    net = convnet(seed=9)
    source = SourceSpec("study", study=str(study_dir), run="r0-baseA")
    loaded = load_source_weights(source, net, layers=3, model=ModelConfig(arch="convnet", options=SMALL))
    saved = Store(study_dir).load_weights("r0-baseA")
    assert sorted(loaded) == sorted(k for k in saved if not k.startswith("blocks.3."))
    assert_bitwise(loaded, saved)


def test_a_study_source_names_the_study_the_run_and_what_is_allowed(study_dir, tmp_path):
    message = refused(SourceSpec("study", study=str(study_dir), run="r0-baseC"), convnet())
    assert message.startswith("source.run: 'r0-baseC' is not a run of it")
    assert str(study_dir) in message and "r0-baseA, r0-baseB" in message
    message = refused(SourceSpec("study", study=str(tmp_path), run="r0-baseA"), convnet())
    assert message.startswith("source.study: ") and "not a transferscope study directory" in message
    # another architecture, by the study's model section and by the weights themselves
    message = refused(SourceSpec("study", study=str(study_dir), run="r0-baseA"), convnet(),
                      model=ModelConfig(arch="convnet", options={**SMALL, "widths": [12, 16]}))
    assert str(study_dir) in message and "widths" in message and "same architecture" in message
    message = refused(SourceSpec("study", study=str(study_dir), run="r0-baseA"), convnet(widths=[12, 16]))
    assert "run r0-baseA" in message and "blocks.0.0.weight has shape (8, 1, 3, 3)" in message
    assert "(12, 1, 3, 3)" in message
    message = refused(SourceSpec("study", study=str(study_dir), run="r0-baseA"),
                      create_model("resnet18", 5, (1, 8, 8)), layers=4)
    assert "another architecture" in message and "this network's e.g. 'blocks.0.conv1.weight'" in message
    # a recorded run whose weights are gone
    copy = tmp_path / "copy"
    shutil.copytree(study_dir, copy)
    Store(copy).weights_path("r0-baseB").unlink()
    message = refused(SourceSpec("study", study=str(copy), run="r0-baseB"), convnet())
    assert "r0-baseB.safetensors" in message and "missing" in message


# -- every bad input: one line naming the field and the file ---------------------------------------------
def test_the_fields_each_kind_needs():
    assert "source.path" in str(pytest.raises(UserError, SourceSpec, "checkpoint").value)
    assert "pretrain.name" in str(pytest.raises(UserError, SourceSpec, "timm", field="pretrain").value)
    assert "source.run" in str(pytest.raises(UserError, SourceSpec, "study", study="x").value)
    assert "source.kind" in str(pytest.raises(UserError, SourceSpec, "hub", path="x").value)


def test_unreadable_files(tmp_path):
    net = convnet()
    message = refused(file_source(tmp_path / "none.pth"), net)
    assert message == f"source.path: {tmp_path / 'none.pth'}: no such file (looked at {tmp_path / 'none.pth'})"
    assert "is a folder" in refused(file_source(tmp_path), net)
    for name, data in [("junk.pt", b"not a checkpoint"), ("empty.pth", b""), ("junk.safetensors", b"\x00" * 20)]:
        (tmp_path / name).write_bytes(data)
        message = refused(file_source(tmp_path / name), net)
        assert message.startswith(f"source.path: {tmp_path / name}: cannot read it as "), message


def test_a_pickle_weights_only_refuses(tmp_path):
    torch.save({"blocks.0.0.weight": torch.zeros(8, 1, 3, 3), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "pickled.pth")
    message = refused(file_source(tmp_path / "pickled.pth"), convnet())
    assert message.startswith(f"source.path: {tmp_path / 'pickled.pth'}: holds pickled objects other than tensors "
                              "(argparse.Namespace)")
    assert "torch.save(model.state_dict()" in message and ".safetensors" in message


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    torch.save({"blocks.0.0.weight": torch.zeros(8, 1, 3, 3), "epoch": 3}, tmp_path / "mixed.pt")
    assert "not a state dict" in refused(file_source(tmp_path / "list.pt"), convnet())
    assert "its entry 'epoch' is a int" in refused(file_source(tmp_path / "mixed.pt"), convnet())


def test_another_architecture_missing_unexpected_and_mismatched_keys(tmp_path):
    torch.manual_seed(0)
    save_file(tvm.resnet18().state_dict(), tmp_path / "resnet.safetensors")
    message = refused(file_source(tmp_path / "resnet.safetensors"), convnet(), layers=2)
    assert message.startswith(f"source.path: {tmp_path / 'resnet.safetensors'}: holds weights of another architecture")
    assert "0 of the 12 keys" in message
    assert "(this network's e.g. 'blocks.0.0.weight'; the file's e.g. 'bn1.weight')" in message

    state = convnet(seed=1).state_dict()
    save_file({k: v for k, v in state.items() if k != "blocks.1.1.running_mean"}, tmp_path / "missing.safetensors")
    message = refused(file_source(tmp_path / "missing.safetensors"), convnet(), layers=2)
    assert message.endswith("1 key(s) of layers 1..2 missing: blocks.1.1.running_mean")
    assert load_source_weights(file_source(tmp_path / "missing.safetensors"), convnet(), layers=1)  # not needed

    save_file({**state, "extra.weight": torch.ones(1), "blocks.1.9.bias": torch.ones(1)},
              tmp_path / "extra.safetensors")
    message = refused(file_source(tmp_path / "extra.safetensors"), convnet())
    assert "2 key(s) this network does not have: blocks.1.9.bias, extra.weight" in message

    save_file(state, tmp_path / "narrow.safetensors")
    message = refused(file_source(tmp_path / "narrow.safetensors"), convnet(widths=[8, 24]), layers=3)
    assert message == (f"source.path: {tmp_path / 'narrow.safetensors'}: blocks.1.0.weight has shape (16, 8, 3, 3) "
                       "in the file, this network's blocks.1.0.weight has (24, 8, 3, 3)")


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"blocks.0.0.weight": torch.zeros(8, 1, 3, 3), "hook": RunsCode(marker)}, tmp_path / "evil.pth")
    message = refused(file_source(tmp_path / "evil.pth"), convnet())
    assert message.startswith(f"source.path: {tmp_path / 'evil.pth'}: holds pickled objects other than tensors "
                              "(posix.system)"), message
    assert "\n" not in message and not marker.exists()  # one line, and the command never ran
