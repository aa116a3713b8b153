"""End to end: studies from a pretrained network (``[source] kind = "study" | "checkpoint" | "timm"``),
through exactly what a user's study goes through (load_config -> run_study, and the CLI). Every
weights file is written here, every network really trained (tiny: the digits, 1 epoch); nothing
is mocked. Copied layers are compared bit for bit with the file, frozen layers after training with
the source, the probe with an independent ridge regression (scikit-learn) on the same features."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from transferscope import load_config, run_study
from transferscope.models.inputs import InputAdapter
from transferscope.models.registry import create_model
from transferscope.runner import Runner
from transferscope.store import Store
from transferscope.study import Study
from transferscope.treatments import PRETRAINED

SMALL = "model.options={widths=[8,16],fc=[16],dropout=0.5}"
QUICK = ["train.epochs=1", "treatments.replicates=1", "execution.workers=1"]
CLI = Path(sys.executable).with_name("transferscope")
DIGITS = 10  # classes of the built-in digits
IMAGENET_GREY = (sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3)


def study_run(overrides: list[str], out: Path):
    """What `transferscope run --set ... -o out` does, in this process."""
    return run_study(load_config(None, overrides), out, progress=False, report=False)


def records(out: Path) -> dict:
    return {r.key: r for r in Store(out).records()}


def runner_for(overrides: list[str]) -> Runner:
    """A runner of the study, in this process, as a worker builds it (one torch thread, the
    study's execution.threads: the same numbers as the recorded runs)."""
    study = Study.prepare(load_config(None, overrides))
    return Runner(study, lambda key: pytest.fail(f"a pretrained study loads no base network ({key})"))


def spec_of(runner: Runner, key: str):
    return next(s for s in runner.study.plan if s.key == key)


def blocks(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if int(k.split(".")[1]) < layers}


def assert_bitwise(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got and sorted(got) == sorted(want)
    for k, v in got.items():
        w = want[k]
        assert v.dtype == w.dtype and v.shape == w.shape, k
        v, w = v.detach().cpu().contiguous(), w.detach().cpu().contiguous()
        assert torch.equal(v.view(torch.uint8), w.view(torch.uint8)) if v.is_floating_point() else torch.equal(v, w), k


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------ the source study (kind "study")
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny paper-design study: base networks r0-baseA/B and random-frozen runs (not bases)."""
    out = tmp_path_factory.mktemp("source-study")
    study_run([*QUICK, SMALL, 'treatments.names=["base","random"]', "treatments.cut_points=[1]"], out)
    assert {k: r.status for k, r in records(out).items()} == {
        "r0-baseA": "done", "r0-baseB": "done", "r0-randomA-n1": "done", "r0-randomB-n1": "done"}
    return out


def from_study(base: Path) -> list[str]:
    return [*QUICK, SMALL, "source.kind=study", f"source.study={base}", "source.run=r0-baseA",
            "treatments.cut_points=[1,2]", "treatments.target_sizes=[10]", "eval.save_weights=all"]


@pytest.fixture(scope="module")
def pretrained(base_dir, tmp_path_factory):
    """The study from base network r0-baseA, run once; its overrides and directory."""
    out = tmp_path_factory.mktemp("pretrained")
    overrides = from_study(base_dir)
    result = study_run(overrides, out)
    return overrides, out, result


EXPECTED_KEYS = {"r0-baseT", "r0-baseT-s10pc",
                 *(f"r0-{t}-n{n}" for t in ("PnT", "PnT+", "probeT", "randomT") for n in (1, 2)),
                 *(f"r0-{t}-n{n}-s10pc" for t in ("PnT", "PnT+", "probeT") for n in (1, 2))}


def test_the_plan_and_records_of_a_study_from_another_studys_base_network(pretrained):
    overrides, out, result = pretrained
    recs = records(out)
    assert set(recs) == EXPECTED_KEYS == set(result.plan)  # no baseA/baseB: P is loaded, never trained
    assert {k: r.status for k, r in recs.items()} == dict.fromkeys(EXPECTED_KEYS, "done")
    assert len(result.failed) == 0
    for key, r in recs.items():
        assert r.target == "T" and r.split.A == () and len(r.split.B) == DIGITS, key  # the whole dataset
        assert r.target_size == (10 if key.endswith("-s10pc") else None), key
        if r.role in ("pretrained", "pretrained+", "probe"):
            assert (r.source, r.source_network, r.copied_layers, r.depends_on) == ("P", PRETRAINED, r.n, None), key
            assert r.frozen_layers == (0 if r.role == "pretrained+" else r.n), key
        elif r.role == "random":
            assert (r.source, r.source_network, r.frozen_layers) == (None, "r0-randomT", r.n), key
        else:
            assert (r.role, r.n, r.source, r.source_network, r.copied_layers) == ("base", 0, None, None, 0), key
        if r.role != "probe":
            assert r.steps_run > 0 and r.history, key
    study = Study.prepare(load_config(None, overrides))
    assert study.split(0).classes("T") == tuple(range(DIGITS)) and study.split(0).classes("A") == ()
    assert study.task(0, "T").train.y.unique().tolist() == list(range(DIGITS))
    # probes: fitted in closed form, no optimisation step; a linear classifier's parameters
    runner = Runner(study, lambda key: None)
    for n in (1, 2):
        r = recs[f"r0-probeT-n{n}"]
        dim = runner.probe_features(spec_of(runner, r.key), "val")[0].shape[1]
        assert r.steps_run == 0 and r.history == ()
        assert r.trainable_params == dim * DIGITS + DIGITS
        assert 0 < r.metrics["probe_ridge"] and 0 <= r.test_top1 <= 1


def test_the_report_reads_the_map_from_the_records(pretrained):
    """The report of a pretrained study: its map's cells are the records' test top-1 (one replicate:
    the mean is the value), and no sentence speaks of the split design's two directions."""
    from transferscope.driver import write_study_report
    from transferscope.report.tables import REPLICATE_UNIT

    _, out, _ = pretrained
    text = write_study_report(Store(out)).read_text()
    recs = records(out)
    assert "direction" not in text.lower()
    assert REPLICATE_UNIT["pretrained"] in text
    assert "\nInput: 8x8 images standardised by the target's own mean and std.\n" in text
    the_map = text.split("**The map.**")[1].split("\n\n", 2)[1]
    cells = {(row[1].strip(), row[2].strip()): row[3].strip()
             for row in (line.split("|") for line in the_map.splitlines()[2:])}
    for key, size in (("r0-PnT-n2", "full"), ("r0-PnT+-n1-s10pc", "10 per class"), ("r0-baseT", "full")):
        r = recs[key]
        choice = next(c for (sz, c) in cells if sz == size and c.startswith(
            "train from scratch" if r.role == "base" else f"{r.treatment} n={r.n} "))
        assert cells[size, choice].startswith(f"{r.test_top1:.3f} (1 rep"), (key, cells[size, choice])


def test_resuming_the_same_command_trains_nothing_again(pretrained):
    overrides, out, _ = pretrained
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "runs").iterdir())}
    weights = {p.name: p.stat().st_mtime_ns for p in (out / "weights").iterdir()}
    assert len(before) == len(EXPECTED_KEYS)
    result = study_run(overrides, out)
    assert len(result.failed) == 0 and set(result.plan) == EXPECTED_KEYS
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "runs").iterdir())} == before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "weights").iterdir()} == weights


