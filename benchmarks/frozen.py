"""Benchmark 3: frozen work done once.

(a) A frozen run on cached features against training its trainable layers alone: the same suffix
    blocks as a standalone ``nn.Sequential``, trained by a plain loop on the same cached tensors
    (same epochs, batches, optimizer, precision, and the same validation/test evaluations). The
    FeatureBank's one prefix pass is timed separately and shared among the group's runs.
(b) The cached and the naive (``train.frozen_features = "recompute"``) paths: identical metrics
    with augmentation off; with augmentation on (the cache holds V augmented views, cycled),
    accuracy per treatment within replicate noise.
(c) The memory of cached features, bounded by ``train.feature_memory_gb``.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import Section, check, fmt_ci, log, md_table, mean_ci, threads, welch_overlap


def _standalone(suffix: nn.Module, feats, task, cfg, eval_batch: int, numerics, seed: int) -> float:
    """Train ``suffix`` on the cached tensors with a plain loop; returns the seconds taken."""
    from transferscope.seeds import generator
    from transferscope.train import FUSED_SGD_DEVICES

    start = time.perf_counter()
    # the same SGD kernel as transferscope's (train.make_optimizer: fused on CPU and CUDA)
    opt = torch.optim.SGD(suffix.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          fused=numerics.device.type in FUSED_SGD_DEVICES or None)
    g = generator(seed)
    y = {p: getattr(task, p).y for p in ("train", "val", "test")}
    n = len(y["train"])
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
        suffix.train()
        view = feats.train_views[epoch % len(feats.train_views)]
        order = torch.randperm(n, generator=g)
        for i in range(0, n - n % cfg.batch_size, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            with numerics.autocast():
                loss = F.cross_entropy(suffix(view[idx]), y["train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for part in ["val"] + (["test"] if epoch == cfg.epochs - 1 else []):
            suffix.eval()
            x = getattr(feats, part)
            with torch.no_grad(), numerics.autocast():
                correct = sum((suffix(x[i : i + eval_batch]).argmax(1) == y[part][i : i + eval_batch]).sum().item()
                              for i in range(0, len(x), eval_batch))
            _ = correct / len(x)
    return time.perf_counter() - start


def part_a(ctx, overrides: list[str]) -> dict[str, Any]:
    from transferscope import load_config
    from transferscope.features import FeatureBank, plan_views
    from transferscope.runner import Runner
    from transferscope.seeds import TrainingSeeds, derive_seed
    from transferscope.study import Study
    from transferscope.train import train_network

    cfg = load_config(overrides=overrides)
    study = Study.prepare(cfg)
    runner = Runner(study, load_source=lambda key: {})
    specs = [s for s in study.plan if s.role == "random" and s.replicate == 0 and s.target == "B"]
    first = specs[0]
    task = study.task(*first.task_key)
    tc = cfg.train
    num = runner.numerics
    reps = 1 if ctx.quick else 3
    rows = []
    with threads(1):  # as in a worker
        source = runner.source_network(first)
        views = plan_views(source, task, num, tuple(s.n for s in specs), tc.feature_views, tc.augment,
                           tc.feature_memory_gb * 2**30)
        t = time.perf_counter()
        bank = FeatureBank(source, task, num, views=views, augmented=tc.augment, flip=study.flip,
                           seed=derive_seed("views", cfg.seed, first.source_net, first.target))
        bank_init = time.perf_counter() - t
        steps = []
        for spec in specs:
            t = time.perf_counter()
            feats = bank.at(spec.n)
            steps.append(time.perf_counter() - t)
            engine, alone = [], []
            seed = derive_seed("data", cfg.seed, spec.key)

            def time_engine() -> None:
                net = runner.build_network(spec)
                t = time.perf_counter()
                train_network(net, task, tc, cfg.eval, copied=spec.copied, seeds=TrainingSeeds.derive(seed), flip=study.flip,
                              numerics=num, features=feats)
                engine.append(time.perf_counter() - t)

            def time_alone() -> None:
                fresh = runner.build_network(spec)
                suffix = num.prepare_model(nn.Sequential(*[copy.deepcopy(b) for b in fresh.blocks[spec.n:]]))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    alone.append(_standalone(suffix, feats, task, tc, cfg.eval.batch_size, num, seed))

            time_engine()  # a warm-up pair
            time_alone()
            # short runs (the top layers: tens of ms) get more timings, about a second per side
            pairs = reps if ctx.quick else min(20, max(reps, round(1.0 / max(engine[0], 1e-3))))
            for i in range(pairs):  # interleaved, alternating which goes first
                first, second = (time_engine, time_alone) if i % 2 == 0 else (time_alone, time_engine)
                first()
                second()
            engine, alone = engine[1:], alone[1:]
            rows.append({"n": spec.n, "engine_s": min(engine), "standalone_s": min(alone), "views": len(feats.train_views),
                         "memory_mb": feats.nbytes / 2**20})
            log(f"frozen n={spec.n}: train_network {min(engine):.2f} s, standalone suffix {min(alone):.2f} s")
    bank_total = bank_init + sum(steps)
    share = bank_total / len(specs)
    for r in rows:
        r["ratio"] = r["engine_s"] / r["standalone_s"]
        r["ratio_with_share"] = (r["engine_s"] + share) / r["standalone_s"]
    total_engine = sum(r["engine_s"] for r in rows)
    total_alone = sum(r["standalone_s"] for r in rows)
    return {"rows": rows, "group_engine_s": total_engine, "group_standalone_s": total_alone,
            "group_ratio": total_engine / total_alone, "group_ratio_with_bank": (total_engine + bank_total) / total_alone,
            "bank_init_s": bank_init, "bank_step_s": steps, "bank_total_s": bank_total,
            "share_s": share, "runs_sharing": len(specs), "train_images": len(task.train), "epochs": tc.epochs,
            "precision": num.name, "views": views}


def part_b(ctx, base: list[str]) -> dict[str, Any]:
    from benchmarks.studies import metrics_equal, run_ts

    out: dict[str, Any] = {}
    # augmentation off: every frozen run's metrics must be identical
    exact = []
    precisions = ("auto", "fp32") if not ctx.quick else ("auto",)
    for precision in precisions:
        ov = base + ["train.augment=false", "treatments.replicates=1", f"train.epochs={ctx.sizes['b_exact_epochs']}",
                     f"train.precision={precision}", f"execution.workers={ctx.workers}"]
        c = run_ts(ov + ["train.frozen_features=cached"], ctx.work / f"frozen-exact-{precision}-cached")
        r = run_ts(ov + ["train.frozen_features=recompute"], ctx.work / f"frozen-exact-{precision}-recompute")
        frozen_keys = {x.key for x in c["records"] if x.frozen_layers > 0}
        same = metrics_equal(c["records"], r["records"], frozen_keys)
        exact.append({"precision": c["records"][0].precision, **same, "cached_s": c["study_s"], "recompute_s": r["study_s"],
                      "cache_used": sum(1 for x in c["records"] if x.feature_cache)})
    out["exact"] = exact
    # augmentation on: within replicate noise
    ov = base + ["train.augment=true", f"treatments.replicates={ctx.sizes['b_aug_replicates']}",
                 f"train.epochs={ctx.sizes['b_aug_epochs']}", f"execution.workers={ctx.workers}"]
    c = run_ts(ov + ["train.frozen_features=cached"], ctx.work / "frozen-aug-cached")
    r = run_ts(ov + ["train.frozen_features=recompute"], ctx.work / "frozen-aug-recompute")
    fc, fr = c["frame"], r["frame"]
    rows, within = [], []
    frozen_roles = ["selffer", "transfer", "random"]
    fc, fr = fc[fc.role.isin(frozen_roles)], fr[fr.role.isin(frozen_roles)]
    for (role, n), g in fc.groupby(["role", "n"]):
        other = fr[(fr.role == role) & (fr.n == n)].test_top1.tolist()
        w = welch_overlap(g.test_top1.tolist(), other)
        within.append(w["within_noise"])
        rows.append([role, int(n), len(g), fmt_ci(g.test_top1.tolist()), fmt_ci(other),
                     f"{w['diff']:+.3f} ± {w['half']:.3f}", "yes" if w["within_noise"] else "no"])
    merged = fc.merge(fr, on="key", suffixes=("_c", "_r"))
    m, half, _ = mean_ci((merged.test_top1_c - merged.test_top1_r).tolist())
    out["augmented"] = {"rows": rows, "within": sum(within), "total": len(within), "paired_mean": m, "paired_ci95": half,
                        "cached_s": c["study_s"], "recompute_s": r["study_s"], "runs": c["runs"],
                        "views": sorted({x.feature_cache.views for x in c["records"] if x.feature_cache}),
                        "memory_mb_max": max((x.feature_cache.memory_mb for x in c["records"] if x.feature_cache), default=0.0),
                        "limit_gb": c["config"].train.feature_memory_gb}
    return out


def part_c(ctx, overrides: list[str]) -> dict[str, Any]:
    """Cached-feature memory under several ``train.feature_memory_gb`` limits: the views planned,
    the largest resident cache (one cut point's features) and the transient peak while the bank
    advances (the previous cut point's features still held while the next is computed)."""
    from transferscope import load_config
    from transferscope.features import FeatureBank, plan_views
    from transferscope.runner import Runner
    from transferscope.study import Study

    cfg = load_config(overrides=overrides)
    study = Study.prepare(cfg)
    runner = Runner(study, load_source=lambda key: {})
    specs = [s for s in study.plan if s.role == "random" and s.replicate == 0 and s.target == "B"]
    task = study.task(*specs[0].task_key)
    num = runner.numerics
    cuts = tuple(s.n for s in specs)
    source = runner.source_network(specs[0])

    def measure(views: int) -> tuple[list[float], list[float]]:
        bank = FeatureBank(source, task, num, views=views, augmented=True, flip=study.flip, seed=0)
        level0 = sum(t.numel() * t.element_size() for t in (*bank.train, bank.val, bank.test))
        sizes, prev = [], level0
        peaks = []
        for n in cuts:
            now = bank.at(n).nbytes
            sizes.append(now)
            peaks.append(prev + now)
            prev = now
        return sizes, peaks, level0

    with threads(1):
        one, _, lvl0_1 = measure(1)
        two, _, lvl0_2 = measure(2)
        per_view = max(max(b - a for a, b in zip(one, two)), lvl0_2 - lvl0_1)
        fixed = max(max(one), lvl0_1) - per_view
        limits = [cfg.train.feature_memory_gb]
        limits += [(fixed + v * per_view) * 1.05 / 2**30 for v in (2, 1)] + [fixed * 0.9 / 2**30]
        rows = []
        for gb in limits:
            views = plan_views(source, task, num, cuts, cfg.train.feature_views, True, gb * 2**30)
            if views:
                sizes, peaks, lvl0 = measure(views)
                resident = max(max(sizes), lvl0)
                rows.append({"limit_mb": gb * 1024, "views": views, "resident_max_mb": resident / 2**20,
                             "transient_peak_mb": max(peaks) / 2**20, "within": resident <= gb * 2**30})
            else:
                rows.append({"limit_mb": gb * 1024, "views": 0, "resident_max_mb": 0.0, "transient_peak_mb": 0.0,
                             "within": True})
    return {"rows": rows, "train_images": len(task.train), "eval_images": len(task.val) + len(task.test),
            "per_view_mb": per_view / 2**20, "fixed_mb": fixed / 2**20}


def run(ctx) -> Section:
    from benchmarks.versus import study_overrides

    cifar = study_overrides(ctx, ctx.ts_cache) + [f"train.epochs={ctx.sizes['a_epochs']}"]
    a = part_a(ctx, cifar)
    digits = ["data.dataset=digits"]
    b = part_b(ctx, digits)
    c = part_c(ctx, cifar)
    worst = max(r["ratio"] for r in a["rows"])
    md = [f"(a) One frozen group (the random control, replicate 0, target B) of the benchmark-4 CIFAR-10 study: "
          f"{a['train_images']} training images, {a['epochs']} epochs, {a['precision']}, {a['views']} cached views, "
          f"1 thread. `train_network` on the cached features against the same suffix blocks as a standalone "
          f"`nn.Sequential` trained by a plain loop on the same tensors (same batches, optimizer, precision and "
          f"evaluations); interleaved, best of 3 to 20 timings (about a second of each) after a warm-up pair. "
          f"The FeatureBank's one prefix pass: "
          f"{a['bank_total_s']:.2f} s in all ({a['bank_init_s']:.2f} s inputs and augmented views, then "
          + ", ".join(f"{s:.2f}" for s in a["bank_step_s"]) + f" s per cut point), a share of {a['share_s']:.2f} s "
          f"for each of its {a['runs_sharing']} runs.", "",
          md_table(["n", "train_network (s)", "standalone suffix (s)", "ratio", "ratio incl. share of prefix pass",
                    "views", "cache (MB)"],
                   [[r["n"], f"{r['engine_s']:.2f}", f"{r['standalone_s']:.2f}", f"**{r['ratio']:.2f}**",
                     f"{r['ratio_with_share']:.2f}", r["views"], f"{r['memory_mb']:.1f}"] for r in a["rows"]]
                   + [["all 5", f"{a['group_engine_s']:.2f}", f"{a['group_standalone_s']:.2f}", f"**{a['group_ratio']:.2f}**",
                       f"{a['group_ratio_with_bank']:.2f}", "", ""]]),
          "",
          f"At n = 4-5 a run trains one or two small fc layers for a few tens of milliseconds, so what the ratio "
          f"shows there is `train_network`'s own cost per run ("
          f"{max((r['engine_s'] - r['standalone_s']) * 1e3 for r in a['rows'] if r['n'] >= 4):.1f} ms at most here: "
          f"the recorded training loss, the history, the mode switches around every evaluation).",
          "",
          "(b) Cached vs naive (`train.frozen_features = \"recompute\"`) on the digits study, every frozen run "
          "compared. Augmentation off, metrics and per-epoch history compared exactly:", "",
          md_table(["precision", "frozen runs compared", "identical", "cached study (s)", "recompute study (s)"],
                   [[e["precision"], e["compared"], "yes" if e["identical"] else f"NO ({len(e['differ'])} differ)",
                     f"{e['cached_s']:.1f}", f"{e['recompute_s']:.1f}"] for e in b["exact"]]),
          "",
          f"Augmentation on ({b['augmented']['runs']} runs, cached views {b['augmented']['views']}): test top-1 per "
          f"frozen treatment, mean ± 95% CI over replicates x directions; {b['augmented']['within']} of "
          f"{b['augmented']['total']} rows within noise; paired difference over all frozen runs (cached - recompute) "
          f"{b['augmented']['paired_mean']:+.4f} ± {b['augmented']['paired_ci95']:.4f}. Study time cached "
          f"{b['augmented']['cached_s']:.1f} s, recompute {b['augmented']['recompute_s']:.1f} s.", "",
          md_table(["role", "n", "networks", "cached", "recompute", "difference", "within noise"], b["augmented"]["rows"]),
          "",
          f"(c) Memory of cached features (CIFAR-10 task: {c['train_images']} training, {c['eval_images']} val+test "
          f"images; {c['per_view_mb']:.1f} MB per training view and {c['fixed_mb']:.1f} MB for val+test at the widest "
          f"level). The run records report `feature_cache.memory_mb` and `.views` (digits study above: largest "
          f"{b['augmented']['memory_mb_max']:.2f} MB under the default {b['augmented']['limit_gb']} GB).", "",
          md_table(["train.feature_memory_gb (MB)", "views planned", "largest resident cache (MB)", "within limit",
                    "transient peak while advancing a cut point (MB)"],
                   [[f"{r['limit_mb']:.1f}", r["views"] if r["views"] else "0 (runs recompute)",
                     f"{r['resident_max_mb']:.1f}", "yes" if r["within"] else "NO", f"{r['transient_peak_mb']:.1f}"]
                    for r in c["rows"]])]
    checks = [check("frozen run on cached features / standalone suffix training (worst n)", worst, "<= 1.2", worst <= 1.2),
              check("the same, summed over the group's runs", a["group_ratio"], "<= 1.2", a["group_ratio"] <= 1.2)]
    checks += [check(f"cached == recompute without augmentation ({e['precision']})", float(e["identical"]), "identical",
                     e["identical"]) for e in b["exact"]]
    aug = b["augmented"]
    checks.append(check("cached vs recompute with augmentation: rows within noise", aug["within"] / max(aug["total"], 1),
                        ">= 0.9", aug["within"] / max(aug["total"], 1) >= 0.9))
    checks.append(check("cached features within train.feature_memory_gb", float(all(r["within"] for r in c["rows"])),
                        "all limits", all(r["within"] for r in c["rows"])))
    return Section("frozen", "3. Frozen work done once", {"a": a, "b": b, "c": c}, "\n".join(md), checks)
