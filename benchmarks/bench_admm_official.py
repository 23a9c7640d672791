"""Our ADMM vs the official fmfi-compbio/admm-pruning ``AdmmPruner.fasterprune`` on the same layers.

    git clone /work/.mirror/fmfi-compbio+admm-pruning/repo /tmp/admm-official      # read-only use, never committed
    python benchmarks/bench_admm_official.py /tmp/admm-official [--blocks 0,10,20,29] [--threads 1] [--repeat 3] [--json out.json]
    python benchmarks/bench_admm_official.py /tmp/admm-official --synthetic          # no model needed

Their class is imported at run time from the given checkout (expected commit 8039208); nothing of theirs is
in this repository. Both get the same fp32 weight and the same XX = Σ x xᵀ (their ``add_batch`` sums it
unnormalised, exactly our Gram G), with their defaults: percdamp 0.1, ρ 1, 20 iterations, 15 gradual.

Settings compared (theirs ↔ ours):
* unstructured, per_out=False ↔ the official schedule (their top-k uses the final sparsity at every gradual
  step; not a user option of ours: ``AdmmOptions(schedule="official")``, see ``run_ours``) and our default cubic one;
* per_out=True ↔ ``pattern="per-row"``;  2:4 ↔ ``pattern="2:4"`` (they support no other N:M);
* one-shot mask, iterative_prune=0 ↔ ``gradual_iters=0``.
Reported: relative error (pruning.solve.rel_error), pruned count, mask agreement, time per layer.
Expected: same errors up to fp round-off and ties (they invert with ``torch.inverse``, we invert from a Cholesky factor;
their ``>=`` thresholds may keep extra tied weights, our counts are exact).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_solvers import admm_variant, real_problems, synthetic_problems  # noqa: E402
from pruning import prune_layer, rel_error  # noqa: E402

EXPECTED_COMMIT = "8039208"

# (label, their fasterprune kwargs, sparsity, our pattern, our options)
SETTINGS = [
    ("unstructured 0.5", dict(prune_n=0, prune_m=0, per_out=False), 0.5, "unstructured", {"schedule": "official"}),
    ("unstructured 0.7", dict(prune_n=0, prune_m=0, per_out=False), 0.7, "unstructured", {"schedule": "official"}),
    ("per-row 0.7", dict(prune_n=0, prune_m=0, per_out=True), 0.7, "per-row", {}),
    ("2:4", dict(prune_n=2, prune_m=4, per_out=False), 0.5, "2:4", {}),
    ("one-shot 0.7", dict(prune_n=0, prune_m=0, per_out=False, iterative_prune=0), 0.7, "unstructured", {"gradual_iters": 0}),
]


def run_ours(p, s: float, pat: str, opts: dict, **extra):
    """``prune_layer(solver="admm")``; with ``schedule="official"`` in ``opts`` (the upstream quirk, a private
    ``AdmmOptions`` field and not a user option) through ``bench_solvers.admm_variant``, timed the same way."""
    opts = {**opts, **extra}
    schedule = opts.pop("schedule", "cubic")
    if schedule == "cubic":
        return prune_layer(p.W, p.G, p.n_tokens, solver="admm", sparsity=s, pattern=pat, **opts)
    return admm_variant(p, s, pat, opts, schedule)


def load_official(path: str):
    """Import lib/admm.py of the official checkout as a standalone module."""
    f = Path(path) / "lib" / "admm.py"
    if not f.exists():
        raise SystemExit(f"official_dir: {f} not found; clone the official repo there first (see the docstring)")
    spec = importlib.util.spec_from_file_location("admm_official", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    commit = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return mod, commit


def official_prune(mod, W, G, sparsity, **kw):
    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False, device=W.device)
    layer.weight.data = W.clone()
    pr = mod.AdmmPruner(layer)
    pr.XX = G.clone()  # their add_batch: XX += Xᵀ X, unnormalised (= our G)
    if W.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # they print norms and sparsity
        pr.fasterprune(sparsity, percdamp=0.1, **kw)
    if W.is_cuda:
        torch.cuda.synchronize()
    return layer.weight.data.clone(), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("official_dir")
    ap.add_argument("--blocks", default="0,10,20,29")
    ap.add_argument("--names", default="self_attn.q_proj,self_attn.o_proj,mlp.gate_proj,mlp.down_proj")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    ap.add_argument("--synthetic", action="store_true", help="layer-shaped synthetic data instead of SmolLM2")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per setting (fastest kept)")
    ap.add_argument("--settings", default=",".join(s[0] for s in SETTINGS))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    mod, commit = load_official(a.official_dir)
    if not commit.startswith(EXPECTED_COMMIT):
        print(f"note: official checkout is at {commit}, this comparison was written for {EXPECTED_COMMIT}")
    dev = torch.device(a.device)
    if a.synthetic:
        probs, source = synthetic_problems(dev), "synthetic"
    else:
        try:
            probs = real_problems([int(b) for b in a.blocks.split(",")], a.names.split(","), a.nsamples, a.seqlen, dev)
            source = f"SmolLM2-135M, calibration {a.nsamples}×{a.seqlen}"
        except ImportError as e:
            raise SystemExit(f"real layers need pruning.models / pruning.data ({e}); run with --synthetic instead")
    wanted = set(a.settings.split(","))
    rows = []
    print(f"official commit {commit}; {source}; {len(probs)} layers; device {dev}; threads {torch.get_num_threads()}")
    hdr = f"{'layer':<26}{'setting':<18}{'err ours':>10}{'err theirs':>11}{'err cubic':>10}{'pruned ours':>12}{'theirs':>9}{'agree':>8}{'t ours':>8}{'t lean':>8}{'t theirs':>9}"
    print(hdr)
    for (b, name), p in probs.items():
        for label, kw, s, pat, opts in SETTINGS:
            if label not in wanted:
                continue
            run_ours(p, s, pat, opts, iters=1, gradual_iters=0)  # warm-up
            t_ours, t_last, t_theirs = float("inf"), float("inf"), float("inf")
            for _ in range(a.repeat):  # alternate the runs so that machine load hits all alike; keep the fastest
                ours = run_ours(p, s, pat, opts)
                # the same iterates, objective traced at the last iteration only (residuals still every iteration)
                lean = run_ours(p, s, pat, opts, objective_every=0)
                Wt, t = official_prune(mod, p.W, p.G, s, **kw)
                t_ours, t_last, t_theirs = min(t_ours, ours.seconds), min(t_last, lean.seconds), min(t_theirs, t)
            cubic = ours if not opts.get("schedule") else run_ours(p, s, pat, {})
            e_theirs = rel_error(p.W, Wt, p.G)
            agree = float(((Wt != 0) == ours.mask).float().mean())
            row = {"block": b, "name": name, "setting": label, "sparsity": s, "pattern": pat, "options": opts,
                   "err_ours": ours.rel_error, "err_theirs": e_theirs, "err_ours_cubic": cubic.rel_error,
                   "pruned_ours": int((ours.weight == 0).sum()), "pruned_theirs": int((Wt == 0).sum()),
                   "mask_agreement": agree, "seconds_ours": t_ours, "seconds_ours_objective_last": t_last,
                   "seconds_theirs": t_theirs}
            rows.append(row)
            print(f"{b:>2} {name:<23}{label:<18}{ours.rel_error:>10.5f}{e_theirs:>11.5f}{cubic.rel_error:>10.5f}"
                  f"{row['pruned_ours']:>12}{row['pruned_theirs']:>9}{agree:>8.4f}{t_ours:>8.3f}{t_last:>8.3f}{t_theirs:>9.3f}")
    tot_o, tot_t = sum(r["seconds_ours"] for r in rows), sum(r["seconds_theirs"] for r in rows)
    tot_l = sum(r["seconds_ours_objective_last"] for r in rows)
    rel = [r["err_ours"] / r["err_theirs"] - 1 for r in rows if r["err_theirs"] > 0]
    print(f"total time ours {tot_o:.2f}s (objective every iteration), {tot_l:.2f}s (objective_every=0), theirs {tot_t:.2f}s; "
          f"theirs/ours = {tot_t / max(tot_o, 1e-12):.2f} and {tot_t / max(tot_l, 1e-12):.2f}")
    for label in sorted({r["setting"] for r in rows}):
        rs = [r for r in rows if r["setting"] == label]
        o, l, t = (sum(r[k] for r in rs) for k in ("seconds_ours", "seconds_ours_objective_last", "seconds_theirs"))
        print(f"  {label:<18} ours {o:7.2f}s  lean {l:7.2f}s  theirs {t:7.2f}s  theirs/ours {t / o:5.2f}  theirs/lean {t / l:5.2f}")
    if rel:
        print(f"rel. error ours/theirs - 1: min {min(rel):+.2e} max {max(rel):+.2e}")
    if a.json:
        Path(a.json).write_text(json.dumps({"commit": commit, "source": source, "device": str(dev),
                                            "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
