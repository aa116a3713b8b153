"""Shared pieces of the benchmark suite: the machine, timers, data preparation, statistics, tables."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferscope.precision import torch_threads

REPO = Path(__file__).resolve().parent.parent
SHARED_TARBALL = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


# ------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def cpu_clock() -> dict[str, float]:
    """Busy and steal CPU seconds of the whole machine (/proc/stat) and of this process and its
    reaped children: the difference over a stretch is what other processes took."""
    out = {"own": sum(os.times()[:4])}
    with contextlib.suppress(OSError, ValueError):
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = v
        out["busy"] = (user + nice + system + irq + softirq) / tick
        out["steal"] = steal / tick
    return out


def contention(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Average cores used by other processes (and stolen by the hypervisor) over ``wall`` seconds."""
    if "busy" not in before or "busy" not in after or wall <= 0:
        return {}
    other = (after["busy"] - before["busy"]) - (after["own"] - before["own"])
    return {"other_cores": max(0.0, other / wall), "steal_cores": (after["steal"] - before["steal"]) / wall,
            "own_cores": (after["own"] - before["own"]) / wall}


def machine() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    from transferscope.precision import cpu_has_bf16

    return {"cpu": cpu_model(), "cores": cores, "cpu_flags": cpu_flags(), "memory_gb": mem,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "bf16_supported": cpu_has_bf16(), "load_average_at_start": load_average()}


def machine_line(m: dict[str, Any]) -> str:
    la = m.get("load_average_at_start")
    load = f", load average at start {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}" if la else ""
    return (f"{m['cpu']} ({m['cores']} cores; {', '.join(m['cpu_flags']) or 'no AVX-512'}), {m['memory_gb']} GB, "
            f"torch {m['torch']}, Python {m['python']}{load}")


# ------------------------------------------------------------------------------------ timing


threads = torch_threads  # torch's thread count for a block, restored after


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ data


def bench_cache() -> Path:
    """Where the benchmark keeps the extracted CIFAR-10 files and its subsets."""
    env = os.environ.get("TRANSFERSCOPE_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transferscope-bench"


def cifar10_root(tarball: Path | None = None) -> Path:
    """The extracted CIFAR-10 JPEG folders (``{train,test}/<class>/<NNNN>.jpg``), extracted once."""
    root = bench_cache() / "cifar10-jpeg"
    if (root / ".complete").exists():
        return root
    tarball = Path(tarball or os.environ.get("CIFAR10_JPEG_TARBALL", SHARED_TARBALL))
    if not tarball.exists():
        raise SystemExit(f"CIFAR-10 JPEG tarball not found: {tarball} (set CIFAR10_JPEG_TARBALL)")
    log(f"extracting {tarball} to {root} (once)")
    tmp = Path(tempfile.mkdtemp(dir=bench_cache().mkdir(parents=True, exist_ok=True) or bench_cache()))
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
    found = next(p for p in [tmp / "cifar10-jpeg", *tmp.iterdir()] if (p / "train").is_dir())
    shutil.rmtree(root, ignore_errors=True)
    os.replace(found, root)
    shutil.rmtree(tmp, ignore_errors=True)
    (root / ".complete").write_text("ok\n")
    return root


def cifar10_subset(train: int, test: int) -> Path:
    """A folder of the same layout holding the first ``train`` training and ``test`` test images of
    every class (symbolic links to the extracted files): the data both sides of a comparison read."""
    full = cifar10_root()
    sub = bench_cache() / f"cifar10-sub-{train}-{test}"
    if (sub / ".complete").exists():
        return sub
    shutil.rmtree(sub, ignore_errors=True)
    for split, count in (("train", train), ("test", test)):
        for cls in sorted(p.name for p in (full / split).iterdir() if p.is_dir()):
            files = sorted((full / split / cls).iterdir())[:count]
            dst = sub / split / cls
            dst.mkdir(parents=True)
            for f in files:
                os.symlink(f, dst / f.name)
    (sub / ".complete").write_text("ok\n")
    return sub


# ------------------------------------------------------------------------------------ statistics


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and half-width of the t confidence interval (nan half-width for one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return m, math.nan, math.nan
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * sd / math.sqrt(len(v)))
    return m, half, sd


def fmt_ci(values: Sequence[float], digits: int = 3) -> str:
    m, half, _ = mean_ci(values)
    if math.isnan(half):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {half:.{digits}f}"


def fmt_sd(values: Sequence[float], digits: int = 3) -> str:
    m, _, sd = mean_ci(values)
    return f"{m:.{digits}f}" if math.isnan(sd) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def welch_overlap(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Difference of means, its 95% CI (Welch), and whether 0 is inside."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    d = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": d, "half": math.nan, "within_noise": True}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": d, "half": 0.0, "within_noise": d == 0}
    dof = (va + vb) ** 2 / ((va**2 / (len(a) - 1) if len(a) > 1 else 0) + (vb**2 / (len(b) - 1) if len(b) > 1 else 0))
    half = float(stats.t.ppf(0.975, dof) * se)
    return {"diff": d, "half": half, "within_noise": abs(d) <= half}


# ------------------------------------------------------------------------------------ tables


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's outcome: its figures (JSON), its Markdown, and its headline checks."""

    name: str
    title: str
    data: dict[str, Any]
    markdown: str
    checks: list[dict[str, Any]]  # {"what", "value", "target", "ok"}
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "data": self.data, "markdown": self.markdown,
                "checks": self.checks, "seconds": self.seconds}


def check(what: str, value: float, target: str, ok: bool) -> dict[str, Any]:
    return {"what": what, "value": value, "target": target, "ok": bool(ok)}


def dump_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))
