"""Where jobs execute: in this process, or in N local worker processes.

An executor takes jobs whose source networks are already recorded and reports events as they
happen: an epoch finished, a run finished (its :class:`~transferscope.runner.RunResult`), a job
finished. The driver (study.py) records every result the moment it arrives, whichever executor
produced it, so all executors give identical records (bit for bit on the CPU: each run draws its
random streams from its own key and runs with the same thread count).

A worker process that dies mid-job is replaced and its job retried (runs it already reported are
not repeated: the driver skips them on resubmission).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transferscope.config import StudyConfig
from transferscope.errors import one_line
from transferscope.runner import RunResult, Runner
from transferscope.treatments import Job


@dataclass
class Epoch:
    run_key: str
    epoch: int
    row: dict[str, float]


@dataclass
class Finished:
    job_key: str
    result: RunResult


@dataclass
class JobDone:
    job_key: str
    error: str | None = None  # one line, set when the job could not complete (after retries)
    traceback: str | None = None  # the detail behind ``error``, for the study's errors.log


Event = Epoch | Finished | JobDone


def default_workers(config: StudyConfig) -> int:
    w = config.execution.workers
    if w != "auto":
        return int(w)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // config.execution.threads))


def _load_weights(store_root: str):
    from transferscope.store import Store

    store = Store(store_root)
    return lambda key: store.load_weights(key)


class SerialExecutor:
    """Runs jobs one after another in this process."""

    def __init__(self, config: StudyConfig, store_root: Path, study: Any):
        torch.set_num_threads(config.execution.threads)
        self.runner = Runner(study, _load_weights(str(store_root)))
        self.queue: deque[Job] = deque()

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    @property
    def busy(self) -> int:
        return len(self.queue)

    @property
    def capacity(self) -> int:
        return 1

    def events(self) -> Iterator[Event]:
        while self.queue:
            job = self.queue.popleft()
            epochs: list[Epoch] = []
            for result in self.runner.run_job(job, on_epoch=lambda k, e, r: epochs.append(Epoch(k, e, r))):
                yield from epochs
                epochs.clear()
                yield Finished(job.key, result)
            yield JobDone(job.key)

    def close(self, abort: bool = False) -> None:
        pass


def _exit_with_parent() -> None:
    """A worker ends when the driver is gone (killed with SIGKILL, say), even mid-run."""
    parent = mp.parent_process()

    def watch() -> None:
        while parent is not None and parent.is_alive():
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(config_dict: dict, store_root: str, threads: int, jobs: mp.Queue, events: mp.Queue) -> None:
    """A worker process: prepare the study once, then run the jobs it is sent."""
    from transferscope.config import config_from_dict
    from transferscope.study import Study

    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver stops us
    torch.set_num_threads(threads)
    study = Study.prepare(config_from_dict(config_dict))
    runner = Runner(study, _load_weights(store_root))
    while True:
        job = jobs.get()
        if job is None:
            return
        try:
            for result in runner.run_job(job, on_epoch=lambda k, e, r: events.put(("epoch", k, e, r))):
                events.put(("run", job.key, result))
            events.put(("done", job.key, None, None))
        except Exception as e:  # noqa: BLE001  (report, keep the worker alive)
            events.put(("done", job.key, one_line(e), traceback.format_exc()))


class ProcessExecutor:
    """N worker processes on this machine, each with ``execution.threads`` torch threads."""

    def __init__(self, config: StudyConfig, store_root: Path, workers: int, max_retries: int = 2):
        self.config, self.store_root, self.n = config, str(store_root), workers
        self.max_retries = max_retries
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        self.events_q: mp.Queue = self.ctx.Queue()
        self.workers: list[tuple[Any, mp.Queue]] = []
        self.holding: dict[int, Job | None] = {}
        self.waiting: deque[Job] = deque()
        self.retries: dict[str, int] = {}
        self.reported: dict[str, set[str]] = {}  # job key -> runs it already reported
        for _ in range(workers):
            self._start_worker()

    def _start_worker(self, slot: int | None = None) -> None:
        jobs: mp.Queue = self.ctx.Queue()
        proc = self.ctx.Process(target=_worker_main, daemon=True,
                                args=(self.config.to_dict(), self.store_root, self.config.execution.threads,
                                      jobs, self.events_q))
        proc.start()
        if slot is None:
            self.workers.append((proc, jobs))
            self.holding[len(self.workers) - 1] = None
        else:
            self.workers[slot] = (proc, jobs)
            self.holding[slot] = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.workers]

    @property
    def capacity(self) -> int:
        return self.n

    @property
    def busy(self) -> int:
        return len(self.waiting) + sum(j is not None for j in self.holding.values())

    def submit(self, job: Job) -> None:
        self.waiting.append(job)
        self._dispatch()

    def _dispatch(self) -> None:
        for slot, job in self.holding.items():
            if job is None and self.waiting:
                nxt = self.waiting.popleft()
                self.holding[slot] = nxt
                self.workers[slot][1].put(nxt)

    def _check_workers(self) -> Iterator[Event]:
        for slot, (proc, _) in enumerate(self.workers):
            if proc.is_alive():
                continue
            job = self.holding.get(slot)
            self._start_worker(slot)
            if job is not None:
                tries = self.retries.get(job.key, 0) + 1
                self.retries[job.key] = tries
                done = self.reported.get(job.key, set())
                rest = Job(job.key, tuple(s for s in job.specs if s.key not in done))
                if not rest.specs:
                    yield JobDone(job.key)
                elif tries > self.max_retries:
                    yield JobDone(job.key, f"worker process died {tries} times (exit code {proc.exitcode})")
                else:
                    self.waiting.appendleft(rest)  # only the runs it had not reported
        self._dispatch()

    def events(self) -> Iterator[Event]:
        while self.busy:
            try:
                msg = self.events_q.get(timeout=0.5)
            except queue.Empty:
                yield from self._check_workers()
                continue
            kind = msg[0]
            if kind == "epoch":
                yield Epoch(msg[1], msg[2], msg[3])
            elif kind == "run":
                self.reported.setdefault(msg[1], set()).add(msg[2].record["key"])
                yield Finished(msg[1], msg[2])
            else:
                for slot, job in self.holding.items():
                    if job is not None and job.key == msg[1]:
                        self.holding[slot] = None
                self._dispatch()
                yield JobDone(msg[1], msg[2], msg[3])

    def close(self, abort: bool = False) -> None:
        """Stop the workers: let them finish their queue, or with ``abort`` end them now."""
        for proc, jobs in self.workers:
            if proc.is_alive():
                if abort:
                    proc.kill()
                else:
                    jobs.put(None)
        for proc, _ in self.workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
