"""Cold start: the server prepares in the background while the page is served (ui.base.Readiness, ui.warm_up)."""
from __future__ import annotations

import re


from ui.base import Readiness


class Clock:
    def __init__(self):
        self.t = 10.0

    def __call__(self):
        return self.t


def test_readiness_says_the_step_and_opens_when_done():
    clock = Clock()
    r = Readiness(clock)
    assert r.ready and r.banner_html() == "" and r.wait(0)  # never warmed up: ready from the start
    r.begin()
    r.note("converting the embedded model")
    clock.t += 42
    assert not r.ready and not r.wait(0)
    html = r.banner_html()
    assert "converting the embedded model" in html and "42 s so far" in html and "Run is enabled" in html
    r.done()
    assert r.ready and r.wait(0) and r.banner_html() == "" and r.elapsed() == 42
    assert r.steps == [(0.0, "converting the embedded model")]
    r.begin()
    r.done(failed="OSError: disk full")
    assert r.ready and "disk full" in r.banner_html()  # the page opens; jobs report their own problem


def test_background_warm_up_marks_the_page_ready(monkeypatch):
    import ui
    from ui import base, engine

    r = Readiness()
    monkeypatch.setattr(base, "READY", r)
    calls = []
    monkeypatch.setattr(engine, "warm_up", lambda models, log=print: calls.append(("warm", models)) or log("Pruning Lab: m ready"))
    monkeypatch.setattr(engine, "prepare_text", lambda model: calls.append(("text", model)))
    monkeypatch.setattr(engine, "measure_again", lambda: calls.append(("measure",)))
    t = ui.warm_up(models=("m",), background=True)
    t.join(timeout=60)
    assert not t.is_alive() and r.ready and r.state == "ready"
    assert calls == [("warm", ("m",)), ("text", "m"), ("measure",)]  # measured again once the worker is idle
    assert [s for _, s in r.steps] == ["measuring this machine for the time estimate", "m ready",
                                       "converting and tokenising the default text", "measuring this machine again, now idle"]


def test_run_is_disabled_while_preparing(monkeypatch):
    from ui import base, prune

    r = Readiness()
    monkeypatch.setattr(base, "READY", r)
    monkeypatch.setattr(prune, "READY", r)
    r.begin("loading")
    banner, button, timer = prune.PruneTab.readiness()
    assert "loading" in banner and button["interactive"] is False and timer.active is True
    r.done()
    banner, button, timer = prune.PruneTab.readiness()
    assert banner == "" and button["interactive"] is True and timer.active is False


def test_the_estimate_is_refreshed_when_the_preparation_ends(monkeypatch):
    """A page opened while the server prepares shows "first use: converting ..." in its estimate; the preparation
    timer's last tick computes the estimate again, earlier ticks leave it alone."""
    from ui import base, prune

    r = Readiness()
    monkeypatch.setattr(base, "READY", r)
    monkeypatch.setattr(prune, "READY", r)
    calls = []
    tab = prune.PruneTab.__new__(prune.PruneTab)  # only the handler is exercised
    tab.preview = lambda *values: calls.append(values) or ({"solver": "sparsegpt"}, "Estimated time: 30 s")
    r.begin("converting the embedded model")
    assert tab.preview_when_ready("form", "values") == (prune.gr.skip(), prune.gr.skip()) and not calls
    r.done()
    assert tab.preview_when_ready("form", "values") == ({"solver": "sparsegpt"}, "Estimated time: 30 s")
    assert calls == [("form", "values")]


def test_a_prune_call_waits_for_the_preparation(monkeypatch):
    """/prune during the preparation: the bar says so (no job is submitted) until READY opens."""
    from ui import base, prune

    r = Readiness()
    monkeypatch.setattr(base, "READY", r)
    monkeypatch.setattr(prune, "READY", r)
    r.begin("converting the embedded model")
    submitted = []

    class Runner:
        def submit(self, cfg, owner=None):
            submitted.append(cfg)
            raise RuntimeError("stop here")

    tab = prune.PruneTab()
    tab.app = type("A", (), {"runner": Runner()})()
    waits = iter(range(3))

    def wait(timeout):  # two waiting rounds, then ready
        if next(waits, 2) >= 2:
            r.done()
            return True
        return False

    monkeypatch.setattr(r, "wait", wait)
    gen = tab.prune({"solver": "magnitude", "device": "cpu"})
    first = next(gen)
    assert "Waiting for the server to finish preparing" in first[0] and "converting the embedded model" in first[0]
    assert not submitted
    outs = []
    try:
        for o in gen:
            outs.append(o)
    except RuntimeError:
        pass
    assert submitted and re.search("Waiting", outs[0][0])  # the second round, then the job was submitted
