"""The worker process: heavy work (a pruning job, a model load, a lab run) runs in a child process per device, so a
crash, a segfault or an out-of-memory kill of that work fails one task and never the process that serves the page.

``WorkerProcess(device)`` owns one child started with the spawn context of ``torch.multiprocessing`` (a fresh
interpreter: no state, lock or CUDA context inherited from the web server). The child loads models itself and
keeps them (``pruning.engine.DEFAULT`` lives in the child), runs one task at a time and sends back plain data:

    parent -> child   ("run", seq, task, payload) | ("cancel", seq) | ("stop",)
    child -> parent   ("event", seq, Event) | ("result", seq, value) | ("error", seq, kind, message)
                      | ("cancelled", seq, reason)

Tasks (``TASKS``): ``prune`` (``payload``: ``{"fn": "module:function", "config": PruneConfig}``; default
``pruning.api:run_job``), ``model_info`` (``pruning.api.model_info`` plus the cost model's shape facts), ``lab``
(``pruning.lab.run_lab``), ``prepare_windows`` (the default text tokenised at server start) and ``export`` (a finished
run's pruned model rebuilt and written for download: ``pruning.export.export_report``). The child never writes the result store: the parent does, from the returned report.

``WorkerProcess.run`` blocks until the task ends and relays its events to ``on_event`` as they arrive; it returns
the task's value or raises ``WorkerTaskError`` (the task's own error, with its kind and message), ``events.Cancelled``
or ``WorkerDied`` (the child died: the message says how -- exit code or signal -- and where the task was). Cancel is
relayed as a message; the child sets that task's ``threading.Event``, which the pipeline checks between layers. A
task that has not stopped ``grace_s`` seconds after the cancel is terminated: the child is killed, a new one is
started, and the task reports cancelled. After any death a new child is started at once.

Test hook (only tests set it): the environment variable ``PRUNING_LAB_TEST_FAULT`` in the child, a JSON object
(or a list of them) ``{"action": "exit" | "kill" | "segv" | "hang", "block": k, "armed": path, "once": path}``: when a
task reaches block ``k`` (its ``BlockStarted`` event) the child exits with ``os._exit(3)``, SIGKILLs itself, segfaults,
or sleeps forever ignoring cancel. With ``armed`` it fires only while that file exists (and deletes it: a test arms
one fault for one job); with ``once`` only if that marker file does not exist yet (and creates it), so the restarted
child runs the next task normally.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

from . import events as ev
from .errors import INTERNAL, PruningError, error_kind, user_message

log = logging.getLogger(__name__)

TERMINAL = (ev.JobFinished, ev.JobFailed, ev.JobCancelled)
START_TIMEOUT_S = 600.0  # the longest a child may take to import torch and answer (a loaded 2-core machine)


class WorkerTaskError(PruningError):
    """A task failed inside the worker: ``message`` is what the user sees (``errors.user_message`` of the original
    error, computed in the child), ``kind`` its ``errors`` kind."""

    def __init__(self, message: str, kind: str = INTERNAL):
        super().__init__(message)
        self.message, self.kind = message, kind


class WorkerDied(PruningError):
    """The worker process died while running a task (crash, kill, out of memory); it has been restarted."""

    kind = INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def fn_path(fn: Callable) -> str:
    """'module:qualname' of a module-level function (what the child imports); ValueError for anything else."""
    mod, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not mod or not name or "<" in name or "." in name:
        raise ValueError(f"run_fn: {fn!r} is not a module-level function; a worker process can only run a function it "
                         "can import (or use JobRunner(in_process=True))")
    return f"{mod}:{name}"


def _import(path: str) -> Callable:
    mod, name = path.split(":", 1)
    return getattr(importlib.import_module(mod), name)


def describe_exit(code: int | None) -> str:
    """'signal 9, SIGKILL' / 'exit code 3' for a process exit code."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def where_from(e: ev.Event, where: str) -> str:
    """What a task was doing, from its latest event (for the message when the worker dies)."""
    if isinstance(e, ev.BlockStarted):
        return f"pruning block {e.block} of {e.n_blocks}"
    if isinstance(e, ev.LayerSolved):
        return f"pruning block {e.block} (after {e.name})"
    if isinstance(e, ev.PhaseStarted):
        names = {"load": "loading the model", "dense-eval": "evaluating the dense model", "calibrate": "calibrating",
                 "prune": "pruning", "pruned-eval": "evaluating the pruned model", "generate": "generating text",
                 "drift": "measuring the KL drift", "zero-shot": "running the zero-shot tasks"}
        return names.get(e.phase, e.detail or e.phase)
    return where