def test_copied_layers_are_the_source_runs_bit_for_bit(pretrained, base_dir):
    overrides, _, _ = pretrained
    runner = runner_for(overrides)
    saved = Store(base_dir).load_weights("r0-baseA")
    spec = spec_of(runner, "r0-PnT-n2")
    assert_bitwise(blocks(runner.source_network(spec).state_dict(), 2), blocks(saved, 2))
    net = runner.build_network(spec)  # before training: layers 1..2 copied, 3.. re-initialised
    assert_bitwise(blocks(net.state_dict(), 2), blocks(saved, 2))
    assert not torch.equal(net.state_dict()["blocks.2.1.weight"], saved["blocks.2.1.weight"])


def test_frozen_layers_are_unchanged_by_training_and_fine_tuned_ones_move(pretrained):
    overrides, _, _ = pretrained
    runner = runner_for(overrides)
    spec = spec_of(runner, "r0-PnT-n2")
    source = blocks(runner.source_network(spec).state_dict(), 2)  # weights and BatchNorm statistics
    start = runner.build_network(spec).state_dict()
    result = runner.run(spec)
    assert result.record.status == "done" and result.record.steps_run > 0
    trained = result.weights  # eval.save_weights = "all": every run's final weights, float32 here
    assert_bitwise(blocks(trained, 2), source)
    assert not torch.equal(trained["blocks.2.1.weight"], start["blocks.2.1.weight"])  # the rest trained
    tuned = runner.run(spec_of(runner, "r0-PnT+-n1"))
    assert tuned.record.status == "done"
    assert not torch.equal(tuned.weights["blocks.0.0.weight"], source["blocks.0.0.weight"])


