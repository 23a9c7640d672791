"""Where a sweep's runs execute: one interface, ``Executor.run(configs, on_report)``, two engines.

* ``LocalExecutor`` -- this process, through ``pruning.jobs.JobRunner``: one worker per device key ("cpu",
  "cuda:0", ...), so two runs never share an accelerator; configs on the same device run one after the other.
  The app's sweep launcher uses it too (``submit``: the runner's jobs, streamed by the Compare tab).
* ``RayExecutor`` -- Ray core tasks (optional extra: ``pip install -r requirements-scale.txt``). Each task calls
  ``api.run_job`` in a Ray worker process and returns the plain report, or a failure record. ``address``
  ``'auto'`` or ``'HOST:PORT'`` joins an existing cluster (checked before any work); none starts a local instance
  (``ray.init(num_cpus=...)``). A task asks for one GPU when the cluster has GPUs and the config may use one,
  otherwise for ``cpus_per_task`` CPUs. Tasks are never retried: a task that dies is one failed record.

Whatever the executor, each outcome is plain data: the report ``run_job`` returns (see README "JSON report"),
or a *failure record* ``{"config", "key", "message", "kind", "status"}`` (``status`` 'failed' or 'cancelled',
``kind`` input | numerical | internal | cancelled). Workers never write the result store and never read the
driver's disk: they get the config and load the model themselves (the embedded model from the installed
package). ``run_sweep`` is the driver: it skips configs already stored (``resume``), runs the rest on an
executor and writes each finished report into the one ``ResultStore`` as it arrives, so the Compare tab shows
Ray runs next to local ones. ``sweep_table`` / ``write_sweep_outputs`` turn the outcomes into the sweep table
(CSV, JSON, and the trade-off plot as a standalone HTML page).
"""
from __future__ import annotations

import csv
import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from . import events as ev
from .config import PruneConfig, method_label
from .errors import INTERNAL, InputError, error_kind, user_message

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install -r requirements-scale.txt"
DONE, STORED, FAILED, CANCELLED = "done", "stored", "failed", "cancelled"
CANCEL_GRACE_S = 30.0  # after a cancel, how long the driver waits for running tasks to stop before giving up on them

OnReport = Callable[[int, dict], None]
OnProgress = Callable[[dict], None]


class ExecutorError(InputError):
    """An executor that cannot start (Ray missing, a cluster address that does not answer); names the flag."""


# -- outcomes ----------------------------------------------------------------------------------------------------
def failure_record(config: PruneConfig, message: str, kind: str = INTERNAL, status: str = FAILED) -> dict:
    """A run that produced no report: its config, the message to show and the error kind (plain data)."""
    return {"config": config.to_dict(), "key": config.key(), "message": str(message), "kind": kind, "status": status}


def is_failure(outcome: dict) -> bool:
    """True for a failure record, False for a report."""
    return outcome.get("status") in (FAILED, CANCELLED) and "perplexity" not in outcome


def _plain(report: dict) -> dict:
    """The JSON-able part of a report (``run_job(keep_model=True)`` extras and the runner's ``cached`` flag dropped)."""
    return json.loads(json.dumps({k: v for k, v in report.items() if not k.startswith("_") and k != "cached"},
                                 allow_nan=True))


def execute(config: PruneConfig) -> dict:
    """Run one config in this process: the plain report, or a failure record (never raises for a failed run)."""
    from .api import run_job

    try:
        return _plain(run_job(config))
    except ev.Cancelled as e:
        return failure_record(config, str(e) or "cancelled", "cancelled", CANCELLED)
    except Exception as e:  # noqa: BLE001 -- one failed run is one failed row, never a dead sweep
        return failure_record(config, user_message(e), error_kind(e))


