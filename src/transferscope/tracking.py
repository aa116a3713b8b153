"""Experiment tracking: every recorded run's per-epoch history and final metrics in TensorBoard
event files and an MLflow tracking store, as ``execution.log`` asks.

The driver logs a run when it records it (:meth:`Trackers.log`), whichever executor trained it.
Logging is idempotent, by run key: each backend holds a run once, as last recorded. A run
recorded again (a failed run retried) replaces what was logged of it; when a session starts, the
recorded runs a backend does not hold as recorded (logging was off, or the driver stopped between
the record and the log) are logged, and the ones it holds are not logged again.

Where, in the study directory::

    logs/tensorboard/<run key>/  one event file per run: history/<column> per epoch (step = epoch),
                                 final/<metric> at the last epoch, the run's parameters as hparams;
                                 beside it, transferscope.json: the record it was written from
    logs/mlflow/mlflow.db        an MLflow SQLite store (MLflow 3 refuses new file stores): one
                                 experiment named after the study (renamed with it), one run per key

The packages are optional and imported only when a backend is asked for; :func:`check_available`
says in one line which one is missing. MLflow's usage telemetry is off unless the environment
sets ``MLFLOW_DISABLE_TELEMETRY`` itself: logging a study to a local file sends nothing anywhere.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from transferscope.config import TRACKING_BACKENDS as BACKENDS
from transferscope.errors import UserError
from transferscope.record import RunRecord

#: the folder of the study directory that the backends write under
LOG_DIR = "logs"
#: MLflow tags: the transferscope run (a run's name may be edited in the UI), when its record was
#: finished (which record a backend holds), and the study's experiment (which may be renamed)
KEY_TAG = "transferscope.key"
FINISHED_TAG = "transferscope.finished_at"
STUDY_TAG = "transferscope.study"
#: MLflow's UI opens an experiment of this kind on its runs (training runs, not GenAI traces)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
#: in a TensorBoard run folder: which record it was written from
TENSORBOARD_MARK = "transferscope.json"
#: MLflow's limit on a parameter's value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3)
MAX_PARAM_LENGTH = 6000
#: MLflow's run statuses for a record's status
MLFLOW_STATUS = {"done": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "skipped": "KILLED"}

Param = str | int | float | bool


class Tracker(Protocol):
    """One backend: whether it holds a record as recorded, and logging one (replacing what it
    held of that key)."""

    def has(self, rec: RunRecord) -> bool: ...

    def log(self, rec: RunRecord) -> None: ...


# ------------------------------------------------------------------------------- what is logged


def run_params(rec: RunRecord) -> dict[str, Param]:
    """The run's treatment and identity (role, treatment, n, replicate, target, target size,
    copied and frozen layers, ...), its budget, seeds and parameter counts, and the study's
    configuration flattened to dotted keys (``train.lr``, ``model.options.widths``). None is left out;
    lists and tuples are JSON."""
    own: dict[str, Any] = {
        "key": rec.key, "treatment": rec.treatment, "role": rec.role, "n": rec.n, "replicate": rec.replicate,
        "target": rec.target, "source": rec.source, "target_size": rec.target_size, "status": rec.status,
        "copied_layers": rec.copied_layers, "frozen_layers": rec.frozen_layers, "source_network": rec.source_network,
        "depends_on": rec.depends_on, "train_images": rec.train_images, "trainable_params": rec.trainable_params,
        "total_params": rec.total_params, "precision": rec.precision, "device": rec.device,
    }
    if rec.budget is not None:
        own |= {f"budget.{k}": v for k, v in vars(rec.budget).items()}
    if rec.seeds is not None:
        own |= {f"seeds.{k}": v for k, v in vars(rec.seeds).items()}
    if rec.split is not None:
        own["split"] = rec.split.description
    out = {k: v for k, v in own.items() if v is not None}
    out.update(_flatten(rec.config))
    return out


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Param]:
    out: dict[str, Param] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{name}."))
        elif isinstance(v, (list, tuple, dict)):
            out[name] = json.dumps(v)
        elif v is not None:
            out[name] = v
    return out


def epoch_metrics(rec: RunRecord) -> list[tuple[int, str, float]]:
    """(epoch, ``history/<column>``, value) for every history row and column but the epoch."""
    return [(int(row["epoch"]), f"history/{k}", float(v)) for row in rec.history for k, v in row.items()
            if k != "epoch"]


def final_metrics(rec: RunRecord) -> dict[str, float]:
    """``final/<metric>`` for each of the record's metrics (test top-1, ...) and its wall time."""
    out = {f"final/{k}": float(v) for k, v in rec.metrics.items()}
    if rec.wall_time_s is not None:
        out["final/wall_time_s"] = float(rec.wall_time_s)
    return out


