"""Benchmark 7: how a study's time grows with cut points, replicates and training images.

A small grid around one base point, varying one axis at a time. Each point runs transferscope as
configured by default (cached frozen features, bf16 where supported, channels_last, one worker per
core) and the naive schedule (``train.frozen_features = "recompute"``, one worker, fp32,
channels_last off); the hand-written reference (reference.py) runs at a few points. The dataset is
decoded (cached) before the grid, so the times are the studies alone.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import Section, Timer, check, log, md_table

NAIVE = ["train.frozen_features=recompute", "execution.workers=1", "train.precision=fp32", "train.channels_last=false"]


def _overrides(ctx, cuts: int, reps: int, tpc: int) -> list[str]:
    from benchmarks.common import cifar10_subset

    pick = {1: [3], 2: [1, 5], 3: [1, 3, 5], 4: [1, 2, 4, 5], 5: [1, 2, 3, 4, 5]}[cuts]
    root = cifar10_subset(*ctx.sizes["scale_subset"])
    return ["name=bench-scaling", "data.dataset=imagefolder", f"data.root={root}", f"data.cache_dir={ctx.ts_cache}",
            f"data.val_fraction={ctx.sizes['scale_val_fraction']}", f"data.train_per_class={tpc}",
            f"treatments.replicates={reps}", f"train.epochs={ctx.sizes['scale_epochs']}", f"treatments.cut_points={pick}"]


def run(ctx) -> Section:
    from benchmarks.reference import run_reference
    from benchmarks.studies import run_ts

    g = ctx.sizes["grid"]
    c0, r0, t0 = g["base"]
    points = [(c, r0, t0) for c in g["cuts"]] + [(c0, r, t0) for r in g["replicates"]] + [(c0, r0, t) for t in g["tpc"]]
    points = list(dict.fromkeys(points))
    results: list[dict[str, Any]] = []
    for cuts, reps, tpc in points:
        ov = _overrides(ctx, cuts, reps, tpc)
        tag = f"c{cuts}-r{reps}-t{tpc}"
        fast = run_ts(ov + [f"execution.workers={ctx.workers}"], ctx.work / f"scale-fast-{tag}", load_separately=False)
        naive = run_ts(ov + NAIVE, ctx.work / f"scale-naive-{tag}", load_separately=False)
        row = {"cut_points": cuts, "replicates": reps, "train_per_class": tpc, "runs": fast["runs"],
               "fast_s": fast["study_s"], "naive_s": naive["study_s"], "reference_s": None}
        if (cuts, reps, tpc) in [tuple(p) for p in g["reference_at"]]:
            torch.set_num_threads(ctx.default_threads)
            with Timer() as t:
                run_reference(fast["config"])
            row["reference_s"] = t.seconds
            log(f"reference at {tag}: {t.seconds:.1f} s")
        results.append(row)
    png = ctx.docs / "scaling.png" if ctx.write_docs else ctx.out / "scaling.png"
    _plot(results, g, png)
    rows = [[r["cut_points"], r["replicates"], r["train_per_class"], r["runs"], f"{r['fast_s']:.1f}",
             f"{r['naive_s']:.1f}", f"{r['naive_s'] / r['fast_s']:.1f}x",
             f"{r['reference_s']:.1f}" if r["reference_s"] else "", f"{r['reference_s'] / r['fast_s']:.1f}x" if r["reference_s"] else ""]
            for r in results]
    md = "\n".join([
        f"CIFAR-10 subset (first {ctx.sizes['scale_subset'][0]} training / {ctx.sizes['scale_subset'][1]} test JPEGs per "
        f"class, val_fraction {ctx.sizes['scale_val_fraction']}), small `convnet`, {ctx.sizes['scale_epochs']} epochs, "
        "all treatments, both directions; cut points 1: [3], 2: [1, 5], 3: [1, 3, 5], 5: all. "
        f"Base point: {c0} cut points, {r0} replicate(s), {t0} training images per class; one axis varied at a time. "
        f"Times are `run_study` alone (data decoded beforehand). Naive = {', '.join(NAIVE)}.", "",
        md_table(["cut points", "replicates", "train/class", "networks", "transferscope (s)", "naive (s)",
                  "naive / transferscope", "reference (s)", "reference / transferscope"], rows),
        "", f"![scaling]({'scaling.png'})"])
    best = min(r["naive_s"] / r["fast_s"] for r in results)
    checks = [check("naive / transferscope study time, smallest over the grid", best, "(figure; > 1 expected)", best > 1)]
    return Section("scaling", "7. Scaling: cut points, replicates, training images", {"points": results, "png": str(png)},
                   md, checks)


def _plot(results: list[dict[str, Any]], g: dict[str, Any], png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c0, r0, t0 = g["base"]
    axes_def = [("cut_points", "cut points", lambda r: r["replicates"] == r0 and r["train_per_class"] == t0),
                ("replicates", "replicates", lambda r: r["cut_points"] == c0 and r["train_per_class"] == t0),
                ("train_per_class", "training images per class", lambda r: r["cut_points"] == c0 and r["replicates"] == r0)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=False)
    for ax, (key, label, sel) in zip(axes, axes_def):
        pts = sorted((r for r in results if sel(r)), key=lambda r: r[key])
        xs = [r[key] for r in pts]
        ax.plot(xs, [r["fast_s"] for r in pts], "o-", label="transferscope (cached, bf16, 2 workers)")
        ax.plot(xs, [r["naive_s"] for r in pts], "s--", label="naive schedule (recompute, fp32, 1 worker)")
        ref = [(r[key], r["reference_s"]) for r in pts if r["reference_s"]]
        if ref:
            ax.plot(*zip(*ref), "k^:", label="hand-written PyTorch", markersize=8)
        ax.set_xticks(xs)
        ax.set_xlabel(label)
        ax.set_ylabel("study wall time (s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Study wall time vs size (CIFAR-10 subset, small convnet; transferscope includes worker start-up)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
