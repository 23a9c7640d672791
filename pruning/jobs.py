"""Background job runner: one job at a time per device, later jobs queued with their position.

A job is one ``PruneConfig`` run by ``run_fn(config, on_event, cancel)`` (``pruning.api.run_job`` by
default) on a worker thread -- one worker per device key ("cpu", "cuda:0", ...), so two jobs never share an
accelerator. Every job has its own event log (``Job.wait``): readers keep their own cursor, so two browser tabs
(or a tab and a script) never consume or corrupt each other's events. Cancellation is cooperative: ``cancel``
sets the job's ``threading.Event``; a queued job is dropped at once, a running one stops at the next layer
(the pipeline checks the event between layers and raises ``events.Cancelled``; the loaded model is untouched).

Finished reports are written to the ``ResultStore`` *before* ``JobFinished`` is relayed, so whatever a user
sees is already cached; a config already in the store completes at once without being queued.

This design follows the Gradio guidance for long jobs (progress from a plain thread is dropped; ``cancels=``
does not stop a running function): the worker pushes events, the UI handler is a generator that drains them.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator

from . import events as ev
from .config import PruneConfig
from .errors import INTERNAL, PruningError, error_kind, user_message
from .results import ResultStore

log = logging.getLogger(__name__)

RunFn = Callable[[PruneConfig, Callable[[ev.Event], None], threading.Event], dict]
TERMINAL = (ev.JobFinished, ev.JobFailed, ev.JobCancelled)
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
_MAX_KEPT = 500  # finished jobs kept in memory for status queries


class RunnerClosed(PruningError):
    """``submit`` after ``shutdown``."""


def default_device_key(config: PruneConfig) -> str:
    """The accelerator a config will run on: 'cpu' or 'cuda:N' ('auto' and 'cuda' mean cuda:0 if present)."""
    from .device import device_key  # lazy: the runner itself does not need torch

    return device_key(config.device)


def fingerprint_for_config(config: PruneConfig) -> str:
    """Fingerprint of the model exactly as ``run_job`` loads it (loaded once per process, then cached)."""
    from .api import get_model

    if config.offload != "none":  # never load the whole model for an offloaded run
        from .api import get_offloaded_model
        from .offload import store_of

        model, _, fp = get_offloaded_model(config)
        store_of(model).close()
        return fp
    return get_model(config.model, config.device, config.dtype)[2]


@dataclass
class Job:
    """One queued / running / finished run. ``history`` is the job's event log (append-only)."""

    id: str
    config: PruneConfig
    device: str
    owner: str | None = None
    status: str = QUEUED
    report: dict | None = None
    message: str = ""
    cached: bool = False
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    history: list = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def done(self) -> bool:
        return self.status in (DONE, FAILED, CANCELLED)

    def emit(self, event: ev.Event) -> None:
        with self._cond:
            self.history.append(event)
            self._cond.notify_all()

    def wait(self, cursor: int = 0, timeout: float | None = None) -> tuple[list, int]:
        """Events after ``cursor`` (waiting up to ``timeout`` s for one); returns (events, new cursor)."""
        with self._cond:
            if len(self.history) <= cursor and not self.done:
                self._cond.wait(timeout)
            new = self.history[cursor:]
            return new, cursor + len(new)

    def snapshot(self) -> dict:
        """Plain-data view for tables and APIs."""
        return {
            "id": self.id,
            "label": self.config.label(),
            "key": self.config.key(),
            "device": self.device,
            "status": self.status,
            "message": self.message,
            "cached": self.cached,
            "submitted": self.submitted,
            "started": self.started,
            "finished": self.finished,
        }


