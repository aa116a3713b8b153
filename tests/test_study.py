import json
import re

import pytest
import torch
from safetensors.torch import load_file

from transferscope import load_config, load_results, run_study
from transferscope.models import create_model
from transferscope.seeds import derive_seed
from transferscope.errors import UserError
from transferscope.record import RunRecord
from transferscope.store import Store
from transferscope.study import Study

from conftest import TINY

SMALL = [*TINY, "treatments.cut_points=[1, 3]", "train.epochs=2"]


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return run_study(load_config(None, SMALL), out, progress=False)


def test_every_treatment_at_every_cut_point_in_both_directions(small_study):
    f = small_study.frame
    assert (f["status"] == "done").all()
    expected = {"baseA", "baseB"} | {f"{t}@{n}" for n in (1, 3) for t in
                                     ("BnB", "BnB+", "AnB", "AnB+", "randomB", "AnA", "AnA+", "BnA", "BnA+", "randomA")}
    got = {t if t.startswith("base") else f"{t}@{n}" for t, n in zip(f["treatment"], f["n"])}
    assert got == expected and len(f) == len(expected)
    assert f["test_top1"].between(0, 1).all()


def test_records_carry_everything(small_study):
    rec = json.loads((small_study.output / "runs" / "r0-AnB+-n3.json").read_text())
    for field in ("key", "treatment", "role", "n", "target", "source", "split", "seeds", "config", "history",
                  "metrics", "trainable_params", "total_params", "wall_time_s", "versions", "git", "status"):
        assert field in rec, field
    assert rec["seeds"]["init"] == derive_seed("init", 0, "r0-AnB+-n3")
    assert rec["config"]["train"]["epochs"] == 2 and len(rec["history"]) == 2
    assert rec["versions"]["torch"] == torch.__version__.split("+")[0] or rec["versions"]["torch"].startswith(torch.__version__[:4])
    assert rec["trainable_params"] == rec["total_params"]  # fine-tuned: everything trains
    frozen = json.loads((small_study.output / "runs" / "r0-AnB-n3.json").read_text())
    assert frozen["trainable_params"] < frozen["total_params"]
    split = json.loads((small_study.output / "splits.json").read_text())["r0"]
    assert set(split["A"]).isdisjoint(split["B"]) and len(split["A"]) + len(split["B"]) == 10
    assert rec["split"]["A"] == split["A"]


def test_base_weights_saved_and_equal_to_copied_layers(small_study):
    w = load_file(small_study.output / "weights" / "r0-baseA.safetensors")
    cfg = load_config(None, SMALL)
    net = create_model("convnet", 5, (1, 8, 8), cfg.model.options)
    net.load_state_dict(w)  # a complete state dict of the architecture
    assert not (small_study.output / "weights" / "r0-AnB-n1.safetensors").exists()


def test_resolved_config_saved_and_reloads(small_study):
    assert load_config(small_study.output / "config.toml") == load_config(None, SMALL)


def test_study_is_deterministic(small_study, tmp_path):
    again = run_study(load_config(None, SMALL), tmp_path, progress=False, report=False)
    cols = ["key", "status", "test_top1", "val_top1", "val_best_k_mean", "trainable_params"]
    a = small_study.frame[cols].sort_values("key").reset_index(drop=True)
    b = again.frame[cols].sort_values("key").reset_index(drop=True)
    assert a.equals(b)


def test_load_results_is_the_export_table(small_study):
    f = load_results(str(small_study.output))
    assert len(f) == len(small_study.frame) and {"key", "test_top1", "n", "status"} <= set(f.columns)


def test_diverged_bases_skip_their_dependants_and_the_study_goes_on(tmp_path):
    cfg = load_config(None, [*TINY, "treatments.cut_points=[1]", "train.lr=1e12", "train.weight_decay=0.0",
                             'treatments.names=["base", "AnB", "random"]', 'treatments.targets=["B"]'])
    res = run_study(cfg, tmp_path, progress=False, report=False)
    st = dict(zip(res.frame["key"], res.frame["status"]))
    assert st["r0-baseA"] == "diverged" and st["r0-baseB"] == "diverged"
    assert st["r0-AnB-n1"] == "skipped"
    assert st["r0-randomB-n1"] in ("done", "diverged")  # needs no base network: it still ran
    rec = json.loads((tmp_path / "runs" / "r0-AnB-n1.json").read_text())
    assert rec["error"] == "source network r0-baseA is diverged"
    assert json.loads((tmp_path / "runs" / "r0-baseA.json").read_text())["diverged_epoch"] >= 1
    # divergence is deterministic: a rerun neither retrains the bases nor retries their dependants
    again = run_study(cfg, tmp_path, progress=False, report=False)
    assert dict(zip(again.frame["key"], again.frame["status"])) == st
    assert json.loads((tmp_path / "runs" / "r0-AnB-n1.json").read_text()) == rec


