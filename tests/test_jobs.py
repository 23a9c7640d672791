"""JobRunner: events relayed in order, one job per device, queue positions, cancel (queued and running),
store-before-report, cache hits complete at once, independent event logs per reader, typed failures.

No fixed sleeps: tests wait for events with a deadline (``_wait_for``), and the fake engine can be held at its
first layer (``hold``) so that "job 1 is running, 2 and 3 queued" is a state, not a timing guess."""
import threading
import time

import pytest

from pruning import events as ev
from pruning.config import ConfigError, PruneConfig
from pruning.errors import NumericalError
from pruning.jobs import CANCELLED, DONE, FAILED, JobRunner, RunnerClosed
from pruning.results import ResultStore

DEADLINE = 10.0  # seconds; every wait in this file ends by then or fails


class FakeEngine:
    """run_job look-alike: n_blocks blocks of two layers, `delay` s per layer, cooperative cancel. While ``hold`` is
    clear, a job waits before its first layer (after JobStarted)."""

    def __init__(self, n_blocks=3, delay=0.02, store=None):
        self.n_blocks, self.delay, self.store = n_blocks, delay, store
        self.hold = threading.Event()
        self.hold.set()
        self.calls, self.concurrent, self.max_concurrent = 0, 0, 0
        self.lock = threading.Lock()
        self.stored_at_finish = []

    def __call__(self, config, on_event, cancel):
        with self.lock:
            self.calls += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if config.solver == "magnitude" and config.sparsity == 0.9:
                raise RuntimeError("boom")
            if config.solver == "magnitude" and config.sparsity == 0.8:
                raise ConfigError("sparsity: 0.8 is not allowed here; allowed: 0.1..0.7")
            if config.solver == "magnitude" and config.sparsity == 0.7:
                raise NumericalError("the Gram of block 0 is not positive definite")
            on_event(ev.JobStarted(self.n_blocks, 2 * self.n_blocks, config.to_dict()))
            assert self.hold.wait(DEADLINE), "the test never released the engine"
            layers = []
            for b in range(self.n_blocks):
                on_event(ev.BlockStarted(b, self.n_blocks))
                for name in ("self_attn.q_proj", "mlp.down_proj"):
                    if cancel.is_set():
                        on_event(ev.JobCancelled(f"cancelled at block {b}"))
                        raise ev.Cancelled(f"cancelled at block {b}")
                    time.sleep(self.delay)
                    layers.append({"block": b, "name": name, "rel_error": 0.1 * (b + 1), "sparsity": config.sparsity, "seconds": self.delay})
                    on_event(ev.LayerSolved(b, name, 0.1 * (b + 1), self.delay, config.sparsity))
                on_event(ev.BlockDone(b, self.n_blocks, 2 * self.delay))
            report = {"config": config.to_dict(), "key": config.key(),
                      "model": {"id": config.model, "fingerprint": "fp", "n_blocks": self.n_blocks, "n_params": 1},
                      "perplexity": {"dense": 10.0, "pruned": 10.0 + 10 * config.sparsity}, "sparsity": config.sparsity,
                      "layers": layers, "timings": {"prune": 0.1}, "generations": [], "device": "cpu", "dtype": "float32", "warnings": []}
            on_event(ev.JobFinished(report))
            return report
        finally:
            with self.lock:
                self.concurrent -= 1


def _drain(runner, job, timeout=DEADLINE):
    out, t0 = [], time.monotonic()
    for e in runner.stream(job, heartbeat=0.05):
        if e is not None:
            out.append(e)
        assert time.monotonic() - t0 < timeout, "job did not finish"
    return out


def _wait_for(job, kind, timeout=DEADLINE):
    """Block until the job's log holds an event of ``kind`` (fails after ``timeout`` s)."""
    cursor, deadline = 0, time.monotonic() + timeout
    while True:
        new, cursor = job.wait(cursor, timeout=0.05)
        if any(isinstance(e, kind) for e in job.history):
            return
        assert time.monotonic() < deadline, f"no {kind.__name__} within {timeout} s"


@pytest.fixture
def store(tmp_path):
    return ResultStore(tmp_path)


def _runner(engine, store=None):
    return JobRunner(run_fn=engine, store=store, fingerprint_fn=lambda c: "fp", device_key_fn=lambda c: "cpu")