class JobRunner:
    """Queue of pruning jobs with one worker thread per device.

    run_fn:          ``(config, on_event, cancel) -> report``; default ``pruning.api.run_job``.
    store:           where finished reports go (and cache hits come from); None: no caching.
    fingerprint_fn:  ``config -> model fingerprint`` used for cache lookups before a run (default: the
                     fingerprint of the model as ``run_job`` loads it); None or a failure: the most recent
                     report for the config is used.
    device_key_fn:   ``config -> device key``; jobs with the same key run one at a time.
    """

    def __init__(
        self,
        run_fn: RunFn | None = None,
        store: ResultStore | None = None,
        fingerprint_fn: Callable[[PruneConfig], str | None] | None | str = "default",
        device_key_fn: Callable[[PruneConfig], str] = default_device_key,
    ):
        if run_fn is None:
            from .api import run_job as run_fn  # noqa: N813
        if fingerprint_fn == "default":
            fingerprint_fn = fingerprint_for_config
        self.run_fn = run_fn
        self.store = store
        self.fingerprint_fn = fingerprint_fn
        self.device_key_fn = device_key_fn
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Job]] = {}
        self._running: dict[str, Job | None] = {}
        self._wake: dict[str, threading.Condition] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._closed = False

    # -- submission ----------------------------------------------------------------------------------
    def cached_report(self, config: PruneConfig) -> dict | None:
        if self.store is None:
            return None
        fp = None
        if self.fingerprint_fn is not None:
            try:
                fp = self.fingerprint_fn(config)
            except Exception as e:  # noqa: BLE001 -- an unloadable model fails later, inside the job, with its message
                log.info("fingerprint of %r unavailable (%s); using the latest stored run", config.model, e)
        return self.store.get(config.key(), fp)

    def submit(self, config: PruneConfig, owner: str | None = None, use_cache: bool = True) -> Job:
        """Queue a run (or complete it at once from the store). Returns the Job."""
        if self._closed:
            raise RunnerClosed("the job runner is shut down (the server is stopping); no new jobs are accepted")
        device = self.device_key_fn(config)
        job = Job(id=f"job-{next(self._ids)}-{uuid.uuid4().hex[:8]}", config=config, device=device, owner=owner)
        hit = self.cached_report(config) if use_cache else None
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
            if hit is not None:
                job.report, job.cached, job.status = dict(hit, cached=True), True, DONE
                job.started = job.finished = time.time()
                job.message = "returned from the result cache"
                job.emit(ev.JobFinished(job.report))
                return job
            self._queues.setdefault(device, collections.deque()).append(job)
            self._ensure_worker(device)
            cond = self._wake[device]
        with cond:
            cond.notify()
        return job

    def submit_many(self, configs: list[PruneConfig], owner: str | None = None) -> list[Job]:
        """A sweep: several independent jobs, queued in order."""
        return [self.submit(c, owner) for c in configs]

    # -- queries ---------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """0 while running, k >= 1 = k-th in line for its device (jobs ahead: k-1 queued + the running one),
        None once finished."""
        with self._lock:
            if job.status == RUNNING:
                return 0
            if job.status != QUEUED:
                return None
            q = self._queues.get(job.device, ())
            try:
                return list(q).index(job) + 1
            except ValueError:
                return 1  # being picked up by the worker right now

    def active(self, owner: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.done and (owner is None or j.owner == owner)]

    def stream(self, job: Job, heartbeat: float = 0.5) -> Iterator[ev.Event | None]:
        """Yield the job's events in order; ``None`` every ``heartbeat`` s without news; stops after the end."""
        cursor = 0
        while True:
            new, cursor = job.wait(cursor, heartbeat)
            if not new:
                if job.done and cursor >= len(job.history):
                    return
                yield None
                continue
            for e in new:
                yield e
                if isinstance(e, TERMINAL):
                    return

    # -- cancellation --------------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "cancelled by the user") -> bool:
        """Cancel a queued job (dropped now) or a running one (stops at the next layer). False if not active."""
        job = self._jobs.get(job_id)
        if job is None or job.done:
            return False
        with self._lock:
            job.cancel_event.set()
            q = self._queues.get(job.device)
            if job.status == QUEUED and q is not None and job in q:
                q.remove(job)
                job.status, job.message, job.finished = CANCELLED, reason + " (before it started)", time.time()
                job.emit(ev.JobCancelled(job.message))
        return True

    def cancel_owner(self, owner: str, reason: str = "cancelled by the user") -> list[str]:
        """Cancel every active job of one owner (a browser session); returns their ids."""
        ids = [j.id for j in self.active(owner)]
        return [i for i in ids if self.cancel(i, reason)]

    def shutdown(self, cancel_running: bool = True, timeout: float = 10.0) -> None:
        self._closed = True
        for j in self.active():
            if cancel_running or j.status == QUEUED:
                self.cancel(j.id, "the server is shutting down")
        for dev, cond in list(self._wake.items()):
            with cond:
                cond.notify_all()
        for t in list(self._workers.values()):
            t.join(timeout)

    # -- worker ------------------------------------------------------------------------------------------
    def _ensure_worker(self, device: str) -> None:  # called with self._lock held
        if device in self._workers and self._workers[device].is_alive():
            return
        self._wake[device] = self._wake.get(device) or threading.Condition()
        self._running.setdefault(device, None)
        t = threading.Thread(target=self._work, args=(device,), name=f"prune-worker-{device}", daemon=True)
        self._workers[device] = t
        t.start()

    def _next(self, device: str) -> Job | None:
        cond = self._wake[device]
        while not self._closed:
            with self._lock:
                q = self._queues.get(device)
                if q:
                    job = q.popleft()
                    job.status, job.started = RUNNING, time.time()
                    self._running[device] = job
                    return job
            with cond:
                cond.wait(1.0)
        return None

    def _work(self, device: str) -> None:
        while True:
            job = self._next(device)
            if job is None:
                return
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running[device] = None

    def _run(self, job: Job) -> None:
        seen = {"finished": False, "reason": ""}

        def on_event(e: ev.Event) -> None:
            if isinstance(e, ev.JobFinished):
                # store before showing: the report is cached by the time anyone sees it
                self._finish(job, e.report)
                seen["finished"] = True
                return
            if isinstance(e, ev.JobCancelled):
                seen["reason"] = e.reason
                return  # relayed below with the final status, exactly once
            if isinstance(e, ev.JobFailed):
                seen["reason"] = e.message
                return
            job.emit(e)

        try:
            report = self.run_fn(job.config, on_event, job.cancel_event)
        except ev.Cancelled as e:
            job.status, job.finished = CANCELLED, time.time()
            job.message = seen["reason"] or str(e) or "cancelled by the user"
            job.emit(ev.JobCancelled(job.message))
            return
        except Exception as e:  # noqa: BLE001 -- reported to the user through JobFailed, never re-raised in a daemon thread
            job.status, job.finished = FAILED, time.time()
            kind = error_kind(e)
            job.message = seen["reason"] or user_message(e)
            if kind == INTERNAL:
                log.exception("job %s failed", job.id)
            else:  # bad input or a numerical failure: the message says it all
                log.info("job %s failed (%s): %s", job.id, kind, job.message)
            job.emit(ev.JobFailed(job.message, kind=kind))
            return
        if not seen["finished"]:
            self._finish(job, report)

    def _finish(self, job: Job, report: dict) -> None:
        if job.done:
            return
        if self.store is not None:
            try:
                self.store.put(report)
            except (TypeError, KeyError, OSError) as e:
                job.emit(ev.WarningEvent(f"result not cached: {e}"))
        job.report = dict(report, cached=False)
        job.status, job.finished = DONE, time.time()
        job.emit(ev.JobFinished(job.report))

    def _forget_old(self) -> None:  # called with self._lock held
        done = [j for j in self._jobs.values() if j.done]
        for j in sorted(done, key=lambda j: j.finished or 0)[: max(0, len(done) - _MAX_KEPT)]:
            self._jobs.pop(j.id, None)
