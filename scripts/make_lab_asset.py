"""Write assets/lab: the lab tab's opening layer, one real SmolLM2 layer computed with every lab solver.

    python scripts/make_lab_asset.py [--block 15] [--projection self_attn.q_proj] [--sparsity 0.6] [--out assets/lab]

Runs ``pruning.lab.run_lab`` on the embedded SmolLM2-135M (CPU, float32, the lab's default calibration: 8 windows
× 256 tokens of the embedded Wikipedia sample) and stores its display record as plain data: ``lab.json`` (errors,
traces, histograms, settings) and ``mask.npz`` (the mask-agreement codes, uint8, and the dense weights, float16).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--block", type=int, default=15)
    p.add_argument("--projection", default="self_attn.q_proj")
    p.add_argument("--sparsity", type=float, default=0.6)
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--admm-iters", type=int, default=20)
    p.add_argument("--fw-iters", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / "assets" / "lab"))
    a = p.parse_args(argv)

    from pruning.api import model_info
    from pruning.lab import run_lab
    from ui.lab_view import present, save_asset

    t0 = time.perf_counter()
    info = model_info(a.model, "cpu", "float32")
    res = run_lab(a.model, a.block, a.projection, a.sparsity, a.pattern, a.nsamples, a.seqlen, admm_iters=a.admm_iters,
                  sparsefw_iters=a.fw_iters, device="cpu", dtype="float32", on_status=lambda s: print(" ", s, flush=True))
    view = present(res)
    settings = {"model": a.model, "block": a.block, "projection": a.projection, "sparsity": a.sparsity, "pattern": a.pattern,
                "nsamples": a.nsamples, "seqlen": a.seqlen, "admm_iters": a.admm_iters, "fw_iters": a.fw_iters,
                "n_blocks": info["n_blocks"], "linears": info["linears"], "device": "cpu", "dtype": "float32"}
    save_asset(view, a.out, settings)
    g = {k: round(v["rel_error"], 4) for k, v in view["greedy"].items() if v.get("available")}
    it = {k: round(v["rel_error"], 4) for k, v in view["iterative"].items() if v.get("available")}
    print(f"wrote {a.out} in {time.perf_counter() - t0:.0f} s: greedy {g}, iterative {it}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
