"""RIA: Relative Importance and Activations (mask only, no weight update).

Zhang, Bai, Lin, Zhao, Hou & Cannistraci, "Plug-and-Play: An Efficient Post-training Pruning Method for
Large Language Models", ICLR 2024; checked against biomedical-cybernetics/Relative-importance-and-activation-pruning
``lib/prune.py:prune_ria`` and ``main.py`` (commit b87b897).

Score of weight (i, j) of W (d_out, d_in):

    RIA_ij = ( |W_ij| / Σ_j' |W_ij'|  +  |W_ij| / Σ_i' |W_i'j| ) · ‖X_j‖₂^a

i.e. the weight's share of its output row plus its share of its input column ("relative importance"),
times the input-activation norm to the power ``a``. ‖X_j‖₂² = G_jj (the Gram diagonal); the official
running mean over sequences differs by a constant factor, which does not change any ranking.

Defaults, from the official ``main.py``: ``a = 0.5`` (``--a``), and the score is ranked over the whole
matrix (``--per_outneuron`` off) -- here ``pattern="unstructured"``; ``per-row`` is the official
``--per_outneuron``; N:M is the official "directly N:M" selection (the optional channel reallocation and
linear-sum-assignment permutations, ``--reallocation/--lsa``, are not implemented).
A row or column whose |W| sums to 0 contributes 0 (the official code would divide 0 by 0).
Exact counts and stable tie-breaking come from ``select_mask`` (the official ``<=`` threshold may prune
more than the budget under ties).
"""
from __future__ import annotations

import torch

from ..patterns import Pattern, select_mask
from .base import SOLVERS, LayerProblem, Option, SolveContext, SolverOutput
from .greedy import selection_cost

RIA_DEFAULT_A = 0.5  # official main.py --a default


def _share(A: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """A / total with 0 where total == 0 (an all-zero row/column has no relative importance)."""
    return torch.where(total > 0, A / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(A))


def ria_score(W: torch.Tensor, G: torch.Tensor, a: float = RIA_DEFAULT_A) -> torch.Tensor:
    """RIA score (d_out, d_in): (|W|/row sum + |W|/column sum) · ‖X_j‖^a, with ‖X_j‖² = G_jj."""
    A = W.abs()  # (d_out, d_in)
    rel = _share(A, A.sum(dim=1, keepdim=True)) + _share(A, A.sum(dim=0, keepdim=True))  # (d_out, d_in)
    act = torch.diagonal(G).clamp_min(0).sqrt().pow(float(a))  # (d_in,); 0**0 = 1, as in torch/official
    return rel * act.unsqueeze(0)


@SOLVERS.register(
    "ria",
    kind="mask",
    needs_gram=True,
    options=(
        Option("a", RIA_DEFAULT_A, "float", "exponent of the activation norm ‖X_j‖ (paper/official default 0.5; "
               "0 = relative importance only)", min=0.0, max=4.0),
    ),
    summary="Prune the smallest relative importance (|W_ij| over its row sum plus over its column sum) times "
    "‖X_j‖^a. One forward, no weight update.",
    paper="https://github.com/biomedical-cybernetics/Relative-importance-and-activation-pruning",
    cost=selection_cost,
)
def ria(p: LayerProblem, pattern: Pattern, sparsity: float, opts: dict, ctx: SolveContext) -> SolverOutput:
    keep = select_mask(ria_score(p.W, p.G, opts["a"]), pattern, sparsity)
    return SolverOutput(weight=p.W * keep, mask=keep, info={"a": opts["a"]})
