"""Per-layer sparsity allocation: exact global budget, OWL as in its paper/official code, error-curve optimum."""
import itertools
import math
import random
import re

import pytest
import torch

from pruning.allocation import (AllocationError, check_allocation, counts_to_sparsities, curve_grid,
                                curve_sparsities, exact_counts, outlier_ratio, owl_block_sparsities, wanda_scores)
from pruning.patterns import parse_pattern, prune_count


@pytest.mark.parametrize("seed", range(20))
def test_exact_counts_meet_the_budget_and_stay_close(seed):
    rnd = random.Random(seed)
    sizes = [rnd.choice([64 * 64, 64 * 128, 128 * 64, 7, 1]) for _ in range(rnd.randint(1, 30))]
    s = rnd.uniform(0.05, 0.95)
    targets = [min(0.99, max(0.0, s + rnd.uniform(-0.1, 0.1))) for _ in sizes]
    c = exact_counts(targets, sizes, s)
    assert sum(c) == math.floor(s * sum(sizes) + 1e-9)
    assert all(0 <= k <= n for k, n in zip(c, sizes))
    # every solver turns the sparsity back into exactly that count
    pat = parse_pattern("unstructured")
    for k, n, sp in zip(c, sizes, counts_to_sparsities(c, sizes)):
        assert prune_count(pat, (1, n), sp) == k


def test_uniform_targets_are_exact_too():
    sizes = [576 * 576, 192 * 576, 1536 * 576, 576 * 1536] * 3
    c = exact_counts([0.5] * len(sizes), sizes, 0.5)
    assert c == [n // 2 for n in sizes]
    c = exact_counts([0.333] * len(sizes), sizes, 0.333)
    assert sum(c) == math.floor(0.333 * sum(sizes) + 1e-9)


def test_outlier_ratio_counts_entries_above_m_times_mean():
    s = [torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 20.0]])]
    # mean = 29/10 = 2.9; 5 × mean = 14.5: one entry of ten
    assert outlier_ratio(s, m=5) == pytest.approx(10.0)
    assert outlier_ratio(s, m=10) == 0.0


def test_owl_block_sparsities_mean_and_order():
    ratios = [1.0, 3.0, 2.0, 5.0]
    sp = owl_block_sparsities(ratios, 0.7, lam=0.08)
    assert sum(sp) / len(sp) == pytest.approx(0.7, abs=1e-12)
    assert max(sp) - min(sp) == pytest.approx(0.16, abs=1e-12)  # min-max scaled to a width of 2λ
    order = sorted(range(4), key=lambda i: ratios[i])
    assert [sp[i] for i in order] == sorted(sp, reverse=True)  # more outliers -> pruned less
    assert owl_block_sparsities([2.0, 2.0], 0.5) == [0.5, 0.5]


def test_wanda_scores():
    W = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    g = torch.tensor([4.0, 9.0])
    assert torch.equal(wanda_scores(W, g), torch.tensor([[2.0, 6.0], [6.0, 1.5]]))


def test_curve_allocation_meets_budget_and_beats_uniform():
    grid = curve_grid(0.5, span=0.2, points=9)
    assert grid[0] == pytest.approx(0.3) and grid[-1] == pytest.approx(0.7) and len(grid) == 9
    # layer 0 is cheap to prune, layer 1 expensive, layer 2 in between (convex increasing curves)
    slopes = [0.2, 3.0, 1.0]
    curves = [[a * x * x for x in grid] for a in slopes]
    sizes = [1000, 1000, 2000]
    t = curve_sparsities(curves, grid, sizes, 0.5)
    assert sum(x * n for x, n in zip(t, sizes)) == pytest.approx(0.5 * sum(sizes), rel=1e-9)
    assert t[0] > t[2] > t[1]

    def cost(ts):
        return sum(a * x * x for a, x in zip(slopes, ts))

    assert cost(t) < cost([0.5, 0.5, 0.5])
    # brute force over the grid with the budget met exactly (pairs of grid points + the blend) is no better
    best = min(cost(c) for c in itertools.product(grid, repeat=3)
               if abs(sum(x * n for x, n in zip(c, sizes)) - 2000) < 1e-9)
    assert cost(t) <= best + 1e-6


def test_curve_allocation_with_identical_curves_is_uniform():
    grid = curve_grid(0.6)
    curves = [[x ** 2 for x in grid]] * 4
    t = curve_sparsities(curves, grid, [100] * 4, 0.6)
    assert all(x == pytest.approx(0.6, abs=1e-6) for x in t)


def test_bad_allocation_input_is_refused_before_anything_runs():
    check_allocation("uniform", 0.5, "2:4")
    check_allocation("owl", 0.5)
    with pytest.raises(AllocationError, match="allocation: unknown allocation 'best'; allowed: uniform, owl, curve"):
        check_allocation("best", 0.5)
    with pytest.raises(AllocationError, match="pattern 2:4 fixes it to N/M"):
        check_allocation("owl", 0.5, "2:4")
    with pytest.raises(AllocationError, match=r"owl_lambda: 0.6 is outside the allowed range"):
        check_allocation("owl", 0.5, owl_lambda=0.6)
    with pytest.raises(AllocationError, match=r"owl_lambda: 0.2 is outside"):
        check_allocation("owl", 0.9, owl_lambda=0.2)  # beyond 1 − s
    with pytest.raises(AllocationError, match=r"owl_m: 0 is not allowed; allowed: a number > 0"):
        check_allocation("owl", 0.5, owl_m=0)
    with pytest.raises(AllocationError, match="needs pattern 'unstructured'"):
        check_allocation("curve", 0.5, "per-row")


