"""Sweep executors (pruning.executors) and ``python -m pruning sweep``: a real local Ray instance on CPU gives the
same reports as the local executor; failed, killed and cancelled runs are rows; the driver alone writes the store;
--out, --resume and the messages for a missing Ray or a cluster address that does not answer.

One Ray instance for the whole module (start-up costs ~15-60 s on a busy 2-core machine): ``ray_cluster``, shut
down at the end; the tests that use it are marked slow (together 1-3 minutes). Its workers import this file
(``run_fn`` hooks), so the fixture puts tests/ on their PYTHONPATH.
"""
import csv
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pruning import events as ev
from pruning.executors import (CANCELLED, DONE, FAILED, STORED, ExecutorError, LocalExecutor, RayExecutor, execute,
                               is_failure, run_sweep, sweep_table)
from pruning.results import ResultStore

from _tiny import small  # noqa: E402

HERE = Path(__file__).resolve().parent


def _configs(model: str):
    """Four tiny-model runs that differ in solver, pattern and sparsity (about a second each)."""
    return [small(model, solver="magnitude", sparsity=0.5), small(model, solver="wanda", pattern="2:4"),
            small(model, solver="sparsegpt", sparsity=0.6), small(model, solver="wanda", sparsity=0.4, update="sparsegpt")]


def _same_result(a: dict, b: dict) -> None:
    """Same masks, same errors, same perplexities (timings, dates and cache flags may differ)."""
    assert a["key"] == b["key"] and a["run_id"] == b["run_id"]
    assert a["mask_sha256"] == b["mask_sha256"] and len(a["mask_sha256"]) == 64
    assert [l["rel_error"] for l in a["layers"]] == [l["rel_error"] for l in b["layers"]]
    assert [l["sparsity"] for l in a["layers"]] == [l["sparsity"] for l in b["layers"]]
    assert a["perplexity"] == b["perplexity"] and a["sparsity"] == b["sparsity"]
    assert a["model"]["fingerprint"] == b["model"]["fingerprint"]


# -- run_fn hooks, importable by the Ray workers -------------------------------------------------------------------
def die_on_sparsegpt(config):
    """A worker that is killed (exits without a word) on sparsegpt configs; the real run otherwise."""
    if config.solver == "sparsegpt":
        os._exit(3)
    return execute(config)


