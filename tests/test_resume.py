"""Resuming a study: a process killed at any moment loses at most the run in progress, and running
the same command again finishes the study with exactly the results of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from transferscope.cli import app

EXE = Path(sys.executable).with_name("transferscope")

#: 2 replicates x 2 cut points x 2 targets x 5 treatments + 4 base networks = 44 short runs
STUDY = ["--set", "train.epochs=3", "--set", "treatments.replicates=2", "--set", "treatments.cut_points=[1,2]",
         "--set", "model.options={widths=[8,8],fc=[16]}"]
STUDY_RUNS = 2 * 2 + 2 * 2 * 2 * 5
#: the killed and resumed study trains in two worker processes, the reference in the driver
#: (where runs execute is not part of a study: the numbers must not depend on it)
WORKERS = ["--set", "execution.workers=2"]
SERIAL = ["--set", "execution.workers=1"]
#: a smaller one (22 runs) for the tests that only damage a finished study
TINY_STUDY = ["--set", "train.epochs=2", "--set", "treatments.replicates=1", "--set", "treatments.cut_points=[1,3]",
              "--set", "model.options={widths=[8,8],fc=[16]}"]
TINY = [*TINY_STUDY, *SERIAL]
TINY_RUNS = 2 + 2 * 2 * 5

#: what the progress output prints when a run finishes: "[3/44] r0-BnB-n1: test top-1 0.394 | ..."
FINISHED = re.compile(r"^\[(\d+)/(\d+)\] (r\d+-\S+): ", re.MULTILINE)


def cli(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    assert EXE.is_file(), f"console script missing: {EXE}"
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (its workers), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(args: list[str], cwd: Path, stderr) -> subprocess.Popen:
    assert EXE.is_file(), f"console script missing: {EXE}"
    return subprocess.Popen([str(EXE), *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)


def records(study: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((study / "runs").glob("*.json"))}


def temp_files(study: Path) -> set[str]:
    return {str(p.relative_to(study)) for p in study.rglob("*") if p.is_file() and p.name.endswith(".tmp")}


def finished_keys(stderr: str) -> list[str]:
    return [m.group(3) for m in FINISHED.finditer(stderr)]


def same_results(a: dict, b: dict) -> None:
    """Two records of the same run carry the same results (not the same times or host)."""
    assert a["status"] == b["status"] == "done", (a["key"], a["status"], b["status"])
    assert a["metrics"] == b["metrics"], a["key"]
    assert a["history"] == b["history"], a["key"]
    for field in ("key", "seeds", "split", "n", "treatment", "trainable_params", "total_params"):
        assert a[field] == b[field], (a["key"], field)
    # where a run executed is no part of what it computed
    assert {k: v for k, v in a["config"].items() if k != "execution"} == \
        {k: v for k, v in b["config"].items() if k != "execution"}, a["key"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("resume-tiny")
    proc = cli("run", *TINY, "--quiet", "--output", work / "study", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert len(records(work / "study")) == TINY_RUNS
    return work / "study"


# ------------------------------------------------------------------------- kill and resume


def test_killed_study_resumes_to_the_uninterrupted_results(tmp_path):
    study, reference, logs = tmp_path / "study", tmp_path / "reference", tmp_path / "logs"
    logs.mkdir()
    with open(logs / "ref.err", "w") as ref_err, open(logs / "victim.err", "w") as vic_err:
        # the uninterrupted reference runs alongside, in its driver process
        ref = start(["run", *STUDY, *SERIAL, "--quiet", "--output", reference], tmp_path, ref_err)
        victim = start(["run", *STUDY, *WORKERS, "--output", study], tmp_path, vic_err)
        workers: set[int] = set()
        try:
            deadline = time.monotonic() + 240
            while victim.poll() is None and time.monotonic() < deadline:
                if len(list((study / "runs").glob("*.json"))) >= 12:  # past the 4 bases, into the transfers
                    break
                time.sleep(0.002)
            workers = descendants(victim.pid)
        finally:
            victim.kill()  # SIGKILL to the driver: no handler, no cleanup
            victim.wait()
            kill_all(workers)  # the workers end by themselves (next test); this only makes sure
        assert victim.returncode == -signal.SIGKILL, \
            f"the study ended before it could be killed ({victim.returncode}):\n" + (logs / "victim.err").read_text()
        assert ref.wait(timeout=300) == 0, (logs / "ref.err").read_text()

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (study / "runs").glob("*.json")}
    done_before = len(before)
    assert 12 <= done_before < STUDY_RUNS
    stale = temp_files(study)  # a kill during a write may leave the temporary file of that write
    for name, (data, _) in before.items():  # whatever is recorded is whole
        assert json.loads(data)["key"] == name.removesuffix(".json")

    # status tells what is done and what is left
    st = CliRunner().invoke(app, ["status", str(study)])
    assert st.exit_code == 0, st.stderr
    assert st.stdout.splitlines()[0] == \
        f"{study}: {STUDY_RUNS} runs: {done_before} done, {STUDY_RUNS - done_before} pending"

    # the same command again: skips what is recorded, runs the rest once each
    again = cli("run", *STUDY, *WORKERS, "--output", study, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert f"resuming {study}: {done_before} of {STUDY_RUNS} runs already recorded, skipped" in again.stderr
    ran = finished_keys(again.stderr)
    remaining = STUDY_RUNS - done_before
    assert len(ran) == len(set(ran)) == remaining, again.stderr
    assert {f"{k}.json" for k in ran}.isdisjoint(before), "a recorded run was trained again"
    assert {int(t) for t in re.findall(r"^\[\d+/(\d+)\] ", again.stderr, re.MULTILINE)} == {remaining}

    # the runs recorded before the kill are untouched
    for name, (data, mtime) in before.items():
        p = study / "runs" / name
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime, name

    # every run recorded exactly once, nothing half-written left by the resumed process
    got, ref_records = records(study), records(reference)
    assert len(ref_records) == STUDY_RUNS
    assert sorted(got) == sorted(ref_records)
    assert set(ran) | {n.removesuffix(".json") for n in before} == set(got)
    assert temp_files(study) <= stale, f"temporary files left by the resumed run: {temp_files(study) - stale}"
    assert temp_files(reference) == set()

    # identical results to the uninterrupted study, run by run, epoch by epoch
    for key in ref_records:
        same_results(got[key], ref_records[key])
    for w in (reference / "weights").glob("*.safetensors"):
        assert (study / "weights" / w.name).read_bytes() == w.read_bytes(), w.name
    assert (study / "report" / "report.md").is_file()


def test_resume_after_a_half_written_temporary_file(tiny_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    original = records(study)
    redo = ["r0-baseB", "r0-AnB-n3", "r0-randomA-n1"]
    for key in redo:
        (study / "runs" / f"{key}.json").unlink()
    # what a process killed mid-write leaves: the start of a record, and of a weights file
    (study / "runs" / ".r0-AnB-n3.json.123.tmp").write_text(json.dumps(original["r0-AnB-n3"])[:100])
    (study / "runs" / ".x.json.123.tmp").write_text('{"key": "x", "sta')
    (study / "weights" / ".r0-baseB.safetensors.456.tmp").write_bytes(
        (study / "weights" / "r0-baseB.safetensors").read_bytes()[:50])
    kept = {k: (study / "runs" / f"{k}.json").read_bytes() for k in original if k not in redo}

    proc = cli("run", *TINY, "--output", study, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"resuming {study}: {TINY_RUNS - 3} of {TINY_RUNS} runs already recorded, skipped" in proc.stderr
    assert sorted(finished_keys(proc.stderr)) == sorted(redo)
    got = records(study)
    assert sorted(got) == sorted(original)  # the temporary files are not records
    for key in redo:
        same_results(got[key], original[key])
    for key, data in kept.items():
        assert (study / "runs" / f"{key}.json").read_bytes() == data, key
    assert (study / "weights" / "r0-baseB.safetensors").read_bytes() == \
        (tiny_study / "weights" / "r0-baseB.safetensors").read_bytes()
    st = CliRunner().invoke(app, ["status", str(study)])
    assert st.exit_code == 0 and st.stdout.strip() == f"{study}: {TINY_RUNS} runs: {TINY_RUNS} done", st.stdout


def test_a_failed_run_is_run_again_on_resume(tiny_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    original = records(study)
    path = study / "runs" / "r0-BnA+-n1.json"
    failed = dict(original["r0-BnA+-n1"], status="failed", error="RuntimeError: boom")
    del failed["metrics"], failed["history"]
    path.write_text(json.dumps(failed))
    proc = cli("run", *TINY, "--output", study, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{TINY_RUNS - 1} of {TINY_RUNS} runs already recorded, skipped" in proc.stderr
    assert finished_keys(proc.stderr) == ["r0-BnA+-n1"]
    same_results(records(study)["r0-BnA+-n1"], original["r0-BnA+-n1"])


def test_a_truncated_record_is_a_user_error_naming_the_file(tiny_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    path = study / "runs" / "r0-AnB-n1.json"
    path.write_bytes(path.read_bytes()[:80])
    proc = cli("run", *TINY, "--output", study, cwd=tmp_path)
    st = CliRunner().invoke(app, ["status", str(study)])
    for code, out, err in ((proc.returncode, proc.stdout, proc.stderr), (st.exit_code, st.stdout, st.stderr)):
        assert code == 2, err
        assert "Traceback" not in out + err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("transferscope: error: "), err
        assert re.search(re.escape(str(path)) + r": unreadable run record .*delete it", lines[0]), lines[0]
    assert path.read_bytes() == (tiny_study / "runs" / "r0-AnB-n1.json").read_bytes()[:80]


def test_workers_end_when_the_driver_is_killed(tmp_path):
    """A driver killed with SIGKILL leaves no worker processes behind (they would wait forever)."""
    with open(tmp_path / "victim.err", "w") as err:
        victim = start(["run", *TINY_STUDY, *WORKERS, "--output", tmp_path / "study"], tmp_path, err)
        workers: set[int] = set()
        try:
            deadline = time.monotonic() + 120
            while victim.poll() is None and time.monotonic() < deadline and not list(
                    (tmp_path / "study" / "runs").glob("*.json")):
                time.sleep(0.01)
            workers = descendants(victim.pid)
            assert victim.poll() is None and workers, (tmp_path / "victim.err").read_text()
            victim.kill()
            victim.wait()
            deadline = time.monotonic() + 10
            while any(alive(p) for p in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = {p for p in workers if alive(p)}
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
            kill_all(workers)
    assert not left, f"worker processes {sorted(left)} outlived their killed driver"


def test_resume_removes_stale_temporary_files(tiny_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(tiny_study, study)
    (study / "runs" / "r0-AnB-n1.json").unlink()
    (study / "runs" / ".r0-AnB-n1.json.123.tmp").write_text('{"key": "r0-AnB-n1", "sta')
    proc = cli("run", *TINY, "--quiet", "--output", study, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert temp_files(study) == set()
