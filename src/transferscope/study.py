"""The whole study: plan the runs, train each one that is not yet recorded, write the report.

Runs execute in plan order (base networks first). Each is recorded the moment it finishes, so
running the same study again resumes: recorded runs are skipped, an interrupted one starts over.
Every run draws its own random streams from its key, so results do not depend on what ran before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from transferscope.config import StudyConfig
from transferscope.data import ImageData, load_dataset
from transferscope.data.splits import ClassSplit, split_classes
from transferscope.data.tasks import Task, make_task, partition, reduce_train, reduced
from transferscope.models import CutNet, create_model
from transferscope.progress import Progress
from transferscope.provenance import provenance
from transferscope.seeds import derive_seed
from transferscope.store import Store
from transferscope.surgery import check_cut
from transferscope.train import Budget, run_budget
from transferscope.treatments import Job, RunSpec, build_plan, group_jobs


@dataclass
class Study:
    """A configuration bound to its data: the class splits, tasks and plan of runs."""

    config: StudyConfig
    data: ImageData
    num_layers: int
    cut_points: tuple[int, ...]
    plan: list[RunSpec]
    _splits: dict[int, ClassSplit] = field(default_factory=dict)
    _tasks: dict[tuple[int, str, float | int | None], Task] = field(default_factory=dict)
    _train_labels: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def prepare(cls, config: StudyConfig, splits: dict[int, dict[str, Any]] | None = None) -> Study:
        """Load the data and plan the runs. ``splits`` (as saved in splits.json) replaces
        drawing the class splits again, e.g. for a finished study whose split file moved."""
        data = load_dataset(config.data)
        with torch.device("meta"):  # the layer structure only: no weights allocated
            probe = create_model(config.model.arch, 2, data.image_shape, config.model.options)
        if config.treatments.cut_points == "all":
            cuts = tuple(probe.cut_points)
        else:
            cuts = tuple(sorted(set(config.treatments.cut_points)))
            for n in cuts:
                check_cut(probe, n, config.model.arch)
        study = cls(config, data, probe.num_layers, cuts, build_plan(config, cuts))
        for r, saved in (splits or {}).items():
            study._splits[r] = ClassSplit(tuple(saved["A_indices"]), tuple(saved["B_indices"]), data.class_names,
                                          saved["description"])
        for r in range(config.treatments.replicates):
            study.split(r)  # a bad split fails now, before any training
        return study

    def split(self, replicate: int) -> ClassSplit:
        if replicate not in self._splits:
            self._splits[replicate] = split_classes(self.config.split, self.data, replicate)
        return self._splits[replicate]

    def task(self, replicate: int, name: str, size: float | int | None = None) -> Task:
        """Task ``name`` of a replicate, with all of its training images or a reduced ``size``."""
        if size is not None:
            if (replicate, name, size) not in self._tasks:
                self._tasks[replicate, name, size] = reduce_train(self.task(replicate, name), size)
            return self._tasks[replicate, name, size]
        if (replicate, name, None) not in self._tasks:
            self._tasks[replicate, name, None] = make_task(name=name, workers=self.config.data.workers,
                                                           **self._partition_args(replicate, name))
        return self._tasks[replicate, name, None]

    def _partition_args(self, replicate: int, name: str) -> dict[str, Any]:
        d = self.config.data
        return {"data": self.data, "classes": self.split(replicate).classes(name), "val_fraction": d.val_fraction,
                "test_fraction": d.test_fraction, "seed": derive_seed("partition", self.config.seed, replicate, name),
                "train_per_class": d.train_per_class}

    def train_images(self, replicate: int, name: str, size: float | int | None = None) -> int:
        """How many training images :meth:`task` gives, counted from the labels alone (the driver
        plans every run's budget without loading any task's images)."""
        if (replicate, name) not in self._train_labels:
            self._train_labels[replicate, name] = partition(**self._partition_args(replicate, name))["train"][1]
        y = self._train_labels[replicate, name]
        return len(y) if size is None else len(reduced(y, len(self.split(replicate).classes(name)), size))

    def budget(self, spec: RunSpec) -> Budget:
        """How long ``spec`` trains: ``train.epochs`` on its task's full training set, and on
        reduced target data what ``treatments.size_budget`` gives (see train.run_budget)."""
        return run_budget(self.config.train, self.config.treatments.size_budget, self.train_images(*spec.task_key),
                          self.train_images(spec.replicate, spec.target))

    def new_network(self, spec: RunSpec, task: str, seed_key: str) -> CutNet:
        m = self.config.model
        return create_model(m.arch, self.task(spec.replicate, task).num_classes, self.data.image_shape,
                            m.options, init_seed=derive_seed("init", self.config.seed, seed_key))

    @property
    def flip(self) -> bool:
        """Whether augmentation flips images horizontally."""
        return self.config.data.flip if self.config.data.flip is not None else self.data.flip_ok

    def describe(self) -> str:
        t = self.config.treatments
        lines = [f"dataset {self.config.data.dataset} ({self.data.num_classes} classes, {len(self.data.y)} images), "
                 f"architecture {self.config.model.arch} ({self.num_layers} layers, cut points "
                 f"{', '.join(map(str, self.cut_points))}), {t.replicates} replicate(s), targets {', '.join(t.targets)}"]
        for r in range(t.replicates):
            s = self.split(r)
            lines.append(f"  replicate {r}: {s.description}; A = {', '.join(s.names('A'))}; B = {', '.join(s.names('B'))}")
        return "\n".join(lines)


@dataclass
class StudyResult:
    output: Path
    frame: pd.DataFrame
    report: Path | None

    @property
    def failed(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] != "done"]


def make_executor(config: StudyConfig, store: Store, study: Study):
    """The executor that ``[execution]`` asks for."""
    from transferscope.executors import ProcessExecutor, SerialExecutor, default_workers

    if config.execution.executor == "ray":
        from transferscope.ray_executor import RayExecutor

        return RayExecutor(config, store.root)
    workers = default_workers(config)
    if workers == 1:
        return SerialExecutor(config, store.root, study)
    return ProcessExecutor(config, store.root, workers)


def run_study(config: StudyConfig, output: str | Path, *, progress: bool = True, report: bool = True) -> StudyResult:
    """Run (or resume) the whole study in ``output`` and return its table of runs.

    Runs execute as jobs (see treatments.group_jobs) on the executor of ``[execution]``; a job
    is submitted once the base network it copies from is recorded. Each finished run is recorded
    the moment it arrives.

    >>> from transferscope import load_config, run_study
    >>> result = run_study(load_config(overrides=["train.epochs=5"]), "results/quick")  # doctest: +SKIP
    """
    from transferscope.executors import Epoch, Finished, JobDone
    from transferscope.runner import make_record, shares_frozen_features

    study = Study.prepare(config)
    store = Store(output)
    store.init(config)
    store.save_splits({r: study.split(r).to_dict() for r in range(config.treatments.replicates)})

    recorded = {r["key"]: r["status"] for r in store.records()}
    sources = {s.key: s.depends_on for s in study.plan}
    # a failed run is retried; a skipped one where its source is retried or done by now (a diverged
    # source is deterministic: its dependants stay skipped)
    finished = {k for k, st in recorded.items() if st != "failed"
                and not (st == "skipped" and recorded.get(sources.get(k)) in ("failed", "done"))}
    pending = [s for s in study.plan if s.key not in finished]
    retried = sum(s.key in recorded for s in pending)
    epochs = {s.key: study.budget(s).epochs for s in pending}  # more than train.epochs on reduced data
    bar = Progress(len(pending), sum(epochs.values()), enabled=progress)
    bar.message(study.describe())
    if finished:
        bar.message(f"resuming {store.root}: {len(finished)} of {len(study.plan)} runs already recorded, skipped")
    if retried:
        bar.message(f"retrying {retried} run(s) recorded as failed, or skipped because their source network was")

    status = {k: st for k, st in recorded.items() if k in finished}  # a retried source is not settled yet
    waiting = group_jobs(pending, shares_frozen_features(config))
    submitted: dict[str, Job] = {}
    recorded_now: set[str] = set()

    def record(rec: dict[str, Any]) -> None:
        store.record(rec)
        status[rec["key"]] = rec["status"]
        recorded_now.add(rec["key"])
        bar.run_finished(rec["key"], rec["status"], rec.get("metrics", {}).get("test_top1"),
                         epochs[rec["key"]] - len(rec.get("history", [])))

    def submit_ready(executor) -> None:
        for job in list(waiting):
            dep = job.depends_on
            if dep is not None and dep not in status:
                continue  # its source network is not trained yet
            waiting.remove(job)
            if dep is not None and status[dep] != "done":
                for spec in job.specs:
                    record(make_record(study, spec, status="skipped", error=f"source network {dep} is {status[dep]}"))
                continue
            submitted[job.key] = job
            executor.submit(job)

    if waiting:
        executor = make_executor(config, store, study)
        completed = False
        try:
            submit_ready(executor)
            for event in executor.events():
                if isinstance(event, Epoch):
                    bar.run_started(event.run_key, epochs[event.run_key])
                    bar.epoch_done(event.epoch, event.row)
                elif isinstance(event, Finished):
                    rec = event.result.record
                    if rec["key"] in recorded_now:
                        continue  # delivered again by a retried task: the first one counts
                    if event.result.weights is not None:  # before the record: a recorded base has weights
                        store.save_weights(rec["key"], event.result.weights)
                    record(rec)
                elif isinstance(event, JobDone):
                    if event.error:  # the job could not finish: its unfinished runs fail
                        for spec in submitted[event.job_key].specs:
                            if spec.key not in recorded_now:
                                record(make_record(study, spec, status="failed", error=event.error))
                    submit_ready(executor)
            completed = True
        finally:
            executor.close(abort=not completed)

    frame = store.frame()
    report_path = write_study_report(store, study) if report else None
    if report_path:
        bar.message(f"report: {report_path}")
    return StudyResult(store.root, frame, report_path)


def write_study_report(store: Store, study: Study | None = None, compare: str | Path | None = None) -> Path:
    """(Re)write the report of the study in ``store`` from its recorded runs, with the analyses
    (similarity, predicted curve, filters, target sizes, convergence, reading); ``compare`` names
    another study directory (a dissimilar split, say) to compare with."""
    from transferscope.analysis import analyze_study

    from transferscope.report import ReportMeta, write_report

    if study is None:
        study = Study.prepare(store.load_config(), splits=store.load_splits())
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
    frame = store.frame()
    full = frame[frame["target_size"].isna()] if "target_size" in frame else frame
    analysis = analyze_study(store, study, store.root / "report", compare=compare)
    return write_report(full, meta, store.root / "report", analysis=analysis)
