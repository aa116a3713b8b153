"""The study on a Ray cluster: each job is a Ray task, retried when its worker or node dies.

A job's task is a Ray generator: it streams an event per finished epoch and a
:class:`~transferscope.runner.RunResult` per finished run, so the driver records every run the
moment it finishes. A transfer is submitted only once its source network is recorded, and the
source's weights travel through Ray's object store (the object the base job yielded is handed to
its dependants), so no shared filesystem is needed: only the dataset must be readable on every
node. A run delivered twice (a retried task repeats the runs it had already streamed) is recorded
once: the driver keeps the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transferscope.config import StudyConfig
from transferscope.errors import UserError
from transferscope.executors import Epoch, Event, Finished, JobDone
from transferscope.runner import RunResult
from transferscope.treatments import Job

_STUDIES: dict[str, Any] = {}  # per worker process: prepared studies by configuration


def _ray_job(config_json: str, job: Job, source: tuple | None, threads: int) -> Iterator[tuple]:
    """Runs inside a Ray worker: prepare the study once per process, run the job, stream events.
    ``source`` is the ("run", RunResult) item its base job streamed (resolved by Ray)."""
    import json

    import torch

    from transferscope.config import config_from_dict
    from transferscope.runner import Runner
    from transferscope.study import Study

    torch.set_num_threads(threads)
    if config_json not in _STUDIES:
        _STUDIES[config_json] = Study.prepare(config_from_dict(json.loads(config_json)))
    weights = {job.depends_on: source[1].weights} if source is not None else {}
    runner = Runner(_STUDIES[config_json], lambda key: weights[key])
    events: list[tuple] = []
    for result in runner.run_job(job, on_epoch=lambda k, e, r: events.append(("epoch", k, e, r))):
        for event in events:  # a plain loop: Ray drives the generator with send()
            yield event
        events.clear()
        yield ("run", result)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("execution.executor: 'ray' needs Ray, which is not installed; "
                        "install it with: pip install 'transferscope[ray]'") from None
    return ray


class RayExecutor:
    def __init__(self, config: StudyConfig, store_root: Path, max_retries: int = 3):
        import json

        from transferscope.store import Store

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
        self.base_results: dict[str, Any] = {}  # base run key -> ObjectRef of its RunResult

    @property
    def capacity(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1) // self.threads))

    @property
    def busy(self) -> int:
        return len(self.running)

    def submit(self, job: Job) -> None:
        dep = job.depends_on
        if dep is not None and dep not in self.base_results:  # recorded by an earlier session
            self.base_results[dep] = self.ray.put(("run", RunResult({"key": dep}, self.store.load_weights(dep))))
        source = self.base_results[dep] if dep is not None else None
        gen = self.task.remote(self.config_json, job, source, self.threads)
        self.running[gen] = job

    def events(self) -> Iterator[Event]:
        while self.running:
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=1.0)
            for gen in ready:
                job = self.running[gen]
                try:
                    ref = next(gen)
                except StopIteration:
                    del self.running[gen]
                    yield JobDone(job.key)
                    continue
                try:
                    item = self.ray.get(ref)
                except self.ray.exceptions.RayError as e:  # retries exhausted, or the task raised
                    del self.running[gen]
                    lines = [ln for ln in str(e).splitlines() if ln.strip()]
                    yield JobDone(job.key, f"{type(e).__name__}: {lines[-1] if lines else ''}", str(e))
                    continue
                if item[0] == "epoch":
                    yield Epoch(item[1], item[2], item[3])
                else:
                    result: RunResult = item[1]
                    if result.record["role"] == "base" and result.weights is not None:
                        self.base_results[result.record["key"]] = ref
                    yield Finished(job.key, result)

    def close(self, abort: bool = False) -> None:
        for gen in self.running:
            self.ray.cancel(gen, force=True)
        self.running.clear()
