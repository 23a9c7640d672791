"""Backend of the "ADMM vs greedy" lab: every solver on ONE real layer, returned as plain data.

Given a model, a block and a projection, the dense statistics of that block (W and the Gram G = Σ x xᵀ of
each linear) are captured once on a small calibration sample (``pipeline.capture_layer_problems``; kept in a
small in-process LRU, so switching projection or sparsity is instant), then ``prune_layer`` runs:

* greedy: magnitude, Wanda, SparseGPT (each one error, no iterations);
* ADMM with a fixed mask (the Wanda mask, ``gradual_iters=0``: the paper's "Wanda + ADMM update") and
  ADMM-Grad (gradual mask, the default) -- Boža 2024, arXiv 2401.02938; per-iteration traces;
* SparseFW (Frank-Wolfe mask, arXiv 2510.13713) when it is registered -- objective and FW gap per iteration.

Statistics are captured on a private copy of the model (hooks on the shared one would also see the forwards of
a job evaluating it at the same time). A solver missing from the registry is reported as
``{"available": False, "reason": ...}``, never an error. The result holds numbers, strings, lists and two numpy arrays (the mask-agreement code matrix and the dense
weight) for the heat-map; :func:`mask_crop` cuts a window out of them for display. No torch in the result.
"""
from __future__ import annotations

import collections
import copy
import threading
import time
from typing import Callable

import numpy as np

from .solve import prune_layer, validate_sparsity
from .patterns import parse_pattern
from .solvers import SOLVERS, SolverError

GREEDY = ("magnitude", "wanda", "sparsegpt")
# label -> (solver, options); options not declared by the registered solver are dropped
ITERATIVE = {
    "ADMM (fixed Wanda mask)": ("admm", {"gradual_iters": 0}),  # one-shot mask = the Wanda mask, then ADMM on it
    "ADMM-Grad (gradual mask)": ("admm", {}),
}
# mask-agreement codes of the heat-map (A = the iterative solver, B = SparseGPT)
PRUNED_BOTH, KEPT_BOTH, KEPT_A_ONLY, KEPT_B_ONLY = 0, 1, 2, 3
CODE_LABELS = ("pruned by both", "kept by both", "kept only by {a}", "kept only by {b}")

_CAPTURE_LOCK = threading.Lock()
_PROBLEMS: "collections.OrderedDict[tuple, dict]" = collections.OrderedDict()
_MAX_CAPTURED_BLOCKS = 4
_PRIVATE: dict = {}  # (model, device, dtype) -> (private model copy, tokenizer); one entry


def _private_model(model_id: str, device: str, dtype: str):
    """A private copy of the loaded model for statistics capture (called with _CAPTURE_LOCK held).

    Capturing registers forward hooks; on the shared model they would also see the forwards of a job evaluating
    the dense model at the same time (and add them to the Gram). One copy is kept, for the last model used.
    """
    from .api import get_model

    key = (model_id, device, dtype)
    if key not in _PRIVATE:
        model, tok, _ = get_model(model_id, device, dtype)
        _PRIVATE.clear()
        _PRIVATE[key] = (copy.deepcopy(model), tok)
    return _PRIVATE[key]


def layer_problems(model_id: str, block: int, nsamples: int = 8, seqlen: int = 256, seed: int = 0,
                   source: str = "wiki-sample", device: str = "auto", dtype: str = "auto") -> dict:
    """{name: LayerProblem} of every linear of ``block`` (dense statistics), cached per arguments."""
    key = (model_id, int(block), int(nsamples), int(seqlen), int(seed), source, device, dtype)
    with _CAPTURE_LOCK:
        if key in _PROBLEMS:
            _PROBLEMS.move_to_end(key)
            return _PROBLEMS[key]
        from .data import calibration_windows
        from .pipeline import capture_layer_problems

        model, tok = _private_model(model_id, device, dtype)
        windows = calibration_windows(tok, source=source, nsamples=nsamples, seqlen=seqlen, seed=seed)
        probs = capture_layer_problems(model, tok, windows, blocks=[int(block)])
        _PROBLEMS[key] = {name: p for (b, name), p in probs.items()}
        while len(_PROBLEMS) > _MAX_CAPTURED_BLOCKS:
            _PROBLEMS.popitem(last=False)
        return _PROBLEMS[key]


