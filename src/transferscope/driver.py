"""The driver: run (or resume) a whole study, one session at a time, and write its report.

A session decides what is left (runs not recorded, failed, or stranded behind a failed source),
submits each job to the executor once the base network it copies from is recorded, and records
every result the moment it arrives, whichever executor produced it. Runs execute in plan order
(base networks first); running the same study again resumes: recorded runs are skipped, an
interrupted one starts over.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from transferscope.config import StudyConfig
from transferscope.disk import check_fits
from transferscope.errors import Interrupted, check_stop, one_line
from transferscope.executors import Epoch, Event, Executor, Finished, JobDone, ProcessExecutor, SerialExecutor, \
    default_workers
from transferscope.precision import Numerics, resolve_device
from transferscope.progress import Progress
from transferscope.record import RunRecord
from transferscope.seeds import STREAMS
from transferscope.analysis.cache import AnalysisCache, Entry, Inputs, current_report, save_report_stamp, snapshot, \
    written_since
from transferscope.provenance import provenance
from transferscope.report import ReportMeta, analyze_study, write_report
from transferscope.runner import is_source, make_record, shares_frozen_features
from transferscope.store import Store
from transferscope.study import Study
from transferscope.tracking import Trackers, check_available
from transferscope.treatments import BY_NAME, Job, RunSpec, group_jobs


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


def make_executor(config: StudyConfig, store: Store, study: Study) -> Executor:
    """The executor that ``[execution]`` asks for."""
    if config.execution.executor == "ray":
        from transferscope.ray_executor import RayExecutor  # Ray is an optional dependency: imported when asked for

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
    numerics = Numerics.resolve(config.train, resolve_device(config.execution.device))
    return {"device": numerics.device.type, "precision": numerics.name}


class Schedule:
    """The driver's state while a study runs: which runs are settled (recorded in a final state),
    which jobs wait for their source network, which are out on the executor."""

    def __init__(self, jobs: list[Job], settled: dict[str, str],
                 budget_base: Callable[[Job], str | None] = lambda job: None):
        self.waiting = list(jobs)
        self.status = dict(settled)  # run key -> recorded status, for settled runs only
        self.submitted: dict[str, Job] = {}
        self.recorded: set[str] = set()  # runs recorded by this session
        self.budget_base = budget_base

    def ready(self) -> Iterator[tuple[Job, str | None]]:
        """Jobs whose source network (and, under a plateau budget, the base network whose budget
        they follow) is settled, each with why it cannot run (that network's status when it is not
        done) or None; they leave the waiting list."""
        for job in list(self.waiting):
            dep, budget = job.depends_on, self.budget_base(job)
            if any(k is not None and k not in self.status for k in (dep, budget)):
                continue  # its source network, or the one whose budget it follows, is not trained yet
            self.waiting.remove(job)
            blocked = None
            if dep is not None and self.status[dep] != "done":
                blocked = f"source network {dep} is {self.status[dep]}"
            elif budget is not None and self.status[budget] != "done":
                blocked = f"its budget comes from base network {budget}, which is {self.status[budget]}"
            if blocked is None:
                self.submitted[job.key] = job
            yield job, blocked

    def settle(self, key: str, status: str) -> None:
        self.status[key] = status
        self.recorded.add(key)

    def spec(self, job_key: str, run_key: str) -> RunSpec:
        return next(s for s in self.submitted[job_key].specs if s.key == run_key)


def run_study(config: StudyConfig, output: str | Path, *, progress: bool = True, report: bool = True) -> StudyResult:
    """Run (or resume) the whole study in ``output`` and return its table of runs.

    Runs execute as jobs (see treatments.group_jobs) on the executor of ``[execution]``; a job
    is submitted once the base network it copies from is recorded. Each finished run is recorded
    the moment it arrives. One driver at a time: the study directory is locked while it runs
    (:class:`~transferscope.store.StudyLocked` for a second one).

    >>> from transferscope import load_config, run_study
    >>> result = run_study(load_config(overrides=["train.epochs=5"]), "results/quick")  # doctest: +SKIP
    """
    check_available(config.execution.log)  # a missing package is one line, before anything is written
    study = Study.prepare(config)
    store = Store(output)
    with store.lock():
        try:
            return _Driver(study, store, progress).run(report)
        except Interrupted as e:
            recorded = {r.key for r in store.records()} if store.exists() else set()
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


class _Driver:
    """One session of a study: decide what is left, run it on the executor, record each result."""

    def __init__(self, study: Study, store: Store, progress: bool):
        self.study, self.store, self.progress = study, store, progress

    def run(self, report: bool) -> StudyResult:
        study, store, config = self.study, self.store, self.study.config
        store.init(config, {"data": study.info, "numerics": numerics_identity(config), "streams": STREAMS},
                   [s.key for s in study.plan])
        store.save_splits({r: study.split(r).to_dict() for r in range(config.treatments.replicates)})
        # execution.log: each recorded run once per backend; runs recorded before and not yet logged are logged now
        self.trackers = Trackers.open(config.execution.log, store.root, config.name, store.records)
        pending, settled = self._plan_session()
        if pending:
            self._execute(pending, settled)
        check_stop()
        frame = store.frame()
        report_path = None
        if report and not (frame["status"] == "done").any():
            self.bar.message("no finished runs: no report written")
        elif report:
            report_path = write_study_report(store, study, progress=self.progress)
            self.bar.message(f"report: {report_path}")
        return StudyResult(store.root, frame, report_path, tuple(s.key for s in study.plan))

    def _plan_session(self) -> tuple[list[RunSpec], dict[str, str]]:
        """The runs this session trains, and the settled ones (key -> status). A failed run is
        retried; a skipped one where its source is retried or done by now (a diverged source is
        deterministic: its dependants stay skipped); a source whose weights are damaged or gone is
        trained again (to the same weights: a run depends only on its key)."""
        study, store = self.study, self.store
        recorded = {r.key: r.status for r in store.records()}
        sources = {s.key: s.depends_on for s in study.plan}
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
        self.epochs = {s.key: study.budget(s).epochs for s in pending}  # more than train.epochs on reduced data
        self.bar = bar = Progress(len(pending), sum(self.epochs.values()), enabled=self.progress)
        bar.message(study.describe())
        if finished or damaged:
            bar.message(f"resuming {store.root}: {len(finished)} of {len(study.plan)} runs already recorded, skipped")
        for key, why in damaged.items():
            bar.message(f"training {key} again: its weights file {store.weights_path(key)} is {why}")
        if retried:
            bar.message(f"retrying {retried} run(s) recorded as failed, or skipped because their source network was")
        return pending, {k: st for k, st in recorded.items() if k in finished}  # a retried source is not settled

    def _execute(self, pending: list[RunSpec], settled: dict[str, str]) -> None:
        self.schedule = Schedule(group_jobs(pending, shares_frozen_features(self.study.config)), settled,
                                 self._budget_base)
        executor = make_executor(self.study.config, self.store, self.study)
        completed = False
        try:
            self._submit_ready(executor)
            for event in executor.events():
                check_stop()
                self._handle(event, executor)
            completed = True
        finally:
            executor.close(abort=not completed)

    def _handle(self, event: Event, executor: Executor) -> None:
        if isinstance(event, Epoch):
            self.bar.run_started(event.run_key, self.epochs[event.run_key])
            self.bar.epoch_done(event.epoch, event.row)
        elif isinstance(event, Finished):
            rec = event.result.record
            if rec.key in self.schedule.recorded:
                return  # delivered again by a retried task: the first one counts
            if event.result.weights is not None:  # before the record: a recorded base has weights
                spec = self.schedule.spec(event.job_key, rec.key)
                self.store.save_weights(rec.key, event.result.weights, half=not is_source(spec))
            self._record(rec, event.result.traceback)
        elif isinstance(event, JobDone):
            if event.error:  # the job could not finish: its unfinished runs fail
                for spec in self.schedule.submitted[event.job_key].specs:
                    if spec.key not in self.schedule.recorded:
                        self._record(make_record(self.study, spec, "failed", error=event.error),
                                     event.traceback or event.error)
            self._submit_ready(executor)

    def _budget_base(self, job: Job) -> str | None:
        """The base network whose plateau budget the job's runs follow (one per job: a job's runs
        share their target), or None."""
        return next((b for s in job.specs if (b := self.study.budget_base(s)) is not None), None)

    def _with_budgets(self, job: Job) -> Job:
        """The job with the budget its base network found, read from that base's record."""
        base = self._budget_base(job)
        if base is None:
            return job
        found = RunRecord.from_json(self.store.run_path(base).read_text()).budget
        return replace(job, budgets={s.key: found for s in job.specs if self.study.budget_base(s) == base})

    def _submit_ready(self, executor: Executor) -> None:
        for job, blocked in self.schedule.ready():
            if blocked is None:
                job = self._with_budgets(job)
                self.schedule.submitted[job.key] = job
                executor.submit(job)
            else:
                for spec in job.specs:
                    self._record(make_record(self.study, spec, "skipped", error=blocked))

    def _record(self, rec: RunRecord, trace: str | None = None) -> None:
        """Record a run; a failed run's traceback goes to errors.log and its record says so."""
        if trace:
            rec = replace(rec, error=f"{rec.error or 'failed'} (traceback in {self.store.log_path.name})")
            self.store.log_error(rec.key, trace)
        self.store.record(rec)
        self.trackers.log(rec)  # TensorBoard / MLflow (execution.log), whichever executor ran it
        self.schedule.settle(rec.key, rec.status)
        self.bar.run_finished(rec.key, rec.status, rec.test_top1, self.epochs[rec.key] - len(rec.history))