def test_a_rerun_heals_runs_stranded_by_a_failed_source(tmp_path, capsys):
    """A base recorded failed (as when the OOM killer takes its worker three times) leaves its
    dependants skipped; the same command again retrains the base and then every dependant, to the
    records an uninterrupted study gives."""
    from transferscope.runner import make_record

    cfg = load_config(None, [*TINY, "treatments.cut_points=[1]", 'treatments.targets=["B"]'])
    whole = run_study(cfg, tmp_path / "whole", progress=False, report=False).frame.set_index("key")
    out = tmp_path / "healed"
    run_study(cfg, out, progress=False, report=False)
    study = Study.prepare(cfg)
    specs = {s.key: s for s in study.plan}
    stranded = sorted(k for k, s in specs.items() if s.depends_on == "r0-baseA")
    assert stranded  # AnB and AnB+ copy baseA
    store = Store(out)
    store.record(make_record(study, specs["r0-baseA"], status="failed",
                             error="worker process died 3 times (exit code -9)"))
    store.weights_path("r0-baseA").unlink()
    for key in stranded:
        store.record(make_record(study, specs[key], status="skipped", error="source network r0-baseA is failed"))

    healed = run_study(cfg, out, progress=True, report=False).frame.set_index("key")
    assert f"retrying {1 + len(stranded)} run(s)" in capsys.readouterr().err
    assert (healed["status"] == "done").all()
    assert healed.loc[whole.index, "test_top1"].tolist() == whole["test_top1"].tolist()  # deterministic


def test_report_written(small_study):
    report = small_study.output / "report"
    for name in ("report.md", "fig2.png", "fig3.png", "layers.csv", "layers.md"):
        assert (report / name).stat().st_size > 0, name
    text = (report / "report.md").read_text()
    assert "digits" in text and "convnet" in text


def test_fine_tuned_weights_kept_by_default(small_study):
    assert (small_study.output / "weights" / "r0-AnB+-n1.safetensors").exists()
    assert not (small_study.output / "weights" / "r0-randomB-n1.safetensors").exists()


def test_target_sizes_repeat_the_transfer_treatments_on_less_data(tmp_path):
    cfg = load_config(None, [*TINY, "treatments.cut_points=[1]", "treatments.target_sizes=[0.25, 3]",
                             'treatments.targets=["B"]', "train.epochs=1"])
    res = run_study(cfg, tmp_path, progress=False)
    f = res.frame
    small = f[f["target_size"].notna()]
    assert set(small["key"]) == {"r0-baseB-s25pct", "r0-AnB-n1-s25pct", "r0-AnB+-n1-s25pct",
                                 "r0-baseB-s3pc", "r0-AnB-n1-s3pc", "r0-AnB+-n1-s3pc"}
    full_images = int(f.loc[f["key"] == "r0-baseB", "train_images"].iloc[0])
    per_size = dict(zip(small["key"], small["train_images"]))
    assert per_size["r0-baseB-s3pc"] == 3 * 5
    assert abs(per_size["r0-AnB-n1-s25pct"] - full_images / 4) <= 5
    # the transfers still copy from the base network trained on all of A
    rec = json.loads((tmp_path / "runs" / "r0-AnB-n1-s3pc.json").read_text())
    assert rec["depends_on"] == "r0-baseA" and rec["target_size"] == 3
    # the per-layer report uses the full-data runs only
    table = (tmp_path / "report" / "layers.csv").read_text()
    assert table.count("\n") > 3
    # beside the recommendation, the budget each size trained with
    report = (tmp_path / "report" / "report.md").read_text()
    steps = int(f.loc[f["key"] == "r0-baseB", "budget_steps"].iloc[0])
    assert re.search(r"Training budget: each network on reduced target data trained for as many optimisation steps "
                     r".*size_budget = \"steps\".*3 per class: \d+ epochs, " + str(steps) + r" steps; 25%: \d+ "
                     r"epochs, " + str(steps) + r" steps; full: 1 epochs, (\d+-)?" + str(steps) + r" steps\.", report), report
    # (on all their data, baseA and the runs on task B train one epoch of their own task's images: task A may
    # hold fewer, so fewer steps, "6-7 steps")


BUDGET_STUDY = [*TINY, "treatments.cut_points=[1]", "treatments.target_sizes=[0.25, 3]", 'treatments.targets=["B"]',
                'treatments.names=["base", "AnB", "AnB+"]', "execution.workers=1"]


