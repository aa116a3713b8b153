"""The ``transferscope`` command, run as a real subprocess: user mistakes end with exit code 2
and one line on stderr, recorded results are never touched by a refused command, and the
dry-run / status / export / report commands do what they say."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from transferscope import UserError, load_results
from transferscope.cli import app

EXE = Path(sys.executable).with_name("transferscope")

#: a study of seconds: one replicate, two cut points, two epochs, a 4-layer net (22 runs), run in
#: the driver process (worker processes cost seconds each to start; test_resume covers them)
TINY = ["--set", "train.epochs=2", "--set", "treatments.replicates=1", "--set", "treatments.cut_points=[1,3]",
        "--set", "model.options={widths=[8,8],fc=[16]}", "--set", "execution.workers=1"]
TINY_RUNS = 2 + 1 * 2 * 2 * 5
#: what a bad-input case adds its mistake to (a later --set wins over an earlier one)
CHEAP = ["--set", "train.epochs=1", "--set", "treatments.replicates=1", "--set", 'treatments.names=["base"]']


def cli(*args: object, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    assert EXE.is_file(), f"console script missing: {EXE}"
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def assert_user_error(proc: subprocess.CompletedProcess, *patterns: str) -> str:
    """Exit code 2, exactly one line on stderr (``transferscope: error: ...``) matching every
    pattern, no traceback anywhere. Returns the line."""
    both = proc.stdout + proc.stderr
    assert proc.returncode == 2, both
    assert "Traceback" not in both, both
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("transferscope: error: "), line
    for p in patterns:
        assert re.search(p, line), f"{p!r} not in {line!r}"
    return line


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a study directory but the lock (whose holder line names the last driver)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


# ----------------------------------------------------------------------------- one tiny study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """A finished tiny study, made by the command itself (treat as read-only: copy to change)."""
    work = tmp_path_factory.mktemp("cli-study")
    proc = cli("run", *TINY, "--quiet", "--output", work / "study", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return work / "study"


@pytest.fixture
def study_copy(study_dir, tmp_path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(study_dir, dst)
    return dst


def test_run_records_every_run(study_dir):
    keys = sorted(p.stem for p in (study_dir / "runs").glob("*.json"))
    assert len(keys) == TINY_RUNS
    for key in keys:
        rec = json.loads((study_dir / "runs" / f"{key}.json").read_text())
        assert rec["key"] == key and rec["status"] == "done"
        assert len(rec["history"]) == 2 and 0 <= rec["metrics"]["test_top1"] <= 1
    weights = {p.stem for p in (study_dir / "weights").iterdir()}
    assert {"r0-baseA", "r0-baseB"} <= weights <= set(keys)  # every copy's source, at least
    assert (study_dir / "config.toml").is_file() and (study_dir / "splits.json").is_file()
    assert (study_dir / "report" / "report.md").is_file()


# ------------------------------------------------------------------------------- bad inputs

# id -> (arguments after the command name, with {tmp} for the case's folder; patterns the error line matches)
BAD: dict[str, tuple[list[str], list[str]]] = {
    "unknown-dataset": (["run", *CHEAP, "--set", "data.dataset=nope"],
                        [r"\bdata\.dataset\b", r"'nope'", r"available: (.*, )?digits\b"]),
    "unknown-arch": (["run", *CHEAP, "--set", "model.arch=resnet9000"],
                     [r"\bmodel\.arch\b", r"'resnet9000'", r"available: (.*, )?convnet\b"]),
    "unknown-model-option": (["run", *CHEAP, "--set", "model.options={depth=3}"],
                             [r"\bmodel\.options\.depth\b", r"allowed: .*\bwidths\b"]),
    "unknown-treatment": (["run", *CHEAP, "--set", 'treatments.names=["XnY"]'],
                          [r"\btreatments\.names\b", r"XnY", r"'base'", r"'BnB\+'", r"'AnB'", r"'random'"]),
    "cut-point-default-convnet": (["run", *CHEAP, "--set", "treatments.cut_points=[9]"],
                                  [r"\btreatments\.cut_points\b", r"n=9\b", r"convnet", r"allowed 1\.\.5\b"]),
    "cut-point-zero": (["run", *CHEAP, "--set", "treatments.cut_points=[0]"],
                       [r"\btreatments\.cut_points\b", r"n=0\b", r"allowed 1\.\.5\b"]),
    "cut-point-small-convnet": (["run", *TINY, "--set", "treatments.cut_points=[1,4]"],
                                [r"\btreatments\.cut_points\b", r"n=4\b", r"4 layers", r"allowed 1\.\.3\b"]),
    "wrong-type": (["run", *CHEAP, "--set", "train.epochs=ten"],
                   [r"\btrain\.epochs\b", r"integer", r"'ten'"]),
    "out-of-range-number": (["run", *CHEAP, "--set", "train.lr=-1"],
                            [r"\btrain\.lr\b", r"greater than 0", r"-1"]),
    "unknown-key": (["run", *CHEAP, "--set", "train.epoch=3"],
                    [r"\btrain\.epoch\b", r"unknown key", r"allowed: .*\bepochs\b"]),
    "unknown-section": (["run", *CHEAP, "--set", "trian.epochs=3"],
                        [r"\btrian\b", r"unknown key", r"allowed: .*\btrain\b"]),
    "set-without-value": (["run", *CHEAP, "--set", "train.epochs"],
                          [r"--set", r"train\.epochs", r"key=value"]),
    "split-sizes": (["run", *CHEAP, "--set", "split.sizes=[8,8]"],
                    [r"\bsplit\.sizes\b", r"\[8, 8\]", r"10 classes", r">= 1", r"sum <= 10\b"]),
    "split-file-empty-A": (["run", *CHEAP, "--set", "split.kind=file", "--set", "split.file={tmp}/empty.toml"],
                           [r"\bsplit\.file\b", r"empty\.toml", r"task A has no classes", r"at least one"]),
    "split-file-overlap": (["run", *CHEAP, "--set", "split.kind=file", "--set", "split.file={tmp}/overlap.toml"],
                           [r"\bsplit\.file\b", r"overlap\.toml", r"both A and B: 2\b", r"disjoint"]),
    "split-file-unknown-class": (["run", *CHEAP, "--set", "split.kind=file", "--set", "split.file={tmp}/cat.toml"],
                                 [r"\bsplit\.file\b", r"cat\.toml", r"'cat' is not a class",
                                  r"classes are: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\b"]),
    "split-file-index-out-of-range": (["run", *CHEAP, "--set", "split.kind=file",
                                       "--set", "split.file={tmp}/index.json"],
                                      [r"\bsplit\.file\b", r"index\.json", r"class index 10\b", r"allowed 0\.\.9\b"]),
    "split-file-missing": (["run", *CHEAP, "--set", "split.kind=file", "--set", "split.file={tmp}/nosplit.toml"],
                           [r"\bsplit\.file\b", r"not found", r"nosplit\.toml"]),
    "split-file-invalid-toml": (["run", *CHEAP, "--set", "split.kind=file", "--set", "split.file={tmp}/broken.toml"],
                                [r"\bsplit\.file\b", r"broken\.toml", r"not valid TOML"]),
    "split-file-not-given": (["run", *CHEAP, "--set", "split.kind=file"],
                             [r"\bsplit\.kind\b", r"needs split\.file"]),
    "study-file-missing": (["run", "{tmp}/nosuch.toml"],
                           [r"nosuch\.toml", r"study file not found"]),
    "study-file-invalid-toml": (["run", "{tmp}/bad.toml"],
                                [r"bad\.toml", r"invalid TOML", r"line 1\b"]),
    "study-file-not-utf8": (["run", "{tmp}/binary.toml"],
                            [r"binary\.toml", r"cannot read study file"]),
    "study-file-is-a-directory": (["run", "{tmp}/adir"],
                                  [r"adir", r"cannot read study file"]),
    "study-file-unknown-key": (["run", "{tmp}/typo.toml"],
                               [r"typo\.toml: train\.epoch\b", r"unknown key", r"allowed: .*\bepochs\b"]),
    "study-file-wrong-type": (["run", "{tmp}/wrongtype.toml"],
                              [r"wrongtype\.toml: treatments\.replicates\b", r"integer", r"'three'"]),
    "status-not-a-study": (["status", "{tmp}/adir"],
                           [r"adir: not a transferscope study directory", r"config\.toml"]),
    "status-missing-dir": (["status", "{tmp}/nodir"],
                           [r"nodir: not a transferscope study directory", r"config\.toml"]),
    "export-not-a-study": (["export", "{tmp}/adir"],
                           [r"adir: not a transferscope study directory", r"config\.toml"]),
    "report-not-a-study": (["report", "{tmp}/adir"],
                           [r"adir: not a transferscope study directory", r"config\.toml"]),
}

FILES = {
    "empty.toml": 'A = []\nB = ["1", "2"]\n',
    "overlap.toml": 'A = ["1", "2"]\nB = ["2", "3"]\n',
    "cat.toml": 'A = ["1", "cat"]\nB = ["2", "3"]\n',
    "index.json": '{"A": [1, 10], "B": [2, 3]}',
    "broken.toml": "A = [1, 2\n",
    "bad.toml": "[train\nepochs = 3\n",
    "typo.toml": "[train]\nepoch = 3\n",
    "wrongtype.toml": '[treatments]\nreplicates = "three"\n',
}


#: cases that also run as a real process (the rest run in-process through typer's runner)
AS_PROCESS = {"unknown-dataset", "unknown-key", "wrong-type", "cut-point-default-convnet", "split-file-overlap",
              "study-file-missing", "status-not-a-study"}


def invoke_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``transferscope ARGS`` through typer's runner, shaped like a finished process."""
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(app, args)
    err = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        err += "Traceback (in process)\n" + "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, err)


