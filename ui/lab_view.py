"""How the lab's result is shown (numpy only, no torch, no Gradio): mask agreement, histograms, the crop window,
the summary JSON, the explanation -- and the shipped precomputed layer (``assets/lab``).

``present(result)`` turns ``pruning.lab.run_lab``'s engine result (per-solver masks and weights as arrays) into
the display record the plots read: ``{"layer", "greedy", "iterative", "alps", "sparsefw", "mask", "hist"}`` where
``mask`` = the agreement codes of the best available iterative solver (A) against SparseGPT (B) and ``hist`` =
shared-bin weight histograms. ``save_asset`` / ``load_asset`` store that record as plain files (JSON + npz).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# mask-agreement codes of the heat-map (A = the iterative solver, B = SparseGPT)
PRUNED_BOTH, KEPT_BOTH, KEPT_A_ONLY, KEPT_B_ONLY = 0, 1, 2, 3
CODE_LABELS = ("pruned by both", "kept by both", "kept only by {a}", "kept only by {b}")
TILE = 48  # the default heat-map window (rows × columns)
WINDOWS = (24, 48, 96)
ARRAYS = ("mask", "weight")


def densest_tile(diff: np.ndarray, size: int = TILE) -> tuple[int, int]:
    """Top-left corner of the size×size tile (on a size/2 grid) with the most disagreements."""
    h, w = diff.shape
    best, corner, step = -1, (0, 0), max(1, size // 2)
    for r in range(0, max(1, h - size + 1), step):
        for c in range(0, max(1, w - size + 1), step):
            n = int(diff[r:r + size, c:c + size].sum())
            if n > best:
                best, corner = n, (r, c)
    return corner


def histograms(series: dict[str, np.ndarray], bins: int = 80) -> dict:
    """Shared-bin histograms of weight values; range = the dense weights' 0.1–99.9 % quantiles."""
    dense = series["dense"]
    lo, hi = np.quantile(dense, [0.001, 0.999])
    edges = np.linspace(float(lo), float(hi), bins + 1)
    return {"edges": edges.tolist(),
            "counts": {k: np.histogram(np.clip(v, lo, hi), bins=edges)[0].astype(int).tolist() for k, v in series.items()}}


def _plain(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ARRAYS}


def present(res: dict) -> dict:
    """The engine's lab result -> the display record (see the module docstring)."""
    iterative = res.get("iterative", {})
    a_label = next((k for k in reversed(list(iterative)) if iterative[k].get("available")), None)
    a_rec = iterative[a_label] if a_label else res["greedy"]["wanda"]
    a_label = a_label or "Wanda"
    b_rec, b_label = res["greedy"]["sparsegpt"], "SparseGPT"
    ka, kb = np.asarray(a_rec["mask"], bool), np.asarray(b_rec["mask"], bool)
    codes = np.where(ka & kb, KEPT_BOTH, np.where(ka, KEPT_A_ONLY, np.where(kb, KEPT_B_ONLY, PRUNED_BOTH))).astype(np.uint8)
    diff = ka != kb
    W = np.asarray(res["dense_weight"], np.float32)
    hist = {"dense": W.ravel()}
    for lbl, rec in (("Wanda (mask only)", res["greedy"].get("wanda")), ("SparseGPT", b_rec), (a_label, a_rec)):
        if rec and rec.get("available"):
            w = np.asarray(rec["weight"], np.float32).ravel()
            hist[lbl] = w[w != 0]
    return {
        "layer": dict(res["layer"]),
        "greedy": {k: _plain(v) for k, v in res["greedy"].items()},
        "iterative": {k: _plain(v) for k, v in iterative.items()},
        "alps": _plain(res.get("alps") or {"available": False, "reason": "not run"}),
        "sparsefw": _plain(res.get("sparsefw") or {"available": False, "reason": "not run"}),
        "mask": {"codes": codes, "weight": W, "a": a_label, "b": b_label,
                 "labels": [t.format(a=a_label, b=b_label) for t in CODE_LABELS],
                 "disagree": float(diff.mean()), "n_disagree": int(diff.sum()),
                 "default_corner": list(densest_tile(diff, TILE))},
        "hist": histograms(hist),
    }


def mask_crop(mask: dict, row: int, col: int, size: int) -> dict:
    """A size×size window of the agreement codes and dense weights, clamped to the matrix."""
    codes, W = mask["codes"], mask["weight"]
    h, w = codes.shape
    size = max(4, min(int(size), h, w))
    r = min(max(0, int(row)), h - size)
    c = min(max(0, int(col)), w - size)
    return {"codes": codes[r:r + size, c:c + size].tolist(), "weight": W[r:r + size, c:c + size].tolist(),
            "row": r, "col": c, "size": size, "labels": mask["labels"], "shape": [h, w]}


