"""Our OWL block sparsities vs the official luuyin/OWL ``prune_wanda_outlier`` on SmolLM2, same calibration windows.

    mkdir -p /tmp/owl-official && git -C /work/.mirror/luuyin+OWL/repo archive HEAD | tar -x -C /tmp/owl-official
    python benchmarks/bench_owl_official.py /tmp/owl-official [--nsamples 32] [--seqlen 512] [--sparsities 0.5,0.7]

The official function is imported from the given checkout at run time (nothing of it is in this repository) and
run on the embedded SmolLM2-135M (float32, CPU) until it has computed its per-block densities (its first phase:
outlier ratios of the Wanda scores over a dense pass, min-max scaled into [s − λ, s + λ]); it is stopped when it
asks for calibration data a second time (its pruning phase). Three shims, none of which touch its arithmetic:
``get_loaders`` returns our windows (instead of downloading C4), each decoder layer is wrapped so that it gets the
rotary position embeddings that current transformers computes once per model (the official code was written for
transformers 4.3x, where each layer computed them from ``position_ids``), and its ``print`` is captured to read the
outlier ratios and densities it prints. Ours: ``pipeline.layer_targets`` on the same windows, recording the inputs
and outputs of ``allocation.owl_block_sparsities`` (before the exact integer budget) and the final per-layer targets.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pruning import allocation as al  # noqa: E402
from pruning.api import get_model  # noqa: E402
from pruning.blocks import find_blocks  # noqa: E402
from pruning.config import CalibConfig, PruneConfig  # noqa: E402
from pruning.data import calibration_windows  # noqa: E402
from pruning.patterns import parse_pattern  # noqa: E402
from pruning.pipeline import capture_inputs, layer_targets  # noqa: E402


class _Stop(Exception):
    pass


class _WithRope(nn.Module):
    """A decoder layer that computes the rotary embeddings from ``position_ids`` when it is not given them."""

    def __init__(self, layer: nn.Module, rotary: nn.Module):
        super().__init__()
        self.inner, self.rotary = layer, rotary

    def forward(self, hidden, attention_mask=None, position_ids=None, **kw):
        if kw.get("position_embeddings") is None:
            if position_ids is None:
                position_ids = torch.arange(hidden.shape[1]).unsqueeze(0)
            kw["position_embeddings"] = self.rotary(hidden, position_ids)
        return self.inner(hidden, attention_mask=attention_mask, position_ids=position_ids, **kw)


def official_densities(official_dir: str, model, windows: torch.Tensor, sparsity: float, m: float, lam: float):
    """(per-block outlier ratios in %, per-block densities) as the official prune_wanda_outlier computes them."""
    sys.path.insert(0, official_dir)
    mod = importlib.import_module("lib.prune_all")
    calls = {"n": 0}
    printed: list[tuple] = []

    def get_loaders(*_a, **_k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise _Stop  # its pruning phase: the densities are computed and printed by now
        return [(windows[i:i + 1], None) for i in range(windows.shape[0])], None

    mod.get_loaders = get_loaders
    mod.print = lambda *a, **k: printed.append(a)
    layers = model.model.layers
    originals = list(layers)
    for i, layer in enumerate(originals):
        layers[i] = _WithRope(layer, model.model.rotary_emb)
    model.seqlen = windows.shape[1]
    model.hf_device_map = {}
    args = SimpleNamespace(nsamples=windows.shape[0], seed=0, Hyper_m=m, Lamda=lam, sparsity_ratio=sparsity, model="smollm2")
    try:
        with torch.no_grad():
            mod.prune_wanda_outlier(args, model, None, device=torch.device("cpu"))
    except _Stop:
        pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        del model.hf_device_map
    ratios = [float(a[2]) for a in printed if a and isinstance(a[0], str) and a[0] == "layer outlier ratio"]
    dens = next(np.asarray(a[1], dtype=np.float64) for a in printed if a and isinstance(a[0], str) and a[0] == "after adjustment")
    return ratios, dens.tolist()


def ours(model, windows: torch.Tensor, sparsity: float, m: float, lam: float):
    """(per-block outlier ratios, per-block sparsities before the exact budget, per-layer final targets)."""
    seen = {}
    real = al.owl_block_sparsities

    def spy(ratios, s, lam_):
        seen["ratios"], seen["block"] = list(ratios), real(ratios, s, lam_)
        return seen["block"]

    cfg = PruneConfig(solver="wanda", sparsity=sparsity, allocation="owl", owl_m=m, owl_lambda=lam,
                      calib=CalibConfig(nsamples=windows.shape[0], seqlen=windows.shape[1]))
    _, blocks = find_blocks(model)
    al.owl_block_sparsities = spy
    try:
        with torch.no_grad():
            inputs = capture_inputs(model, windows, cfg.batch_size)
            targets = layer_targets(blocks, inputs, cfg, parse_pattern("unstructured"), lambda: None)
    finally:
        al.owl_block_sparsities = real
    return seen["ratios"], seen["block"], targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official_dir")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampling", default="document")
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--m", type=float, default=al.OWL_M)
    ap.add_argument("--lam", type=float, default=al.OWL_LAMBDA)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", "/work/.mirror/luuyin+OWL/repo", "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    model, tok, _ = get_model("smollm2-135m", "cpu", "float32")
    win = calibration_windows(tok, nsamples=a.nsamples, seqlen=a.seqlen, seed=a.seed, sampling=a.sampling)
    print(f"official luuyin/OWL {commit}; SmolLM2-135M fp32 CPU; {a.nsamples}×{a.seqlen} windows ({a.sampling}, seed "
          f"{a.seed}); M={a.m}, λ={a.lam}", flush=True)
    rows = []
    for s in [float(x) for x in a.sparsities.split(",")]:
        t0 = time.perf_counter()
        r_off, dens_off = official_densities(a.official_dir, model, win, s, a.m, a.lam)
        t_off = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_ours, block_ours, targets = ours(model, win, s, a.m, a.lam)
        t_ours = time.perf_counter() - t0
        sp_off = [1 - d for d in dens_off]
        n_blocks = len(block_ours)
        final = [float(np.mean([v for (b, _), v in targets.items() if b == i])) for i in range(n_blocks)]
        d_ratio = max(abs(x - y) for x, y in zip(r_off, r_ours))
        d_block = max(abs(x - y) for x, y in zip(sp_off, block_ours))
        d_final = max(abs(x - y) for x, y in zip(sp_off, final))
        print(f"\nsparsity {s}: official {t_off:.0f} s, ours {t_ours:.0f} s")
        print(f"{'block':>5}{'D official %':>14}{'D ours %':>11}{'s official':>12}{'s ours':>10}{'s ours (exact)':>16}")
        for i in range(n_blocks):
            print(f"{i:>5}{r_off[i]:>14.5f}{r_ours[i]:>11.5f}{sp_off[i]:>12.6f}{block_ours[i]:>10.6f}{final[i]:>16.6f}")
        print(f"max |ΔD| = {d_ratio:.3g} (percentage points); max |Δ block sparsity| = {d_block:.3g} before the exact "
              f"budget, {d_final:.3g} after it (block mean of the per-layer targets)")
        rows.append({"sparsity": s, "ratios_official": r_off, "ratios_ours": r_ours, "sparsity_official": sp_off,
                     "sparsity_ours": block_ours, "sparsity_ours_exact": final, "max_abs_ratio": d_ratio,
                     "max_abs_block_sparsity": d_block, "max_abs_block_sparsity_exact": d_final,
                     "seconds_official": t_off, "seconds_ours": t_ours})
    if a.json:
        Path(a.json).write_text(json.dumps({"commit": commit, "nsamples": a.nsamples, "seqlen": a.seqlen,
                                            "sampling": a.sampling, "m": a.m, "lam": a.lam, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
