"""Benchmark 2: training FLOP/s of the paper-style conv net against this machine's matmul rate.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one training step (forward and
backward; it counts convolutions and matrix multiplies, the work a matmul rate measures). The step
is the one transferscope's training loop takes (autocast, cross-entropy, SGD with momentum and
weight decay), on transferscope's own model and precision settings, with the same thread count as
the matmul. A second figure times ``train_network`` end to end (uint8 batches, normalisation,
augmentation, the step), on an in-memory task of 32-px images.

Accuracy: bf16 against fp32 on the same study (same splits, seeds and data order), base networks
only, several replicates: mean ± std of test top-1 and the paired difference with its 95% CI.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Section, Timer, check, fmt_sd, log, md_table, mean_ci, threads

PAPER_NET = {"widths": [64, 128, 256], "fc": [512, 256]}


def matmul_rate(dtype: torch.dtype, sizes: tuple[int, ...], min_seconds: float) -> dict[int, float]:
    """GFLOP/s of an n x n matrix multiply, for each n."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        for _ in range(2):
            a @ b
        reps, best = 1, 0.0
        while True:  # calibrate, then keep the best of three timings
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            el = time.perf_counter() - t
            if el >= min_seconds / 3:
                break
            reps *= 2
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
        out[n] = best
    return out


def best_time(f, reps: int, blocks: int = 3) -> float:
    """Seconds per call of ``f``: the best of ``blocks`` timings of ``reps`` calls each."""
    best = float("inf")
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def _numerics(precision: str, channels_last: bool):
    from transferscope.config import TrainConfig
    from transferscope.precision import Numerics

    return Numerics.resolve(TrainConfig(precision=precision, channels_last=channels_last), torch.device("cpu"))


def step_rate(options: dict, precision: str, channels_last: bool, batch: int, steps: int,
              profile: bool = False) -> dict[str, Any]:
    """FLOPs of one training step and its time (best of 3 blocks of ``steps``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from transferscope.models import create_model
    from transferscope.train import make_optimizer
    from transferscope.config import TrainConfig

    num = _numerics(precision, channels_last)
    net = num.prepare_model(create_model("convnet", 5, (3, 32, 32), options, init_seed=0)).train()
    opt = make_optimizer(net, TrainConfig(), copied=0)
    x = num.prepare_input(torch.randn(batch, 3, 32, 32))
    y = torch.randint(0, 5, (batch,))

    def step() -> None:
        with num.autocast():
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        with num.autocast():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(3):
        step()
    best = best_time(step, steps)
    out = {"precision": num.name, "channels_last": channels_last, "batch": batch, "flops_per_step": flops,
           "step_s": best, "gflops": flops / best / 1e9}
    if profile:
        out["profile"] = _profile(step)
    return out


def _profile(step) -> dict[str, float]:
    """Share of step time in conv/matmul kernels versus the rest (BatchNorm, ReLU, pooling, ...)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    groups = {"conv": ("convolution", "conv2d"), "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
              "batch_norm": ("batch_norm",), "relu": ("relu", "clamp_min", "threshold"),
              "max_pool": ("max_pool",)}
    totals = dict.fromkeys([*groups, "other"], 0.0)
    all_us = 0.0
    for ev in prof.key_averages():
        us = ev.self_cpu_time_total
        all_us += us
        for g, keys in groups.items():
            if any(k in ev.key for k in keys):
                totals[g] += us
                break
        else:
            totals["other"] += us
    return {k: v / all_us for k, v in totals.items()}


def layer_rates(options: dict, batch: int, reps: int) -> list[dict[str, Any]]:
    """Each weight layer of the bf16 + channels_last net alone, at the shape it sees in the net:
    GFLOP/s of its forward kernel and of its backward (input and weight gradients; the weight
    gradient only for the first layer, whose input needs none). The kernels' own ceiling: a step
    can be no faster than the sum of these, whatever happens to the elementwise work around them."""
    from transferscope.models import create_model

    num = _numerics("bf16", True)
    net = num.prepare_model(create_model("convnet", 5, (3, 32, 32), options, init_seed=0)).train()
    h = num.prepare_input(torch.randn(batch, 3, 32, 32))
    rows = []
    for i, block in enumerate(net.blocks):
        for layer in block:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                x = h.flatten(1) if isinstance(layer, torch.nn.Linear) and h.ndim > 2 else h
                timed = _time_layer(layer, x.detach().requires_grad_(i > 0), num, reps)
                rows.append(timed | {"layer": net.block_names[i]})
        with torch.no_grad(), num.autocast():
            h = block(h)
    return rows