def write_study_report(store: Store, study: Study | None = None, compare: str | Path | None = None, *,
                       analyses: list[str] | tuple[str, ...] | None = None, progress: bool = True,
                       cache: bool | AnalysisCache = True) -> Path:
    """(Re)write the report of the study in ``store`` from its recorded runs, with the analyses
    (similarity, predicted curve, filters, target sizes, convergence, reading); ``compare`` names
    another study directory (a dissimilar split, say) to compare with. ``analyses``: which ones
    (default: the study's ``report.analyses``). ``cache``: an analysis whose inputs are unchanged
    is read from ``DIR/cache/analyses`` instead of computed (so does the dataset: it is loaded only
    where an analysis that reads images has to be computed). ``progress``: a line per analysis on
    stderr."""
    stamped = cache is not False and not (isinstance(cache, AnalysisCache) and not cache.enabled)
    if stamped and (path := current_report(store.root, compare, analyses)) is not None:
        if isinstance(cache, AnalysisCache):
            cache.from_stamp = True
        return path  # nothing it depends on has changed since it was written
    if study is None:
        study = Study.open(store, images=False)
    cfg = study.config
    skipped = list(study.info.get("skipped", []))
    src = cfg.source
    meta = ReportMeta(
        dataset=cfg.data.dataset, split=study.split(0).description
        if cfg.split.kind != "random" or cfg.design == "pretrained"
        else f"random {len(study.split(0).a)}/{len(study.split(0).b)}", design=cfg.design,
        source={"checkpoint": f"checkpoint {src.path}", "timm": f"timm's {cfg.model.arch}" + (f" ({src.path})"
                if src.path else ""), "study": f"study {src.study}, run {src.run}"}.get(src.kind, ""),
        arch=cfg.model.arch, replicates=cfg.treatments.replicates, num_layers=study.num_layers,
        cut_points=study.cut_points, best_k=cfg.eval.best_k,
        extra_lines=(f"Training: {cfg.train.epochs} epochs, batch {cfg.train.batch_size}, SGD lr {cfg.train.lr} "
                     f"momentum {cfg.train.momentum} weight decay {cfg.train.weight_decay}, {cfg.train.schedule} "
                     f"schedule, augmentation {'on' if cfg.train.augment else 'off'}, fine-tuning lr scale "
                     f"{cfg.train.finetune_lr_scale}.",
                     "Frozen layers run in eval mode: BatchNorm statistics and dropout fixed; BatchNorm affine "
                     + ("parameters trained (treatments.frozen_bn = 'train-affine')." if cfg.treatments.frozen_bn
                        == "train-affine" else "parameters frozen too (treatments.frozen_bn = 'fixed').")
                     + "".join(f" {BY_NAME[n].label} re-estimates the frozen layers' BatchNorm statistics on the "
                               "target task's training images first (AdaBN), then keeps them fixed."
                               for n in cfg.treatments.names if BY_NAME[n].bn_stats == "target"),
                     *([f"Input: {study.input_words()}."] if cfg.design == "pretrained" else []),
                     *([f"{len(skipped)} unreadable image file(s) skipped (data.skip_corrupt): "
                        + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")] if skipped else [])),
    )
    frame = store.frame()
    full = frame[frame["target_size"].isna()] if "target_size" in frame else frame
    out = store.root / "report"
    cache = cache if isinstance(cache, AnalysisCache) else AnalysisCache(store.root, enabled=cache)
    analysis = analyze_study(store, study, out, compare=compare, analyses=analyses, cache=cache, progress=progress)
    # the report itself (report.md, report.html, the paper's figures and tables) is cached like an
    # analysis: its inputs are the records, what the report says of the study, each analysis's key
    # (a failed one has none, so it is tried again) and the commit the provenance names
    inputs = Inputs().add("meta", repr(meta)).files("records", (store.root / "runs").glob("*.json"))
    inputs.add("analyses", cache.keys).add("notes", analysis.notes).add("git", provenance()["git"])
    key = inputs.key("report")
    if (entry := cache.load("report", key, out)) is not None:
        cache.hits.append("report")
        path = out / entry.result
    else:
        before = snapshot(out)
        path = write_report(full, meta, out, analysis=analysis)
        cache.save("report", Entry(key, path.name, written_since(out, before), 0.0))
    if stamped and analysis.complete:
        save_report_stamp(store.root, path, compare, analyses)
    return path
