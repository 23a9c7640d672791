"""SparseFW: choose the pruning mask by Frank-Wolfe on the relaxed mask (mask only, no weight update).

Roux, Zimmer, d'Aspremont & Pokutta, "Don't Be Greedy, Just Relax! Pruning LLMs via Frank-Wolfe",
arXiv 2510.13713 (main text of the ICLR-2026 submission; the appendix and code were not available, so
nothing here is checked against a reference implementation -- see docs/algorithms.md, "SparseFW").

Problem, with M the **keep**-mask (1 = kept, as everywhere in this project) and k the number of kept weights:

    min_M  L(M) = ‖WX − (M⊙W)X‖²_F = tr(D G Dᵀ),   D = W⊙(1−M),   G = XXᵀ
    over the relaxation  C = {M : 0 ≤ M ≤ 1, ‖M‖₁ ≤ k, M_F = 1}  of  {M ∈ {0,1}, ‖M‖₀ ≤ k}.

* Gradient: with H = WG precomputed once, ``∇L(M) = −2 W ⊙ (H − (W⊙M)G)``; (W⊙M)G is kept up to date
  as P, so each iteration costs one product (W⊙V_t)G of the new vertex with G (dense, or sparse on CPU
  when V_t's free part is sparse -- with α = 0.9 only ~(1−α)·k entries are free).
* LMO: the vertex V of C minimising ⟨∇L, V⟩: V = 1 on F, plus ones on the (budget) most negative gradient
  entries among the free ones, and only where the gradient is < 0. Budget = k − |F| per pattern unit:
  the whole matrix (unstructured), each row (per-row), each group of M columns (N:M: M−N kept per group
  minus the fixed ones in it).
* Step ``M_{t+1} = M_t + η_t (V_t − M_t)``, ``η_t = 2/(t+2)`` for t = 0..T−1, as in the paper (η₀ = 1, so the
  warm start enters through ∇L(M₀) and the fixed set F).
* Warm start M₀: the Wanda mask (default) or the RIA mask, under the same pattern.
* α (fixed set F): the paper fixes "a fraction α of the highest-saliency weights" as unprunable. We read α as a
  **fraction of the k kept weights**: F = the ⌊α·k⌋ warm-start-kept weights with the highest warm-start score
  (per matrix for unstructured, per row for per-row and N:M). Then α = 1 gives F = warm-start mask (FW has
  nothing to move) and α = 0 is pure FW. The other reading (α of *all* weights) is infeasible whenever
  α > 1 − sparsity, e.g. 0.9 at 50 % sparsity.
* Rounding: keep the top-k entries of M_T under the pattern (``select_mask``; exact counts). Equal M values
  are ordered by the warm-start score (an offset < 1e-9, so values closer than that count as equal), then by
  ``select_mask``'s stable index order.
* Trace (``SolverOutput.trace`` and ``ctx.iteration``), one record per iterate t = 0..T, errors relative to
  ‖WX‖² = tr(WGWᵀ) like ``pruning.solve.rel_error``: ``objective`` = L(M_t)/‖WX‖², ``fw_gap`` =
  ⟨∇L(M_t), M_t − V_t⟩/‖WX‖² (an upper bound on the relative sub-optimality in C), ``rounded_error`` =
  relative error of the rounded M_t every ``round_every`` iterations and at t = T (else None).

Defaults: T = ``DEFAULT_ITERS`` = 50, sized for a CPU run of SmolLM2-135M (210 linears) within minutes; with
α = 0.9 the rounded error of SmolLM2 layers has converged by then (31.8 % below Wanda at T = 50 vs 32.0 % at
200, per-row 50 %). The paper's ``PAPER_ITERS`` = 2000 is available through ``iters`` (GPU). α = 0.9 and the
Wanda warm start are the paper's defaults. The time a run takes is predicted by ``pruning.cost_model`` from the
operation counts of :func:`sparsefw_cost` (declared with the registration below).
"""
from __future__ import annotations

import warnings

import torch

from ..patterns import Pattern, _floor, select_mask
from .base import SOLVERS, LayerProblem, Option, SolveContext, SolverError, SolverOutput
from .greedy import wanda_score
from .ria import RIA_DEFAULT_A, ria_score

