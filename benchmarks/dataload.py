"""Benchmark 5: data is never the bottleneck.

Inside transferscope's own training loop (``train_network``), the time spent producing each batch
(indexing the uint8 tensor, normalising, augmenting, channels_last; ``PixelFeed.train_batches``,
or slicing cached features in ``FeatureFeed``) against the time of the model step that consumes it
(forward, loss, backward, optimizer). Measured by wrapping the feed's batch generator.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any


from benchmarks.common import Section, check, log, md_table, threads


@contextlib.contextmanager
def timed_feed(cls, clock: dict[str, float]):
    original = cls.train_batches

    def wrapper(self, *args, **kwargs):
        gen = original(self, *args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(gen)
            except StopIteration:
                return
            t1 = time.perf_counter()
            clock["data_s"] += t1 - t0
            clock["batches"] += 1
            yield batch
            clock["step_s"] += time.perf_counter() - t1

    cls.train_batches = wrapper
    try:
        yield
    finally:
        cls.train_batches = original


def measure(ctx, overrides: list[str], label: str, frozen_n: int = 0) -> dict[str, Any]:
    from transferscope import load_config
    from transferscope.features import FeatureBank
    from transferscope.runner import Runner
    from transferscope.seeds import TrainingSeeds
    from transferscope.study import Study
    from transferscope.train import FeatureFeed, PixelFeed, train_network

    cfg = load_config(overrides=overrides)
    study = Study.prepare(cfg)
    runner = Runner(study, load_source=lambda key: {})
    if frozen_n:
        spec = next(s for s in study.plan if s.role == "random" and s.n == frozen_n and s.replicate == 0 and s.target == "B")
    else:
        spec = next(s for s in study.plan if s.role == "base")
    task = study.task(*spec.task_key)
    clock = {"data_s": 0.0, "step_s": 0.0, "batches": 0}
    with threads(1):
        net = runner.build_network(spec)
        feats = None
        if frozen_n:
            src = runner.source_network(spec)
            bank = FeatureBank(src, task, runner.numerics, views=cfg.train.feature_views, augmented=cfg.train.augment,
                               flip=study.flip, seed=1)
            feats = bank.at(frozen_n)
        with timed_feed(FeatureFeed if frozen_n else PixelFeed, clock):
            t = time.perf_counter()
            train_network(net, task, cfg.train, cfg.eval, copied=spec.copied, seeds=TrainingSeeds.derive(0, spec.key),
                          flip=study.flip, numerics=runner.numerics, features=feats)
            total = time.perf_counter() - t
    ratio = clock["data_s"] / clock["step_s"]
    log(f"data vs step, {label}: data {clock['data_s']:.2f} s, step {clock['step_s']:.2f} s ({ratio:.1%})")
    return {"label": label, "precision": runner.numerics.name, "channels_last": cfg.train.channels_last,
            "augment": cfg.train.augment, **clock, "ratio": ratio, "train_network_s": total,
            "per_batch_data_ms": 1000 * clock["data_s"] / max(clock["batches"], 1),
            "per_batch_step_ms": 1000 * clock["step_s"] / max(clock["batches"], 1)}


def run(ctx) -> Section:
    from benchmarks.versus import study_overrides

    base = study_overrides(ctx, ctx.ts_cache) + [f"train.epochs={ctx.sizes['data_epochs']}"]
    paper = ["model.options={widths=[64,128,256], fc=[512,256]}"]
    rows = [measure(ctx, base, "small convnet (benchmark 4), base network"),
            measure(ctx, base + ["train.precision=fp32", "train.channels_last=false"], "small convnet, fp32, no channels_last"),
            measure(ctx, base + paper, "paper-style convnet (benchmark 2), base network"),
            measure(ctx, base, "small convnet, frozen n=1 on cached features", frozen_n=1)]
    ref = ctx.memo.get("reference_clock")
    worst = max(r["ratio"] for r in rows)
    md = ["Per batch of 64, augmentation on, 1 thread (as in a worker); 'data' = producing the batch, 'step' = "
          "forward, loss, backward and optimizer step.", "",
          md_table(["configuration", "precision", "batches", "data (ms/batch)", "step (ms/batch)", "data / step"],
                   [[r["label"], r["precision"] + (" + channels_last" if r["channels_last"] else ""), r["batches"],
                     f"{r['per_batch_data_ms']:.2f}", f"{r['per_batch_step_ms']:.2f}", f"**{r['ratio']:.1%}**"]
                    for r in rows])]
    if ref:
        md += ["", f"For contrast, the hand-written reference (benchmark 4) waited {ref['data_wait_s']:.1f} s for "
               f"DataLoader batches against {ref['step_s']:.1f} s of steps ({ref['data_wait_s'] / ref['step_s']:.1%}), "
               "with its two loader workers decoding JPEGs on the same two cores as the steps."]
    checks = [check("time producing batches / model step time (worst configuration)", worst, "< 0.10", worst < 0.10)]
    return Section("dataload", "5. Data never the bottleneck", {"rows": rows, "reference": ref}, "\n".join(md), checks)
