"""Where jobs execute: in this process, in N local worker processes, or on Ray (ray_executor.py).

Every executor has the same interface (:class:`Executor`: ``submit``, ``events``, ``close``) and
runs a job through the same adapter, :func:`job_events`, which turns a job into events: an epoch
finished, a run finished (its :class:`~transferscope.runner.RunResult`), the job finished (with a
one-line error and its traceback if it could not). These event dataclasses are the only wire
format: they cross the process queue and Ray's object store as they are. The driver records every
result the moment it arrives, whichever executor produced it, so all executors give identical
records (bit for bit on the CPU: each run draws its random streams from its own key and runs with
the same thread count).

A worker process that dies mid-job is replaced and its job retried (runs it already reported are
not repeated: the driver skips them on resubmission). Each worker sends its events down a pipe of
its own: a worker killed in the middle of a message (or holding a lock, as a shared
``multiprocessing.Queue`` would have it) breaks only its own channel, which is dropped with it.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from transferscope.config import StudyConfig, config_from_dict
from transferscope.errors import one_line
from transferscope.runner import RunResult, Runner
from transferscope.store import Store
from transferscope.study import Study
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


class Executor(Protocol):
    """Where jobs execute. The driver submits jobs whose source networks are recorded and consumes
    the events; ``close`` stops the executor (``abort``: now, dropping unfinished jobs)."""

    def submit(self, job: Job) -> None: ...

    def events(self) -> Iterator[Event]: ...

    def close(self, abort: bool = False) -> None: ...


def job_events(runner: Runner, job: Job, live: Callable[[Epoch], None] | None = None) -> Iterator[Event]:
    """The one adapter from a job to events, in whatever process runs it: each run's epochs, its
    result, and finally :class:`JobDone` (with a one-line error and the traceback when the job
    could not finish: a run's own failure is a failed record, not an error here). Epochs go to
    ``live`` as they finish where given (a worker's queue), else they are yielded before their
    run's result."""
    epochs: list[Epoch] = []

    def on_epoch(key: str, epoch: int, row: dict[str, float]) -> None:
        event = Epoch(key, epoch, row)
        live(event) if live is not None else epochs.append(event)

    try:
        for result in runner.run_job(job, on_epoch=on_epoch):
            yield from epochs
            epochs.clear()
            yield Finished(job.key, result)
    except Exception as e:  # noqa: BLE001  (the job fails, the executor and the study go on)
        yield from epochs
        yield JobDone(job.key, one_line(e), traceback.format_exc())
        return
    yield JobDone(job.key)


def default_workers(config: StudyConfig) -> int:
    w = config.execution.workers
    if w != "auto":
        return int(w)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // config.execution.threads))


def store_weights(store_root: str) -> Callable[[str], dict[str, torch.Tensor]]:
    """A source-weights loader reading the study directory (the serial and process executors)."""
    return Store(store_root).load_weights


class SerialExecutor:
    """Runs jobs one after another in this process."""

    def __init__(self, config: StudyConfig, store_root: Path, study: Study):
        torch.set_num_threads(config.execution.threads)
        self.runner = Runner(study, store_weights(str(store_root)))
        self.queue: deque[Job] = deque()

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def events(self) -> Iterator[Event]:
        while self.queue:
            yield from job_events(self.runner, self.queue.popleft())

    def close(self, abort: bool = False) -> None:
        self.queue.clear()


def _exit_with_parent() -> None:
    """A worker ends when the driver is gone (killed with SIGKILL, say), even mid-run."""
    parent = mp.parent_process()

    def watch() -> None:
        while parent is not None and parent.is_alive():
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(config_dict: dict, store_root: str, threads: int, jobs: mp.Queue,
                 events: multiprocessing.connection.Connection) -> None:
    """A worker process: prepare the study once, then run the jobs it is sent; every event goes
    down its own pipe (``send`` returns once the event is in it: nothing is left in a buffer)."""
    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the driver stops us
    torch.set_num_threads(threads)
    study = Study.prepare(config_from_dict(config_dict))
    runner = Runner(study, store_weights(store_root))
    while True:
        job = jobs.get()
        if job is None:
            return
        for event in job_events(runner, job, live=events.send):
            events.send(event)


class ProcessExecutor:
    """N worker processes on this machine, each with ``execution.threads`` torch threads."""

    def __init__(self, config: StudyConfig, store_root: Path, workers: int, max_retries: int = 2):
        self.config, self.store_root, self.n = config, str(store_root), workers
        self.max_retries = max_retries
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        self.workers: list[tuple[Any, mp.Queue]] = []
        self.channels: list[multiprocessing.connection.Connection | None] = []  # each worker's events
        self.holding: dict[int, Job | None] = {}
        self.waiting: deque[Job] = deque()
        self.retries: dict[str, int] = {}
        self.reported: dict[str, set[str]] = {}  # job key -> runs it already reported
        for _ in range(workers):
            self._start_worker()

    def _start_worker(self, slot: int | None = None) -> None:
        jobs: mp.Queue = self.ctx.Queue()
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker_main, daemon=True,
                                args=(self.config.to_dict(), self.store_root, self.config.execution.threads,
                                      jobs, send))
        proc.start()
        send.close()  # the worker holds the only writing end: its death is the pipe's end of file
        if slot is None:
            self.workers.append((proc, jobs))
            self.channels.append(receive)
            self.holding[len(self.workers) - 1] = None
        else:
            self.workers[slot] = (proc, jobs)
            self.channels[slot] = receive
            self.holding[slot] = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self.workers]

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
            if self.channels[slot] is not None and proc.is_alive():
                continue
            if self.channels[slot] is not None:
                self.channels[slot].close()
            proc.join(timeout=5)  # a worker whose pipe ended is exiting; one that does not is ended
            if proc.is_alive():
                proc.kill()
                proc.join()
            job = self.holding.get(slot)
            self._start_worker(slot)
            if job is not None:
                tries = self.retries.get(job.key, 0) + 1
                self.retries[job.key] = tries
                done = self.reported.get(job.key, set())
                rest = replace(job, specs=tuple(s for s in job.specs if s.key not in done))
                if not rest.specs:
                    yield JobDone(job.key)
                elif tries > self.max_retries:
                    yield JobDone(job.key, f"worker process died {tries} times (exit code {proc.exitcode})")
                else:
                    self.waiting.appendleft(rest)  # only the runs it had not reported
        self._dispatch()

    def _receive(self) -> Iterator[Event]:
        """The events waiting in the workers' pipes (waiting up to half a second for one). A pipe
        at its end, or holding half a message, belongs to a dead worker: it is closed and marked,
        and :meth:`_check_workers` replaces the worker."""
        open_ = [c for c in self.channels if c is not None]
        for conn in multiprocessing.connection.wait(open_, timeout=0.5):
            slot = self.channels.index(conn)
            try:
                yield conn.recv()
            except (EOFError, OSError):
                conn.close()
                self.channels[slot] = None

    def events(self) -> Iterator[Event]:
        while self.busy:
            received = False
            for event in self._receive():
                received = True
                yield from self._handle(event)
            if not received or None in self.channels:
                yield from self._check_workers()

    def _handle(self, event: Event) -> Iterator[Event]:
        if isinstance(event, Finished):
            self.reported.setdefault(event.job_key, set()).add(event.result.record.key)
        elif isinstance(event, JobDone):
            for slot, job in self.holding.items():
                if job is not None and job.key == event.job_key:
                    self.holding[slot] = None
            self._dispatch()
        yield event

    def close(self, abort: bool = False) -> None:
        """Stop the workers: one still holding a job finishes it, unless ``abort``; an idle one
        (every result it sent has arrived) ends now, without the second or so of an interpreter's
        teardown, which would otherwise delay the report and share its cores."""
        for slot, (proc, jobs) in enumerate(self.workers):
            if proc.is_alive():
                if abort:
                    proc.kill()
                elif self.holding.get(slot) is None:
                    proc.terminate()
                else:
                    jobs.put(None)
        for proc, _ in self.workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for conn in self.channels:
            if conn is not None:
                conn.close()