def test_the_probe_is_a_ridge_regression_on_the_same_features(pretrained):
    """scikit-learn's Ridge on the runner's own features, standardised as the probe does, with each
    ridge of the grid (relative to the largest squared singular value: alpha = ridge * s_max^2),
    the best on validation scored on test: the same ridge and exactly the same top-1."""
    from sklearn.linear_model import Ridge

    overrides, out, _ = pretrained
    recs = records(out)
    runner = runner_for(overrides)
    for key in ("r0-probeT-n1", "r0-probeT-n2", "r0-probeT-n1-s10pc"):
        spec = spec_of(runner, key)
        (xtr, ytr), (xv, yv), (xt, yt) = (runner.probe_features(spec, p) for p in ("train", "val", "test"))
        assert xtr.dtype == np.float64 and xtr.shape[1] == xv.shape[1] == xt.shape[1]
        mean, std = xtr.mean(0), xtr.std(0)
        std[std < 1e-12] = 1.0
        xtr, xv, xt = ((x - mean) / std for x in (xtr, xv, xt))
        s_max = np.linalg.svd(xtr, compute_uv=False)[0]
        onehot = np.eye(DIGITS)[ytr]
        scores = []
        for ridge in np.logspace(-6, 1, 15):
            fit = Ridge(alpha=ridge * s_max**2, solver="svd").fit(xtr, onehot)
            scores.append((np.mean(fit.predict(xv).argmax(1) == yv), -ridge, fit))
        best = max(range(len(scores)), key=lambda i: scores[i][:2])  # ties: the smallest ridge
        val_top1, minus_ridge, fit = scores[best]
        rec = recs[key]
        assert rec.metrics["probe_ridge"] == pytest.approx(-minus_ridge, rel=1e-12), key
        assert rec.metrics["val_top1"] == val_top1, key
        # exact: the two solvers agree to ~1e-12 on the scores, far below any gap between classes
        assert rec.test_top1 == np.mean(fit.predict(xt).argmax(1) == yt), key


# ------------------------------------------------------------------ checkpoint files and timm's weights
def write_torchvision_resnet18(path: Path) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(11)
    state = torchvision.models.resnet18(num_classes=7).state_dict()  # library key names (conv1, layer1, fc)
    save_file(state, path) if path.suffix == ".safetensors" else torch.save(state, path)
    return state


def write_timm_resnet18(path: Path) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(12)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file(state, path)
    return state


FILES = {"checkpoint-safetensors": ("checkpoint", "resnet18", "resnet18.safetensors", write_torchvision_resnet18),
         "checkpoint-pt": ("checkpoint", "resnet18", "resnet18.pt", write_torchvision_resnet18),
         "timm-file": ("timm", "timm/resnet18", "timm-resnet18.safetensors", write_timm_resnet18)}


