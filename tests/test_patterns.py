"""select_mask / parse_pattern: exact counts, stable tie-breaking, clear errors (invariant 1)."""
import pytest
import torch

from pruning.patterns import PatternError, check_mask, parse_pattern, prune_count, select_mask


@pytest.mark.parametrize("text,kind,n,m", [("unstructured", "unstructured", 0, 0), ("per-row", "per-row", 0, 0),
                                           ("2:4", "nm", 2, 4), ("4:8", "nm", 4, 8), (" 1 : 4 ", "nm", 1, 4)])
def test_parse(text, kind, n, m):
    p = parse_pattern(text)
    assert (p.kind, p.n, p.m) == (kind, n, m)


@pytest.mark.parametrize("bad", ["4:2", "2:2", "0:4", "banana", "2:4:8", ""])
def test_parse_rejects(bad):
    with pytest.raises(PatternError, match="pattern"):
        parse_pattern(bad)


@pytest.mark.parametrize("s", [0.0, 0.1, 0.29, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("shape", [(7, 13), (64, 96), (3, 100)])
def test_exact_counts(s, shape):
    torch.manual_seed(0)
    score = torch.randn(shape)
    for pat in ("unstructured", "per-row"):
        p = parse_pattern(pat)
        keep = select_mask(score, p, s)
        assert int((~keep).sum()) == prune_count(p, shape, s)
        check_mask(keep, p, s)
    # floor with round-off guard: 0.29*100 must give 29, not 28
    assert prune_count(parse_pattern("per-row"), (1, 100), 0.29) == 29


@pytest.mark.parametrize("pat", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_every_group(pat):
    p = parse_pattern(pat)
    score = torch.randn(16, 64)
    keep = select_mask(score, p, 0.0)
    groups = (~keep).reshape(16, -1, p.m).sum(-1)
    assert bool((groups == p.n).all())
    # the pruned ones are the smallest of their group
    g = score.reshape(16, -1, p.m)
    kept_min = torch.where(keep.reshape(16, -1, p.m), g, torch.inf).min(-1).values
    pruned_max = torch.where(~keep.reshape(16, -1, p.m), g, -torch.inf).max(-1).values
    assert bool((pruned_max <= kept_min).all())


def test_ties_are_broken_by_index_and_count_stays_exact():
    score = torch.ones(4, 8)  # all tied: the official `<=` threshold would prune everything
    keep = select_mask(score, parse_pattern("unstructured"), 0.5)
    assert int((~keep).sum()) == 16
    assert bool((~keep).view(-1)[:16].all())  # lower flat indices first
    keep = select_mask(score, parse_pattern("per-row"), 0.25)
    assert bool((~keep)[:, :2].all()) and bool(keep[:, 2:].all())


@pytest.mark.parametrize("pat", ["2:4", "1:4", "4:8", "3:8", "5:16"])  # M ≤ 8: pairwise ranks; 16: the sort
def test_nm_ties_equal_the_stable_sort_rule(pat):
    """N:M selection takes a fast unstable sort unless a tie sits at the cut: both must give the documented rule
    (among equal scores, the lower column is pruned first), here with many ties at and away from the cut."""
    p = parse_pattern(pat)
    g = torch.Generator().manual_seed(1)
    with_nan = torch.randn(32, 64, generator=g)
    with_nan[::3, ::5] = float("nan")
    for score in (torch.randint(0, 3, (32, 64), generator=g).float(), torch.randn(32, 64, generator=g), with_nan):
        keep = select_mask(score, p, 0.0)
        grp = score.reshape(32, -1, p.m)
        idx = torch.sort(grp, dim=2, stable=True).indices[:, :, : p.n]
        ref = torch.ones_like(grp, dtype=torch.bool).scatter_(2, idx, False).reshape(32, 64)
        assert torch.equal(keep, ref)


def test_lowest_k_fast_path_and_tie_break_agree_with_stable_sort():
    from pruning.patterns import _lowest_k

    g = torch.Generator().manual_seed(2)
    for score in (torch.randn(5, 97, generator=g), torch.randint(0, 4, (5, 97), generator=g).float()):
        for k in (1, 13, 48, 96):
            ref = torch.zeros_like(score, dtype=torch.bool).scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], True)
            assert torch.equal(_lowest_k(score, k), ref)


def test_long_row_bracket_selection_equals_kthvalue_and_the_stable_sort():
    """One long row (a whole-matrix mask) finds its k-th value through a sampled bracket (patterns._kth_smallest):
    the same value as kthvalue and the same mask as the stable sort, also where the strided sample misrepresents
    the row (periodic rows, constant rows, few distinct values, sorted rows, infinities) and the bracket check
    falls back."""
    from pruning.patterns import _BRACKET_MIN, _kth_smallest, _lowest_k

    n = _BRACKET_MIN * 3 + 5
    g = torch.Generator().manual_seed(3)
    step = n // 4096
    periodic = torch.zeros(n)
    periodic[::step] = 1.0  # every sampled entry is 1, almost all others 0
    rows = {"randn": torch.randn(n, generator=g), "ties": torch.randint(0, 5, (n,), generator=g).float(),
            "constant": torch.full((n,), 0.25), "sorted": torch.arange(n, dtype=torch.float32),
            "reversed": torch.arange(n, 0, -1, dtype=torch.float32), "periodic": periodic,
            "inf": torch.where(torch.rand(n, generator=g) < 0.3, torch.tensor(float("inf")), torch.randn(n, generator=g))}
    for name, x in rows.items():
        for k in (1, 7, n // 3, n // 2, n - 1, n):
            assert torch.equal(_kth_smallest(x, k), torch.kthvalue(x, k).values), (name, k)
        for k in (n // 5, n // 2):
            ref = torch.zeros(n, dtype=torch.bool)
            ref[torch.sort(x, stable=True).indices[:k]] = True
            assert torch.equal(_lowest_k(x.unsqueeze(0), k)[0], ref), (name, k)


def test_nm_width_must_divide():
    with pytest.raises(PatternError, match="multiple of M=4"):
        select_mask(torch.randn(3, 10), parse_pattern("2:4"), 0.5)


def test_check_mask_detects_wrong_density():
    keep = torch.ones(4, 8, dtype=torch.bool)
    with pytest.raises(PatternError):
        check_mask(keep, parse_pattern("unstructured"), 0.5)