def _declared(solver: str, options: dict) -> dict:
    names = {o.name: o for o in SOLVERS.get(solver).options}
    out = {}
    for k, v in options.items():
        o = names.get(k)
        if o is not None and (o.type != "choice" or v in o.choices):
            out[k] = v
    return out


def _run(problem, solver: str, sparsity: float, pattern: str, options: dict) -> dict:
    trace: list[dict] = []
    t0 = time.perf_counter()
    sol = prune_layer(problem.W, problem.G, problem.n_tokens, solver=solver, sparsity=sparsity, pattern=pattern,
                      on_iter=lambda r: trace.append({k: v for k, v in r.items() if isinstance(v, (int, float, str, type(None)))}),
                      **options)
    return {"available": True, "solver": solver, "options": options, "rel_error": float(sol.rel_error),
            "seconds": time.perf_counter() - t0, "sparsity": float(sol.sparsity), "trace": trace or list(sol.trace),
            "_sol": sol}


def _histograms(series: dict[str, np.ndarray], bins: int = 80) -> dict:
    """Shared-bin histograms of weight values; range = the dense weights' 0.1–99.9 % quantiles."""
    dense = series["dense"]
    lo, hi = np.quantile(dense, [0.001, 0.999])
    edges = np.linspace(float(lo), float(hi), bins + 1)
    return {"edges": edges.tolist(),
            "counts": {k: np.histogram(np.clip(v, lo, hi), bins=edges)[0].astype(int).tolist() for k, v in series.items()}}


