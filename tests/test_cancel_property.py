"""Cancellation at random layers, and a result store that fails (issue 14 §4).

Property (100 cancels over the two tests: 60 generated + 40 through the job runner): a job cancelled after k solved layers leaves the loaded dense model
bit-identical (sha256 of every tensor), stores nothing, and the next job's result equals a clean run's.
The store: a corrupted or truncated entry, an entry holding another config's report, a directory that is not
writable, a full disk (writes raise ENOSPC): the run is recomputed or the job says "result not cached", never a
result for a different config; the key covers every option, the model's fingerprint and ``RESULT_SCHEMA``.
"""
from __future__ import annotations

import copy
import errno
import os
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from pruning import events as ev, pipeline
from pruning.config import CalibConfig, PruneConfig
from pruning.jobs import JobRunner
from pruning.models import tiny_model
from pruning.results import RESULT_SCHEMA, ResultStore, StoreError, run_key
from test_numerics import checksum

N_LAYERS = 2 * 7  # tiny llama: 2 blocks × 7 linears
WINDOWS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
_MODEL = tiny_model("llama", seed=0)
_CLEAN: dict = {}


def _cfg(solver: str) -> PruneConfig:
    opts = {"admm": {"iters": 3, "gradual_iters": 1}}.get(solver, {})
    return PruneConfig(solver=solver, options=opts, calib=CalibConfig(nsamples=2, seqlen=16), device="cpu", dtype="float32")


def _clean(solver: str) -> tuple[dict, dict]:
    """(report, pruned-weights checksum) of an uncancelled run on a copy of the shared model."""
    if solver not in _CLEAN:
        m = copy.deepcopy(_MODEL[0])
        rep = pipeline.prune_model(m, None, _cfg(solver), windows=WINDOWS)
        _CLEAN[solver] = (rep, checksum(m))
    return _CLEAN[solver]


@hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.sampled_from(["magnitude", "wanda", "sparsegpt", "ria"]), st.integers(0, N_LAYERS - 2),
       st.sampled_from(["LayerSolved", "IterationDone"]))
def test_cancel_at_a_random_layer_leaves_the_model_and_the_next_run_exact(solver, k, at):
    model = _MODEL[0]
    dense = checksum(model)
    clean_rep, clean_sum = _clean(solver)
    work = model  # pruned in place, as the pipeline's callers may: the restore must be exact
    cancel = threading.Event()
    seen = {"n": 0}

    def on_event(e):
        if type(e).__name__ == at or (at == "IterationDone" and isinstance(e, ev.LayerSolved)):
            seen["n"] += 1
            if seen["n"] > k:
                cancel.set()

    with pytest.raises(ev.Cancelled):  # k <= 12: at least one layer is left, so the cancel always takes effect
        pipeline.prune_model(work, None, _cfg(solver), on_event, cancel, windows=WINDOWS)
    assert checksum(model) == dense
    nxt = copy.deepcopy(model)
    rep = pipeline.prune_model(nxt, None, _cfg(solver), windows=WINDOWS)
    assert checksum(nxt) == clean_sum
    assert [l["rel_error"] for l in rep["layers"]] == [l["rel_error"] for l in clean_rep["layers"]]


@pytest.mark.parametrize("k", list(range(13)) * 3 + [6])
def test_job_runner_cancel_stores_nothing_and_next_job_equals_clean(tiny_dir, tmp_path_factory, k):
    from pruning.api import get_model, run_job

    store = _STORE.setdefault("store", ResultStore(tmp_path_factory.mktemp("store")))
    cfg = PruneConfig.from_dict({"model": tiny_dir, "solver": "wanda", "device": "cpu", "dtype": "float32",
                                 "calib": {"source": "pydoc", "nsamples": 2, "seqlen": 16},
                                 "eval": {"source": "pydoc", "windows": 1, "seqlen": 16}, "max_new_tokens": 1,
                                 "sparsity": 0.3 + 0.01 * k})
    model = get_model(tiny_dir, "cpu", "float32")[0]
    dense = checksum(model)

    def run(config, on_event, cancel):
        count = {"n": 0}

        def relay(e):
            if isinstance(e, ev.LayerSolved):
                count["n"] += 1
                if count["n"] > k:
                    cancel.set()
            on_event(e)

        return run_job(config, relay, cancel)

    runner = JobRunner(run_fn=run, store=store, fingerprint_fn=None)
    try:
        job = runner.submit(cfg)
        list(runner.stream(job, heartbeat=0.2))
        assert job.status == "cancelled", job.message
        assert store.get(cfg.key()) is None and not any(r["key"] == cfg.key() for r in store.list_runs())
        assert checksum(model) == dense
        clean = JobRunner(store=None, fingerprint_fn=None)
        try:
            nxt = clean.submit(cfg)
            list(clean.stream(nxt, heartbeat=0.2))
        finally:
            clean.shutdown()
        ref = run_job(cfg)
        assert nxt.status == "done"
        assert [l["rel_error"] for l in nxt.report["layers"]] == [l["rel_error"] for l in ref["layers"]]
        assert nxt.report["perplexity"] == ref["perplexity"]
    finally:
        runner.shutdown()


_STORE: dict = {}


# -- the result store ---------------------------------------------------------------------------------------------
def _report(cfg: PruneConfig, fp: str = "fp-1", ppl: float = 12.0) -> dict:
    return {"config": cfg.to_dict(), "key": cfg.key(), "model": {"id": cfg.model, "fingerprint": fp},
            "perplexity": {"dense": 10.0, "pruned": ppl}, "layers": []}


