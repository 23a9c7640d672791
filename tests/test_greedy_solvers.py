"""Magnitude, Wanda and SparseGPT on seeded layers: invariants 1-4, 8d, 9, 10, 11, 13, 18, 19 of docs/algorithms.md, "Invariants"."""
import pytest
import torch

from pruning import prune_layer
from pruning.solvers.base import split_options
from pruning.patterns import parse_pattern
from pruning.solvers import SOLVERS, SolverError
from pruning.solvers.base import SolveContext


def damped_inverse_cholesky(H, damping, ctx=None):
    """Test oracle: upper Cholesky factor U of (H + λI)⁻¹, λ = damping·mean(diag H), with λ raised ×10 until H + λI
    factorises (as SparseGPT's steps 2-3). Returns (U, damping used)."""
    from pruning.solvers.linalg import damped_cholesky
    from pruning.solvers.sparsegpt import _inverse_upper

    return damped_cholesky(H, damping, torch.diagonal(H).mean(), ctx, "oracle", check=_inverse_upper)

GREEDY = ["magnitude", "wanda", "sparsegpt"]
PATTERNS = ["unstructured", "per-row", "2:4", "4:8"]


def layer(d_out=48, d_in=200, tokens=600, seed=0):
    """Random W and a Gram of correlated activations with a decaying spectrum, as real layers have."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g)
    mix = torch.randn(d_in, d_in, generator=g) * torch.logspace(0, -2, d_in).unsqueeze(0)
    X = torch.randn(tokens, d_in, generator=g) @ mix.T + 0.1 * torch.randn(tokens, d_in, generator=g)
    X = X * torch.rand(d_in, generator=g) * 3  # uneven channel norms (what Wanda exploits)
    return W, X.T @ X, X


@pytest.mark.parametrize("solver", GREEDY)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_exact_sparsity(solver, pattern):
    W, G, _ = layer()
    for s in (0.3, 0.5, 0.7):
        sol = prune_layer(W, G, 600, solver=solver, sparsity=s, pattern=pattern)
        p = parse_pattern(pattern)
        n_pruned = int((~sol.mask).sum())
        if p.kind == "unstructured":
            assert n_pruned == int(s * W.numel() + 1e-9)
        elif p.kind == "per-row":
            assert bool(((~sol.mask).sum(1) == int(s * W.shape[1] + 1e-9)).all())
        else:
            assert bool(((~sol.mask).reshape(W.shape[0], -1, p.m).sum(-1) == p.n).all())
        assert bool((sol.weight[~sol.mask] == 0).all())
        assert int((sol.weight == 0).sum()) == n_pruned  # W has no zeros of its own


@pytest.mark.parametrize("solver", GREEDY)
def test_zero_sparsity_is_identity(solver):
    W, G, _ = layer()
    sol = prune_layer(W, G, 600, solver=solver, sparsity=0.0)
    assert torch.equal(sol.weight, W)
    assert sol.rel_error == 0.0


def test_rel_error_matches_activations():
    W, G, X = layer()
    sol = prune_layer(W, G, 600, solver="sparsegpt", sparsity=0.5)
    Y, Yh = X.double() @ W.double().T, X.double() @ sol.weight.double().T
    direct = float(((Y - Yh) ** 2).sum() / (Y**2).sum())
    assert sol.rel_error == pytest.approx(direct, rel=1e-6)


def test_wanda_equals_magnitude_when_all_norms_equal():  # invariant 8d
    W, _, _ = layer()
    G = torch.eye(W.shape[1]) * 7.0
    for pat in ("per-row", "unstructured", "2:4"):
        a = prune_layer(W, G, 1, solver="wanda", sparsity=0.5, pattern=pat)
        b = prune_layer(W, G, 1, solver="magnitude", sparsity=0.5, pattern=pat)
        assert torch.equal(a.mask, b.mask)


def test_wanda_reparameterisation_invariance():  # invariant 9 (Wanda exact; magnitude not invariant)
    W, _, X = layer()
    c = 2.0 ** torch.randint(-3, 4, (W.shape[1],)).float()  # powers of two: the rescaling is exact in fp
    X2, W2 = X * c, W / c
    for pat in ("per-row", "2:4"):
        a = prune_layer(W, X.T @ X, 1, solver="wanda", sparsity=0.5, pattern=pat)
        b = prune_layer(W2, X2.T @ X2, 1, solver="wanda", sparsity=0.5, pattern=pat)
        assert torch.equal(a.mask, b.mask)
    m1 = prune_layer(W, X.T @ X, 1, solver="magnitude", sparsity=0.5).mask
    m2 = prune_layer(W2, X2.T @ X2, 1, solver="magnitude", sparsity=0.5).mask
    assert not torch.equal(m1, m2)


def test_sparsegpt_saliency_invariant_without_damping():  # invariant 9 for SparseGPT (percdamp = 0)
    g = torch.Generator().manual_seed(3)
    W = torch.randn(16, 32, generator=g, dtype=torch.float64).float()
    X = torch.randn(2000, 32, generator=g)
    c = 2.0 ** torch.randint(-2, 3, (32,)).float()
    a = prune_layer(W, X.T @ X, 1, solver="sparsegpt", sparsity=0.5, damping=0.0)
    b = prune_layer(W / c, (X * c).T @ (X * c), 1, solver="sparsegpt", sparsity=0.5, damping=0.0)
    assert torch.equal(a.mask, b.mask)
    assert a.rel_error == pytest.approx(b.rel_error, rel=1e-3)


def test_obs_single_weight_closed_form():  # invariant 4
    g = torch.Generator().manual_seed(1)
    d = 24
    X = torch.randn(400, d, generator=g, dtype=torch.float64)
    H = X.T @ X
    w = torch.randn(1, d, generator=g, dtype=torch.float64)
    w[0, 0] = 1e-3  # lowest saliency: the one pruned weight is the first column the sweep visits, where the
    # sequential update (which only compensates later columns) coincides with the full OBS closed form
    damp = 0.01
    Hd = H + damp * torch.diagonal(H).mean() * torch.eye(d, dtype=torch.float64)
    Hinv = torch.linalg.inv(Hd)
    sol = prune_layer(w.float(), H.float(), 400, solver="sparsegpt", sparsity=1.5 / d, damping=damp)  # prunes exactly 1
    q = int((~sol.mask).nonzero()[0, 1])
    expect = w[0] - (w[0, q] / Hinv[q, q]) * Hinv[:, q]
    assert q == 0
    assert torch.allclose(sol.weight[0].double(), expect, atol=1e-6)
    # the chosen weight minimises w_q²/[H⁻¹]_qq, the OBS error increase
    sal = w[0] ** 2 / torch.diagonal(Hinv)
    assert q == int(sal.argmin())
    # U_jj² = [(H_{j:,j:})⁻¹]_jj for the Cholesky factor used
    U, _ = damped_inverse_cholesky(H.float(), damp, SolveContext())
    for j in (0, 5, d - 1):
        assert float(U[j, j]) ** 2 == pytest.approx(float(torch.linalg.inv(Hd[j:, j:])[0, 0]), rel=1e-3)


def test_gram_accumulation_is_batching_invariant():  # invariant 3
    from pruning.blocks import block_linears
    from pruning.pipeline import BlockInputs, collect_grams

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(16, 8))
    x = torch.randn(6, 10, 16)
    one = collect_grams(lin, block_linears(lin), BlockInputs([x], [()], [{}]))[0]
    many = collect_grams(lin, block_linears(lin), BlockInputs(list(x.split(1)), [()] * 6, [{}] * 6))[0]
    G1, n1 = one.gram("0")
    G2, n2 = many.gram("0")
    X = x.reshape(-1, 16)
    assert n1 == n2 == 60
    assert torch.allclose(G1, X.T @ X, rtol=1e-5, atol=1e-4)
    assert torch.allclose(G1, G2, rtol=1e-5, atol=1e-4)


def test_dead_inputs():  # invariant 10
    W, _, X = layer(d_in=64)
    X[:, [3, 10, 40]] = 0
    G = X.T @ X
    wanda = prune_layer(W, G, 1, solver="wanda", sparsity=0.25, pattern="per-row")
    assert not bool(wanda.mask[:, [3, 10, 40]].any())  # scored 0: pruned first
    sg = prune_layer(W, G, 1, solver="sparsegpt", sparsity=0.5)
    assert bool(torch.isfinite(sg.weight).all())
    assert bool((sg.weight[:, [3, 10, 40]] == 0).all())


def test_rank_deficient_gram_no_nan():  # invariants 10, 11: fewer tokens than inputs
    W, _, _ = layer(d_in=128)
    X = torch.randn(20, 128)
    for solver in GREEDY:
        for pat in ("unstructured", "2:4"):
            sol = prune_layer(W, X.T @ X, 20, solver=solver, sparsity=0.5, pattern=pat)
            assert bool(torch.isfinite(sol.weight).all()) and sol.rel_error == sol.rel_error


def test_damping_is_raised_and_reported_not_silently_replaced():  # invariant 11
    W, _, _ = layer(d_in=32)
    x = torch.randn(1, 32)
    G = x.T @ x  # rank 1: singular without damping
    warnings = []
    sol = prune_layer(W, G, 1, solver="sparsegpt", sparsity=0.5, damping=0.0, on_warning=warnings.append)
    assert warnings and "damping" in warnings[0]
    assert sol.info["damping_used"] > 0
    assert bool(torch.isfinite(sol.weight).all())


@pytest.mark.parametrize("solver", GREEDY)
def test_error_monotone_in_sparsity(solver):  # invariant 13
    W, G, _ = layer()
    errs = [prune_layer(W, G, 600, solver=solver, sparsity=s).rel_error for s in (0.5, 0.6, 0.7, 0.8)]
    assert errs == sorted(errs)


def test_sparsegpt_beats_wanda_beats_magnitude_on_seeded_layer():  # invariant 6 (soft, holds on this seed)
    W, G, _ = layer()
    for pat in ("unstructured", "2:4"):
        e = {s: prune_layer(W, G, 600, solver=s, sparsity=0.5, pattern=pat).rel_error for s in GREEDY}
        assert e["sparsegpt"] < e["wanda"] < e["magnitude"]


def test_fixed_mask_sparsegpt_update_beats_mask_only():  # invariant 5 (soft)
    W, G, _ = layer()
    mask_only = prune_layer(W, G, 600, solver="wanda", sparsity=0.6)
    upd = prune_layer(W, G, 600, solver="wanda", sparsity=0.6, update="sparsegpt")
    assert torch.equal(mask_only.mask, upd.mask)
    assert upd.rel_error < mask_only.rel_error


@pytest.mark.parametrize("solver", GREEDY)
def test_deterministic(solver):  # invariant 18
    W, G, _ = layer()
    a = prune_layer(W, G, 600, solver=solver, sparsity=0.6, pattern="4:8")
    b = prune_layer(W, G, 600, solver=solver, sparsity=0.6, pattern="4:8")
    assert torch.equal(a.weight, b.weight)


def test_dtype_round_trip_keeps_zeros():  # invariant 19
    W, G, _ = layer()
    sol = prune_layer(W, G, 600, solver="sparsegpt", sparsity=0.5)
    for dt in (torch.bfloat16, torch.float16):
        back = sol.weight.to(dt)
        assert torch.equal(back == 0, sol.weight == 0)


def test_inputs_not_modified_and_dtype_accepted():
    W, G, _ = layer()
    W0, G0 = W.clone(), G.clone()
    sol = prune_layer(W.to(torch.bfloat16), G, 600, solver="sparsegpt", sparsity=0.5)
    assert torch.equal(W, W0) and torch.equal(G, G0)
    assert sol.weight.dtype == torch.float32


@pytest.mark.parametrize("kwargs,field", [
    (dict(sparsity=1.0), "sparsity"), (dict(sparsity=-0.1), "sparsity"), (dict(pattern="3:4x"), "pattern"),
    (dict(solver="nope"), "solver"), (dict(damping=-1), "damping"), (dict(blocksize=0), "blocksize"),
    (dict(bogus=1), "options"), (dict(update="nope"), "update"),
])
def test_bad_input_names_the_field(kwargs, field):
    W, G, _ = layer()
    with pytest.raises(ValueError, match=field):
        prune_layer(W, G, 600, **{"solver": "sparsegpt", **kwargs})


def test_bad_shapes_and_nan():
    W, G, _ = layer()
    with pytest.raises(ValueError, match="gram"):
        prune_layer(W, G[:10, :10], 1, solver="wanda")
    with pytest.raises(ValueError, match="multiple of M=4"):
        prune_layer(W[:, :198], G[:198, :198], 1, solver="wanda", pattern="2:4")
    Wn = W.clone()
    Wn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight"):
        prune_layer(Wn, G, 1, solver="wanda")
    with pytest.raises(ValueError, match="gram"):
        prune_layer(W, None, 0, solver="sparsegpt")


def test_registry_lists_names_on_unknown():
    with pytest.raises(SolverError, match="allowed: .*magnitude.*wanda.*sparsegpt"):
        SOLVERS.get("foo")
    s, u = split_options("sparsegpt", "none", {"damping": "0.05"})
    assert s == {"damping": 0.05, "blocksize": 128} and u == {}


def obs_sweep_reference(W, U, pattern, sparsity, blocksize):
    """The OBS column sweep as the paper's Algorithm 1 writes it (two plain loops: one column at a time, rank-1
    updates over the whole rest of the block, then the lazy batch update), with the project's exact-count mask
    selection: the oracle for the fast ``obs_sweep`` (sub-blocks, transposed blocks, pre-scaled errors)."""
    from pruning.patterns import _floor, _lowest_k
    from pruning.solvers.sparsegpt import _budget

    W = W.clone()
    d_out, d_in = W.shape
    keep = torch.ones(d_out, d_in, dtype=torch.bool)
    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        d, Err1 = torch.diagonal(U1), torch.zeros(d_out, i2 - i1)
        if pattern.kind == "unstructured":
            k = _budget(d_out, i1, i2, sparsity)
            if k:
                keep[:, i1:i2] = ~_lowest_k(((W1 / d) ** 2).reshape(1, -1), k).view(d_out, -1)
        elif pattern.kind == "per-row":
            k = _floor(sparsity * i2) - _floor(sparsity * i1)
            if k:
                keep[:, i1:i2] = ~_lowest_k((W1 / d) ** 2, k)
        for i in range(i2 - i1):  # for j = i, ..., i + B − 1
            col = i1 + i
            if pattern.kind == "nm" and col % pattern.m == 0:  # if j mod Bs = 0: choose the group's mask
                g = (W1[:, i : i + pattern.m] / d[i : i + pattern.m]) ** 2
                idx = torch.sort(g, dim=1, stable=True).indices[:, : pattern.n]
                keep[:, col : col + pattern.m] = torch.ones_like(g, dtype=torch.bool).scatter_(1, idx, False)
            err = W1[:, i] * ~keep[:, col] / d[i]  # E_j = (1 − M_j) · W_j / [H⁻¹]_jj
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)  # W[:, j:(i+B)] −= E_j · H⁻¹_{j, j:(i+B)}
            Err1[:, i] = err
        W[:, i1:i2] = W1 * keep[:, i1:i2]
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # lazy batch update
    return W * keep, keep  # W ← W ⊙ M


@pytest.mark.parametrize("pattern,s,blocksize,ref_blocksize", [
    ("unstructured", 0.6, 128, 128), ("per-row", 0.5, 64, 64), ("2:4", 0.5, 128, 128), ("4:8", 0.5, 48, 48),
    ("2:5", 0.4, 30, 30), ("2:4", 0.5, 30, 28),  # a block size that is not a multiple of M shrinks to one
])
def test_sweep_equals_the_column_by_column_reference(pattern, s, blocksize, ref_blocksize):
    """obs_sweep works on transposed sub-blocks (fewer bytes per column); the iterates are the paper's."""
    from pruning.solvers.sparsegpt import _prepare, obs_sweep

    W, G, _ = layer(d_out=40, d_in=200, seed=3)
    W, H = _prepare(W, G)
    U, _ = damped_inverse_cholesky(H, 0.01, SolveContext())
    pat = parse_pattern(pattern)
    got_W, got_keep, _ = obs_sweep(W, U, pat, s, blocksize)
    ref_W, ref_keep = obs_sweep_reference(W, U, pat, s, ref_blocksize)
    assert torch.equal(got_keep, ref_keep)
    assert torch.allclose(got_W, ref_W, rtol=1e-4, atol=1e-5)
