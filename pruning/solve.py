"""``prune_layer``: one linear layer, any solver, any pattern, optional fixed-mask weight update.

rel_error = ‖WX − ŴX‖²_F / ‖WX‖²_F = tr(ΔW G ΔWᵀ) / tr(W G Wᵀ), computed from the Gram in float64.
This one metric is used everywhere (UI, CLI, benchmarks, tests).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .patterns import Pattern, check_mask, parse_pattern
from .solvers import SOLVERS, UPDATES, LayerProblem, NumericalError, SolveContext, SolverError
from .solvers.base import SOLVE_DTYPE, split_options, validate_sparsity  # noqa: F401  (re-exported: config, lab)
from .solvers.linalg import rel_error  # noqa: F401  (re-exported: pruning.rel_error)


@dataclass
class LayerSolution:
    weight: torch.Tensor  # (d_out, d_in) pruned, float32
    mask: torch.Tensor  # bool, True = kept
    rel_error: float
    seconds: float
    trace: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return float((self.weight == 0).sum()) / self.weight.numel()


def solve(
    problem: LayerProblem,
    solver: str,
    pattern: Pattern,
    sparsity: float,
    s_opts: dict,
    update: str = "none",
    u_opts: dict | None = None,
    ctx: SolveContext | None = None,
) -> LayerSolution:
    """Run a solver (and optional fixed-mask update) on an already validated problem with resolved options."""
    ctx = ctx or SolveContext()
    spec = SOLVERS.get(solver)
    if update != "none" and spec.kind != "mask":
        raise SolverError(f"update: {update!r} applies to mask solvers only; {solver!r} already updates weights (use --update none)")
    needs = spec.needs_gram or (update != "none" and UPDATES.get(update).needs_gram)
    if needs and problem.G is None:
        raise SolverError(f"gram: solver {solver!r} needs calibration statistics (the Gram X Xᵀ); got None")
    t0 = time.perf_counter()
    out = spec.fn(problem, pattern, sparsity, s_opts, ctx)
    trace, info = list(out.trace), dict(out.info)
    if update != "none":
        up = UPDATES.get(update).fn(problem, out.mask, u_opts or {}, ctx)
        trace, out = trace + list(up.trace), up
        info.update(up.info)
    W_hat = out.weight * out.mask
    if not bool(torch.isfinite(W_hat).all()):
        raise NumericalError(f"{solver}: produced NaN/Inf for layer {problem.name or '?'}; nothing was written")
    if problem.W.is_cuda:
        torch.cuda.synchronize(problem.W.device)
    seconds = time.perf_counter() - t0
    err = rel_error(problem.W, W_hat, problem.G) if problem.G is not None else float("nan")
    return LayerSolution(weight=W_hat, mask=out.mask, rel_error=err, seconds=seconds, trace=trace, info=info)


def prune_layer(
    weight: torch.Tensor,
    gram: torch.Tensor | None,
    n_tokens: int = 0,
    solver: str = "sparsegpt",
    sparsity: float = 0.5,
    pattern: str | Pattern = "unstructured",
    update: str = "none",
    on_iter: Callable[[dict], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    **options,
) -> LayerSolution:
    """Prune one (d_out, d_in) weight given its Gram G = Σ_tokens x xᵀ (d_in, d_in).

    Maths in float32 on the weight's device; the caller's tensors are not modified.
    ``update`` (none, sparsegpt, admm, exact) re-fits the surviving weights after a mask solver.
    """
    SOLVERS.get(solver)
    UPDATES.get(update)
    pat = parse_pattern(pattern)
    s = validate_sparsity(sparsity) if not pat.is_nm else pat.sparsity(0)
    if weight.dim() != 2:
        raise SolverError(f"weight: expected a 2-D (d_out, d_in) tensor, got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    pat.check_shape(d_in)
    W = weight.detach().to(SOLVE_DTYPE, memory_format=torch.contiguous_format, copy=True)
    if not bool(torch.isfinite(W).all()):
        raise SolverError("weight: contains NaN/Inf")
    G = None
    if gram is not None:
        if tuple(gram.shape) != (d_in, d_in):
            raise SolverError(f"gram: expected shape ({d_in}, {d_in}) for a weight of shape {tuple(weight.shape)}, got {tuple(gram.shape)}")
        G = gram.detach().to(device=W.device, dtype=SOLVE_DTYPE)
        if not bool(torch.isfinite(G).all()):
            raise SolverError("gram: contains NaN/Inf (activations overflowed?)")
    s_opts, u_opts = split_options(solver, update, options)
    problem = LayerProblem(W=W, G=G, n_tokens=int(n_tokens))
    sol = solve(problem, solver, pat, s, s_opts, update, u_opts, SolveContext(on_iter, on_warning))
    check_mask(sol.mask, pat, s)
    return sol
