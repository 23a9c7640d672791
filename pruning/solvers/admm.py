"""ADMM weight update with gradual mask selection (ADMM / "ADMM-Grad"), and the exact fixed-mask reference.

Boža 2024, "Fast and Effective Weight Update for Pruned Large Language Models" (TMLR 2024; arXiv 2401.02938,
v1 titled "Fast and Optimal Weight Update for Pruned LLMs"); checked against fmfi-compbio/admm-pruning
lib/admm.py:AdmmPruner.fasterprune at commit 8039208 (called from lib/prune.py:prune_admm with percdamp=0.1,
iterative_prune=15, iters=20). Spec: reference/algorithms.md §5.

Problem (per layer, rows independent): for a keep-mask M, minimise the damped reconstruction error

    f(Ŵ) = ½ tr((Ŵ − W) G (Ŵ − W)ᵀ) + ½ λ Σ_ij d_j² (Ŵ − W)_ij²   subject to  Ŵ = M ⊙ Ŵ.

Preconditioning (as the official code): d_j = sqrt(G_jj) + 1e-8, G' = D⁻¹ G D⁻¹ (unit diagonal), W' = W D
(columns scaled by ‖X_j‖, so |W'| is the Wanda score). Damping λ = damping · mean(diag G') (official
percdamp = 0.1), penalty ρ relative to that unit diagonal (official ρ = 1). In these coordinates the objective is
½ tr((W' − W'₀) (G' + λI) (W' − W'₀)ᵀ), and scaled ADMM on the split W' = Z, Z ∈ {support of M} reads

    Z = (W' + U) ⊙ M                       # projection onto the support (mask re-selected while gradual)
    U = U + W' − Z                           # dual update
    W' = (W'₀ (G' + λI) + ρ (Z − U)) (G' + λI + ρI)⁻¹      # ridge least squares
    output: Z / d (exactly sparse; the output is Z, not W')

Differences from the official code (all deliberate):
* (G' + λI + ρI) is factored once by Cholesky (never ``torch.inverse``: a failed factorisation is detected,
  λ is raised ×10 and a warning is sent through ``ctx.warn``; it cannot fail for a valid Gram, whose diagonal is
  ≥ ρ). By default (``linsolve="inverse"``) the inverse is then formed from the factor once, so that each step
  is one matrix product, as in the official code: on a CPU two triangular solves per step (``linsolve=
  "cholesky"``, ``cholesky_solve``) cost 1.5–2.2× that product. The matrix is well conditioned (eigenvalues
  in [λ+ρ, λ_max+λ+ρ] with ρ = 1 against a unit diagonal), so both give the same iterates to fp32 round-off.
* We keep the nn.Linear (d_out, d_in) layout for masks and scores (score = |W' + U| per original output
  row), so per-row and N:M selection need no transposes; the iterates are stored transposed, (d_in, d_out),
  only so that the solve takes them without copies.
* Exact counts through ``patterns.select_mask`` (stable tie-break), never the official ``>=``/``<=``
  thresholds that can keep or prune extra weights on ties.
* Gradual mask (ADMM-Grad): during the first ``gradual_iters`` mask selections the target sparsity follows
  the cubic schedule s_k = s − s (1 − (k+1)/K)³ for **every** pattern (unstructured over the matrix,
  per-row in every row, N:M as the official 2:4 logic generalised: keep the current N:M winners and prune
  the fraction s_k of all weights with the lowest |W' + U| among the rest; exactly N:M at k = K−1).
  The official code ignores the schedule for unstructured sparsity (its top-k uses the final s, §5
  "code quirk"); ``schedule="official"`` reproduces that for comparison. The official N:M code is 2:4 only.
* The one-shot / first mask is ranked by |W|·sqrt(G_jj), i.e. |W'| without the 1e-8 guard, so that
  ``iters=0, gradual_iters=0, pattern=per-row`` reproduces Wanda bit for bit (invariant 8a).
* ``gradual_iters > iters`` is an error (the official code then stops before reaching the target sparsity).
* Every iteration is traced (objective of the current sparse iterate in the project's rel_error metric,
  damped objective, primal/dual residuals, sparsity target, mask changes); optional early stop (``tol``).
  The objective costs one more (d_in × d_in)·(d_in × d_out) product per iteration, as much as the step itself:
  ``objective_every=N`` computes it every N-th iteration and at the last one only (0: the last one only), for
  runs where nobody looks at the per-iteration curve; the other records then carry ``objective=None``.

Trace record of iteration k (1-based ``iteration``), after the k-th least-squares step and the projection
that follows it (so the last record describes exactly the returned weights):
    objective        = ‖WX − ŴX‖² / ‖WX‖² of Ŵ = Z / d (= pruning.solve.rel_error, computed in float32)
    damped_objective = objective + λ‖W' − Z‖² / ‖WX‖² (the quantity ADMM minimises, same normaliser)
    primal_residual  = ‖W' − Z‖_F / ‖W'₀‖_F,   dual_residual = ρ ‖Z − Z_prev‖_F / ‖W'₀‖_F
    sparsity_target  = target of the mask in use, sparsity = its actual pruned fraction,
    mask_changed     = number of mask entries that changed at this iteration.

The exact reference (UPDATES "exact") solves the same damped objective per row on the support, in float64:
(G' + λI)_SS w'_S = ((G' + λI) w'₀)_S for every row's support S, batched by gathering each row's kept
columns (padded to the largest support with identity rows), Cholesky-factored per row.
"""
from __future__ import annotations

