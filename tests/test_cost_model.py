"""The run-time estimate shown before a run: a cost model on this machine's measured rates, corrected by the
runs that finished (pruning/cost_model.py)."""
import pytest
import torch

from pruning import cost_model
from pruning.config import CalibConfig, EvalConfig, PruneConfig


@pytest.fixture(autouse=True)
def fresh():
    cost_model.reset_corrections()
    yield
    cost_model.reset_corrections()


def test_rates_are_measured_once_and_positive():
    r = cost_model.machine_rates("cpu")
    assert cost_model.machine_rates("cpu") is r
    assert min(r.mm, r.mm_fwd, r.mm64, r.select, r.ew) > 0 and 0 < r.op < 0.01


def test_rates_measured_under_load_do_not_stick(monkeypatch):
    """A first measurement on a busy machine (e.g. while the app loads the model) is replaced by better ones later."""
    key = ("estimate", "cpu", str(torch.float64))  # a key no other test uses
    cost_model._RATES.pop(key, None)
    slow = cost_model.Rates(mm=1e9, mm_fwd=1e9, mm64=5e8, select=1e7, op=1e-4, ew=1e8)
    fast = cost_model.Rates(mm=8e10, mm_fwd=8e10, mm64=4e10, select=5e8, op=5e-6, ew=4e9)
    calls = []
    monkeypatch.setattr(cost_model, "_measure", lambda dev, dt: calls.append(1) or (slow if len(calls) == 1 else fast))
    assert cost_model.machine_rates("cpu", torch.float64) == slow
    assert cost_model.machine_rates("cpu", torch.float64) == slow and len(calls) == 1  # not again right away
    monkeypatch.setattr(cost_model, "_REMEASURE_S", 0.0)
    assert cost_model.machine_rates("cpu", torch.float64) == fast and len(calls) == 2  # later: measured again, best kept
    monkeypatch.setattr(cost_model, "_measure", lambda dev, dt: calls.append(1) or slow)
    assert cost_model.machine_rates("cpu", torch.float64) == fast  # a worse reading never replaces a better one
    for _ in range(10):
        cost_model.machine_rates("cpu", torch.float64)
    assert len(calls) == cost_model._MAX_MEASURES  # and it stops measuring after a few
    cost_model._RATES.pop(key, None)


def test_rates_stay_fixed_once_a_run_corrected_the_estimate(monkeypatch):
    """observe() stores measured / modelled ratios: rates changing afterwards would silently rescale them."""
    cfg = PruneConfig(solver="magnitude")
    cost_model.observe(cfg, {"calibration_forward": 10.0, "propagate": 10.0, "statistics": 5.0, "solve": 2.0,
                           "pruned_eval": 10.0, "generate": 3.0})
    before = cost_model.estimate_seconds(cfg)
    monkeypatch.setattr(cost_model, "_REMEASURE_S", 0.0)
    monkeypatch.setattr(cost_model, "_measure", lambda dev, dt: pytest.fail("rates measured again after a run was observed"))
    assert cost_model.estimate_seconds(cfg) == before


def test_estimate_follows_the_config():
    base = cost_model.estimate_seconds(PruneConfig(solver="sparsegpt"))
    assert base > 1
    assert cost_model.estimate_seconds(PruneConfig(solver="sparsegpt", calib=CalibConfig(nsamples=64))) > base
    assert cost_model.estimate_seconds(PruneConfig(solver="sparsegpt", eval=EvalConfig(windows=64))) > base
    mag = cost_model.phase_seconds(PruneConfig(solver="magnitude"))["solve"]
    gpt = cost_model.phase_seconds(PruneConfig(solver="sparsegpt"))["solve"]
    admm20 = cost_model.phase_seconds(PruneConfig(solver="admm"))["solve"]
    admm60 = cost_model.phase_seconds(PruneConfig(solver="admm", options={"iters": 60}))["solve"]
    assert mag < gpt < admm20 < admm60
    comp = cost_model.phase_seconds(PruneConfig(solver="wanda", update="admm"))["solve"]
    assert comp > cost_model.phase_seconds(PruneConfig(solver="wanda"))["solve"]


def test_estimate_uses_the_model_shape():
    small = dict(n_blocks=2, hidden=64, vocab=256, linears=((64, 64),) * 4 + ((128, 64), (128, 64), (64, 128)), gram_widths=(64, 64, 64, 128))
    cfg = PruneConfig(solver="sparsegpt")
    assert cost_model.estimate_seconds(cfg, small) < cost_model.estimate_seconds(cfg) / 10


def test_observed_runs_correct_later_estimates():
    cfg = PruneConfig(solver="wanda")
    model = cost_model.phase_seconds(cfg)
    measured = {"calibration_forward": model["forward"] * 3, "propagate": 0.0, "statistics": model["statistics"] * 3,
                "solve": model["solve"] * 3, "pruned_eval": model["pruned_eval"] * 3, "generate": model["generate"] * 3}
    before = cost_model.estimate_seconds(cfg)
    cost_model.observe(cfg, measured)
    after = cost_model.estimate_seconds(cfg)
    assert after == pytest.approx(3 * (before - 1) + 1, rel=1e-6)
    # the solve correction is per solver; another solver keeps its own (only the shared phases moved)
    other = PruneConfig(solver="admm")
    phases = cost_model.phase_seconds(other)
    expect = 3 * (sum(phases.values()) - phases["solve"]) + phases["solve"] + 1
    assert cost_model.estimate_seconds(other) == pytest.approx(expect, rel=1e-6)


def test_model_shape_of_a_loaded_model(tiny_llama):
    model, _ = tiny_llama
    s = cost_model.model_shape(model)
    assert s["n_blocks"] == 2 and len(s["linears"]) == 7 and s["vocab"] == model.get_input_embeddings().weight.shape[0]
    assert all(isinstance(x, int) for x in s["gram_widths"])


def test_estimate_does_not_wait_for_a_model_load():
    """The page asks for an estimate on first visit while another event loads (first time: converts) the model under
    api._LOCK; the estimate must come back at once, not after the load."""
    import threading

    from pruning import api

    cost_model.machine_rates("cpu")  # measured once per process; not what this test times
    result = []
    with api._LOCK:  # what get_model holds during a load
        t = threading.Thread(target=lambda: result.append(api.estimate_seconds(PruneConfig(device="cpu"))), daemon=True)
        t.start()
        t.join(timeout=20)
        assert result and result[0] > 0, "estimate_seconds blocked on the model-loading lock"
