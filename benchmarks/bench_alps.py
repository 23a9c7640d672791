"""ALPS vs ADMM-Grad vs SparseGPT on real SmolLM2-135M layers: per-layer relative error and seconds.

    python benchmarks/bench_alps.py [--blocks 0,7,15,23,29] [--names all] [--settings 50%,70%,2:4]
                                    [--nsamples 16] [--seqlen 512] [--threads 0] [--json benchmarks/results/alps.json]
                                    [--save-problems F.pt] [--load-problems F.pt]

Every solver runs at its registry defaults on the same weight and the same Gram (dense statistics of the
chosen blocks, calibration windows with seed 0, as pruning.pipeline.capture_layer_problems gives them).
Error = ‖WX − ŴX‖²/‖WX‖² (pruning.solve.rel_error); seconds = wall time of prune_layer. Printed: one row
per layer and setting, then per setting the mean and median of the ratio ALPS/ADMM-Grad and
ALPS/SparseGPT, the share of layers where ALPS ≤ ADMM-Grad, and total seconds. ``--save-problems`` keeps the
captured (W, G) so another run (or another implementation) can use exactly the same layers.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pruning import prune_layer  # noqa: E402
from pruning.solvers import LayerProblem  # noqa: E402

SOLVERS_RUN = (("alps", "alps"), ("admm-grad", "admm"), ("sparsegpt", "sparsegpt"))
SETTINGS = {"50%": ("unstructured", 0.5), "70%": ("unstructured", 0.7), "2:4": ("2:4", 0.5)}
ALL_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def capture(blocks: list[int], names: list[str], nsamples: int, seqlen: int) -> dict[tuple[int, str], LayerProblem]:
    from pruning.api import get_model
    from pruning.data import calibration_windows
    from pruning.pipeline import capture_layer_problems

    model, tok, _ = get_model("smollm2-135m", "cpu", "float32")
    win = calibration_windows(tok, nsamples=nsamples, seqlen=seqlen, seed=0)
    return capture_layer_problems(model, tok, win, blocks=blocks, names=names, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", default="0,7,15,23,29")
    ap.add_argument("--names", default="all", help="comma-separated linear names, or 'all' (the 7 linears)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"subset of {list(SETTINGS)}")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    ap.add_argument("--json", default="benchmarks/results/alps.json")
    ap.add_argument("--save-problems", default=None, help="write the captured {(block, name): (W, G, n_tokens)} here")
    ap.add_argument("--load-problems", default=None, help="use problems saved by --save-problems instead of capturing")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    unknown = [s for s in a.settings.split(",") if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: {unknown} unknown; allowed: {list(SETTINGS)}")
    blocks = [int(b) for b in a.blocks.split(",")]
    names = list(ALL_NAMES) if a.names == "all" else a.names.split(",")

    t0 = time.perf_counter()
    if a.load_problems:
        raw = torch.load(a.load_problems)
        probs = {k: LayerProblem(W=W, G=G, n_tokens=n, name=f"{k[0]}.{k[1]}") for k, (W, G, n) in raw.items()
                 if k[0] in blocks and k[1] in names}
    else:
        probs = capture(blocks, names, a.nsamples, a.seqlen)
    if a.save_problems:
        torch.save({k: (p.W, p.G, p.n_tokens) for k, p in probs.items()}, a.save_problems)
    capture_s = time.perf_counter() - t0
    print(f"{len(probs)} layers ready in {capture_s:.1f} s; torch threads {torch.get_num_threads()}")

    rows = []
    hdr = f"{'setting':7} {'layer':24} " + " ".join(f"{lab + ' err':>14} {'s':>6}" for lab, _ in SOLVERS_RUN) + f" {'ALPS/ADMM':>9} {'it':>4}"
    print(hdr)
    for setting in a.settings.split(","):
        pattern, s = SETTINGS[setting]
        for (b, name), p in sorted(probs.items()):
            row = {"setting": setting, "block": b, "name": name, "shape": list(p.W.shape)}
            for lab, solver in SOLVERS_RUN:
                t = time.perf_counter()
                sol = prune_layer(p.W, p.G, p.n_tokens, solver=solver, sparsity=s, pattern=pattern)
                row[lab] = {"rel_error": sol.rel_error, "seconds": time.perf_counter() - t}
                if solver == "alps":
                    row[lab].update({k: sol.info[k] for k in ("iterations", "cg_steps", "stop_reason", "restarts",
                                                               "rho_final", "objective_before_cg")})
            row["ratio_admm"] = row["alps"]["rel_error"] / row["admm-grad"]["rel_error"]
            row["ratio_sparsegpt"] = row["alps"]["rel_error"] / row["sparsegpt"]["rel_error"]
            rows.append(row)
            print(f"{setting:7} {f'{b}.{name}':24} "
                  + " ".join(f"{row[lab]['rel_error']:14.5g} {row[lab]['seconds']:6.2f}" for lab, _ in SOLVERS_RUN)
                  + f" {row['ratio_admm']:9.3f} {row['alps']['iterations']:4d}", flush=True)

    summary = {}
    print("\nsetting  mean ALPS/ADMM  median  ALPS<=ADMM  mean ALPS/SparseGPT  seconds ALPS / ADMM / SparseGPT")
    for setting in a.settings.split(","):
        rs = [r for r in rows if r["setting"] == setting]
        ra = [r["ratio_admm"] for r in rs]
        rg = [r["ratio_sparsegpt"] for r in rs]
        secs = {lab: sum(r[lab]["seconds"] for r in rs) for lab, _ in SOLVERS_RUN}
        summary[setting] = {"layers": len(rs), "mean_ratio_alps_admm": statistics.fmean(ra),
                            "median_ratio_alps_admm": statistics.median(ra),
                            "share_alps_le_admm": sum(x <= 1 for x in ra) / len(ra),
                            "mean_ratio_alps_sparsegpt": statistics.fmean(rg), "seconds": secs}
        sm = summary[setting]
        print(f"{setting:7}  {sm['mean_ratio_alps_admm']:14.3f}  {sm['median_ratio_alps_admm']:6.3f}  "
              f"{sm['share_alps_le_admm']:10.0%}  {sm['mean_ratio_alps_sparsegpt']:19.3f}  "
              + " / ".join(f"{secs[lab]:.1f}" for lab, _ in SOLVERS_RUN))

    out = {
        "command": " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "layers": f"SmolLM2-135M blocks {a.blocks}, {', '.join(names)}",
        "calibration": f"{a.nsamples}x{a.seqlen}, seed 0" if not a.load_problems else f"loaded from {a.load_problems}",
        "capture_seconds": capture_s,
        "rows": rows,
        "summary": summary,
    }
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
