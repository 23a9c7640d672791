"""Our SparseGPT vs the official IST-DASLab/sparsegpt ``fasterprune`` on the same real SmolLM2 layers.

    git clone <mirror of IST-DASLab/sparsegpt> /tmp/sparsegpt-official      # read-only use, never committed
    python benchmarks/bench_sparsegpt_official.py /tmp/sparsegpt-official [--blocks 0,10,20,29] [--json out.json]

Both get the same fp32 weight and the same Gram (theirs through ``add_batch`` on the same activations'
Gram, i.e. H = 2/n·G: the scale cancels in the relative damping). Compared: relative error, pruned count,
mask agreement and time per layer. Expected: 2:4 and 4:8 masks identical up to fp ties; unstructured masks
differ only where the official ``<=`` threshold prunes extra tied weights and where our exact per-matrix
budget is distributed over the 128-column blocks.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pruning import prune_layer, rel_error  # noqa: E402
from pruning.api import get_model  # noqa: E402
from pruning.data import calibration_windows  # noqa: E402
from pruning.pipeline import capture_layer_problems  # noqa: E402


def official_prune(mod, W, G, n_tokens, sparsity, prunen, prunem):
    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = W.clone()
    sg = mod.SparseGPT(layer)
    sg.H = G.clone() * (2.0 / max(n_tokens, 1))  # their running average: H = 2/n Σ x xᵀ
    sg.nsamples = n_tokens
    t0 = time.perf_counter()
    sg.fasterprune(sparsity, prunen=prunen, prunem=prunem, blocksize=128, percdamp=0.01)
    return layer.weight.data.clone(), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("official_dir")
    ap.add_argument("--blocks", default="0,10,20,29")
    ap.add_argument("--names", default="self_attn.q_proj,self_attn.o_proj,mlp.gate_proj,mlp.down_proj")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sys.path.insert(0, a.official_dir)
    torch.cuda.synchronize = lambda *x, **k: None  # the official code synchronises unconditionally
    import builtins

    real_print = builtins.print
    mod = importlib.import_module("sparsegpt")
    commit = subprocess.run(["git", "-C", a.official_dir, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    model, tok, _ = get_model("smollm2-135m", "cpu", "float32")
    win = calibration_windows(tok, nsamples=a.nsamples, seqlen=a.seqlen, seed=0)
    probs = capture_layer_problems(model, tok, win, blocks=[int(b) for b in a.blocks.split(",")], names=a.names.split(","))
    rows = []
    real_print(f"official commit {commit}; {len(probs)} layers; calibration {a.nsamples}×{a.seqlen}")
    real_print(f"{'layer':<26}{'pattern':<13}{'err ours':>10}{'err theirs':>11}{'pruned ours':>12}{'theirs':>9}{'mask agree':>11}{'t ours':>8}{'t theirs':>9}")
    for (b, name), p in probs.items():
        for pat, s, n, m in (("unstructured", 0.5, 0, 0), ("unstructured", 0.7, 0, 0), ("2:4", 0.5, 2, 4), ("4:8", 0.5, 4, 8)):
            ours = prune_layer(p.W, p.G, p.n_tokens, solver="sparsegpt", sparsity=s, pattern=pat)
            t_ours = ours.seconds  # the solve only: prune_layer's float64 rel_error comes after it, theirs has none
            builtins.print = lambda *x, **k: None  # silence their prints
            try:
                Wt, t_theirs = official_prune(mod, p.W, p.G, p.n_tokens, s, n, m)
            finally:
                builtins.print = real_print
            e_theirs = rel_error(p.W, Wt, p.G)
            agree = float(((Wt != 0) == ours.mask).float().mean())
            row = {"block": b, "name": name, "pattern": pat, "sparsity": s, "err_ours": ours.rel_error, "err_theirs": e_theirs,
                   "pruned_ours": int((ours.weight == 0).sum()), "pruned_theirs": int((Wt == 0).sum()), "mask_agreement": agree,
                   "seconds_ours": t_ours, "seconds_theirs": t_theirs}
            rows.append(row)
            real_print(f"{b:>2} {name:<23}{pat + ' ' + str(s):<13}{ours.rel_error:>10.5f}{e_theirs:>11.5f}{row['pruned_ours']:>12}"
                       f"{row['pruned_theirs']:>9}{agree:>11.4f}{t_ours:>8.3f}{t_theirs:>9.3f}")
    tot_o, tot_t = sum(r["seconds_ours"] for r in rows), sum(r["seconds_theirs"] for r in rows)
    real_print(f"total time ours {tot_o:.2f}s theirs {tot_t:.2f}s (ratio {tot_t / tot_o:.2f}× in our favour if > 1)")
    if a.json:
        Path(a.json).write_text(json.dumps({"commit": commit, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
