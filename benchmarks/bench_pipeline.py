"""Pipeline benchmark on SmolLM2: time per phase, whole prune vs its floor, batched vs batch-1, end-to-end.

    python benchmarks/bench_pipeline.py [--solvers magnitude,wanda,sparsegpt] [--nsamples 16] [--seqlen 512]
                                        [--dtype auto] [--device auto] [--json out.json] [--no-batch1] [--no-e2e]

Floor: the dense forward passes the sequential algorithm cannot avoid over the same calibration tokens —
capturing block-0 inputs, then every block run twice (once for statistics, once to propagate the pruned
outputs) — measured in the same run with no hooks and no solver. Target: prune ≤ 1.3 × (floor + solve).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pruning.blocks import find_blocks  # noqa: E402
from pruning.api import cpu_has_native_bf16, estimate_seconds, get_model, run_job  # noqa: E402
from pruning.config import CalibConfig, PruneConfig  # noqa: E402
from pruning.data import calibration_windows  # noqa: E402
from pruning.pipeline import BlockInputs, capture_inputs, prune_model, run_block  # noqa: E402


def floor_seconds(model, windows, batch_size) -> float:
    _, blocks = find_blocks(model)
    t0 = time.perf_counter()
    inputs = capture_inputs(model, windows, batch_size)
    for blk in blocks:
        run_block(blk, inputs)  # statistics pass (without hooks)
        inputs = BlockInputs(run_block(blk, inputs), inputs.args, inputs.kwargs)  # propagation pass
    return time.perf_counter() - t0


def cpu_description() -> str:
    """CPU model, PyTorch's vector capability and whether bf16 is native (what decides the forward dtype)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor()} ({torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()})"