def _time_layer(layer: torch.nn.Module, x: torch.Tensor, num, reps: int) -> dict[str, Any]:
    def fwd() -> torch.Tensor:
        with num.autocast():
            return layer(x)

    out = fwd()
    grad = torch.randn_like(out)
    macs = out.numel() * (layer.in_features if isinstance(layer, torch.nn.Linear)
                          else layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1])
    for _ in range(2):
        fwd().backward(grad)

    t_fwd = best_time(fwd, reps)
    t_both = best_time(lambda: fwd().backward(grad), reps)
    t_bwd = max(t_both - t_fwd, 1e-9)
    bwd_flops = 2 * macs * (2 if x.requires_grad else 1)
    shape = "x".join(map(str, x.shape[1:]))
    return {"kind": type(layer).__name__, "input": shape, "out": tuple(out.shape[1:]), "fwd_s": t_fwd, "bwd_s": t_bwd,
            "fwd_gflops": 2 * macs / t_fwd / 1e9, "bwd_gflops": bwd_flops / t_bwd / 1e9,
            "flops": 2 * macs + bwd_flops}


def end_to_end_rate(options: dict, precision: str, channels_last: bool, images: int, epochs: int) -> dict[str, Any]:
    """Images/s and FLOP/s of ``train_network`` on an in-memory task (augmentation on; tiny
    validation and test parts so that training dominates)."""
    from torch.utils.flop_counter import FlopCounterMode

    from transferscope.config import EvalConfig, TrainConfig
    from transferscope.data.tasks import Part, Task
    from transferscope.models import create_model
    from transferscope.seeds import TrainingSeeds
    from transferscope.train import train_network

    g = torch.Generator().manual_seed(0)
    part = lambda n: Part(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),  # noqa: E731
                          torch.arange(n) % 5)
    task = Task("B", tuple("abcde"), part(images), part(64), part(64), (0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(epochs=epochs, precision=precision, channels_last=channels_last)
    num = _numerics(precision, channels_last)
    net = num.prepare_model(create_model("convnet", 5, (3, 32, 32), options, init_seed=0))
    x = num.prepare_input(torch.randn(cfg.batch_size, 3, 32, 32))
    counter = FlopCounterMode(display=False)
    with counter:
        with num.autocast():
            loss = F.cross_entropy(net(x), torch.zeros(cfg.batch_size, dtype=torch.long))
        loss.backward()
    net.zero_grad(set_to_none=True)
    per_image = counter.get_total_flops() / cfg.batch_size
    steps = images // cfg.batch_size
    with Timer() as t:
        train_network(net, task, cfg, EvalConfig(), copied=0, seeds=TrainingSeeds.derive(1), flip=True, numerics=num)
    trained = steps * cfg.batch_size * epochs
    return {"precision": num.name, "channels_last": channels_last, "images_per_s": trained / t.seconds,
            "gflops": per_image * trained / t.seconds / 1e9, "seconds": t.seconds}


def accuracy_study(tag: str, overrides: list[str], out_dir, workers: int) -> dict[str, Any]:
    """Base networks of the same study in fp32 and in bf16 (same splits, seeds, data order)."""
    from benchmarks.studies import run_ts

    per = {}
    for precision in ("fp32", "bf16"):
        res = run_ts(overrides + [f"train.precision={precision}", "treatments.names=[\"base\"]",
                                  f"execution.workers={workers}"], out_dir / f"{tag}-{precision}")
        f = res["frame"].sort_values("key")
        per[precision] = {"keys": f.key.tolist(), "test_top1": f.test_top1.tolist(), "seconds": res["study_s"]}
    a, b = per["fp32"]["test_top1"], per["bf16"]["test_top1"]
    diffs = [y - x for x, y in zip(a, b)]
    m, half, _ = mean_ci(diffs)
    return {"tag": tag, "overrides": overrides, "fp32": per["fp32"], "bf16": per["bf16"],
            "paired_diff_mean": m, "paired_diff_ci95": half,
            "within_noise": bool(abs(m) <= (half if half == half else 0.0)) or max(map(abs, diffs)) == 0.0}


def run(ctx) -> Section:
    q = ctx.quick
    t_threads = ctx.threads
    data: dict[str, Any] = {"threads": t_threads, "net": {"arch": "convnet", **PAPER_NET, "image": "3x32x32",
                                                          "classes": 5}}
    with threads(t_threads):
        sizes = (512, 1024) if q else (1024, 2048, 4096)
        mm = {}
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            mm[name] = matmul_rate(dt, sizes, 0.3 if q else 1.5)
            log(f"matmul {name}: " + ", ".join(f"{n}: {r:.0f} GFLOP/s" for n, r in mm[name].items()))
        data["matmul_gflops"] = {k: {str(n): r for n, r in v.items()} for k, v in mm.items()}
        peak = {k: max(v.values()) for k, v in mm.items()}
        data["matmul_peak_gflops"] = peak
        batch = 64 if q else 128
        steps = 2 if q else 8
        rows = []
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                r = step_rate(PAPER_NET, precision, cl, batch, steps, profile=(precision == "bf16" and cl))
                r["fraction_of_matmul"] = r["gflops"] / peak[precision]
                e2e = end_to_end_rate(PAPER_NET, precision, cl, 512 if q else 2048, 1)
                r["end_to_end_gflops"] = e2e["gflops"]
                r["end_to_end_images_per_s"] = e2e["images_per_s"]
                r["end_to_end_fraction"] = e2e["gflops"] / peak[precision]
                rows.append(r)
                log(f"convnet step {precision} channels_last={cl}: {r['gflops']:.0f} GFLOP/s "
                    f"({r['fraction_of_matmul']:.0%} of matmul), end to end {e2e['gflops']:.0f} GFLOP/s")
        data["steps"] = rows
        layers = layer_rates(PAPER_NET, batch, 2 if q else 5)
        data["layers"] = layers

    # accuracy: bf16 vs fp32
    acc = []
    reps = 2 if q else 3
    acc.append(accuracy_study("digits", ["data.dataset=digits", f"treatments.replicates={reps}",
                                         f"train.epochs={4 if q else 20}"], ctx.work, ctx.workers))
    if not q:
        from benchmarks.common import cifar10_subset

        root = cifar10_subset(*ctx.cifar_subset)
        acc.append(accuracy_study("cifar10-paper-net", [
            "data.dataset=imagefolder", f"data.root={root}", f"data.cache_dir={ctx.ts_cache}",
            f"data.train_per_class={ctx.sizes['acc_tpc']}", f"treatments.replicates={reps}",
            f"train.epochs={ctx.sizes['acc_epochs']}", "model.options={widths=[64,128,256], fc=[512,256]}"],
            ctx.work, ctx.workers))
    data["accuracy"] = acc

    bf = next(r for r in rows if r["precision"] == "bf16" and r["channels_last"])
    fp = next(r for r in rows if r["precision"] == "fp32" and r["channels_last"])
    prof = bf.get("profile", {})
    kernel = prof.get("conv", 0) + prof.get("matmul", 0)
    md = [f"Net: `convnet` widths {PAPER_NET['widths']}, fc {PAPER_NET['fc']} (conv3x3-BN-maxpool-ReLU x3, "
          f"fc 4096-512-256-5), 3x32x32 inputs, batch {batch}, {t_threads} thread(s), SGD step as in `train.py`. "
          f"FLOPs per step (FlopCounterMode, forward+backward): {bf['flops_per_step'] / 1e9:.2f} GFLOP.",
          "",
          "Matrix multiply (n x n, best of 3): " + "; ".join(
              f"{k} " + ", ".join(f"{n}: {r:.0f}" for n, r in v.items()) + " GFLOP/s" for k, v in mm.items()),
          "",
          md_table(["precision", "channels_last", "step (ms)", "GFLOP/s (step)", "of matmul peak",
                    "GFLOP/s (train_network, end to end)", "of matmul peak"],
                   [[r["precision"], r["channels_last"], f"{r['step_s'] * 1000:.1f}", f"{r['gflops']:.0f}",
                     f"{r['fraction_of_matmul']:.0%}", f"{r['end_to_end_gflops']:.0f}", f"{r['end_to_end_fraction']:.0%}"]
                    for r in rows]),
          ""]
    if prof:
        md += ["Where the bf16 + channels_last step's time goes (torch profiler, self CPU time): " + ", ".join(
            f"{k} {v:.0%}" for k, v in prof.items()) + f". The convolution and matmul kernels alone run at "
            f"{bf['gflops'] / max(kernel, 1e-9):.0f} GFLOP/s ({bf['gflops'] / max(kernel, 1e-9) / peak['bf16']:.0%} "
            "of the matmul peak); the rest is memory-bound elementwise work.", ""]
    kernel_s = sum(r["fwd_s"] + r["bwd_s"] for r in layers)
    ceiling = sum(r["flops"] for r in layers) / kernel_s / 1e9
    data["kernel_ceiling_gflops"] = ceiling
    md += ["Each weight layer of the bf16 + channels_last net alone, at the shape it has in the net (forward; "
           "backward = input and weight gradients, the weight gradient only for conv1). Even if everything "
           f"between these kernels (BatchNorm, ReLU, pooling, the optimizer) cost nothing, a step would run at "
           f"{ceiling:.0f} GFLOP/s, **{ceiling / peak['bf16']:.0%} of the bf16 matmul rate**"
           + (": the kernels themselves (the convolutions' weight gradients most of all) stay below 70% of it."
              if ceiling / peak["bf16"] < 0.7 else "; the gap to it is the elementwise work around the kernels."),
           "",
           md_table(["layer", "kernel", "input", "forward (ms)", "forward GFLOP/s", "of matmul", "backward (ms)",
                     "backward GFLOP/s", "of matmul"],
                    [[r["layer"], r["kind"], r["input"], f"{r['fwd_s'] * 1e3:.1f}", f"{r['fwd_gflops']:.0f}",
                      f"{r['fwd_gflops'] / peak['bf16']:.0%}", f"{r['bwd_s'] * 1e3:.1f}", f"{r['bwd_gflops']:.0f}",
                      f"{r['bwd_gflops'] / peak['bf16']:.0%}"] for r in layers]),
           ""]
    md += ["Accuracy, bf16 vs fp32 (base networks, same splits/seeds/data order; test top-1 mean ± std; paired "
           "difference bf16 - fp32 with 95% CI):", "",
           md_table(["study", "networks", "fp32", "bf16", "bf16 - fp32", "within noise"],
                    [[a["tag"], len(a["fp32"]["test_top1"]), fmt_sd(a["fp32"]["test_top1"]),
                      fmt_sd(a["bf16"]["test_top1"]), f"{a['paired_diff_mean']:+.3f} ± {a['paired_diff_ci95']:.3f}",
                      "yes" if a["within_noise"] else "no"] for a in acc])]
    checks = [check("bf16 + channels_last step FLOP/s / bf16 matmul FLOP/s", bf["fraction_of_matmul"], ">= 0.70",
                    bf["fraction_of_matmul"] >= 0.70),
              check("bf16 conv/matmul kernels alone (the ceiling if all other work were free) / bf16 matmul",
                    ceiling / peak["bf16"], "(none; above the step's ratio)", True),
              check("fp32 + channels_last step FLOP/s / fp32 matmul FLOP/s (for reference)", fp["fraction_of_matmul"],
                    "(none)", True)]
    checks += [check(f"bf16 accuracy = fp32 within replicate noise ({a['tag']})", a["paired_diff_mean"],
                     "paired CI includes 0", a["within_noise"]) for a in acc]
    return Section("flops", "2. FLOP/s of the paper-style conv net vs the matmul rate", data, "\n".join(md), checks)
