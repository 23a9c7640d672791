"""What every tab gets: the ``App`` (runner, result store, precomputed runs, the other tabs) and the ``Tab`` base.

A tab is one module with one ``Tab`` subclass: ``build(app)`` lays out its components (inside its ``gr.Tab``),
``wire(app)`` attaches their listeners, after every tab is built. Tabs talk through two hooks only:
``app.after_runs(dependency)`` (chain "the list of finished runs changed" listeners, e.g. Compare's refresh) and
``app.tabs[id]`` for anything else. A new tab is a new module plus one line in ``ui.TABS``.
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gradio as gr


class Readiness:
    """Whether the server has finished what it prepares once at start (the embedded model converted and loaded, the
    text converted and tokenised; ``ui.warm_up(background=True)``), and what it is doing meanwhile.

    Until ``ready``, the Prune tab shows the step and its elapsed time to whoever opens the page, keeps Run
    disabled, and a /prune call waits (showing the same) instead of starting. A server that never warms up (tests,
    ``build_app`` alone) is ready from the start."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self.state, self.step, self.steps = "ready", "", []
        self.started = self.finished = None
        self._event = threading.Event()
        self._event.set()

    @property
    def ready(self) -> bool:
        return self.state != "preparing"

    def begin(self, step: str = "starting") -> None:
        with self._lock:
            self.state, self.step, self.steps = "preparing", step, []
            self.started, self.finished = self.clock(), None
            self._event.clear()

    def note(self, step: str) -> None:
        """A new step of the preparation (the text shown on the page)."""
        with self._lock:
            self.step = step
            self.steps.append((round(self.clock() - (self.started or self.clock()), 2), step))

    def done(self, failed: str = "") -> None:
        """Preparation over; ``failed`` (a message) still opens the page: each job then reports its own problem."""
        with self._lock:
            self.state = "failed" if failed else "ready"
            if failed:
                self.step = failed
            self.finished = self.clock()
            self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def elapsed(self) -> float:
        start = self.started if self.started is not None else self.clock()
        return (self.finished if self.finished is not None else self.clock()) - start

    def banner_html(self) -> str:
        """What the page shows: the current step while preparing, nothing once ready."""
        if self.state == "preparing":
            return ('<div class="pl-preparing" style="padding:10px 12px;border:1px solid #ffd8a8;background:#fff4e6;'
                    'border-radius:6px;margin-bottom:8px"><b>Preparing the server (once, at start)</b> · '
                    f'{html.escape(self.step)} · {self.elapsed():.0f} s so far. Run is enabled when this is done.</div>')
        if self.state == "failed":
            return (f'<div style="padding:8px 12px;color:#c92a2a">Server preparation failed: {html.escape(self.step)}. '
                    'Jobs will report the problem.</div>')
        return ""


READY = Readiness()


@dataclass
class App:
    demo: gr.Blocks
    runner: object  # pruning.jobs.JobRunner
    store: object  # pruning.results.ResultStore | None
    precomputed_dir: Path | None
    tabs: dict = field(default_factory=dict)  # id -> Tab
    tab_items: dict = field(default_factory=dict)  # id -> its gr.Tab (for .select listeners)
    runs_listeners: list[Callable] = field(default_factory=list)  # dependency -> dependency
    exports_dir: Path | None = None  # where Export writes folders; None = <cache>/exports (ui.exporting)

    def after_runs(self, dep):
        """Chain every "finished runs changed" listener after ``dep`` (an event dependency)."""
        for chain in self.runs_listeners:
            dep = chain(dep)
        return dep


class Tab:
    """One tab of the page. Subclasses set ``id`` and ``title`` and implement ``build`` and ``wire``."""

    id: str = ""
    title: str = ""

    def build(self, app: App) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def wire(self, app: App) -> None:
        """Listeners; called inside ``app.demo`` after every tab is built."""
