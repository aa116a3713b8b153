"""Where a job's runs are built and trained, in whatever process executes them.

A :class:`Runner` holds a prepared :class:`~transferscope.study.Study` and turns a
:class:`~transferscope.treatments.Job` into finished runs: a record (everything the store keeps)
and, for base networks, the trained weights. It writes nothing itself; the driver records each
result as it arrives, whichever executor produced it.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from transferscope.analysis.networks import reduce_features
from transferscope.analysis.transferability import linear_probe
from transferscope.config import StudyConfig
from transferscope.data.augment import normalize
from transferscope.errors import one_line
from transferscope.features import FeatureBank, FrozenFeatures, plan_views
from transferscope.models.cutnet import CutNet
from transferscope.precision import Numerics, resolve_device
from transferscope.provenance import provenance
from transferscope.record import FeatureCache, RunRecord, Split
from transferscope.seeds import derive_seed
from transferscope.surgery import freeze, parameter_counts, reestimate_bn, transplant
from transferscope.train import Budget, train_network
from transferscope.treatments import Job, RunSpec

if TYPE_CHECKING:
    from transferscope.study import Study

StateDict = dict[str, torch.Tensor]
#: the most values per image a probe's features keep (wider conv maps are average-pooled)
PROBE_FEATURES = 2048
EpochCallback = Callable[[str, int, dict[str, float]], None]


@dataclass
class RunResult:
    record: RunRecord
    weights: StateDict | None = None  # base networks only: the source of every copy
    traceback: str | None = None  # a failed run's: the driver moves it to the study's errors.log


def make_record(study: Study, spec: RunSpec, status: str, budget: Budget | None = None, **outcome: Any) -> RunRecord:
    """The record of ``spec``: its identity, data, budget (``budget``, or the one the study plans),
    seeds and provenance, with ``status`` and the ``outcome`` fields of
    :class:`~transferscope.record.RunRecord`."""
    split = study.split(spec.replicate)
    return RunRecord(
        key=spec.key, replicate=spec.replicate, treatment=spec.treatment, role=spec.role, target=spec.target,
        n=spec.n, status=status, source=spec.source, target_size=spec.size, frozen_layers=spec.frozen,
        copied_layers=spec.copied, source_network=spec.source_net, depends_on=spec.depends_on,
        train_images=study.train_images(*spec.task_key), budget=budget or study.budget(spec),
        split=Split(split.names("A"), split.names("B"), split.description), seeds=study.seeds(spec),
        config=study.config.to_dict(), **outcome, provenance=provenance(),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


class Runner:
    def __init__(self, study: Study, load_source: Callable[[str], StateDict]):
        self.study = study
        self.load_source = load_source
        cfg = study.config
        self.numerics = Numerics.resolve(cfg.train, resolve_device(cfg.execution.device))
        self._sources: dict[str, CutNet] = {}
        self._adapted: dict[tuple, CutNet] = {}

    # -- networks -------------------------------------------------------------------------------
    def source_network(self, spec: RunSpec) -> CutNet:
        """The network that donates layers 1..n: a trained base network (its weights loaded
        once), or the untrained random network of the replicate and target."""
        key = spec.source_net
        assert key is not None
        if key not in self._sources:
            copies = spec.kind.copies
            task = spec.source if copies in ("target", "other") else spec.target
            net = self.study.new_network(spec, task, key)  # type: ignore[arg-type]
            if copies == "pretrained":  # layers 1..(highest cut point); its classifier is never copied
                net.load_state_dict(self.study.pretrained_weights(net), strict=False)
            elif copies != "random":
                net.load_state_dict(self.load_source(key))
            self._sources[key] = self.numerics.prepare_model(net).eval()  # type: ignore[assignment]
        return self._sources[key]

    def prefix_network(self, spec: RunSpec) -> CutNet:
        """The network whose layers 1..n this run copies: the source network, or where the
        treatment re-estimates BatchNorm statistics on the target (``Treatment.bn_stats``), the
        source with those of layers 1..(the study's highest cut point) re-estimated on the run's
        un-augmented training images, once per source and training data. Layer k's statistics
        depend on layers 1..k only, so every cut point takes its prefix from this one network."""
        source = self.source_network(spec)
        if spec.kind.bn_stats == "source":
            return source
        key = (spec.prefix_net, spec.task_key)
        if key not in self._adapted:
            task, numerics = self.study.task(*spec.task_key), self.numerics

            def images() -> Iterator[torch.Tensor]:
                for x, _ in task.train.batches(512):
                    yield numerics.prepare_input(normalize(x.to(numerics.device), task.mean, task.std))

            with numerics.autocast():
                self._adapted[key] = reestimate_bn(source, max(self.study.cut_points), images)
        return self._adapted[key]

    def build_network(self, spec: RunSpec, seed_key: str | None = None) -> CutNet:
        """Fresh weights (the base networks' initialiser, drawn from the run's seed key, or
        ``seed_key``), layers 1..n copied from the prefix network where the treatment has one,
        layers 1..frozen frozen."""
        net = self.study.new_network(spec, spec.target, seed_key or spec.seed_key)
        if spec.copied:
            net = transplant(self.prefix_network(spec), net, spec.copied)
        net = freeze(net, spec.frozen, bn_affine=self.study.config.treatments.frozen_bn == "train-affine")
        return self.numerics.prepare_model(net)  # type: ignore[return-value]

    # -- running ----------------------------------------------------------------------------------
    def run_job(self, job: Job, on_epoch: EpochCallback | None = None) -> Iterator[RunResult]:
        """Train a job's runs in order; a job of frozen runs that share their prefix trains each on
        the prefix outputs computed once (where they fit in ``train.feature_memory_gb``)."""
        bank = self._feature_bank(job) if job.shares_features else None
        for spec in job.specs:
            follow = job.budgets.get(spec.key)
            if bank is None:
                yield self.run(spec, on_epoch, follow=follow)
                continue
            start = time.perf_counter()
            feats = bank.at(spec.n)
            yield self.run(spec, on_epoch, features=feats, feature_time=time.perf_counter() - start, follow=follow)

    def _feature_bank(self, job: Job) -> FeatureBank | None:
        """The prefix outputs a frozen job's runs share, or None where not even one view fits in
        memory (its runs then recompute their prefix)."""
        first = job.specs[0]
        cfg = self.study.config.train
        task = self.study.task(*first.task_key)
        source = self.prefix_network(first)
        views = plan_views(source, task, self.numerics, tuple(s.n for s in job.specs), cfg.feature_views,
                           cfg.augment, cfg.feature_memory_gb * 2**30)
        if views == 0:
            return None
        return FeatureBank(source, task, self.numerics, views=views, augmented=cfg.augment, flip=self.study.flip,
                           seed=derive_seed("views", self.study.config.seed, first.source_net, first.target))

    def run(self, spec: RunSpec, on_epoch: EpochCallback | None = None, features: FrozenFeatures | None = None,
            feature_time: float = 0.0, follow: Budget | None = None) -> RunResult:
        """Train one run. A crash is recorded as a failed run rather than ending the study.
        ``follow``: under ``train.budget = "plateau"``, the budget its base network found."""
        start = time.perf_counter()
        if spec.kind.head == "linear":
            return self._probe(spec, start)
        try:
            base = self.study.budget_base(spec)
            if base is not None and follow is None:
                raise ValueError(f"train.budget = \"plateau\": {spec.key} follows the budget {base} found, and "
                                 "was given none")
            budget = self.study.budget(spec, follow)
            net = self.build_network(spec)
            trainable, total = parameter_counts(net)
            cfg = self.study.config
            outcome = train_network(
                net, self.study.task(*spec.task_key), cfg.train, cfg.eval, copied=spec.copied,
                seeds=self.study.seeds(spec).training, flip=self.study.flip,
                numerics=self.numerics, features=features, budget=budget, plateau=self.study.finds_budget(spec),
                on_epoch=(lambda e, row: on_epoch(spec.key, e, row)) if on_epoch else None)
            if self.study.finds_budget(spec):  # what it found: the steps, epochs and drops it ran
                budget = replace(budget, epochs=len(outcome.history), steps=outcome.steps, drops=tuple(outcome.drops),
                                 found_by=spec.key, stopped=outcome.stopped)
        except Exception as e:  # noqa: BLE001  (a crash in one run must not end the study)
            # the driver moves the traceback to the study's errors.log; the record keeps one line
            return RunResult(make_record(self.study, spec, "failed", error=one_line(e),
                                         wall_time_s=time.perf_counter() - start), traceback=traceback.format_exc())
        cache = (FeatureCache(views=len(features.train_views), memory_mb=round(features.nbytes / 2**20, 2),
                              build_time_s=round(feature_time, 3)) if features is not None else None)
        record = make_record(
            self.study, spec, outcome.status, budget=budget, history=tuple(outcome.history), metrics=outcome.metrics,
            diverged_epoch=outcome.diverged_epoch, steps_run=outcome.steps, trainable_params=trainable,
            total_params=total, wall_time_s=time.perf_counter() - start + feature_time, precision=self.numerics.name,
            device=str(self.numerics.device), feature_cache=cache)
        weights = None
        if outcome.status == "done" and keeps_weights(self.study.config, spec):
            weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        return RunResult(record, weights)


    def probe_features(self, spec: RunSpec, part: str) -> tuple[np.ndarray, np.ndarray]:
        """Layer n's outputs of the prefix network on a part of the run's task (un-augmented,
        conv maps average-pooled to at most :data:`PROBE_FEATURES` values), and the labels."""
        task, numerics, net = self.study.task(*spec.task_key), self.numerics, self.prefix_network(spec)
        feats, labels = [], []
        with torch.no_grad(), numerics.autocast():
            for x, y in getattr(task, part).batches(self.study.config.eval.batch_size):
                h = net.forward_prefix(numerics.prepare_input(normalize(x.to(numerics.device), task.mean, task.std)),
                                       spec.n)
                feats.append(reduce_features(h.float(), PROBE_FEATURES).cpu())
                labels.append(y)
        return torch.cat(feats).double().numpy(), torch.cat(labels).numpy()

    def _probe(self, spec: RunSpec, start: float) -> RunResult:
        """A linear probe: layers 1..n of the source frozen, one linear classifier on layer n's
        features fitted in closed form (ridge chosen on the validation part, scored once on test)."""
        try:
            train, val, test = (self.probe_features(spec, p) for p in ("train", "val", "test"))
            fit = linear_probe(train, val, test)
        except Exception as e:  # noqa: BLE001  (a crash in one run must not end the study)
            return RunResult(make_record(self.study, spec, "failed", error=one_line(e),
                                         wall_time_s=time.perf_counter() - start), traceback=traceback.format_exc())
        classes, dim = len(self.study.split(spec.replicate).classes(spec.target)), train[0].shape[1]
        prefix = sum(p.numel() for b in list(self.prefix_network(spec).blocks)[:spec.n] for p in b.parameters())
        return RunResult(make_record(
            self.study, spec, "done", metrics={"test_top1": fit.top1, "val_top1": fit.val_top1,
                                               "val_best_k_mean": fit.val_top1, "probe_ridge": fit.ridge},
            steps_run=0, trainable_params=dim * classes + classes, total_params=prefix + dim * classes + classes,
            wall_time_s=time.perf_counter() - start, precision=self.numerics.name, device=str(self.numerics.device)))


def keeps_weights(config: StudyConfig, spec: RunSpec) -> bool:
    """Base networks trained on all their data always keep their weights (every copy starts from
    them); ``eval.save_weights`` adds the networks fine-tuned on all their target data (the
    analyses of how far fine-tuning moves each layer read them), or every run."""
    mode = config.eval.save_weights
    if is_source(spec):
        return True
    return mode == "all" or (mode == "bases+finetuned" and spec.kind.analysed and spec.size is None)


def is_source(spec: RunSpec) -> bool:
    """Whether ``spec`` trains a network that transfers copy from (kept exactly, in float32; the
    other kept networks are only analysed, and kept in float16)."""
    return spec.kind.is_base and spec.size is None


def shares_frozen_features(config: StudyConfig) -> bool:
    """Whether frozen runs train on cached prefix outputs: asked for, and the prefix is truly
    constant (with trainable BatchNorm affine parameters it is not)."""
    return config.train.frozen_features == "cached" and config.treatments.frozen_bn == "fixed"