def lab_summary(res: dict) -> dict:
    """Plain numbers of a lab run (the /lab API's JSON output)."""
    def pick(rec: dict) -> dict:
        if not rec.get("available"):
            return {"available": False, "reason": rec.get("reason")}
        return {k: rec[k] for k in ("rel_error", "seconds", "sparsity") if k in rec}

    def alps_summary(rec: dict) -> dict:
        out = pick(rec)
        if rec.get("available"):
            admm = [r for r in rec.get("trace", []) if r.get("phase") == "admm"]
            out.update(admm_iterations=len(admm), cg_steps=len(rec.get("trace", [])) - len(admm),
                       rho_final=next((r["rho"] for r in reversed(admm) if r.get("rho") is not None), None),
                       restarts=sum(1 for r in admm if r.get("event") == "restart"))
        return out

    return {"layer": res["layer"],
            "greedy": {k: pick(v) for k, v in res["greedy"].items()},
            "iterative": {k: pick(v) | ({"iterations": len(v.get("trace", []))} if v.get("available") else {})
                          for k, v in res["iterative"].items()},
            "alps": alps_summary(res.get("alps") or {}),
            "sparsefw": pick(res.get("sparsefw") or {}),
            "mask_disagreement": {"a": res["mask"]["a"], "b": res["mask"]["b"], "fraction": res["mask"]["disagree"],
                                  "count": res["mask"]["n_disagree"]}}


EXPLANATION = """
**Why a joint update beats column-by-column greedy compensation.**
All methods minimise the same thing on this layer: the output error ‖WX − ŴX‖², where X are the layer's calibration
inputs. *Magnitude* and *Wanda* only choose which weights to drop and leave the others untouched. *SparseGPT* also
corrects the survivors, but greedily: it walks over the columns once, left to right, and each time it prunes a column it
pushes the error onto the columns it has **not yet visited**. Columns already passed are frozen, so an early decision can
never be revised, and the mask of each block is fixed before the later columns know what happened.
*ADMM* instead solves for **all surviving weights at once**: every iteration is a least-squares step over the whole row
(using X Xᵀ, so every column can compensate for every other) followed by a projection onto the mask; the dual variable
remembers the accumulated disagreement and pulls the two together. With a *fixed* mask this converges to the best
possible weights for that mask; with the *gradual* mask (ADMM-Grad) the mask itself is re-chosen from the current,
already-compensated weights while the sparsity ramps up, so it can keep weights that only look unimportant before
compensation — the highlighted cells in the heat-map.
*ALPS* runs ADMM on the same problem after rescaling every input column to unit curvature, and lets its penalty ρ grow
while the support (the set of kept weights) still changes (×1.3 or ×1.2 at each check; a restart with a smaller ρ if the
support froze at once); it stops when the support settles, and a few conjugate-gradient steps then give the best weights
for that final support (its figure: error, ρ and support changes per iteration).
"""


def explanation_md(res: dict) -> str:
    g = {k: v["rel_error"] for k, v in res["greedy"].items() if v.get("available")}
    it = {k: v["rel_error"] for k, v in res["iterative"].items() if v.get("available")}
    lines = [EXPLANATION.strip()]
    if it and "sparsegpt" in g:
        best_label, best = min(it.items(), key=lambda kv: kv[1])
        gain = 1 - best / g["sparsegpt"] if g["sparsegpt"] > 0 else 0.0
        verdict = f"{gain:.0%} lower" if gain > 0 else f"{-gain:.0%} higher"
        lines.append(f"\n**On this layer:** {best_label} reaches a relative error of **{best:.4g}**, {verdict} than SparseGPT "
                     f"({g['sparsegpt']:.4g}); Wanda {g.get('wanda', float('nan')):.4g}, magnitude {g.get('magnitude', float('nan')):.4g}. "
                     f"The two masks differ in {res['mask']['n_disagree']:,} entries ({res['mask']['disagree']:.1%}).")
    alps, grad = res.get("alps") or {}, res["iterative"].get("ADMM-Grad (gradual mask)") or {}
    if alps.get("available") and grad.get("available") and grad["rel_error"] > 0:
        n_admm = sum(1 for r in alps.get("trace", []) if r.get("phase") == "admm")
        lines.append(f"\n**ALPS** reaches **{alps['rel_error']:.4g}** after {n_admm} ADMM iterations and its CG steps: "
                     f"{alps['rel_error'] / grad['rel_error']:.3f}× ADMM-Grad's error ({grad['rel_error']:.4g}).")
    elif not it:
        lines.append("\n*ADMM is not available in this build; only the greedy solvers ran.*")
    return "\n".join(lines)


# -- the shipped precomputed layer --------------------------------------------------------------------------------
def save_asset(view: dict, directory: str | Path, settings: dict) -> None:
    """Write a display record as ``lab.json`` (everything but the two matrices) + ``mask.npz`` (codes uint8, dense
    weights float16)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    m = view["mask"]
    meta = {k: v for k, v in view.items() if k != "mask"}
    meta["mask"] = {k: v for k, v in m.items() if k not in ("codes", "weight")}
    meta["settings"] = settings
    (d / "lab.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(d / "mask.npz", codes=m["codes"].astype(np.uint8), weight=m["weight"].astype(np.float16))


def load_asset(directory: str | Path) -> dict | None:
    """The display record saved by ``save_asset`` (plus its ``settings``), or None when absent or unreadable."""
    d = Path(directory)
    try:
        meta = json.loads((d / "lab.json").read_text())
        with np.load(d / "mask.npz") as z:
            codes, weight = z["codes"].astype(np.uint8), z["weight"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        return None
    meta["mask"] = dict(meta["mask"], codes=codes, weight=weight)
    return meta
