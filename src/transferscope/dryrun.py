"""What ``transferscope run --dry-run`` knows before anything trains: the network's layers (name,
output shape, parameters) at every cut point, the parameters each treatment trains, and the
study's wall time, estimated from a few training steps timed here (disk.py estimates the disk).

The time estimate counts, for every run of the plan, its network's construction, its optimisation
steps (train.py's budget) with their image batches prepared (normalised, augmented), its evaluation
passes (validation after every epoch, test once) and, for frozen runs that share their prefix
outputs, the one pass computing them per job. It prices them with a calibration on this machine:
SGD steps of the whole network at ``train.batch_size`` (precision, channels-last and
``execution.threads`` as the study's workers use), one forward pass timed block by block, one batch
prepared, one network built; a step of layers n+1..L is the whole step scaled by those layers'
share of the forward time. The sum, divided by the worker processes, is the wall time with every
worker busy: start-up, data loading and the report come on top. Measured against recorded runs
(docs/performance.md): within 5% on examples/cifar10.toml, where steps dominate; 0.6-0.7 of the
recorded time on the default digits study, whose millisecond steps leave Python's per-epoch
bookkeeping, which the calibration does not time, a large share.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from transferscope.analysis.networks import reduce_features
from transferscope.data.augment import augment, normalize
from transferscope.executors import default_workers
from transferscope.precision import Numerics, resolve_device, torch_threads
from transferscope.runner import PROBE_FEATURES, shares_frozen_features
from transferscope.surgery import freeze, parameter_counts
from transferscope.treatments import RunSpec, group_jobs

if TYPE_CHECKING:
    from transferscope.study import Study


@dataclass(frozen=True)
class Layer:
    """Block n of the network: its name, output shape per image, parameters, and the parameters
    of blocks 1..n (what a copy at cut point n carries)."""

    n: int
    name: str
    output_shape: tuple[int, ...]
    params: int
    copied_params: int


def layers(study: Study) -> list[Layer]:
    """Every block of the study's network, measured on one image of the study's shape."""
    first = study.plan[0]
    net = study.network(first.replicate, first.target).eval()
    x = torch.zeros(1, *study.image_shape)
    out, copied = [], 0
    with torch.no_grad():
        for i, (name, block) in enumerate(zip(net.block_names, net.blocks), start=1):
            x = block(x)
            params = sum(p.numel() for p in block.parameters())
            copied += params
            out.append(Layer(i, name, tuple(x.shape[1:]), params, copied))
    return out


def trainable_params(study: Study) -> dict[tuple[str, int], int]:
    """(treatment, n) -> the parameters its networks train (a probe: its linear classifier on
    layer n's features, reduced as the runner reduces them)."""
    shapes = {layer.n: layer.output_shape for layer in layers(study)}
    bn_affine = study.config.treatments.frozen_bn == "train-affine"
    out: dict[tuple[str, int], int] = {}
    for spec in study.plan:
        if (spec.treatment, spec.n) in out:
            continue
        classes = len(study.split(spec.replicate).classes(spec.target))
        if spec.kind.head == "linear":
            dim = reduce_features(torch.zeros(1, *shapes[spec.n]), PROBE_FEATURES).shape[1]
            out[spec.treatment, spec.n] = dim * classes + classes
            continue
        with torch.device("meta"):
            net = freeze(study.network(spec.replicate, spec.target), spec.frozen, bn_affine=bn_affine)
        out[spec.treatment, spec.n] = parameter_counts(net)[0]
    return out


@dataclass(frozen=True)
class Calibration:
    """Seconds measured on this machine: one SGD step of the whole network on a batch, and the
    forward pass of each block per image (eval mode, no gradients)."""

    step: float
    block_forward: tuple[float, ...]
    batch_size: int
    #: preparing one training batch of images: normalisation and, with ``train.augment``, augmentation
    batch_input: float
    #: building one run's network (its initialisation) before it trains
    setup: float
    threads: int
    numerics: str
    device: str

    @property
    def forward(self) -> float:
        return sum(self.block_forward)

    def prefix(self, n: int) -> float:
        """Forward of blocks 1..n, per image."""
        return sum(self.block_forward[:n])

    def suffix_share(self, n: int) -> float:
        """Blocks n+1..L's share of the forward time (and, so estimated, of a training step)."""
        return sum(self.block_forward[n:]) / self.forward if self.forward > 0 else 1.0


def calibrate(study: Study, seconds: float = 1.0, max_steps: int = 20) -> Calibration:
    """Time SGD steps of the study's network on random images, as a worker would run them (after
    two untimed ones; for about ``seconds`` or ``max_steps``, at least two; the median), and
    forward passes block by block (the fastest of three)."""
    cfg = study.config
    device = resolve_device(cfg.execution.device)
    numerics = Numerics.resolve(cfg.train, device)
    first = study.plan[0]
    classes = len(study.split(first.replicate).classes(first.target))
    batch = cfg.train.batch_size
    g = torch.Generator().manual_seed(0)
    x = numerics.prepare_input(torch.randn(batch, *study.image_shape, generator=g).to(device))
    y = torch.randint(0, classes, (batch,), generator=g).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch_threads(cfg.execution.threads):
        net = numerics.prepare_model(study.network(first.replicate, first.target, init_seed=0))
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=cfg.train.momentum)
        net.train()
        times: list[float] = []
        warm = 2  # the first steps pay for allocation and kernel selection
        while len(times) < 2 or (sum(times) < seconds and len(times) < max_steps):
            sync()
            start = time.perf_counter()
            with numerics.autocast():
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            if warm:
                warm -= 1
            else:
                times.append(time.perf_counter() - start)
        net.eval()
        passes = []
        with torch.no_grad(), numerics.autocast():
            for _ in range(3):
                h, row = x, []
                for block in net.blocks:
                    sync()
                    start = time.perf_counter()
                    h = block(h)
                    sync()
                    row.append((time.perf_counter() - start) / batch)
                passes.append(row)
        inputs = []
        images = torch.randint(0, 256, (batch, *study.image_shape), dtype=torch.uint8, generator=g)
        for _ in range(3):
            start = time.perf_counter()
            xb = normalize(images.to(device), (0.5,) * study.image_shape[0], (0.25,) * study.image_shape[0])
            if cfg.train.augment:
                xb = augment(xb, g, flip=True)
            numerics.prepare_input(xb)
            sync()
            inputs.append(time.perf_counter() - start)
        start = time.perf_counter()
        numerics.prepare_model(study.network(first.replicate, first.target, init_seed=1))
        setup = time.perf_counter() - start
    fastest = min(passes, key=sum)
    return Calibration(statistics.median(times), tuple(fastest), batch, min(inputs), setup, cfg.execution.threads,
                       numerics.name, str(device))


