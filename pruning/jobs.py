"""Background job runner: one job at a time per device, later jobs queued with their position.

A job is one ``PruneConfig`` run by ``run_fn(config, on_event, cancel)`` (``pruning.api.run_job`` by default),
queued per device key ("cpu", "cuda:0", ...), so two jobs never share an accelerator. Every job has its own event
log (``Job.wait``): readers keep their own cursor, so two browser tabs (or a tab and a script) never consume or
corrupt each other's events. Cancellation is cooperative: ``cancel`` sets the job's ``threading.Event``; a queued job
is dropped at once, a running one stops at the next layer (the pipeline checks the event between layers and raises
``events.Cancelled``; the loaded model is untouched).

Two modes (``JobRunner(in_process=...)``):

* ``in_process=True`` (the default, for library use and tests): ``run_fn`` runs on the device's thread of this
  process, as any callable.
* ``in_process=False`` (the app's default): each device has a worker *process* (``pruning.worker.WorkerProcess``,
  spawn context) that loads the models and runs the jobs; the device thread relays its events and the cancel. A
  crash of the worker (segfault, out-of-memory kill, ``os._exit``, SIGKILL) fails that job with a message saying how
  the worker died and where the job was; the worker is restarted and the next job runs. A job that has not stopped
  ``cancel_grace_s`` after its cancel (env ``PRUNING_LAB_CANCEL_GRACE_S``, default 30 s) is terminated (the worker
  killed and restarted) and reported as cancelled. ``run_fn`` must then be a module-level function (the worker
  imports it). This process never loads a model: the fingerprint for the cache look-up comes from the worker
  (a ``model_info`` task queued like a job, remembered per model), and ``model_info`` / the lab's runs are tasks
  of the same queue (``submit_task``, ``call``, ``model_info``), so all heavy work obeys the one-per-device rule.

Finished reports are written to the ``ResultStore`` by this process (the only writer), *before* ``JobFinished`` is
relayed, so whatever a user sees is already cached; a config already in the store completes at once without being
queued (in process mode: once the model's fingerprint is known here; before that, right after the worker reports it).

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
_FROM_CACHE = object()  # _execute's value when the job was completed from the store


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
    """One queued / running / finished run. ``history`` is the job's event log (append-only).

    ``task`` is "prune" for a pruning job (``config``); other tasks ("model_info", "lab") carry ``payload`` instead and
    leave their value in ``report``. ``error`` is the exception a failed job ended with."""

    id: str
    config: PruneConfig | None
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
    task: str = "prune"
    payload: dict | None = None
    use_cache: bool = True
    error: BaseException | None = field(default=None, repr=False)
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
            "label": self.config.label() if self.config is not None else self.task,
            "key": self.config.key() if self.config is not None else None,
            "task": self.task,
            "device": self.device,
            "status": self.status,
            "message": self.message,
            "cached": self.cached,
            "submitted": self.submitted,
            "started": self.started,
            "finished": self.finished,
        }


class JobRunner:
    """Queue of pruning jobs (and other heavy tasks) with one worker thread -- and, unless ``in_process``, one worker
    process -- per device.

    run_fn:          ``(config, on_event, cancel) -> report``; default ``pruning.api.run_job``. Out of process it must
                     be a module-level function (the worker imports it by name).
    store:           where finished reports go (and cache hits come from); None: no caching.
    fingerprint_fn:  ``config -> model fingerprint`` used for cache lookups before a run (default: in process, the
                     fingerprint of the model as ``run_job`` loads it; out of process, the one the worker reported
                     for that model, never loading anything here); None or a failure: the most recent report for
                     the config is used.
    device_key_fn:   ``config -> device key``; jobs with the same key run one at a time.
    in_process:      True: run on a thread of this process; False: in a worker process per device (see the module).
    worker_env:      extra environment variables of the worker processes (tests use it for fault injection).
    cancel_grace_s:  out of process: seconds a cancelled job may run on before its worker is killed (default:
                     ``PRUNING_LAB_CANCEL_GRACE_S`` or 30).
    """

    def __init__(
        self,
        run_fn: RunFn | None = None,
        store: ResultStore | None = None,
        fingerprint_fn: Callable[[PruneConfig], str | None] | None | str = "default",
        device_key_fn: Callable[[PruneConfig], str] = default_device_key,
        in_process: bool = True,
        worker_env: dict | None = None,
        cancel_grace_s: float | None = None,
    ):
        self.in_process = bool(in_process)
        self._fn_path = None
        if not self.in_process:
            from .worker import cancel_grace_s as grace_from_env, fn_path

            self._fn_path = fn_path(run_fn) if run_fn is not None else "pruning.api:run_job"
            self.cancel_grace_s = grace_from_env() if cancel_grace_s is None else float(cancel_grace_s)
        else:
            self.cancel_grace_s = cancel_grace_s
        if run_fn is None and self.in_process:
            from .api import run_job as run_fn  # noqa: N813
        if fingerprint_fn == "default":
            fingerprint_fn = fingerprint_for_config if self.in_process else self._known_fingerprint
        self.run_fn = run_fn
        self.store = store
        self.fingerprint_fn = fingerprint_fn
        self.device_key_fn = device_key_fn
        self.worker_env = dict(worker_env or {})
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Job]] = {}
        self._running: dict[str, Job | None] = {}
        self._wake: dict[str, threading.Condition] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._procs: dict = {}  # device -> pruning.worker.WorkerProcess (out of process only)
        self._infos: dict[tuple, dict] = {}  # (model, device, dtype) -> model_info reported by a task
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
        if fp is None and self.fingerprint_fn == self._known_fingerprint:
            return None  # not known here yet: the worker reports it when the job starts, then the store is asked
        return self.store.get(config.key(), fp)

    def submit(self, config: PruneConfig, owner: str | None = None, use_cache: bool = True) -> Job:
        """Queue a run (or complete it at once from the store). Returns the Job."""
        if self._closed:
            raise RunnerClosed("the job runner is shut down (the server is stopping); no new jobs are accepted")
        device = self.device_key_fn(config)
        job = Job(id=f"job-{next(self._ids)}-{uuid.uuid4().hex[:8]}", config=config, device=device, owner=owner,
                  use_cache=use_cache)
        hit = self.cached_report(config) if use_cache else None
        if hit is not None:
            with self._lock:
                self._jobs[job.id] = job
                self._forget_old()
            self._complete_from_cache(job, hit)
            return job
        return self._enqueue(job)

    def submit_task(self, task: str, payload: dict, device: str | None = None, owner: str | None = None) -> Job:
        """Queue a heavy task other than a pruning job ("model_info", "lab"; see ``pruning.worker.TASKS``) on the
        device's queue, like a job (same order, positions, cancel). Its value ends in ``job.report``."""
        from .worker import TASKS

        if self._closed:
            raise RunnerClosed("the job runner is shut down (the server is stopping); no new jobs are accepted")
        if task not in TASKS or task == "prune":
            raise ValueError(f"task: unknown task {task!r}; allowed: {', '.join(t for t in TASKS if t != 'prune')}")
        if device is None:
            from .device import device_key

            device = device_key(payload.get("device", "auto"))
        job = Job(id=f"{task}-{next(self._ids)}-{uuid.uuid4().hex[:8]}", config=None, device=device, owner=owner,
                  task=task, payload=dict(payload))
        return self._enqueue(job)

    def call(self, task: str, payload: dict, device: str | None = None, owner: str | None = None,
             on_event: Callable[[ev.Event], None] | None = None, timeout: float | None = None):
        """``submit_task`` and wait: the task's value, or its error raised (``events.Cancelled`` if cancelled).
        ``timeout``: seconds to wait before the task is cancelled and TimeoutError raised (None: no limit)."""
        job = self.submit_task(task, payload, device, owner)
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor = 0
        while not job.done:
            new, cursor = job.wait(cursor, 0.2)
            for e in new:
                if on_event is not None and not isinstance(e, TERMINAL):
                    on_event(e)
            if deadline is not None and time.monotonic() > deadline and not job.done:
                self.cancel(job.id, f"no answer within {timeout:g} s")
                raise TimeoutError(f"{task}: no answer within {timeout:g} s (the device is busy with other jobs)")
        if job.status == DONE:
            return job.report
        if job.status == CANCELLED:
            raise ev.Cancelled(job.message)
        if job.error is not None and getattr(job.error, "kind", None) == "input" and not isinstance(job.error, ValueError):
            from .errors import InputError

            raise InputError(job.message)  # a worker's input error: a ValueError here too, as in process
        raise job.error if job.error is not None else RuntimeError(job.message)

    def model_info(self, model: str, device: str = "auto", dtype: str = "auto", timeout: float | None = None) -> dict:
        """Blocks, linears, fingerprint (and the cost model's shape facts) of a model, as the worker loads it: from
        memory if a task reported it already, else a "model_info" task queued on the device (never loaded here)."""
        key = (model, str(device), str(dtype))
        hit = self._infos.get(key)
        if hit is not None:
            return hit
        info = self.call("model_info", {"model": model, "device": device, "dtype": dtype}, timeout=timeout)
        self._infos[key] = info
        return info

    def known_info(self, model: str, device: str | None = None, dtype: str | None = None) -> dict | None:
        """model_info a task already reported for ``model`` (any device / dtype unless given), else None (never waits)."""
        for (m, d, t), info in list(self._infos.items()):
            if m == model and device in (None, d) and dtype in (None, t):
                return info
        return None

    def _known_fingerprint(self, config: PruneConfig) -> str | None:
        info = self._infos.get((config.model, str(config.device), str(config.dtype)))
        return info["fingerprint"] if info else None

    def worker_pid(self, device: str = "cpu") -> int | None:
        """The pid of the device's worker process (None in process or before its first task)."""
        proc = self._procs.get(device)
        return proc.pid if proc is not None else None

    def worker_restarts(self, device: str = "cpu") -> int:
        proc = self._procs.get(device)
        return proc.restarts if proc is not None else 0

    def _enqueue(self, job: Job) -> Job:
        device = job.device
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
            self._queues.setdefault(device, collections.deque()).append(job)
            self._ensure_worker(device)
            cond = self._wake[device]
        with cond:
            cond.notify()
        return job

    def _complete_from_cache(self, job: Job, hit: dict) -> None:
        job.report, job.cached, job.status = dict(hit, cached=True), True, DONE
        job.started = job.started or time.time()
        job.finished = time.time()
        job.message = "returned from the result cache"
        job.emit(ev.JobFinished(job.report))

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
        for proc in list(self._procs.values()):
            proc.stop(timeout=min(timeout, 5.0))

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

    def _proc(self, device: str):
        from .worker import WorkerProcess

        proc = self._procs.get(device)
        if proc is None:
            proc = self._procs[device] = WorkerProcess(device, env=self.worker_env, grace_s=self.cancel_grace_s)
        return proc

    def _execute(self, job: Job, on_event: Callable[[ev.Event], None]):
        """Run the job (or task) here or in the device's worker process; returns its value, or ``_FROM_CACHE``."""
        from .worker import TASKS

        if job.task != "prune":
            if self.in_process:
                return TASKS[job.task](job.payload, on_event, job.cancel_event)
            return self._proc(job.device).run(job.task, job.payload, on_event, job.cancel_event)
        if self.in_process:
            return self.run_fn(job.config, on_event, job.cancel_event)
        cfg = job.config
        key = (cfg.model, str(cfg.device), str(cfg.dtype))
        proc = self._proc(job.device)
        if key not in self._infos:  # the fingerprint, for the cache look-up: the worker loads the model (it needs it anyway)
            self._infos[key] = proc.run("model_info", {"model": cfg.model, "device": cfg.device, "dtype": cfg.dtype},
                                        None, job.cancel_event)
            if job.use_cache and self.store is not None:
                hit = self.store.get(cfg.key(), self._infos[key]["fingerprint"])
                if hit is not None:
                    self._complete_from_cache(job, hit)
                    return _FROM_CACHE
        if job.cancel_event.is_set():
            raise ev.Cancelled("cancelled by the user")
        report = proc.run("prune", {"fn": self._fn_path, "config": cfg}, on_event, job.cancel_event)
        self._learn(cfg, report, self._infos.get(key))
        return report

    @staticmethod
    def _learn(config: PruneConfig, report: dict, info: dict | None) -> None:
        """Out of process: the estimates of this process learn from the worker's run too (pruning.cost_model)."""
        if not info or "shape" not in info:
            return
        try:
            import torch

            from . import cost_model

            cost_model.observe(config, report.get("timings", {}), info["shape"], info.get("device", "cpu"),
                               getattr(torch, info.get("dtype", "float32")))
        except Exception as e:  # noqa: BLE001 -- an estimate's correction never fails a job
            log.info("cost model not updated: %s", e)

    def _run(self, job: Job) -> None:
        from .worker import WorkerDied, WorkerTaskError

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
            report = self._execute(job, on_event)
        except ev.Cancelled as e:
            job.status, job.finished = CANCELLED, time.time()
            job.message = seen["reason"] or str(e) or "cancelled by the user"
            job.error = e
            job.emit(ev.JobCancelled(job.message))
            return
        except Exception as e:  # noqa: BLE001 -- reported to the user through JobFailed, never re-raised in a daemon thread
            job.status, job.finished, job.error = FAILED, time.time(), e
            kind = error_kind(e)
            if isinstance(e, (WorkerTaskError, WorkerDied)):  # the message was made for the user already
                job.message = seen["reason"] or e.message
            else:
                job.message = seen["reason"] or user_message(e)
            if isinstance(e, WorkerDied):
                log.warning("job %s: %s", job.id, job.message)
            elif kind == INTERNAL:
                log.exception("job %s failed", job.id) if not isinstance(e, WorkerTaskError) else log.error(
                    "job %s failed: %s", job.id, job.message)
            else:  # bad input or a numerical failure: the message says it all
                log.info("job %s failed (%s): %s", job.id, kind, job.message)
            job.emit(ev.JobFailed(job.message, kind=kind))
            return
        if report is _FROM_CACHE:
            return
        if job.task != "prune":
            job.report, job.status, job.finished = report, DONE, time.time()
            job.emit(ev.JobFinished({"task": job.task}))
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