def test_events_in_order_and_stored_before_finished(store):
    engine = FakeEngine()
    runner = _runner(engine, store)
    cfg = PruneConfig(solver="wanda", sparsity=0.4)
    job = runner.submit(cfg)
    events = _drain(runner, job)
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "JobStarted" and kinds[-1] == "JobFinished"
    assert kinds.count("LayerSolved") == 6 and kinds.count("JobFinished") == 1
    assert job.status == DONE and job.report["cached"] is False
    assert store.get(cfg.key(), "fp") is not None  # in the store by the time JobFinished was seen
    # the same config again: at once, from the store, without running the engine
    again = runner.submit(cfg)
    assert again.status == DONE and again.cached and engine.calls == 1
    assert [type(e).__name__ for e in _drain(runner, again)] == ["JobFinished"]
    runner.shutdown()


def test_one_job_per_device_and_queue_positions(store):
    engine = FakeEngine(delay=0.01)
    engine.hold.clear()  # the first job stays at its first layer until released
    runner = _runner(engine, store)
    jobs = runner.submit_many([PruneConfig(solver="wanda", sparsity=s) for s in (0.1, 0.2, 0.3)], owner="a")
    _wait_for(jobs[0], ev.JobStarted)
    assert [runner.position(j) for j in jobs] == [0, 1, 2]  # running, next, after that
    engine.hold.set()
    for j in jobs:
        _drain(runner, j)
    assert engine.max_concurrent == 1 and all(j.status == DONE for j in jobs)
    assert runner.position(jobs[0]) is None
    runner.shutdown()


def test_cancel_running_then_next_job_runs(store):
    engine = FakeEngine(n_blocks=50, delay=0.02)
    runner = _runner(engine, store)
    first = runner.submit(PruneConfig(solver="wanda", sparsity=0.5), owner="tab-1")
    second = runner.submit(PruneConfig(solver="magnitude", sparsity=0.5), owner="tab-2")
    _wait_for(first, ev.LayerSolved)
    assert runner.cancel_owner("tab-1") == [first.id]  # tab-2's job is not touched
    events = _drain(runner, first)
    assert isinstance(events[-1], ev.JobCancelled) and "cancelled at block" in events[-1].reason
    assert first.status == CANCELLED and store.get(first.config.key()) is None
    engine.n_blocks = 2
    assert isinstance(_drain(runner, second)[-1], ev.JobFinished) and second.status == DONE
    runner.shutdown()


def test_cancel_queued_job_and_failure_message(store):
    engine = FakeEngine(n_blocks=20, delay=0.02)
    runner = _runner(engine, store)
    running = runner.submit(PruneConfig(solver="wanda", sparsity=0.5))
    queued = runner.submit(PruneConfig(solver="wanda", sparsity=0.6))
    assert runner.cancel(queued.id)
    assert queued.status == CANCELLED and "before it started" in queued.message
    assert not runner.cancel(queued.id)  # already over
    failing = runner.submit(PruneConfig(solver="magnitude", sparsity=0.9))
    assert isinstance(_drain(runner, failing)[-1], ev.JobFailed)
    assert failing.status == FAILED and "RuntimeError: boom" in failing.message
    assert _drain(runner, failing)[-1].kind == "internal"  # a bug keeps its class name
    assert running.status == DONE and engine.calls == 2  # the cancelled job never ran
    runner.shutdown()


def test_two_readers_see_the_same_events(store):
    runner = _runner(FakeEngine(), store)
    job = runner.submit(PruneConfig(solver="wanda", sparsity=0.2))
    results = {}
    threads = [threading.Thread(target=lambda k=k: results.setdefault(k, _drain(runner, job))) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results["a"]) == len(results["b"]) > 6
    assert [type(e) for e in results["a"]] == [type(e) for e in results["b"]]
    runner.shutdown()
    with pytest.raises(RunnerClosed, match="shut down"):
        runner.submit(PruneConfig(solver="wanda", sparsity=0.3))


@pytest.mark.parametrize("sparsity,kind,text", [
    (0.8, "input", "sparsity: 0.8 is not allowed here; allowed: 0.1..0.7"),
    (0.7, "numerical", "the Gram of block 0 is not positive definite"),
])
def test_failures_carry_their_kind_and_a_clean_message(store, sparsity, kind, text):
    runner = _runner(FakeEngine(), store)
    job = runner.submit(PruneConfig(solver="magnitude", sparsity=sparsity))
    last = _drain(runner, job)[-1]
    assert isinstance(last, ev.JobFailed) and last.kind == kind
    assert last.message == text == job.message  # no class name for the user's own mistakes or numerical failures
    assert job.status == FAILED
    runner.shutdown()
