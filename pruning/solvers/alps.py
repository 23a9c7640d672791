"""ALPS: ADMM on the preconditioned layer problem with a support-driven penalty schedule, then CG on the support.

Meng, Behdin, Wang & Mazumder, "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for Large
Language Models" (NeurIPS 2024, arXiv 2406.07831). Read against mazumder-lab/ALPS alps.py
(ALPS_prune.ALPS_admm and its conjugate-gradient helper) at commit 8af9e6b; written from that reading, not
copied. As implemented here: docs/algorithms.md, "ALPS".

Problem (per layer; columns of the transposed weight are independent): with G the Gram Σ x xᵀ,

    min_Ŵ  tr((Ŵ − W)(G + λI)(Ŵ − W)ᵀ)   subject to Ŵ satisfying the sparsity pattern,

λ = damping · mean(diag G) (official: 1 %, added to G before anything else, as SparseGPT's percdamp).
Preconditioning as the official code: d_j = sqrt((G + λI)_jj) + 1e-8, A = D⁻¹ (G + λI) D⁻¹ (unit diagonal),
B₀ = (W D)ᵀ ∈ R^{d_in × d_out} (so |B₀| ranks like the Wanda score), right-hand side C = A B₀.

ADMM (unscaled dual V, penalty ρ), from the support D of the largest |B₀|:

    B = (A + ρI)⁻¹ (C − V + ρ D)        # ridge least squares; (A + ρI)⁻¹ = Q diag(1/(L + ρ)) Qᵀ from one eigh
    D = P(B + V / ρ)                    # projection: keep the largest magnitudes under the pattern
    V = V + ρ (B − D)

Every ``update_iter`` iterations the support is compared with the one at the previous check: c changed
entries (an entry that leaves and one that enters count 2, as in the official code), r = c / k with k the
number of kept weights. Then ρ ×1.3 if r > 0.1, ×1.2 if r > 0.005 (either marks the schedule as started);
if 0 < c and r ≤ 0.005: ρ ×1.1 once started, otherwise ρ / 5 and a restart from B₀ with V = 0 (the support
froze at once: ρ was too large); if c = 0: stop once started, otherwise ρ / 5. ρ ≤ 1e6. After
``switch_iter`` iterations a check with r < 3e-4 also stops. Finally B is projected once more and
``cg_iters`` conjugate-gradient steps solve A B = C on that fixed support (residuals masked to the support;
A has a unit diagonal, so this is Jacobi-preconditioned CG in the original coordinates).

Defaults (all from the official code): ρ₀ = 0.1 (set by opt.py/llama.py where they call ALPS_admm; the CLI
``--rho`` flag only names the output file), max_iter 300, update_iter 3, switch_iter 30, damping 0.01,
10 CG steps with relative tolerance 1e-4.

Differences from the official code (deliberate):
* exact counts from ``patterns.select_mask`` (stable tie-break) for every pattern: unstructured prunes
  ⌊s·numel⌋ (the official code keeps round((1 − s)·numel)), per-row (not in the official code) and any N:M
  with N pruned of every M (the official ``nm_n`` is the number kept);
* float32 eigendecomposition (the official one is float64); the normalised damped Gram is checked by a
  Cholesky factorisation first, and if it is not positive definite λ is raised ×10 with a warning;
  eigenvalues are clamped at 0 and ρ is kept ≥ 1e-6, so (A + ρI)⁻¹ always exists;
* after a restart the next support check compares with the initial support (the official code compares
  with the support just before the restart);
* CG stops early when every column's masked residual is below ``cg_rtol`` times its masked right-hand side
  (the official test uses the unmasked residual, which does not vanish on a sparse support, so it always
  runs its 10 steps); afterwards any output column whose objective rose through round-off keeps its
  pre-CG values, so the CG post-step never increases the (damped) objective;
* every iteration is traced (the official code only prints, commented out).

Trace records (``ctx.iteration`` and ``SolverOutput.trace``), ``iteration`` counting ADMM then CG steps:
    phase         'admm' or 'cg'
    objective     ‖WX − ŴX‖² / ‖WX‖² (pruning.solve.rel_error) of the sparse iterate: D for ADMM, the CG
                  iterate for CG; None where ``objective_every`` skips it (always present at the last ADMM
                  iteration and at the last CG step)
    rho           penalty used by this iteration's least-squares step
    mask_changed  support entries that changed at this iteration (ADMM; 0 for CG)
    support_change  r = changes since the previous check / kept count (only on check iterations, else None)
    event         'rho*1.3', 'rho*1.2', 'rho*1.1', 'rho/5', 'restart', 'settled', 'switch' or '' (checks only)
    sparsity      pruned fraction of the support
"""
from __future__ import annotations

