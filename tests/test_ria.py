"""RIA mask solver (Zhang et al., ICLR 2024; official repo biomedical-cybernetics/Relative-importance-and-activation-pruning)."""
import pytest
import torch

from pruning import prune_layer
from pruning.patterns import check_mask, parse_pattern, select_mask
from pruning.solvers import SOLVERS, LayerProblem, SolveContext, SolverError
from pruning.solvers.ria import ria_score

PATTERNS = ["unstructured", "per-row", "2:4", "4:8"]


def layer(d_out=24, d_in=32, tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g)
    X = torch.randn(tokens, d_in, generator=g) * (torch.rand(d_in, generator=g) * 3 + 0.1)
    return W, X.T @ X


def test_registered_with_paper_default():
    spec = SOLVERS["ria"]
    assert spec.kind == "mask" and spec.needs_gram
    assert spec.defaults() == {"a": 0.5}


def test_score_matches_formula_elementwise():
    W, G = layer(d_out=5, d_in=7)
    a = 0.5
    S = ria_score(W, G, a)
    Wd, Gd = W.double(), G.double()
    for i in range(5):
        for j in range(7):
            rel = abs(Wd[i, j]) / Wd[i].abs().sum() + abs(Wd[i, j]) / Wd[:, j].abs().sum()
            want = rel * Gd[j, j].sqrt() ** a
            assert float(S[i, j]) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_exact_counts_and_mask_from_score(pattern):
    W, G = layer()
    sol = prune_layer(W, G, solver="ria", sparsity=0.5, pattern=pattern)
    pat = parse_pattern(pattern)
    check_mask(sol.mask, pat, 0.5)
    assert torch.equal(sol.mask, select_mask(ria_score(W, G, 0.5), pat, 0.5))
    assert torch.equal(sol.weight, W * sol.mask)  # surviving weights unchanged


def test_a_zero_ignores_activations_and_scale_invariance():
    W, G = layer()
    G2 = torch.diag(torch.rand(G.shape[0]) * 10 + 0.1)  # other activation norms
    m1 = prune_layer(W, G, solver="ria", sparsity=0.6, a=0.0).mask
    m2 = prune_layer(W, G2, solver="ria", sparsity=0.6, a=0.0).mask
    assert torch.equal(m1, m2)
    # relative importance is scale-free in W; a common activation scale does not change ranks
    m3 = prune_layer(3.0 * W, 7.0 * G, solver="ria", sparsity=0.6).mask
    assert torch.equal(m3, prune_layer(W, G, solver="ria", sparsity=0.6).mask)
    # the activation term matters when a > 0
    assert not torch.equal(prune_layer(W, G2, solver="ria", sparsity=0.6).mask, m1)


def test_zero_rows_columns_and_dead_inputs_are_finite():
    W, G = layer()
    W[3] = 0
    W[:, 5] = 0
    G[7, :] = 0
    G[:, 7] = 0
    S = ria_score(W, G)
    assert bool(torch.isfinite(S).all())
    assert float(S[3].abs().sum()) == 0 and float(S[:, 5].abs().sum()) == 0 and float(S[:, 7].abs().sum()) == 0
    sol = prune_layer(W, G, solver="ria", sparsity=0.5)
    assert not bool(sol.mask[:, 7].any())  # dead input: score 0, pruned first


def test_bad_option_names_field():
    W, G = layer()
    with pytest.raises(SolverError, match="ria.a"):
        prune_layer(W, G, solver="ria", a=-1)
    with pytest.raises(SolverError, match="ria.a"):
        SOLVERS["ria"].run(LayerProblem(W=W, G=G), parse_pattern("unstructured"), 0.5, options={"a": "x"}, ctx=SolveContext())


def test_composes_with_sparsegpt_update():
    W, G = layer()
    plain = prune_layer(W, G, solver="ria", sparsity=0.5)
    upd = prune_layer(W, G, solver="ria", sparsity=0.5, update="sparsegpt")
    assert torch.equal(upd.mask, plain.mask)
    assert upd.rel_error < plain.rel_error