def busy_note() -> str:
    """A warning where other work shares the machine: the calibration then measures it slower than
    the study, run alone, will be."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on every platform
        return ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load <= cores:
        return ""
    return (f"the machine was busy while calibrating (load {load:.1f} on {cores} cores), so the time is "
            "an overestimate of a run on a quiet machine")


@dataclass(frozen=True)
class TimeEstimate:
    worker_seconds: float  # all runs one after another, in one worker
    workers: int
    calibration: Calibration

    @property
    def wall_seconds(self) -> float:
        return self.worker_seconds / self.workers


def run_seconds(study: Study, spec: RunSpec, cal: Calibration, shared: bool) -> float:
    """Seconds one run takes by the calibration: its steps, its evaluations and, where its prefix
    is not shared with its job, the prefix forward of every batch."""
    val, test = study.eval_images(spec.replicate, spec.target)
    if spec.kind.head == "linear":  # layer n's features of every image, then a closed-form fit
        return (study.train_images(*spec.task_key) + val + test) * cal.prefix(spec.n)
    budget = study.budget(spec)
    share = cal.suffix_share(spec.frozen) if spec.frozen else 1.0
    seconds = cal.setup + budget.steps * cal.step * share + (budget.epochs * val + test) * cal.forward * share
    if not (spec.frozen and shared):  # images, not stored prefix outputs: each batch prepared
        seconds += budget.steps * cal.batch_input
    if spec.frozen and not shared:  # the frozen prefix runs again on every training batch
        seconds += budget.steps * cal.batch_size * cal.prefix(spec.frozen)
    return seconds


def estimate_time(study: Study, cal: Calibration, specs: list[RunSpec] | None = None) -> TimeEstimate:
    """The wall time of ``specs`` (default: the whole plan) on this machine's workers."""
    cfg = study.config
    specs = study.plan if specs is None else specs
    share = shares_frozen_features(cfg)
    total = 0.0
    for job in group_jobs(specs, share):
        total += sum(run_seconds(study, s, cal, job.shares_features) for s in job.specs)
        if job.shares_features:  # the prefix outputs, computed once per job
            first = job.specs[0]
            val, test = study.eval_images(first.replicate, first.target)
            views = cfg.train.feature_views if cfg.train.augment else 1
            total += (views * study.train_images(*first.task_key) + val + test) * cal.prefix(
                max(s.n for s in job.specs))
    workers = default_workers(cfg) if cfg.execution.executor == "local" else 1
    return TimeEstimate(total, workers, cal)


def block_flops(study: Study) -> tuple[float, ...]:
    """Forward FLOPs per image of each block of the study's network (torch's FlopCounterMode on one
    image: a multiply-add counts 2; convolutions and matrix products, what dominates)."""
    first = study.plan[0]
    net = study.network(first.replicate, first.target).eval()
    h, out = torch.zeros(1, *study.image_shape), []
    with torch.no_grad():
        for block in net.blocks:
            counter = FlopCounterMode(display=False)
            with counter:
                h = block(h)
            out.append(float(counter.get_total_flops()))
    return tuple(out)


def plan_flops(study: Study, specs: list[RunSpec] | None = None) -> float:
    """FLOPs of ``specs`` (default: the whole plan) by the budgets train.py gives them: a training
    step counts 3x the forward FLOPs of the layers it trains (forward, and backward to activations
    and weights) and 1x those of frozen layers it runs; evaluations (validation every epoch, test
    once) and a probe's feature passes 1x; frozen runs that share their prefix outputs compute them
    once per job (on each augmented view of the training images)."""
    cfg = study.config
    per_block = block_flops(study)

    def fwd(lo: int, hi: int | None = None) -> float:
        return sum(per_block[lo:hi])

    total = 0.0
    specs = study.plan if specs is None else specs
    for job in group_jobs(specs, shares_frozen_features(cfg)):
        for spec in job.specs:
            val, test = study.eval_images(spec.replicate, spec.target)
            train = study.train_images(*spec.task_key)
            if spec.kind.head == "linear":
                total += (train + val + test) * fwd(0, spec.n)
                continue
            budget = study.budget(spec)
            images = budget.steps * cfg.train.batch_size
            total += images * 3 * fwd(spec.frozen) + (budget.epochs * val + test) * fwd(spec.frozen)
            if spec.frozen and not job.shares_features:  # the frozen prefix runs on every image it sees
                total += (images + budget.epochs * val + test) * fwd(0, spec.frozen)
        if job.shares_features:
            first = job.specs[0]
            val, test = study.eval_images(first.replicate, first.target)
            views = cfg.train.feature_views if cfg.train.augment else 1
            total += (views * study.train_images(*first.task_key) + val + test) * fwd(0, max(s.n for s in job.specs))
    return total