import math

import torch

from ..patterns import Pattern, prune_count, select_mask
from .base import SOLVERS, LayerProblem, NumericalError, Option, SolveContext, SolverError, SolverOutput

__all__ = ["ALPS_OPTIONS", "alps", "cg_on_support"]

_EPS_NORM = 1e-8  # official: sqrt(diag) + 1e-8
_RHO_MAX = 1e6  # official cap
_RHO_MIN = 1e-6  # ours: keeps (A + ρI)⁻¹ bounded when the support never moves
_MAX_DAMP_RAISES = 8
_MAX_ITERS = 100_000

ALPS_OPTIONS = (
    Option("max_iter", 300, "int", "Most ADMM iterations (official 300); 0 = initial support + CG only.", min=0, max=_MAX_ITERS),
    Option("rho", 0.1, "float", "Initial ADMM penalty ρ, relative to the unit diagonal of the normalised Gram "
           "(official 0.1, hard-coded where the scripts call ALPS).", min=0.0, min_inclusive=False, max=_RHO_MAX),
    Option("update_iter", 3, "int", "Check the support change and adapt ρ every N iterations (official 3).", min=1, max=_MAX_ITERS),
    Option("switch_iter", 30, "int", "From this iteration on, stop once the support change at a check is < 3e-4 of the "
           "kept weights (official 30).", min=0, max=_MAX_ITERS),
    Option("damping", 0.01, "float", "Ridge λ as a fraction of mean(diag G), added before the normalisation "
           "(official 0.01, like SparseGPT's percdamp).", min=0.0, min_inclusive=False, max=10.0),
    Option("cg_iters", 10, "int", "Conjugate-gradient steps on the final fixed support (official 10); 0 = none.", min=0, max=_MAX_ITERS),
    Option("cg_rtol", 1e-4, "float", "CG stops early once every output's masked residual is ≤ cg_rtol × its masked "
           "right-hand side (official 1e-4).", min=0.0, max=1.0, min_inclusive=True),
    Option("objective_every", 1, "int", "Trace the error of the sparse iterate every N iterations and at the last one "
           "(each costs one more matrix product); 0 = at the last one only.", min=0, max=_MAX_ITERS),
)


# ------------------------------------------------------------------------------------------ helpers


def _check_problem(p: LayerProblem) -> None:
    if p.W.dim() != 2 or tuple(p.G.shape) != (p.W.shape[1], p.W.shape[1]):
        raise SolverError(f"gram: expected shape ({p.W.shape[-1]}, {p.W.shape[-1]}) for a weight of shape "
                          f"{tuple(p.W.shape)}, got {tuple(p.G.shape)}")
    if not bool(torch.isfinite(p.W).all()) or not bool(torch.isfinite(p.G).all()):
        raise NumericalError("alps: the weight or the Gram contains NaN/Inf; nothing was computed")