@contextlib.contextmanager
def reference_style():
    """Our pipeline with the reference code's cost structure: one Gram per linear (q, k, v and gate, up each their
    own), full Xᵀ X products (no symmetric half) and a whole dense block forward in the statistics pass (its
    outputs unused). Use with batch_size=1 for "the same forwards at batch 1"."""
    from pruning import pipeline as pl

    class OneGramPerLinear(pl.GramCollector):
        def _find_leader(self, name, x):  # never share: every linear accumulates its own Gram
            return name

    orig, block, collector = pl.collect_grams, pl.SYRK_BLOCK, pl.GramCollector
    pl.collect_grams = lambda *a, **kw: orig(*a, **{**kw, "need_outputs": True})
    pl.GramCollector = OneGramPerLinear
    pl.SYRK_BLOCK = 1 << 30
    try:
        yield
    finally:
        pl.collect_grams, pl.SYRK_BLOCK, pl.GramCollector = orig, block, collector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--solvers", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-batch1", action="store_true")
    ap.add_argument("--no-e2e", action="store_true")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    model, tok, _ = get_model("smollm2-135m", a.device, a.dtype)
    dev = next(model.parameters()).device
    windows = calibration_windows(tok, nsamples=a.nsamples, seqlen=a.seqlen, seed=0)
    floor_seconds(model, windows[:2], a.batch_size)  # warm-up
    floor = min(floor_seconds(model, windows, a.batch_size) for _ in range(2))
    rows = []
    print(f"device {dev} dtype {next(model.parameters()).dtype} threads {torch.get_num_threads()} "
          f"calibration {a.nsamples}×{a.seqlen}; floor (capture + 2 block passes) {floor:.2f}s")
    hdr = f"{'solver':<11}{'batch':>6}{'floor':>7}{'capture':>9}{'calib fwd':>10}{'stats':>8}{'solve':>8}{'propag':>8}{'total':>8}{'floor+solve':>12}{'ratio':>7}"
    print(hdr)
    for solver in [s for s in a.solvers.split(",") if s]:
        runs = [(a.batch_size, False)]
        if not a.no_batch1 and solver == "sparsegpt":
            runs += [(1, False), (1, True)]
        for bs, ref in runs:
            cfg = PruneConfig(solver=solver, sparsity=0.5, batch_size=bs, calib=CalibConfig(nsamples=a.nsamples, seqlen=a.seqlen))
            # the floor again, right before this row: the machine's speed drifts by ±15 % over minutes, and a ratio
            # against a floor measured ten minutes earlier would measure the drift
            fl = floor_seconds(model, windows, a.batch_size)
            m = copy.deepcopy(model)
            with reference_style() if ref else contextlib.nullcontext():
                rep = prune_model(m, tok, cfg, windows=windows)
            t = rep["timings"]
            ratio = t["total"] / (fl + t["solve"])
            row = {"solver": solver, "batch_size": bs, "reference_style": ref, **t, "floor": fl, "floor_at_start": floor,
                   "ratio_to_floor_plus_solve": ratio}
            rows.append(row)
            label = solver + (" (ref)" if ref else "")
            print(f"{label:<11}{bs:>6}{fl:>7.2f}{t['capture']:>9.2f}{t['calibration_forward']:>10.2f}{t['statistics']:>8.2f}{t['solve']:>8.2f}"
                  f"{t['propagate']:>8.2f}{t['total']:>8.2f}{fl + t['solve']:>12.2f}{ratio:>7.2f}", flush=True)
            del m
    b8 = [r for r in rows if r["solver"] == "sparsegpt" and r["batch_size"] == a.batch_size]
    b1 = [r for r in rows if r["solver"] == "sparsegpt" and r["batch_size"] == 1 and not r["reference_style"]]
    b1_ref = [r for r in rows if r["solver"] == "sparsegpt" and r["reference_style"]]
    out = {"machine": platform.processor() or platform.machine(), "cpu": cpu_description(), "device": str(dev),
           "dtype": str(next(model.parameters()).dtype), "threads": torch.get_num_threads(),
           "nsamples": a.nsamples, "seqlen": a.seqlen, "floor": floor, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    fwd = lambda r: r["capture"] + r["calibration_forward"] + r["statistics"] + r["propagate"]  # noqa: E731
    if b8 and b1:
        out["batched_vs_batch1_forward_speedup"] = fwd(b1[0]) / fwd(b8[0])
        out["batched_vs_batch1_total_speedup"] = b1[0]["total"] / b8[0]["total"]
        print(f"sequential pipeline forwards, batch {a.batch_size} vs batch 1: {out['batched_vs_batch1_forward_speedup']:.2f}× faster "
              f"(whole prune {out['batched_vs_batch1_total_speedup']:.2f}×)")
    if b8 and b1_ref:
        out["vs_reference_style_forward_speedup"] = fwd(b1_ref[0]) / fwd(b8[0])
        out["vs_reference_style_total_speedup"] = b1_ref[0]["total"] / b8[0]["total"]
        print(f"forwards + statistics, ours (batch {a.batch_size}, shared Grams, symmetric products) vs reference style "
              f"(batch 1, a Gram per linear, full products): {out['vs_reference_style_forward_speedup']:.2f}× faster "
              f"(whole prune {out['vs_reference_style_total_speedup']:.2f}×)")
    if not a.no_e2e:
        from pruning import cost_model

        cfg = PruneConfig(device=a.device, dtype=a.dtype)  # the app's default config
        cost_model.reset_corrections()
        est_cold = estimate_seconds(cfg)  # what the page shows before the first run (no correction yet)
        run_job(cfg)  # fills the dense-evaluation cache, as the app does once per model
        est_warm = estimate_seconds(cfg)  # after one run of the same kind
        t0 = time.perf_counter()
        rep = run_job(cfg)
        wall = time.perf_counter() - t0
        out["end_to_end_default"] = {"wall": wall, "timings": rep["timings"], "ppl": rep["perplexity"], "config": cfg.to_dict(),
                                     "estimate_before_any_run": est_cold, "estimate_after_one_run": est_warm}
        print(f"default config end to end (dense evaluation cached): {wall:.1f}s wall; phases "
              + ", ".join(f"{k} {v:.1f}" for k, v in rep["timings"].items()) + f"; ppl {rep['perplexity']}")
        print(f"estimate shown before it: {est_cold:.1f}s before any run, {est_warm:.1f}s after one run")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
