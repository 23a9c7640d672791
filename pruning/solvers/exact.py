"""Exact least squares on a fixed mask (UPDATES "exact"): the reference every weight update is measured against.

It minimises ADMM's damped objective (docs/algorithms.md, "Exact least squares"; same preconditioning as
``solvers/admm.py``) exactly, per row on the row's support S, in float64:

    (G' + λI)_SS w'_S = ((G' + λI) w'₀)_S,   G' = D⁻¹ G D⁻¹, w' = w·d, d_j = sqrt(G_jj) + 1e-8, λ = damping·mean diag G'

batched by gathering each row's kept columns (padded to the largest support of the batch with identity rows and a
zero right-hand side), Cholesky-factored per row. ``damped_objective`` evaluates that objective (relative, like
``rel_error``): ``exact`` lower-bounds every other update on the same mask in it.
"""
from __future__ import annotations

import math

import torch

from .admm import EPS_NORM, _DAMPING, as_keep_mask
from .base import UPDATES, LayerProblem, NumericalError, SolveContext, SolverOutput

__all__ = ["exact_solution", "exact_update", "damped_objective", "EXACT_OPTIONS"]

_EXACT_CHUNK_ELEMS = 1 << 24  # float64 elements per batched exact solve (128 MiB)
EXACT_OPTIONS = (_DAMPING,)


def exact_cost(d_out: int, d_in: int, opts: dict, **_) -> dict:
    """Operation counts (``pruning.cost_model``): a float64 Cholesky per row on a support of ~d_in/2, and the
    right-hand side product."""
    return {"matmul64_flops": d_out * (d_in * 0.5) ** 3 / 3 + 2.0 * d_out * d_in * d_in}


def exact_solution(W: torch.Tensor, G: torch.Tensor, keep: torch.Tensor, damping: float = 0.1) -> torch.Tensor:
    """Per-row least squares on the support, minimising ADMM's damped objective exactly (float64).

    W: (d_out, d_in), G: (d_in, d_in), keep: bool (d_out, d_in). Returns Ŵ (d_out, d_in) float64, zero off
    the support. Rows are solved in batches of similar support size: each row's kept columns are gathered,
    padded to the batch's largest support with identity rows and zero right-hand side, and the systems are
    Cholesky-factored together. Cost ≈ Σ_rows |S_i|³/3 flops in float64 (a reference, not a fast path).
    """
    Wd, Gd64 = W.double(), G.double()
    d = torch.diagonal(Gd64).clamp_min(0).sqrt() + EPS_NORM  # (d_in,)
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
    cost=exact_cost,
    summary="Exact per-row least squares on the mask's support (float64 reference; same damped objective as ADMM).",
    paper="https://arxiv.org/abs/2401.02938",
)
def exact_update(p: LayerProblem, keep: torch.Tensor, opts: dict, ctx: SolveContext | None = None) -> SolverOutput:
    """Exact least squares on the fixed mask ``keep``; ``opts`` resolved ({"damping"})."""
    o = opts
    keep = as_keep_mask(keep, p.W)
    if not bool(torch.isfinite(p.W).all()) or not bool(torch.isfinite(p.G).all()):
        raise NumericalError("exact: the weight or the Gram contains NaN/Inf; nothing was computed")
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
    d = torch.diagonal(Gd).clamp_min(0).sqrt() + EPS_NORM
    lam = float(damping) * float((torch.diagonal(Gd) / d**2).mean())
    num = float(((D @ Gd) * D).sum()) + lam * float(((D * d.unsqueeze(0)) ** 2).sum())
    den = float(((Wd @ Gd) * Wd).sum())
    if den <= 0:
        return 0.0 if num <= 0 else math.inf
    return num / den