def _prepare(G: torch.Tensor, damping: float, ctx: SolveContext):
    """(d, A, Gn, lam_abs, L, Q, damping used) for the Gram G; shared through ``ctx.memo`` by layers with one input.

    d (d_in,): normaliser; A = D⁻¹(G + λI)D⁻¹ (damped, unit diagonal); Gn = D⁻¹ G D⁻¹ (undamped, for the
    rel_error trace); L, Q: eigenvalues (clamped ≥ 0) and eigenvectors of A.
    """
    key = SolveContext.gram_key("alps.eigh", G, float(damping))
    hit = ctx.memo.get(key) if ctx.memo is not None else None
    if hit is not None:
        if hit[-1] != damping:
            ctx.warn(f"alps: normalised Gram not positive definite at damping {damping:g}; used {hit[-1]:g}")
        return hit
    mean_diag = float(torch.diagonal(G).mean())
    scale = mean_diag if mean_diag > 0 else 1.0  # an all-zero Gram: any support is exact; keep the maths defined
    damp = float(damping)
    for attempt in range(_MAX_DAMP_RAISES + 1):
        lam = damp * scale
        d = torch.diagonal(G).clamp_min(0).add(lam).sqrt() + _EPS_NORM  # (d_in,)
        Gn = G / d.unsqueeze(0) / d.unsqueeze(1)  # (d_in, d_in)
        A = Gn + torch.diag(lam / d**2)
        _, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            L, Q = torch.linalg.eigh(A)
            if bool(torch.isfinite(L).all()) and bool(torch.isfinite(Q).all()):
                break
        damp *= 10
    else:
        raise NumericalError(f"alps: normalised Gram not positive definite even with damping {damp / 10:g}")
    if attempt:
        ctx.warn(f"alps: normalised Gram not positive definite at damping {damping:g}; used {damp:g}")
    out = (d, A, Gn, lam, L.clamp_min(0), Q, damp)
    if ctx.memo is not None:
        ctx.memo[key] = out
    return out


def _ridge_inverse(L: torch.Tensor, Q: torch.Tensor, rho: float) -> torch.Tensor:
    """(A + ρI)⁻¹ = Q diag(1/(L + ρ)) Qᵀ, (d_in, d_in)."""
    return (Q * (1.0 / (L + rho)).unsqueeze(0)) @ Q.T


class _RelError:
    """rel_error of a normalised iterate X (d_in, d_out): (B₀ − X)ᵀ Gn (B₀ − X) / B₀ᵀ Gn B₀ (= ΔW G ΔWᵀ / W G Wᵀ)."""

    def __init__(self, Gn: torch.Tensor, B0: torch.Tensor):
        self.Gn, self.B0 = Gn, B0
        self.den = float(((Gn @ B0).double() * B0.double()).sum())

    def __call__(self, X: torch.Tensor) -> float:
        D = self.B0 - X
        num = max(float(((self.Gn @ D).double() * D.double()).sum()), 0.0)
        if self.den <= 0:
            return 0.0 if num <= 0 else math.inf
        return num / self.den


def _project(X: torch.Tensor, pattern: Pattern, s: float) -> torch.Tensor:
    """Keep-mask (d_in, d_out) of the largest |X| under the pattern (chosen in the (d_out, d_in) layout)."""
    return select_mask(X.abs().T, pattern, s).T