def run_cli(how: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    return cli(*args, cwd=cwd) if how == "process" else invoke_in_process([str(a) for a in args], cwd)


@pytest.mark.parametrize("case, how", [(c, "in-process") for c in BAD]
                         + [(c, "process") for c in BAD if c in AS_PROCESS], ids=lambda v: v)
def test_bad_input_is_one_line_and_exit_code_2(case, how, tmp_path):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00 not text")
    (tmp_path / "adir").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in BAD[case][0]]
    if args[0] == "run":
        args += ["--output", str(tmp_path / "out")]
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli(*args, cwd=tmp_path) if how == "process" else invoke_in_process(args, tmp_path)
    assert_user_error(proc, *BAD[case][1])
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a refused command must write nothing"


def test_export_unknown_format(study_dir, tmp_path):
    proc = run_cli("in-process", "export", study_dir, "--format", "json", "--out", tmp_path / "x.json", cwd=tmp_path)
    assert_user_error(proc, r"--format", r"'json'", r"allowed: csv\b")
    assert not (tmp_path / "x.json").exists()


def test_several_wrong_keys_are_still_one_line(tmp_path):
    proc = invoke_in_process(["run", *CHEAP, "--set", "train.epochs=ten", "--set", "train.lr=x", "--set",
                              "data.dataset=7", "--output", str(tmp_path / "out")], tmp_path)
    assert_user_error(proc, r"train\.epochs: .*'ten'", r"train\.lr: .*'x'", r"data\.dataset: .*string")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- nothing recorded is ever lost


