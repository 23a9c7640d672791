"""Jobs in a worker process (``JobRunner(in_process=False)``, ``pruning.worker``): the same report as in process,
crashes of the worker (``os._exit``, a segfault, SIGKILL from outside) fail one job with a clear message, the worker
is restarted and the next job equals a clean run, nothing partial is stored, the parent's dense model is untouched;
cancel relayed to the worker stops at the next layer; a stuck job is terminated after the grace; model loads and lab
runs are tasks of the same queue and never load a model in this process.

One runner (one worker process) serves the module: faults are injected through ``PRUNING_LAB_TEST_FAULT`` (read
by the worker) and armed per test by creating a file, so each fault hits exactly one job. Every wait has a deadline.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import pytest

from pruning import events as ev
from pruning.jobs import CANCELLED, DONE, FAILED, JobRunner
from pruning.models import save_pretrained, tiny_model
from pruning.results import ResultStore

from _tiny import small

DEADLINE = 300.0  # seconds: a worker start imports torch + transformers, slow on a loaded 2-core machine
GRACE_S = 10.0


def run_with_checksum(config, on_event, cancel):
    """run_job plus a checksum of every pruned weight's mask (a module-level function: the worker imports it)."""
    from pruning.api import run_job
    from pruning.blocks import block_linears, find_blocks

    rep = run_job(config, on_event, cancel, keep_model=True)
    model = rep.pop("_model")
    rep.pop("_tokenizer")
    h = hashlib.sha256()
    for block in find_blocks(model)[1]:
        for name, lin in sorted(block_linears(block).items()):
            h.update(name.encode())
            h.update((lin.get_weight().detach() == 0).cpu().numpy().tobytes())
    rep["mask_sha256"] = h.hexdigest()
    return rep