def final_step(rec: RunRecord) -> int:
    """The step of the final metrics: the last epoch trained (0 for a run that trained none)."""
    return int(rec.history[-1]["epoch"]) if rec.history else 0


def _times_ms(rec: RunRecord) -> tuple[int, int]:
    """(start, end) of the run in milliseconds since the epoch, from its finish time and wall time."""
    try:
        end = datetime.fromisoformat(rec.finished_at).timestamp() if rec.finished_at else None
    except ValueError:
        end = None
    if end is None:
        end = datetime.now(timezone.utc).timestamp()
    start = end - (rec.wall_time_s or 0.0)
    return int(start * 1000), int(end * 1000)


# ----------------------------------------------------------------------------- the packages


#: the packages each backend's extra installs
EXTRAS = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}


def _needs(name: str, err: ImportError) -> UserError:
    missing = (err.name or "").split(".")[0]
    package = missing if missing in EXTRAS[name] else name
    return UserError(f'execution.log: "{name}" needs the {package} package: pip install \'transferscope[{name}]\'')


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise _needs("tensorboard", e) from None
    return SummaryWriter


def _mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        for package in ("sqlalchemy", "alembic"):  # the SQLite store and its migrations
            importlib.import_module(package)
        import mlflow
    except ImportError as e:
        raise _needs("mlflow", e) from None
    return mlflow


def check_available(names: Iterable[str]) -> None:
    """One line (:class:`UserError`) naming the package a backend in ``names`` needs and lacks."""
    for name in names:
        if name == "tensorboard":
            _summary_writer()
        elif name == "mlflow":
            _mlflow()


# ---------------------------------------------------------------------------------- backends


class TensorBoardLog:
    """``<root>/<run key>/``: the run's scalars and its parameters (TensorBoard's HParams tab)."""

    def __init__(self, root: Path):
        self.root = root
        self._writer = _summary_writer()
        root.mkdir(parents=True, exist_ok=True)

    def has(self, rec: RunRecord) -> bool:
        try:
            mark = json.loads((self.root / rec.key / TENSORBOARD_MARK).read_text())
        except (OSError, ValueError):
            return False
        return mark == _mark(rec)

    def log(self, rec: RunRecord) -> None:
        from torch.utils.tensorboard.summary import hparams

        # written aside, then moved in place: a run's folder is whole or absent
        partial = self.root / f".{rec.key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        writer = self._writer(str(partial))
        try:
            for step, name, value in epoch_metrics(rec):
                writer.add_scalar(name, value, step)
            final, step = final_metrics(rec), final_step(rec)
            for name, value in final.items():
                writer.add_scalar(name, value, step)
            for summary in hparams(run_params(rec), {k: v for k, v in final.items() if math.isfinite(v)}):
                writer.file_writer.add_summary(summary)
        finally:
            writer.close()
        (partial / TENSORBOARD_MARK).write_text(json.dumps(_mark(rec)))
        shutil.rmtree(self.root / rec.key, ignore_errors=True)
        partial.rename(self.root / rec.key)