# -- the interface -----------------------------------------------------------------------------------------------
class Executor:
    """Runs configs somewhere and hands back one plain outcome per config (report or failure record).

    Subclasses implement ``_launch``, ``_poll``, ``_counts`` and ``_cancel``; ``start`` checks that the executor can
    work (raising ``ExecutorError`` naming the flag) before anything runs.
    """

    name = ""

    def start(self) -> None:
        """Connect / validate; idempotent. Raises ExecutorError before any work if this executor cannot run."""

    def check(self, configs: Sequence[PruneConfig]) -> None:
        """Raise ExecutorError (naming the field) for a config this executor cannot run; called before any work."""

    def fingerprint(self, config: PruneConfig) -> str | None:
        """The model fingerprint a stored result must carry for ``resume``; None = the latest stored for the config."""
        return None

    def close(self) -> None:
        """Release what ``start`` acquired."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, configs: Sequence[PruneConfig], on_report: OnReport | None = None,
            on_progress: OnProgress | None = None, cancel: threading.Event | None = None,
            poll_s: float = 0.5) -> list[dict]:
        """Run every config; returns the outcomes in config order. ``on_report(index, outcome)`` is called on this
        thread as each finishes, ``on_progress(counts)`` with {'done', 'failed', 'running', 'queued'} on every poll.
        Setting ``cancel`` (or Ctrl-C) cancels what has not finished: those become 'cancelled' records; a Ctrl-C is
        re-raised after that, as ``KeyboardInterrupt``."""
        self.start()
        configs = list(configs)
        out: list[dict | None] = [None] * len(configs)
        counts = {"done": 0, "failed": 0, "running": 0, "queued": len(configs)}

        def take(i: int, rec: dict) -> None:
            if out[i] is not None:
                return
            out[i] = rec
            counts["failed" if is_failure(rec) else "done"] += 1
            if on_report is not None:
                on_report(i, rec)

        if not configs:
            return []
        self._launch(configs)
        interrupted = False
        try:
            while any(o is None for o in out):
                for i, rec in self._poll(poll_s):
                    take(i, rec)
                counts.update(self._counts())
                if on_progress is not None:
                    on_progress(dict(counts))
                if cancel is not None and cancel.is_set():
                    break
        except KeyboardInterrupt:
            interrupted = True
        if any(o is None for o in out):
            self._cancel()
            deadline = time.monotonic() + (0.0 if interrupted else CANCEL_GRACE_S)
            try:
                while any(o is None for o in out) and time.monotonic() < deadline:
                    for i, rec in self._poll(min(poll_s, max(deadline - time.monotonic(), 0.01))):
                        take(i, rec)
            except KeyboardInterrupt:
                interrupted = True
            for i, o in enumerate(out):
                if o is None:
                    take(i, failure_record(configs[i], "cancelled before it finished", "cancelled", CANCELLED))
        if interrupted:
            raise KeyboardInterrupt
        return out  # type: ignore[return-value]

    def run_one(self, config: PruneConfig) -> dict:
        """``run(config) -> report``: one config's outcome (report or failure record)."""
        return self.run([config])[0]

    # -- to implement --------------------------------------------------------------------------------------------
    def _launch(self, configs: list[PruneConfig]) -> None:
        raise NotImplementedError

    def _poll(self, timeout: float) -> list[tuple[int, dict]]:
        """Outcomes that finished since the last poll (waits up to ``timeout`` s for one)."""
        raise NotImplementedError

    def _counts(self) -> dict:
        """{'running': n, 'queued': m} now."""
        raise NotImplementedError

    def _cancel(self) -> None:
        """Cancel every unfinished run (queued ones at once, running ones as soon as they can stop)."""
        raise NotImplementedError


