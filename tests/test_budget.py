"""A training budget found from the data (``train.budget = "plateau"``): each base network trained on
all its data drops its learning rate at validation plateaus and stops after a chosen number of drops
(or at ``train.epochs``); every other run on its task trains as many steps, with the same drops.

The plateaus are made deterministic by the threshold: validation top-1 lies in [0, 1], so its slope
over a window of 2 epochs is at most 1 per epoch, and with ``plateau_threshold = 1`` every window
ends on a plateau, whatever the weights (and so whatever the kernels)."""

from __future__ import annotations

import pytest
from conftest import TINY

from transferscope import load_config, run_study
from transferscope.driver import Schedule
from transferscope.errors import UserError
from transferscope.record import RunRecord
from transferscope.store import Store
from transferscope.treatments import Job, RunSpec

pytestmark = pytest.mark.usefixtures("one_thread")

PLATEAU = ["train.budget=\"plateau\"", "train.schedule=\"step\"", "train.plateau_window=2",
           "train.plateau_threshold=1.0", "treatments.cut_points=[1,2]", "execution.workers=1"]


@pytest.fixture(scope="module")
def plateau_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("plateau") / "study"
    config = load_config(None, [*TINY, *PLATEAU, "train.epochs=8", "train.plateau_drops=2"])
    run_study(config, out, progress=False)
    return out, config


def test_bases_find_their_budget_and_every_other_run_follows_its_target_s_base(plateau_study) -> None:
    out, config = plateau_study
    records = {r.key: r for r in Store(out).records()}
    gamma, lr = config.train.step_gamma, config.train.lr
    for task in "AB":
        base = records[f"r0-base{task}"]
        per_epoch = base.steps_run // 6
        # windows of 2 epochs, each a plateau: drops after epochs 2 and 4; epoch 6 ends a third: stop
        assert base.budget.found_by == base.key and base.budget.stopped == "plateau after 2 drop(s), at epoch 6"
        assert base.budget.epochs == 6 and base.budget.steps == base.steps_run == 6 * per_epoch
        assert base.budget.drops == (2 * per_epoch, 4 * per_epoch)
        assert [h["lr"] for h in base.history] == pytest.approx([lr, lr, lr * gamma, lr * gamma, lr * gamma**2,
                                                                 lr * gamma**2])
        followers = [r for r in records.values() if r.target == task and r.key != base.key]
        assert len(followers) == 10  # on target B: BnB, BnB+, AnB, AnB+ and randomB, at 2 cut points
        for r in followers:
            assert r.budget.found_by == base.key and r.budget.drops == base.budget.drops
            assert r.steps_run == base.steps_run, r.key
            assert [h["lr"] for h in r.history] == pytest.approx([h["lr"] for h in base.history]), r.key
    assert records["r0-baseA"].budget.steps != records["r0-baseB"].budget.steps  # each task its own


def test_the_report_states_each_base_s_budget_and_why_it_stopped(plateau_study) -> None:
    out, _ = plateau_study
    text = (out / "report" / "report.md").read_text()
    assert "**Budget found on validation plateaus**" in text
    section = text[text.index("**Budget found on validation plateaus**"):]
    for task in "AB":
        base = next(r for r in Store(out).records() if r.key == f"r0-base{task}")
        row = next(line for line in section.splitlines() if line.startswith(f"| r0-base{task} "))
        assert [c.strip() for c in row.strip("|").split("|")] == [
            f"r0-base{task}", str(base.budget.steps), "6", "3, 5", "plateau after 2 drop(s), at epoch 6"]


def test_a_base_that_never_plateaus_stops_at_the_maximum(tmp_path) -> None:
    config = load_config(None, [*TINY, *PLATEAU, "train.plateau_threshold=0.0", "train.plateau_window=5",
                                "train.epochs=3", "treatments.names=[\"base\"]"])
    run_study(config, tmp_path / "s", progress=False, report=False)
    base = next(r for r in Store(tmp_path / "s").records() if r.key == "r0-baseA")
    assert base.budget.stopped == "the maximum of 3 epochs (train.epochs), after 0 drop(s)"
    assert base.budget.drops == () and base.budget.epochs == 3


def test_a_run_waits_for_the_base_whose_budget_it_follows_and_is_skipped_if_it_failed() -> None:
    spec = RunSpec("r0-AnB-n1", 0, "AnB", "transfer", "B", "A", 1)
    job = Job(spec.key, (spec,))
    schedule = Schedule([job], {"r0-baseA": "done"}, budget_base=lambda j: "r0-baseB")
    assert list(schedule.ready()) == []  # its source is done, but not the base whose budget it follows
    schedule.settle("r0-baseB", "diverged")
    assert list(schedule.ready()) == [(job, "its budget comes from base network r0-baseB, which is diverged")]


def test_the_budget_round_trips_through_a_record(plateau_study) -> None:
    out, _ = plateau_study
    path = Store(out).run_path("r0-AnB-n1")
    record = RunRecord.from_json(path.read_text())
    assert isinstance(record.budget.drops, tuple) and RunRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize("overrides,message", [
    (["train.budget=\"plateau\"", "train.schedule=\"cosine\""],
     "train.budget = \"plateau\" drops the learning rate by train.step_gamma at each plateau: it needs "
     "train.schedule = \"step\", not 'cosine'"),
    (["train.budget=\"plateau\"", "train.schedule=\"step\"", "treatments.target_sizes=[10]",
      "treatments.size_budget=\"epochs\""], "treatments.size_budget: with train.budget = \"plateau\""),
    (["train.budget=\"sometimes\""], "train.budget"),
])
def test_a_plateau_budget_that_cannot_work_is_one_clear_error(overrides, message) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_config(None, overrides)


def test_the_plateau_detector_reads_the_trend_not_a_lucky_epoch() -> None:
    """A curve climbing half a point per epoch under noise of several points (CIFAR-10 at lr 0.05) is
    no plateau, although no epoch beats the best epoch's score; a flat noisy one is."""
    from transferscope.train import Plateau

    climbing = [0.70, 0.76, 0.71, 0.72, 0.73, 0.78, 0.745, 0.75]  # the best is epoch 6; slope +0.0055
    detector = Plateau(8, 0.002)
    assert not any(detector.step(s) for s in climbing)
    flat = [0.80, 0.76, 0.81, 0.77, 0.79, 0.80, 0.78, 0.79]
    detector = Plateau(8, 0.002)
    assert [detector.step(s) for s in flat] == [False] * 7 + [True]
    assert detector.scores == []  # a plateau starts a new window: the next drop needs 8 more epochs
