"""SparseGPT: OBS-style greedy pruning with sequential error compensation.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
arXiv 2301.00774; checked against IST-DASLab/sparsegpt sparsegpt.py:SparseGPT.fasterprune (147d2159).

Steps, in the paper's notation (H = G, the Gram; its scale does not matter since damping is relative):
1. dead inputs (H_jj = 0): H_jj = 1 and W[:, j] = 0 (their score is then 0, so they are pruned first);
2. damping H += λI, λ = damping · mean(diag H); if the Cholesky factorisation fails, λ is raised ×10
   step by step (reported through ``ctx.warn``), never replaced by the identity;
3. U = upper Cholesky factor of H⁻¹ (U_jj² is the OBS [H_F⁻¹]_jj of the remaining columns);
4. columns in blocks of ``blocksize``: the mask of a block is chosen on the already-compensated weights
   with saliency w²/U_jj² (unstructured/per-row: once per block; N:M: at every group start), then each
   column's pruning error is spread over the later columns of the block, and lazily over the rest.

Exact counts (our choice, not the official ``<=`` threshold): for ``unstructured`` the matrix budget
⌊s·numel⌋ is split over blocks as ⌊s·(cumulative numel)⌋ differences, so the total is exact and every
block is within one weight of s; ``per-row`` does the same per row.
"""
from __future__ import annotations

import torch

from ..patterns import Pattern, _floor, _lowest_k
from .base import SOLVERS, UPDATES, LayerProblem, NumericalError, Option, SolveContext, SolverOutput
from .linalg import damped_cholesky

_SUB_BLOCK = 16  # columns per inner sub-block of the sweep (same result; fewer bytes touched per column)


def _inverse_upper(L: torch.Tensor) -> torch.Tensor | None:
    """U = upper Cholesky factor of H⁻¹ from the lower factor L of H (None if that factorisation fails)."""
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    return U if int(info) == 0 and bool(torch.isfinite(U).all()) else None