def sleep_until_cancelled(config):
    """A run that never finishes by itself (bounded: 120 s); a Ray cancel interrupts it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
    return execute(config)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the optional extra: pip install -r requirements-scale.txt")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PRUNING_LAB_CACHE")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), saved["PYTHONPATH"]) if p)
    os.environ["PRUNING_LAB_CACHE"] = str(tmp_path_factory.mktemp("ray-worker-cache"))  # the workers' own disk
    try:
        for attempt in (1, 2):  # a node that does not come up within Ray's 30 s (a busy machine): once more
            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                break
            except Exception:
                ray.shutdown()
                if attempt == 2:
                    raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()


# -- Ray vs local ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_reports_equal_local_ones_and_a_raising_task_is_one_failed_row(ray_cluster, tiny_dir, tmp_path):
    configs = _configs(tiny_dir)
    bad = small(str(tmp_path / "no-such-model"), solver="wanda")
    configs.insert(2, bad)  # raises in the worker (model: not found); the sweep goes on
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each Ray task (1 CPU): the same float reduction order, so bit-identical results
    try:
        with LocalExecutor() as local:
            want = local.run(configs)
    finally:
        torch.set_num_threads(threads)
    store = ResultStore(tmp_path / "store")
    seen = []
    with RayExecutor() as ray_ex:  # the module's instance (already initialised): used as is, not shut down
        got, status = run_sweep(configs, ray_ex, store=store, on_outcome=lambda i, r, s: seen.append((i, s)))
    assert status == [DONE, DONE, FAILED, DONE, DONE] and sorted(seen) == [(i, status[i]) for i in range(5)]
    for i in (0, 1, 3, 4):
        _same_result(got[i], want[i])
        assert got[i]["device"] == "cpu" and not is_failure(got[i])
    assert is_failure(got[2]) and got[2]["kind"] == "input" and "model" in got[2]["message"]
    assert got[2]["message"] == want[2]["message"] and got[2]["config"] == bad.to_dict()
    # the driver wrote the four reports into the one store (failed runs are not stored)
    stored = {r["key"]: r for r in store.list_runs()}
    assert set(stored) == {c.key() for i, c in enumerate(configs) if i != 2}
    _same_result(stored[configs[3].key()], want[3])
    # --resume skips what Ray ran, even with the other executor: nothing runs again
    from pruning.api import run_job

    calls = []
    with LocalExecutor(run_fn=lambda c, e, x: calls.append(c.key()) or run_job(c, e, x)) as again:
        res, st = run_sweep(configs, again, store=store, resume=True)
    assert st == [STORED, STORED, FAILED, STORED, STORED] and calls == [bad.key()]  # only the failed one runs again
    assert is_failure(res[2]) and "model" in res[2]["message"]
    _same_result(res[1], want[1])
    store.close()
    rows = sweep_table(got, status)
    assert [r["status"] for r in rows] == status and rows[2]["message"].startswith("input: ")
    assert rows[0]["mask_sha256"] == want[0]["mask_sha256"] and rows[2]["pruned_ppl"] is None


@pytest.mark.slow
def test_a_killed_ray_task_is_one_failed_row(ray_cluster, tiny_dir):
    configs = [small(tiny_dir, solver="sparsegpt"), small(tiny_dir, solver="magnitude", sparsity=0.3)]
    with RayExecutor(run_fn=die_on_sparsegpt) as ex:
        out = ex.run(configs)
    assert is_failure(out[0]) and out[0]["status"] == FAILED and out[0]["kind"] == "internal"
    assert "Ray task failed" in out[0]["message"]
    assert not is_failure(out[1]) and out[1]["sparsity"] == pytest.approx(0.3, abs=1e-3)


@pytest.mark.slow
def test_cancelling_a_ray_sweep_cancels_its_tasks(ray_cluster, tiny_dir):
    configs = [small(tiny_dir, solver="magnitude", sparsity=s) for s in (0.2, 0.3, 0.4)]  # 2 run, 1 waits for a CPU
    cancel = threading.Event()
    progress = []

    def on_progress(counts):
        progress.append(counts)
        if counts["running"] == 2:
            cancel.set()

    with RayExecutor(run_fn=sleep_until_cancelled) as ex:
        out = ex.run(configs, on_progress=on_progress, cancel=cancel)
    assert [o["status"] for o in out] == [CANCELLED] * 3 and all(o["kind"] == "cancelled" for o in out)
    assert progress and progress[0]["running"] == 2 and progress[0]["queued"] == 1


@pytest.mark.slow
def test_cli_sweep_on_ray_writes_the_drivers_store(ray_cluster, tiny_dir, tmp_path, monkeypatch, capsys):
    from pruning.__main__ import main

    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))  # the driver's store
    args = ["sweep", "--model", tiny_dir, "--solvers", "magnitude,wanda", "--sparsities", "0.5", "--calib", "pydoc",
            "--nsamples", "4", "--seqlen", "64", "--eval-windows", "2", "--device", "cpu", "--dtype", "float32",
            "--max-new-tokens", "2", "--batch-size", "2"]
    assert main([*args, "--executor", "ray"]) == 0
    err = capsys.readouterr().err
    assert "sweep: 2 runs on the ray executor" in err and "done 2 · failed 0" in err
    store = ResultStore()
    ray_runs = {r["key"]: r for r in store.list_runs()}
    store.close()
    assert len(ray_runs) == 2
    assert main([*args, "--resume"]) == 0  # the local executor finds what Ray ran
    assert capsys.readouterr().err.count("reused") == 2


# -- local executor, the driver, the CLI (no Ray) -----------------------------------------------------------------
def _fake_report(config, i=0):
    """A report as run_job writes it, of the model as this process loads it (its fingerprint: what resume matches)."""
    from pruning.jobs import fingerprint_for_config

    fp = fingerprint_for_config(config)
    return {"config": config.to_dict(), "key": config.key(), "model": {"id": config.model, "fingerprint": fp},
            "perplexity": {"dense": 10.0, "pruned": 12.0 + i}, "sparsity": config.sparsity,
            "layers": [{"block": 0, "name": "q", "rel_error": 0.1, "sparsity": config.sparsity}],
            "timings": {"prune_total": 0.5}, "warnings": [], "run_id": f"{config.key()}-{fp[:8]}", "mask_sha256": "ab" * 32}


def test_local_executor_failed_row_and_cancel(tiny_dir):
    configs = [small(tiny_dir, solver="magnitude", sparsity=s) for s in (0.2, 0.3, 0.4)]
    cancel = threading.Event()

    def run_fn(config, on_event, job_cancel):
        if config.sparsity == 0.2:
            raise RuntimeError("boom")  # a plain exception of the run: one failed row, kind internal
        if config.sparsity == 0.3:
            cancel.set()  # the user cancels while this run is running: it stops at its next check
            deadline = time.monotonic() + 60
            while not job_cancel.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            raise ev.Cancelled("cancelled by the user")
        return _fake_report(config)

    reported = []
    with LocalExecutor(run_fn=run_fn) as ex:
        out = ex.run(configs, on_report=lambda i, r: reported.append(i), cancel=cancel)
    assert out[0]["status"] == FAILED and out[0]["message"] == "RuntimeError: boom" and out[0]["kind"] == "internal"
    assert out[1]["status"] == CANCELLED and out[2]["status"] == CANCELLED  # the queued one never ran
    assert sorted(reported) == [0, 1, 2]


def test_ctrl_c_cancels_and_is_raised_again(tiny_dir):
    configs = [small(tiny_dir, solver="magnitude", sparsity=s) for s in (0.2, 0.3)]
    started = threading.Event()

    def run_fn(config, on_event, job_cancel):
        started.set()
        deadline = time.monotonic() + 60
        while not job_cancel.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise ev.Cancelled("cancelled by the user")

    def on_progress(counts):
        if started.is_set():
            raise KeyboardInterrupt  # as if Ctrl-C arrived while the driver waits

    reported = []
    ex = LocalExecutor(run_fn=run_fn)
    with pytest.raises(KeyboardInterrupt):
        ex.run(configs, on_report=lambda i, r: reported.append(r["status"]), on_progress=on_progress)
    ex.close()
    assert reported == [CANCELLED, CANCELLED]
    assert all(j.cancel_event.is_set() for j in ex._jobs)  # the runs themselves were told to stop


def test_run_sweep_stores_once_and_resumes(tiny_dir, tmp_path):
    configs = [small(tiny_dir, solver="magnitude", sparsity=s) for s in (0.2, 0.3)]
    calls = []

    def run_fn(config, on_event, cancel):
        calls.append(config.sparsity)
        return _fake_report(config, len(calls))

    store = ResultStore(tmp_path / "store")
    with LocalExecutor(run_fn=run_fn) as ex:
        _, st = run_sweep(configs, ex, store=store)
        assert st == [DONE, DONE] and len(store) == 2
        _, st = run_sweep(configs, ex, store=store, resume=True)
        assert st == [STORED, STORED] and calls == [0.2, 0.3]
        _, st = run_sweep(configs, ex, store=store)  # without --resume: everything runs again
    assert st == [DONE, DONE] and calls == [0.2, 0.3, 0.2, 0.3] and len(store) == 2
    store.close()


def _cli_args(model, *extra):
    return ["sweep", "--model", model, "--solvers", "magnitude,wanda", "--sparsities", "0.3,0.5", "--calib", "pydoc",
            "--nsamples", "4", "--seqlen", "64", "--eval-windows", "2", "--device", "cpu", "--dtype", "float32",
            "--max-new-tokens", "2", "--batch-size", "2", *extra]


def test_cli_sweep_out_files_and_resume(tiny_dir, tmp_path, monkeypatch, capsys):
    from pruning.__main__ import main

    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(_cli_args(tiny_dir, "--out", str(out))) == 0
    cap = capsys.readouterr()
    assert "sweep: 4 runs on the local executor" in cap.err and "done 4 · failed 0 · running 0" in cap.err
    assert cap.out.count("  done") == 4
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["target"], r["status"]) for r in rows] == [
        ("magnitude", "0.3", "done"), ("magnitude", "0.5", "done"), ("wanda", "0.3", "done"), ("wanda", "0.5", "done")]
    assert all(len(r["mask_sha256"]) == 64 and float(r["pruned_ppl"]) > 1 for r in rows)
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["run_id"] for r in doc["rows"]] == [r["run_id"] for r in rows] == [r["run_id"] for r in doc["runs"]]
    assert float(rows[3]["pruned_ppl"]) == doc["runs"][3]["perplexity"]["pruned"]
    page = (out / "sweep.html").read_text()
    assert "<html" in page and "Perplexity vs sparsity" in page and "magnitude · unstructured" in page
    assert 'src="https://cdn.plot.ly' not in page and len(page) > 1_000_000  # plotly.js inline: opens offline
    from pruning.results import load_precomputed

    pre, problems = load_precomputed(out)  # sweep.json is the format the Compare tab reads
    assert len(pre) == 4 and not problems
    # again with --resume: nothing runs, the same table
    assert main(_cli_args(tiny_dir, "--out", str(out), "--resume")) == 0
    cap = capsys.readouterr()
    assert cap.err.count("reused") == 4
    with open(out / "sweep.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert [r["status"] for r in again] == ["stored"] * 4
    assert [(r["run_id"], r["pruned_ppl"]) for r in again] == [(r["run_id"], r["pruned_ppl"]) for r in rows]


def test_cli_sweep_failed_rows_exit_1_and_store_nothing(tmp_path, monkeypatch, capsys):
    from pruning.__main__ import main

    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    assert main(_cli_args(str(tmp_path / "no-such-model"), "--out", str(tmp_path / "out"))) == 1
    cap = capsys.readouterr()
    assert cap.out.count("failed: input: model") == 4 and "4 of 4 runs failed" in cap.err
    assert len(ResultStore()) == 0
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["failed"] * 4 and rows[0]["message"].startswith("input: model")


def test_cli_sweep_without_ray_names_the_install_command(tiny_dir, tmp_path, monkeypatch, capsys):
    from pruning.__main__ import main

    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    assert main(_cli_args(tiny_dir, "--executor", "ray", "--out", str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: executor: ray is not installed") and "pip install -r requirements-scale.txt" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "results").exists()  # before any work


@pytest.mark.parametrize("address,words", [
    ("127.0.0.1:9", "no Ray cluster answers at 127.0.0.1:9"),  # nothing listens on the discard port
    ("not-an-address", "is not an address; allowed: auto, HOST:PORT"),
])
def test_cli_sweep_unreachable_ray_address(tiny_dir, tmp_path, monkeypatch, capsys, address, words):
    pytest.importorskip("ray", reason="the optional extra: pip install -r requirements-scale.txt")
    from pruning.__main__ import main

    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    assert main(_cli_args(tiny_dir, "--executor", "ray", "--ray-address", address, "--out", str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-address: ") and words in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "results").exists()


def test_executor_flags_are_checked(tiny_dir, capsys):
    from pruning.__main__ import main

    assert main(_cli_args(tiny_dir, "--ray-address", "auto")) == 2
    assert "--ray-address: only with --executor ray" in capsys.readouterr().err
    with pytest.raises(ExecutorError, match="--ray-cpus-per-task"):
        RayExecutor(cpus_per_task=0)
    with pytest.raises(ExecutorError, match="device: 'cuda:1' cannot be used with --executor ray"):
        RayExecutor().check([small(tiny_dir, device="cuda:1")])
    with pytest.raises(SystemExit):
        main(_cli_args(tiny_dir, "--executor", "dask"))
    assert "invalid choice: 'dask'" in capsys.readouterr().err


def test_a_local_ray_that_does_not_start_is_a_clear_message(tiny_dir, tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray", reason="the optional extra: pip install -r requirements-scale.txt")
    from pruning.__main__ import main

    def timed_out(**kw):  # what ray.init raises when its node does not come up in time (seen on a busy machine)
        raise Exception("The current node timed out during startup.")

    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", timed_out)
    assert main(_cli_args(tiny_dir, "--executor", "ray", "--out", str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: executor: could not start a local Ray instance (Exception: The current node timed out")
    assert "--executor local" in err and not (tmp_path / "out").exists()


def test_cli_ctrl_c_exits_130_with_the_finished_rows(tiny_dir, tmp_path, monkeypatch, capsys):
    import pruning.executors as executors
    from pruning.__main__ import main

    def first_then_ctrl_c(configs, executor, store=None, resume=False, on_outcome=None, on_progress=None, cancel=None):
        on_outcome(0, _fake_report(configs[0]), DONE)
        raise KeyboardInterrupt  # the executor has cancelled the rest (test_ctrl_c_cancels_and_is_raised_again)

    monkeypatch.setenv("PRUNING_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(executors, "run_sweep", first_then_ctrl_c)
    assert main(_cli_args(tiny_dir, "--out", str(tmp_path / "out"))) == 130
    cap = capsys.readouterr()
    assert "cancelled: 3 runs not started or not finished; the 1 finished ones are in the result store" in cap.err
    assert cap.out.count("  done") == 1
    rows = json.loads((tmp_path / "out" / "sweep.json").read_text())["rows"]
    assert [(r["method"], r["target"], r["status"]) for r in rows] == [("magnitude", 0.3, "done")]
