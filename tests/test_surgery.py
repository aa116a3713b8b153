import pytest
import torch

from transferscope.config import TrainConfig, load_config
from transferscope.errors import UserError
from transferscope.models import create_model
from transferscope.seeds import TrainingSeeds
from transferscope.study import Study
from transferscope.surgery import check_cut, freeze, parameter_counts, trainable_parameters, transplant
from transferscope.train import make_optimizer, train_network
from transferscope.treatments import RunSpec

from conftest import TINY, build_network


def trained_base(study, task="B"):
    """A base network that has really trained (so BatchNorm statistics are not the defaults)."""
    spec = next(s for s in study.plan if s.key == f"r0-base{task}")
    net = build_network(study, spec, {})
    train_network(net, study.task(0, task), study.config.train, study.config.eval, copied=0, seeds=TrainingSeeds.derive(0))
    return net


@pytest.fixture(scope="module")
def sources(tiny_study):
    return {"r0-baseA": trained_base(tiny_study, "A"), "r0-baseB": trained_base(tiny_study, "B")}


def spec_for(study, treatment, n):
    return next(s for s in study.plan if s.treatment == treatment and s.n == n)


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("treatment", ["AnB", "AnB+", "BnB", "BnB+", "BnA", "AnA+"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_copied_layers_equal_source_bit_for_bit(tiny_study, sources, treatment, n):
    spec = spec_for(tiny_study, treatment, n)
    net = build_network(tiny_study, spec, sources)
    src = sources[spec.depends_on]
    for i in range(n):
        assert_equal_states(net.blocks[i].state_dict(), src.blocks[i].state_dict())
    # BatchNorm statistics travel with the weights
    assert any("running_mean" in k for k in net.blocks[0].state_dict())


@pytest.mark.parametrize("treatment", ["AnB", "BnB+", "randomB"])
def test_layers_above_n_use_the_base_initialiser(tiny_study, sources, treatment):
    n = 2
    spec = spec_for(tiny_study, treatment, n)
    net = build_network(tiny_study, spec, sources)
    fresh = tiny_study.new_network(spec, spec.target, spec.key)  # the base networks' initialiser, run's seed
    for i in range(n, net.num_layers):
        assert_equal_states(net.blocks[i].state_dict(), fresh.blocks[i].state_dict())
    if spec.source:
        src = sources[spec.depends_on]
        assert not torch.equal(net.blocks[n].state_dict()["1.weight"], src.blocks[n].state_dict()["1.weight"])
        assert not torch.equal(net.blocks[n].state_dict()["1.weight"], sources["r0-baseA"].blocks[n].state_dict()["1.weight"])
    else:  # random-frozen: layers 1..n are those of the replicate's untrained random network
        random_net = tiny_study.new_network(spec, spec.target, spec.source_net)
        assert spec.source_net == "r0-randomB"
        for i in range(n):
            assert_equal_states(net.blocks[i].state_dict(), random_net.blocks[i].state_dict())
            assert not torch.equal(net.blocks[i].state_dict()["0.weight"], fresh.blocks[i].state_dict()["0.weight"])


@pytest.mark.parametrize("treatment, n", [("AnB", 1), ("AnB", 3), ("BnB", 2), ("randomB", 2), ("BnA", 3)])
def test_frozen_layers_unchanged_after_training_and_stay_in_eval(tiny_study, sources, treatment, n):
    spec = spec_for(tiny_study, treatment, n)
    net = build_network(tiny_study, spec, sources)
    before = [state(b) for b in net.blocks]
    net.train()
    assert all(not b.training for b in net.blocks[:n]) and all(b.training for b in net.blocks[n:])
    train_network(net, tiny_study.task(0, spec.target), tiny_study.config.train, tiny_study.config.eval,
                  copied=spec.copied, seeds=TrainingSeeds.derive(1))
    for i in range(n):
        assert_equal_states(net.blocks[i].state_dict(), before[i])  # weights, BN running stats, counters
    # the layer above the cut did train
    assert any(not torch.equal(v, before[n][k]) for k, v in net.blocks[n].state_dict().items())


def test_frozen_dropout_is_off_in_train_mode(tiny_study, sources):
    # layer 3 is fc3 with dropout 0.5: frozen, its output must not vary between calls in train mode
    spec = spec_for(tiny_study, "AnB", 3)
    net = build_network(tiny_study, spec, sources).train()
    x = torch.randn(16, 1, 8, 8)
    h1, h2 = net.forward_prefix(x, 3), net.forward_prefix(x, 3)
    assert torch.equal(h1, h2)
    unfrozen = build_network(tiny_study, spec_for(tiny_study, "AnB+", 3), sources).train()
    assert not torch.equal(unfrozen.forward_prefix(x, 3), unfrozen.forward_prefix(x, 3))


@pytest.mark.parametrize("treatment, n", [("AnB", 2), ("AnB+", 2), ("randomB", 1), ("BnB", 3)])
def test_optimizer_holds_exactly_the_trainable_parameters(tiny_study, sources, treatment, n):
    spec = spec_for(tiny_study, treatment, n)
    net = build_network(tiny_study, spec, sources)
    opt = make_optimizer(net, tiny_study.config.train, spec.copied)
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(in_opt) == len(set(in_opt))
    expected = {id(p) for b in net.blocks[spec.frozen:] for p in b.parameters()}
    assert set(in_opt) == expected == {id(p) for p in trainable_parameters(net)}
    trainable, total = parameter_counts(net)
    assert trainable == sum(p.numel() for b in net.blocks[spec.frozen:] for p in b.parameters())
    assert total == sum(p.numel() for p in net.parameters())


def test_fine_tuning_uses_base_rate_by_default_and_a_scale_on_request(tiny_study, sources):
    spec = spec_for(tiny_study, "AnB+", 2)
    net = build_network(tiny_study, spec, sources)
    copied = {id(p) for b in net.blocks[:2] for p in b.parameters()}
    for scale in (1.0, 0.1):
        cfg = TrainConfig(finetune_lr_scale=scale)
        opt = make_optimizer(net, cfg, spec.copied)
        for g in opt.param_groups:
            is_copied = {id(p) in copied for p in g["params"]}
            assert len(is_copied) == 1
            assert g["lr_scale"] == (scale if is_copied.pop() else 1.0)


def test_surgery_is_pure():
    a = create_model("convnet", 3, (1, 8, 8), {"widths": [8], "fc": [8]}, init_seed=1)
    b = create_model("convnet", 3, (1, 8, 8), {"widths": [8], "fc": [8]}, init_seed=2)
    sa, sb = state(a), state(b)
    out = freeze(transplant(a, b, 1), 1)
    assert out is not a and out is not b
    assert_equal_states(a.state_dict(), sa)
    assert_equal_states(b.state_dict(), sb)
    assert b.num_frozen == 0 and all(p.requires_grad for p in b.parameters())
    assert out.num_frozen == 1


def test_transplant_asserts_shapes():
    a = create_model("convnet", 3, (1, 8, 8), {"widths": [8], "fc": [8]})
    b = create_model("convnet", 3, (1, 8, 8), {"widths": [4], "fc": [8]})
    with pytest.raises(ValueError, match=r"layer 1 0.weight: source shape \(8, 1, 3, 3\) != target \(4, 1, 3, 3\)"):
        transplant(a, b, 1)


@pytest.mark.parametrize("n", [0, 3, -1, 1.5])
def test_bad_cut_names_the_valid_range(n):
    net = create_model("convnet", 3, (1, 8, 8), {"widths": [8], "fc": [8]})
    with pytest.raises(UserError, match=r"n=.* is out of range for convnet with 3 layers; allowed 1..2"):
        check_cut(net, n, "convnet")


def test_treatment_names_roles_and_sources(tiny_study):
    by = {s.key: s for s in tiny_study.plan}
    assert by["r0-AnB-n2"] == RunSpec("r0-AnB-n2", 0, "AnB", "transfer", "B", "A", 2)
    assert by["r0-BnA+-n1"].source == "B" and by["r0-BnA+-n1"].role == "transfer+" and by["r0-BnA+-n1"].frozen == 0
    assert by["r0-AnA-n3"].role == "selffer" and by["r0-AnA-n3"].depends_on == "r0-baseA"
    assert by["r0-randomB-n2"].source_net == "r0-randomB" and by["r0-randomB-n2"].depends_on is None
    assert by["r0-randomB-n2"].copied == 2 and by["r0-randomB-n2"].frozen == 2
    # every treatment at every cut point, both directions, plus the two bases
    cuts = tiny_study.cut_points
    assert cuts == (1, 2, 3) and len(tiny_study.plan) == 2 + len(cuts) * 2 * 5


def test_frozen_bn_affine_option_trains_only_the_affine_parameters(tiny_study, sources):
    study = Study.prepare(load_config(None, [*TINY, "treatments.frozen_bn=train-affine"]))
    spec = spec_for(study, "AnB", 2)
    net = build_network(study, spec, sources)
    bn = net.blocks[0][1]
    assert bn.weight.requires_grad and bn.bias.requires_grad and not net.blocks[0][0].weight.requires_grad
    before = state(net.blocks[0])
    train_network(net, study.task(0, "B"), study.config.train, study.config.eval, copied=2, seeds=TrainingSeeds.derive(0))
    after = net.blocks[0].state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"])  # conv frozen
    assert torch.equal(after["1.running_mean"], before["1.running_mean"])  # statistics fixed
    assert not torch.equal(after["1.weight"], before["1.weight"])  # affine trained
    net.train()
    assert not net.blocks[0].training
