"""The local executors: N worker processes give the same records as one, and survive a killed worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from transferscope import load_config, run_study

from conftest import TINY

STUDY = [*TINY, "train.epochs=3", "treatments.cut_points=[1, 2]"]
CLI = str(Path(sys.executable).with_name("transferscope"))
COLS = ["key", "status", "test_top1", "val_top1", "val_best_k_mean", "trainable_params", "total_params"]


def table(directory):
    from transferscope import load_results

    return load_results(str(directory))[COLS].sort_values("key").reset_index(drop=True)


def test_one_worker_and_two_workers_give_identical_records(tmp_path):
    one = run_study(load_config(None, [*STUDY, "execution.workers=1"]), tmp_path / "one", progress=False, report=False)
    run_study(load_config(None, [*STUDY, "execution.workers=2"]), tmp_path / "two", progress=False, report=False)
    assert len(one.frame) == 2 + 2 * 2 * 5
    # exact: the same kernels with the same thread count (execution.threads) in every worker
    assert table(tmp_path / "one").equals(table(tmp_path / "two"))
    for key in ("r0-AnB-n2", "r0-baseA", "r0-BnA+-n1"):
        a = json.loads((tmp_path / "one" / "runs" / f"{key}.json").read_text())["history"]
        b = json.loads((tmp_path / "two" / "runs" / f"{key}.json").read_text())["history"]
        assert a == b


def _workers(pid: int) -> list[int]:
    """The study's worker processes: its children started by multiprocessing's spawn."""
    out = []
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmd:
            out.append(int(child))
    return out


def test_a_killed_worker_costs_a_retry_not_the_study(tmp_path):
    out = tmp_path / "killed"
    args = [CLI, "run", "-o", str(out), "-q", *[f"--set={s}" for s in [*STUDY, "execution.workers=2",
                                                                       "train.epochs=6"]]]
    # a longer run so that the kill lands mid-job; compare with its own uninterrupted twin
    twin = tmp_path / "twin"
    run_study(load_config(None, [*STUDY, "execution.workers=1", "train.epochs=6"]), twin, progress=False, report=False)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        runs = list((out / "runs").glob("*.json")) if (out / "runs").exists() else []
        workers = _workers(proc.pid)
        if len(runs) >= 3 and workers:
            killed = workers[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed is not None, "the study finished before a worker could be killed"
    assert proc.returncode == 0, stderr
    records = list((out / "runs").glob("*.json"))
    assert len(records) == 2 + 2 * 2 * 5  # every run recorded exactly once (one file per key)
    assert table(out).equals(table(twin))
    assert not list(out.rglob("*.tmp"))


def test_workers_end_with_a_killed_driver(tmp_path):
    args = [CLI, "run", "-o", str(tmp_path), "-q", *[f"--set={s}" for s in [*STUDY, "execution.workers=2", "train.epochs=20"]]]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 60, []
    while time.time() < deadline and len(workers) < 2:
        workers = _workers(proc.pid)
        time.sleep(0.05)
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert not alive, f"orphaned workers: {alive}"
