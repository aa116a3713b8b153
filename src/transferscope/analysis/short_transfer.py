"""A short AnB: the very network an AnB run trains, trained for a small fraction of its budget.

LogME, H-score and a linear probe score the frozen features of layer n; what AnB measures is how
well the study's own upper layers (n+1..end, re-initialised, with their capacity and nonlinearity)
learn on top of them. This predictor trains exactly that network (layers 1..n copied from the
source base network and frozen, its own initialisation and data order, the study's recipe) for
``fraction`` of the optimisation steps the AnB run takes, its learning-rate schedule compressed to
the shorter run (a cosine ends at the short run's end; a step schedule or a plateau budget's drops
come at the same fractions of the run), on the frozen prefix's outputs computed once per source
network and target (as the study's own frozen runs do, :class:`~transferscope.features.FeatureBank`).
Its score is the short run's test top-1.

The cost is the prefix's outputs once per (replicate, target) plus ``fraction`` of each AnB run's
training: :class:`ShortRun` records the seconds of each, so the cost can be set against the AnB runs
the study recorded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from transferscope.features import FeatureBank, plan_views
from transferscope.record import RunRecord
from transferscope.runner import Runner
from transferscope.seeds import TrainingSeeds, derive_seed
from transferscope.train import Budget, steps_per_epoch, train_network
from transferscope.treatments import RunSpec, base_key, run_spec

#: the share of an AnB run's optimisation steps a short run takes
FRACTION = 0.08


@dataclass(frozen=True)
class ShortRun:
    n: int
    fraction: float  # the share of the AnB run's steps it was given
    test_top1: float
    val_top1: float
    steps: int  # optimisation steps taken (of ``full_steps``)
    full_steps: int
    seconds: float  # its training, and its share of the prefix outputs computed for every cut point


def short_budget(full: Budget, fraction: float, images: int, batch_size: int) -> Budget:
    """``fraction`` of ``full``'s steps (at least one), over as many epochs as they need, with a
    plateau budget's drops at the same fractions of the run."""
    steps = max(1, round(full.steps * fraction))
    drops = None if full.drops is None else tuple(max(1, round(d * fraction)) for d in full.drops)
    return Budget(math.ceil(steps / steps_per_epoch(images, batch_size)), steps, full.rule, drops)


def anb_spec(replicate: int, target: str, n: int) -> RunSpec:
    """The AnB run (frozen transfer, full target data) of ``replicate`` on ``target`` at cut point n."""
    return run_spec(replicate, "AnB", target, n)


def short_transfer(runner: Runner, replicate: int, target: str, cuts: tuple[int, ...],
                   records: dict[str, RunRecord], fractions: tuple[float, ...] = (FRACTION,),
                   views: int | None = 1, salt: str | None = None) -> list[ShortRun]:
    """Short AnB runs of ``replicate`` on ``target`` at every cut point in ``cuts`` and every share
    of the AnB run's steps in ``fractions`` (the source base network's weights are read through
    ``runner``; the frozen outputs are computed once for all of them). ``records``: the study's
    records by key, for the budget a plateau-trained base network found (every run on its task
    follows it). ``views``: augmented views of the training images in the cache (None: as the
    study's own frozen runs, ``train.feature_views``). ``salt``: draw the initialisation and the
    training streams from the run's seed key and ``salt`` (a re-run of the same network with other
    seeds) instead of the AnB run's own."""
    study, cfg = runner.study, runner.study.config
    specs = [anb_spec(replicate, target, n) for n in sorted(cuts)]
    task = study.task(replicate, target)
    start = time.perf_counter()
    source = runner.prefix_network(specs[0])
    full: dict[int, Budget] = {}
    for spec in specs:
        base = study.budget_base(spec)
        follow = records[base].budget if base is not None and base in records else None
        if base is not None and follow is None:
            raise ValueError(f"{spec.key} follows the budget base network {base} found, which is not recorded")
        full[spec.n] = study.budget(spec, follow)
    plan = {(n, f): short_budget(b, f, len(task.train), cfg.train.batch_size) for n, b in full.items()
            for f in fractions}
    epochs = max(b.epochs for b in plan.values())
    views = plan_views(source, task, runner.numerics, tuple(full), min(views or cfg.train.feature_views, epochs),
                       cfg.train.augment, cfg.train.feature_memory_gb * 2**30)
    if views == 0:
        raise ValueError(f"the frozen features of {base_key(replicate, target)}'s task do not fit in "
                         f"train.feature_memory_gb = {cfg.train.feature_memory_gb}")
    bank = FeatureBank(source, task, runner.numerics, views=views, augmented=cfg.train.augment, flip=study.flip,
                       seed=derive_seed("views", cfg.seed, specs[0].source_net, target, *(() if salt is None else (salt,))))
    shared = time.perf_counter() - start
    out = []
    for spec in specs:
        start = time.perf_counter()
        features = bank.at(spec.n)
        at_n = time.perf_counter() - start
        key = spec.seed_key if salt is None else f"{spec.seed_key}/{salt}"
        for f in fractions:
            start = time.perf_counter()
            net = runner.build_network(spec, seed_key=key)
            outcome = train_network(net, task, cfg.train, cfg.eval, copied=spec.copied,
                                    seeds=TrainingSeeds.derive(cfg.seed, key), flip=study.flip,
                                    numerics=runner.numerics, features=features, budget=plan[spec.n, f])
            seconds = time.perf_counter() - start + (at_n + shared / len(specs)) / len(fractions)
            done = outcome.status == "done"
            out.append(ShortRun(spec.n, f, outcome.metrics["test_top1"] if done else math.nan,
                                outcome.metrics["val_top1"] if done else math.nan, outcome.steps,
                                full[spec.n].steps, seconds))
    return out