def test_store_key_covers_every_option_fingerprint_and_schema(tmp_path):
    store = ResultStore(tmp_path / "s")
    base = PruneConfig()
    store.put(_report(base))
    variants = [base.replace(sparsity=0.6), base.replace(pattern="2:4"), base.replace(options={"damping": 0.02}),
                base.replace(calib=CalibConfig(nsamples=17)), base.replace(calib=CalibConfig(seed=1)),
                base.replace(max_new_tokens=25), base.replace(prompts=("x",)), base.replace(true_sequential=True),
                base.replace(dtype="float32"), base.replace(allocation="owl"), base.replace(batch_size=4)]
    assert len({v.key() for v in variants} | {base.key()}) == len(variants) + 1
    for v in variants:
        assert store.get(v.key(), "fp-1") is None and store.get(v.key()) is None
    assert store.get(base.key(), "fp-2") is None  # another model (fingerprint): not this result
    assert store.get(base.key(), "fp-1")["perplexity"]["pruned"] == 12.0
    assert run_key("k", "f") == "run:k:f" and RESULT_SCHEMA == 1  # schema 1 keeps the keys stores already hold
    assert run_key("k", "f", schema=2) == "run:v2:k:f"
    assert store.get(base.key(), "fp-1")["result_schema"] == RESULT_SCHEMA


def test_store_drops_corrupted_truncated_and_foreign_entries(tmp_path):
    store = ResultStore(tmp_path / "s")
    a, b = PruneConfig(), PruneConfig(sparsity=0.6)
    key_a = store.put(_report(a))
    # a damaged pickle in the database row itself (as a torn write would leave it)
    import sqlite3

    con = sqlite3.connect(str(tmp_path / "s" / "cache.db"))
    with con:
        n = con.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"\x80\x04garbage-not-a-pickle", key_a)).rowcount
    con.close()
    assert n == 1
    assert store.get(a.key(), "fp-1") is None
    store._cache.set(key_a, b"raw bytes, not a report")
    assert store.get(a.key(), "fp-1") is None
    key_a = store.put(_report(a))
    store._cache.set(key_a, _report(b))  # another config's report under this key: never shown as this one
    assert store.get(a.key(), "fp-1") is None and store.get(a.key()) is None
    store._cache.set(key_a, {"key": a.key()})  # truncated: not a report
    assert store.get(a.key(), "fp-1") is None
    store.put(_report(a, ppl=13.0))
    assert store.get(a.key(), "fp-1")["perplexity"]["pruned"] == 13.0  # recomputed and stored again
    # a report of an older result schema is never returned
    old = dict(_report(a), result_schema=RESULT_SCHEMA - 1)
    store._cache.set(run_key(a.key(), "fp-1"), old)
    assert store.get(a.key(), "fp-1") is None and all(r.get("result_schema") == RESULT_SCHEMA for r in store.list_runs())


def test_store_files_damaged_on_disk_are_a_miss_not_a_crash(tmp_path):
    store = ResultStore(tmp_path / "s")
    cfg = PruneConfig()
    big = _report(cfg)
    big["layers"] = [{"block": i, "name": "x" * 200, "rel_error": 0.1} for i in range(2000)]  # a file-backed entry
    store.put(big)
    store.close()
    files = [p for p in (tmp_path / "s").rglob("*.val")]
    assert files, "expected diskcache to keep the large report in a file"
    for f in files:
        f.write_bytes(f.read_bytes()[:50])  # truncated on disk
    store = ResultStore(tmp_path / "s")
    assert store.get(cfg.key(), "fp-1") is None
    assert store.list_runs() == []


def test_store_not_writable_or_full_disk_the_job_still_shows_its_result(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): read-only folder not testable")
        with pytest.raises(StoreError, match="result store: cannot open"):
            ResultStore(ro / "results")
    finally:
        os.chmod(ro, 0o700)
    store = ResultStore(tmp_path / "full")
    import diskcache

    def enospc(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diskcache.Cache, "set", enospc)
    with pytest.raises(StoreError, match="could not write .*No space left on device"):
        store.put(_report(PruneConfig()))
    cfg = PruneConfig()
    runner = JobRunner(run_fn=lambda c, on_event, cancel: _report(c), store=store, fingerprint_fn=None)
    try:
        job = runner.submit(cfg)
        events = list(runner.stream(job, heartbeat=0.2))
    finally:
        runner.shutdown()
    assert job.status == "done" and job.report["key"] == cfg.key()
    warns = [e.message for e in events if isinstance(e, ev.WarningEvent)]
    assert any("result not cached" in w and "No space left" in w for w in warns), warns
    monkeypatch.undo()
    assert store.get(cfg.key()) is None  # nothing half-written


def test_store_read_only_directory_as_a_user(tmp_path, monkeypatch):
    """Where the tests run as root (chmod does not stop root), simulate the read-only folder at the OS call."""
    real_mkdir = type(tmp_path).mkdir

    def denied(self, *a, **kw):
        if "denied" in str(self):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(type(tmp_path), "mkdir", denied)
    with pytest.raises(StoreError, match=r"result store: cannot open '.*denied.*' \(.*Permission denied"):
        ResultStore(tmp_path / "denied" / "results")