class MlflowLog:
    """An MLflow SQLite store in ``<root>/mlflow.db``: experiment ``experiment``, one run per run key
    (run name and tag :data:`KEY_TAG`), with params, per-epoch and final metrics and a status."""

    def __init__(self, root: Path, experiment: str):
        mlflow = _mlflow()
        from mlflow.entities import ViewType

        root.mkdir(parents=True, exist_ok=True)
        self.uri = tracking_uri(root)
        logger = logging.getLogger("mlflow")
        level = logger.level
        logger.setLevel(logging.WARNING)  # not "Creating initial MLflow database tables..." in the progress
        try:
            self.client = client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)
            ours = client.search_experiments(view_type=ViewType.ALL, filter_string=f"tags.`{STUDY_TAG}` = 'true'")
            if not ours:
                self.experiment_id = client.create_experiment(
                    experiment, artifact_location=(root / "artifacts").resolve().as_uri(),
                    tags={STUDY_TAG: "true", **EXPERIMENT_KIND})
            else:  # the study's experiment, named as the study is now
                found = ours[0]
                self.experiment_id = found.experiment_id
                if found.lifecycle_stage == "deleted":
                    client.restore_experiment(found.experiment_id)
                if found.name != experiment:
                    client.rename_experiment(found.experiment_id, experiment)
                for tag, value in EXPERIMENT_KIND.items():
                    if found.tags.get(tag) != value:
                        client.set_experiment_tag(found.experiment_id, tag, value)
        finally:
            logger.setLevel(level)
        self.runs: dict[str, tuple[str, str | None]] = {}  # run key -> (MLflow run id, its record's finish)
        token = None
        while True:
            page = client.search_runs([self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                      page_token=token)
            for run in page:
                if KEY_TAG in run.data.tags:
                    self.runs.setdefault(run.data.tags[KEY_TAG], (run.info.run_id, run.data.tags.get(FINISHED_TAG)))
            token = page.token
            if not token:
                break

    def has(self, rec: RunRecord) -> bool:
        return rec.key in self.runs and self.runs[rec.key][1] == str(rec.finished_at)

    def log(self, rec: RunRecord) -> None:
        from mlflow.entities import Metric, Param as MlflowParam

        client = self.client
        if rec.key in self.runs:  # logged before (a retried run): the new record replaces it
            client.delete_run(self.runs.pop(rec.key)[0])
        start, end = _times_ms(rec)
        run = client.create_run(self.experiment_id, start_time=start, run_name=rec.key,
                                tags={KEY_TAG: rec.key, "transferscope.status": rec.status})
        run_id = run.info.run_id
        params = [MlflowParam(_param_name(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in run_params(rec).items()]
        metrics = [Metric(name, value, end, step) for step, name, value in epoch_metrics(rec)]
        metrics += [Metric(name, value, end, final_step(rec)) for name, value in final_metrics(rec).items()]
        for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        client.set_terminated(run_id, status=MLFLOW_STATUS.get(rec.status, "FAILED"), end_time=end)
        client.set_tag(run_id, FINISHED_TAG, str(rec.finished_at))  # last: a run cut short is logged again
        self.runs[rec.key] = (run_id, str(rec.finished_at))


def _mark(rec: RunRecord) -> dict[str, Any]:
    """What tells one record of a run from another: its status and when it was finished."""
    return {"key": rec.key, "status": rec.status, "finished_at": rec.finished_at}


def _param_name(name: str) -> str:
    """A parameter name MLflow accepts (alphanumerics, _ - . / space): others become _."""
    return re.sub(r"[^\w.\- /]", "_", name)


def tracking_uri(root: Path) -> str:
    """The MLflow tracking URI of the store in ``root`` (``sqlite:////abs/path/mlflow.db``)."""
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def log_dir(study_root: Path, backend: str) -> Path:
    """Where ``backend`` writes in a study directory."""
    return Path(study_root) / LOG_DIR / backend


class Trackers:
    """The backends of ``execution.log`` for one study directory (none: nothing is imported or
    written)."""

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = trackers

    @classmethod
    def open(cls, names: Iterable[str], study_root: Path, experiment: str,
             recorded: Callable[[], Iterable[RunRecord]] = tuple) -> Trackers:
        """Open each backend in ``names`` (each installed as the extra of its name) and log the
        runs ``recorded()`` returns that it does not hold as recorded."""
        made: dict[str, Tracker] = {}
        for name in names:
            if name == "tensorboard":
                made[name] = TensorBoardLog(log_dir(study_root, name))
            elif name == "mlflow":
                made[name] = MlflowLog(log_dir(study_root, name), experiment)
            else:
                raise UserError(f"execution.log: unknown backend {name!r}; allowed: {', '.join(BACKENDS)}")
        trackers = cls(made)
        if made:
            for rec in recorded():
                for tracker in made.values():
                    if not tracker.has(rec):
                        tracker.log(rec)
        return trackers

    def log(self, rec: RunRecord) -> None:
        for tracker in self.trackers.values():
            tracker.log(rec)
