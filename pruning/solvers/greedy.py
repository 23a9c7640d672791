"""Greedy mask-only solvers: magnitude and Wanda.

* magnitude -- score |W_ij|; no data (checked against locuslab/wanda lib/prune.py:prune_magnitude).
* wanda     -- score |W_ij| * ||X_j||_2 (Sun et al. 2023, "A Simple and Effective Pruning Approach for
               Large Language Models", arXiv 2306.11695; checked against locuslab/wanda
               lib/prune.py:prune_wanda). ||X_j||² = G_jj, the Gram diagonal; the official running mean
               over sequences differs by the constant 1/n_seq, which does not change any ranking.
               The paper's setting is ``--pattern per-row``; with ``unstructured`` the same score is
               ranked over the whole matrix.
Surviving weights keep their dense values. Exact counts and stable tie-breaking come from select_mask.
"""
from __future__ import annotations

import torch

from ..patterns import Pattern, select_mask
from .base import SOLVERS, LayerProblem, SolveContext, SolverOutput


def _mask_only(W: torch.Tensor, score: torch.Tensor, pattern: Pattern, sparsity: float) -> SolverOutput:
    keep = select_mask(score, pattern, sparsity)
    return SolverOutput(weight=W * keep, mask=keep)


def selection_cost(d_out: int, d_in: int, opts: dict, **_) -> dict:
    """Operation counts (``pruning.cost_model``): one score pass and one mask selection over the matrix."""
    return {"selected_values": d_out * d_in}


def wanda_score(W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||: (d_out, d_in)."""
    return W.abs() * torch.diagonal(G).clamp_min(0).sqrt().unsqueeze(0)


@SOLVERS.register(
    "magnitude",
    kind="mask",
    needs_gram=False,
    summary="Prune the smallest |W|. No data, no weight update: the baseline every method must beat.",
    paper="https://arxiv.org/abs/1506.02626",
    cost=selection_cost,
)
def magnitude(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext) -> SolverOutput:
    return _mask_only(p.W, p.W.abs(), pattern, sparsity)


@SOLVERS.register(
    "wanda",
    kind="mask",
    needs_gram=True,
    summary="Prune the smallest |W_ij|·‖X_j‖ (weight times input-activation norm). One forward, no weight update.",
    paper="https://arxiv.org/abs/2306.11695",
    cost=selection_cost,
)
def wanda(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext) -> SolverOutput:
    return _mask_only(p.W, wanda_score(p.W, p.G), pattern, sparsity)
