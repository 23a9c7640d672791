"""The default job through the app (gradio_client against ``python app.py``, jobs in the worker process) vs the same
job through the CLI (``python -m pruning run``), alternating, in one run of this script.

    python benchmarks/bench_worker.py [--runs 1] [--out benchmarks/results/worker.json]

The job: SparseGPT 50 %, calibration 16 × 512 tokens of the embedded Wikipedia text, the CPU default evaluation
(16 × 512), the embedded SmolLM2; a new calibration seed per run so the result cache never answers; the dense
evaluation cached (both read the same dense-baseline cache). The app and the CLI run against a private cache root
(its own result store) whose model, text and dense-baseline folders link to the shared ones. Prints one row per
run: the report's phase timings and end-to-end seconds (without the model load: the app's worker holds the model,
the CLI loads it), plus the wall time the client waited.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("calibration_forward", "statistics", "solve", "propagate", "pruned_eval", "generate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache_root() -> Path:
    shared = Path(os.environ.get("PRUNING_LAB_CACHE") or Path.home() / ".cache" / "pruning-lab")
    root = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    for name in ("smollm2-135m-instruct", "text", "dense"):
        if (shared / name).exists():
            (root / name).symlink_to(shared / name)
    return root


def _row(kind: str, rep: dict, wall: float) -> dict:
    t = rep["timings"]
    return {"via": kind, "seed": rep["config"]["calib"]["seed"], **{k: round(t.get(k, 0.0), 1) for k in PHASES},
            "load": round(t.get("load", 0.0), 1), "end_to_end_wo_load": round(t["end_to_end"] - t.get("load", 0.0), 1),
            "wall": round(wall, 1), "dense_cached": rep.get("dense_cached"), "evaluation": rep["evaluation"], "ppl": rep["perplexity"]["pruned"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="app+CLI pairs, alternating")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--nsamples", type=int, default=16, help="calibration windows (default 16: the default job)")
    ap.add_argument("--seqlen", type=int, default=512, help="tokens per window, calibration and evaluation")
    ap.add_argument("--eval-windows", type=int, default=16, help="evaluation windows (default 16)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops the server below (finally)
    root = _cache_root()
    env = {**os.environ, "PRUNING_LAB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}
    port = _free_port()
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env={**env, "PRUNING_LAB_PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        from gradio_client import Client

        deadline = time.monotonic() + 900
        client = None
        while client is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 -- not up yet
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the app did not start")
                time.sleep(2)
        # the server's warm-up loads the model in the worker before launch; one tiny config checks the worker is up
        for i in range(a.runs):
            seed = 1000 + i
            cfg = {"solver": "sparsegpt", "sparsity": 0.5, "calib": {"nsamples": a.nsamples, "seqlen": a.seqlen, "seed": seed},
                   "eval": {"windows": a.eval_windows, "seqlen": a.seqlen}}
            t0 = time.perf_counter()
            out = client.predict(cfg, api_name="/prune")
            rows.append(_row("app", out[6], time.perf_counter() - t0))
            print(json.dumps(rows[-1]), flush=True)
            js = root / f"cli-{i}.json"
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "pruning", "run", "--solver", "sparsegpt", "--sparsity", "0.5",
                                "--nsamples", str(a.nsamples), "--seqlen", str(a.seqlen), "--eval-windows", str(a.eval_windows),
                                "--eval-seqlen", str(a.seqlen), "--seed", str(seed + 500), "--quiet", "--json", str(js)],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
            if p.returncode != 0:
                raise SystemExit(p.stderr[-2000:])
            rows.append(_row("cli", json.loads(js.read_text()), time.perf_counter() - t0))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    for via in ("app", "cli"):
        e = [r["end_to_end_wo_load"] for r in rows if r["via"] == via]
        print(f"{via}: end to end without load {e}")
    app_ = [r["end_to_end_wo_load"] for r in rows if r["via"] == "app"]
    cli_ = [r["end_to_end_wo_load"] for r in rows if r["via"] == "cli"]
    print(f"app / CLI = {sum(app_) / sum(cli_):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