# -- local -------------------------------------------------------------------------------------------------------
class LocalExecutor(Executor):
    """This process: a ``JobRunner`` (one worker thread per device key). With ``runner`` given (the app's), jobs
    share its queues with the other tabs, and its store (if any) holds the reports; without one, a private runner
    that stores nothing (the driver, ``run_sweep``, does). ``run_fn`` replaces ``api.run_job`` (tests)."""

    name = "local"

    def __init__(self, runner=None, run_fn=None, owner: str | None = None):
        from .jobs import JobRunner

        self._own = runner is None
        self.runner = runner if runner is not None else JobRunner(run_fn=run_fn, store=None, fingerprint_fn=None)
        self.owner = owner
        self._jobs: list = []
        self._reported: set[int] = set()

    def submit(self, configs: Sequence[PruneConfig], owner: str | None = None) -> list:
        """Queue the configs on the runner and return its ``Job`` objects at once (the app streams them)."""
        return self.runner.submit_many(list(configs), owner=owner if owner is not None else self.owner)

    def fingerprint(self, config: PruneConfig) -> str | None:
        from .jobs import fingerprint_for_config

        try:
            return fingerprint_for_config(config)  # loads the model in this process, where it runs anyway
        except Exception:  # noqa: BLE001 -- an unloadable model fails in its run, with its message
            return None

    def close(self) -> None:
        if self._own:
            self.runner.shutdown(cancel_running=True, timeout=CANCEL_GRACE_S)

    def _launch(self, configs):
        self._jobs, self._reported = self.submit(configs), set()

    def _outcome(self, job) -> dict:
        from .jobs import DONE as JOB_DONE, CANCELLED as JOB_CANCELLED

        if job.status == JOB_DONE:
            return _plain(job.report)
        if job.status == JOB_CANCELLED:
            return failure_record(job.config, job.message or "cancelled", "cancelled", CANCELLED)
        kind = next((e.kind for e in reversed(job.history) if isinstance(e, ev.JobFailed)), INTERNAL)
        return failure_record(job.config, job.message or "failed", kind)

    def _poll(self, timeout):
        waiting = next((j for i, j in enumerate(self._jobs) if i not in self._reported and not j.done), None)
        if waiting is not None:
            waiting.wait(len(waiting.history), timeout)  # wakes on the job's next event
        got = []
        for i, j in enumerate(self._jobs):
            if i not in self._reported and j.done:
                self._reported.add(i)
                got.append((i, self._outcome(j)))
        return got

    def _counts(self):
        from .jobs import QUEUED, RUNNING

        return {"running": sum(j.status == RUNNING for j in self._jobs), "queued": sum(j.status == QUEUED for j in self._jobs)}

    def _cancel(self):
        for j in self._jobs:
            if not j.done:
                self.runner.cancel(j.id, "sweep cancelled")


# -- Ray ---------------------------------------------------------------------------------------------------------
def import_ray():
    """The ``ray`` module, or ExecutorError naming the install command."""
    try:
        import ray
    except ImportError:
        raise ExecutorError(f"executor: ray is not installed; install the optional extra with `{RAY_INSTALL}` "
                            "(or use --executor local)") from None
    return ray


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Raise ExecutorError naming --ray-address if ``HOST:PORT`` does not accept a TCP connection within ``timeout``
    ('auto' and ray:// addresses are left to Ray, which answers at once when no cluster is running)."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExecutorError(f"--ray-address: {address!r} is not an address; allowed: auto, HOST:PORT "
                            "(a running Ray head node, e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ExecutorError(f"--ray-address: no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                            "`ray start --head` there, or leave --ray-address out to start a local Ray instance") from None