import math

import torch

from ..patterns import Pattern, PatternError, _lowest_k, check_mask, prune_count, select_mask
from .base import SOLVERS, UPDATES, LayerProblem, NumericalError, Option, SolveContext, SolverError, SolverOutput
from .greedy import wanda_score

__all__ = [
    "ADMM_OPTIONS",
    "admm",
    "admm_update",
    "exact_update",
    "exact_solution",
    "damped_objective",
    "schedule_targets",
]

_EPS_NORM = 1e-8  # official: norm = sqrt(diag XX) + 1e-8
_MAX_DAMP_RAISES = 8
_MAX_ITERS = 10_000
_EXACT_CHUNK_ELEMS = 1 << 24  # float64 elements per batched exact solve (128 MiB)

# Solvers whose masks ADMM may start from; resolved against the registry at call time (ria / sparsefw are
# registered by their own modules and may be missing in a given build: a clear error then names them).
MASK_SOURCES = ("gradual", "magnitude", "wanda", "sparsegpt", "ria", "sparsefw")

_ITERS = Option("iters", 20, "int", "ADMM iterations (least-squares steps). 0 = mask only.", min=0, max=_MAX_ITERS)
_RHO = Option("rho", 1.0, "float", "ADMM penalty ρ, relative to the unit diagonal of the normalised Gram (official 1).",
              min=0.0, min_inclusive=False, max=1e6)
_DAMPING = Option("damping", 0.1, "float", "Ridge λ as a fraction of mean(diag) of the normalised Gram (official percdamp 0.1).",
                  min=0.0, min_inclusive=False, max=1e3)
_LINSOLVE = Option("linsolve", "inverse", "choice", "How each least-squares step uses the Cholesky factor of G'+(λ+ρ)I: "
                   "'inverse' (inverse formed from the factor once; one matrix product per step) or 'cholesky' (two "
                   "triangular solves per step).", choices=("inverse", "cholesky"))
_OBJ_EVERY = Option("objective_every", 1, "int", "Trace the objective of the sparse iterate every N iterations and at the last "
                    "one (each costs one more matrix product); 0 = at the last iteration only.", min=0, max=_MAX_ITERS)
_TOL = Option("tol", 0.0, "float", "Early stop once primal and dual residuals (relative to ‖W'₀‖) are both ≤ tol "
              "(after the gradual phase). 0 = always run every iteration.", min=0.0, max=1.0)

