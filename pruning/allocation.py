"""Per-layer sparsity targets under an exact global budget: ``uniform``, ``owl`` and ``curve``.

Pure maths on tensors and numbers (no model, no pipeline): the pipeline gathers the statistics (a dense pass for
OWL, per-layer error curves for ``curve``) and asks this module for the targets; every solver then prunes each
layer at its own target. The budget is exact: over all pruned linears, exactly ``floor(s * total weights)``
weights are pruned (per-layer counts are integers whose sum is the budget; see ``exact_counts``).

* ``uniform``: every layer at ``s`` (today's behaviour), counts adjusted so the total is exact.
* ``owl`` (Outlier-Weighted Layerwise sparsity; Yin et al., ICML 2024): per decoder block, the outlier ratio
  D_b = share (in %) of the block's Wanda scores |W_ij|·‖X_j‖ (all its linears together) above M × their mean;
  the ratios are min-max scaled to [0, 2λ], centred on 1 − s (so their mean is exactly 1 − s) and used as the
  block's density; every linear of the block gets sparsity 1 − density. Blocks with more outliers are pruned
  less. Defaults M = 5, λ = 0.08 (as in the official code, luuyin/OWL, ``prune_wanda_outlier``, where the
  statistics come from a dense pass over the calibration windows).
* ``curve`` (ours): each layer's relative error e_l(s) measured at a few sparsities around s (the pipeline uses
  Wanda masks scored from the Grams it accumulates); the targets minimise Σ_l e_l(s_l) subject to the budget, by a
  Lagrangian on the piecewise-linear curves (bisection on the multiplier; per layer the best grid point for each
  multiplier), with each layer's target kept within ``[s − span, s + span]``.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch

from .errors import InputError

ALLOCATIONS = ("uniform", "owl", "curve")
OWL_M, OWL_LAMBDA = 5.0, 0.08
CURVE_SPAN, CURVE_POINTS = 0.15, 7


class AllocationError(InputError):
    """An allocation that cannot apply (bad λ or M, an N:M pattern, unknown name)."""


def check_allocation(name: str, sparsity: float, pattern: str = "unstructured", owl_m: float = OWL_M,
                     owl_lambda: float = OWL_LAMBDA, span: float = CURVE_SPAN) -> None:
    """Refuse what cannot apply, before any computation; messages name the field and the allowed values."""
    if name not in ALLOCATIONS:
        raise AllocationError(f"allocation: unknown allocation {name!r}; allowed: {', '.join(ALLOCATIONS)}")
    if name == "uniform":
        return
    if ":" in str(pattern):
        raise AllocationError(f"allocation: {name!r} varies the sparsity per layer, but the pattern {pattern} fixes "
                              f"it to N/M in every group of every layer; use allocation 'uniform' with N:M patterns")
    if str(pattern) != "unstructured":
        raise AllocationError(f"allocation: {name!r} needs pattern 'unstructured' (per-layer budgets); got "
                              f"{pattern!r}")
    if name == "owl":
        if not (math.isfinite(owl_m) and owl_m > 0):
            raise AllocationError(f"owl_m: {owl_m!r} is not allowed; allowed: a number > 0 (default {OWL_M})")
        if not (math.isfinite(owl_lambda) and 0 <= owl_lambda < sparsity and owl_lambda <= 1 - sparsity):
            raise AllocationError(f"owl_lambda: {owl_lambda!r} is outside the allowed range [0, min(sparsity, "
                                  f"1 − sparsity)] = [0, {min(sparsity, 1 - sparsity):.4g}) for sparsity {sparsity}")
    if name == "curve" and not (0 < span < 1):
        raise AllocationError(f"curve_span: {span!r} is outside the allowed range (0, 1)")


# ---------------------------------------------------------------------------------------------------------------
# exact integer budgets

def exact_counts(targets: Sequence[float], sizes: Sequence[int], sparsity: float) -> list[int]:
    """Integer prune counts per layer summing to exactly floor(s · Σ size), as close to the targets as possible.

    The targets are first shifted by one common amount (bisection; each clipped to [0, (n − 1)/n], so no layer is
    emptied) until Σ target · size equals the budget -- a no-op for targets that already meet it, like OWL's --
    then floored, and the few remaining units go to the layers with the largest fractional parts (ties: lower
    index first).
    """
    sizes = [int(n) for n in sizes]
    if not sizes:
        return []
    total = sum(sizes)
    budget = math.floor(sparsity * total + 1e-9)
    caps = [(n - 1) if n > 1 else n for n in sizes]
    if budget > sum(caps):
        caps = list(sizes)
    base = [float(t) for t in targets]

    def raw(delta: float) -> list[float]:
        return [min(max((t + delta) * n, 0.0), c) for t, n, c in zip(base, sizes, caps)]

    lo, hi = -2.0, 2.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(raw(mid)) < budget:
            lo = mid
        else:
            hi = mid
    r = raw(hi)
    counts = [min(math.floor(x + 1e-9), c) for x, c in zip(r, caps)]
    rest = budget - sum(counts)
    order = sorted(range(len(sizes)), key=lambda i: (-(r[i] - counts[i]), i))
    for j in itertools.cycle(order):
        if rest <= 0:
            break
        if counts[j] < caps[j]:
            counts[j] += 1
            rest -= 1
    for j in itertools.cycle(order[::-1]):
        if rest >= 0:
            break
        if counts[j] > 0:
            counts[j] -= 1
            rest += 1
    return counts


def counts_to_sparsities(counts: Sequence[int], sizes: Sequence[int]) -> list[float]:
    """Per-layer sparsities that the solvers turn back into exactly these counts (floor(s·n + 1e-9) = count)."""
    return [c / n for c, n in zip(counts, sizes)]


# ---------------------------------------------------------------------------------------------------------------
# OWL

def outlier_ratio(scores: Sequence[torch.Tensor], m: float = OWL_M) -> float:
    """Share in % of all entries of the concatenated scores above m × their mean (float64 mean)."""
    flat = torch.cat([s.detach().reshape(-1).to(torch.float64) for s in scores])
    return float((flat > flat.mean() * m).sum()) / flat.numel() * 100.0


def owl_block_sparsities(ratios: Sequence[float], sparsity: float, lam: float = OWL_LAMBDA) -> list[float]:
    """Block sparsities from outlier ratios: density = minmax(D)·2λ − mean + (1 − s); sparsity = 1 − density."""
    d = torch.tensor(list(ratios), dtype=torch.float64)
    spread = float(d.max() - d.min())
    if spread <= 0 or lam == 0:
        return [float(sparsity)] * len(d)
    dens = (d - d.min()) / spread * (2 * lam)
    dens = dens - dens.mean() + (1 - sparsity)
    return [float(1 - x) for x in dens]


def wanda_scores(W: torch.Tensor, col_sq_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖ (col_sq_norms = diag of the Gram, i.e. Σ_tokens x_j²)."""
    return W.abs().float() * col_sq_norms.float().clamp_min(0).sqrt().reshape(1, -1)