def _ray_task(config: PruneConfig, run_fn=None, threads: int | None = None) -> dict:
    """The body of one Ray task (in the worker process): the plain report or a failure record. ``threads``: torch's
    CPU threads for this task (its CPUs; a worker process may serve tasks of different sizes)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return (run_fn or execute)(config)


def _wants_gpu(config: PruneConfig) -> bool:
    return str(config.device) != "cpu"


class RayExecutor(Executor):
    """Ray core tasks; see the module docstring. ``address``: 'auto' | 'HOST:PORT' | None (start a local instance
    with ``num_cpus`` CPUs, default all). ``run_fn(config) -> outcome`` replaces ``execute`` in the workers
    (tests; it must be importable there). A Ray instance already initialised in this process is used as is."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, cpus_per_task: int = 1, run_fn=None):
        if cpus_per_task < 1:
            raise ExecutorError(f"--ray-cpus-per-task: {cpus_per_task} is out of range; allowed: 1 or more")
        if num_cpus is not None and num_cpus < 1:
            raise ExecutorError(f"--ray-cpus: {num_cpus} is out of range; allowed: 1 or more")
        self.address, self.num_cpus, self.cpus_per_task, self.run_fn = address, num_cpus, cpus_per_task, run_fn
        self._ray = None
        self._started_here = False
        self._refs: dict = {}  # ObjectRef -> config index
        self._configs: list[PruneConfig] = []
        self._gpus = 0.0

    def start(self) -> None:
        if self._ray is not None:
            return
        ray = import_ray()
        if self.address:
            check_ray_address(self.address)
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            except ConnectionError as e:
                raise ExecutorError(f"--ray-address: could not join the Ray cluster at {self.address}: {e} "
                                    "(start one with `ray start --head`, or leave --ray-address out)") from None
            except Exception as e:  # noqa: BLE001 -- e.g. a local node that timed out starting on a busy machine
                where = f"join the Ray cluster at {self.address}" if self.address else "start a local Ray instance"
                raise ExecutorError(f"executor: could not {where} ({type(e).__name__}: {str(e).strip()[:300]}); "
                                    "try again, or run the sweep with --executor local") from None
            self._started_here = True
        self._ray = ray
        self._gpus = float(ray.cluster_resources().get("GPU", 0.0))

    def check(self, configs):
        for c in configs:
            dev = str(c.device)
            if dev.startswith("cuda:") and dev != "cuda:0":
                raise ExecutorError(f"device: {dev!r} cannot be used with --executor ray: each task sees only the GPU "
                                    "Ray gives it, as cuda; allowed: auto, cuda, cpu")

    def close(self) -> None:
        if self._ray is not None and self._started_here:
            self._ray.shutdown()
        self._ray, self._started_here = None, False

    def _slots(self) -> int:
        res = self._ray.cluster_resources()
        cpu_slots = int(res.get("CPU", 1) // self.cpus_per_task) or 1
        gpu_slots = int(self._gpus)
        if gpu_slots and all(_wants_gpu(c) for c in self._configs):
            return gpu_slots
        return cpu_slots

    def _launch(self, configs):
        ray = self._ray
        task = ray.remote(max_retries=0)(_ray_task)
        self._configs, self._refs = list(configs), {}
        for i, cfg in enumerate(configs):
            if self._gpus and _wants_gpu(cfg):
                opts = {"num_gpus": 1, "num_cpus": self.cpus_per_task}
            else:
                opts = {"num_gpus": 0, "num_cpus": self.cpus_per_task}
            self._refs[task.options(**opts).remote(cfg, self.run_fn, self.cpus_per_task)] = i

    def _poll(self, timeout):
        ray = self._ray
        if not self._refs:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=timeout)
        got = []
        for ref in ready:
            i = self._refs.pop(ref)
            cfg = self._configs[i]
            try:
                rec = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                rec = failure_record(cfg, "cancelled", "cancelled", CANCELLED)
            except ray.exceptions.RayError as e:  # the worker died (killed, out of memory) or the task itself broke
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                rec = failure_record(cfg, f"Ray task failed ({type(e).__name__}): {first}"[:500], INTERNAL)
            got.append((i, rec))
        return got

    def _counts(self):
        pending = len(self._refs)
        running = min(pending, self._slots())
        return {"running": running, "queued": pending - running}

    def _cancel(self):
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref)  # a queued task is dropped; a running one gets KeyboardInterrupt
            except Exception:  # noqa: BLE001 -- already finished
                pass