@pytest.mark.parametrize("how, mistake, patterns", [
    ("process", ["--set", "train.epochs=3"],
     [r"holds a study with a different configuration", r"differs in train\.epochs\b", r"another --output"]),
    ("in-process", ["--set", "train.lr=0.0123", "--set", "model.options={widths=[8,4],fc=[16]}"],
     [r"different configuration", r"model\.options\.widths", r"train\.lr"]),
    ("in-process", ["--set", "treatments.size_budget=epochs"],
     [r'differs in treatments\.size_budget: recorded "steps", now "epochs"\)', r"--set 'treatments\.size_budget=\"steps\"'"]),
    ("process", ["--set", "train.epochs=ten"], [r"\btrain\.epochs\b", r"'ten'"]),
    ("in-process", ["--set", "split.sizes=[8,8]"], [r"\bsplit\.sizes\b"]),
], ids=["different-config", "two-differing-keys", "other-size-budget", "invalid-value", "impossible-split"])
def test_a_refused_run_leaves_the_recorded_study_byte_identical(study_copy, tmp_path, how, mistake, patterns):
    before = tree_bytes(study_copy)
    assert sum(k.startswith("runs/") for k in before) == TINY_RUNS and any(k.startswith("weights/") for k in before)
    line = assert_user_error(run_cli(how, "run", *TINY, *mistake, "--output", study_copy, cwd=tmp_path), *patterns)
    if "different configuration" in line:
        assert str(study_copy) in line
    after = tree_bytes(study_copy)
    assert after.keys() == before.keys()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"files changed by a refused run: {changed}"


