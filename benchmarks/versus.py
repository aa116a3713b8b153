"""Benchmark 4: transferscope against the study a careful user would write (reference.py).

Both sides run the same CIFAR-10 study (the same subset folder of JPEG files, the same class splits
and the same images in every task part, the same conv net, recipe, treatments, cut points and
replicates). transferscope's time counts its one-time decode (cold cache) and the whole study;
the reference reads the JPEGs through DataLoader workers every epoch.
"""

from __future__ import annotations

import shutil
from typing import Any

import pandas as pd
import torch

from benchmarks.common import Section, Timer, check, fmt_ci, log, md_table, welch_overlap

ROLE_NAMES = {"base": "base", "selffer": "BnB", "selffer+": "BnB+", "transfer": "AnB", "transfer+": "AnB+",
              "random": "random"}


def study_overrides(ctx, cache_dir) -> list[str]:
    from benchmarks.common import cifar10_subset

    s = ctx.sizes
    root = cifar10_subset(*ctx.cifar_subset)
    return ["name=bench-cifar10", "data.dataset=imagefolder", f"data.root={root}", f"data.cache_dir={cache_dir}",
            f"data.train_per_class={s['tpc']}", f"data.val_fraction={s['val_fraction']}",
            f"treatments.replicates={s['replicates']}", f"train.epochs={s['epochs']}",
            f"treatments.cut_points={s['cut_points']}"]


def transferscope_side(ctx) -> dict[str, Any]:
    """The transferscope study of benchmark 4 (run once per suite; benchmark 6 reuses it)."""
    if "versus_ts" not in ctx.memo:
        cache = ctx.work / "ts-cache-versus"
        shutil.rmtree(cache, ignore_errors=True)  # a cold cache: the one-time decode is counted
        from benchmarks.studies import run_ts

        ctx.memo["versus_ts"] = run_ts(study_overrides(ctx, cache) + [f"execution.workers={ctx.workers}"],
                                       ctx.work / "versus-transferscope")
    return ctx.memo["versus_ts"]


def per_treatment(frame: pd.DataFrame) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {}
    for (role, n), g in frame.groupby(["role", "n"]):
        out[(ROLE_NAMES[role], int(n))] = g.test_top1.astype(float).tolist()
    return out


def run(ctx) -> Section:
    from benchmarks.reference import run_reference

    ts = transferscope_side(ctx)
    ts_total = ts["load_s"] + ts["study_s"]
    torch.set_num_threads(ctx.default_threads)  # a user's process: PyTorch's default thread count
    log(f"reference study (plain PyTorch, {torch.get_num_threads()} threads, DataLoader workers 2) ...")
    with Timer() as t:
        ref = run_reference(ts["config"], log=log if ctx.verbose else (lambda s: None))
    ref_total = t.seconds
    ctx.memo["reference_clock"] = {"data_wait_s": ref["data_wait_s"], "step_s": ref["step_s"]}
    ratio = ts_total / ref_total
    a = per_treatment(ts["frame"])
    b = per_treatment(pd.DataFrame(ref["runs"]))
    order = ["base", "BnB", "BnB+", "AnB", "AnB+", "random"]
    rows, within = [], []
    for key in sorted(a, key=lambda k: (k[1], order.index(k[0]))):
        w = welch_overlap(a[key], b.get(key, []))
        within.append(w["within_noise"])
        rows.append([key[0], key[1], len(a[key]), fmt_ci(a[key]), fmt_ci(b.get(key, [])),
                     f"{w['diff']:+.3f} ± {w['half']:.3f}", "yes" if w["within_noise"] else "no"])
    # pooled: every network paired with its counterpart (same replicate, target, treatment, n: the
    # same images), mean difference with a t interval over the networks
    from benchmarks.common import mean_ci

    key = ["replicate", "target", "role", "n"]
    paired = ts["frame"][key + ["test_top1"]].merge(pd.DataFrame(ref["runs"])[key + ["test_top1"]], on=key,
                                                      suffixes=("_ts", "_ref"))
    pm, ph, _ = mean_ci((paired.test_top1_ts - paired.test_top1_ref).astype(float).tolist())
    cfg = ts["config"]
    trains = sorted({r.train_images for r in ts["records"]})
    data = {"transferscope": {"decode_s": ts["load_s"], "study_s": ts["study_s"], "total_s": ts_total,
                              "runs": ts["runs"], "workers": ctx.workers, "precision": ts["records"][0].precision},
            "reference": {"total_s": ref_total, "runs": len(ref["runs"]), "threads": ref["threads"],
                          "loader_workers": ref["loader_workers"], "data_wait_s": ref["data_wait_s"],
                          "step_s": ref["step_s"]},
            "ratio_time": ratio, "speedup": 1 / ratio, "rows_within_noise": sum(within), "rows": len(within),
            "pooled_paired_diff": pm, "pooled_paired_ci95": ph, "pooled_networks": len(paired),
            "table": rows, "study": {"overrides": study_overrides(ctx, "<fresh cache>"), "train_images_per_task": trains}}
    md = [f"Study: CIFAR-10 JPEG subset `{cfg.data.root}` (first {ctx.cifar_subset[0]} training and "
          f"{ctx.cifar_subset[1]} test images per class), {cfg.data.train_per_class} training images per class "
          f"({trains} per task), val_fraction {cfg.data.val_fraction}, 5 vs 5 classes, `convnet` widths [32, 64, 128], "
          f"fc [128, 64], {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, SGD lr {cfg.train.lr} momentum "
          f"{cfg.train.momentum} wd {cfg.train.weight_decay}, cosine; all treatments, cut points {cfg.treatments.cut_points}, "
          f"both directions, {cfg.treatments.replicates} replicates: {ts['runs']} networks on each side.", "",
          md_table(["", "wall time (s)", "what"], [
              ["transferscope: one-time decode", f"{ts['load_s']:.1f}", "JPEG -> uint8 tensors, cold cache"],
              ["transferscope: study", f"{ts['study_s']:.1f}",
               f"{ctx.workers} workers x 1 thread, {data['transferscope']['precision']}, channels_last, cached frozen features"],
              ["transferscope: total", f"{ts_total:.1f}", ""],
              ["reference (plain PyTorch)", f"{ref_total:.1f}",
               f"fp32, {ref['threads']} threads, ImageFolder + DataLoader(num_workers={ref['loader_workers']}), one run after another"],
              ["**ratio transferscope / reference**", f"**{ratio:.3f}**", f"speedup {1 / ratio:.1f}x (target: ratio <= 0.333)"]]),
          "",
          f"Test top-1 per treatment, mean ± 95% CI over the networks (replicates x directions); the difference's "
          f"Welch 95% CI decides 'within noise' ({sum(within)} of {len(within)} rows):", "",
          md_table(["treatment", "n", "networks", "transferscope", "reference", "difference", "within noise"], rows),
          "",
          f"Pooled over all {len(paired)} networks, each paired with its counterpart (same replicate, target, treatment "
          f"and n, hence the same images): transferscope - reference = {pm:+.4f} ± {ph:.4f} (95% CI; the networks of "
          "one replicate share their base networks, so this interval is somewhat optimistic)."]
    checks = [check("transferscope total / reference wall time", ratio, "<= 0.333", ratio <= 1 / 3),
              check("treatment x n rows whose accuracies agree within noise", sum(within) / max(len(within), 1),
                    "all (>= 0.9 allows 1 in 20 false alarms at 95%)", sum(within) / max(len(within), 1) >= 0.9)]
    return Section("versus", "4. transferscope vs a hand-written PyTorch study", data, "\n".join(md), checks)
