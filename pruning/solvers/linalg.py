"""Dense linear algebra the solvers share: one damped Cholesky factorisation with escalation.

SparseGPT (H + λI), ADMM (G' + (λ+ρ)I) and SparseLLM (ridge refits, the p-update) all factor a symmetric
matrix that should be positive definite but may not be numerically (a rank-deficient Gram, fp32 round-off).
The rule is the same for all of them (docs/algorithms.md, "Damping"): try M + λ·scale·I; if the factorisation
fails, raise λ ×10 (from ``ZERO_DAMPING`` when λ = 0), at most ``MAX_DAMP_RAISES`` times, and report the
escalation through ``ctx.warn`` (the pipeline turns it into a ``WarningEvent``). Never replaced by the identity.
"""
from __future__ import annotations

from typing import Callable

import torch

from .base import NumericalError, SolveContext

MAX_DAMP_RAISES = 8  # λ may grow by at most 10⁸ before the factorisation is declared impossible
ZERO_DAMPING = 1e-6  # first λ tried after λ = 0 failed (relative to ``scale``)


def damped_cholesky(
    M: torch.Tensor,
    lam: float,
    scale: float | torch.Tensor,
    ctx: SolveContext | None,
    what: str,
    *,
    shift: float = 0.0,
    check: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, float]:
    """(L, λ used): the lower Cholesky factor of M + (λ·scale + shift)·I, raising λ ×10 until it factorises.

    M: (n, n) symmetric, any float dtype (not modified). ``scale`` (a float or a 0-dim tensor) makes λ relative
    (e.g. mean diag of a Gram); ``shift`` is a fixed part of the diagonal that is never raised (ADMM's ρ).
    ``check(L)`` may derive what the caller really needs from L and return it (None = also a failure, so λ
    is raised again); its result is then returned in place of L. A raise is reported through ``ctx.warn``
    (message contains "damping"); no λ up to λ·10⁸ works -> ``NumericalError``.
    """
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    damp = float(lam)
    for attempt in range(MAX_DAMP_RAISES + 1):
        L, info = torch.linalg.cholesky_ex(M + (damp * scale + shift) * eye)
        if int(info) == 0 and bool(torch.isfinite(L).all()):
            out = L if check is None else check(L)
            if out is not None:
                if attempt and ctx is not None:
                    ctx.warn(f"{what}: Cholesky failed at damping {lam:g}; succeeded at {damp:g}")
                return out, damp
        damp = damp * 10 if damp > 0 else ZERO_DAMPING
    raise NumericalError(f"{what}: matrix not positive definite even with damping {damp / 10:g}")


REL_ERROR_CHUNK_BYTES = 32 * 2**20  # float64 working set of one rel_error tile (rows of ΔW × columns of G)


def rel_error(W: torch.Tensor, W_hat: torch.Tensor, G: torch.Tensor) -> float:
    """‖WX − ŴX‖² / ‖WX‖² from G = XXᵀ, in float64. 0 when ‖WX‖ = 0 and nothing changed.

    The one error metric of the project (UI, CLI, benchmarks, tests; ``pruning.rel_error``). Evaluated in tiles of
    rows of W and columns of G, so its float64 working memory stays near ``REL_ERROR_CHUNK_BYTES`` whatever the layer
    (a whole-matrix float64 evaluation of a 2048 × 5632 layer needs ~0.75 GB, more than the layer's block)."""
    d_out, d_in = W.shape
    cols = max(1, min(d_in, REL_ERROR_CHUNK_BYTES // (8 * d_in)))
    rows = max(1, min(d_out, REL_ERROR_CHUNK_BYTES // (8 * (d_in + cols))))
    num = den = 0.0
    for j in range(0, d_in, cols):
        Gj = G[:, j:j + cols].double()
        for i in range(0, d_out, rows):
            Wi = W[i:i + rows].double()
            Di = Wi - W_hat[i:i + rows].double()
            num += float(((Di @ Gj) * Di[:, j:j + cols]).sum())
            den += float(((Wi @ Gj) * Wi[:, j:j + cols]).sum())
    if den <= 0:
        return 0.0 if num <= 0 else float("inf")
    return max(num, 0.0) / den
