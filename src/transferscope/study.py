"""The whole study: plan the runs, train each one that is not yet recorded, write the report.

Runs execute in plan order (base networks first). Each is recorded the moment it finishes, so
running the same study again resumes: recorded runs are skipped, an interrupted one starts over.
Every run draws its own random streams from its key, so results do not depend on what ran before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from transferscope.config import StudyConfig
from transferscope.data import ImageData, load_dataset
from transferscope.data.splits import ClassSplit, split_classes
from transferscope.data.tasks import Task, make_task, partition, reduce_train, reduced
from transferscope.errors import Interrupted, UserError, check_stop, one_line
from transferscope.models import CutNet, create_model
from transferscope.progress import Progress
from transferscope.provenance import provenance
from transferscope.seeds import derive_seed
from transferscope.store import Store
from transferscope.surgery import check_cut
from transferscope.train import Budget, run_budget
from transferscope.treatments import Job, RunSpec, build_plan, group_jobs


def describe_data(data: ImageData) -> dict[str, Any]:
    """What a study records of its data (study.json): the fingerprint a resume must match, and
    enough to plan, summarise and report the study where the images are gone."""
    counts = torch.bincount(data.y, minlength=data.num_classes).tolist()
    return {"name": data.name, "fingerprint": data.fingerprint, "images": len(data.y),
            "class_names": list(data.class_names), "image_shape": list(data.image_shape),
            "per_class": dict(zip(data.class_names, counts)), "skipped": list(data.skipped)}


@dataclass
class Study:
    """A configuration bound to its data: the class splits, tasks and plan of runs.

    ``data`` is None for a recorded study opened without its images (:meth:`open`): status and
    most of the report need only ``info`` (the data's description) and the recorded splits;
    ``missing`` says why the images are not there."""

    config: StudyConfig
    data: ImageData | None
    info: dict[str, Any]
    num_layers: int
    cut_points: tuple[int, ...]
    plan: list[RunSpec]
    missing: str | None = None
    _splits: dict[int, ClassSplit] = field(default_factory=dict)
    _tasks: dict[tuple[int, str, float | int | None], Task] = field(default_factory=dict)
    _train_labels: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def prepare(cls, config: StudyConfig, splits: dict[int, dict[str, Any]] | None = None) -> Study:
        """Load the data and plan the runs. ``splits`` (as saved in splits.json) replaces
        drawing the class splits again, e.g. for a finished study whose split file moved."""
        data = load_dataset(config.data)
        return cls._build(config, data, describe_data(data), splits)

    @classmethod
    def open(cls, store: Store, images: bool = True) -> Study:
        """The study recorded in ``store`` (configuration, splits, data description), for status
        and report. With ``images`` its dataset is loaded where it is available and unchanged;
        otherwise, or where it is gone or changed, the study has no images and ``missing`` says
        why (a study from before study.json existed always needs its dataset)."""
        config, splits = store.load_config(), store.load_splits()
        info = store.identity().get("data")
        if not info:
            return cls.prepare(config, splits)
        if not images:
            return cls._build(config, None, info, splits, missing="not loaded")
        try:
            data = load_dataset(config.data)
        except UserError as e:
            return cls._build(config, None, info, splits, missing=f"the dataset cannot be loaded here: {e}")
        if data.fingerprint != info.get("fingerprint"):
            return cls._build(config, None, info, splits, missing="the dataset changed since the study ran")
        return cls._build(config, data, info, splits)

    @classmethod
    def _build(cls, config: StudyConfig, data: ImageData | None, info: dict[str, Any],
               splits: dict[int, dict[str, Any]] | None, missing: str | None = None) -> Study:
        shape = tuple(info["image_shape"])
        with torch.device("meta"):  # the layer structure only: no weights allocated
            probe = create_model(config.model.arch, 2, shape, config.model.options)
        if config.treatments.cut_points == "all":
            cuts = tuple(probe.cut_points)
        else:
            cuts = tuple(sorted(set(config.treatments.cut_points)))
            for n in cuts:
                check_cut(probe, n, config.model.arch)
        study = cls(config, data, info, probe.num_layers, cuts, build_plan(config, cuts), missing)
        names = tuple(info["class_names"])
        for r, saved in (splits or {}).items():
            study._splits[r] = ClassSplit(tuple(saved["A_indices"]), tuple(saved["B_indices"]), names,
                                          saved["description"])
        if data is not None:
            for r in range(config.treatments.replicates):
                study.split(r)  # a bad split fails now, before any training
        return study

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["image_shape"])  # type: ignore[return-value]

    def images(self) -> ImageData:
        """The dataset; a clear error where the study was opened without it."""
        if self.data is None:
            raise UserError(f"data.dataset {self.config.data.dataset!r}: the images are needed here but "
                            f"{self.missing}")
        return self.data

    def split(self, replicate: int) -> ClassSplit:
        if replicate not in self._splits:
            self._splits[replicate] = split_classes(self.config.split, self.images(), replicate)
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
        return {"data": self.images(), "classes": self.split(replicate).classes(name), "val_fraction": d.val_fraction,
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
        return create_model(m.arch, len(self.split(spec.replicate).classes(task)), self.image_shape,
                            m.options, init_seed=derive_seed("init", self.config.seed, seed_key))

    @property
    def flip(self) -> bool:
        """Whether augmentation flips images horizontally."""
        return self.config.data.flip if self.config.data.flip is not None else self.images().flip_ok

    def describe(self) -> str:
        t = self.config.treatments
        lines = [f"dataset {self.config.data.dataset} ({len(self.info['class_names'])} classes, {self.info['images']} images), "
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
    plan: tuple[str, ...] = ()  # every planned run's key

    @property
    def failed(self) -> pd.DataFrame:
        """The planned runs that are not done (diverged, failed, skipped, or not recorded)."""
        done = set(self.frame.loc[self.frame["status"] == "done", "key"]) if len(self.frame) else set()
        recorded = self.frame.set_index("key")["status"].to_dict() if len(self.frame) else {}
        rows = [(k, recorded.get(k, "not recorded")) for k in self.plan if k not in done]
        return pd.DataFrame(rows, columns=["key", "status"])


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


def numerics_identity(config: StudyConfig) -> dict[str, str]:
    """The resolved device type and precision (part of a study's identity: "auto" may resolve to
    other numerics on another machine). Empty on Ray, where each worker resolves its own."""
    if config.execution.executor == "ray":
        return {}
    from transferscope.precision import Numerics, resolve_device

    numerics = Numerics.resolve(config.train, resolve_device(config.execution.device))
    return {"device": numerics.device.type, "precision": numerics.name}


def run_study(config: StudyConfig, output: str | Path, *, progress: bool = True, report: bool = True) -> StudyResult:
    """Run (or resume) the whole study in ``output`` and return its table of runs.

    Runs execute as jobs (see treatments.group_jobs) on the executor of ``[execution]``; a job
    is submitted once the base network it copies from is recorded. Each finished run is recorded
    the moment it arrives. One driver at a time: the study directory is locked while it runs
    (:class:`~transferscope.store.StudyLocked` for a second one).

    >>> from transferscope import load_config, run_study
    >>> result = run_study(load_config(overrides=["train.epochs=5"]), "results/quick")  # doctest: +SKIP
    """
    study = Study.prepare(config)
    store = Store(output)
    with store.lock():
        try:
            return _run_locked(study, store, progress=progress, report=report)
        except Interrupted as e:
            recorded = {r["key"] for r in store.records()} if store.exists() else set()
            e.summary = (f"stopped: {len(recorded & {s.key for s in study.plan})} of {len(study.plan)} runs recorded in "
                         f"{store.root}; run the same command to resume")
            raise


def _damaged_weights(store: Store, key: str) -> str | None:
    """Why the weights file of ``key`` cannot be what was saved (missing, truncated, a header that
    does not parse), or None. Reads the header only."""
    path = store.weights_path(key)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable ({one_line(e)})"
    return None if size == 8 + n + end else f"{size} bytes where its header says {8 + n + end}"


def _run_locked(study: Study, store: Store, *, progress: bool, report: bool) -> StudyResult:
    from transferscope.disk import check_fits
    from transferscope.executors import Epoch, Finished, JobDone
    from transferscope.runner import is_source, make_record, shares_frozen_features

    config = study.config
    store.init(config, {"data": study.info, "numerics": numerics_identity(config)}, [s.key for s in study.plan])
    store.save_splits({r: study.split(r).to_dict() for r in range(config.treatments.replicates)})

    recorded = {r["key"]: r["status"] for r in store.records()}
    sources = {s.key: s.depends_on for s in study.plan}
    # a failed run is retried; a skipped one where its source is retried or done by now (a diverged
    # source is deterministic: its dependants stay skipped); a source whose weights are damaged
    # or gone is trained again (to the same weights: a run depends only on its key)
    damaged = {s.key: why for s in study.plan if recorded.get(s.key) == "done" and is_source(s)
               and (why := _damaged_weights(store, s.key))}
    for key in damaged:
        recorded[key] = "failed"
    finished = {k for k, st in recorded.items() if st != "failed"
                and not (st == "skipped" and recorded.get(sources.get(k)) in ("failed", "done"))}
    pending = [s for s in study.plan if s.key not in finished]
    if pending:
        check_fits(study, pending, store.root)  # before any output: a refusal is one line
    retried = sum(s.key in recorded for s in pending) - len(damaged)
    epochs = {s.key: study.budget(s).epochs for s in pending}  # more than train.epochs on reduced data
    bar = Progress(len(pending), sum(epochs.values()), enabled=progress)
    bar.message(study.describe())
    if finished or damaged:
        bar.message(f"resuming {store.root}: {len(finished)} of {len(study.plan)} runs already recorded, skipped")
    for key, why in damaged.items():
        bar.message(f"training {key} again: its weights file {store.weights_path(key)} is {why}")
    if retried:
        bar.message(f"retrying {retried} run(s) recorded as failed, or skipped because their source network was")

    status = {k: st for k, st in recorded.items() if k in finished}  # a retried source is not settled yet
    waiting = group_jobs(pending, shares_frozen_features(config))
    submitted: dict[str, Job] = {}
    recorded_now: set[str] = set()

    def record(rec: dict[str, Any]) -> None:
        trace = rec.pop("traceback", None)
        if trace:
            rec["error"] = f"{rec.get('error') or 'failed'} (traceback in {store.log_path.name})"
            store.log_error(rec["key"], trace)
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
                check_stop()
                if isinstance(event, Epoch):
                    bar.run_started(event.run_key, epochs[event.run_key])
                    bar.epoch_done(event.epoch, event.row)
                elif isinstance(event, Finished):
                    rec = event.result.record
                    if rec["key"] in recorded_now:
                        continue  # delivered again by a retried task: the first one counts
                    if event.result.weights is not None:  # before the record: a recorded base has weights
                        spec = next(s for s in submitted[event.job_key].specs if s.key == rec["key"])
                        store.save_weights(rec["key"], event.result.weights, half=not is_source(spec))
                    record(rec)
                elif isinstance(event, JobDone):
                    if event.error:  # the job could not finish: its unfinished runs fail
                        for spec in submitted[event.job_key].specs:
                            if spec.key not in recorded_now:
                                record(make_record(study, spec, status="failed", error=event.error,
                                                   traceback=event.traceback or event.error))
                    submit_ready(executor)
            completed = True
        finally:
            executor.close(abort=not completed)

    check_stop()
    frame = store.frame()
    report_path = None
    if report and not (frame["status"] == "done").any():
        bar.message("no finished runs: no report written")
    elif report:
        report_path = write_study_report(store, study)
        bar.message(f"report: {report_path}")
    return StudyResult(store.root, frame, report_path, tuple(s.key for s in study.plan))


def write_study_report(store: Store, study: Study | None = None, compare: str | Path | None = None) -> Path:
    """(Re)write the report of the study in ``store`` from its recorded runs, with the analyses
    (similarity, predicted curve, filters, target sizes, convergence, reading); ``compare`` names
    another study directory (a dissimilar split, say) to compare with."""
    from transferscope.analysis import analyze_study

    from transferscope.report import ReportMeta, write_report

    if study is None:
        study = Study.open(store)
    cfg = study.config
    skipped = list(study.info.get("skipped", []))
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
                     *([f"{len(skipped)} unreadable image file(s) skipped (data.skip_corrupt): "
                        + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")] if skipped else []),
                     f"Provenance: transferscope commit {prov['git']['commit']} (dirty: {prov['git']['dirty']}), "
                     f"torch {prov['versions']['torch']}, python {prov['versions']['python']}."),
    )
    frame = store.frame()
    full = frame[frame["target_size"].isna()] if "target_size" in frame else frame
    analysis = analyze_study(store, study, store.root / "report", compare=compare)
    return write_report(full, meta, store.root / "report", analysis=analysis)