def test_another_thread_count_is_refused_and_the_suggested_set_resumes(study_copy, tmp_path):
    """torch's thread count changes the numbers, so it is part of a study's identity."""
    before = tree_bytes(study_copy)
    proc = cli("run", *TINY, "--set", "execution.threads=2", "--output", study_copy, cwd=tmp_path)
    line = assert_user_error(proc, "^transferscope: error: " + re.escape(
        f"{study_copy}: holds a study with a different configuration (differs in execution.threads: recorded 1, now "
        "2); to resume it use --set execution.threads=1, or use another --output") + "$")
    assert tree_bytes(study_copy) == before, "a refused run must leave the study as it was"
    # what the line says to do resumes the study without training anything again
    suggested = shlex.split(re.search(r"to resume it use (.+), or use another --output$", line).group(1))
    proc = cli("run", *TINY, "--set", "execution.threads=2", *suggested, "--output", study_copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{TINY_RUNS} of {TINY_RUNS} runs already recorded, skipped" in proc.stderr
    assert {k: v for k, v in tree_bytes(study_copy).items() if k.startswith(("runs/", "weights/", "config"))} == \
        {k: v for k, v in before.items() if k.startswith(("runs/", "weights/", "config"))}


def test_same_config_resumes_without_rerunning_anything(study_copy, tmp_path):
    before = {k: v for k, v in tree_bytes(study_copy).items() if k.startswith(("runs/", "weights/"))}
    # neither the study name nor the number of worker processes is part of the results: both may
    # differ on resume (the thread count may not, and stays the recorded one)
    proc = cli("run", *TINY, "--set", "name=renamed", "--set", "execution.workers=2", "--set", "execution.threads=1",
               "--output", study_copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{TINY_RUNS} of {TINY_RUNS} runs already recorded, skipped" in proc.stderr
    assert not re.search(r"^\[\d+/\d+\] r0-", proc.stderr, re.MULTILINE), proc.stderr
    after = {k: v for k, v in tree_bytes(study_copy).items() if k.startswith(("runs/", "weights/"))}
    assert after == before


# --------------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("how, overrides, replicates, cuts, targets", [
    ("process", ["treatments.replicates=2"], 2, {1, 2, 3, 4, 5}, 2),  # default convnet: every cut point, 1..5
    ("in-process", ["treatments.replicates=1", "treatments.cut_points=[3,1,3]", 'treatments.targets=["B"]'],
     1, {1, 3}, 1),
    ("in-process", ["treatments.replicates=3", "treatments.cut_points=[2]", "model.options={widths=[8,8],fc=[16]}"],
     3, {2}, 2),
], ids=["defaults-2-replicates", "target-B-only", "small-net-3-replicates"])
def test_dry_run_lists_every_run_and_writes_nothing(tmp_path, how, overrides, replicates, cuts, targets):
    args = [a for o in overrides for a in ("--set", o)]
    proc = run_cli(how, "run", *args, "--dry-run", "--output", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    total = 2 * replicates + replicates * len(cuts) * targets * 5
    runs = re.findall(r"^\s*(r\d+-\S+)\s+(base|selffer\+?|transfer\+?|random)\s+n=(\d+)\s+target ([AB])\s+needs (\S+)$",
                      proc.stdout, re.MULTILINE)
    assert len(runs) == total, proc.stdout
    assert len({r[0] for r in runs}) == total
    assert sum(r[1] == "base" for r in runs) == 2 * replicates
    assert {int(r[2]) for r in runs if r[1] != "base"} == cuts
    assert {int(r[2]) for r in runs if r[1] == "base"} == {0}
    # transfers need the other task's base, selffers their own, random and base nothing
    for key, role, n, target, needs in runs:
        rep = key.split("-")[0]
        other = "A" if target == "B" else "B"
        expected = {"base": "-", "random": "-"}.get(role) or (
            f"{rep}-base{target}" if role.startswith("selffer") else f"{rep}-base{other}")
        assert needs == expected, (key, needs)
    assert re.search(rf"^{total} runs \(", proc.stdout, re.MULTILINE)
    assert list(tmp_path.iterdir()) == [], "a dry run must write nothing"


# ------------------------------------------------------------------- status / export / report


def test_status_of_a_finished_study(study_dir, tmp_path):
    proc = run_cli("in-process", "status", study_dir, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{study_dir}: {TINY_RUNS} runs: {TINY_RUNS} done"


def test_status_of_a_partial_study(study_copy, tmp_path):
    gone = ["r0-AnB-n3", "r0-randomA-n1", "r0-BnA+-n3"]
    for key in gone:
        (study_copy / "runs" / f"{key}.json").unlink()
    rec_path = study_copy / "runs" / "r0-AnA-n1.json"
    rec = json.loads(rec_path.read_text())
    rec.update(status="failed", error="RuntimeError: boom")
    rec_path.write_text(json.dumps(rec))
    proc = cli("status", study_copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{study_copy}: {TINY_RUNS} runs: {TINY_RUNS - 4} done, 3 pending, 1 failed"
    assert "  r0-AnA-n1: failed (RuntimeError: boom)" in lines
    assert len(lines) == 2  # pending runs are counted, not listed; done runs never listed


def test_export_csv_is_load_results(study_dir, tmp_path):
    out = tmp_path / "runs.csv"
    proc = cli("export", study_dir, "--format", "csv", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{TINY_RUNS} runs -> {out}"
    csv = pd.read_csv(out)
    assert len(csv) == TINY_RUNS
    assert {"key", "treatment", "n", "status", "test_top1"} <= set(csv.columns)
    assert sorted(csv["key"]) == sorted(p.stem for p in (study_dir / "runs").glob("*.json"))
    assert (csv["status"] == "done").all()
    for key, top1, n in zip(csv["key"], csv["test_top1"], csv["n"]):
        rec = json.loads((study_dir / "runs" / f"{key}.json").read_text())
        assert top1 == rec["metrics"]["test_top1"] and n == rec["n"]
    frame = load_results(str(study_dir))
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(csv.columns)
    pd.testing.assert_frame_equal(csv, frame.astype({c: float for c in frame if frame[c].isna().all()}),
                                  check_dtype=False)


def test_export_default_path_is_inside_the_study(study_copy, tmp_path):
    proc = run_cli("in-process", "export", study_copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(study_copy / "runs.csv")) == TINY_RUNS


def test_load_results_of_a_non_study_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"not a transferscope study directory"):
        load_results(str(tmp_path))


def test_report_rewrites_report_md(study_copy, tmp_path):
    md = study_copy / "report" / "report.md"
    assert md.is_file()
    md.unlink()
    proc = cli("report", study_copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"report: {md}"
    text = md.read_text()
    assert "digits" in text and "convnet" in text
    assert "Traceback" not in proc.stderr


def test_datasets_and_models_commands():
    runner = CliRunner()
    ds = runner.invoke(app, ["datasets"])
    assert ds.exit_code == 0 and re.search(r"^digits\s+\S", ds.stdout, re.MULTILINE)
    ms = runner.invoke(app, ["models"])
    assert ms.exit_code == 0 and re.search(r"^convnet\s+\S", ms.stdout, re.MULTILINE)
    assert re.search(r"options: .*'widths'", ms.stdout)
    assert re.search(r"^timm/<name>\s+any timm model", ms.stdout, re.MULTILINE)
    assert "e.g. timm/resnet18: act1, layer1, layer2, layer3, layer4, head" in ms.stdout


def test_a_study_with_no_runs_yet(study_dir, tmp_path):
    """A study directory holding only its configuration (killed before any run finished)."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(study_dir / "config.toml", fresh / "config.toml")
    st = run_cli("in-process", "status", fresh, cwd=tmp_path)
    assert st.returncode == 0, st.stderr
    assert st.stdout.strip() == f"{fresh}: {TINY_RUNS} runs: {TINY_RUNS} pending"
    ex = run_cli("in-process", "export", fresh, "--out", tmp_path / "none.csv", cwd=tmp_path)
    assert ex.returncode == 0, ex.stderr
    assert len(pd.read_csv(tmp_path / "none.csv")) == 0
    assert_user_error(run_cli("in-process", "report", fresh, cwd=tmp_path), r"no finished runs", r"fresh")


def test_export_into_a_missing_directory_is_a_user_error(study_dir, tmp_path):
    proc = run_cli("in-process", "export", study_dir, "--out", tmp_path / "nodir" / "runs.csv", cwd=tmp_path)
    assert_user_error(proc, r"nodir")


def test_status_of_a_file_split_study_from_another_directory(study_dir, tmp_path):
    import tomllib

    import tomli_w

    work = tmp_path / "work"
    shutil.copytree(study_dir, work / "study")
    split = json.loads((study_dir / "splits.json").read_text())["r0"]
    (work / "split.toml").write_text(f"A = {json.dumps(split['A'])}\nB = {json.dumps(split['B'])}\n")
    cfg = tomllib.loads((work / "study" / "config.toml").read_text())
    cfg["split"].update(kind="file", file="split.toml")  # as `--set split.file=split.toml` writes it
    (work / "study" / "config.toml").write_text(tomli_w.dumps(cfg))
    here = run_cli("in-process", "status", "study", cwd=work)
    assert here.returncode == 0, here.stderr  # from the directory the study ran in: fine
    there = run_cli("in-process", "status", work / "study", cwd=tmp_path)
    assert there.returncode == 0, there.stderr
