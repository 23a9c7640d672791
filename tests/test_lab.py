"""The lab: the engine part (``pruning.lab``: every solver on one layer, arrays out) and its presentation
(``ui.lab_view``: mask agreement, histograms, crop, summary, the shipped precomputed layer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning import SOLVERS
from pruning.lab import solve_layer
from pruning.solvers import LayerProblem


def _problem(d_out=24, d_in=32, tokens=400, seed=0) -> LayerProblem:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d_in, tokens, generator=g)  # (d_in, tokens)
    return LayerProblem(W=torch.randn(d_out, d_in, generator=g), G=X @ X.T, n_tokens=tokens)


def test_lab_degrades_when_a_solver_is_missing():
    from ui import plots
    from ui.lab_view import explanation_md, lab_summary, mask_crop, present

    problem = _problem()
    removed = {n: SOLVERS._specs.pop(n) for n in ("admm", "sparsefw") if n in SOLVERS}
    try:
        res = present(solve_layer(problem, 0.5, "2:4"))
    finally:
        SOLVERS._specs.update(removed)
    assert all(not v["available"] and "not available" in v["reason"] for v in res["iterative"].values())
    assert res["sparsefw"]["available"] is False
    assert res["mask"]["a"] == "Wanda" and res["layer"]["sparsity"] == 0.5  # 2:4 fixes the sparsity
    assert all(0 < g["rel_error"] < 1 for g in res["greedy"].values())
    assert "not available" in plots.sparsefw_figure(res["sparsefw"]).layout.annotations[0].text
    assert plots.residuals_figure(res).layout.annotations  # a message, not an empty axis
    assert "ADMM is not available" in explanation_md(res)
    assert lab_summary(res)["iterative"]["ADMM-Grad (gradual mask)"]["available"] is False
    crop = mask_crop(res["mask"], 100, 100, 16)  # clamped to the 24×32 matrix
    assert (crop["row"], crop["col"], crop["size"]) == (8, 16, 16) and len(crop["codes"]) == 16


def test_engine_result_holds_arrays_and_no_presentation():
    res = solve_layer(_problem(), 0.5, "unstructured", admm_iters=3, sparsefw_iters=3)
    assert "mask" not in res and "hist" not in res  # agreement codes and histograms are the UI's
    sg = res["greedy"]["sparsegpt"]
    assert sg["mask"].dtype == bool and sg["mask"].shape == (24, 32) and sg["weight"].dtype == np.float32
    assert abs(sg["mask"].mean() - 0.5) < 1e-9  # unstructured: exactly half kept
    assert np.array_equal(sg["weight"] != 0, sg["mask"] & (res["dense_weight"] != 0))
    assert not any(isinstance(v, torch.Tensor) for rec in res["greedy"].values() for v in rec.values())


def test_mask_agreement_codes_and_histograms():
    from ui.lab_view import KEPT_A_ONLY, KEPT_B_ONLY, KEPT_BOTH, PRUNED_BOTH, densest_tile, present

    res = solve_layer(_problem(), 0.5, "unstructured", admm_iters=3, sparsefw_iters=3)
    view = present(res)
    a = res["iterative"]["ADMM-Grad (gradual mask)"]["mask"]
    b = res["greedy"]["sparsegpt"]["mask"]
    codes = view["mask"]["codes"]
    assert view["mask"]["a"] == "ADMM-Grad (gradual mask)" and view["mask"]["b"] == "SparseGPT"
    assert np.array_equal(codes == KEPT_BOTH, a & b) and np.array_equal(codes == PRUNED_BOTH, ~a & ~b)
    assert np.array_equal(codes == KEPT_A_ONLY, a & ~b) and np.array_equal(codes == KEPT_B_ONLY, ~a & b)
    assert view["mask"]["n_disagree"] == int((a != b).sum())
    assert view["mask"]["labels"][KEPT_A_ONLY] == "kept only by ADMM-Grad (gradual mask)"
    h = view["hist"]
    assert len(h["edges"]) == 81 and set(h["counts"]) >= {"dense", "SparseGPT", "Wanda (mask only)"}
    assert sum(h["counts"]["dense"]) == 24 * 32  # every dense weight is counted (clipped into the range)
    diff = np.zeros((100, 100), bool)
    diff[60:70, 30:40] = True
    assert densest_tile(diff, 48) == (24, 0)  # the first half-step grid tile that holds the whole block


def test_precomputed_lab_asset_round_trip(tmp_path):
    from ui.lab_view import load_asset, present, save_asset

    view = present(solve_layer(_problem(), 0.5, "unstructured", admm_iters=3, sparsefw_iters=3))
    view["layer"].update(block=3, name="mlp.down_proj", model="tiny")
    save_asset(view, tmp_path, {"block": 3})
    back = load_asset(tmp_path)
    assert back["settings"] == {"block": 3} and back["layer"]["name"] == "mlp.down_proj"
    assert np.array_equal(back["mask"]["codes"], view["mask"]["codes"])
    assert np.allclose(back["mask"]["weight"], view["mask"]["weight"], atol=1e-2)
    assert back["greedy"]["sparsegpt"]["rel_error"] == view["greedy"]["sparsegpt"]["rel_error"]
    assert load_asset(tmp_path / "missing") is None


def test_shipped_lab_asset_is_a_real_smollm2_layer():
    """assets/lab holds one real SmolLM2 layer (scripts/make_lab_asset.py); every lab figure is drawn from it."""
    from ui import lab_tab
    from ui.lab_view import load_asset

    view = load_asset(lab_tab.ASSET_DIR)
    if view is None:
        pytest.fail("assets/lab is missing: run scripts/make_lab_asset.py")
    st = view["settings"]
    assert st["model"] == "smollm2-135m" and st["n_blocks"] == 30
    d_out, d_in = st["linears"][st["projection"]]
    assert view["mask"]["codes"].shape == (d_out, d_in) == tuple(view["layer"]["shape"])
    figs = lab_tab.figures(view)
    assert len(figs) == 6 and all(f.data for f in figs)  # six figures with data, none an empty placeholder
    g = view["greedy"]
    assert g["sparsegpt"]["rel_error"] < g["wanda"]["rel_error"] < g["magnitude"]["rel_error"]


def test_alps_beside_admm_grad_with_its_trace():
    """ALPS runs on the lab's layer at its own defaults (the ADMM iteration count does not cap it); its trace gives
    error, ρ and support changes per ADMM iteration, then the CG steps; the summary, the figure and the explanation
    show it, and without ALPS registered the lab says so instead of failing."""
    from ui import plots
    from ui.lab_view import explanation_md, lab_summary, present

    res = solve_layer(_problem(), 0.5, "unstructured", admm_iters=3, sparsefw_iters=3)
    rec = res["alps"]
    assert rec["available"] and rec["solver"] == "alps" and rec["options"] == {}
    assert int((~rec["mask"]).sum()) == 24 * 32 // 2  # exact count
    phases = [r["phase"] for r in rec["trace"]]
    n_admm = phases.count("admm")
    assert n_admm > 3 and phases == ["admm"] * n_admm + ["cg"] * (len(phases) - n_admm)  # not capped at admm_iters
    assert all(r["rho"] > 0 for r in rec["trace"][:n_admm]) and any(r["mask_changed"] > 0 for r in rec["trace"])
    assert rec["trace"][-1]["objective"] == pytest.approx(rec["rel_error"], rel=1e-4, abs=1e-9)
    view = present(res)
    s = lab_summary(view)["alps"]
    assert s["admm_iterations"] == n_admm and s["cg_steps"] == len(phases) - n_admm and s["rho_final"] > 0
    assert set(lab_summary(view)["iterative"]) == {"ADMM (fixed Wanda mask)", "ADMM-Grad (gradual mask)"}
    fig = plots.alps_figure(view)
    by_name = {t.name.split(":")[0]: t for t in fig.data}
    assert {"support changes", "ALPS error (ADMM)", "ρ (right)", "ADMM-Grad", "SparseGPT"} <= set(by_name)
    assert by_name["ρ (right)"].yaxis == "y2" and list(by_name["ρ (right)"].y) == [r["rho"] for r in rec["trace"][:n_admm]]
    assert "**ALPS** reaches" in explanation_md(view) and "ADMM-Grad's error" in explanation_md(view)

    removed = SOLVERS._specs.pop("alps")
    try:
        res = present(solve_layer(_problem(), 0.5, "unstructured", admm_iters=3, sparsefw_iters=3))
    finally:
        SOLVERS._specs["alps"] = removed
    assert res["alps"]["available"] is False and "not available" in res["alps"]["reason"]
    assert "not available" in plots.alps_figure(res).layout.annotations[0].text
    assert lab_summary(res)["alps"] == {"available": False, "reason": res["alps"]["reason"]}


def test_shipped_lab_asset_has_alps_beside_admm_grad():
    """The precomputed layer carries ALPS's run (trace with ρ and support changes) and its figure draws from it."""
    from ui import lab_tab, plots
    from ui.lab_view import lab_summary, load_asset

    view = load_asset(lab_tab.ASSET_DIR)
    alps, grad = view["alps"], view["iterative"]["ADMM-Grad (gradual mask)"]
    assert alps["available"] and 0 < alps["rel_error"] < view["greedy"]["sparsegpt"]["rel_error"]
    assert alps["rel_error"] <= grad["rel_error"] * 1.05  # at most ADMM-Grad's error on this layer (within 5 %)
    admm = [r for r in alps["trace"] if r["phase"] == "admm"]
    assert len({r["rho"] for r in admm}) > 1 and sum(r["mask_changed"] for r in admm) > 0
    assert lab_summary(view)["alps"]["admm_iterations"] == len(admm)
    assert len(plots.alps_figure(view).data) >= 5