# -- the child ------------------------------------------------------------------------------------------------------
def _fault_hook() -> Callable[[ev.Event], None]:
    from .settings import fault_spec

    spec = fault_spec()
    if not spec:
        return lambda e: None
    faults = json.loads(spec)
    faults = faults if isinstance(faults, list) else [faults]

    def fires(fault: dict) -> bool:
        armed, once = fault.get("armed"), fault.get("once")
        if armed:  # fires only while the file exists, and consumes it
            try:
                os.unlink(armed)
            except FileNotFoundError:
                return False
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return False
        return True

    def hook(e: ev.Event) -> None:
        if not isinstance(e, ev.BlockStarted):
            return
        for fault in faults:
            if e.block != int(fault.get("block", 0)) or not fires(fault):
                continue
            action = fault.get("action", "exit")
            if action == "exit":
                os._exit(3)
            elif action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == "segv":
                import ctypes

                ctypes.string_at(0)  # a real segmentation fault
            elif action == "hang":
                while True:  # stuck: ignores cancel, only a kill ends it
                    time.sleep(3600)

    return hook


def _task_model_info(payload: dict, emit, cancel) -> dict:
    from . import cost_model
    from .api import get_model, model_info

    info = model_info(payload["model"], payload.get("device", "auto"), payload.get("dtype", "auto"))
    model = get_model(payload["model"], payload.get("device", "auto"), payload.get("dtype", "auto"))[0]
    p = next(model.parameters())
    info = dict(info, shape=cost_model.model_shape(model), device=str(p.device), dtype=str(p.dtype).replace("torch.", ""))
    return info


def _task_prune(payload: dict, emit, cancel) -> dict:
    fn = _import(payload.get("fn") or "pruning.api:run_job")
    report = fn(payload["config"], emit, cancel)
    return {k: v for k, v in report.items() if not k.startswith("_")}


def _task_lab(payload: dict, emit, cancel) -> dict:
    from .lab import run_lab

    return run_lab(**payload, on_status=lambda s: emit(ev.PhaseStarted("lab", s)), cancel=cancel)


def _task_prepare_windows(payload: dict, emit, cancel) -> None:
    from .api import prepare_windows

    prepare_windows(payload["config"])


def _task_export(payload: dict, emit, cancel) -> str:
    from .export import export_report

    return str(export_report(payload["report"], payload["out_dir"], bool(payload.get("overwrite")), emit, cancel))


TASKS: dict[str, Callable[[dict, Callable, threading.Event], Any]] = {
    "prune": _task_prune, "model_info": _task_model_info, "lab": _task_lab, "prepare_windows": _task_prepare_windows,
    "export": _task_export,
}


def child_main(cmd_r, evt_w, env: dict) -> None:
    """Entry point of the worker process: a listener thread takes commands, the main thread runs tasks in order."""
    os.environ.update(env or {})
    import queue

    tasks: "queue.Queue[tuple | None]" = queue.Queue()
    cancels: dict[int, threading.Event] = {}
    send_lock = threading.Lock()

    def send(msg) -> None:
        with send_lock:
            evt_w.send(msg)

    def listen() -> None:
        while True:
            try:
                msg = cmd_r.recv()
            except (EOFError, OSError):  # the parent is gone: nothing left to serve
                os._exit(0)
            if msg[0] == "run":
                cancels[msg[1]] = threading.Event()
                tasks.put(msg)
            elif msg[0] == "cancel":
                c = cancels.get(msg[1])
                if c is not None:
                    c.set()
            elif msg[0] == "stop":
                tasks.put(None)
                return

    threading.Thread(target=listen, name="worker-commands", daemon=True).start()
    fault = _fault_hook()
    send(("ready", 0, os.getpid()))
    while True:
        item = tasks.get()
        if item is None:
            break
        _, seq, task, payload = item
        cancel = cancels[seq]

        def emit(e, seq=seq):
            if not isinstance(e, TERMINAL):  # the end is the result / error message below
                send(("event", seq, e))
            fault(e)

        try:
            value = TASKS[task](payload, emit, cancel)
        except ev.Cancelled as e:
            send(("cancelled", seq, str(e) or "cancelled by the user"))
        except BaseException as e:  # noqa: BLE001 -- every failure goes back to the parent as a message
            if error_kind(e) == INTERNAL:
                log.exception("worker task %s failed", task)
            send(("error", seq, error_kind(e), user_message(e)))
        else:
            send(("result", seq, value))
        finally:
            cancels.pop(seq, None)
    evt_w.close()


# -- the parent -----------------------------------------------------------------------------------------------------
def cancel_grace_s() -> float:
    """Seconds a task may run on after its cancel before it is terminated (PRUNING_LAB_CANCEL_GRACE_S, default 30)."""
    from .settings import cancel_grace_s as from_env

    return from_env()


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_main_module():
    """Start children that do not re-import the parent's ``__main__`` (spawn would: ``app.py`` builds the whole UI at
    import, a script without a ``__main__`` guard would start another worker). The child needs only ``pruning``."""
    import multiprocessing.spawn as spawn

    original = spawn.get_preparation_data

    def preparation_data(name):
        d = original(name)
        d.pop("init_main_from_name", None)
        d.pop("init_main_from_path", None)
        return d

    with _START_LOCK:
        spawn.get_preparation_data = preparation_data
        try:
            yield
        finally:
            spawn.get_preparation_data = original