# ---- in the pipeline (tiny model) -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_and_windows():
    from pruning.data import calibration_windows
    from pruning.models import tiny_model

    m, tok = tiny_model("llama", num_hidden_layers=4)
    return m, tok, calibration_windows(tok, source="pydoc", nsamples=4, seqlen=64)


def _prune(tiny_and_windows, **kw):
    import copy

    from pruning.config import PruneConfig
    from pruning.pipeline import prune_model

    m, tok, w = tiny_and_windows
    p = copy.deepcopy(m)
    return p, prune_model(p, tok, PruneConfig(**kw), windows=w)


@pytest.mark.parametrize("allocation", ["owl", "curve"])
@pytest.mark.parametrize("solver", ["magnitude", "wanda", "sparsegpt", "admm"])
def test_allocations_prune_exactly_the_global_budget(tiny_and_windows, allocation, solver):
    s = 0.55
    _, r = _prune(tiny_and_windows, solver=solver, sparsity=s, allocation=allocation, options={"iters": 4, "gradual_iters": 2} if solver == "admm" else {})
    zeros, numel = sum(l["zeros"] for l in r["layers"]), sum(l["numel"] for l in r["layers"])
    assert zeros == math.floor(s * numel + 1e-9)
    assert all(l["zeros"] == round(l["target"] * l["numel"]) for l in r["layers"])  # each layer hits its target
    assert len({round(l["target"], 6) for l in r["layers"]}) > 1  # not uniform
    assert "allocation" in r["timings"]


def test_owl_targets_follow_the_outlier_ratios_of_a_dense_pass(tiny_and_windows):
    """Re-derive OWL's block sparsities independently: dense forward with hooks, |W|·‖X‖, ratio above M·mean."""
    from pruning.blocks import block_linears, find_blocks

    m, tok, w = tiny_and_windows
    _, blocks = find_blocks(m)
    sq = {}

    def hook(key):
        def fn(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sq[key] = sq.get(key, 0) + (x * x).sum(0)
        return fn

    hs = [lin.module.register_forward_pre_hook(hook((b, n))) for b, blk in enumerate(blocks)
          for n, lin in block_linears(blk).items()]
    with torch.no_grad():
        for i in range(w.shape[0]):
            m(input_ids=w[i:i + 1])
    for h in hs:
        h.remove()
    ratios = []
    for b, blk in enumerate(blocks):
        allw = torch.cat([(lin.get_weight().abs().double() * sq[(b, n)].sqrt()).flatten()
                          for n, lin in block_linears(blk).items()])
        ratios.append(float((allw > allw.mean() * 5).sum()) / allw.numel() * 100)
    r = torch.tensor(ratios, dtype=torch.float64)
    dens = (r - r.min()) / (r.max() - r.min()) * 0.16
    want = 1 - (dens - dens.mean() + 0.5)
    _, rep = _prune(tiny_and_windows, solver="wanda", sparsity=0.5, allocation="owl")
    for l in rep["layers"]:
        assert l["target"] == pytest.approx(float(want[l["block"]]), abs=2.0 / l["numel"] + 1e-6)


def test_uniform_allocation_is_todays_behaviour(tiny_and_windows):
    from pruning.config import PruneConfig

    _, a = _prune(tiny_and_windows, solver="wanda", sparsity=0.5)
    _, b = _prune(tiny_and_windows, solver="wanda", sparsity=0.5, allocation="uniform")
    assert [l["rel_error"] for l in a["layers"]] == [l["rel_error"] for l in b["layers"]]
    assert "target" not in a["layers"][0] and "allocation" not in a["timings"]
    assert PruneConfig(allocation="uniform").key() == PruneConfig().key()
    assert PruneConfig(allocation="owl").key() != PruneConfig().key()


@pytest.mark.parametrize("flags,message", [
    (["--allocation", "owl", "--owl-lambda", "-0.01"], r"owl_lambda: -0.01 is outside the allowed range"),
    (["--allocation", "owl", "--sparsity", "0.3", "--owl-lambda", "0.3"], r"owl_lambda: 0.3 is outside"),  # not < s
    (["--allocation", "owl", "--sparsity", "0.8", "--owl-lambda", "0.25"], r"owl_lambda: 0.25 is outside"),  # > 1 − s
    (["--allocation", "owl", "--owl-m", "0"], r"owl_m: 0.0 is not allowed; allowed: a number > 0"),
    (["--allocation", "owl", "--owl-m", "-2"], r"owl_m: -2.0 is not allowed"),
    (["--allocation", "owl", "--pattern", "2:4"], r"allocation: 'owl' varies the sparsity per layer, but the pattern 2:4 fixes it"),
    (["--allocation", "curve", "--pattern", "4:8"], r"allocation: 'curve' varies .* use allocation 'uniform' with N:M"),
    (["--solver", "alps", "--max-iter", "-1"], r"max_iter"),
    (["--solver", "alps", "--rho", "0"], r"rho"),
    (["--solver", "alps", "--cg-rtol", "2"], r"cg_rtol"),
])
def test_cli_refuses_bad_allocation_and_alps_input_before_loading_anything(flags, message, capsys, monkeypatch):
    """The issue's bad input, as a user gives it: exit 2 with a message naming the field, before any model load."""
    import pruning.api as api
    from pruning import __main__ as cli_main

    def no_load(*a, **k):
        raise AssertionError("a model was loaded for a bad input")

    monkeypatch.setattr(api, "get_model", no_load)
    monkeypatch.setattr(api, "run_job", no_load)
    assert cli_main.main(["run", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
