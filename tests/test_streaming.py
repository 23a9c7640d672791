"""Streaming: the running perplexity after every window, generations token by token (evaluate, run_job, JobView).

Tiny random models, CPU, seconds in total."""
from __future__ import annotations

import math
import pickle

import pytest
import torch

from pruning import events as ev
from pruning.evaluate import generate, perplexity, stream_batch_size, window_losses
from pruning.models import tiny_model

from _tiny import small  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model("llama", seed=0)
    return model.eval(), tok


def test_running_perplexity_settles_on_the_result(tiny):
    model, _ = tiny
    windows = torch.randint(0, 200, (5, 32), generator=torch.Generator().manual_seed(0))
    seen = []
    ppl = perplexity(model, windows, batch_size=2, on_progress=lambda d, t, p: seen.append((d, t, p)))
    assert [d for d, _, _ in seen] == [2, 4, 5] and {t for _, t, _ in seen} == {5}
    losses = window_losses(model, windows, batch_size=2)
    for d, _, p in seen:  # each value is exp(mean loss of the windows done so far)
        assert p == pytest.approx(math.exp(sum(losses[:d]) / d), rel=1e-12)
    assert seen[-1][2] == ppl  # the last one is the result, exactly
    assert perplexity(model, windows, batch_size=2) == ppl  # streaming changes nothing


def test_one_window_per_batch_on_cpu_gives_the_same_losses(tiny):
    model, _ = tiny
    assert stream_batch_size(model) == 1
    windows = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(1))
    a, b = window_losses(model, windows, batch_size=4), window_losses(model, windows, batch_size=1)
    assert b == pytest.approx(a, rel=1e-5)
    seen = []
    perplexity(model, windows, batch_size=1, on_progress=lambda d, t, p: seen.append(d))
    assert seen == [1, 2, 3, 4]  # a new value after every window


def test_generation_streams_token_by_token_to_the_same_text(tiny):
    model, tok = tiny
    prompts = ["The capital of France is", "Once upon a time"]
    plain = generate(model, tok, prompts, max_new_tokens=5)
    calls = []
    streamed = generate(model, tok, prompts, max_new_tokens=5, on_text=lambda i, t, done: calls.append((i, t, done)))
    assert streamed == plain
    for i, text in enumerate(plain):
        mine = [(t, done) for j, t, done in calls if j == i]
        assert mine[-1] == (text, True) and not any(done for _, done in mine[:-1])
        assert 2 <= len(mine) <= 6  # one call per new token (a generation may stop early at EOS), then the end
        assert all(text.startswith(t.rstrip("\ufffd")) or t == "" for t, _ in mine)  # the text only grows


def test_generation_without_tokens_reports_an_empty_text(tiny):
    model, tok = tiny
    calls = []
    assert generate(model, tok, ["Hi"], max_new_tokens=0, on_text=lambda i, t, d: calls.append((i, t, d))) == [""]
    assert calls == [(0, "", True)]


def test_streaming_events_are_plain_picklable_data():
    for e in (ev.EvalProgress("pruned", 3, 8, 41.5), ev.GenerationProgress("dense", 1, "Hi", "there", True)):
        assert pickle.loads(pickle.dumps(e)) == e
        assert ev.from_dict(e.to_dict()) == e


def test_run_job_streams_the_pruned_evaluation_and_both_generations(tiny_dir):
    from pruning.api import run_job

    events = []
    r = run_job(small(tiny_dir, solver="wanda", sparsity=0.4, max_new_tokens=3), on_event=events.append)
    prog = [e for e in events if isinstance(e, ev.EvalProgress) and e.which == "pruned"]
    assert [e.done for e in prog] == [1, 2, 3] and {e.total for e in prog} == {3}  # CPU: after every window
    assert prog[-1].ppl == r["perplexity"]["pruned"]
    names = [type(e).__name__ for e in events]
    last_prog = max(i for i, e in enumerate(events) if isinstance(e, ev.EvalProgress) and e.which == "pruned")
    assert last_prog < max(i for i, n in enumerate(names) if n == "Evaluated")  # before the final value
    gens = [e for e in events if isinstance(e, ev.GenerationProgress)]
    for i, g in enumerate(r["generations"]):
        for which in ("dense", "pruned"):
            final = [e for e in gens if e.index == i and e.which == which and e.done]
            assert final and final[-1].text == g[which] and final[-1].prompt == g["prompt"]
    first_pruned = next(i for i, e in enumerate(events) if isinstance(e, ev.GenerationProgress) and e.which == "pruned")
    dense_done = [i for i, e in enumerate(events) if isinstance(e, ev.GenerationProgress) and e.which == "dense" and e.done]
    assert max(dense_done) < first_pruned  # the dense side is on the page before the pruned side grows beside it
