"""The cached frozen path must compute what the naive path computes."""

import json

import pytest
import torch

from transferscope import load_config, run_study
from transferscope.features import FeatureBank, plan_views
from transferscope.precision import Numerics
from transferscope.treatments import group_jobs

from conftest import TINY

FROZEN = [*TINY, "train.epochs=3", "execution.workers=1", 'treatments.names=["base", "BnB", "AnB", "random"]']


def frames(tmp_path, extra):
    out = {}
    for mode in ("cached", "recompute"):
        cfg = load_config(None, [*FROZEN, *extra, f"train.frozen_features={mode}"])
        res = run_study(cfg, tmp_path / mode, progress=False, report=False)
        out[mode] = res.frame.sort_values("key").reset_index(drop=True)
    return out


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cached_equals_naive_without_augmentation(tmp_path, precision):
    f = frames(tmp_path, ["train.augment=false", f"train.precision={precision}"])
    # not one code path: the cached prefix runs on chunks of 512 images, the naive one on each
    # training batch. Equal bit for bit because an image's conv/linear outputs do not depend on the
    # batch it is in: true of oneDNN's AVX-512 bf16, AVX-512, AVX2 and SSE4.1 kernels
    # (ONEDNN_MAX_CPU_ISA) with MKL's default or SSE4.2 ones, and of the AMX machine of
    # docs/performance.md. A kernel whose reduction order depended on the batch size would break
    # features.py's promise, which this test guards; no tolerance would be the right fix.
    cols = ["key", "status", "test_top1", "val_top1", "val_best_k_mean", "trainable_params"]
    assert f["cached"][cols].equals(f["recompute"][cols])
    for key in ("r0-AnB-n2", "r0-randomA-n3", "r0-BnB-n1"):
        a = json.loads((tmp_path / "cached" / "runs" / f"{key}.json").read_text())
        b = json.loads((tmp_path / "recompute" / "runs" / f"{key}.json").read_text())
        assert a["history"] == b["history"]  # every epoch's loss, bit for bit
        assert a["feature_cache"]["views"] == 1 and b["feature_cache"] is None


def test_cached_with_augmentation_uses_views(tmp_path):
    f = frames(tmp_path, ["train.augment=true", "train.feature_views=2"])
    rec = json.loads((tmp_path / "cached" / "runs" / "r0-AnB-n2.json").read_text())
    assert rec["feature_cache"]["views"] == 2 and rec["feature_cache"]["memory_mb"] > 0
    # a different (documented) shortcut: not identical, but the same task learnt
    a, b = f["cached"]["test_top1"], f["recompute"]["test_top1"]
    assert (a - b).abs().mean() < 0.15


def test_memory_limit_bounds_the_views(tiny_study):
    from conftest import build_network

    spec = next(s for s in tiny_study.plan if s.treatment == "randomB" and s.n == 1)
    task = tiny_study.task(0, "B")
    net = tiny_study.new_network(spec, "B", spec.source_net)
    cpu = Numerics(torch.device("cpu"), None, False)
    assert plan_views(net, task, cpu, (1, 2), 8, True, 2**30) == 8
    with torch.no_grad():  # bytes per image at the widest level (input, layer 1 or layer 2)
        x = torch.zeros(1, *task.train.x.shape[1:])
        widest = max(4 * x.numel(), 4 * net.blocks[0](x).numel(), 4 * net.blocks[1](net.blocks[0](x)).numel())
    one_view = widest * len(task.train)
    fixed = widest * (len(task.val) + len(task.test))
    assert plan_views(net, task, cpu, (1, 2), 8, True, fixed + 3.5 * one_view) == 3
    assert plan_views(net, task, cpu, (1, 2), 8, True, fixed) == 0
    bank = FeatureBank(net, task, cpu, views=3, augmented=True, flip=False, seed=0)
    f1 = bank.at(1)
    assert len(f1.train_views) == 3 and not torch.equal(f1.train_views[0], f1.train_views[1])
    f2 = bank.at(2)
    with torch.no_grad():
        net.eval()
        # val (179 images) is one chunk, so the same kernel on the same tensor: equal in practice;
        # rtol 1e-5 + atol 1e-6 (about 100 float32 ulps at these magnitudes, below 1) would admit
        # another chunking's order of float32 sums
        assert torch.allclose(f2.val, net.blocks[1](f1.val), atol=1e-6)
    with pytest.raises(ValueError, match="cannot go back"):
        bank.at(1)
    built = build_network(tiny_study, spec, {})
    assert built.num_frozen == 1


def test_frozen_runs_group_by_source_and_target(tiny_study):
    jobs = group_jobs(tiny_study.plan, share_frozen=True)
    keys = [j.key for j in jobs]
    assert keys[:2] == ["r0-baseA", "r0-baseB"]
    groups = {j.key: [s.key for s in j.specs] for j in jobs if len(j.specs) > 1}
    assert groups["r0-baseA->B"] == ["r0-AnB-n1", "r0-AnB-n2", "r0-AnB-n3"]
    assert groups["r0-randomA->A"] == ["r0-randomA-n1", "r0-randomA-n2", "r0-randomA-n3"]
    assert sum(len(j.specs) for j in jobs) == len(tiny_study.plan)
    assert all(len(j.specs) == 1 for j in group_jobs(tiny_study.plan, share_frozen=False))