ADMM_OPTIONS = (
    _ITERS,
    Option("gradual_iters", 15, "int", "Mask re-selections from |W'+U| on the sparsity schedule (official iterative_prune); "
           "0 = one-shot mask from |W'|. Must be ≤ iters. Ignored when mask_from names a solver.", min=0, max=_MAX_ITERS),
    Option("mask_from", "gradual", "choice", "Where the mask comes from: 'gradual' (ADMM-Grad: re-selected from |W'+U|) or "
           "a registered mask solver, whose mask is then kept fixed.", choices=MASK_SOURCES),
    _RHO,
    _DAMPING,
    Option("schedule", "cubic", "choice", "Sparsity schedule of the gradual mask: 'cubic' for every pattern, or 'official' "
           "(final sparsity at every step for unstructured, as the official code does).", choices=("cubic", "official")),
    _TOL,
    _LINSOLVE,
    _OBJ_EVERY,
)
UPDATE_OPTIONS = (_ITERS, _RHO, _DAMPING, _TOL, _LINSOLVE, _OBJ_EVERY)
EXACT_OPTIONS = (_DAMPING,)


# ---------------------------------------------------------------------------------------------- checks


def _check_problem(p: LayerProblem, what: str) -> None:
    if p.G is None:
        raise SolverError(f"gram: {what} needs calibration statistics (the Gram X Xᵀ); got None")
    if p.W.dim() != 2 or tuple(p.G.shape) != (p.W.shape[1], p.W.shape[1]):
        raise SolverError(f"gram: expected shape ({p.W.shape[-1]}, {p.W.shape[-1]}) for a weight of shape "
                          f"{tuple(p.W.shape)}, got {tuple(p.G.shape)}")
    if not bool(torch.isfinite(p.W).all()) or not bool(torch.isfinite(p.G).all()):
        raise NumericalError(f"{what}: the weight or the Gram contains NaN/Inf; nothing was computed")


def _as_mask(keep, W: torch.Tensor, field: str = "mask") -> torch.Tensor:
    """A user mask as a bool (d_out, d_in) tensor on W's device (True = kept), or SolverError."""
    if not isinstance(keep, torch.Tensor):
        raise SolverError(f"{field}: expected a boolean tensor of shape {tuple(W.shape)}, got {type(keep).__name__}")
    if tuple(keep.shape) != tuple(W.shape):
        raise SolverError(f"{field}: expected shape {tuple(W.shape)} (d_out, d_in) like the weight, got {tuple(keep.shape)}")
    if keep.dtype != torch.bool:
        if bool(((keep != 0) & (keep != 1)).any()):
            raise SolverError(f"{field}: must be boolean (True = kept) or 0/1, got other values")
        keep = keep != 0
    return keep.to(W.device)


def _resolve(registry, name: str, opts: dict | None) -> dict:
    return registry.resolve_options(name, dict(opts or {}))


# ------------------------------------------------------------------------------------- normalisation


def _normalise(W: torch.Tensor, G: torch.Tensor, damping: float):
    """float32 preconditioning of the official code.

    Returns d (d_in,), G' (d_in, d_in) with unit diagonal (0 for dead inputs), W' = W·d (d_out, d_in), λ.
    """
    d = torch.diagonal(G).clamp_min(0).sqrt() + _EPS_NORM  # (d_in,)
    Gn = G / d.unsqueeze(0) / d.unsqueeze(1)  # (d_in, d_in)
    Wn = W * d.unsqueeze(0)  # (d_out, d_in)
    lam = float(damping) * float(torch.diagonal(Gn).mean())
    return d, Gn, Wn, lam


def _factor(Gn: torch.Tensor, lam: float, rho: float, ctx: SolveContext, what: str) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of G' + (λ+ρ)I, raising λ ×10 (with a warning) if it is not positive definite."""
    eye = torch.eye(Gn.shape[0], dtype=Gn.dtype, device=Gn.device)
    lam0 = lam
    for attempt in range(_MAX_DAMP_RAISES + 1):
        L, info = torch.linalg.cholesky_ex(Gn + (lam + rho) * eye)
        if int(info) == 0 and bool(torch.isfinite(L).all()):
            if attempt:
                ctx.warn(f"{what}: Cholesky failed at damping λ={lam0:g}; succeeded at λ={lam:g}")
            return L, lam
        lam = lam * 10 if lam > 0 else 1e-6
    raise NumericalError(f"{what}: normalised Gram not positive definite even with damping λ={lam:g}")


# -------------------------------------------------------------------------------------- gradual mask


