"""ADMM weight update with gradual mask selection (ADMM / "ADMM-Grad"), and the exact fixed-mask reference.

Boža 2024, "Fast and Effective Weight Update for Pruned Large Language Models" (TMLR 2024; arXiv 2401.02938,
v1 titled "Fast and Optimal Weight Update for Pruned LLMs"); checked against fmfi-compbio/admm-pruning
lib/admm.py:AdmmPruner.fasterprune at commit 8039208 (called from lib/prune.py:prune_admm with percdamp=0.1,
iterative_prune=15, iters=20). Described in docs/algorithms.md, "ADMM".

Problem (per layer, rows independent): for a keep-mask M, minimise the damped reconstruction error

    f(Ŵ) = ½ tr((Ŵ − W) G (Ŵ − W)ᵀ) + ½ λ Σ_ij d_j² (Ŵ − W)_ij²   subject to  Ŵ = M ⊙ Ŵ.

Preconditioning (as the official code): d_j = sqrt(G_jj) + 1e-8, G' = D⁻¹ G D⁻¹ (unit diagonal), W' = W D
(columns scaled by ‖X_j‖, so |W'| is the Wanda score). Damping λ = damping · mean(diag G') (official
percdamp = 0.1), penalty ρ relative to that unit diagonal (official ρ = 1). In these coordinates the objective is
½ tr((W' − W'₀) (G' + λI) (W' − W'₀)ᵀ), and scaled ADMM on the split W' = Z, Z ∈ {support of M} reads, in the
order of the code (one iteration; W' = W'₀, U = 0, Z = W'₀ ⊙ M₀ at the start)

    U = U + W' − Z                                          # dual update
    W' = (W'₀ (G' + λI) + ρ (Z − U)) (G' + λI + ρI)⁻¹       # ridge least squares
    Z = (W' + U) ⊙ M                                        # projection onto the support (M re-selected while gradual)
    output: Z / d (exactly sparse; the output is Z, not W')

Differences from the official code (all deliberate):
* (G' + λI + ρI) is factored once by Cholesky (never ``torch.inverse``: a failed factorisation is detected,
  λ is raised ×10 and a warning is sent through ``ctx.warn``, see ``linalg.damped_cholesky``; it cannot fail for
  a valid Gram, whose diagonal is ≥ ρ). The inverse is then formed from the factor once, so that each step is
  one matrix product, as in the official code. This is chosen per device by ``_linsolve`` (not a user option):
  on a CPU two triangular solves per step (``cholesky_solve``) cost 1.5–2.2× that product (measured); on a GPU
  a matrix product is the better-optimised kernel too, so both devices use the product today. The matrix is well
  conditioned (eigenvalues in [λ+ρ, λ_max+λ+ρ] with ρ = 1 against a unit diagonal), so both paths give the same
  iterates to fp32 round-off (tested).
* We keep the nn.Linear (d_out, d_in) layout for masks and scores (score = |W' + U| per original output
  row), so per-row and N:M selection need no transposes; the iterates are stored transposed, (d_in, d_out),
  only so that the solve takes them without copies.
* Exact counts through ``patterns.select_mask`` (stable tie-break), never the official ``>=``/``<=``
  thresholds that can keep or prune extra weights on ties.
* Gradual mask (ADMM-Grad): during the first ``gradual_iters`` mask selections the target sparsity follows
  the cubic schedule s_k = s − s (1 − (k+1)/K)³ for **every** pattern (unstructured over the matrix,
  per-row in every row, N:M as the official 2:4 logic generalised: keep the current N:M winners and prune
  the fraction s_k of all weights with the lowest |W' + U| among the rest; exactly N:M at k = K−1).
  The official code ignores the schedule for unstructured sparsity (its top-k uses the final s); the
  benchmark ``benchmarks/bench_admm_official.py`` reproduces that quirk through ``AdmmOptions(schedule=
  "official")`` (a private parameter, not a user option). The official N:M code is 2:4 only.
* The one-shot / first mask is ranked by |W|·sqrt(G_jj), i.e. |W'| without the 1e-8 guard, so that
  ``iters=0, gradual_iters=0, pattern=per-row`` reproduces Wanda bit for bit (invariant 8a).
* ``gradual_iters > iters`` is an error (the official code then stops before reaching the target sparsity).
* Fixed masks come from composition (``--solver wanda --update admm``: ``admm_update`` on the mask solver's mask);
  ``gradual_iters=0`` is the one-shot mask from |W'| (Wanda's mask, official ``iterative_prune=0``).
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

The exact reference (UPDATES "exact", ``solvers/exact.py``) minimises the same damped objective exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..patterns import Pattern, PatternError, _lowest_k, check_mask, prune_count, select_mask
from .base import SOLVERS, UPDATES, LayerProblem, NumericalError, Option, SolveContext, SolverError, SolverOutput
from .greedy import wanda_score
from .linalg import damped_cholesky

__all__ = ["ADMM_OPTIONS", "AdmmOptions", "admm", "admm_layer", "admm_update", "schedule_targets"]

EPS_NORM = 1e-8  # official: norm = sqrt(diag XX) + 1e-8
_MAX_ITERS = 10_000

_ITERS = Option("iters", 20, "int", "ADMM iterations (least-squares steps). 0 = mask only.", min=0, max=_MAX_ITERS)
_RHO = Option("rho", 1.0, "float", "ADMM penalty ρ, relative to the unit diagonal of the normalised Gram (official 1).",
              min=0.0, min_inclusive=False, max=1e6)
_DAMPING = Option("damping", 0.1, "float", "Ridge λ as a fraction of mean(diag) of the normalised Gram (official percdamp 0.1).",
                  min=0.0, min_inclusive=False, max=1e3)
_OBJ_EVERY = Option("objective_every", 1, "int", "Trace the objective of the sparse iterate every N iterations and at the last "
                    "one (each costs one more matrix product); 0 = at the last iteration only.", min=0, max=_MAX_ITERS)
_TOL = Option("tol", 0.0, "float", "Early stop once primal and dual residuals (relative to ‖W'₀‖) are both ≤ tol "
              "(after the gradual phase). 0 = always run every iteration.", min=0.0, max=1.0)

ADMM_OPTIONS = (
    _ITERS,
    Option("gradual_iters", 15, "int", "Mask re-selections from |W'+U| on the cubic sparsity schedule (ADMM-Grad; official "
           "iterative_prune); 0 = one-shot mask from |W'| (Wanda's), kept fixed. Must be ≤ iters. For another fixed "
           "mask compose: --solver wanda --update admm.", min=0, max=_MAX_ITERS),
    _RHO,
    _DAMPING,
    _TOL,
    _OBJ_EVERY,
)
UPDATE_OPTIONS = (_ITERS, _RHO, _DAMPING, _TOL, _OBJ_EVERY)


@dataclass(frozen=True)
class AdmmOptions:
    """Everything one ADMM run needs; built from the resolved user options by :meth:`from_options`.

    ``schedule`` ("cubic" | "official") and ``linsolve`` (None = per device, "inverse" | "cholesky") are not user
    options: the official-quirk benchmark and the tests set them here.
    """

    iters: int = 20
    gradual_iters: int = 15
    rho: float = 1.0
    damping: float = 0.1
    tol: float = 0.0
    objective_every: int = 1
    schedule: str = "cubic"
    linsolve: str | None = None

    @classmethod
    def from_options(cls, opts: dict, **private) -> "AdmmOptions":
        return cls(iters=int(opts["iters"]), gradual_iters=int(opts.get("gradual_iters", 0)), rho=float(opts["rho"]),
                   damping=float(opts["damping"]), tol=float(opts["tol"]), objective_every=int(opts["objective_every"]),
                   **private)


def _linsolve(device: torch.device) -> str:
    """How a least-squares step uses the factor: 'inverse' (one product per step; formed once from the factor).
    CPU: two triangular solves cost 1.5–2.2× the product (measured on SmolLM2 layers); CUDA: a product is the
    better-optimised kernel as well. 'cholesky' (two solves) stays available to the tests, which check both agree."""
    return "inverse"


# ---------------------------------------------------------------------------------------------- checks


def _check_finite(p: LayerProblem, what: str) -> None:
    if not bool(torch.isfinite(p.W).all()) or not bool(torch.isfinite(p.G).all()):
        raise NumericalError(f"{what}: the weight or the Gram contains NaN/Inf; nothing was computed")


def as_keep_mask(keep, W: torch.Tensor, field: str = "mask") -> torch.Tensor:
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


# ------------------------------------------------------------------------------------- normalisation


def _normalise(W: torch.Tensor, G: torch.Tensor, damping: float):
    """float32 preconditioning of the official code.

    Returns d (d_in,), G' (d_in, d_in) with unit diagonal (0 for dead inputs), W' = W·d (d_out, d_in), λ.
    """
    d = torch.diagonal(G).clamp_min(0).sqrt() + EPS_NORM  # (d_in,)
    Gn = G / d.unsqueeze(0) / d.unsqueeze(1)  # (d_in, d_in)
    Wn = W * d.unsqueeze(0)  # (d_out, d_in)
    lam = float(damping) * float(torch.diagonal(Gn).mean())
    return d, Gn, Wn, lam


# -------------------------------------------------------------------------------------- gradual mask


def schedule_targets(pattern: Pattern, sparsity: float, gradual_iters: int, schedule: str = "cubic") -> list[float]:
    """Sparsity targets s_0..s_{K−1} of the K gradual mask selections (fraction of all weights pruned).

    cubic: s_k = s − s (1 − (k+1)/K)³ (k = 0 → ≈ 0.187 s for K = 15, k = K−1 → s).
    official (benchmarks only): the same, except for ``unstructured`` where the official code prunes the final s
    every time. For N:M, s = N/M.
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
    if k <= 0:
        return torch.ones_like(winners)
    # the winners ranked last (+inf), so the k lowest of the whole matrix are the k lowest losers, in flat order
    # (k ≤ the number of losers); no gather of the losers and scatter back
    return ~_lowest_k(score.masked_fill(winners, math.inf).reshape(1, -1), k).view(score.shape)


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