class WorkerProcess:
    """One worker child for one device; ``run`` one task at a time (the JobRunner's device thread calls it)."""

    def __init__(self, device: str = "cpu", env: dict | None = None, grace_s: float | None = None):
        self.device = device
        self.env = dict(env or {})
        self.grace_s = cancel_grace_s() if grace_s is None else float(grace_s)
        self.proc = None
        self.restarts = 0
        self._seq = 0
        self._lock = threading.Lock()
        self._cmd = self._evt = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> None:
        """Start the child (returns at once; the child imports the engine on its own)."""
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        cmd_r, cmd_w = ctx.Pipe(duplex=False)
        evt_r, evt_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=child_main, args=(cmd_r, evt_w, dict(self.env)), daemon=True,
                           name=f"pruning-lab-worker-{self.device}")
        with _without_main_module():
            proc.start()
        cmd_r.close()
        evt_w.close()
        self.proc, self._cmd, self._evt = proc, cmd_w, evt_r
        self._ready = False

    def ensure(self) -> None:
        if not self.alive():
            if self.proc is not None:
                self._reap()
                self.restarts += 1
            self.start()

    def _reap(self) -> None:
        for c in (self._cmd, self._evt):
            try:
                c.close()
            except OSError:
                pass
        if self.proc is not None:
            self.proc.join(5)

    def kill(self) -> None:
        """Kill the child now (SIGKILL) and wait for it."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to exit after its current task; kill it after ``timeout`` s."""
        if self.proc is None:
            return
        try:
            self._cmd.send(("stop",))
        except (OSError, ValueError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._reap()

    def run(self, task: str, payload: dict, on_event: Callable[[ev.Event], None] | None = None,
            cancel: threading.Event | None = None) -> Any:
        """Run one task in the child; relays its events; returns its value (see the module doc for what it raises)."""
        from multiprocessing.connection import wait

        emit = on_event or (lambda e: None)
        cancel = cancel or threading.Event()
        with self._lock:
            self.ensure()
            self._seq += 1
            seq = self._seq
            where = "starting the worker" if not self._ready else "starting"
            try:
                self._cmd.send(("run", seq, task, payload))
            except (OSError, ValueError) as e:  # died between ensure and send
                self.kill()
                self.ensure()
                raise WorkerDied(f"the worker process could not take the task ({e}); it was restarted, run it again") from None
            cancelled_at = None
            started = time.monotonic()
            while True:
                if cancel.is_set() and cancelled_at is None:
                    cancelled_at = time.monotonic()
                    try:
                        self._cmd.send(("cancel", seq))
                    except (OSError, ValueError):
                        pass
                ready = wait([self._evt, self.proc.sentinel], timeout=0.1)
                if self._evt in ready:
                    try:
                        msg = self._evt.recv()
                    except Exception:  # noqa: BLE001 -- EOF or a torn message: the child died (writing it)
                        msg = None
                    if msg is not None:
                        kind, mseq = msg[0], msg[1]
                        if kind == "ready":
                            self._ready = True
                            if where == "starting the worker":
                                where = "starting"
                            continue
                        if mseq != seq:
                            continue  # a late message of an earlier (terminated) task
                        if kind == "event":
                            where = where_from(msg[2], where)
                            emit(msg[2])
                            continue
                        if kind == "result":
                            return msg[2]
                        if kind == "cancelled":
                            raise ev.Cancelled(msg[2])
                        if kind == "error":
                            raise WorkerTaskError(msg[3], msg[2])
                        continue
                    self._died(where)
                elif self.proc.sentinel in ready or not self.proc.is_alive():
                    self._died(where)
                if cancelled_at is not None and time.monotonic() - cancelled_at > self.grace_s:
                    self.kill()
                    self.ensure()
                    raise ev.Cancelled(f"cancelled by the user; the job did not stop within {self.grace_s:g} s, so its "
                                       "worker process was stopped and restarted")
                if not self._ready and time.monotonic() - started > START_TIMEOUT_S:
                    self.kill()
                    self.ensure()
                    raise WorkerDied(f"the worker process did not start within {START_TIMEOUT_S:g} s; it was restarted")

    def _died(self, where: str) -> None:
        self.proc.join(5)
        code = self.proc.exitcode
        log.warning("worker process %s (%s) died: %s while %s", self.pid, self.device, describe_exit(code), where)
        self._reap()
        self.restarts += 1
        self.start()  # the next task finds a fresh child (already importing)
        raise WorkerDied(f"the worker process died ({describe_exit(code)}) while {where}; nothing of this job was kept, "
                         "and the worker was restarted: run it again (if the machine ran out of memory, with fewer "
                         "calibration windows or a shorter sequence length)")