@pytest.fixture(scope="module", params=list(FILES))
def file_study(request, tmp_path_factory):
    """A study from a weights file written here (resnet18: 100 training images, one epoch)."""
    kind, arch, name, write = FILES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    state = write(root / name)
    overrides = [*QUICK, f"source.kind={kind}", f"source.path={root / name}", f"model.arch={arch}",
                 "treatments.cut_points=[1,2]", "data.train_per_class=10",
                 "model.options={min_size=32}"]  # not the weights' 224 px: 49 times cheaper
    result = study_run(overrides, root / "out")
    return overrides, root / "out", result, state


def test_a_study_from_a_weights_file(file_study):
    overrides, out, result, state = file_study
    keys = {"r0-baseT", *(f"r0-{t}-n{n}" for t in ("PnT", "PnT+", "probeT", "randomT") for n in (1, 2))}
    recs = records(out)
    assert set(recs) == keys == set(result.plan)
    assert {k: r.status for k, r in recs.items()} == dict.fromkeys(keys, "done"), {k: r.error for k, r in recs.items()}
    assert all(r.train_images == 10 * DIGITS for r in recs.values())
    runner = runner_for(overrides)
    # the file's pretrained input standardisation (ImageNet's, grey: the mean of the channels')
    assert runner.study.task(0, "T").mean == pytest.approx((IMAGENET_GREY[0],))
    assert runner.study.task(0, "T").std == pytest.approx((IMAGENET_GREY[1],))
    spec = spec_of(runner, "r0-PnT-n2")
    source = runner.source_network(spec)
    names = source.foreign_names  # our key -> the library's key in the file
    want = {k: state[names[k]] for k in blocks(source.state_dict(), 2)}
    assert any(names[k] != k for k in want) and any(k.startswith("blocks.1.") for k in want)
    assert_bitwise(blocks(source.state_dict(), 2), want)
    assert_bitwise(blocks(runner.build_network(spec).state_dict(), 2), want)
    # the rest of P is not read: layers 3.. are the network's own initialisation
    third = next(k for k in source.state_dict() if k.startswith("blocks.2.") and k.endswith("weight"))
    assert not torch.equal(source.state_dict()[third], state[names[third]])


def adapter(net: torch.nn.Module) -> InputAdapter:
    return next(m for m in net.modules() if isinstance(m, InputAdapter))


@pytest.mark.parametrize(("kind", "arch", "write", "option", "side"), [
    ("checkpoint", "resnet18", write_torchvision_resnet18, "min_size", 224),
    ("timm", "timm/resnet18", write_timm_resnet18, "min_size", 224)])
def test_the_input_side_follows_the_weights_unless_overridden(tmp_path, kind, arch, write, option, side):
    """A checkpoint or timm source sees the digits (8x8) at the side its weights were trained at
    (torchvision's ImageNet crop, timm's pretrained_cfg); model.options sets another; a network
    trained here (source.kind = "study", or the split design) keeps the architecture's default."""
    write(tmp_path / "w.safetensors")
    base = [*QUICK, f"source.kind={kind}", f"source.path={tmp_path / 'w.safetensors'}", f"model.arch={arch}",
            "treatments.cut_points=[1]"]
    study = Study.prepare(load_config(None, base))
    assert study.model_options == {option: side} and study.input_config["input_size"][-1] == side
    assert study.input_words().startswith(f"8x8 images upsampled to a shorter side of at least {side} px "
                                          f"(model.options.{option} unset: the side the weights were trained at")
    with torch.device("meta"):
        assert adapter(study.network(0, "T")).size == (side, side)
    own = Study.prepare(load_config(None, [*base, f"model.options={{{option}=40}}"]))
    assert own.model_options == {option: 40}
    with torch.device("meta"):
        assert adapter(own.network(0, "T")).size == (40, 40)
    split = Study.prepare(load_config(None, [*QUICK, f"model.arch={arch}", "treatments.cut_points=[1]"]))
    assert split.model_options == {}
    with torch.device("meta"):
        assert adapter(split.network(0, "A")).size == (32, 32)  # the builders' min_size default