@dataclass
class _Setup:
    d: torch.Tensor  # (d_in,) column scales
    Gn: torch.Tensor  # (d_in, d_in) normalised Gram G'
    lam: float  # absolute ridge λ (after any raise)
    W0T: torch.Tensor  # (d_in, d_out): W'₀ in the solver layout
    B: torch.Tensor  # (d_in, d_out): (G' + λI) W'₀, the fixed right-hand side
    step: object  # R -> (G' + (λ+ρ)I)⁻¹ R
    objective: _Objective
    scale: float  # ‖W'₀‖_F (residual normaliser)


def _setup(W: torch.Tensor, G: torch.Tensor, o: AdmmOptions, ctx: SolveContext, what: str) -> _Setup:
    """Normalise, factor G' + (λ+ρ)I once (λ raised if needed) and choose the step's linear solve."""
    d, Gn, Wn, lam = _normalise(W, G, o.damping)
    L, lam = damped_cholesky(Gn, lam, 1.0, ctx, what, shift=o.rho)  # (d_in, d_in) lower, of G' + (λ+ρ)I
    if (o.linsolve or _linsolve(W.device)) == "inverse":
        A = torch.cholesky_inverse(L)  # (d_in, d_in) = (G' + (λ+ρ)I)⁻¹, from the factor

        def step(R):
            return A @ R
    else:

        def step(R):
            return torch.cholesky_solve(R, L)

    W0T = Wn.T.contiguous()
    return _Setup(d=d, Gn=Gn, lam=lam, W0T=W0T, B=Gn @ W0T + lam * W0T, step=step,
                  objective=_Objective(Gn, W0T, lam), scale=float(W0T.norm()) or 1.0)


