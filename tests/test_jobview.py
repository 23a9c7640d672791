"""ui.jobview.JobView: event sequences in, progress fractions / ETA / failure text out (a fake clock, no server)."""
from __future__ import annotations

import re

import pytest

from pruning import events as ev
from pruning.config import PruneConfig
from ui.jobview import PHASE_SPAN, JobView


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _view(**kw):
    clock = Clock()
    return JobView(PruneConfig(solver="wanda"), clock=clock, **kw), clock


def _eta(view) -> float:
    title, detail, state = view.status()
    m = re.search(r"ETA ([\d.]+) s", detail)
    assert m, detail
    return float(m.group(1))


def _prune_blocks(view, clock, n_blocks=4, per_layer=2, per_block_s=10.0, upto=None):
    view.apply(ev.PhaseStarted("prune"))
    for b in range(n_blocks if upto is None else upto):
        view.apply(ev.BlockStarted(b, n_blocks))
        for i in range(per_layer):
            view.apply(ev.LayerSolved(b, f"l{i}", 0.1, 0.1, 0.5))
        clock.t += per_block_s
        view.apply(ev.BlockDone(b, n_blocks, per_block_s))


def test_fractions_follow_the_phases_and_blocks():
    view, clock = _view()
    assert view.fraction() == 0.0 and view.status()[2] == "queued"
    view.apply(ev.PhaseStarted("load"))
    view.apply(ev.JobStarted(n_blocks=4, n_layers=8))
    assert view.fraction() == PHASE_SPAN["load"][0]
    view.apply(ev.PhaseStarted("dense-eval"))
    assert view.fraction() == PHASE_SPAN["dense-eval"][0]
    lo, hi = PHASE_SPAN["prune"]
    _prune_blocks(view, clock, upto=2)
    assert view.fraction() == pytest.approx(lo + (hi - lo) * 2 / 4)
    view.apply(ev.BlockStarted(2, 4))
    view.apply(ev.LayerSolved(2, "l0", 0.1, 0.1, 0.5))  # half of block 3
    assert view.fraction() == pytest.approx(lo + (hi - lo) * 2.5 / 4)
    assert view.status()[0] == "Pruning · block 3/4"
    view.apply(ev.JobFinished({"layers": [], "model": {"n_blocks": 4}, "timings": {"end_to_end": 50.0}}))
    assert view.fraction() == 1.0 and view.status()[:1] == ("Done",) and view.status()[2] == "done"


def test_eta_covers_the_pruned_evaluation_when_the_dense_result_is_cached():
    """Issue: 'ETA 11 s' at block 30/30 and then 40-50 s of evaluation. The ETA must include what follows pruning."""
    view, clock = _view(estimate=200.0, tail=45.0)
    view.apply(ev.JobStarted(n_blocks=4, n_layers=8))
    view.apply(ev.PhaseStarted("dense-eval"))
    view.apply(ev.Evaluated("dense", "wiki-sample", 10.0, 0.01))  # from the cache: ~0 s, says nothing about eval time
    _prune_blocks(view, clock, upto=3)  # 3 of 4 blocks, 10 s each
    assert _eta(view) == pytest.approx(10.0 + 45.0, abs=0.5)  # one block + the pruned evaluation and generations
    _prune_blocks_done = 4
    view.apply(ev.BlockStarted(3, 4))
    clock.t += 10
    view.apply(ev.BlockDone(3, _prune_blocks_done, 10.0))
    assert _eta(view) == pytest.approx(45.0, abs=0.5)  # all blocks done: the evaluation is still ahead
    view.apply(ev.PhaseStarted("pruned-eval"))
    clock.t += 20
    title, detail, _ = view.status()
    assert title == "Evaluating the pruned model" and _eta(view) == pytest.approx(25.0, abs=0.5)
    clock.t += 60  # slower than predicted: never a negative ETA
    assert _eta(view) == 0.0


def test_eta_uses_the_measured_dense_evaluation_when_it_ran():
    view, clock = _view(estimate=100.0, tail=5.0)
    view.apply(ev.Evaluated("dense", "wiki-sample", 10.0, 30.0))  # the dense evaluation took 30 s in this job
    _prune_blocks(view, clock, upto=3)
    assert _eta(view) == pytest.approx(10.0 + 30.0, abs=0.5)