# ------------------------------------------------------------------------------------ bad inputs, CLI
@pytest.fixture(scope="module")
def refusals(base_dir, tmp_path_factory):
    """Each bad input given to `transferscope run`, the commands run side by side: (exit code,
    stderr, whether the output directory exists) by case, and what each message must name."""
    root = tmp_path_factory.mktemp("refusals")
    convnet = [*QUICK, SMALL, "treatments.cut_points=[1,2]"]
    write_torchvision_resnet18(root / "resnet18.safetensors")
    wider = create_model("convnet", DIGITS, (1, 8, 8), {"widths": [12, 16], "fc": [16]}, init_seed=0).state_dict()
    save_file(wider, root / "wider.safetensors")
    own = create_model("convnet", DIGITS, (1, 8, 8), {"widths": [8, 16], "fc": [16]}, init_seed=0).state_dict()
    first = next(k for k in own if wider[k].shape != own[k].shape)
    torch.save({"state_dict": own, "args": argparse.Namespace(lr=0.1)}, root / "pickled.pt")
    cases = {
        "another architecture": ([*convnet, "source.kind=checkpoint", f"source.path={root / 'resnet18.safetensors'}"],
                                 [f"source.path: {root / 'resnet18.safetensors'}: holds weights of another architecture"]),
        "shape mismatch": ([*convnet, "source.kind=checkpoint", f"source.path={root / 'wider.safetensors'}"],
                           [f"source.path: {root / 'wider.safetensors'}: {first} has shape {tuple(wider[first].shape)} "
                            f"in the file, this network's {first} has {tuple(own[first].shape)}"]),
        "missing file": ([*convnet, "source.kind=checkpoint", f"source.path={root / 'none.safetensors'}"],
                         [f"source.path: {root / 'none.safetensors'}: no such file"]),
        "pickle": ([*convnet, "source.kind=checkpoint", f"source.path={root / 'pickled.pt'}"],
                   [f"source.path: {root / 'pickled.pt'}: holds pickled objects other than tensors",
                    "argparse.Namespace"]),
        "cut point": ([*QUICK, SMALL, "treatments.cut_points=[99]", "source.kind=study", f"source.study={base_dir}",
                       "source.run=r0-baseA"], ["treatments.cut_points: n=99 is out of range for convnet"]),
        "not a base network": ([*convnet, "source.kind=study", f"source.study={base_dir}", "source.run=r0-randomA-n1"],
                               ["source.run: 'r0-randomA-n1' is a randomA run, not a base network", str(base_dir),
                                "r0-baseA, r0-baseB"]),
    }
    procs = {}
    for i, (case, (overrides, _)) in enumerate(cases.items()):
        out = root / f"out{i}"
        args = [str(CLI), "run", "-q", "-o", str(out), *(a for o in overrides for a in ("--set", o))]
        procs[case] = (out, subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = {}
    for case, (out, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        done[case] = (proc.returncode, stderr, out.exists(), cases[case][1])
    return done


@pytest.mark.parametrize("case", ["another architecture", "shape mismatch", "missing file", "pickle", "cut point",
                                  "not a base network"])
def test_a_bad_source_is_one_line_exit_2_and_nothing_written(refusals, case):
    code, stderr, written, names = refusals[case]
    line = stderr.strip()
    assert code == 2, stderr
    assert "\n" not in line and line.startswith("transferscope: error: "), stderr
    for words in names:
        assert words in line, (words, line)
    assert not written  # refused before anything was written or trained


def test_a_file_that_is_no_checkpoint_says_what_torch_found(tmp_path):
    """torch.load raises KeyError(<the first bytes as a number>) for a file that is neither a zip
    archive nor a pickle: the message names the error's type, not a bare number."""
    from transferscope.errors import UserError
    from transferscope.sources import read_state_dict

    (tmp_path / "junk.pt").write_bytes(b"junk\n")
    with pytest.raises(UserError) as e:
        read_state_dict(tmp_path / "junk.pt", "source.path: junk.pt")
    assert str(e.value).startswith("source.path: junk.pt: cannot read it as a PyTorch checkpoint (KeyError: ")
