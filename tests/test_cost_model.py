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


SLOW = cost_model.Rates(mm=1e9, mm_fwd=1e9, mm64=5e8, select=1e7, op=1e-4, ew=1e8, topk=1e7, sort64=1e6)
FAST = cost_model.Rates(mm=8e10, mm_fwd=8e10, mm64=4e10, select=5e8, op=5e-6, ew=4e9, topk=5e8, sort64=5e7)


def test_rates_are_measured_once_and_positive():
    r = cost_model.machine_rates("cpu")
    assert cost_model.machine_rates("cpu") is r
    assert min(r.mm, r.mm_fwd, r.mm64, r.select, r.ew, r.topk, r.sort64) > 0 and r.op > 0


def test_rates_measured_under_load_do_not_stick():
    """A first measurement on a busy machine (e.g. while the app loads the model) is replaced by better ones later."""
    calls = []
    cm = cost_model.CostModel(measure=lambda dev, dt: calls.append(1) or (SLOW if len(calls) == 1 else FAST))
    assert cm.machine_rates("cpu", torch.float64) == SLOW
    assert cm.machine_rates("cpu", torch.float64) == SLOW and len(calls) == 1  # not again right away
    cm.remeasure_s = 0.0
    assert cm.machine_rates("cpu", torch.float64) == FAST and len(calls) == 2  # later: measured again, best kept
    cm.measure = lambda dev, dt: calls.append(1) or SLOW
    assert cm.machine_rates("cpu", torch.float64) == FAST  # a worse reading never replaces a better one
    for _ in range(10):
        cm.machine_rates("cpu", torch.float64)
    assert len(calls) == cm.max_measures  # and it stops measuring after a few


def test_measuring_again_at_the_end_of_the_preparation_keeps_the_best():
    """The server measures at start (maybe while its worker process imports torch) and again when its preparation
    is over (``again=True``: whatever the time since); the better reading wins, a run's correction freezes both."""
    readings = [SLOW, FAST]
    cm = cost_model.CostModel(measure=lambda dev, dt: readings.pop(0))
    assert cm.machine_rates("cpu") == SLOW
    assert cm.machine_rates("cpu", again=True) == FAST and not readings  # at once, not after remeasure_s
    cm.observe(PruneConfig(solver="magnitude"), {"solve": 1.0})
    cm.measure = lambda dev, dt: pytest.fail("rates measured again after a run was observed")
    assert cm.machine_rates("cpu", again=True) == FAST


def test_a_solvers_first_run_borrows_the_other_solvers_solve_correction():
    """A solver never run here takes the geometric mean of the solve corrections of those that were (the machine's
    share of the error); its own correction replaces that after its first run; other phases are unaffected."""
    cm = cost_model.CostModel(measure=lambda dev, dt: FAST)
    admm, sgpt, mag = (PruneConfig(solver=s) for s in ("admm", "sparsegpt", "magnitude"))
    plain = cm.phase_seconds(admm)["solve"]
    before = cm.estimate_seconds(admm)
    for cfg, ratio in ((sgpt, 1.5), (mag, 1.2)):
        cm.observe(cfg, {"solve": ratio * cm.phase_seconds(cfg)["solve"]})
    assert cm._correction("solve", admm) == pytest.approx((1.5 * 1.2) ** 0.5)
    assert cm.estimate_seconds(admm) == pytest.approx(before + plain * ((1.5 * 1.2) ** 0.5 - 1))
    cm.observe(admm, {"solve": 0.7 * plain})
    assert cm._correction("solve", admm) == pytest.approx(0.7)
    assert cm._correction("forward", admm) == 1.0  # no forward time was observed


def test_rates_stay_fixed_once_a_run_corrected_the_estimate():
    """observe() stores measured / modelled ratios: rates changing afterwards would silently rescale them."""
    cm = cost_model.CostModel(measure=lambda dev, dt: FAST)
    cfg = PruneConfig(solver="magnitude")
    cm.observe(cfg, {"calibration_forward": 10.0, "propagate": 10.0, "statistics": 5.0, "solve": 2.0,
                     "pruned_eval": 10.0, "generate": 3.0})
    before = cm.estimate_seconds(cfg)
    cm.remeasure_s = 0.0
    cm.measure = lambda dev, dt: pytest.fail("rates measured again after a run was observed")
    assert cm.estimate_seconds(cfg) == before


def test_a_solver_without_a_cost_entry_gives_no_estimate():
    """A newly registered solver that declares no ``cost`` is "no estimate" (None), never costed as magnitude."""
    from pruning.solvers import SOLVERS, SolverOutput

    def toy(problem, pattern, sparsity, opts, ctx):  # pragma: no cover - never run
        return SolverOutput(problem.W, problem.W != 0)

    SOLVERS.register("toy-nocost", kind="mask", needs_gram=False, summary="no cost entry")(toy)
    try:
        cm = cost_model.CostModel(measure=lambda dev, dt: FAST)
        cfg = PruneConfig(solver="toy-nocost")
        assert cm.phase_seconds(cfg)["solve"] is None
        assert cm.estimate_seconds(cfg) is None
        assert cost_model.layer_estimate_seconds("toy-nocost", 64, 64) is None
        cm.observe(cfg, {"solve": 1.0, "pruned_eval": 2.0})  # learning from such a run still works for the other phases
        assert "solve:toy-nocost+none" not in cm.corrections and "pruned_eval" in cm.corrections
        assert cm.estimate_seconds(PruneConfig(solver="magnitude")) > 0  # the registered ones keep theirs
    finally:
        SOLVERS._specs.pop("toy-nocost")


def test_every_registered_solver_and_update_declares_its_cost():
    from pruning.solvers import SOLVERS, UPDATES

    for spec in list(SOLVERS) + list(UPDATES):
        assert spec.cost is not None, spec.name
        counts = spec.cost(576, 1536, spec.defaults(), sparsity=0.5, device="cpu")
        assert all(k in cost_model.PRIMITIVES or k == "ffn_factor" for k in counts), (spec.name, counts)


def test_counts_follow_the_resolved_options():
    """The blocksize, ADMM's iterations and the gradual selections come from the options, not restated defaults."""
    cm = cost_model.CostModel(measure=lambda dev, dt: FAST)
    solve = lambda **kw: cm.phase_seconds(PruneConfig(**kw))["solve"]  # noqa: E731
    assert solve(solver="sparsegpt", options={"blocksize": 256}) > solve(solver="sparsegpt")
    assert solve(solver="admm", options={"iters": 40, "gradual_iters": 15}) > solve(solver="admm")
    assert solve(solver="admm", options={"gradual_iters": 0}) < solve(solver="admm")


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
    # the solve correction is per solver; a solver not run yet borrows the mean of the others' (here wanda's only)
    other = PruneConfig(solver="admm")
    phases = cost_model.phase_seconds(other)
    expect = 3 * sum(phases.values()) + 1
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
