"""The CUDA paths: device placement, bf16 autocast, channels-last, and fractional GPUs under Ray.

They run where a GPU is present and skip with the reason elsewhere (this project's CI machines have
none); the CPU paths they mirror are tested everywhere else in the suite."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from transferscope import load_config, load_results, run_study
from transferscope.precision import Numerics, resolve_device
from transferscope.store import Store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

STUDY = [*TINY, "treatments.cut_points=[1,2]", "execution.device=\"cuda\""]


def test_auto_resolves_to_the_gpu_with_bf16_where_it_has_it() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda"
    numerics = Numerics.resolve(load_config(None, TINY).train, device)
    assert numerics.name == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    model = numerics.prepare_model(torch.nn.Conv2d(3, 4, 3))
    x = numerics.prepare_input(torch.zeros(2, 3, 8, 8, device=device))
    with numerics.autocast():
        y = model.to(device)(x)
    assert y.device.type == "cuda"
    assert numerics.dtype is None or y.dtype == numerics.dtype


def test_a_study_on_the_gpu_records_its_device_and_precision(tmp_path) -> None:
    run_study(load_config(None, [*STUDY, "execution.workers=1"]), tmp_path / "s", progress=False, report=False)
    records = Store(tmp_path / "s").records()
    assert records and all(r.status == "done" for r in records)
    assert {r.device.split(":")[0] for r in records} == {"cuda"}
    assert {r.precision for r in records} == {"bf16" if torch.cuda.is_bf16_supported() else "fp32"}


def test_frozen_features_cached_on_the_gpu_equal_recomputed_ones(tmp_path) -> None:
    """The cached prefix outputs live on the device; with augmentation off the frozen runs see the
    same inputs either way (bf16 rounding of one pass vs another aside: the same kernels, so equal)."""
    common = [*STUDY, "execution.workers=1", "train.augment=false", "train.precision=\"fp32\"",
              "treatments.names=[\"base\", \"AnB\"]"]
    run_study(load_config(None, [*common, "train.frozen_features=\"cached\""]), tmp_path / "c", progress=False,
              report=False)
    run_study(load_config(None, [*common, "train.frozen_features=\"recompute\""]), tmp_path / "r", progress=False,
              report=False)
    cached, recomputed = (load_results(str(tmp_path / d)).set_index("key")["test_top1"] for d in "cr")
    # GPU convolutions may pick different algorithms for the two paths: a tolerance of a few images
    assert (cached - recomputed).abs().max() <= 0.05


def test_fractional_gpus_let_two_runs_share_one_device_under_ray(tmp_path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'transferscope[ray]')")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, configure_logging=False)
    try:
        run_study(load_config(None, [*STUDY, "execution.executor=\"ray\"", "execution.gpus_per_run=0.5"]),
                  tmp_path / "s", progress=False, report=False)
    finally:
        ray.shutdown()
    records = Store(tmp_path / "s").records()
    assert records and all(r.status == "done" for r in records)
    assert {r.device.split(":")[0] for r in records} == {"cuda"}