def _record(k: int, obj, dobj, primal: float, dual: float, target: float, keep: torch.Tensor, changed: int) -> dict:
    """The trace record of iteration k (0-based), see the module docstring."""
    return {
        "iteration": k + 1,
        "objective": obj,
        "damped_objective": dobj,
        "primal_residual": primal,
        "dual_residual": dual,
        "sparsity_target": float(target),
        "sparsity": 1.0 - float(keep.sum()) / keep.numel(),
        "mask_changed": changed,
    }


def _run_admm(W: torch.Tensor, G: torch.Tensor, keep0: torch.Tensor, o: AdmmOptions, ctx: SolveContext, what: str,
              reselect=None, target0: float = 0.0) -> SolverOutput:
    """ADMM from the keep-mask ``keep0`` (d_out, d_in) for ``o.iters`` iterations.

    ``reselect(j, score) -> (keep, target)`` is called for mask selections j = 1, 2, ... while it returns
    a mask (gradual phase); ``None`` freezes the mask from then on.
    """
    if bool(keep0.all()) and reselect is None:
        # nothing pruned: the unconstrained minimiser is W itself (bit-identical, invariant 2)
        return SolverOutput(weight=W.clone(), mask=keep0, trace=[], info={"iterations": 0, "short_circuit": "mask keeps every weight"})
    if o.iters == 0:
        # mask only; multiply in original coordinates so that a Wanda mask reproduces Wanda exactly (8a)
        return SolverOutput(weight=W * keep0, mask=keep0, trace=[], info={"iterations": 0})

    st = _setup(W, G, o, ctx, what)
    rho = o.rho
    keep = keep0
    maskT = keep.T.contiguous()  # (d_in, d_out), the solver layout
    WT = st.W0T.clone()
    UT = torch.zeros_like(st.W0T)
    ZT = st.W0T * maskT
    target = target0
    obj0, dobj0 = st.objective(ZT)
    trace: list[dict] = []
    stopped_early = False
    gradual_done = reselect is None
    for k in range(o.iters):
        UT += WT - ZT  # dual update
        WT = st.step(torch.add(st.B, ZT - UT, alpha=rho))  # (d_in, d_out): ridge least-squares step
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
        Znew = VT * maskT  # projection onto the support
        primal = float((WT - Znew).norm()) / st.scale
        dual = rho * float((Znew - ZT).norm()) / st.scale
        ZT = Znew
        stop = o.tol > 0 and gradual_done and primal <= o.tol and dual <= o.tol
        if stop or k + 1 == o.iters or (o.objective_every > 0 and (k + 1) % o.objective_every == 0):
            obj, dobj = st.objective(ZT)
        else:
            obj = dobj = None
        rec = _record(k, obj, dobj, primal, dual, target, keep, changed)
        trace.append(rec)
        ctx.iteration(rec)
        if not (math.isfinite(primal) and (obj is None or math.isfinite(obj))):
            raise NumericalError(f"{what}: NaN/Inf at iteration {k + 1}; the layer was not written")
        if stop:
            stopped_early = k + 1 < o.iters
            break

    out = (ZT / st.d.unsqueeze(1)).T.contiguous()  # (d_out, d_in), exactly zero off the support
    if not bool(torch.isfinite(out).all()):
        raise NumericalError(f"{what}: produced NaN/Inf; the layer was not written")
    info = {
        "iterations": len(trace),
        "stopped_early": stopped_early,
        "rho": rho,
        "damping_used": st.lam / max(float(torch.diagonal(st.Gn).mean()), 1e-30),
        "lambda": st.lam,
        "objective_init": obj0,
        "damped_objective_init": dobj0,
        "objective": trace[-1]["objective"],
        "damped_objective": trace[-1]["damped_objective"],
    }
    return SolverOutput(weight=out, mask=keep, trace=trace, info=info)


