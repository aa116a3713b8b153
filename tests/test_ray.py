"""The study on a real local Ray cluster (started here, on 127.0.0.1 with 2 CPUs)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transferscope import load_config, load_results, run_study

from conftest import TINY

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'transferscope[ray]')")
BIN = Path(sys.executable).parent
STUDY = [*TINY, "train.epochs=4", "treatments.cut_points=[1, 2]"]
COLS = ["key", "status", "test_top1", "val_top1", "val_best_k_mean", "trainable_params"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` as the docs say, on loopback; stopped at the end."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tmp_path_factory.mktemp("ray")
    start = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    subprocess.run(start, check=True, capture_output=True, env=env, timeout=120)
    yield f"127.0.0.1:{port}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_study(load_config(None, [*STUDY, "execution.workers=1"]), out, progress=False, report=False)
    return out


@pytest.fixture(scope="module")
def local_reference(local_dir):
    return table(local_dir)


def table(directory):
    return load_results(str(directory))[COLS].sort_values("key").reset_index(drop=True)


def cli(out, address, *extra, study=STUDY):
    return [str(BIN / "transferscope"), "run", "-o", str(out), "-q", "--executor", "ray", "--address", address,
            *[f"--set={s}" for s in study], *extra]


def ray_job_pids() -> list[int]:
    """Ray worker processes while they execute a job (Ray titles them ray::_ray_job)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::_ray_job"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_ray_study_equals_the_local_executor(cluster, local_reference, tmp_path):
    res = subprocess.run(cli(tmp_path, cluster), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert table(tmp_path).equals(local_reference)
    assert (tmp_path / "weights" / "r0-baseA.safetensors").exists()  # recorded by the driver


def test_a_study_from_a_pretrained_network_on_ray_equals_the_local_executor(cluster, local_dir, tmp_path):
    """Every Ray worker reads the source (here the local study's base network r0-baseA) itself."""
    study = [*STUDY, "source.kind=study", f"source.study={local_dir}", "source.run=r0-baseA"]
    run_study(load_config(None, [*study, "execution.workers=1"]), tmp_path / "local", progress=False, report=False)
    res = subprocess.run(cli(tmp_path / "ray", cluster, study=study), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    reference = table(tmp_path / "local")
    assert set(reference["key"]) >= {"r0-baseT", "r0-PnT-n2", "r0-PnT+-n1", "r0-probeT-n2", "r0-randomT-n1"}
    assert (reference["status"] == "done").all() and table(tmp_path / "ray").equals(reference)


def test_a_killed_ray_worker_is_retried_and_every_run_recorded_once(cluster, local_reference, tmp_path):
    proc = subprocess.Popen(cli(tmp_path, cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = len(list((tmp_path / "runs").glob("*.json"))) if (tmp_path / "runs").exists() else 0
        pids = ray_job_pids()
        if done >= 2 and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=300)
    assert killed is not None, "the study ended before a worker could be killed"
    assert proc.returncode == 0, stderr
    assert len(list((tmp_path / "runs").glob("*.json"))) == len(local_reference)
    assert table(tmp_path).equals(local_reference)


def test_the_driver_killed_and_resumed(cluster, local_reference, tmp_path):
    proc = subprocess.Popen(cli(tmp_path, cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "runs").exists() and len(list((tmp_path / "runs").glob("*.json"))) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    before = {p.name: p.read_bytes() for p in (tmp_path / "runs").glob("*.json")}
    assert 4 <= len(before) < len(local_reference), "the kill did not land mid-study"
    res = subprocess.run(cli(tmp_path, cluster), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "runs").glob("*.json")}
    assert all(after[name] == data for name, data in before.items())  # nothing recorded was redone
    assert table(tmp_path).equals(local_reference)


def test_ray_missing_gives_a_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    res = subprocess.run([str(BIN / "transferscope"), "run", "-o", str(tmp_path / "out"), "--executor", "ray",
                          *[f"--set={s}" for s in STUDY]], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "pip install 'transferscope[ray]'" in res.stderr and "Traceback" not in res.stderr