def schedule_targets(pattern: Pattern, sparsity: float, gradual_iters: int, schedule: str = "cubic") -> list[float]:
    """Sparsity targets s_0..s_{K−1} of the K gradual mask selections (fraction of all weights pruned).

    cubic: s_k = s − s (1 − (k+1)/K)³ (k = 0 → ≈ 0.187 s for K = 15, k = K−1 → s).
    official: the same, except for ``unstructured`` where the official code prunes the final s every time.
    For N:M, s = N/M.
    """
    s = pattern.sparsity(sparsity)
    K = int(gradual_iters)
    if schedule == "official" and pattern.kind == "unstructured":
        return [s] * K
    return [s - s * (1.0 - (k + 1) / K) ** 3 for k in range(K)]


def _select_gradual(score: torch.Tensor, pattern: Pattern, target: float, last: bool) -> torch.Tensor:
    """Keep-mask (d_out, d_in) for one gradual step: prune the fraction ``target`` with the lowest score."""
    if pattern.kind != "nm":
        return select_mask(score, pattern, target)
    winners = select_mask(score, pattern, 0.0)  # the current N:M mask
    if last:
        return winners
    # keep every N:M winner; among the others prune the lowest ⌊target·numel⌋ (target ≤ N/M, so only losers go),
    # ties by flat index as everywhere: the losers are taken in flat order
    k = prune_count(Pattern("unstructured"), tuple(score.shape), target)
    keep = torch.ones_like(winners)
    if k > 0:
        losers = ~winners
        keep[losers] = ~_lowest_k(score[losers].unsqueeze(0), k).squeeze(0)
    return keep


# ------------------------------------------------------------------------------------------ objective


class _Objective:
    """rel_error of a normalised sparse iterate, from G' (no mapping back needed: ΔW G ΔWᵀ = ΔW' G' ΔW'ᵀ)."""

    def __init__(self, Gn: torch.Tensor, WnT: torch.Tensor, lam: float):
        self.Gn, self.WnT, self.lam = Gn, WnT, lam  # WnT: (d_in, d_out)
        self.den = float(((Gn @ WnT).double() * WnT.double()).sum())

    def __call__(self, ZT: torch.Tensor) -> tuple[float, float]:
        D = self.WnT - ZT  # (d_in, d_out)
        num = float(torch.dot((self.Gn @ D).reshape(-1), D.reshape(-1)))
        ridge = float(torch.dot(D.reshape(-1), D.reshape(-1)))
        num = max(num, 0.0)
        if self.den <= 0:
            return (0.0 if num <= 0 else math.inf), (0.0 if num + ridge <= 0 else math.inf)
        return num / self.den, (num + self.lam * ridge) / self.den


# ------------------------------------------------------------------------------------------ ADMM core


