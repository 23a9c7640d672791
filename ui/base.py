"""What every tab gets: the ``App`` (runner, result store, precomputed runs, the other tabs) and the ``Tab`` base.

A tab is one module with one ``Tab`` subclass: ``build(app)`` lays out its components (inside its ``gr.Tab``),
``wire(app)`` attaches their listeners, after every tab is built. Tabs talk through two hooks only:
``app.after_runs(dependency)`` (chain "the list of finished runs changed" listeners, e.g. Compare's refresh) and
``app.tabs[id]`` for anything else. A new tab is a new module plus one line in ``ui.TABS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gradio as gr


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