def _densest_tile(diff: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the size×size tile (on a size/2 grid) with the most disagreements."""
    h, w = diff.shape
    best, corner, step = -1, (0, 0), max(1, size // 2)
    for r in range(0, max(1, h - size + 1), step):
        for c in range(0, max(1, w - size + 1), step):
            n = int(diff[r:r + size, c:c + size].sum())
            if n > best:
                best, corner = n, (r, c)
    return corner


def run_lab(model_id: str, block: int, name: str, sparsity: float = 0.5, pattern: str = "unstructured",
            nsamples: int = 8, seqlen: int = 256, seed: int = 0, admm_iters: int | None = None,
            sparsefw_iters: int | None = None, device: str = "auto", dtype: str = "auto",
            on_status: Callable[[str], None] | None = None) -> dict:
    """All lab solvers on one layer. Raises ValueError (SolverError/PatternError) for a bad input.

    Returns {"layer": {...}, "greedy": {solver: rec}, "iterative": {label: rec}, "sparsefw": rec,
    "mask": {"codes": uint8 (d_out, d_in), "weight": float32 (d_out, d_in), "a", "b", "labels", "disagree",
    "default_corner"}, "hist": {"edges", "counts"}} where rec = {"available", "rel_error", "seconds", "trace", ...}
    or {"available": False, "reason"}.
    """
    pat = parse_pattern(pattern)
    if not pat.is_nm:
        validate_sparsity(sparsity)
    say = on_status or (lambda s: None)
    say(f"capturing block {block} statistics ({nsamples} × {seqlen} tokens)…")
    probs = layer_problems(model_id, block, nsamples, seqlen, seed, device=device, dtype=dtype)
    if name not in probs:
        raise SolverError(f"projection: {name!r} is not a linear of block {block}; allowed: {', '.join(probs)}")
    out = solve_layer(probs[name], sparsity, pattern, admm_iters, sparsefw_iters, say)
    out["layer"].update({"model": model_id, "block": int(block), "name": name})
    return out


def solve_layer(p, sparsity: float = 0.5, pattern: str = "unstructured", admm_iters: int | None = None,
                sparsefw_iters: int | None = None, on_status: Callable[[str], None] | None = None) -> dict:
    """The lab on one ``LayerProblem`` (see :func:`run_lab` for the result)."""
    say = on_status or (lambda s: None)
    pat = parse_pattern(pattern)
    pat.check_shape(p.W.shape[1])
    out: dict = {"layer": {"shape": list(p.W.shape), "n_tokens": int(p.n_tokens), "sparsity": float(pat.sparsity(sparsity)),
                           "pattern": str(pat)},
                 "greedy": {}, "iterative": {}}
    for s in GREEDY:
        say(f"{s}…")
        if s not in SOLVERS:
            out["greedy"][s] = {"available": False, "reason": f"solver {s!r} is not registered"}
            continue
        out["greedy"][s] = _run(p, s, sparsity, pattern, {})
    for label, (solver, opts) in ITERATIVE.items():
        if solver not in SOLVERS:
            out["iterative"][label] = {"available": False, "reason": f"solver {solver!r} is not available in this build"}
            continue
        say(f"{label}…")
        o = dict(opts)
        if admm_iters is not None:
            o["iters"] = int(admm_iters)
            if o.get("gradual_iters", 1) != 0:  # the gradual entry: at most admm_iters selections
                o["gradual_iters"] = min(int(admm_iters), SOLVERS.get(solver).defaults().get("gradual_iters", 15))
        out["iterative"][label] = _run(p, solver, sparsity, pattern, _declared(solver, o))
    if "sparsefw" in SOLVERS:
        say("SparseFW…")
        o = {"iters": int(sparsefw_iters)} if sparsefw_iters is not None else {}
        out["sparsefw"] = _run(p, "sparsefw", sparsity, pattern, _declared("sparsefw", o))
    else:
        out["sparsefw"] = {"available": False, "reason": "SparseFW is not available in this build"}

    # mask agreement: the best available iterative solver vs SparseGPT (or vs Wanda without ADMM)
    a_label = next((k for k in reversed(ITERATIVE) if out["iterative"].get(k, {}).get("available")), None)
    a_rec = out["iterative"][a_label] if a_label else out["greedy"]["wanda"]
    a_label = a_label or "Wanda"
    b_rec, b_label = out["greedy"]["sparsegpt"], "SparseGPT"
    ka = a_rec["_sol"].mask.cpu().numpy()
    kb = b_rec["_sol"].mask.cpu().numpy()
    codes = np.where(ka & kb, KEPT_BOTH, np.where(ka, KEPT_A_ONLY, np.where(kb, KEPT_B_ONLY, PRUNED_BOTH))).astype(np.uint8)
    diff = ka != kb
    W = p.W.float().cpu().numpy()
    out["mask"] = {"codes": codes, "weight": W, "a": a_label, "b": b_label,
                   "labels": [t.format(a=a_label, b=b_label) for t in CODE_LABELS],
                   "disagree": float(diff.mean()), "n_disagree": int(diff.sum()),
                   "default_corner": list(_densest_tile(diff, 48))}
    hist = {"dense": W.ravel()}
    for lbl, rec in (("Wanda (mask only)", out["greedy"].get("wanda")), ("SparseGPT", b_rec), (a_label, a_rec)):
        if rec and rec.get("available"):
            w = rec["_sol"].weight.float().cpu().numpy().ravel()
            hist[lbl] = w[w != 0]
    out["hist"] = _histograms(hist)
    for group in (out["greedy"], out["iterative"]):
        for rec in group.values():
            rec.pop("_sol", None)
    out["sparsefw"].pop("_sol", None)
    return out


def mask_crop(mask: dict, row: int, col: int, size: int) -> dict:
    """A size×size window of the agreement codes and dense weights, clamped to the matrix."""
    codes, W = mask["codes"], mask["weight"]
    h, w = codes.shape
    size = max(4, min(int(size), h, w))
    r = min(max(0, int(row)), h - size)
    c = min(max(0, int(col)), w - size)
    return {"codes": codes[r:r + size, c:c + size].tolist(), "weight": W[r:r + size, c:c + size].tolist(),
            "row": r, "col": c, "size": size, "labels": mask["labels"], "shape": [h, w]}