def _run_admm(
    W: torch.Tensor,
    G: torch.Tensor,
    keep0: torch.Tensor,
    iters: int,
    rho: float,
    damping: float,
    tol: float,
    ctx: SolveContext,
    what: str,
    reselect=None,
    target0: float = 0.0,
    linsolve: str = "inverse",
    objective_every: int = 1,
) -> SolverOutput:
    """ADMM from the keep-mask ``keep0`` (d_out, d_in).

    ``reselect(j, score) -> (keep, target)`` is called for mask selections j = 1, 2, ... while it returns
    a mask (gradual phase); ``None`` freezes the mask from then on.
    """
    if bool(keep0.all()) and reselect is None:
        # nothing pruned: the unconstrained minimiser is W itself (bit-identical, invariant 2)
        return SolverOutput(weight=W.clone(), mask=keep0, trace=[], info={"iterations": 0, "short_circuit": "mask keeps every weight"})
    if iters == 0:
        # mask only; multiply in original coordinates so that a Wanda mask reproduces Wanda exactly (8a)
        return SolverOutput(weight=W * keep0, mask=keep0, trace=[], info={"iterations": 0})

    d, Gn, Wn, lam = _normalise(W, G, damping)
    L, lam = _factor(Gn, lam, rho, ctx, what)  # (d_in, d_in) lower
    if linsolve == "inverse":
        A = torch.cholesky_inverse(L)  # (d_in, d_in) = (G' + (λ+ρ)I)⁻¹, from the factor

        def step(R):
            return A @ R
    else:

        def step(R):
            return torch.cholesky_solve(R, L)

    W0T = Wn.T.contiguous()  # (d_in, d_out): W'₀ in the solver layout
    B = Gn @ W0T + lam * W0T  # (d_in, d_out): (G' + λI) W'₀, fixed right-hand side
    objective = _Objective(Gn, W0T, lam)
    scale = float(W0T.norm()) or 1.0

    keep = keep0
    maskT = keep.T.contiguous()  # (d_in, d_out), the solver layout
    WT = W0T.clone()
    UT = torch.zeros_like(W0T)
    ZT = W0T * maskT
    target = target0
    obj0, dobj0 = objective(ZT)
    trace: list[dict] = []
    stopped_early = False
    gradual_done = reselect is None
    for k in range(iters):
        UT += WT - ZT
        WT = step(torch.add(B, ZT - UT, alpha=rho))  # (d_in, d_out): ridge least-squares step
        VT = WT + UT
        changed = 0
        if not gradual_done:
            sel = reselect(k + 1, VT.abs().T)
            if sel is None:
                gradual_done = True
            else:
                new_keep, target = sel
                changed = int((new_keep != keep).sum())
                keep = new_keep
                maskT = keep.T.contiguous()
        Znew = VT * maskT
        primal = float((WT - Znew).norm()) / scale
        dual = rho * float((Znew - ZT).norm()) / scale
        ZT = Znew
        stop = tol > 0 and gradual_done and primal <= tol and dual <= tol
        if stop or k + 1 == iters or (objective_every > 0 and (k + 1) % objective_every == 0):
            obj, dobj = objective(ZT)
        else:
            obj = dobj = None
        rec = {
            "iteration": k + 1,
            "objective": obj,
            "damped_objective": dobj,
            "primal_residual": primal,
            "dual_residual": dual,
            "sparsity_target": float(target),
            "sparsity": 1.0 - float(keep.sum()) / keep.numel(),
            "mask_changed": changed,
        }
        trace.append(rec)
        ctx.iteration(rec)
        if not (math.isfinite(primal) and (obj is None or math.isfinite(obj))):
            raise NumericalError(f"{what}: NaN/Inf at iteration {k + 1}; the layer was not written")
        if stop:
            stopped_early = k + 1 < iters
            break

    out = (ZT / d.unsqueeze(1)).T.contiguous()  # (d_out, d_in), exactly zero off the support
    if not bool(torch.isfinite(out).all()):
        raise NumericalError(f"{what}: produced NaN/Inf; the layer was not written")
    info = {
        "iterations": len(trace),
        "stopped_early": stopped_early,
        "rho": rho,
        "damping_used": lam / max(float(torch.diagonal(Gn).mean()), 1e-30),
        "lambda": lam,
        "objective_init": obj0,
        "damped_objective_init": dobj0,
        "objective": trace[-1]["objective"],
        "damped_objective": trace[-1]["damped_objective"],
    }
    return SolverOutput(weight=out, mask=keep, trace=trace, info=info)


# --------------------------------------------------------------------------------------- registered


