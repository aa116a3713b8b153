"""Benchmark 6: the same study with execution.workers = 2 against 1 (one thread each)."""

from __future__ import annotations

from benchmarks.common import Section, check, md_table


def run(ctx) -> Section:
    from benchmarks.studies import metrics_equal, run_ts
    from benchmarks.versus import study_overrides, transferscope_side

    two = transferscope_side(ctx)  # benchmark 4's study (warm cache from here on)
    cache = ctx.work / "ts-cache-versus"
    one = run_ts(study_overrides(ctx, cache) + ["execution.workers=1"], ctx.work / "parallel-1-worker")
    if ctx.workers != 2:
        two = run_ts(study_overrides(ctx, cache) + ["execution.workers=2"], ctx.work / "parallel-2-workers")
    speedup = one["study_s"] / two["study_s"]
    same = metrics_equal(one["records"], two["records"])
    data = {"workers_1_s": one["study_s"], "workers_2_s": two["study_s"], "speedup": speedup, "runs": one["runs"],
            "identical": same["identical"], "compared": same["compared"], "differ": same["differ"][:20]}
    md = "\n".join([
        f"The study of benchmark 4 ({one['runs']} networks, dataset already decoded), `run_study` wall time:", "",
        md_table(["execution.workers", "threads each", "wall time (s)"],
                 [[1, 1, f"{one['study_s']:.1f}"], [2, 1, f"{two['study_s']:.1f}"],
                  ["**speedup**", "", f"**{speedup:.2f}x** (target >= 1.6)"]]),
        "",
        f"Results identical (every run's metrics and per-epoch history, exact): "
        f"{'yes' if same['identical'] else 'NO'} ({same['compared']} runs compared"
        + (f"; differ: {', '.join(same['differ'][:5])}" if same["differ"] else "") + ")."])
    checks = [check("speedup workers=2 / workers=1", speedup, ">= 1.6", speedup >= 1.6),
              check("workers=1 and workers=2 results identical", float(same["identical"]), "identical", same["identical"])]
    return Section("parallel", "6. Parallel runs on one machine", data, md, checks)