@pytest.mark.parametrize("rule", ["steps", "epochs"])
def test_each_target_size_trains_the_budget_its_rule_gives(tmp_path, monkeypatch, rule):
    """Real runs: with the "steps" rule every run on reduced data takes as many optimisation steps
    as the base network on the full set (more epochs, the schedule stretched over them, frozen
    runs on cached features included); with "epochs" it keeps train.epochs. Progress counts the
    epochs each run really has."""
    import transferscope.driver as driver
    from transferscope.progress import Progress

    bars: list[Progress] = []
    started: dict[str, int] = {}

    class Recorded(Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

        def run_started(self, key: str, epochs: int) -> None:
            started.setdefault(key, epochs)
            super().run_started(key, epochs)

    monkeypatch.setattr(driver, "Progress", Recorded)
    cfg = load_config(None, [*BUDGET_STUDY, f"treatments.size_budget={rule}"])
    f = run_study(cfg, tmp_path, progress=False, report=False).frame.set_index("key")
    assert (f["status"] == "done").all() and (f["budget_rule"] == rule).all()
    full = f.loc["r0-baseB"]
    assert full["budget_epochs"] == full["epochs_run"] == 2
    assert full["steps_run"] == full["budget_steps"] == 2 * (full["train_images"] // 64)
    small = f.loc[f["target_size"].notna()]
    per_epoch = small["train_images"] // 64 + (small["train_images"] < 64)  # fewer than a batch: one batch
    assert len(small) == 6 and (small["epochs_run"] == small["budget_epochs"]).all()
    assert (small["steps_run"] == small["budget_steps"]).all()
    if rule == "steps":
        assert (small["steps_run"] == full["steps_run"]).all()
        assert (small["epochs_run"] == -(-full["steps_run"] // per_epoch)).all() and (small["epochs_run"] > 2).all()
        frozen = json.loads((tmp_path / "runs" / "r0-AnB-n1-s3pc.json").read_text())
        assert frozen["feature_cache"]["views"] >= 2  # trained on cached features: epoch e on view e mod views
        lrs = [h["lr"] for h in frozen["history"]]
        # cosine falls to ~0 over the whole run (its last epoch starts 13/14 of the way), not over train.epochs
        assert len(lrs) == 14 and lrs[0] == cfg.train.lr and lrs[-1] < 0.02 * cfg.train.lr
        assert all(a > b for a, b in zip(lrs, lrs[1:]))
    else:
        assert (small["epochs_run"] == 2).all() and (small["steps_run"] == 2 * per_epoch).all()
    # progress: the total and each run's count are the epochs the runs really trained
    (bar,) = bars
    assert bar.total_epochs == bar.done_epochs == f["epochs_run"].sum()
    assert started == dict(f["budget_epochs"])


def test_train_images_are_counted_without_loading_a_task():
    study = Study.prepare(load_config(None, [*TINY, "data.train_per_class=60"]))
    for size in (None, 0.25, 0.05, 3, 1000):
        for name in ("A", "B"):
            assert study.train_images(0, name, size) == len(study.task(0, name, size).train), (name, size)


def test_a_study_grows_in_place_and_keeps_what_it_recorded(tmp_path):
    only_bases = load_config(None, [*TINY, 'treatments.names=["base"]', "execution.workers=1"])
    run_study(only_bases, tmp_path, progress=False, report=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "runs").glob("*.json")}
    assert set(before) == {"r0-baseA.json", "r0-baseB.json"}
    full = load_config(None, [*TINY, "treatments.cut_points=[1]", "execution.workers=1"])
    res = run_study(full, tmp_path, progress=False, report=False)
    assert len(res.frame) == 2 + 2 * 5
    assert all((tmp_path / "runs" / name).read_bytes() == data for name, data in before.items())
    assert load_config(tmp_path / "config.toml") == full  # the saved configuration follows the plan


def test_a_study_whose_runs_drew_other_random_streams_is_not_resumed(tmp_path):
    """A directory of a version that seeded splits with split.seed + replicate and drew data order,
    augmentation and dropout from one stream (its study.json names no scheme of streams) is
    refused, one line, before anything is written; its records stay as they were."""
    only_bases = load_config(None, [*TINY, 'treatments.names=["base"]', "execution.workers=1"])
    run_study(only_bases, tmp_path, progress=False, report=False)
    identity = json.loads((tmp_path / "study.json").read_text())
    del identity["streams"]  # what study.json of that version holds
    (tmp_path / "study.json").write_text(json.dumps(identity))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(UserError, match=r"drew their random numbers as an earlier version .* use another --output"):
        run_study(load_config(None, [*TINY, "treatments.cut_points=[1]", "execution.workers=1"]), tmp_path,
                  progress=False, report=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert len(Store(tmp_path).records()) == 2  # status, export and report still read it


def test_longer_reduced_data_runs_do_not_make_a_short_study_look_assessed():
    """Under the "steps" budget a reduced-data base network trains for many more epochs than the
    study's 2: its curve must not stand in for the full-data networks' convergence check."""
    from transferscope.analysis.convergence import check_convergence

    def base(key, size, epochs):
        return RunRecord(key=key, replicate=0, treatment="baseB", role="base", target="B", n=0, status="done",
                         target_size=size, history=tuple({"val_top1": 0.5 + 0.01 * e} for e in range(epochs)))

    c = check_convergence([base("r0-baseB", None, 2), base("r0-baseB-s25pct", 0.25, 14)], epochs=2)
    assert not c.assessable
    assert check_convergence([base("r0-baseB", None, 3)], epochs=3).assessable
