"""Export a finished run for download (the Prune and Compare tabs' Export buttons).

The export's re-run goes through the app's job runner (an ``export`` task in the worker process, queued behind the
device's other jobs), never on the request thread. The folder is written on the server under ``<cache>/exports/<run id>`` (``pruning.settings.cache_dir()``, or
``App.exports_dir``) by ``pruning.export.export_run``: the result store keeps reports only, so the pruned weights are
rebuilt by re-running the stored config, checked bit for bit against the stored per-layer errors. A folder already
exported for that run id is reused. The .zip for the browser goes to the system temp folder (Gradio serves files
from there only).
"""
from __future__ import annotations

import tempfile
import threading
from pathlib import Path

_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()
EXPORT_FILES = ("README.md", "model.safetensors", "config.json")


def exports_root(app) -> Path:
    from pruning.settings import cache_dir

    root = getattr(app, "exports_dir", None)
    return Path(root) if root else Path(cache_dir()) / "exports"


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in EXPORT_FILES)


def _lock(run_id: str) -> threading.Lock:
    with _GUARD:
        return _LOCKS.setdefault(run_id, threading.Lock())


def export_zip(app, run_id: str, extra_runs: list[dict] | None = None, cancel: threading.Event | None = None,
               on_event=None, owner: str | None = None) -> tuple[Path, Path]:
    """(exported folder, .zip for download) of run ``run_id`` (or a unique prefix). Raises the engine's
    ExportError / ReproductionError (clean messages) when the run is unknown or cannot be rebuilt here. With a job
    runner (the app) the re-run is an ``export`` task on the device's queue (the worker process, one job per device;
    ``owner``: the session, so its Cancel reaches it); without one (tests, scripts) it runs here."""
    from pruning import export_run, find_run, zip_folder
    from pruning.results import run_id_of

    runs = (list(app.store.list_runs()) if app.store is not None else []) + list(extra_runs or [])
    report = find_run(run_id, runs)  # ExportError if unknown
    rid = run_id_of(report)  # the full id (a prefix may have been given)
    folder = exports_root(app) / rid
    runner = getattr(app, "runner", None)
    with _lock(rid):  # two clicks on the same run: the second reuses the first's folder
        if not _complete(folder) and runner is not None:
            # the re-run is a job like any other: on the device's queue, in the worker process, never on this thread
            device = (report.get("config") or {}).get("device", "auto")
            runner.call("export", {"report": report, "out_dir": str(folder), "overwrite": True, "device": device},
                        owner=owner, on_event=on_event)
        elif not _complete(folder):
            export_run(rid, folder, store=app.store, overwrite=True, on_event=on_event, cancel=cancel,
                       extra_runs=extra_runs)
        zdir = Path(tempfile.gettempdir()) / "pruning-lab-exports"
        zdir.mkdir(parents=True, exist_ok=True)
        zpath = zdir / f"pruned-{rid}.zip"
        if not zpath.is_file() or zpath.stat().st_mtime < (folder / "README.md").stat().st_mtime:
            zip_folder(folder, zpath)
    return folder, zpath
