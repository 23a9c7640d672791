"""Backend of the "ADMM vs greedy" lab: every solver on ONE real layer, returned as plain data.

Given a model, a block and a projection, the dense statistics of that block (W and the Gram G = Σ x xᵀ of
each linear) are captured once on a small calibration sample (``pipeline.capture_layer_problems``; kept in a
small in-process LRU, so switching projection or sparsity is instant), then ``prune_layer`` runs:

* greedy: magnitude, Wanda, SparseGPT (each one error, no iterations);
* ADMM with a fixed mask (the Wanda mask, ``gradual_iters=0``: the paper's "Wanda + ADMM update") and
  ADMM-Grad (gradual mask, the default) -- Boža 2024, arXiv 2401.02938; per-iteration traces;
* ALPS (Meng et al. 2024, arXiv 2406.07831), beside ADMM-Grad, when it is registered: at its defaults (its ADMM
  stops by itself once the support settles, so the lab's ADMM iteration count does not apply), error, penalty ρ
  and support changes per iteration, then its conjugate-gradient steps on the final support;
* SparseFW (Frank-Wolfe mask, arXiv 2510.13713) when it is registered -- objective and FW gap per iteration.

Statistics are captured on a private copy of the model (hooks on the shared one would also see the forwards of
a job evaluating it at the same time). A solver missing from the registry is reported as
``{"available": False, "reason": ...}``, never an error. The result holds numbers, strings, lists and numpy
arrays (each solution's boolean ``mask`` and ``weight``, and the ``dense_weight``); no torch. How they are shown
(mask agreement, histograms) is the UI's business (``ui.lab_view``). The app runs the lab as a task of the job
runner (``JobRunner.submit_task("lab", ...)``: in the device's worker process, one at a time with the jobs, and
cancellable like them).
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Callable

from .events import Cancelled
from .lru import LRU
from .solve import prune_layer, validate_sparsity
from .patterns import parse_pattern
from .solvers import SOLVERS, SolverError

GREEDY = ("magnitude", "wanda", "sparsegpt")
# label -> (solver, options); options not declared by the registered solver are dropped
ITERATIVE = {
    "ADMM (fixed Wanda mask)": ("admm", {"gradual_iters": 0}),  # one-shot mask = the Wanda mask, then ADMM on it
    "ADMM-Grad (gradual mask)": ("admm", {}),
}
_CAPTURE_LOCK = threading.Lock()
_MAX_CAPTURED_BLOCKS = 4
_PROBLEMS: LRU = LRU(_MAX_CAPTURED_BLOCKS)  # (model, block, calibration) -> {name: LayerProblem}
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
        hit = _PROBLEMS.get(key)
        if hit is not None:
            return hit
        from .data import calibration_windows
        from .pipeline import capture_layer_problems

        model, tok = _private_model(model_id, device, dtype)
        windows = calibration_windows(tok, source=source, nsamples=nsamples, seqlen=seqlen, seed=seed)
        probs = capture_layer_problems(model, tok, windows, blocks=[int(block)])
        return _PROBLEMS.put(key, {name: p for (b, name), p in probs.items()})


def _declared(solver: str, options: dict) -> dict:
    names = {o.name: o for o in SOLVERS.get(solver).options}
    out = {}
    for k, v in options.items():
        o = names.get(k)
        if o is not None and (o.type != "choice" or v in o.choices):
            out[k] = v
    return out


def _check_cancel(cancel) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")


def _run(problem, solver: str, sparsity: float, pattern: str, options: dict, cancel=None) -> dict:
    trace: list[dict] = []

    def on_iter(r: dict) -> None:
        trace.append({k: v for k, v in r.items() if isinstance(v, (int, float, str, type(None)))})
        _check_cancel(cancel)  # an iterative solver stops at its next iteration

    _check_cancel(cancel)
    t0 = time.perf_counter()
    sol = prune_layer(problem.W, problem.G, problem.n_tokens, solver=solver, sparsity=sparsity, pattern=pattern,
                      on_iter=on_iter, **options)
    return {"available": True, "solver": solver, "options": options, "rel_error": float(sol.rel_error),
            "seconds": time.perf_counter() - t0, "sparsity": float(sol.sparsity), "trace": trace or list(sol.trace),
            "_sol": sol}


def run_lab(model_id: str, block: int, name: str, sparsity: float = 0.5, pattern: str = "unstructured",
            nsamples: int = 8, seqlen: int = 256, seed: int = 0, admm_iters: int | None = None,
            sparsefw_iters: int | None = None, device: str = "auto", dtype: str = "auto",
            on_status: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> dict:
    """All lab solvers on one layer. Raises ValueError (SolverError/PatternError) for a bad input; setting ``cancel``
    stops it before the next solver (or the next iteration of an iterative one) with ``events.Cancelled``.

    Returns {"layer": {...}, "greedy": {solver: rec}, "iterative": {label: rec}, "alps": rec, "sparsefw": rec,
    "dense_weight": float32 (d_out, d_in)} where rec = {"available", "rel_error", "seconds", "sparsity", "trace",
    "mask": bool (d_out, d_in), "weight": float32 (d_out, d_in), ...} or {"available": False, "reason"}.
    """
    pat = parse_pattern(pattern)
    if not pat.is_nm:
        validate_sparsity(sparsity)
    say = on_status or (lambda s: None)
    say(f"capturing block {block} statistics ({nsamples} × {seqlen} tokens)…")
    probs = layer_problems(model_id, block, nsamples, seqlen, seed, device=device, dtype=dtype)
    if name not in probs:
        raise SolverError(f"projection: {name!r} is not a linear of block {block}; allowed: {', '.join(probs)}")
    out = solve_layer(probs[name], sparsity, pattern, admm_iters, sparsefw_iters, say, cancel=cancel)
    out["layer"].update({"model": model_id, "block": int(block), "name": name})
    return out


def solve_layer(p, sparsity: float = 0.5, pattern: str = "unstructured", admm_iters: int | None = None,
                sparsefw_iters: int | None = None, on_status: Callable[[str], None] | None = None,
                cancel: threading.Event | None = None) -> dict:
    """The lab on one ``LayerProblem`` (see :func:`run_lab` for the result; ``cancel`` as there)."""
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
        out["greedy"][s] = _run(p, s, sparsity, pattern, {}, cancel)
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
        out["iterative"][label] = _run(p, solver, sparsity, pattern, _declared(solver, o), cancel)
    if "alps" in SOLVERS:
        say("ALPS…")
        out["alps"] = _run(p, "alps", sparsity, pattern, {}, cancel)
    else:
        out["alps"] = {"available": False, "reason": "ALPS is not available in this build"}
    if "sparsefw" in SOLVERS:
        say("SparseFW…")
        o = {"iters": int(sparsefw_iters)} if sparsefw_iters is not None else {}
        out["sparsefw"] = _run(p, "sparsefw", sparsity, pattern, _declared("sparsefw", o), cancel)
    else:
        out["sparsefw"] = {"available": False, "reason": "SparseFW is not available in this build"}

    # every available solution keeps its mask and weights (numpy) for the UI's heat-map and histograms
    for group in (out["greedy"], out["iterative"], {"alps": out["alps"], "sparsefw": out["sparsefw"]}):
        for rec in group.values():
            sol = rec.pop("_sol", None)
            if sol is not None:
                rec["mask"] = sol.mask.cpu().numpy().astype(bool)
                rec["weight"] = sol.weight.float().cpu().numpy()
    out["dense_weight"] = p.W.float().cpu().numpy()
    return out