def _tensor_sha(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _comparable(rep: dict) -> dict:
    return {"ppl": rep["perplexity"], "sparsity": rep["sparsity"], "mask": rep["mask_sha256"],
            "layers": [(l["block"], l["name"], l["rel_error"], l["sparsity"]) for l in rep["layers"]],
            "generations": rep["generations"]}


def _drain(runner, job, timeout=DEADLINE, on_event=None):
    out, t0 = [], time.monotonic()
    for e in runner.stream(job, heartbeat=0.1):
        if e is not None:
            out.append(e)
            if on_event is not None:
                on_event(e)
        assert time.monotonic() - t0 < timeout, "job did not finish"
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    small_dir, deep_dir = tmp / "tiny", tmp / "deep"
    save_pretrained(*tiny_model("llama", seed=0), small_dir)
    save_pretrained(*tiny_model("llama", seed=1, num_hidden_layers=6), deep_dir)
    arms = {a: str(tmp / f"arm-{a}") for a in ("exit", "segv", "hang")}
    faults = [{"action": "exit", "block": 1, "armed": arms["exit"]}, {"action": "segv", "block": 0, "armed": arms["segv"]},
              {"action": "hang", "block": 1, "armed": arms["hang"]}]
    store = ResultStore(tmp / "store")
    runner = JobRunner(run_fn=run_with_checksum, store=store, in_process=False, cancel_grace_s=GRACE_S,
                       worker_env={"PRUNING_LAB_TEST_FAULT": json.dumps(faults)}, device_key_fn=lambda c: "cpu")
    # the reference: the same run in this process (the parent's own loaded dense model, checked after each fault)
    from pruning.api import get_model

    cfg = small(str(small_dir), solver="sparsegpt", sparsity=0.5)
    reference = run_with_checksum(cfg, None, None)
    parent_model = get_model(cfg.model, cfg.device, cfg.dtype)[0]
    try:
        yield dict(runner=runner, store=store, small=str(small_dir), deep=str(deep_dir), arms=arms, cfg=cfg,
                   reference=reference, parent_model=parent_model, parent_sha=_tensor_sha(parent_model))
    finally:
        runner.shutdown()


def _arm(env, action):
    with open(env["arms"][action], "w"):
        pass


def _check_clean_rerun(env):
    """After a fault: nothing stored for the failed config, the worker restarted, the same job now equals the clean
    in-process run, and the parent's dense model is bit-identical."""
    runner, cfg = env["runner"], env["cfg"]
    job = runner.submit(cfg, use_cache=False)
    _drain(runner, job)
    assert job.status == DONE, job.message
    assert _comparable(job.report) == _comparable(env["reference"])
    assert _tensor_sha(env["parent_model"]) == env["parent_sha"]


def test_worker_report_equals_in_process(env):
    runner, cfg = env["runner"], env["cfg"]
    job = runner.submit(cfg, use_cache=False)
    events = _drain(runner, job)
    assert job.status == DONE, job.message
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("LayerSolved") == 2 * 7 and kinds[-1] == "JobFinished"  # the same typed events, relayed
    assert _comparable(job.report) == _comparable(env["reference"])  # errors, perplexities, masks: identical
    assert runner.worker_pid("cpu") not in (None, os.getpid())
    # stored by this process (the only writer) before JobFinished; the worker's model info is known here now
    assert env["store"].get(cfg.key(), job.report["model"]["fingerprint"]) is not None
    assert runner.known_info(cfg.model)["fingerprint"] == job.report["model"]["fingerprint"]
    again = runner.submit(cfg)  # a cache hit at once, without the worker
    assert again.status == DONE and again.cached


@pytest.mark.parametrize("action, how, where", [
    ("exit", "exit code 3", "pruning block 1 of 2"),
    pytest.param("segv", "signal 11, SIGSEGV", "pruning block 0 of 2", marks=pytest.mark.slow),  # one more restart
])
def test_worker_crash_fails_the_job_then_the_next_runs(env, action, how, where):
    runner = env["runner"]
    restarts = runner.worker_restarts("cpu")
    cfg = small(env["small"], solver="wanda", sparsity=0.6)
    _arm(env, action)
    job = runner.submit(cfg)
    last = _drain(runner, job)[-1]
    assert isinstance(last, ev.JobFailed) and job.status == FAILED
    assert f"the worker process died ({how}) while {where}" in job.message, job.message
    assert "Traceback" not in job.message and "WorkerDied" not in job.message
    assert env["store"].get(cfg.key()) is None  # nothing partial kept
    assert runner.worker_restarts("cpu") == restarts + 1
    _check_clean_rerun(env)


def test_sigkill_from_outside_mid_job(env):
    """An out-of-memory kill looks like this: SIGKILL of the worker while it prunes a layer."""
    runner = env["runner"]
    cfg = small(env["small"], solver="wanda", sparsity=0.55)
    job = runner.submit(cfg)
    killed = []

    def on_event(e):
        if isinstance(e, ev.LayerSolved) and not killed:
            killed.append(runner.worker_pid("cpu"))
            os.kill(killed[0], signal.SIGKILL)

    _drain(runner, job, on_event=on_event)
    assert killed and job.status == FAILED
    assert "the worker process died (signal 9, SIGKILL) while pruning block 0" in job.message, job.message
    assert env["store"].get(cfg.key()) is None
    assert runner.worker_pid("cpu") != killed[0]  # a new worker
    _check_clean_rerun(env)


def test_cancel_is_relayed_and_stops_at_the_next_layer(env):
    runner = env["runner"]
    restarts = runner.worker_restarts("cpu")
    cfg = small(env["deep"], solver="admm", sparsity=0.5, options={"iters": 20})
    job = runner.submit(cfg)
    seen = []

    def on_event(e):
        if isinstance(e, ev.LayerSolved):
            seen.append(time.monotonic())
            if len(seen) == 1:
                runner.cancel(job.id)

    events = _drain(runner, job, on_event=on_event)
    assert job.status == CANCELLED and isinstance(events[-1], ev.JobCancelled)
    assert "did not stop" not in job.message  # stopped cooperatively, within the grace
    assert len(seen) < 6 * 7  # stopped before the end: the pipeline saw the relayed cancel between two layers
    assert runner.worker_restarts("cpu") == restarts  # the worker lives on
    assert env["store"].get(cfg.key()) is None
    _check_clean_rerun(env)


def test_stuck_job_is_terminated_after_the_grace(env):
    runner = env["runner"]
    restarts = runner.worker_restarts("cpu")
    cfg = small(env["small"], solver="magnitude", sparsity=0.45)
    _arm(env, "hang")
    job = runner.submit(cfg)
    cancelled = []

    def on_event(e):
        if isinstance(e, ev.BlockStarted) and e.block == 1 and not cancelled:
            cancelled.append(time.monotonic())
            runner.cancel(job.id)

    _drain(runner, job, on_event=on_event)
    assert cancelled and job.status == CANCELLED
    assert f"did not stop within {GRACE_S:g} s" in job.message and "restarted" in job.message
    assert GRACE_S <= time.monotonic() - cancelled[0] < DEADLINE
    assert runner.worker_restarts("cpu") == restarts + 1
    assert env["store"].get(cfg.key()) is None  # (the next test's tasks run on the restarted worker)


def test_model_info_and_lab_are_tasks_of_the_queue(env, tmp_path):
    """Neither loads a model in this process; the lab is cancellable like a job."""
    from pruning.api import ENGINE

    runner = env["runner"]
    fresh = tmp_path / "fresh"
    save_pretrained(*tiny_model("llama", seed=5), fresh)
    info = runner.model_info(str(fresh))
    assert info["n_blocks"] == 2 and info["linears"]["mlp.down_proj"] == [64, 128] and info["fingerprint"]
    assert not [k for k in ENGINE.models if k[0] == str(fresh)]  # loaded in the worker only
    assert runner.known_info(str(fresh)) == info
    res = runner.call("lab", dict(model_id=str(fresh), block=1, name="mlp.down_proj", sparsity=0.5, nsamples=2, seqlen=32,
                                  admm_iters=3, sparsefw_iters=3))
    assert set(res["greedy"]) == {"magnitude", "wanda", "sparsegpt"} and res["greedy"]["wanda"]["mask"].shape == (64, 128)
    assert not [k for k in ENGINE.models if k[0] == str(fresh)]
    with pytest.raises(ValueError, match="projection"):  # a bad input stays an input error (a ValueError) here
        runner.call("lab", dict(model_id=str(fresh), block=1, name="mlp.nope", nsamples=2, seqlen=32))
    # cancel a lab run: it stops (before the next solver or iteration) and says so
    job = runner.submit_task("lab", dict(model_id=str(fresh), block=0, name="mlp.down_proj", nsamples=2, seqlen=32,
                                         admm_iters=2000, sparsefw_iters=3))
    _drain(runner, job, on_event=lambda e: runner.cancel(job.id) if isinstance(e, ev.PhaseStarted) and "ADMM" in e.detail else None)
    assert job.status == CANCELLED
    with pytest.raises(ValueError, match="model"):
        runner.model_info(str(tmp_path / "no-such-model"))


def test_worker_helpers():
    from pruning.worker import describe_exit, fn_path

    assert describe_exit(-9) == "signal 9, SIGKILL" and describe_exit(3) == "exit code 3"
    assert fn_path(run_with_checksum).endswith(":run_with_checksum")
    with pytest.raises(ValueError, match="run_fn: .* not a module-level function"):
        JobRunner(run_fn=lambda c, e, k: {}, in_process=False)
    with pytest.raises(ValueError, match="PRUNING_LAB_CANCEL_GRACE_S"):
        os.environ["PRUNING_LAB_CANCEL_GRACE_S"] = "soon"
        try:
            JobRunner(in_process=False)
        finally:
            del os.environ["PRUNING_LAB_CANCEL_GRACE_S"]