# --------------------------------------------------------------------------------------- cost


def admm_cost(d_out: int, d_in: int, opts: dict, **_) -> dict:
    """Operation counts of one layer (``pruning.cost_model``): factor and inverse (≈ 3·d_in³), the right-hand side,
    one product per iteration plus one per traced objective, elementwise passes and the gradual mask selections."""
    n, iters = d_out * d_in, int(opts["iters"])
    every = int(opts["objective_every"])
    objectives = iters if every == 1 else (iters // every if every else 1)
    selections = max(int(opts.get("gradual_iters", 0)), 1) if "gradual_iters" in opts else 0
    return {"matmul_flops": 3.0 * d_in**3 + 2.0 * n * d_in * (1 + iters + objectives), "admm_elementwise_values": iters * n,
            "selected_values": selections * n}


# --------------------------------------------------------------------------------------- registered


def admm_layer(p: LayerProblem, pattern: Pattern, sparsity: float, o: AdmmOptions, ctx: SolveContext,
               keep: torch.Tensor | None = None) -> SolverOutput:
    """ADMM(-Grad) on one layer with explicit :class:`AdmmOptions` (the registered ``admm`` builds them).

    ``keep`` (optional, (d_out, d_in) bool): a fixed mask that must satisfy ``pattern`` at ``sparsity`` exactly
    (then ``gradual_iters`` is ignored; ``info["mask_from"] = "user"``)."""
    iters, K = o.iters, o.gradual_iters
    if keep is not None:
        keep = as_keep_mask(keep, p.W)
        try:
            check_mask(keep, pattern, sparsity)
        except PatternError as e:
            raise SolverError(f"mask: does not match pattern {pattern} at sparsity {sparsity:g}: {e}") from None
        source = "user"
    else:
        if K > iters:
            raise SolverError(f"admm.gradual_iters: {K} exceeds admm.iters={iters}; the gradual mask must reach the "
                              f"target sparsity before the last iteration (allowed: 0..iters)")
        source = "gradual" if K > 0 else "one-shot"
    _check_finite(p, "admm")
    pattern.check_shape(p.W.shape[1])
    s = pattern.sparsity(sparsity)
    info = {"mask_from": source, "schedule": o.schedule}
    if prune_count(pattern, tuple(p.W.shape), s) == 0:  # nothing to prune: W itself is optimal (invariant 2)
        full = torch.ones_like(p.W, dtype=torch.bool)
        return SolverOutput(weight=p.W.clone(), mask=full, info={**info, "iterations": 0, "short_circuit": "nothing to prune"})

    if source == "gradual":
        targets = schedule_targets(pattern, s, K, o.schedule)
        keep0 = _select_gradual(wanda_score(p.W, p.G), pattern, targets[0], last=K == 1)

        def reselect(j: int, score: torch.Tensor):
            if j >= K:
                return None
            return _select_gradual(score, pattern, targets[j], last=j == K - 1), targets[j]

        out = _run_admm(p.W, p.G, keep0, o, ctx, "admm", reselect, targets[0])
    else:
        if keep is None:  # one-shot mask from |W'| (official iterative_prune=0)
            keep = select_mask(wanda_score(p.W, p.G), pattern, s)
        out = _run_admm(p.W, p.G, keep, o, ctx, "admm", None, s)
    out.info.update(info)
    return out


@SOLVERS.register(
    "admm",
    kind="update",
    needs_gram=True,
    options=ADMM_OPTIONS,
    summary="ADMM: optimal weight update on the mask by alternating least squares and projection; by default the mask "
    "is re-selected from the iterate on a cubic sparsity schedule (ADMM-Grad), then frozen.",
    paper="https://arxiv.org/abs/2401.02938",
    cost=admm_cost,
)
def admm(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext | None = None,
         keep: torch.Tensor | None = None) -> SolverOutput:
    """ADMM(-Grad) on one layer; ``opts`` resolved. ``keep``: see :func:`admm_layer`."""
    return admm_layer(p, pattern, sparsity, AdmmOptions.from_options(opts), ctx or SolveContext(), keep)


@UPDATES.register(
    "admm",
    kind="update",
    needs_gram=True,
    options=UPDATE_OPTIONS,
    summary="ADMM weight update on a given (fixed) mask: converges to the least-squares optimum on the support.",
    paper="https://arxiv.org/abs/2401.02938",
    cost=admm_cost,
)
def admm_update(p: LayerProblem, keep: torch.Tensor, opts: dict, ctx: SolveContext | None = None,
                o: AdmmOptions | None = None) -> SolverOutput:
    """ADMM on the fixed mask ``keep``; ``opts`` resolved (or explicit ``o``)."""
    ctx = ctx or SolveContext()
    o = o or AdmmOptions.from_options(opts)
    keep = as_keep_mask(keep, p.W)
    _check_finite(p, "admm update")
    out = _run_admm(p.W, p.G, keep, o, ctx, "admm update", None, 1.0 - float(keep.sum()) / keep.numel())
    out.info["mask_from"] = "given"
    return out
