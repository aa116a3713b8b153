"""`transferscope export`: the history as a long table, the paired differences, and Parquet; each
table read back from the written file and checked against the run records themselves."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from transferscope import load_config, load_results, run_study
from transferscope.cli import app
from transferscope.stats import DIFFERENCE_BOUNDS, ROLE_LABELS, over_replicates, relative

pytestmark = pytest.mark.usefixtures("one_thread")

#: 2 replicates, one cut point, both directions, and again on 10 training images per class:
#: 12 networks on the full data and 8 on the reduced
STUDY = ["train.epochs=2", "treatments.replicates=2", "model.options={widths=[8,16],fc=[16],dropout=0.5}",
         'treatments.names=["base","BnB","AnB"]', "treatments.cut_points=[1]", "treatments.target_sizes=[10]",
         "execution.workers=1"]
ID_COLUMNS = ["key", "replicate", "treatment", "role", "n", "target", "target_size", "epoch"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "study"
    result = run_study(load_config(None, STUDY), out, progress=False, report=False)
    assert len(result.failed) == 0 and len(result.frame) == 20
    return out


def export(*args: object):
    result = CliRunner().invoke(app, ["export", *map(str, args)])
    return result


def records(study: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((study / "runs").glob("*.json"))]


def test_history_is_one_row_per_run_and_epoch_equal_to_the_records(study, tmp_path):
    out = tmp_path / "history.csv"
    res = export(study, "--table", "history", "--out", out)
    recs = records(study)
    epochs = sum(len(r["history"]) for r in recs)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == f"{epochs} epochs of {len(recs)} runs -> {out}"
    table = pd.read_csv(out)
    assert list(table.columns[:8]) == ID_COLUMNS
    assert set(table.columns[8:]) == {"train_loss", "lr", "val_top1"}
    assert len(table) == epochs and epochs > 2 * len(recs)  # the reduced runs train more epochs (same steps)
    for rec in recs:
        rows = table[table["key"] == rec["key"]].sort_values("epoch")
        assert list(rows["epoch"]) == [h["epoch"] for h in rec["history"]]
        for column in ("train_loss", "lr", "val_top1"):
            assert list(rows[column]) == [h[column] for h in rec["history"]]
        for column in ("replicate", "treatment", "role", "n", "target"):
            assert set(rows[column]) == {rec[column]}
        size = rows["target_size"].iloc[0]
        assert (math.isnan(size) and rec["target_size"] is None) or size == rec["target_size"]


def hand_paired(recs: list[dict]) -> dict:
    """(quantity, n, target_size, replicate) -> the mean over directions of run minus its base,
    and of selffer minus transfer (specificity), computed from the records alone."""
    base = {(r["replicate"], r["target"], r["target_size"]): r["metrics"]["test_top1"] for r in recs
            if r["role"] == "base"}
    by_role = {(r["role"], r["n"], r["replicate"], r["target"], r["target_size"]): r["metrics"]["test_top1"]
               for r in recs if r["role"] != "base"}
    diffs = defaultdict(list)
    for (role, n, rep, target, size), top1 in by_role.items():
        diffs[ROLE_LABELS[role], n, size, rep].append(top1 - base[rep, target, size])
        if role == "selffer" and ("transfer", n, rep, target, size) in by_role:
            diffs["specificity", n, size, rep].append(top1 - by_role["transfer", n, rep, target, size])
    return {k: (float(np.mean(v)), len(v)) for k, v in diffs.items()}


def test_paired_differences_are_run_minus_base_per_replicate_from_the_records(study, tmp_path):
    out = tmp_path / "paired.csv"
    res = export(study, "--table", "paired", "--out", out)
    assert res.exit_code == 0, res.stderr
    table = pd.read_csv(out)
    assert res.stdout.strip() == f"{len(table)} paired differences -> {out}"
    assert list(table.columns) == ["quantity", "n", "target_size", "replicate", "diff", "networks"]
    expected = hand_paired(records(study))
    got = {(q, n, None if math.isnan(s) else (int(s) if s == int(s) else s), rep): (d, k)
           for q, n, s, rep, d, k in table.itertuples(index=False)}
    for key, (diff, networks) in expected.items():
        assert got[key][0] == pytest.approx(diff, abs=1e-12) and got[key][1] == networks == 2, key
    # every quantity the hand computation covers is there, at both sizes, and nothing else of those
    assert {k for k in got if k[0] in ("BnB", "AnB", "specificity")} == set(expected)
    assert {k[2] for k in expected} == {None, 10}
    # the report's "X - base" rows are exactly these values summarised over replicates
    full = table[table["target_size"].isna()].rename(columns={"diff": "value"})
    summary = over_replicates(full, ["quantity", "n"], DIFFERENCE_BOUNDS).set_index(["quantity", "n"])
    frame = load_results(str(study))
    report = relative(frame[frame["target_size"].isna()]).set_index(["quantity", "n"])
    assert sorted(summary.index) == sorted(report.index)
    pd.testing.assert_frame_equal(summary.loc[report.index], report, check_exact=False, rtol=1e-12)


def test_parquet_holds_the_same_tables_as_csv(study, tmp_path):
    for name in ("runs", "history", "paired"):
        assert export(study, "--table", name, "--out", tmp_path / f"{name}.csv").exit_code == 0
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    res = export(copy, "--format", "parquet", "--table", "runs", "--table", "history", "--table", "paired")
    assert res.exit_code == 0, res.stderr
    assert [line.split(" -> ")[1] for line in res.stdout.splitlines()] == \
        [str(copy / f"{name}.parquet") for name in ("runs", "history", "paired")]
    for name in ("runs", "history", "paired"):
        parquet = pd.read_parquet(copy / f"{name}.parquet")
        csv = pd.read_csv(tmp_path / f"{name}.csv")
        assert list(parquet.columns) == list(csv.columns) and len(parquet) == len(csv) > 0
        pd.testing.assert_frame_equal(parquet.astype({c: float for c in parquet if parquet[c].isna().all()}), csv,
                                      check_dtype=False)
    runs = pd.read_parquet(copy / "runs.parquet")
    pd.testing.assert_frame_equal(runs, load_results(str(copy)), check_dtype=False)


def test_the_default_export_is_still_runs_csv_alone(study, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    res = export(copy)
    assert res.exit_code == 0 and res.stdout.strip() == f"20 runs -> {copy / 'runs.csv'}"
    assert not any((copy / f"{name}.csv").exists() for name in ("history", "paired"))


def test_parquet_without_pyarrow_is_one_line(study, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    res = export(study, "--format", "parquet", "--out", tmp_path / "runs.parquet")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("transferscope: error: --format parquet needs the pyarrow package: "
                                  "pip install 'transferscope[parquet]'")
    assert not (tmp_path / "runs.parquet").exists()


@pytest.mark.parametrize("args, message", [
    (["--table", "epochs"], r"--table: unknown table 'epochs'; allowed: runs, history, paired$"),
    (["--table", "runs", "--table", "history", "--out", "x.csv"], r"--out names one file but --table names 2 tables"),
])
def test_bad_export_options_are_one_line(study, tmp_path, args, message):
    res = export(study, *args)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert re.search(message, res.stderr.strip()), res.stderr