@SOLVERS.register(
    "admm",
    kind="update",
    needs_gram=True,
    options=ADMM_OPTIONS,
    summary="ADMM: optimal weight update on the mask by alternating least squares and projection; by default the mask "
    "is re-selected from the iterate on a cubic sparsity schedule (ADMM-Grad), then frozen.",
    paper="https://arxiv.org/abs/2401.02938",
    reference="fmfi-compbio/admm-pruning lib/admm.py:AdmmPruner.fasterprune (8039208)",
)
def admm(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext | None = None,
         keep: torch.Tensor | None = None) -> SolverOutput:
    """ADMM(-Grad) on one layer. ``keep`` (optional, (d_out, d_in) bool) is a user mask: it must satisfy
    ``pattern`` at ``sparsity`` exactly and is then used as a fixed mask (``mask_from`` is ignored)."""
    ctx = ctx or SolveContext()
    o = _resolve(SOLVERS, "admm", opts)
    iters, K, source = int(o["iters"]), int(o["gradual_iters"]), o["mask_from"]
    if keep is not None:
        keep = _as_mask(keep, p.W)
        try:
            check_mask(keep, pattern, sparsity)
        except PatternError as e:
            raise SolverError(f"mask: does not match pattern {pattern} at sparsity {sparsity:g}: {e}") from None
        source = "user"
    elif source == "gradual":
        if K > iters:
            raise SolverError(f"admm.gradual_iters: {K} exceeds admm.iters={iters}; the gradual mask must reach the "
                              f"target sparsity before the last iteration (allowed: 0..iters)")
    else:
        if source == "admm" or source not in SOLVERS:
            allowed = ["gradual"] + [n for n in SOLVERS.names() if n != "admm"]
            raise SolverError(f"admm.mask_from: solver {source!r} is not registered; allowed: {', '.join(allowed)}")
    _check_problem(p, "admm")
    pattern.check_shape(p.W.shape[1])
    s = pattern.sparsity(sparsity)
    info = {"mask_from": source, "schedule": o["schedule"]}
    if prune_count(pattern, tuple(p.W.shape), s) == 0:  # nothing to prune: W itself is optimal (invariant 2)
        full = torch.ones_like(p.W, dtype=torch.bool)
        return SolverOutput(weight=p.W.clone(), mask=full, info={**info, "iterations": 0, "short_circuit": "nothing to prune"})

    if source == "gradual" and K > 0:
        targets = schedule_targets(pattern, s, K, o["schedule"])
        keep0 = _select_gradual(wanda_score(p.W, p.G), pattern, targets[0], last=K == 1)

        def reselect(j: int, score: torch.Tensor):
            if j >= K:
                return None
            return _select_gradual(score, pattern, targets[j], last=j == K - 1), targets[j]

        out = _run_admm(p.W, p.G, keep0, iters, o["rho"], o["damping"], o["tol"], ctx, "admm", reselect, targets[0],
                        o["linsolve"], int(o["objective_every"]))
    else:
        if keep is None and source == "gradual":  # one-shot mask from |W'| (official iterative_prune=0)
            keep = select_mask(wanda_score(p.W, p.G), pattern, s)
        elif keep is None:
            spec = SOLVERS.get(source)
            sub = spec.fn(p, pattern, s, spec.defaults(), SolveContext(on_warning=ctx.on_warning))
            keep = sub.mask
        out = _run_admm(p.W, p.G, keep, iters, o["rho"], o["damping"], o["tol"], ctx, "admm", None, s,
                        o["linsolve"], int(o["objective_every"]))
    out.info.update(info)
    return out


@UPDATES.register(
    "admm",
    kind="update",
    needs_gram=True,
    options=UPDATE_OPTIONS,
    summary="ADMM weight update on a given (fixed) mask: converges to the least-squares optimum on the support.",
    paper="https://arxiv.org/abs/2401.02938",
    reference="fmfi-compbio/admm-pruning lib/admm.py:AdmmPruner.fasterprune (iterative_prune=0)",
)
def admm_update(p: LayerProblem, keep: torch.Tensor, opts: dict, ctx: SolveContext | None = None) -> SolverOutput:
    ctx = ctx or SolveContext()
    o = _resolve(UPDATES, "admm", opts)
    keep = _as_mask(keep, p.W)
    _check_problem(p, "admm update")
    out = _run_admm(p.W, p.G, keep, int(o["iters"]), o["rho"], o["damping"], o["tol"], ctx, "admm update", None,
                    1.0 - float(keep.sum()) / keep.numel(), o["linsolve"], int(o["objective_every"]))
    out.info["mask_from"] = "given"
    return out


# ------------------------------------------------------------------------------------ exact reference


