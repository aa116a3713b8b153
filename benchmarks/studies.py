"""Running transferscope studies from the benchmarks: timed, in a fresh results folder."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import log
from transferscope.record import RunRecord


def run_ts(overrides: list[str], out: Path, *, load_separately: bool = True) -> dict[str, Any]:
    """Run a transferscope study (fresh results folder) and time it. With ``load_separately`` the
    dataset is loaded (decoded, on a cold cache) first and timed on its own: ``load_s``; the study
    then finds it in the cache. ``study_s`` is ``run_study`` alone (planning, workers, every run)."""
    from transferscope import load_config, run_study
    from transferscope.data import load_dataset
    from transferscope.store import Store

    cfg = load_config(overrides=overrides)
    shutil.rmtree(out, ignore_errors=True)
    old_threads = torch.get_num_threads()
    load_s = 0.0
    if load_separately:
        t = time.perf_counter()
        load_dataset(cfg.data)
        load_s = time.perf_counter() - t
    t = time.perf_counter()
    try:
        result = run_study(cfg, out, progress=False, report=False)
    finally:
        torch.set_num_threads(old_threads)  # the serial executor sets this process's threads
    study_s = time.perf_counter() - t
    frame = result.frame
    bad = frame[frame.status != "done"]
    if len(bad):
        raise RuntimeError(f"{len(bad)} runs of {out} did not finish: {bad[['key', 'status']].to_string()}")
    log(f"transferscope study {out.name}: {len(frame)} runs in {study_s:.1f} s (+ data {load_s:.1f} s)")
    return {"config": cfg, "frame": frame, "records": list(Store(out).records()), "study_s": study_s,
            "load_s": load_s, "runs": len(frame), "out": str(out)}


def metrics_equal(a: list[RunRecord], b: list[RunRecord], keys: set[str] | None = None) -> dict[str, Any]:
    """Compare the metrics and per-epoch history of the runs two studies share (exactly)."""
    ia = {r.key: r for r in a if keys is None or r.key in keys}
    ib = {r.key: r for r in b if keys is None or r.key in keys}
    common = sorted(set(ia) & set(ib))
    differ = [k for k in common if ia[k].metrics != ib[k].metrics or ia[k].history != ib[k].history]
    return {"compared": len(common), "differ": differ, "identical": not differ and len(common) > 0}
