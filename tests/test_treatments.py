"""The treatment table is the one source of the treatment vocabulary, and AnB-adabn (AdaBN) is a
treatment added through it alone."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from transferscope import load_config, run_study
from transferscope.analysis import recommend, similarity
from transferscope.config import TreatmentConfig
from transferscope.errors import UserError
from transferscope.models import create_model
from transferscope import stats
from transferscope.report import analysis_figures, figures, markdown
from transferscope.runner import Runner, keeps_weights
from transferscope.seeds import TrainingSeeds
from transferscope.study import Study
from transferscope.surgery import reestimate_bn
from transferscope.train import train_network
from transferscope.treatments import (
    BY_NAME,
    DECOMPOSITION,
    DEFAULT_NAMES,
    NAMES,
    PRETRAINED_NAMES,
    ROLES,
    TREATMENTS,
    build_plan,
    names_of,
    group_jobs,
    roles_in,
    size_key,
    size_label,
)

from conftest import TINY

SRC = Path(__file__).resolve().parents[1] / "src" / "transferscope"
ADABN = [*TINY, 'treatments.names=["base", "AnB", "AnB-adabn"]', "treatments.cut_points=[1, 3]"]


# -- the table is the single source -------------------------------------------------------------

def test_config_accepts_exactly_the_table_names_and_defaults_to_the_paper():
    assert TreatmentConfig().names == DEFAULT_NAMES == ("base", "BnB", "BnB+", "AnB", "AnB+", "random")
    pretrained = ['source.kind="checkpoint"', 'source.path="w.safetensors"']
    for name in names_of("split"):
        assert load_config(None, [f'treatments.names=["{name}"]']).treatments.names == (name,)
    for name in names_of("pretrained"):
        assert load_config(None, [*pretrained, f'treatments.names=["{name}"]']).treatments.names == (name,)
    assert set(names_of("split")) | set(names_of("pretrained")) == set(NAMES)
    with pytest.raises(UserError) as e:
        load_config(None, ['treatments.names=["AnB-bn"]'])
    assert all(f"'{name}'" in str(e.value) for name in NAMES)
    # a study from a pretrained network runs its own treatments on its one target T, by default
    # and by name; the paper's are refused there, and its own in the paper's design
    cfg = load_config(None, pretrained)
    assert cfg.design == "pretrained" and cfg.treatments.names == PRETRAINED_NAMES and cfg.treatments.targets == ("T",)
    with pytest.raises(UserError, match=r"treatments.names: AnB cannot run in a study with source.kind = 'checkpoint'"):
        load_config(None, [*pretrained, 'treatments.names=["AnB"]'])
    with pytest.raises(UserError, match=r"treatments.names: PnT cannot run in a study with source.kind = 'split'"):
        load_config(None, ['treatments.names=["PnT"]'])
    with pytest.raises(UserError, match=r"treatments.targets: with source.kind = 'checkpoint' the targets are T"):
        load_config(None, [*pretrained, 'treatments.targets=["B"]'])
    with pytest.raises(UserError, match=r'source: .*kind "checkpoint" needs path'):
        load_config(None, ['source.kind="checkpoint"'])


def test_every_consumer_reads_the_table():
    assert list(stats.ROLE_LABELS) == list(ROLES)
    assert list(stats.ROLE_LABELS.values()) == [t.label for t in TREATMENTS]
    assert stats.DECOMPOSITION == {c.name: (c.minuend, c.subtrahend) for c in DECOMPOSITION}
    assert set(markdown._DECOMPOSITION_TEXT) == set(stats.DECOMPOSITION)  # the words for each quantity
    assert figures.STYLES == {t.role: t.style for t in TREATMENTS}
    assert figures._FIG2_ROLES == roles_in("fig2") and figures._FIG3_ROLES == roles_in("fig3")
    assert "random" not in figures._FIG2_ROLES and "random" in figures._FIG3_ROLES  # as the paper draws them
    analysed = {t.role for t in TREATMENTS if t.analysed}
    assert analysed == {"selffer+", "transfer+", "pretrained+"}
    assert set(similarity.FINETUNED_ROLES) == analysed == set(analysis_figures._ROLE_NAMES)
    assert recommend.ROLES == ("base", "transfer", "transfer+", "pretrained", "pretrained+", "pretrained-adabn", "probe")
    assert recommend.candidate_label("transfer", 3) == "AnB n=3 (freeze)"
    assert recommend.candidate_label("transfer+", 2) == "AnB+ n=2 (fine-tune)"
    assert recommend.candidate_label("base", 0) == "train from scratch"


def test_no_decision_by_role_string_outside_the_table():
    """Behaviour is decided by the table's fields, never by spelling a role: no ``endswith("+")``,
    ``startswith("selffer")``, ``spec.role != "random"``, and no list of roles, anywhere in the
    package. (Selecting one named treatment's rows, ``frame["role"] == "transfer"``, for an analysis
    of that treatment, is not a decision about treatments.)"""
    decisions = re.compile(r'endswith\("\+"\)|startswith\("(selffer|transfer)|\.role\s*[!=]=|'
                           r'"(selffer|transfer|random)\+?",\s*"(selffer|transfer|random)|'
                           r'"(base|selffer|transfer)\+?": "')
    found = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "treatments.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if decisions.search(line)]
    assert found == []


def test_names_mirror_for_target_a_by_pattern():
    split = [t for t in TREATMENTS if "split" in t.designs]
    assert [t.run_name("A") for t in split] == ["baseA", "AnA", "AnA+", "BnA", "BnA+", "randomA", "BnA-adabn"]
    pretrained = [t for t in TREATMENTS if "pretrained" in t.designs]
    assert [t.run_name("T") for t in pretrained] == ["baseT", "randomT", "PnT", "PnT+", "PnT-adabn", "probeT"]
    assert [t.run_name("B") for t in TREATMENTS][1:5] == ["BnB", "BnB+", "AnB", "AnB+"]
    assert [BY_NAME[n].frozen_layers(3) for n in NAMES] == [0, 3, 0, 3, 0, 3, 3, 3, 0, 3, 3]
    assert [t.source("B") for t in TREATMENTS] == [None, "B", "B", "A", "A", None, "A", "P", "P", "P", "P"]
    assert BY_NAME["BnB"].decomposition == (("co-adaptation", -1), ("specificity", 1))
    assert BY_NAME["AnB-adabn"].decomposition == () and BY_NAME["AnB-adabn"].bn_stats == "target"
    assert [t.name for t in TREATMENTS if t.bn_stats == "target"] == ["AnB-adabn", "PnT-adabn"]
    assert [t.name for t in TREATMENTS if t.head == "linear"] == ["probe"]


# -- the default study is unchanged ---------------------------------------------------------------

#: the plan of this configuration as transferscope made it before the table (commit d331e27)
BEFORE = ['r0-baseA', 'r0-baseB', 'r0-BnB-n1', 'r0-BnB+-n1', 'r0-AnB-n1', 'r0-AnB+-n1', 'r0-randomB-n1', 'r0-AnA-n1',
          'r0-AnA+-n1', 'r0-BnA-n1', 'r0-BnA+-n1', 'r0-randomA-n1', 'r0-BnB-n3', 'r0-BnB+-n3', 'r0-AnB-n3',
          'r0-AnB+-n3', 'r0-randomB-n3', 'r0-AnA-n3', 'r0-AnA+-n3', 'r0-BnA-n3', 'r0-BnA+-n3', 'r0-randomA-n3',
          'r0-baseB-s50pct', 'r0-AnB-n1-s50pct', 'r0-AnB+-n1-s50pct', 'r0-AnB-n3-s50pct', 'r0-AnB+-n3-s50pct',
          'r0-baseA-s50pct', 'r0-BnA-n1-s50pct', 'r0-BnA+-n1-s50pct', 'r0-BnA-n3-s50pct', 'r0-BnA+-n3-s50pct']


def test_default_plan_is_the_plan_before_the_table():
    cfg = load_config(None, ["treatments.replicates=1", "treatments.target_sizes=[0.5]"])
    plan = build_plan(cfg, (1, 3))
    assert [s.key for s in plan] == BEFORE
    assert all(s.seed_key == s.key for s in plan)
    by = {s.key: s for s in plan}
    assert (by["r0-BnA+-n3"].role, by["r0-BnA+-n3"].source, by["r0-BnA+-n3"].frozen) == ("transfer+", "B", 0)
    assert (by["r0-AnA-n1"].role, by["r0-AnA-n1"].source, by["r0-AnA-n1"].frozen) == ("selffer", "A", 1)
    assert by["r0-randomA-n3"].source_net == by["r0-randomA-n3"].prefix_net == "r0-randomA"
    groups = [j.key for j in group_jobs(plan, share_frozen=True) if len(j.specs) > 1]
    assert groups == ["r0-baseB->B", "r0-baseA->B", "r0-randomB->B", "r0-baseA->A", "r0-baseB->A", "r0-randomA->A",
                      "r0-baseA->B@50pct", "r0-baseB->A@50pct"]


# -- AnB-adabn: the plan -------------------------------------------------------------------------

def test_adabn_runs_are_planned_frozen_from_the_other_base_with_the_anb_seeds():
    plan = build_plan(load_config(None, ADABN), (1, 3))
    by = {s.key: s for s in plan}
    assert {k for k in by if "adabn" in k} == {"r0-AnB-adabn-n1", "r0-AnB-adabn-n3", "r0-BnA-adabn-n1",
                                               "r0-BnA-adabn-n3"}
    s = by["r0-BnA-adabn-n3"]
    assert (s.treatment, s.role, s.target, s.source, s.frozen, s.copied) == (
        "BnA-adabn", "transfer-adabn", "A", "B", 3, 3)
    assert s.source_net == "r0-baseB" and s.depends_on == "r0-baseB" and s.prefix_net == "r0-baseB~bnA"
    assert s.seed_key == "r0-BnA-n3"
    # its frozen prefix is not AnB's: they never share cached features
    groups = {j.key: [x.key for x in j.specs] for j in group_jobs(plan, share_frozen=True)}
    assert groups["r0-baseA->B"] == ["r0-AnB-n1", "r0-AnB-n3"]
    assert groups["r0-baseA~bnB->B"] == ["r0-AnB-adabn-n1", "r0-AnB-adabn-n3"]
    assert not keeps_weights(load_config(None, ADABN), s)


# -- AnB-adabn: the re-estimation ------------------------------------------------------------------

def _bn_inputs(net, x, upto):
    """Every BatchNorm's input in layers 1..upto, pushing ``x`` through the network module by
    module in eval mode (computed here without hooks)."""
    net = net.eval()
    found = []
    h = x
    with torch.no_grad():
        for block in net.blocks[:upto]:
            for m in block:
                if isinstance(m, nn.BatchNorm2d):
                    found.append((m, h.clone()))
                h = m(h.clone())
    return found


def _trained(seed, shape=(1, 8, 8)):
    net = create_model("convnet", 3, shape, {"widths": [4, 6, 5], "fc": [8]}, init_seed=seed)
    with torch.no_grad():  # statistics far from the ones the images will give
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-2, 2)
                m.running_var.uniform_(0.5, 3)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def test_reestimated_statistics_are_those_of_the_target_images_layer_by_layer():
    net = _trained(0)
    x = torch.randn(70, 1, 8, 8) * 2 + 0.5
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = reestimate_bn(net, 2, lambda: (x[i:i + 16] for i in range(0, 70, 16)))
    # the input is untouched, the copy keeps the mode
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items()) and out.training
    bns = _bn_inputs(out, x, 2)
    assert len(bns) == 2
    for bn, h in bns:
        # the same layer inputs (same kernels, same process); what differs is only the float32
        # accumulation of ~1000 values per channel against float64 here: a few 1e-7 relative
        c = h.transpose(0, 1).reshape(h.shape[1], -1).double()
        torch.testing.assert_close(bn.running_mean, c.mean(1).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, c.var(1, unbiased=True).float(), rtol=1e-5, atol=1e-6)
    after = out.state_dict()
    for k, v in before.items():
        stat = k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        if stat and k.split(".")[1] in ("0", "1"):
            assert torch.equal(after[k], v) if k.endswith("num_batches_tracked") else not torch.equal(after[k], v), k
        else:  # weights and affine everywhere, statistics above layer 2: as they were
            assert torch.equal(after[k], v), k
    # each layer standardised on the images in eval mode: the frozen layer's BN output has mean 0 var 1
    for bn, h in bns:
        z = ((h - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt())
        torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(z.shape[1]), atol=1e-4, rtol=0)


def test_layer_k_statistics_do_not_depend_on_n_or_on_the_batches():
    net = _trained(1)
    x = torch.randn(50, 1, 8, 8)
    deep = reestimate_bn(net, 3, lambda: iter([x]))
    shallow = reestimate_bn(net, 1, lambda: (x[i:i + 7] for i in range(0, 50, 7)))
    for key in ("blocks.0.1.running_mean", "blocks.0.1.running_var"):
        # one batch of 50 against batches of 7: the same values summed in another order (float32)
        torch.testing.assert_close(deep.state_dict()[key], shallow.state_dict()[key], rtol=1e-6, atol=1e-7)
    key = "blocks.1.1.running_mean"  # layer 2: re-estimated by one, left alone by the other
    assert not torch.equal(deep.state_dict()[key], shallow.state_dict()[key])


def test_without_batchnorm_there_is_nothing_to_reestimate():
    net = create_model("convnet", 3, (1, 8, 8), {"widths": [4, 6], "fc": [8], "norm": "none"}, init_seed=0)
    out = reestimate_bn(net, 2, lambda: iter([torch.randn(9, 1, 8, 8)]))
    assert all(torch.equal(v, out.state_dict()[k]) for k, v in net.state_dict().items())


@pytest.fixture(scope="module")
def adabn_study():
    torch.set_num_threads(1)
    return Study.prepare(load_config(None, ADABN))


def test_adabn_network_copies_weights_reestimates_statistics_and_keeps_them_frozen(adabn_study):
    study = adabn_study
    source = create_model("convnet", len(study.split(0).classes("A")), study.image_shape,
                          study.config.model.options, init_seed=5)
    train_network(source, study.task(0, "A"), study.config.train, study.config.eval, copied=0, seeds=TrainingSeeds.derive(0))
    runner = Runner(study, lambda key: source.state_dict())
    by = {s.key: s for s in study.plan}
    anb, ada = runner.build_network(by["r0-AnB-n3"]), runner.build_network(by["r0-AnB-adabn-n3"])
    task = study.task(0, "B")
    from transferscope.data.augment import normalize
    x = normalize(task.train.x, task.mean, task.std)
    with runner.numerics.autocast():  # the statistics of what the layers see in the run, at its precision
        inputs = _bn_inputs(ada, x, 3)
    for bn, h in inputs:
        # inputs recomputed here with the run's kernels and precision; float32 accumulation over the
        # task's training images (thousands of values per channel) against float64: far below 1e-4
        c = h.transpose(0, 1).reshape(h.shape[1], -1).double()
        torch.testing.assert_close(bn.running_mean, c.mean(1).float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, c.var(1).float(), rtol=1e-4, atol=1e-5)
    sa, sb, src = anb.state_dict(), ada.state_dict(), source.state_dict()
    for k in sb:
        layer = int(k.split(".")[1])
        if layer < 3 and "running" in k:
            assert not torch.equal(sb[k], src[k]), k  # re-estimated on B
        elif layer < 3:
            assert torch.equal(sb[k], src[k]) and torch.equal(sa[k], src[k]), k  # weights and affine copied
        elif layer >= 3:
            assert torch.equal(sb[k], sa[k]), k  # the same fresh upper layers as AnB (same seeds)
    assert ada.num_frozen == anb.num_frozen == 3
    assert [p.requires_grad for p in ada.parameters()] == [p.requires_grad for p in anb.parameters()]
    before = {k: v.clone() for k, v in ada.state_dict().items()}
    train_network(ada, task, study.config.train, study.config.eval, copied=3, seeds=TrainingSeeds.derive(1))
    for k, v in ada.state_dict().items():
        if int(k.split(".")[1]) < 3:
            assert torch.equal(v, before[k]), k  # frozen, statistics included


# -- AnB-adabn: a study --------------------------------------------------------------------------

def _frames(tmp_path, extra, modes=("cached", "recompute")):
    out = {}
    for mode in modes:
        cfg = load_config(None, [*ADABN, "execution.workers=1", *extra, f"train.frozen_features={mode}"])
        out[mode] = run_study(cfg, tmp_path / mode, progress=False, report=mode == "cached")
    return out


def test_adabn_study_runs_cached_equals_recomputed_and_is_reported(tmp_path):
    res = _frames(tmp_path, ["train.augment=false"])
    f = {m: r.frame.sort_values("key").reset_index(drop=True) for m, r in res.items()}
    assert (f["cached"]["status"] == "done").all() and len(f["cached"]) == 2 + 2 * 2 * 2
    cols = ["key", "role", "treatment", "test_top1", "val_top1", "trainable_params"]
    assert f["cached"][cols].equals(f["recompute"][cols])
    for key in ("r0-AnB-adabn-n1", "r0-BnA-adabn-n3"):
        a = json.loads((tmp_path / "cached" / "runs" / f"{key}.json").read_text())
        b = json.loads((tmp_path / "recompute" / "runs" / f"{key}.json").read_text())
        assert a["history"] == b["history"] and a["feature_cache"]["views"] == 1 and b["feature_cache"] is None
        assert a["frozen_layers"] == a["n"] and a["source_network"] in ("r0-baseA", "r0-baseB")
    # re-estimated statistics change what the frozen layers compute: not AnB's results
    for anb, ada in (("r0-AnB-n1", "r0-AnB-adabn-n1"), ("r0-BnA-n3", "r0-BnA-adabn-n3")):
        a = json.loads((tmp_path / "cached" / "runs" / f"{anb}.json").read_text())
        b = json.loads((tmp_path / "cached" / "runs" / f"{ada}.json").read_text())
        assert a["seeds"] == b["seeds"] and a["history"] != b["history"]
    report = (tmp_path / "cached" / "report" / "report.md").read_text()
    assert re.search(r"^\| AnB-adabn +\| +0\.\d{3}", report, re.M)
    assert re.search(r"^\| AnB-adabn - base +\| +[-+]?0\.\d{3}", report, re.M)
    fig2 = figures.plot_fig2(f["cached"], "t")
    assert "AnB-adabn" in fig2.axes[0].get_legend_handles_labels()[1]
    assert "AnB-adabn" in fig2.axes[1].get_legend_handles_labels()[1]
    assert "AnB-adabn \u2212 base" in figures.plot_fig3(f["cached"], "t").axes[0].get_legend_handles_labels()[1]


def test_without_batchnorm_adabn_trains_exactly_what_anb_trains(tmp_path):
    res = _frames(tmp_path, ["model.options={widths=[8,16],fc=[16],norm=\"none\"}"], modes=("cached",))
    frame = res["cached"].frame.set_index("key")
    for anb, ada in (("r0-AnB-n1", "r0-AnB-adabn-n1"), ("r0-BnA-n3", "r0-BnA-adabn-n3")):
        a = json.loads((tmp_path / "cached" / "runs" / f"{anb}.json").read_text())
        b = json.loads((tmp_path / "cached" / "runs" / f"{ada}.json").read_text())
        assert a["history"] == b["history"] and a["metrics"] == b["metrics"] and a["seeds"] == b["seeds"]
        assert frame.loc[anb, "test_top1"] == frame.loc[ada, "test_top1"]


def test_a_target_size_has_a_key_and_a_label():
    """Run keys say ``5pct`` / ``10pc``; the report says ``5%`` / ``10 per class`` / ``full``."""
    assert [size_key(0.05), size_key(0.5), size_key(10)] == ["5pct", "50pct", "10pc"]
    assert [size_label(0.05), size_label(0.5), size_label(10.0), size_label(float("nan"))] == [
        "5%", "50%", "10 per class", "full"]