def _prepare(W: torch.Tensor, G: torch.Tensor, dead: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1: (W with dead input columns zeroed, H = G with H_jj = 1 on them); copies."""
    dead = torch.diagonal(G) == 0 if dead is None else dead
    W, H = W.clone(), G.clone()
    if bool(dead.any()):
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
    return W, H


def _factor(p: LayerProblem, damping: float, ctx: SolveContext, what: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(W with dead input columns zeroed, U, damping used): steps 1-3. U depends on the Gram only, so layers that
    share one (q/k/v, gate/up) share U through ``ctx.memo``: one factorisation per distinct input, same numbers; a
    damping raise is reported for every layer that uses the raised factor."""
    dead = torch.diagonal(p.G) == 0  # step 1, computed once
    any_dead = bool(dead.any())
    W = p.W.clone()
    if any_dead:
        W[:, dead] = 0.0
    key = SolveContext.gram_key("sparsegpt.U", p.G, float(damping))
    hit = ctx.memo.get(key) if ctx.memo is not None else None
    if hit is None:
        H = p.G.clone()
        if any_dead:
            H[dead, dead] = 1.0
        msgs: list[str] = []
        mean_diag = torch.diagonal(H).mean()
        U, damp = damped_cholesky(H, float(damping), mean_diag, SolveContext(on_warning=msgs.append), what,
                                  check=_inverse_upper)  # steps 2-3
        hit = (U, damp, msgs)
        if ctx.memo is not None:
            ctx.memo[key] = hit
    U, damp, msgs = hit
    for m in msgs:
        ctx.warn(m)
    return W, U, damp


def _budget(total: int, start: int, end: int, sparsity: float) -> int:
    """Weights to prune among columns [start, end) so that running totals are ⌊s·cumulative⌋."""
    return _floor(sparsity * total * end) - _floor(sparsity * total * start)


def obs_sweep(
    W: torch.Tensor,
    U: torch.Tensor,
    pattern: Pattern | None,
    sparsity: float,
    blocksize: int,
    fixed_keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The SparseGPT column sweep. Either selects the mask adaptively (``pattern``) or uses ``fixed_keep``.

    W: (d_out, d_in) float32, modified copy returned; U: (d_in, d_in) upper Cholesky factor of H⁻¹.
    Returns (pruned W, keep mask, OBS loss estimate Σ (w-q)²/U_jj² / 2).

    Inside a block the weights are held transposed, (B, d_out), so that column j of the paper is the contiguous
    row ``W1T[j]``, and the per-column work is two tensor ops: ``err = w_j · p_j / U_jj`` (p_j = pruned
    indicator, pre-scaled once per block or N:M group) and the rank-1 compensation of the later columns.

    Comments "Alg. 1: ..." name the step of the paper's Algorithm 1 a line implements (docs/algorithms.md,
    "SparseGPT"); ``tests/test_greedy_solvers.py: obs_sweep_reference`` is that algorithm written as two plain
    loops, and the tests check that this fast path gives the same masks and weights.
    """
    W = W.clone(memory_format=torch.contiguous_format)
    d_out, d_in = W.shape
    keep = torch.ones(d_out, d_in, dtype=torch.bool, device=W.device) if fixed_keep is None else fixed_keep  # Alg. 1: M ← 1
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    nm = fixed_keep is None and pattern.kind == "nm"
    sub = _SUB_BLOCK
    if nm:  # N:M groups must not straddle a block or a sub-block: both become multiples of M
        blocksize = max(pattern.m, blocksize // pattern.m * pattern.m)
        sub = pattern.m * max(1, _SUB_BLOCK // pattern.m)
    for i1 in range(0, d_in, blocksize):  # Alg. 1: for i = 0, B, 2B, ...
        i2 = min(i1 + blocksize, d_in)
        W1T = W[:, i1:i2].t().contiguous()  # (B, d_out): row j = column i1 + j
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)  # (B,): [H⁻¹]_jj of the Cholesky form (Alg. 1: H⁻¹ ← Cholesky(H⁻¹)ᵀ)
        if fixed_keep is None and pattern.kind == "unstructured":
            k = _budget(d_out, i1, i2, sparsity)  # total = d_out * d_in; cumulative counts in columns
            if k > 0:  # Alg. 1: mask of the block from w²/[H⁻¹]_jj² (k lowest; ties: lower (row, column) first)
                score = (W1T.t() / d.unsqueeze(0)) ** 2  # (d_out, B)
                keep[:, i1:i2] = ~_lowest_k(score.reshape(1, -1), k).view(d_out, i2 - i1)
        elif fixed_keep is None and pattern.kind == "per-row":
            k = _floor(sparsity * i2) - _floor(sparsity * i1)
            if k > 0:
                score = (W1T.t() / d.unsqueeze(0)) ** 2
                keep[:, i1:i2] = ~_lowest_k(score, k)
        PdT = (~keep[:, i1:i2]).t().to(W.dtype) / d.unsqueeze(1)  # (B, d_out): (1 − M) / [H⁻¹]_jj (N:M: per group)
        ErrT = torch.empty_like(W1T)  # (B, d_out): Alg. 1: E, the block's errors (w - q) / [H⁻¹]_jj per column
        B = i2 - i1
        for j1 in range(0, B, sub):  # sub-blocks: rank-1 updates stay inside, one matmul carries them further
            j2 = min(j1 + sub, B)
            for i in range(j1, j2):  # Alg. 1: for j = i, ..., i + B − 1
                col = i1 + i
                if nm and col % pattern.m == 0:  # Alg. 1: if j mod Bs = 0: mask of the group (Bs = M) from w²/[H⁻¹]_jj²
                    g = (W1T[i : i + pattern.m] / d[i : i + pattern.m].unsqueeze(1)) ** 2  # (M, d_out)
                    idx = torch.sort(g, dim=0, stable=True).indices[: pattern.n]  # (N, d_out): ties -> lower column
                    grp = torch.ones_like(g, dtype=torch.bool).scatter_(0, idx, False)
                    keep[:, col : col + pattern.m] = grp.t()
                    PdT[i : i + pattern.m] = (~grp).to(W.dtype) / d[i : i + pattern.m].unsqueeze(1)
                torch.mul(W1T[i], PdT[i], out=ErrT[i])  # Alg. 1: E_j ← (1 − M_j) · W_j / [H⁻¹]_jj
                if i + 1 < j2:  # Alg. 1: W[:, j:(i+B)] −= E_j · H⁻¹_{j, j:(i+B)}, first inside the sub-block
                    W1T[i + 1 : j2].addr_(U1[i, i + 1 : j2], ErrT[i], alpha=-1.0)
            if j2 < B:  # ... then for the rest of the block, the whole sub-block in one product (same update)
                W1T[j2:].addmm_(U1[j1:j2, j2:].t(), ErrT[j1:j2], alpha=-1.0)
        loss += (ErrT.double() ** 2).sum() / 2  # Σ (w - q)² / U_jj² / 2
        W[:, i1:i2] = W1T.t() * keep[:, i1:i2]  # exact zeros where pruned
        if i2 < d_in:
            W[:, i2:].addmm_(ErrT.t(), U[i1:i2, i2:], alpha=-1.0)  # Alg. 1: lazy batch update W[:, i+B:] −= E·H⁻¹_{i:i+B, i+B:}
    return W * keep, keep, float(loss)  # Alg. 1: W ← W ⊙ M


def _check_finite(W: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(W).all()):
        raise NumericalError(f"{what}: produced NaN/Inf; the layer was not written")


def sparsegpt_cost(d_out: int, d_in: int, opts: dict) -> dict:
    """Operation counts of one layer (for ``pruning.cost_model``): the factorisations of H (d_in³ each), the
    column steps of the sweep, the lazy batch updates (2·d_out·d_in·blocksize flops) and the mask selections."""
    return {"factor_flops": d_in**3, "column_steps": d_in, "matmul_flops": 2.0 * d_out * d_in * int(opts["blocksize"]),
            "selected_values": d_out * d_in}


SPARSEGPT_OPTIONS = (
    Option("damping", 0.01, "float", "Dampening λ as a fraction of mean(diag H) (official percdamp).", min=0.0, max=10.0),
    Option("blocksize", 128, "int", "Columns per lazy-update block; the mask is chosen once per block.", min=1, max=1 << 20),
)


@SOLVERS.register(
    "sparsegpt",
    kind="update",
    needs_gram=True,
    options=SPARSEGPT_OPTIONS,
    summary="Greedy OBS: prune column by column, each time compensating the error on the not-yet-pruned columns "
    "through the inverse Hessian.",
    paper="https://arxiv.org/abs/2301.00774",
    cost=lambda d_out, d_in, opts, **_: sparsegpt_cost(d_out, d_in, opts),
)
def sparsegpt(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext) -> SolverOutput:
    """SparseGPT on one layer: mask chosen during the sweep, surviving weights compensated (module docstring).

    ``opts``: resolved {"damping", "blocksize"}. ``info``: ``damping_used`` (after any raise) and ``obs_loss``.
    """
    W, U, damp = _factor(p, opts["damping"], ctx, "sparsegpt")
    Wn, keep, loss = obs_sweep(W, U, pattern, sparsity, int(opts["blocksize"]))
    _check_finite(Wn, "sparsegpt")
    return SolverOutput(weight=Wn, mask=keep, info={"damping_used": damp, "obs_loss": loss})


@UPDATES.register(
    "sparsegpt",
    kind="update",
    needs_gram=True,
    options=SPARSEGPT_OPTIONS,
    summary="SparseGPT's sequential OBS compensation on a given (fixed) mask.",
    cost=lambda d_out, d_in, opts, **_: {**sparsegpt_cost(d_out, d_in, opts), "selected_values": 0},
)
def sparsegpt_update(p: LayerProblem, keep: torch.Tensor, opts: dict, ctx: SolveContext) -> SolverOutput:
    W, U, damp = _factor(p, opts["damping"], ctx, "sparsegpt update")
    Wn, keep, loss = obs_sweep(W, U, None, 0.0, int(opts["blocksize"]), fixed_keep=keep.clone())
    _check_finite(Wn, "sparsegpt update")
    return SolverOutput(weight=Wn, mask=keep, info={"damping_used": damp, "obs_loss": loss})
