"""The run record: one typed object, written and read by the store, one row per run in the table."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from transferscope import load_config, run_study
from transferscope.record import FRAME_COLUMNS, FeatureCache, RecordError, RunRecord, Split, runs_frame
from transferscope.seeds import Seeds, TrainingSeeds, derive_seed
from transferscope.store import Store
from transferscope.train import Budget

from conftest import TINY

#: a record as the version before the typed record (commit dc55e25) wrote it: r0-AnB-n3 of the default study
LEGACY = Path(__file__).parent / "data" / "record_dc55e25.json"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    run_study(load_config(None, [*TINY, "treatments.cut_points=[1]", 'treatments.targets=["B"]']), out,
              progress=False, report=False)
    return out


def test_records_round_trip_through_json(study_dir):
    records = Store(study_dir).records()
    assert len(records) == 7 and all(r.status == "done" for r in records)
    for r in records:
        text = (study_dir / "runs" / f"{r.key}.json").read_text()
        assert r.to_json() == text  # what the store wrote is the record's JSON, byte for byte
        assert RunRecord.from_json(text) == r


def test_a_record_holds_typed_parts(study_dir):
    r = {x.key: x for x in Store(study_dir).records()}["r0-AnB-n1"]
    assert isinstance(r.budget, Budget) and r.budget.epochs == 2 and r.steps_run == r.budget.steps
    assert isinstance(r.split, Split) and set(r.split.A).isdisjoint(r.split.B) and len(r.split.A + r.split.B) == 10
    assert r.seeds == Seeds(study=0, init=derive_seed("init", 0, "r0-AnB-n1"), partition=derive_seed("partition", 0, 0, "B"),
                            order=derive_seed("order", 0, "r0-AnB-n1"), augment=derive_seed("augment", 0, "r0-AnB-n1"),
                            dropout=derive_seed("dropout", 0, "r0-AnB-n1"), split=derive_seed("split", 0, 0))
    assert r.seeds.training == TrainingSeeds.derive(0, "r0-AnB-n1")
    assert isinstance(r.feature_cache, FeatureCache) and r.feature_cache.views >= 1  # frozen: shared prefix outputs
    assert len(r.history) == 2 and r.history[-1]["epoch"] == 2 and r.test_top1 == r.metrics["test_top1"]
    assert r.provenance is not None and r.provenance.versions["torch"]
    assert (r.frozen_layers, r.copied_layers, r.source_network) == (1, 1, "r0-baseA")


def test_records_written_before_the_typed_record_still_load():
    old = json.loads(LEGACY.read_text())
    r = RunRecord.from_json(LEGACY.read_text())
    assert r.key == "r0-AnB-n3" and r.budget == Budget(epochs=20, steps=140, rule="steps")
    assert r.seeds.init == old["seeds"]["init"] and r.seeds.data == old["seeds"]["data"]
    assert r.seeds.split is r.seeds.order is None  # that version drew order, augmentation and dropout from one stream
    with pytest.raises(ValueError, match="shared one stream"):
        r.seeds.training
    assert r.provenance.git == old["git"] and r.provenance.host == old["host"]
    again = json.loads(r.to_json())
    assert {k: v for k, v in again.items() if k in old and k != "seeds"} == {k: v for k, v in old.items() if k != "seeds"}
    assert {k: v for k, v in again["seeds"].items() if v is not None} == old["seeds"]
    assert set(again) - set(old) == {"error"}  # written as null now
    # and it makes the same row as a record of this version would
    row = runs_frame([r]).iloc[0]
    assert row["test_top1"] == old["metrics"]["test_top1"] and row["budget_steps"] == 140 and row["epochs_run"] == 20


@pytest.mark.parametrize("value, problem", [
    ([], "a JSON list, not an object"),
    ({"key": "k"}, "no replicate, treatment, role, target, n, status"),
    ({"key": "k", "replicate": "0", "treatment": "AnB", "role": "transfer", "target": "B", "n": True,
      "status": "done"}, "replicate is str, not int; n is bool, not int"),
    ({"key": "k", "replicate": 0, "treatment": "AnB", "role": "transfer", "target": "B", "n": 1,
      "status": "finished"}, "status 'finished' is not one of done, diverged, failed, skipped"),
    ({"key": "k", "replicate": 0, "treatment": "AnB", "role": "transfer", "target": "B", "n": 1,
      "status": "done", "budget": {"epochs": 2}}, "budget: "),
])
def test_what_is_not_a_record_is_said_in_one_line(value, problem):
    with pytest.raises(RecordError) as e:
        RunRecord.from_json(json.dumps(value))
    assert str(e.value).startswith(problem) and "\n" not in str(e.value), str(e.value)


def test_unknown_fields_are_ignored_and_missing_ones_default():
    r = RunRecord.from_json(json.dumps({"key": "k", "replicate": 0, "treatment": "baseA", "role": "base",
                                        "target": "A", "n": 0, "status": "skipped", "from_the_future": 1}))
    assert r.history == () and r.metrics == {} and r.budget is None and r.provenance is None


def test_the_table_of_runs_has_one_row_per_record_and_its_columns_when_empty(study_dir):
    records = Store(study_dir).records()
    frame = runs_frame(records)
    assert list(frame["key"]) == [r.key for r in records]
    assert list(frame["test_top1"]) == [r.test_top1 for r in records]
    assert (frame["epochs_run"] == 2).all() and frame["order_seed"].tolist() == [r.seeds.order for r in records]
    empty = runs_frame([])
    assert set(FRAME_COLUMNS) <= set(empty.columns) and len(empty) == 0
    failed = runs_frame([replace(records[0], status="failed", metrics={}, history=(), error="boom")])
    assert failed["test_top1"].isna().all() and failed["error"].iloc[0] == "boom"
