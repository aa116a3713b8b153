"""The whole study: plan the runs, train each one that is not yet recorded, write the report.

Runs execute in plan order (base networks first). Each is recorded the moment it finishes, so
running the same study again resumes: recorded runs are skipped, an interrupted one starts over.
Every run draws its own random streams from its key, so results do not depend on what ran before.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from transferscope.config import StudyConfig
from transferscope.data import ImageData, load_dataset
from transferscope.data.splits import ClassSplit, split_classes
from transferscope.data.tasks import Task, make_task
from transferscope.errors import UserError
from transferscope.models import CutNet, create_model
from transferscope.progress import Progress
from transferscope.provenance import provenance
from transferscope.seeds import derive_seed
from transferscope.store import Store
from transferscope.surgery import check_cut, freeze, parameter_counts, transplant
from transferscope.train import train_network
from transferscope.treatments import RunSpec, build_plan


@dataclass
class Study:
    """A configuration bound to its data: the class splits, tasks and plan of runs."""

    config: StudyConfig
    data: ImageData
    num_layers: int
    cut_points: tuple[int, ...]
    plan: list[RunSpec]
    _splits: dict[int, ClassSplit] = field(default_factory=dict)
    _tasks: dict[tuple[int, str], Task] = field(default_factory=dict)

    @classmethod
    def prepare(cls, config: StudyConfig) -> Study:
        data = load_dataset(config.data)
        probe = create_model(config.model.arch, 2, data.image_shape, config.model.options)
        if config.treatments.cut_points == "all":
            cuts = tuple(probe.cut_points)
        else:
            cuts = tuple(sorted(set(config.treatments.cut_points)))
            for n in cuts:
                check_cut(probe, n, config.model.arch)
        study = cls(config, data, probe.num_layers, cuts, build_plan(config, cuts))
        for r in range(config.treatments.replicates):
            study.split(r)  # a bad split fails now, before any training
        return study

    def split(self, replicate: int) -> ClassSplit:
        if replicate not in self._splits:
            self._splits[replicate] = split_classes(self.config.split, self.data, replicate)
        return self._splits[replicate]

    def task(self, replicate: int, name: str) -> Task:
        if (replicate, name) not in self._tasks:
            d = self.config.data
            self._tasks[replicate, name] = make_task(
                self.data, name, self.split(replicate).classes(name), d.val_fraction, d.test_fraction,
                seed=derive_seed("partition", self.config.seed, replicate, name), workers=d.workers)
        return self._tasks[replicate, name]

    def new_network(self, spec: RunSpec, task: str, seed_key: str) -> CutNet:
        m = self.config.model
        return create_model(m.arch, self.task(spec.replicate, task).num_classes, self.data.image_shape,
                            m.options, init_seed=derive_seed("init", self.config.seed, seed_key))

    def describe(self) -> str:
        t = self.config.treatments
        lines = [f"dataset {self.config.data.dataset} ({self.data.num_classes} classes, {len(self.data.y)} images), "
                 f"architecture {self.config.model.arch} ({self.num_layers} layers, cut points "
                 f"{', '.join(map(str, self.cut_points))}), {t.replicates} replicate(s), targets {', '.join(t.targets)}"]
        for r in range(t.replicates):
            s = self.split(r)
            lines.append(f"  replicate {r}: {s.description}; A = {', '.join(s.names('A'))}; B = {', '.join(s.names('B'))}")
        return "\n".join(lines)


def build_network(study: Study, spec: RunSpec, sources: dict[str, CutNet]) -> CutNet:
    """The network a run starts from: fresh weights (the base networks' initialiser, drawn from
    the run's own seed), layers 1..n copied from the source where the treatment has one, and
    layers 1..frozen frozen."""
    net = study.new_network(spec, spec.target, spec.key)
    if spec.copied:
        net = transplant(sources[spec.depends_on], net, spec.copied)
    return freeze(net, spec.frozen, bn_affine=study.config.treatments.frozen_bn == "train-affine")


def _record(study: Study, spec: RunSpec, **fields: Any) -> dict[str, Any]:
    split = study.split(spec.replicate)
    return {
        "key": spec.key, "replicate": spec.replicate, "treatment": spec.treatment, "role": spec.role,
        "target": spec.target, "source": spec.source, "n": spec.n, "frozen_layers": spec.frozen,
        "copied_layers": spec.copied, "depends_on": spec.depends_on,
        "split": {"A": list(split.names("A")), "B": list(split.names("B")), "description": split.description},
        "seeds": {"study": study.config.seed, "init": derive_seed("init", study.config.seed, spec.key),
                  "data": derive_seed("data", study.config.seed, spec.key),
                  "partition": derive_seed("partition", study.config.seed, spec.replicate, spec.target)},
        "config": study.config.to_dict(), **fields, **provenance(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def execute_run(study: Study, spec: RunSpec, store: Store, sources: dict[str, CutNet],
                progress: Progress | None = None) -> dict[str, Any]:
    """Train one run and record it. Base networks' weights are saved before their record, so a
    recorded base always has its weights."""
    cfg = study.config
    start = time.perf_counter()
    task = study.task(spec.replicate, spec.target)
    net = build_network(study, spec, sources)
    trainable, total = parameter_counts(net)
    outcome = train_network(net, task, cfg.train, cfg.eval, copied=spec.copied,
                            data_seed=derive_seed("data", cfg.seed, spec.key), flip=study.data.flip_ok,
                            on_epoch=progress.epoch_done if progress else None)
    if spec.role == "base" and outcome.status == "done":
        store.save_weights(spec.key, net.state_dict())
        sources[spec.key] = net
    record = _record(study, spec, status=outcome.status, history=outcome.history, metrics=outcome.metrics,
                     diverged_epoch=outcome.diverged_epoch, trainable_params=trainable, total_params=total,
                     wall_time_s=time.perf_counter() - start)
    store.record(record)
    return record


def _load_source(study: Study, store: Store, key: str, spec: RunSpec) -> CutNet:
    net = study.new_network(spec, spec.source, key)  # type: ignore[arg-type]
    net.load_state_dict(store.load_weights(key))
    return net


@dataclass
class StudyResult:
    output: Path
    frame: pd.DataFrame
    report: Path | None

    @property
    def failed(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] != "done"]


def run_study(config: StudyConfig, output: str | Path, *, progress: bool = True, report: bool = True) -> StudyResult:
    """Run (or resume) the whole study in ``output`` and return its table of runs.

    >>> from transferscope import load_config, run_study
    >>> result = run_study(load_config(overrides=["train.epochs=5"]), "results/quick")  # doctest: +SKIP
    """
    study = Study.prepare(config)
    store = Store(output)
    store.init(config)
    store.save_splits({r: study.split(r).to_dict() for r in range(config.treatments.replicates)})
    torch.set_num_threads(config.train.threads)

    recorded = {r["key"]: r for r in store.records()}
    finished = {k for k, r in recorded.items() if r["status"] != "failed"}
    pending = [s for s in study.plan if s.key not in finished]
    bar = Progress(len(pending), len(pending) * config.train.epochs, enabled=progress)
    bar.message(study.describe())
    if finished:
        bar.message(f"resuming {store.root}: {len(finished)} of {len(study.plan)} runs already recorded, skipped")

    status = {k: r["status"] for k, r in recorded.items()}
    sources: dict[str, CutNet] = {}
    for spec in pending:
        dep = spec.depends_on
        if dep is not None and status.get(dep) != "done":
            record = _record(study, spec, status="skipped", error=f"source network {dep} is {status.get(dep, 'missing')}")
            store.record(record)
        else:
            if dep is not None and dep not in sources:
                sources[dep] = _load_source(study, store, dep, spec)
            bar.run_started(spec.key, config.train.epochs)
            try:
                record = execute_run(study, spec, store, sources, bar)
            except UserError:
                raise
            except Exception as e:  # a crash in one run must not end the study
                record = _record(study, spec, status="failed", error=f"{type(e).__name__}: {e}",
                                 traceback=traceback.format_exc())
                store.record(record)
        status[spec.key] = record["status"]
        epochs_left = config.train.epochs - len(record.get("history", []))
        bar.run_finished(spec.key, record["status"], record.get("metrics", {}).get("test_top1"), epochs_left)

    frame = store.frame()
    report_path = write_study_report(store, study) if report else None
    if report_path:
        bar.message(f"report: {report_path}")
    return StudyResult(store.root, frame, report_path)


def write_study_report(store: Store, study: Study | None = None) -> Path:
    """(Re)write the report of the study in ``store`` from its recorded runs."""
    from transferscope.report import ReportMeta, write_report

    if study is None:
        study = Study.prepare(store.load_config())
    cfg = study.config
    prov = provenance()
    meta = ReportMeta(
        dataset=cfg.data.dataset, split=study.split(0).description if cfg.split.kind != "random"
        else f"random {len(study.split(0).a)}/{len(study.split(0).b)}",
        arch=cfg.model.arch, replicates=cfg.treatments.replicates, num_layers=study.num_layers,
        cut_points=study.cut_points, best_k=cfg.eval.best_k,
        extra_lines=(f"Training: {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, SGD lr {cfg.train.lr} "
                     f"momentum {cfg.train.momentum} weight decay {cfg.train.weight_decay}, {cfg.train.schedule} "
                     f"schedule, augmentation {'on' if cfg.train.augment else 'off'}, fine-tuning lr scale "
                     f"{cfg.train.finetune_lr_scale}.",
                     "Frozen layers run in eval mode: BatchNorm statistics and dropout fixed; BatchNorm affine "
                     + ("parameters trained (treatments.frozen_bn = 'train-affine')." if cfg.treatments.frozen_bn
                        == "train-affine" else "parameters frozen too (treatments.frozen_bn = 'fixed')."),
                     *([f"{len(study.data.skipped)} unreadable image file(s) skipped (data.skip_corrupt): "
                        + ", ".join(study.data.skipped[:5]) + (" ..." if len(study.data.skipped) > 5 else "")]
                       if study.data.skipped else []),
                     f"Provenance: transferscope commit {prov['git']['commit']} (dirty: {prov['git']['dirty']}), "
                     f"torch {prov['versions']['torch']}, python {prov['versions']['python']}."),
    )
    return write_report(store.frame(), meta, store.root / "report")