# ---------------------------------------------------------------------------------------------------------------
# error curves

def curve_grid(sparsity: float, span: float = CURVE_SPAN, points: int = CURVE_POINTS) -> list[float]:
    """``points`` sparsities evenly spaced on [s − span, s + span] ∩ [0, 0.99]."""
    lo, hi = max(0.0, sparsity - span), min(0.99, sparsity + span)
    return [lo + (hi - lo) * i / (points - 1) for i in range(points)]


def curve_sparsities(curves: Sequence[Sequence[float]], grid: Sequence[float], sizes: Sequence[int],
                     sparsity: float, weights: Sequence[float] | None = None, iters: int = 100) -> list[float]:
    """Targets minimising Σ_l w_l · e_l(s_l) with Σ_l s_l · n_l = s · Σ n (then made exact by ``exact_counts``).

    ``curves[l][k]`` = relative error of layer l at ``grid[k]``. The curves are made convex-monotone first (lower
    convex hull of the points), so the Lagrangian solution is the exact optimum of the piecewise-linear problem:
    for a multiplier μ each layer takes the grid point minimising w_l·e_l(s) − μ·n_l·s; μ is bisected so the
    budget is met, and the last layer set is interpolated between the two bracketing solutions.
    """
    g = [float(x) for x in grid]
    sizes = [int(n) for n in sizes]
    w = [1.0] * len(sizes) if weights is None else [float(x) for x in weights]
    hulls = [_lower_hull(g, [float(e) for e in c]) for c in curves]
    total = sum(sizes)
    want = sparsity * total

    def pick(mu: float) -> list[float]:
        return [min(h, key=lambda p: (w[l] * p[1] - mu * sizes[l] * p[0], p[0]))[0] for l, h in enumerate(hulls)]

    def mass(s: list[float]) -> float:
        return sum(x * n for x, n in zip(s, sizes))

    lo_s, hi_s = pick(0.0), pick(1e12)
    if mass(lo_s) >= want:
        return _blend(lo_s, lo_s, 0.0)
    if mass(hi_s) <= want:
        return hi_s
    lo, hi = 0.0, 1.0
    while mass(pick(hi)) < want:
        hi *= 4
    for _ in range(iters):
        mid = (lo + hi) / 2
        if mass(pick(mid)) < want:
            lo = mid
        else:
            hi = mid
    a, b = pick(lo), pick(hi)
    ma, mb = mass(a), mass(b)
    t = 0.0 if mb == ma else (want - ma) / (mb - ma)
    return _blend(a, b, t)


def _blend(a: list[float], b: list[float], t: float) -> list[float]:
    return [x + t * (y - x) for x, y in zip(a, b)]


def _lower_hull(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    """Lower convex hull of the points (x sorted), also made non-increasing in y from the right (more sparsity is
    never modelled as *less* error than the next point)."""
    pts = sorted(zip(xs, ys))
    # errors grow with sparsity: enforce monotone non-decreasing y
    mono, best = [], -math.inf
    for x, y in pts:
        best = max(best, y)
        mono.append((x, best))
    hull: list[tuple[float, float]] = []
    for p in mono:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