PAPER_ITERS = 2000
DEFAULT_ITERS = 50  # CPU-sized default (SmolLM2 in minutes; the rounded error has converged by ~50 at α = 0.9), docs/algorithms.md
DEFAULT_ALPHA = 0.9
DEFAULT_ROUND_EVERY = 25  # each checkpoint costs a sort + one dense product (≈ 2-6 iterations)
WARM_STARTS = ("wanda", "ria")
SPARSE_MAX_DENSITY = 0.1  # CPU: below this density of the free vertex, (W⊙V)G goes through a CSR product (measured crossover 10-15 %)
_TIE_EPS = 1e-9  # rounding: offset (< 1e-9) that orders equal M values by the warm-start score

SPARSEFW_OPTIONS = (
    Option("iters", DEFAULT_ITERS, "int", f"Frank-Wolfe iterations T (paper: {PAPER_ITERS}; 0 = warm-start mask)", min=0, max=100000),
    Option("alpha", DEFAULT_ALPHA, "float", "fraction of the k kept weights fixed as unprunable: the highest-scoring "
           "weights of the warm start (paper: 0.9; 1 = warm-start mask, 0 = pure FW)", min=0.0, max=1.0),
    Option("warm_start", "wanda", "choice", "initial mask, also the saliency that picks the fixed weights", choices=WARM_STARTS),
    Option("round_every", DEFAULT_ROUND_EVERY, "int", "trace the error of the rounded mask every this many "
           "iterations (0 = only at the end; each costs one extra product)", min=0, max=100000),
    Option("ria_a", RIA_DEFAULT_A, "float", "RIA activation exponent when warm_start = ria (RIA default 0.5)", min=0.0, max=4.0),
)