def make_executor(name: str, ray_address: str | None = None, ray_cpus: int | None = None,
                  ray_cpus_per_task: int = 1) -> Executor:
    """The executor named by the CLI's ``--executor`` (ExecutorError naming the flag for anything else)."""
    if name == "local":
        if ray_address:
            raise ExecutorError("--ray-address: only with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=ray_address, num_cpus=ray_cpus, cpus_per_task=ray_cpus_per_task)
    raise ExecutorError(f"--executor: {name!r} not allowed; allowed: {', '.join(EXECUTORS)}")


# -- the driver --------------------------------------------------------------------------------------------------
def run_sweep(configs: Sequence[PruneConfig], executor: Executor, store=None, resume: bool = False,
              on_outcome: Callable[[int, dict, str], None] | None = None, on_progress: OnProgress | None = None,
              cancel: threading.Event | None = None) -> tuple[list[dict], list[str]]:
    """Run a sweep: (outcomes in config order, status per config: done | stored | failed | cancelled).

    The executor checks the configs and is started first (an executor that cannot work fails here, before anything
    is read or written).
    With ``resume`` a config whose report is already in ``store`` (whoever ran it) is not run again. Each new report
    is written into ``store`` by this process as soon as it arrives (workers never write it); failure records are
    not stored. ``on_outcome(index, outcome, status)`` is called for every config, stored ones first.
    """
    configs = list(configs)
    executor.check(configs)
    executor.start()
    outcomes: list[dict | None] = [None] * len(configs)
    status: list[str] = [""] * len(configs)

    def note(i: int, rec: dict, st: str) -> None:
        outcomes[i], status[i] = rec, st
        if on_outcome is not None:
            on_outcome(i, rec, st)

    todo = []
    for i, cfg in enumerate(configs):
        hit = store.get(cfg.key(), executor.fingerprint(cfg)) if (resume and store is not None) else None
        if hit is not None:
            note(i, _plain(hit), STORED)
        else:
            todo.append(i)

    def on_report(j: int, rec: dict) -> None:
        i = todo[j]
        if is_failure(rec):
            note(i, rec, rec.get("status", FAILED))
            return
        if store is not None:
            try:
                store.put(rec)
            except (TypeError, KeyError, OSError) as e:
                rec = dict(rec, warnings=list(rec.get("warnings", [])) + [f"result not stored: {e}"])
        note(i, rec, DONE)

    if todo:
        executor.run([configs[i] for i in todo], on_report=on_report, on_progress=on_progress, cancel=cancel)
    return outcomes, status  # type: ignore[return-value]


TABLE_COLUMNS = ("index", "method", "pattern", "target", "sparsity", "dense_ppl", "pruned_ppl", "mean_rel_error",
                 "prune_s", "status", "message", "run_id", "mask_sha256")


def sweep_table(outcomes: Sequence[dict], status: Sequence[str]) -> list[dict]:
    """One flat row per config (the sweep table: CSV, JSON, the CLI's printout); failed rows carry their message."""
    rows = []
    for i, (rec, st) in enumerate(zip(outcomes, status), 1):
        c = rec.get("config", {})
        row = {"index": i, "method": method_label(c), "pattern": c.get("pattern"), "target": c.get("sparsity"),
               "sparsity": None, "dense_ppl": None, "pruned_ppl": None, "mean_rel_error": None, "prune_s": None,
               "status": st, "message": "", "run_id": "", "mask_sha256": ""}
        if is_failure(rec):
            row["message"] = f"{rec.get('kind', INTERNAL)}: {rec.get('message', '')}"
        else:
            errs = [l["rel_error"] for l in rec.get("layers", [])]
            row.update(sparsity=rec.get("sparsity"), dense_ppl=rec["perplexity"]["dense"],
                       pruned_ppl=rec["perplexity"]["pruned"], mean_rel_error=sum(errs) / len(errs) if errs else None,
                       prune_s=(rec.get("timings") or {}).get("prune_total"), run_id=rec.get("run_id", ""),
                       mask_sha256=rec.get("mask_sha256", ""), message="; ".join(rec.get("warnings", []))[:300])
        rows.append(row)
    return rows


def write_sweep_outputs(out_dir: str | Path, outcomes: Sequence[dict], status: Sequence[str]) -> list[Path]:
    """``sweep.csv`` and ``sweep.json`` (the table; the JSON also holds the full reports under ``runs``, the
    format the Compare tab reads as precomputed results) and ``sweep.html``: the trade-off plot, standalone
    (plotly.js inline: opens offline). Each file is written through a temporary name. Returns the paths."""
    from .figures import tradeoff_figure

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = sweep_table(outcomes, status)
    reports = [r for r in outcomes if not is_failure(r)]
    paths = []

    def atomic(name: str, write) -> None:
        path = d / name
        tmp = path.with_name(f".{name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            write(f)
        tmp.replace(path)
        paths.append(path)

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=list(TABLE_COLUMNS))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)

    atomic("sweep.csv", write_csv)
    atomic("sweep.json", lambda f: json.dump({"rows": rows, "runs": reports}, f, indent=1, allow_nan=True))
    fig = tradeoff_figure(reports, title=f"Perplexity vs sparsity: sweep of {len(rows)} runs")
    atomic("sweep.html", lambda f: f.write(fig.to_html(include_plotlyjs=True, full_html=True)))
    return paths
