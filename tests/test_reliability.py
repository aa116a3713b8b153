"""Faults a long study meets, each injected for real where the machine allows: a second driver on
the same directory, workers killed by the OS, SIGTERM and Ctrl-C, a full disk, a path that is a
file, changed data, a damaged record or weight file, a plan that would drop recorded runs. Each
ends with one clear line and a meaningful exit code, loses nothing on disk, and the same command
resumes (issue 11)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from transferscope.cli import app

EXE = Path(sys.executable).with_name("transferscope")
NET = ["--set", "model.options={widths=[8,8],fc=[16]}"]
#: one cut point, target B only, frozen and fine-tuned transfer from A: 2 bases + 2 transfers
SMALL = ["--set", "train.epochs=2", "--set", "treatments.replicates=1", "--set", "treatments.cut_points=[1]",
         "--set", 'treatments.targets=["B"]', "--set", 'treatments.names=["base","AnB","AnB+"]', *NET]
SMALL_RUNS = 4
SERIAL = ["--set", "execution.workers=1"]
#: the lock holder line: "host NAME, pid N, since YYYY-MM-DD HH:MM:SS ZONE"
HOLDER = r"host \S+, pid {pid}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"
STOPPED = r"^transferscope: stopped: (\d+) of (\d+) runs recorded in .*; run the same command to resume$"


def cli(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    assert EXE.is_file(), f"console script missing: {EXE}"
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


@contextlib.contextmanager
def driving(args: list[object], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """A driver started in the background (stderr to ``log``), killed if the block leaves it running."""
    with open(log, "w") as err:
        driver = subprocess.Popen([str(EXE), *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield driver
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def one_line(proc_err: str, code: int, returncode: int, *patterns: str) -> str:
    """Exactly one line on stderr, no traceback, the exit code, every pattern in the line."""
    assert returncode == code, proc_err
    assert "Traceback" not in proc_err, proc_err
    lines = proc_err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{proc_err}"
    for p in patterns:
        assert re.search(p, lines[0]), f"{p!r} not in {lines[0]!r}"
    return lines[0]


def records(study: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((study / "runs").glob("*.json"))}


def tree(root: Path) -> dict[str, bytes]:
    """Every file of a study directory but the lock (whose holder line names the last driver)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the driver ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def spawned_workers(pid: int) -> set[int]:
    """The worker processes (multiprocessing spawn children) of driver ``pid``, from /proc."""
    out = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmd:
            out.add(int(d.name))
    return out


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """A finished SMALL study (copy it to change it)."""
    work = tmp_path_factory.mktemp("reliability")
    proc = cli("run", *SMALL, *SERIAL, "--quiet", "-o", work / "study", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work / "study"


@pytest.fixture
def study_copy(small_study, tmp_path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(small_study, dst)
    return dst


# ---------------------------------------------------------------------- one driver per study


def test_a_second_driver_is_refused_and_signals_stop_with_a_line(tmp_path):
    """A real second driver exits at once naming the holder, and changes nothing; SIGTERM and
    Ctrl-C end the first with one line and 143 / 130; the same command then finishes the study."""
    args = ["run", "--set", "train.epochs=40", "--set", "treatments.replicates=1", "--set", "treatments.cut_points=[1,2]",
            *NET, *SERIAL, "-o", tmp_path / "study"]
    study = tmp_path / "study"
    for signum in (signal.SIGTERM, signal.SIGINT):
        with driving(args, tmp_path, tmp_path / "driver.err") as driver:
            before = len(records(study)) if (study / "runs").is_dir() else 0
            wait_for(lambda: f"pid {driver.pid}," in ((study / ".lock").read_text() if (study / ".lock").is_file()
                                                      else ""), "the lock", driver)
            wait_for(lambda: (study / "study.json").is_file(), "study.json", driver)
            if signum == signal.SIGTERM:
                config = (study / "config.toml").read_bytes()
                second = cli(*args[:-2], "--set", "train.lr=0.2", "-o", study, cwd=tmp_path, timeout=120)
                one_line(second.stderr, 2, second.returncode, "another transferscope driver is running this study",
                         HOLDER.format(pid=driver.pid))
                assert (study / "config.toml").read_bytes() == config
            wait_for(lambda: len(records(study)) > before, "a new record", driver)
            driver.send_signal(signum)
            driver.wait(timeout=60)
        err = (tmp_path / "driver.err").read_text()
        assert driver.returncode == 128 + signum, err
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        m = re.match(STOPPED, last)
        assert m, last
        assert int(m.group(1)) == len(records(study)) and int(m.group(2)) == 2 + 2 * 2 * 5
        assert not [p for p in study.rglob("*.tmp")], "a stopped driver leaves no temporary files"
    done = cli(*args, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(records(study)) == 2 + 2 * 2 * 5 and all(r["status"] == "done" for r in records(study).values())


def test_two_drivers_started_together_one_runs_the_study(tmp_path):
    """Two configurations started together on a fresh directory: one wins the lock and runs, the
    other is refused; every record and config.toml carry the winner's learning rate."""
    base = ["run", "--set", "train.epochs=1", "--set", "treatments.replicates=1", "--set", 'treatments.names=["base"]',
            *NET, *SERIAL, "-o", tmp_path / "study"]
    procs = {lr: subprocess.Popen([str(EXE), *map(str, base), "--set", f"train.lr={lr}"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for lr in (0.05, 0.2)}
    outcome = {lr: (p.wait(timeout=300), p.stderr.read()) for lr, p in procs.items()}
    winners = [lr for lr, (code, _) in outcome.items() if code == 0]
    assert len(winners) == 1, outcome
    (loser,) = set(outcome) - set(winners)
    # refused by the lock, or (had the winner already finished) by the configuration check
    one_line(outcome[loser][1], 2, outcome[loser][0],
             "another transferscope driver is running this study|holds a study with a different configuration")
    assert f"lr = {winners[0]}" in (tmp_path / "study" / "config.toml").read_text()
    assert {r["config"]["train"]["lr"] for r in records(tmp_path / "study").values()} == {winners[0]}


# -------------------------------------------------------------- a resume that heals, exit codes


def test_bases_lost_to_killed_workers_strand_nothing(tmp_path):
    """Kill the worker processes (as the OOM killer would) until both bases are recorded failed:
    their dependants are skipped and the command fails; the same command again trains everything
    and exits 0, and status no longer names a failed source."""
    study = tmp_path / "study"
    args = ["run", *SMALL, "--set", "execution.workers=2", "-o", study]
    killed: set[int] = set()
    with driving(args, tmp_path, tmp_path / "driver.err") as driver:
        for _ in range(3):  # the job of a worker that dies 3 times fails (2 retries)
            wait_for(lambda: len(spawned_workers(driver.pid) - killed) == 2, "two fresh workers", driver)
            fresh = spawned_workers(driver.pid) - killed
            for pid in fresh:
                os.kill(pid, signal.SIGKILL)
            killed |= fresh
        driver.wait(timeout=120)
    err = (tmp_path / "driver.err").read_text()
    st = {k: r["status"] for k, r in records(study).items()}
    assert st == {"r0-baseA": "failed", "r0-baseB": "failed", "r0-AnB-n1": "skipped", "r0-AnB+-n1": "skipped"}, err
    assert records(study)["r0-baseA"]["error"].startswith("worker process died 3 times (exit code -9)")
    assert driver.returncode == 1 and "4 of 4 planned runs are not done (2 failed, 2 skipped)" in err, err

    healed = cli(*args, cwd=tmp_path)
    assert healed.returncode == 0, healed.stderr
    assert "retrying 4 run(s)" in healed.stderr
    assert {r["status"] for r in records(study).values()} == {"done"}
    status = CliRunner().invoke(app, ["status", str(study)])
    assert status.exit_code == 0 and status.stdout.strip() == f"{study}: 4 runs: 4 done", status.stdout


def test_a_study_with_runs_not_done_exits_non_zero(tmp_path):
    proc = cli("run", "--set", "train.epochs=1", "--set", "treatments.replicates=1", "--set", 'treatments.names=["base"]',
               "--set", "train.lr=1e12", "--set", "train.weight_decay=0", *NET, *SERIAL, "--quiet", "-o", tmp_path / "s",
               cwd=tmp_path)
    assert {r["status"] for r in records(tmp_path / "s").values()} == {"diverged"}
    assert proc.returncode == 1, proc.stderr
    assert "2 of 2 planned runs are not done (2 diverged): r0-baseA (diverged), r0-baseB (diverged)" in proc.stderr


def test_a_damaged_base_weight_file_is_trained_again(study_copy, tmp_path):
    original = records(study_copy)
    weights = study_copy / "weights" / "r0-baseA.safetensors"
    exact = weights.read_bytes()
    weights.write_bytes(exact[: len(exact) // 2])  # truncated, as a full disk or a copy cut short leaves it
    for key in ("r0-AnB-n1", "r0-AnB+-n1"):
        (study_copy / "runs" / f"{key}.json").unlink()
    proc = cli("run", *SMALL, *SERIAL, "-o", study_copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"training r0-baseA again: its weights file {weights} is" in proc.stderr
    assert weights.read_bytes() == exact  # a run depends only on its key: the same weights again
    again = records(study_copy)
    for key, rec in original.items():
        assert again[key]["metrics"] == rec["metrics"], key


def test_a_failed_run_records_one_line_and_logs_its_traceback(study_copy, tmp_path):
    """Base weights that load but do not fit the network (a valid file with the wrong tensors):
    with two workers, the frozen job fails in its worker and the fine-tuned run in its own try;
    each record carries one line, the tracebacks go to errors.log, status prints one line each."""
    from safetensors.torch import save_file
    import torch

    save_file({"not_a_layer": torch.zeros(3)}, str(study_copy / "weights" / "r0-baseA.safetensors"))
    for key in ("r0-AnB-n1", "r0-AnB+-n1"):
        (study_copy / "runs" / f"{key}.json").unlink()
    proc = cli("run", *SMALL, "--set", "execution.workers=2", "--quiet", "-o", study_copy, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    log = (study_copy / "errors.log").read_text()
    for key in ("r0-AnB-n1", "r0-AnB+-n1"):
        rec = records(study_copy)[key]
        assert rec["status"] == "failed" and "\n" not in rec["error"], rec["error"]
        assert rec["error"].endswith("(traceback in errors.log)") and "state_dict" in rec["error"], rec["error"]
        assert "traceback" not in rec
        assert "=== " in log and key in log
    assert "Traceback (most recent call last)" in log
    status = CliRunner().invoke(app, ["status", str(study_copy)])
    lines = status.stdout.strip().splitlines()
    assert lines[0] == f"{study_copy}: 4 runs: 2 done, 2 failed", status.stdout
    assert len(lines) == 3 and all("failed (RuntimeError: " in ln for ln in lines[1:]), status.stdout


# ------------------------------------------------------------------------------ bad records


@pytest.mark.parametrize("content, why", [
    ("{}", r"not a transferscope run record \(no key, replicate, treatment, role, target, n, status\)"),
    ("[1, 2]", r"not a transferscope run record \(a JSON list, not an object\)"),
    ('{"key": "r0-AnB-n1", "replicate": "0", "treatment": "AnB", "role": "transfer", "target": "B", "n": 1, '
     '"status": "done"}', r"not a transferscope run record \(replicate is str, not int\)"),
])
def test_a_record_of_the_wrong_shape_is_one_line_for_every_command(study_copy, tmp_path, content, why):
    path = study_copy / "runs" / "r0-AnB-n1.json"
    path.write_text(content)
    before = tree(study_copy)
    for command in (["run", *SMALL, *SERIAL, "-o", study_copy], ["status", study_copy], ["export", study_copy],
                    ["report", study_copy]):
        res = CliRunner().invoke(app, list(map(str, command)))
        one_line(res.stderr, 2, res.exit_code, re.escape(str(path)) + ": " + why, "delete it to run that network again")
    assert tree(study_copy) == before


# --------------------------------------------------------------------------------- the output


def test_an_output_that_is_a_file_or_below_one_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out, why in ((afile, "is a file, not a study directory"), (afile / "study", "Not a directory")):
        res = CliRunner().invoke(app, ["run", *SMALL, "-o", str(out)])
        one_line(res.stderr, 2, res.exit_code, re.escape(str(afile)), why, "choose another --output")
    assert afile.read_text() == "mine"


def mount_tmpfs(path: Path, *options: str) -> bool:
    """Mount a tmpfs at ``path`` (root only, where the kernel lets us); whether it worked."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_an_unwritable_output_is_one_line(tmp_path):
    """A read-only file system (a real read-only tmpfs as root; a folder without write permission
    otherwise, which root could write): one line naming the path, exit code 2."""
    parent = tmp_path / "ro"
    if mount_tmpfs(parent, "size=1m", "ro"):
        try:
            proc = cli("run", *SMALL, "-o", parent / "study", cwd=tmp_path)
        finally:
            umount(parent)
        one_line(proc.stderr, 2, proc.returncode, re.escape(str(parent / "study")), "Read-only file system")
    elif os.geteuid() != 0:
        parent.chmod(0o500)
        try:
            proc = cli("run", *SMALL, "-o", parent / "study", cwd=tmp_path)
        finally:
            parent.chmod(0o700)
        one_line(proc.stderr, 2, proc.returncode, re.escape(str(parent / "study")), "Permission denied")
    else:
        pytest.skip("root without a mountable tmpfs: no way to make a folder root cannot write")


@pytest.mark.parametrize("code, text, advice", [
    (errno.ENOSPC, "No space left on device", "free some space"),
    (errno.EACCES, "Permission denied", "make it writable by you"),  # runs/ made unwritable mid-study
])
def test_a_write_that_fails_mid_study_is_one_line_and_resumable(small_study, tmp_path, monkeypatch, code, text,
                                                                 advice):
    """ENOSPC (a full disk) or EACCES injected at the third record: exit code 1, one line naming
    the file and saying the study resumes; no half-written file; the same command then finishes it
    to the same results."""
    import transferscope.store as store_module

    real = store_module.atomic_write
    calls = {"records": 0}

    def failing(path: Path, data: bytes) -> None:
        if path.parent.name == "runs":
            calls["records"] += 1
            if calls["records"] == 3:
                raise OSError(code, text, str(path))
        real(path, data)

    monkeypatch.setattr(store_module, "atomic_write", failing)
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "study"
    res = CliRunner().invoke(app, ["run", *SMALL, *SERIAL, "--quiet", "-o", str(study)])
    line = one_line(res.stderr, 1, res.exit_code, text, advice,
                    "what is recorded is kept: run the same command to resume")
    assert re.search(re.escape(str(study / "runs")) + r"/r0-\S+\.json", line), line
    assert len(records(study)) == 2 and not list(study.rglob("*.tmp"))
    monkeypatch.setattr(store_module, "atomic_write", real)
    again = CliRunner().invoke(app, ["run", *SMALL, *SERIAL, "--quiet", "-o", str(study)])
    assert again.exit_code == 0, again.stderr
    assert {k: r["metrics"] for k, r in records(study).items()} == \
        {k: r["metrics"] for k, r in records(small_study).items()}


def test_a_real_full_disk(tmp_path):
    """A real 64 MB tmpfs: a plan whose estimate does not fit is refused up front, naming
    eval.save_weights; a study that fits, on a disk filled mid-study, ends with one line; freeing
    the space resumes it."""
    mnt = tmp_path / "small"
    if not mount_tmpfs(mnt, "size=64m"):
        pytest.skip("cannot mount a tmpfs here (needs root and a kernel that allows it)")
    try:
        # 4 networks of 9M parameters: about 0.1 GB of weights
        big = ["--set", "model.options={widths=[256,256],fc=[8192]}", "--set", "eval.save_weights=all"]
        refused = cli("run", *SMALL, *SERIAL, *big, "-o", mnt / "big", cwd=tmp_path)
        one_line(refused.stderr, 2, refused.returncode, re.escape(str(mnt / "big")), r"the runs still to do write about",
                 r"MB are free there", "eval.save_weights")
        assert not (mnt / "big" / "runs").exists()

        study = mnt / "study"
        filler = mnt / "filler"
        with driving(["run", *SMALL, *SERIAL, "-o", study], tmp_path, tmp_path / "driver.err") as driver:
            wait_for(lambda: (study / "runs").is_dir() and len(list((study / "runs").glob("*.json"))) >= 1,
                     "a record", driver)
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk to the last byte (unbuffered)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
            finally:
                os.close(fd)
            driver.wait(timeout=120)
        err = (tmp_path / "driver.err").read_text()
        assert driver.returncode == 1, err
        assert "Traceback" not in err and re.search(r"No space left on device; free some space", err), err
        assert all(json.loads(p.read_text())["key"] == p.stem for p in (study / "runs").glob("*.json"))
        assert len(records(study)) < SMALL_RUNS
        filler.unlink()
        done = cli("run", *SMALL, *SERIAL, "--quiet", "-o", study, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(records(study)) == SMALL_RUNS
    finally:
        umount(mnt)


def test_dry_run_states_the_disk_a_plan_writes(tmp_path):
    proc = CliRunner().invoke(app, ["run", *SMALL, "--dry-run", "-o", str(tmp_path / "s")])
    assert proc.exit_code == 0, proc.stderr
    m = re.search(r"^disk: about ([\d.]+) (kB|MB|GB): 2 base network\(s\) .* \(float32\), 1 network\(s\) kept by "
                  r'eval.save_weights = "bases\+finetuned" .* \(float16\), .*; ([\d.]+) (kB|MB|GB) free there$',
                  proc.stdout, re.MULTILINE)
    assert m, proc.stdout
    assert not (tmp_path / "s").exists()


def test_the_disk_estimate_matches_what_a_study_wrote(small_study):
    """The weights to within 5% plus the headers' rounding up (the value counts are exact), and the
    whole no less than the directory holds."""
    from transferscope import disk
    from transferscope.store import Store
    from transferscope.study import Study

    study = Study.open(Store(small_study), images=False)
    est = disk.estimate(study, study.plan)
    weights = sum(p.stat().st_size for p in (small_study / "weights").iterdir())
    files = sum(est.networks.values())
    assert files == len(list((small_study / "weights").iterdir()))
    assert abs(est.source_bytes + est.analysed_bytes - weights) < 0.05 * weights + disk.HEADER_BYTES * files, \
        (est, weights)
    assert est.total >= sum(p.stat().st_size for p in small_study.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ weights on disk


def test_weights_are_as_readable_as_the_records(small_study):
    mask = os.umask(0)
    os.umask(mask)
    expected = 0o666 & ~mask
    for path in [*(small_study / "weights").iterdir(), *(small_study / "runs").iterdir()]:
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode))


def test_fine_tuned_networks_are_kept_in_float16_and_that_serves_the_analyses(small_study, tmp_path):
    """Only the sources stay float32. The float16 copy of a network changes its layer-1 filters by
    a relative 2^-11 at most and its layer outputs' CKA with the float32 network by less than 1e-4:
    far below what fine-tuning moves (measured below on the same study)."""
    import torch
    from safetensors import safe_open

    from transferscope.analysis.cka import MinibatchCKA, gram_linear
    from transferscope.analysis.filters import relative_change
    from transferscope.analysis.networks import layer_outputs, load_network, part_images
    from transferscope.store import Store
    from transferscope.study import Study

    def dtypes(key: str) -> set[str]:
        with safe_open(small_study / "weights" / f"{key}.safetensors", "pt") as f:
            return {str(f.get_slice(k).get_dtype()) for k in f.keys()}

    assert dtypes("r0-baseA") == {"F32", "I64"} and dtypes("r0-AnB+-n1") == {"F16", "I64"}
    assert not (small_study / "weights" / "r0-AnB-n1.safetensors").exists()  # frozen: nothing to analyse

    store = Store(small_study)
    study = Study.open(store)
    base = load_network(store, study, "r0-baseA", 0, "A")
    half = Store(tmp_path)
    half.save_weights("x", base.state_dict(), half=True)
    rounded = study.new_network(study.plan[0], "A", "x")
    rounded.load_state_dict(half.load_weights("x"))
    rounded.eval()
    first = next(m for m in base.modules() if isinstance(m, torch.nn.Conv2d)).weight
    first_half = next(m for m in rounded.modules() if isinstance(m, torch.nn.Conv2d)).weight
    tuned = load_network(store, study, "r0-AnB+-n1", 0, "B")
    first_tuned = next(m for m in tuned.modules() if isinstance(m, torch.nn.Conv2d)).weight
    rounding, moved = (relative_change(w.detach(), first.detach()) for w in (first_half, first_tuned))
    assert rounding < 2.0**-11
    assert moved > 20 * rounding, (moved, rounding)

    task = study.task(0, "A")
    x, _ = part_images(task.test, 256, 0)
    cka = MinibatchCKA(base.num_layers, base.num_layers)
    a = next(layer_outputs(base, x, task, None, len(x)))
    b = next(layer_outputs(rounded, x, task, None, len(x)))
    cka.update_grams(torch.stack([gram_linear(h) for h in a]), torch.stack([gram_linear(h) for h in b]))
    diag = np.diag(cka.value(strict=False))
    assert np.all(np.abs(diag - 1) < 1e-4), diag


# ----------------------------------------------------------------------- the plan and the data


def test_a_plan_that_drops_recorded_runs_is_refused_and_commands_agree(study_copy, tmp_path):
    before = tree(study_copy)
    proc = cli("run", *SMALL, *SERIAL, "--set", 'treatments.names=["base","AnB"]', "-o", study_copy, cwd=tmp_path)
    one_line(proc.stderr, 2, proc.returncode, r"this plan leaves out 1 recorded run\(s\) \(e.g. r0-AnB\+-n1\)",
             r"treatments.names: recorded \[.*\], now \[.*\]",
             re.escape("--set 'treatments.names=[\"base\",\"AnB\",\"AnB+\"]'"))
    assert tree(study_copy) == before
    status = CliRunner().invoke(app, ["status", str(study_copy)])
    assert status.stdout.startswith(f"{study_copy}: {SMALL_RUNS} runs: {SMALL_RUNS} done")
    export = CliRunner().invoke(app, ["export", str(study_copy), "--out", str(tmp_path / "runs.csv")])
    assert export.exit_code == 0 and export.stdout.startswith(f"{SMALL_RUNS} runs")


def make_folder(root: Path, per_class: int, start: int = 0) -> None:
    rng = np.random.default_rng(start)
    for c in ("ant", "bee", "cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_changed_data_is_refused_and_a_moved_dataset_still_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "images"
    make_folder(images, 12)
    args = ["run", "--set", "data.dataset=imagefolder", "--set", f'data.root="{images}"', "--set", "train.epochs=1",
            "--set", "treatments.replicates=1", "--set", 'treatments.names=["base"]', *NET, *SERIAL, "--quiet",
            "-o", tmp_path / "study"]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    study = tmp_path / "study"
    make_folder(images, 12, start=100)  # 12 more images per class
    before = tree(study)
    refused = cli(*args, cwd=tmp_path)
    notes = re.compile(r"^transferscope: decod(ing|ed) 96 images .*\n", re.MULTILINE)  # the loader's progress
    one_line(notes.sub("", refused.stderr), 2, refused.returncode, "the dataset changed since this study ran",
             "48 images recorded, 96 now", "ant: 12 -> 24", "restore the data, or use another --output")
    assert tree(study) == before

    # the study copied elsewhere without its images: status, export and report still work
    images.rename(tmp_path / "gone")
    status = CliRunner().invoke(app, ["status", str(study)])
    assert status.exit_code == 0 and status.stdout.strip() == f"{study}: 2 runs: 2 done", status.stdout + status.stderr
    export = CliRunner().invoke(app, ["export", str(study), "--out", str(tmp_path / "runs.csv")])
    assert export.exit_code == 0, export.stderr
    report = CliRunner().invoke(app, ["report", str(study)])
    assert report.exit_code == 0 and "Traceback" not in report.stderr, report.stderr
    assert (study / "report" / "report.md").is_file()


def test_report_compare_with_a_wrong_path_is_one_line_and_keeps_the_report(study_copy, tmp_path):
    before = tree(study_copy / "report")  # written by the run
    assert "report.md" in before
    res = CliRunner().invoke(app, ["report", str(study_copy), "--compare", str(tmp_path / "nowhere")])
    one_line(res.stderr, 2, res.exit_code, re.escape(str(tmp_path / "nowhere")), "not a transferscope study directory")
    assert tree(study_copy / "report") == before
