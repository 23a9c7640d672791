"""The interactive default through the app (issue 18): seconds and "forwards" from Run to the first layer, to the
first running perplexity and to the end, plus the estimate shown before Run.

    python benchmarks/bench_interactive.py [--nsamples N --seqlen L --eval-windows E] [--solvers sparsegpt,...]
                                           [--library] [--json out.json]

Unit: one dense 512-token SmolLM2 forward (float32, batch 1, best of 5), measured in the same process right before
each job, so figures taken on a loaded machine stay comparable. Each job gets a fresh calibration seed (the result
cache must not answer); the dense evaluation is computed once first (cached, as for a returning visitor). The app
path runs ``ui.warm_up`` before the first job, as ``python app.py`` does before the page enables Run, and takes the
estimate from the app's ``/estimate`` endpoint (the figure the page shows). Default:
the app launched in this process (``ui.build_app``, as ``python app.py`` serves it) driven through gradio_client;
``--library``: ``run_job`` directly (the CLI's path).

The app's jobs use ``dtype=auto``. To measure as on a free CPU Space (no native bf16, so float32) on a machine that
has avx512_bf16, run with ``PRUNING_LAB_CPU_BF16=0`` (the worker process inherits it); the JSON records the dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pruning import events as ev  # noqa: E402
from pruning.api import estimate_seconds, get_model, run_job  # noqa: E402
from pruning.config import CalibConfig, EvalConfig, PruneConfig  # noqa: E402


def forward_seconds(model, repeat: int = 5) -> float:
    ids = torch.randint(0, 1000, (1, 512), generator=torch.Generator().manual_seed(0))
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeat):
            t = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            best = min(best, time.perf_counter() - t)
    return best


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def via_library(cfg: PruneConfig) -> dict:
    marks: dict[str, float] = {}
    t0 = time.perf_counter()

    def on_event(e):
        now = time.perf_counter() - t0
        if isinstance(e, ev.LayerSolved):
            marks.setdefault("first_layer", now)
        elif isinstance(e, ev.EvalProgress) and e.which == "pruned":
            marks.setdefault("first_running_ppl", now)
        elif isinstance(e, ev.GenerationProgress) and e.which == "pruned":
            marks.setdefault("first_token", now)

    rep = run_job(cfg, on_event=on_event)
    marks["end"] = time.perf_counter() - t0
    return {"marks": marks, "report": rep}


def via_app(client, cfg: PruneConfig) -> dict:
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    last = None
    updates = 0
    for out in client.submit(cfg.to_dict(), api_name="/prune"):
        now = time.perf_counter() - t0
        updates += 1
        log, metrics = out[2], out[3]
        if isinstance(log, str) and re.search(r"block\s+0 \S+\s+err", log):
            marks.setdefault("first_layer", now)  # the first solved layer is on the page (plot, table and log)
        if isinstance(metrics, str) and re.search(r"after \d+/\d+ windows", metrics):
            marks.setdefault("first_running_ppl", now)
        last = out
    marks["end"] = time.perf_counter() - t0
    return {"marks": marks, "report": last[6], "updates": updates}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--solvers", default="sparsegpt")
    ap.add_argument("--nsamples", type=int, default=None)
    ap.add_argument("--seqlen", type=int, default=None)
    ap.add_argument("--eval-windows", type=int, default=None)
    ap.add_argument("--library", action="store_true")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("PRUNING_LAB_THREADS", torch.get_num_threads())))
    from ui.forms import parse_config

    base = parse_config({}, visitor=False)  # the app's default sizes on this device (INTERACTIVE_SIZES on a CPU)
    calib = CalibConfig(nsamples=args.nsamples or base.calib.nsamples, seqlen=args.seqlen or base.calib.seqlen)
    evalc = EvalConfig(windows=base.eval.windows if args.eval_windows is None else args.eval_windows,
                       seqlen=args.seqlen or base.eval.seqlen)
    model, tok, _ = get_model(base.model)
    # the dense evaluation once (cached for the jobs), through a tiny prune
    run_job(PruneConfig(solver="magnitude", calib=CalibConfig(nsamples=1, seqlen=32), eval=evalc))
    # that tiny job taught this process's cost model (corrections, frozen rates): forget it, so that the app served
    # from this process estimates as a freshly started `python app.py` does
    from pruning import cost_model
    from pruning.api import resolve_dtype

    cost_model.reset_corrections()
    cost_model.DEFAULT.forget_rates("cpu", resolve_dtype("auto", "cpu"))
    client = None
    if not args.library:
        from gradio_client import Client

        from ui import build_app, warm_up

        demo = build_app()
        warm_up()  # as `python app.py` does before the page enables Run: the worker's model, rates and text
        port = _free_port()
        demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                                       quiet=True)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    rows = []
    load0 = os.getloadavg()
    for i, solver in enumerate(args.solvers.split(",")):
        cfg = PruneConfig(solver=solver, calib=CalibConfig(nsamples=calib.nsamples, seqlen=calib.seqlen, seed=args.seed + i),
                          eval=evalc)
        # the estimate the page shows before Run (the server's cost model, corrected by the runs it has finished)
        est = estimate_seconds(cfg) if client is None else float(client.predict(cfg.to_dict(), api_name="/estimate"))
        fwd = forward_seconds(model)
        res = via_library(cfg) if client is None else via_app(client, cfg)
        fwd_after = forward_seconds(model)
        unit = (fwd + fwd_after) / 2
        t = res["report"]["timings"]
        row = {"solver": solver, "calib": f"{calib.nsamples}x{calib.seqlen}", "eval_windows": evalc.windows,
               "forward_s": round(fwd, 3), "forward_after_s": round(fwd_after, 3), "estimate_s": round(est, 2),
               "marks_s": {k: round(v, 2) for k, v in res["marks"].items()},
               "marks_forwards": {k: round(v / unit, 1) for k, v in res["marks"].items()},
               "timings": t, "ppl": res["report"]["perplexity"], "updates": res.get("updates"),
               "estimate_error": round(est / res["marks"]["end"] - 1, 3), "load": os.getloadavg()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    from pruning.api import cpu_has_native_bf16, resolve_dtype

    out = {"path": "library" if client is None else "app", "load_start": load0, "rows": rows,
           "dtype": str(resolve_dtype("auto", "cpu")), "native_bf16_used": cpu_has_native_bf16(),
           "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if client is not None:
        demo.close()


if __name__ == "__main__":
    main()
