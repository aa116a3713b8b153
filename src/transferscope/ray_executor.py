"""The study on a Ray cluster: each job is a Ray task, retried when its worker or node dies.

A job's task is a Ray generator over :func:`~transferscope.executors.job_events`, the adapter every
executor uses: it streams the same event objects (an epoch, a finished run, the job done), so the
driver records every run the moment it finishes. A transfer is submitted only once its source
network is recorded, and the source's weights travel through Ray's object store (put once per base
network), so no shared filesystem is needed: only the dataset must be readable on every node. A run
delivered twice (a retried task repeats the runs it had already streamed) is recorded once: the
driver keeps the first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from transferscope.config import StudyConfig, config_from_dict
from transferscope.errors import UserError
from transferscope.executors import Event, Finished, JobDone, job_events
from transferscope.record import RunRecord
from transferscope.runner import Runner
from transferscope.store import Store
from transferscope.study import Study
from transferscope.treatments import Job, treatment

_STUDIES: dict[str, Any] = {}  # per worker process: prepared studies by configuration


def _ray_job(config_json: str, job: Job, source: dict[str, torch.Tensor] | None, threads: int) -> Iterator[Event]:
    """Runs inside a Ray worker: prepare the study once per process, run the job, stream its
    events. ``source`` is the weights of the base network the job copies from (resolved by Ray)."""
    torch.set_num_threads(threads)
    if config_json not in _STUDIES:
        _STUDIES[config_json] = Study.prepare(config_from_dict(json.loads(config_json)))
    weights = {job.depends_on: source} if source is not None else {}
    for event in job_events(Runner(_STUDIES[config_json], lambda key: weights[key]), job):
        yield event  # a plain loop: Ray drives the generator with send()


def _is_source(record: RunRecord) -> bool:
    """Whether a finished run is a base network on all its data (what transfers copy from)."""
    return treatment(record.role).is_base and record.target_size is None


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("execution.executor: 'ray' needs Ray, which is not installed; "
                        "install it with: pip install 'transferscope[ray]'") from None
    return ray


class RayExecutor:
    def __init__(self, config: StudyConfig, store_root: Path, max_retries: int = 3):
        self.store = Store(store_root)
        ray = self.ray = import_ray()
        ex = config.execution
        if not ray.is_initialized():
            try:
                ray.init(address=ex.address, include_dashboard=False, log_to_driver=True,
                         configure_logging=False, ignore_reinit_error=True)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"execution.address: cannot connect to a Ray cluster at {ex.address!r}: {e}") from None
        self.config_json = json.dumps(config.to_dict())
        self.task = ray.remote(_ray_job).options(num_cpus=ex.threads, num_gpus=ex.gpus_per_run,
                                                 max_retries=max_retries, retry_exceptions=False)
        self.threads = ex.threads
        self.running: dict[Any, Job] = {}  # generator -> job
        self.sources: dict[str, Any] = {}  # base run key -> ObjectRef of its weights

    def submit(self, job: Job) -> None:
        dep = job.depends_on
        if dep is not None and dep not in self.sources:  # recorded by an earlier session
            self.sources[dep] = self.ray.put(self.store.load_weights(dep))
        gen = self.task.remote(self.config_json, job, self.sources[dep] if dep is not None else None, self.threads)
        self.running[gen] = job

    def events(self) -> Iterator[Event]:
        while self.running:
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=1.0)
            for gen in ready:
                job = self.running[gen]
                try:
                    ref = next(gen)
                except StopIteration:  # ended without its JobDone: cannot happen, but end the job
                    del self.running[gen]
                    yield JobDone(job.key)
                    continue
                try:
                    event = self.ray.get(ref)
                except self.ray.exceptions.RayError as e:  # retries exhausted, or the task raised
                    del self.running[gen]
                    lines = [ln for ln in str(e).splitlines() if ln.strip()]
                    yield JobDone(job.key, f"{type(e).__name__}: {lines[-1] if lines else ''}", str(e))
                    continue
                if isinstance(event, Finished) and event.result.weights is not None and _is_source(event.result.record) \
                        and event.result.record.key not in self.sources:
                    self.sources[event.result.record.key] = self.ray.put(event.result.weights)
                elif isinstance(event, JobDone):
                    del self.running[gen]
                yield event

    def close(self, abort: bool = False) -> None:
        for gen in self.running:
            self.ray.cancel(gen, force=True)
        self.running.clear()
