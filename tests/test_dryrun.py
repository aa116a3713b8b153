"""`transferscope run --dry-run`: the layers and what each treatment trains, checked against a real
network and real run records; the time estimate's arithmetic by hand; a plan made without decoding
the images (a corrupt file that a run would refuse goes unnoticed, and nothing is cached)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY
from transferscope import dryrun, load_config, run_study
from transferscope.cli import app
from transferscope.models import create_model
from transferscope.store import Store
from transferscope.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [*TINY, "train.epochs=1", "treatments.cut_points=[1,3]", "execution.workers=1"]


def test_layers_are_the_networks_blocks_measured_on_an_image():
    study = Study.prepare(load_config(None, SMALL))
    rows = dryrun.layers(study)
    net = create_model("convnet", 5, study.image_shape, study.model_options).eval()
    x = torch.zeros(1, *study.image_shape)
    assert [r.name for r in rows] == list(net.block_names) and [r.n for r in rows] == list(range(1, net.num_layers + 1))
    with torch.no_grad():
        for r, block in zip(rows, net.blocks):
            x = block(x)
            assert r.output_shape == tuple(x.shape[1:]), r
            assert r.params == sum(p.numel() for p in block.parameters()), r
    assert rows[-1].copied_params == sum(p.numel() for p in net.parameters())
    assert rows[-1].output_shape == (5,)  # the head: one logit per class of the task


@pytest.fixture(scope="module")
def small_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry")
    run_study(load_config(None, [*SMALL, "treatments.target_sizes=[5]"]), out, progress=False, report=False)
    return Study.prepare(load_config(None, [*SMALL, "treatments.target_sizes=[5]"])), Store(out).records()


def test_trainable_parameters_are_what_the_runs_trained(small_records):
    study, records = small_records
    trains = dryrun.trainable_params(study)
    assert {r.status for r in records} == {"done"}
    for r in records:
        assert trains[r.treatment, r.n] == r.trainable_params, r.key
    frozen = {t for t in ("AnB", "BnB", "randomB") if (t, 3) in trains}
    assert frozen and all(trains[t, 3] < trains[t, 1] < trains["baseB", 0] for t in frozen)


def test_the_time_estimate_counts_steps_evaluations_and_shared_prefixes_by_hand(small_records):
    study, _ = small_records
    # a network of 4 blocks timed at 1, 2, 3, 4 (per image): layers n+1.. take (10 - prefix) / 10 of a step
    cal = dryrun.Calibration(step=0.5, block_forward=(1.0, 2.0, 3.0, 4.0), batch_size=8, batch_input=0.25, setup=0.125,
                             threads=1, numerics="fp32", device="cpu")
    assert cal.forward == 10.0 and cal.prefix(3) == 6.0 and cal.suffix_share(1) == pytest.approx(0.9)
    by_key = {s.key: s for s in study.plan}
    base, anb, fine = by_key["r0-baseA"], by_key["r0-AnB-n3"], by_key["r0-AnB+-n3"]
    val, test = study.eval_images(0, "A")
    budget = study.budget(base)
    # a network built, its steps on image batches prepared each time, validation every epoch, test once
    assert dryrun.run_seconds(study, base, cal, shared=False) == pytest.approx(
        0.125 + budget.steps * (0.5 + 0.25) + (budget.epochs * val + test) * 10.0)
    val, test = study.eval_images(0, "B")
    b = study.budget(anb)
    assert dryrun.run_seconds(study, fine, cal, shared=False) == pytest.approx(
        0.125 + b.steps * (0.5 + 0.25) + (b.epochs * val + test) * 10)
    # frozen at n = 3 on stored prefix outputs: 4 / 10 of a step and of a forward pass, no image batches
    shared = 0.125 + b.steps * 0.5 * 0.4 + (b.epochs * val + test) * 10 * 0.4
    assert dryrun.run_seconds(study, anb, cal, shared=True) == pytest.approx(shared)
    # not shared: image batches, and the prefix (layers 1..3) again for every image of every step
    assert dryrun.run_seconds(study, anb, cal, shared=False) == pytest.approx(shared + b.steps * (0.25 + 8 * 6.0))
    whole = dryrun.estimate_time(study, cal)
    assert whole.workers == 1 and whole.wall_seconds == whole.worker_seconds
    assert whole.worker_seconds > sum(dryrun.run_seconds(study, s, cal, shared=True) for s in study.plan)


def test_the_calibration_times_this_machine():
    study = Study.prepare(load_config(None, SMALL))
    cal = dryrun.calibrate(study, seconds=0.05)
    assert cal.step > 0 and len(cal.block_forward) == study.num_layers and all(t > 0 for t in cal.block_forward)
    assert cal.batch_input > 0 and cal.setup > 0
    assert (cal.batch_size, cal.threads, cal.device) == (study.config.train.batch_size, 1, "cpu")


def write_folder(root, classes: int, per_class: int, corrupt: str | None = None):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / f"class{c:02d}" / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"not a png")


def test_a_dry_run_decodes_no_image_and_shortens_class_lists(tmp_path):
    write_folder(tmp_path / "imgs", classes=14, per_class=10, corrupt="class03/7.png")
    args = ["run", "--dry-run", "-o", str(tmp_path / "out"), "--set", "data.dataset=imagefolder",
            "--set", f"data.root={tmp_path / 'imgs'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            *(a for o in SMALL for a in ("--set", o))]
    proc = CliRunner().invoke(app, args)
    assert proc.exit_code == 0, proc.output
    # 7 classes a task: the count and the first four names, the full lists where they are kept
    assert re.search(r"A = 7 classes \((class\d\d, ){4}\.\.\.\); B = 7 classes \(", proc.stdout), proc.stdout
    assert "splits.json" in proc.stdout
    assert re.search(r"^time: about \d+ s with 1 worker process\(es\)", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^\s+1\s+conv1\s+8x4x4\s", proc.stdout, re.MULTILINE), proc.stdout
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
    # the run itself decodes every image, and refuses the corrupt one
    run = CliRunner().invoke(app, [a for a in args if a != "--dry-run"])
    assert run.exit_code == 2 and "class03/7.png" in run.output, run.output


# ------------------------------------------------------------------------ the paper's scale, planned


def test_plan_flops_count_each_run_s_steps_and_evaluations_by_hand():
    from torch.utils.flop_counter import FlopCounterMode

    study = Study.prepare(load_config(None, [*SMALL, "treatments.names=[\"base\", \"BnB\"]",
                                             "train.frozen_features=\"recompute\""]))
    net = study.network(0, "A").eval()
    per_block = []
    h = torch.zeros(1, *study.image_shape)
    with torch.no_grad():
        for block in net.blocks:
            counter = FlopCounterMode(display=False)
            with counter:
                h = block(h)
            per_block.append(counter.get_total_flops())
    assert dryrun.block_flops(study) == tuple(float(f) for f in per_block)
    batch, total = study.config.train.batch_size, 0.0
    for spec in study.plan:
        budget, (val, test) = study.budget(spec), study.eval_images(spec.replicate, spec.target)
        trained, frozen = sum(per_block[spec.frozen:]), sum(per_block[:spec.frozen])
        images = budget.steps * batch
        # a step: forward and backward (3x) of the layers it trains, forward (1x) of the frozen ones
        total += images * (3 * trained + frozen) + (budget.epochs * val + test) * (trained + frozen)
    assert dryrun.plan_flops(study) == pytest.approx(total, rel=1e-12)


def test_the_imagenet_stand_in_has_ilsvrc_2012_s_shape():
    from transferscope.data.standin import standin

    data = standin(load_config("examples/paper-imagenet.toml").data)
    assert len(data.class_names) == 1000 and data.image_shape == (3, 227, 227)
    assert int((~data.is_test).sum()) == 1_281_167 and int(data.is_test.sum()) == 50_000
    counts = np.bincount(data.y[~data.is_test].numpy())
    assert counts.min() == 1281 and counts.max() == 1282
    assert torch.equal(data.reader.read(7), data.reader.read(7))  # seeded: the same image every time
    assert standin(load_config(None).data) is None  # digits: none (and none needed)
    natural = Study.prepare(load_config("examples/paper-imagenet.toml", ['split.kind="natural-vs-manmade"']),
                            decode=False, data=data)
    assert (len(natural.split(0).a), len(natural.split(0).b)) == (449, 551)  # the paper's 449 natural, 551 man-made


def test_the_paper_s_study_is_planned_from_its_file_without_imagenet(tmp_path):
    """examples/paper-imagenet.toml against the paper's protocol, planned on the stand-in. CaffeNet at an
    eighth of its width keeps the calibration to seconds here; the plan, budgets and steps do not depend
    on the width."""
    config = load_config("examples/paper-imagenet.toml")
    t = config.train
    assert (config.model.arch, config.model.options["dropout"], config.data.image_size) == ("caffenet", 0.5, 227)
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay, t.schedule, t.step_gamma) == (256, 0.01, 0.9, 5e-4,
                                                                                           "step", 0.1)
    assert (config.treatments.replicates, tuple(config.treatments.cut_points), config.split.kind) == (
        2, tuple(range(1, 8)), "random")
    result = CliRunner().invoke(app, ["run", "examples/paper-imagenet.toml", "--dry-run", "-o", str(tmp_path / "p"),
                                      "--set", f"data.root={tmp_path / 'no-imagenet'}",
                                      "--set", "model.options={width=0.125,dropout=0.5}"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "data: data.root: ImageNet files not found in" in out
    assert ("planned and calibrated on a synthetic stand-in of imagenet's shape instead (1000 classes, 1,281,167 "
            "training and 50,000 test images at 3x227x227, random pixels)") in out
    assert "A = 500 classes" in out and "B = 500 classes" in out
    assert "144 runs (4 base, 28 selffer, 28 selffer+, 28 transfer, 28 transfer+, 28 random), 180 epochs each" in out
    steps = int(re.search(r"r0-baseA: ([\d,]+) optimisation steps of batch 256", out).group(1).replace(",", ""))
    assert abs(steps - 450_000) / 450_000 < 0.02  # the paper's 450k iterations, within 2%
    assert re.search(r"compute: [\d.]+ [EP]FLOP for 144 networks", out)
    assert re.search(r"[\d,.]+ device-hours of this machine's cpu", out)
    assert (f"`transferscope run STUDY.toml --executor ray --address HEAD:6379 -o {tmp_path / 'p'}`") in out
    assert not (tmp_path / "p").exists()  # a dry run writes nothing