def _column_objective(A: torch.Tensor, C: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Per output column: ½ xᵀ A x − cᵀ x (the damped objective up to a constant), float64 (d_out,)."""
    return (0.5 * (A @ X) - C).double().mul(X.double()).sum(0)


def cg_on_support(A: torch.Tensor, C: torch.Tensor, X0: torch.Tensor, keep: torch.Tensor, iters: int, rtol: float,
                  on_step=None) -> tuple[torch.Tensor, int]:
    """Conjugate gradient for A X = C restricted to the support ``keep`` (d_in, d_out), every column at once.

    A: (d_in, d_in) symmetric positive definite; C, X0: (d_in, d_out), X0 zero off the support. Each column
    minimises ½ xᵀ A x − cᵀ x over vectors supported on its kept entries; residuals are masked, so the iterate
    stays on the support. ``on_step(t, X)`` is called after step t (1-based). Returns (X, steps taken);
    columns whose objective rose through round-off are reset to X0.
    """
    M = keep.to(A.dtype)
    X = X0.clone()
    R = (C - A @ X) * M
    P = R.clone()
    rr = (R * R).sum(0)  # (d_out,)
    stop = (rtol * (C * M).norm(dim=0)) ** 2
    steps = 0
    for t in range(iters):
        if bool((rr <= stop).all()):
            break
        AP = A @ P
        pAp = (P * AP).sum(0)
        alpha = torch.where(pAp > 0, rr / pAp.clamp_min(torch.finfo(A.dtype).tiny), torch.zeros_like(rr))
        X.add_(P * alpha)
        R.sub_(AP * alpha).mul_(M)
        rr_new = (R * R).sum(0)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(A.dtype).tiny), torch.zeros_like(rr))
        P = R + P * beta
        rr = rr_new
        steps = t + 1
        if on_step is not None:
            on_step(steps, X)
    if steps:
        worse = _column_objective(A, C, X) > _column_objective(A, C, X0)
        if bool(worse.any()):
            X[:, worse] = X0[:, worse]
    return X, steps


# --------------------------------------------------------------------------------------- registered


TYPICAL_ITERS = 36  # ADMM iterations before the support settles: 30-36 on every SmolLM2 layer measured (RESULTS §8)


def alps_cost(d_out: int, d_in: int, opts: dict, **_) -> dict:
    """Operation counts of one layer (``pruning.cost_model``): one eigendecomposition of the d_in×d_in Gram
    (≈ 9·d_in³), per ADMM iteration the least-squares product and the traced error (2 × 2·d_in²·d_out), an inverse
    rebuild at every support check (2·d_in³ every ``update_iter``), a selection per iteration, and the CG steps
    (one product each). The iteration count is the typical one (the schedule stops when the support settles)."""
    n = d_out * d_in
    iters = min(int(opts["max_iter"]), TYPICAL_ITERS)
    checks = iters // max(int(opts["update_iter"]), 1)
    objectives = iters if int(opts["objective_every"]) == 1 else iters // max(int(opts["objective_every"]), 1)
    cg = int(opts["cg_iters"])
    return {"matmul_flops": 9.0 * d_in**3 + 2.0 * d_in**3 * checks + 2.0 * n * d_in * (iters + objectives + 2 * cg),
            "admm_elementwise_values": iters * n, "selected_values": iters * n}


@SOLVERS.register(
    "alps",
    kind="update",
    needs_gram=True,
    options=ALPS_OPTIONS,
    summary="ALPS: ADMM on the preconditioned layer problem whose penalty grows while the support still changes "
    "(restarting with a smaller one if it freezes at once), stopped when the support settles, then "
    "conjugate-gradient steps on the fixed support.",
    paper="https://arxiv.org/abs/2406.07831",
    cost=alps_cost,
)
def alps(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext | None = None) -> SolverOutput:
    ctx = ctx or SolveContext()
    o = opts  # resolved and validated once by the registry (solve / SolverSpec.run)
    max_iter, update_iter, switch_iter = int(o["max_iter"]), int(o["update_iter"]), int(o["switch_iter"])
    cg_iters, cg_rtol, obj_every = int(o["cg_iters"]), float(o["cg_rtol"]), int(o["objective_every"])
    _check_problem(p)
    pattern.check_shape(p.W.shape[1])
    s = pattern.sparsity(sparsity)
    n_pruned = prune_count(pattern, tuple(p.W.shape), s)
    if n_pruned == 0:  # nothing to prune: W itself is optimal
        full = torch.ones_like(p.W, dtype=torch.bool)
        return SolverOutput(weight=p.W.clone(), mask=full, info={"iterations": 0, "short_circuit": "nothing to prune"})
    n_kept = p.W.numel() - n_pruned

    d, A, Gn, lam, L, Q, damp = _prepare(p.G, float(o["damping"]), ctx)
    B0 = (p.W * d.unsqueeze(0)).T.contiguous()  # (d_in, d_out)
    C = A @ B0  # (d_in, d_out): right-hand side
    err = _RelError(Gn, B0)
    trace: list[dict] = []

    def record(rec: dict) -> None:
        for key in ("objective", "rho"):
            v = rec.get(key)
            if v is not None and not math.isfinite(v):
                raise NumericalError(f"alps: {key} is NaN/Inf at iteration {rec['iteration']}; the layer was not written")
        trace.append(rec)
        ctx.iteration(rec)

    keep0 = _project(B0, pattern, s)  # (d_in, d_out) initial support
    keep = keep0
    Bm, D, V = B0.clone(), B0 * keep0, torch.zeros_like(B0)
    rho = float(o["rho"])
    inv = _ridge_inverse(L, Q, rho) if max_iter else None
    check_keep, started, restarts, stop_reason, it = keep0, False, 0, "max_iter", 0
    for it in range(1, max_iter + 1):
        rho_used = rho
        Bm = inv @ (C - V + rho * D)
        cand = Bm + V / rho
        new_keep = _project(cand, pattern, s)
        changed = int((new_keep != keep).sum())
        keep = new_keep
        D = cand * keep
        V = V + rho * (Bm - D)
        rec = {"iteration": it, "phase": "admm", "objective": None, "rho": rho_used, "mask_changed": changed,
               "support_change": None, "event": "", "sparsity": n_pruned / p.W.numel()}
        stop = False
        if it % update_iter == 0:
            c = int((keep != check_keep).sum())
            r = c / n_kept
            rec["support_change"] = r
            if r > 0.1:
                rho, started, rec["event"] = rho * 1.3, True, "rho*1.3"
            elif r > 0.005:
                rho, started, rec["event"] = rho * 1.2, True, "rho*1.2"
            elif c > 0:
                if started:
                    rho, rec["event"] = rho * 1.1, "rho*1.1"
                else:  # the support froze at once: ρ too large; start over with a smaller one
                    rho, rec["event"] = rho / 5, "restart"
                    Bm, D, V, keep = B0.clone(), B0 * keep0, torch.zeros_like(B0), keep0
                    restarts += 1
            elif started:
                stop, stop_reason, rec["event"] = True, "settled", "settled"
            else:
                rho, rec["event"] = rho / 5, "rho/5"
            check_keep = keep
            if not stop and it >= switch_iter and r < 3e-4:
                stop, stop_reason, rec["event"] = True, "switch", rec["event"] or "switch"
            rho = min(max(rho, _RHO_MIN), _RHO_MAX)
            if not bool(torch.isfinite(Bm).all()):
                raise NumericalError(f"alps: NaN/Inf in the ADMM iterate at iteration {it}; the layer was not written")
            if rho != rho_used and not stop:
                inv = _ridge_inverse(L, Q, rho)
        if stop or it == max_iter or (obj_every > 0 and it % obj_every == 0):
            rec["objective"] = err(D)
        record(rec)
        if stop:
            break
    admm_iters = it if max_iter else 0

    keep = _project(Bm, pattern, s)  # final support, from the least-squares iterate as the official code
    X0 = Bm * keep
    obj_before_cg = err(X0)

    cg_recs: list[dict] = []  # emitted after CG, so that the last one carries the error of the returned weights

    def on_step(t: int, X: torch.Tensor) -> None:
        cg_recs.append({"iteration": admm_iters + t, "phase": "cg",
                        "objective": err(X) if (obj_every > 0 and t % obj_every == 0) else None, "rho": None,
                        "mask_changed": 0, "support_change": None, "event": "", "sparsity": n_pruned / p.W.numel()})

    X, cg_steps = cg_on_support(A, C, X0, keep, cg_iters, cg_rtol, on_step)
    obj_final = err(X)
    if cg_recs:
        cg_recs[-1]["objective"] = obj_final
    for rec in cg_recs:
        record(rec)
    W_hat = (X / d.unsqueeze(1)).T.contiguous() * keep.T  # (d_out, d_in), exact zeros off the support
    if not bool(torch.isfinite(W_hat).all()):
        raise NumericalError("alps: produced NaN/Inf; the layer was not written")
    info = {
        "iterations": admm_iters,
        "cg_steps": cg_steps,
        "stop_reason": stop_reason if max_iter else "max_iter=0",
        "restarts": restarts,
        "rho_final": rho,
        "damping_used": damp,
        "objective_before_cg": obj_before_cg,
        "objective": obj_final,
    }
    return SolverOutput(weight=W_hat, mask=keep.T.contiguous(), trace=trace, info=info)
