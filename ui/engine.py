"""The UI's one door to the engine's heavy parts, imported lazily (``import ui`` loads no model and no
transformers): model shapes for the pickers and the cheap checks, time estimates, text-source checks.

``model_info`` results (and load errors) are remembered per model id, so the Prune tab can check a pattern
against the model's widths, or look up its stored result, on every form change without loading anything.

The app binds its job runner here (``bind``). With a runner that uses worker processes, nothing here loads a model:
``model_info`` is a task of the runner's queue (it runs in the worker, one at a time with the jobs), and
``known_info`` also answers from what the runner's tasks reported.
"""
from __future__ import annotations

import threading
import time

from pruning.config import DEFAULT_MODEL
from pruning.errors import user_message

from .forms import calib_sources

_INFO: dict[str, dict] = {}  # model id -> model_info(), for models loaded in this process
_ERRORS: dict[str, str] = {}  # model id -> why it cannot be loaded
_LOCK = threading.Lock()
_RUNNER: list = [None]  # the app's pruning.jobs.JobRunner (bind)


def bind(runner) -> None:
    """Route model loading through ``runner`` (the app's JobRunner); None: load in this process (library use)."""
    _RUNNER[0] = runner


def _out_of_process():
    r = _RUNNER[0]
    return r if r is not None and not getattr(r, "in_process", True) and not getattr(r, "_closed", False) else None


def known_info(model: str) -> dict | None:
    """model_info of a model already loaded (here, or in the runner's worker), else None (never loads)."""
    key = (model or DEFAULT_MODEL).strip()
    hit = _INFO.get(key)
    if hit is None and _RUNNER[0] is not None and hasattr(_RUNNER[0], "known_info"):
        hit = _RUNNER[0].known_info(key)
    return hit


def known_error(model: str) -> str | None:
    return _ERRORS.get((model or DEFAULT_MODEL).strip())


def model_info(model: str, timeout: float | None = None) -> dict:
    """Blocks and linears of a model. With a bound out-of-process runner: a task on its queue (the worker loads the
    model; waits at most ``timeout`` s, then TimeoutError); else loaded here, once per process. Raises the engine's
    error (ModelError...)."""
    key = (model or DEFAULT_MODEL).strip()
    runner = _out_of_process()
    if runner is not None:
        from pruning.errors import PruningError
        from pruning.jobs import RunnerClosed

        def _model_info(k):
            try:
                return runner.model_info(k, timeout=timeout)
            except (RunnerClosed, TimeoutError) as e:
                raise OSError(str(e)) from None
            except PruningError as e:  # a bad model id is an InputError (a ValueError); anything else: cannot load
                if isinstance(e, ValueError):
                    raise
                raise OSError(getattr(e, "message", None) or str(e)) from None
    else:
        from pruning.api import model_info as _model_info
    try:
        info = _model_info(key)
    except (ValueError, OSError) as e:
        with _LOCK:
            _ERRORS[key] = user_message(e)
        raise
    with _LOCK:
        _INFO[key] = info
        _ERRORS.pop(key, None)
    return info


def first_use_note(model: str) -> str:
    """What loading ``model`` the first time will involve, or '' when it is loaded already."""
    key = (model or DEFAULT_MODEL).strip()
    if known_info(key) is not None:
        return ""
    from pruning.api import embedded_model_ready
    from pruning.assets import EMBEDDED_ALIASES

    if key.lower() in EMBEDDED_ALIASES and not embedded_model_ready():
        return "first use: converting the embedded model to a cached copy, once (about 20 s on 2 cores)"
    return "first use of this model in this server: loading it first"


def check_text_source(source: str) -> str | None:
    """None if ``source`` is a named source, pasted text or a readable text file; else the engine's message."""
    src = (source or "").strip()
    if src.lower() in calib_sources():
        return None
    from pruning.api import check_text_source as check

    try:
        check(src, "calib")
    except (ValueError, OSError) as e:
        return user_message(e)
    return None


def check_pattern(pattern: str, info: dict) -> str | None:
    """An N:M pattern must divide every input width of the model: the engine's message, with the widths."""
    from pruning.patterns import parse_pattern

    try:
        pat = parse_pattern(pattern)
    except ValueError as e:
        return user_message(e)
    if not pat.is_nm:
        return None
    widths = sorted({int(shape[1]) for shape in info.get("linears", {}).values()})
    for w in widths:
        try:
            pat.check_shape(w)
        except ValueError as e:
            return f"{user_message(e)} (this model's input widths: {', '.join(map(str, widths))})"
    return None


def device_label(cfg) -> tuple[str, str]:
    """(device type for the estimate, how the page names it); raises the engine's ValueError for a bad device."""
    from pruning.api import resolve_device

    dev = str(resolve_device(cfg.device))
    return dev.split(":")[0], ("CPU" if dev == "cpu" else dev)


def estimate(cfg, device: str | None = None) -> float | None:
    """Predicted seconds, or None when the solver declares no cost entry (the page then says "no estimate")."""
    from pruning.api import estimate_seconds

    info = known_info(cfg.model) or {}  # a model loaded in the runner's worker: its shapes, not SmolLM2's
    secs = estimate_seconds(cfg, device=device, shape=info.get("shape"))
    return None if secs is None else float(secs)


def tail_estimate(cfg, total: float | None) -> float | None:
    """Predicted seconds of the pruned evaluation + the generations: the cost model's share of those phases
    applied to the whole job's estimate."""
    if not total:
        return None
    try:
        from pruning.api import estimate_phases

        phases = estimate_phases(cfg)
        share = (phases.get("pruned_eval", 0.0) + phases.get("generate", 0.0)) / max(1e-9, sum(phases.values()))
    except Exception:  # noqa: BLE001 -- the ETA then covers the pruning only
        return None
    return float(total) * share


def warm_up(models=(DEFAULT_MODEL,), log=print) -> None:
    """At server start: measure the machine for the estimate (~0.4 s), then load ``models`` (the embedded model's
    one-time conversion happens here, with a line on the console, not in a visitor's first job). With a bound
    out-of-process runner the models load in its worker process (started here)."""
    from pruning.api import measure_machine

    measure_machine()
    for m in models:
        note = first_use_note(m)
        t0 = time.perf_counter()
        if note:
            log(f"Pruning Lab: {m}: {note}…", flush=True)
        try:
            model_info(m)
        except (ValueError, OSError) as e:
            log(f"Pruning Lab: {m} could not be loaded: {e}", flush=True)
            continue
        if note:
            log(f"Pruning Lab: {m} ready in {time.perf_counter() - t0:.1f} s", flush=True)


def measure_again() -> None:
    """At the end of the server's preparation: measure the machine once more, keeping each rate's best. The first
    measurement (``warm_up``) may have shared the CPU with the worker process importing torch and loading the
    model, which made the estimate of a solver's first run up to 2× too long (the runs correct only the solvers
    they ran)."""
    from pruning.api import measure_machine

    measure_machine(again=True)


def prepare_text(model: str = DEFAULT_MODEL) -> None:
    """Convert the default text (the embedded Wikipedia sample) and tokenise the default calibration and evaluation
    windows with ``model``'s tokenizer, so the first job finds them ready (loads the model if needed) -- with a bound
    out-of-process runner, as a task in its worker process (where the jobs will find them in memory)."""
    from .forms import parse_config

    cfg = parse_config({"model": model}, visitor=False)  # the form's default sizes on this device
    runner = _out_of_process()
    if runner is not None:
        runner.call("prepare_windows", {"config": cfg, "device": cfg.device})
        return
    from pruning.api import prepare_windows

    prepare_windows(cfg)