# ----------------------------------------------------------------------------------------------- maths
def mask_objective(W: torch.Tensor, G: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """L(M) = tr(D G Dᵀ), D = W⊙(1−M): the unnormalised layer error of the (possibly fractional) keep-mask M."""
    D = W * (1 - M)  # (d_out, d_in)
    return ((D @ G) * D).sum()


def mask_gradient(W: torch.Tensor, G: torch.Tensor, M: torch.Tensor, H: torch.Tensor | None = None) -> torch.Tensor:
    """∇_M L(M) = −2 W ⊙ (H − (W⊙M)G), H = WG: (d_out, d_in)."""
    H = W @ G if H is None else H
    return -2 * W * (H - (W * M) @ G)


def warm_start_score(W: torch.Tensor, G: torch.Tensor, warm_start: str, ria_a: float = RIA_DEFAULT_A) -> torch.Tensor:
    """Saliency (d_out, d_in) of the warm-start method; higher = more important."""
    if warm_start == "wanda":
        return wanda_score(W, G)
    if warm_start == "ria":
        return ria_score(W, G, ria_a)
    raise SolverError(f"sparsefw.warm_start: {warm_start!r} is not allowed; choose one of {list(WARM_STARTS)}")


class _Units:
    """How a pattern splits a (d_out, d_in) matrix: views for the fixed-set choice and for the LMO budgets."""

    def __init__(self, shape: tuple[int, int], pattern: Pattern, sparsity: float):
        d_out, d_in = shape
        n = d_out * d_in
        self.shape = shape
        if pattern.kind == "unstructured":
            self.fix_view, self.lmo_view = (1, n), (1, n)
            self.k_fix = self.k_lmo = n - _floor(sparsity * n)
        elif pattern.kind == "per-row":
            self.fix_view, self.lmo_view = (d_out, d_in), (d_out, d_in)
            self.k_fix = self.k_lmo = d_in - _floor(sparsity * d_in)
        else:
            pattern.check_shape(d_in, "pattern")
            self.fix_view, self.lmo_view = (d_out, d_in), (n // pattern.m, pattern.m)
            self.k_lmo = pattern.m - pattern.n
            self.k_fix = (d_in // pattern.m) * self.k_lmo
        self.k_total = (n // self.lmo_view[1]) * self.k_lmo  # kept weights in the whole matrix

    def fixed_set(self, score: torch.Tensor, warm: torch.Tensor, alpha: float) -> torch.Tensor:
        """F (bool): per fixed-unit, the ⌊α·k⌋ warm-kept entries with the highest score (stable order)."""
        f = _floor(alpha * self.k_fix)
        F = torch.zeros(self.fix_view, dtype=torch.bool, device=score.device)
        if f > 0:
            s = score.masked_fill(~warm, float("-inf")).reshape(self.fix_view)
            idx = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :f]
            F.scatter_(1, idx, True)
        return F.reshape(self.shape)

    def budgets(self, F: torch.Tensor) -> torch.Tensor:
        """Free budget per LMO unit, k_unit − |F ∩ unit|: (n_units,) int64."""
        return self.k_lmo - F.reshape(self.lmo_view).sum(dim=1)


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The CSR matrix with row pointers ``crow``, column indices ``cols`` and values ``vals`` (no invariant check)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta" / invariant-check notices
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, size=tuple(shape), check_invariants=False)


class FrankWolfeMask:
    """State of one SparseFW run on a layer (W, G): the iterate, the fixed set and the running products.

    The iterate is stored as its free part: M = M_free + F (M_free = 0 on F), so fixed entries stay exactly 1.
    ``gradient()`` returns ∇L(M) on the free entries and 0 on F (where no move is possible); the objective
    and the FW gap only need those entries since M = V = 1 on F.
    """

    def __init__(self, W: torch.Tensor, G: torch.Tensor, pattern: Pattern, sparsity: float, *, alpha: float = DEFAULT_ALPHA,
                 warm_start: str = "wanda", ria_a: float = RIA_DEFAULT_A):
        self.W, self.G, self.pattern, self.sparsity = W, G, pattern, sparsity
        self.units = _Units(tuple(W.shape), pattern, sparsity)
        self.score = warm_start_score(W, G, warm_start, ria_a)  # (d_out, d_in)
        self.warm = select_mask(self.score, pattern, sparsity)  # bool, k kept
        self.F = self.units.fixed_set(self.score, self.warm, alpha)  # bool, ⌊α·k⌋ per fixed unit
        self.budget = self.units.budgets(self.F)  # (n_units,) int64
        self.max_budget = int(self.budget.max())
        self.uniform = bool((self.budget == self.max_budget).all())
        self.H = W @ G  # (d_out, d_in)
        self.norm = float((self.H.double() * W.double()).sum())  # ‖WX‖² = tr(W G Wᵀ)
        self.Wm2 = -2 * W * ~self.F  # (d_out, d_in): ∇L = Wm2 ⊙ (H − P) on free entries, 0 on F
        self.P_F = (W * self.F) @ G  # (W⊙F)G, the fixed part of every vertex product
        self._rowidx: tuple[torch.Tensor, torch.Tensor] | None = None  # per-row LMO indices for the CSR product
        warm_free = self.warm & ~self.F
        self.M_free = warm_free.to(W.dtype)  # (d_out, d_in)
        self.P = self.vertex_product(warm_free)  # (W⊙M_t)G, moved with the same convex combination as M
        self.warm_error = self.rel(((self.H - self.P) * W * ~self.warm).sum())  # L(M₀)/‖WX‖²
        smax = float(self.score.max()) if self.score.numel() else 0.0
        self.tie = self.score.double() * (_TIE_EPS / smax) if smax > 0 else torch.zeros_like(self.score, dtype=torch.float64)
        self.t = 0

    @property
    def M(self) -> torch.Tensor:
        """Current relaxed keep-mask M_t: (d_out, d_in) float in [0, 1]."""
        return self.M_free + self.F.to(self.M_free.dtype)

    def rel(self, x: torch.Tensor | float) -> float:
        """x / ‖WX‖² (0 when ‖WX‖ = 0)."""
        return float(x) / self.norm if self.norm > 0 else 0.0

    def gradient(self) -> torch.Tensor:
        """∇L(M_t) = −2 W ⊙ (H − (W⊙M_t)G) on free entries, 0 on F: (d_out, d_in)."""
        return torch.sub(self.H, self.P).mul_(self.Wm2)

    def lmo(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Free part of the vertex minimising ⟨g, V⟩ (bool (d_out, d_in)) and ⟨g, V_free⟩ (0-dim tensor).

        Per unit: up to ``budget`` entries with the most negative g, only where g < 0 (F has g = 0: never chosen).
        """
        u = self.units
        self._rowidx = None
        if self.max_budget == 0:
            return torch.zeros(u.shape, dtype=torch.bool, device=g.device), g.new_zeros(())
        gv = g.reshape(u.lmo_view)
        if u.lmo_view[0] == 1:  # one unit: if all negatives fit in the budget, take them all (no top-k)
            neg = gv < 0
            if int(neg.sum()) <= self.max_budget:
                return neg.reshape(u.shape), g.clamp(max=0).sum()
        vals, idx = torch.topk(gv, self.max_budget, dim=1, largest=False, sorted=not self.uniform)  # (units, b)
        sel = vals < 0
        if not self.uniform:
            sel &= torch.arange(self.max_budget, device=g.device).unsqueeze(0) < self.budget.unsqueeze(1)
        V = torch.zeros(u.lmo_view, dtype=torch.bool, device=g.device)
        V.scatter_(1, idx, sel)
        if self.pattern.kind == "per-row":  # rows = units: the CSR product can reuse the top-k indices
            self._rowidx = (idx, sel)
        return V.reshape(u.shape), (vals * sel).sum()

    def vertex_product(self, V_free: torch.Tensor) -> torch.Tensor:
        """(W⊙V)G with V = F + V_free: (d_out, d_in). Sparse (CSR) on CPU when V_free is sparse."""
        W, G = self.W, self.G
        nnz = int(V_free.sum())
        if nnz == 0:
            return self.P_F.clone()
        if W.device.type != "cpu" or nnz > SPARSE_MAX_DENSITY * W.numel():
            return torch.addmm(self.P_F, W * V_free, G)
        if self._rowidx is not None:  # per-row LMO: (d_out, b) column indices, unselected slots get value 0
            idx, _ = self._rowidx
            idx = torch.sort(idx, dim=1).values
            d_out, b = idx.shape
            crow = torch.arange(0, (d_out + 1) * b, b, dtype=torch.int64, device=W.device)
            cols, vals = idx.reshape(-1), (W.gather(1, idx) * V_free.gather(1, idx)).reshape(-1)
        else:
            rows, cols = V_free.nonzero(as_tuple=True)  # row-major order
            crow = torch.zeros(W.shape[0] + 1, dtype=torch.int64, device=W.device)
            crow[1:] = torch.bincount(rows, minlength=W.shape[0]).cumsum(0)
            vals = W[rows, cols]
        return self.P_F + _csr(crow, cols, vals, tuple(W.shape)) @ G

    def step(self, V_free: torch.Tensor) -> float:
        """M_{t+1} = M_t + η_t (V_t − M_t), η_t = 2/(t+2); returns η_t."""
        eta = 2.0 / (self.t + 2)
        Q = self.vertex_product(V_free)  # (W⊙V_t)G
        self.P.lerp_(Q, eta)
        self.M_free.lerp_(V_free.to(self.M_free.dtype), eta).clamp_(0.0, 1.0)
        self.t += 1
        return eta

    def round(self) -> torch.Tensor:
        """Top-k of M_t under the pattern (bool keep-mask; ties ordered by the warm-start score)."""
        if self.t == 0:
            return self.warm.clone()
        return select_mask(self.M.double() + self.tie, self.pattern, self.sparsity)

    def error(self, keep: torch.Tensor) -> float:
        """Relative error ‖WX − (keep⊙W)X‖²/‖WX‖² of a binary keep-mask."""
        R = self.H - (self.W * keep) @ self.G  # (W⊙(1−keep))G
        return self.rel((R * self.W * ~keep).sum())


# ----------------------------------------------------------------------------------------------- solver
@SOLVERS.register(
    "sparsefw",
    kind="mask",
    needs_gram=True,
    options=SPARSEFW_OPTIONS,
    summary="Frank-Wolfe on the relaxed keep-mask (0 ≤ M ≤ 1, ‖M‖₁ ≤ k) from a Wanda/RIA warm start with the "
    "top α of the kept weights fixed, then round to the top-k. Mask only.",
    paper="https://arxiv.org/abs/2510.13713",
    cost=lambda d_out, d_in, opts, **kw: sparsefw_cost(d_out, d_in, opts, **kw),
)
def sparsefw(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext) -> SolverOutput:
    """SparseFW on one layer (module docstring); ``opts`` resolved. Mask only: kept weights are W's."""
    o = opts
    T, every = int(o["iters"]), int(o["round_every"])
    fw = FrankWolfeMask(p.W, p.G, pattern, sparsity, alpha=float(o["alpha"]), warm_start=o["warm_start"], ria_a=float(o["ria_a"]))
    warm_err = fw.warm_error
    info = {"iters": T, "alpha": float(o["alpha"]), "warm_start": o["warm_start"], "kept": fw.units.k_total,
            "fixed": int(fw.F.sum()), "free_budget": int(fw.budget.sum()), "warm_error": warm_err}
    if T == 0 or fw.max_budget == 0 or fw.norm <= 0:  # nothing to optimise: the warm-start mask, exactly
        rec = {"iter": 0, "objective": warm_err, "fw_gap": 0.0, "rounded_error": warm_err, "step": 0.0}
        ctx.iteration(rec)
        info.update(rounded_error=warm_err, objective=warm_err, fw_gap=0.0, reduction_vs_warm=0.0)
        return SolverOutput(weight=p.W * fw.warm, mask=fw.warm, trace=[rec], info=info)

    trace: list[dict] = []
    keep = fw.warm
    for t in range(T + 1):
        g = fw.gradient()  # (d_out, d_in), 0 on F
        V_free, g_V = fw.lmo(g)
        g_sum, g_M = g.sum(), torch.dot(g.reshape(-1), fw.M_free.reshape(-1))
        rec = {
            "iter": t,
            "objective": fw.rel(-0.5 * (g_sum - g_M)),  # L(M) = −½ ⟨∇L, 1 − M⟩ (free entries only)
            "fw_gap": fw.rel(g_M - g_V),  # ⟨∇L, M − V⟩
            "rounded_error": None,
            "step": 2.0 / (t + 2) if t < T else 0.0,
        }
        if t == T or (every > 0 and t % every == 0):
            keep = fw.round()
            rec["rounded_error"] = warm_err if t == 0 else fw.error(keep)
        trace.append(rec)
        ctx.iteration(rec)
        if t < T:
            fw.step(V_free)
    final = trace[-1]
    info.update(
        rounded_error=final["rounded_error"],
        objective=final["objective"],
        fw_gap=final["fw_gap"],
        reduction_vs_warm=(1 - final["rounded_error"] / warm_err) if warm_err > 0 else 0.0,
    )
    return SolverOutput(weight=p.W * keep, mask=keep, trace=trace, info=info)


# ----------------------------------------------------------------------------------------------- cost
def sparsefw_cost(d_out: int, d_in: int, opts: dict, *, sparsity: float = 0.5, device: str = "cpu") -> dict:
    """Operation counts of one layer, for ``pruning.cost_model`` (pure: no timing here).

    Per iteration: the LMO (a top-k over the d_out·d_in gradient, plus ~15 elementwise passes: ``fw_lmo_values``)
    and the vertex product (W⊙V)G: on CPU a CSR product over the ~(1−α)(1−s)·d_out·d_in free non-zeros
    (``sparse_flops``), else a dense d_out·d_in·d_in product; per rounded-error checkpoint (every ``round_every``
    iterations and at the end) one sort (``sorted_values``) and one error product; setup: the warm-start mask, the
    fixed set and the final rounding (3 sorts) and H = WG, (W⊙F)G, the final error and rel_error (≈ 4 products).
    """
    iters, alpha, every = int(opts["iters"]), float(opts["alpha"]), int(opts["round_every"])
    n = d_out * d_in
    dense = 2.0 * n * d_in  # flops of one (d_out, d_in) × (d_in, d_in) product
    free_density = (1 - alpha) * (1 - sparsity)
    checkpoints = (iters // every if every > 0 else 0) + 1 if iters > 0 else 0
    # setup ≈ 8 dense products (4 float32 ones and the float64 rel_error) and 3 sorts; a checkpoint's select_mask
    # costs ≈ 1.2 sorts (its sort plus the tie offsets) and 2 products
    counts = {"fw_lmo_values": iters * n, "sorted_values": (3.0 + 1.2 * checkpoints) * n,
              "matmul_flops": (8.0 + 2.0 * checkpoints) * dense}
    if str(device).startswith("cpu") and free_density <= SPARSE_MAX_DENSITY:
        counts["sparse_flops"] = iters * 2.0 * free_density * n * d_in
    else:
        counts["matmul_flops"] += iters * dense
    return counts