def exact_solution(W: torch.Tensor, G: torch.Tensor, keep: torch.Tensor, damping: float = 0.1) -> torch.Tensor:
    """Per-row least squares on the support, minimising ADMM's damped objective exactly (float64).

    W: (d_out, d_in), G: (d_in, d_in), keep: bool (d_out, d_in). Returns Ŵ (d_out, d_in) float64, zero off
    the support. Rows are solved in batches of similar support size: each row's kept columns are gathered,
    padded to the batch's largest support with identity rows and zero right-hand side, and the systems are
    Cholesky-factored together. Cost ≈ Σ_rows |S_i|³/3 flops in float64 (a reference, not a fast path).
    """
    Wd, Gd64 = W.double(), G.double()
    d = torch.diagonal(Gd64).clamp_min(0).sqrt() + _EPS_NORM  # (d_in,)
    Gn = Gd64 / d.unsqueeze(0) / d.unsqueeze(1)
    lam = float(damping) * float(torch.diagonal(Gn).mean())
    A = Gn + lam * torch.eye(Gn.shape[0], dtype=Gn.dtype, device=Gn.device)  # (d_in, d_in) damped
    Wn = Wd * d.unsqueeze(0)  # (d_out, d_in)
    B = Wn @ A  # (d_out, d_in): row i is ((G'+λI) w'₀_i)ᵀ
    d_out, d_in = W.shape
    counts = keep.sum(dim=1)  # (d_out,) support size of every row
    out = torch.zeros_like(Wn)
    rows = torch.sort(counts, stable=True).indices  # ascending support size: a batch holds similar sizes
    cols = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # (d_out, d_in): kept columns first
    chunk = max(1, _EXACT_CHUNK_ELEMS // max(int(counts.max()) ** 2, 1)) if d_out else 1
    for r0 in range(0, d_out, chunk):
        sel = rows[r0 : r0 + chunk]  # (c,)
        kmax = int(counts[sel[-1]])  # the largest support in this batch; the others are padded to it
        if kmax == 0:
            continue
        idx = cols[sel, :kmax]  # (c, kmax)
        v = (torch.arange(kmax, device=W.device).unsqueeze(0) < counts[sel].unsqueeze(1)).to(A.dtype)  # (c, kmax)
        Asub = A[idx.unsqueeze(2), idx.unsqueeze(1)]  # (c, kmax, kmax)
        Asub = Asub * (v.unsqueeze(2) * v.unsqueeze(1)) + torch.diag_embed(1.0 - v)  # identity on padding
        b = torch.gather(B[sel], 1, idx) * v  # (c, kmax)
        Lc, info = torch.linalg.cholesky_ex(Asub)
        if bool((info != 0).any()):
            raise NumericalError("exact: the damped Gram restricted to a row's support is not positive definite")
        x = torch.cholesky_solve(b.unsqueeze(2), Lc).squeeze(2) * v  # (c, kmax)
        out[sel.unsqueeze(1), idx] = x
    return out / d.unsqueeze(0)


@UPDATES.register(
    "exact",
    kind="update",
    needs_gram=True,
    options=EXACT_OPTIONS,
    summary="Exact per-row least squares on the mask's support (float64 reference; same damped objective as ADMM).",
    paper="https://arxiv.org/abs/2401.02938",
)
def exact_update(p: LayerProblem, keep: torch.Tensor, opts: dict, ctx: SolveContext | None = None) -> SolverOutput:
    o = _resolve(UPDATES, "exact", opts)
    keep = _as_mask(keep, p.W)
    _check_problem(p, "exact")
    if bool(keep.all()):
        return SolverOutput(weight=p.W.clone(), mask=keep, info={"short_circuit": "mask keeps every weight"})
    W_hat = exact_solution(p.W, p.G, keep, o["damping"]).to(p.W.dtype)
    if not bool(torch.isfinite(W_hat).all()):
        raise NumericalError("exact: produced NaN/Inf; the layer was not written")
    return SolverOutput(weight=W_hat * keep, mask=keep, info={"damping": o["damping"]})


def damped_objective(W: torch.Tensor, W_hat: torch.Tensor, G: torch.Tensor, damping: float = 0.1) -> float:
    """ADMM's damped objective, relative like rel_error (float64):

    [tr(ΔW G ΔWᵀ) + λ Σ_ij d_j² ΔW_ij²] / tr(W G Wᵀ),  d_j = sqrt(G_jj) + 1e-8, λ = damping·mean(G_jj / d_j²).
    ``exact`` minimises it on the support, so it lower-bounds every other update on the same mask.
    """
    Wd, Gd, D = W.double(), G.double(), (W.double() - W_hat.double())
    d = torch.diagonal(Gd).clamp_min(0).sqrt() + _EPS_NORM
    lam = float(damping) * float((torch.diagonal(Gd) / d**2).mean())
    num = float(((D @ Gd) * D).sum()) + lam * float(((D * d.unsqueeze(0)) ** 2).sum())
    den = float(((Wd @ Gd) * Wd).sum())
    if den <= 0:
        return 0.0 if num <= 0 else math.inf
    return num / den