def test_estimate_counts_down_before_blocks_finish():
    view, clock = _view(estimate=120.0)
    view.apply(ev.PhaseStarted("load"))
    clock.t += 20
    title, detail, _ = view.status()
    assert title == "Loading the model" and detail == "ETA 1 min 40 s (estimate)"


def test_failure_text_uses_the_kind_and_replaces_an_earlier_message():
    view, _ = _view()
    view.apply(ev.PhaseStarted("load"))
    view.apply(ev.JobFailed("Text (calib): unknown source '<pasted text>'", kind="input"))
    title, detail, state = view.status()
    assert (title, state) == ("Invalid setting", "failed") and "<pasted text>" in detail
    assert "&lt;pasted text&gt;" in view.progress()  # escaped in the bar's HTML, not swallowed as a tag
    view.apply(ev.JobFailed("Cholesky failed at damping 1e-1", kind="numerical"))
    title, detail, _ = view.status()
    assert title == "Failed: numerical problem" and detail.startswith("Cholesky")
    other, _ = _view()
    other.apply(ev.JobFailed("KeyError: 'x'"))  # no kind: internal, class name kept
    assert other.status()[0] == "Failed: internal error"


def test_cancel_says_where_it_stopped():
    view, clock = _view()
    view.apply(ev.JobStarted(n_blocks=4, n_layers=8))
    _prune_blocks(view, clock, upto=1)
    view.apply(ev.BlockStarted(1, 4))
    view.apply(ev.JobCancelled("cancelled by the user"))
    title, detail, state = view.status()
    assert state == "cancelled" and "untouched" in title and detail == "stopped at block 2/4"
    assert view.eta_seconds() is None
    assert any("cancelled at block 2/4" in line for line in view.log)
    before, _ = _view()
    before.apply(ev.JobCancelled("cancelled by the user (before it started)"))
    assert before.status()[1] == "stopped before pruning"


def test_queue_position_and_layer_rows():
    view, clock = _view()
    view.position = 2
    assert view.status() == ("Queued", "position 2 in the queue · 2 jobs ahead of yours", "queued")
    view.apply(ev.LayerSolved(0, "self_attn.q_proj", 0.0123456789, 0.25, 0.5))
    assert view.layer_rows() == [{"block": 0, "layer": "self_attn.q_proj", "rel. error": 0.012346, "sparsity": 0.5,
                                  "seconds": 0.25}]
    assert view.dirty["layers"] and len(view.log) == 1


def test_running_perplexity_and_streamed_generations_are_shown_until_the_report():
    view, clock = _view()
    view.apply(ev.Evaluated("dense", "wiki-sample", 20.0, 0.0))
    view.apply(ev.GenerationProgress("dense", 0, "Hi", "there friend", True))
    view.apply(ev.PhaseStarted("pruned-eval", "4 windows"))
    assert view.pruned_ppl_shown() == (None, "")
    view.dirty = {k: False for k in view.dirty}
    view.apply(ev.EvalProgress("pruned", 1, 4, 31.5))
    assert view.dirty["metrics"] and view.pruned_ppl_shown() == (31.5, "after 1/4 windows")
    view.apply(ev.EvalProgress("pruned", 4, 4, 30.25))
    view.apply(ev.Evaluated("pruned", "wiki-sample", 30.25, 1.0))
    assert view.pruned_ppl_shown() == (30.25, "")  # the final value, no longer settling
    view.dirty = {k: False for k in view.dirty}
    view.apply(ev.GenerationProgress("pruned", 0, "Hi", "the", False))
    assert view.dirty["gens"]
    assert view.generations() == [{"prompt": "Hi", "dense": "there friend", "pruned": "the"}]
    view.apply(ev.GenerationProgress("pruned", 1, "Yo", "a", False))  # a second prompt starts its row
    assert view.generations()[1] == {"prompt": "Yo", "dense": "", "pruned": "a"}
    report = {"generations": [{"prompt": "Hi", "dense": "there friend", "pruned": "the end"}], "layers": []}
    view.apply(ev.JobFinished(report))
    assert view.generations() == report["generations"]  # the report is what stays
