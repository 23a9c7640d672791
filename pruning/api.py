"""High-level entry points used by the CLI and the app: run a whole job, prune a model, estimate a run's time,
describe a model.

``run_job`` = load (cached per process) → dense evaluation (cached per model + evaluation config, on disk)
→ prune a *copy* of the loaded model → pruned evaluation → greedy generations, emitting typed events all
along. The loaded dense model is never modified, whatever happens (cancel, bad input, NaN).
``prune_model`` (the public one, ``from pruning import prune_model``) prunes a model you hold, in place, loading
the calibration windows of ``config.calib`` itself. The loaded models and dense baselines are held by
``pruning.engine.DEFAULT``; device and dtype resolution is ``pruning.device``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from typing import Callable

import torch

from . import events as ev
from .blocks import block_linears, find_blocks
from .config import CalibConfig, PruneConfig
from .device import cpu_has_native_bf16, resolve_device, resolve_dtype  # noqa: F401 -- re-exported (public names)
from .engine import DEFAULT as ENGINE
from .errors import error_kind, user_message
from .evaluate import generate, perplexity, stream_batch_size
from .settings import cache_dir

_LOCK = ENGINE.load_lock  # held for a whole model load (kept as a name for callers that wait on it)


def get_model(model_id: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"):
    """(model, tokenizer, fingerprint), loaded once per process per (model, device, dtype) into ``ENGINE.models``.
    The model is shared: do not modify it (``run_job`` prunes a copy)."""
    from .models import load_model, model_fingerprint

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (model_id, str(dev), str(dt))
    with ENGINE.load_lock:
        if key not in ENGINE.models:
            model, tok = load_model(model_id, device=dev, dtype=dt)
            ENGINE.models[key] = (model, tok, model_fingerprint(model))
        return ENGINE.models[key]


def get_offloaded_model(config: PruneConfig):
    """(model, tokenizer, fingerprint) of ``config.model`` with its decoder blocks on ``config.offload`` ('cpu' or
    'disk', in ``config.offload_folder``): a fresh load per call (pruning writes into it), never shared. The
    fingerprint equals ``get_model``'s for the same checkpoint and dtype (the weights are the same)."""
    from .models import model_fingerprint
    from .offload import load_offloaded

    dev = resolve_device(config.device)
    model, tok = load_offloaded(config.model, dev, resolve_dtype(config.dtype, dev), config.offload,
                                config.offload_folder or None)
    return model, tok, model_fingerprint(model)


def has_accelerator() -> bool:
    """True when this process sees a GPU (the app then offers offload: decoder blocks on CPU or disk)."""
    return resolve_device("auto").type == "cuda"


def calibration_windows_for(tokenizer, calib: CalibConfig) -> torch.Tensor:
    """(nsamples, seqlen) calibration windows of ``calib`` (``pruning.data.calibration_windows``)."""
    from .data import calibration_windows

    return calibration_windows(tokenizer, source=calib.source, nsamples=calib.nsamples, seqlen=calib.seqlen,
                               seed=calib.seed, sampling=calib.sampling)


def prepare_windows(config: PruneConfig) -> None:
    """Convert ``config``'s text and tokenise its calibration and evaluation windows (each cached), loading the model's
    tokenizer: what a first job would do before any forward (the app calls it at server start)."""
    from .data import eval_windows

    _, tok, _ = get_model(config.model, config.device, config.dtype)
    calibration_windows_for(tok, config.calib)
    eval_windows(tok, source=config.eval.source, seqlen=config.eval.seqlen, max_windows=config.eval.windows)


def prune_model(model, tokenizer, config: PruneConfig, on_event: Callable[[ev.Event], None] | None = None,
                cancel: threading.Event | None = None, windows: torch.Tensor | None = None) -> dict:
    """Prune ``model`` in place with ``config``; returns the pipeline's report (per-layer errors, sparsity, timings).

    windows: (n, seqlen) int64 calibration token ids; None = drawn from ``config.calib`` with ``tokenizer``.
    on_event receives the typed events of ``pruning.events``; setting ``cancel`` stops between layers (raises
    ``events.Cancelled``). On cancel or failure every weight is restored first, so the model is exactly as given.
    """
    from .pipeline import prune_model as run_pipeline

    if windows is None:
        windows = calibration_windows_for(tokenizer, config.calib)
    return run_pipeline(model, tokenizer, config, on_event=on_event, cancel=cancel, windows=windows)


def _dense_cache_path(key: str):
    d = cache_dir() / "dense"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{key}.json"


def _streaming(emit: Callable[[ev.Event], None], which: str, prompts) -> tuple[Callable, Callable]:
    """(on_progress for ``perplexity``, on_text for ``generate``) that emit ``EvalProgress`` / ``GenerationProgress``."""
    prompts = list(prompts)

    def on_progress(done: int, total: int, ppl: float) -> None:
        emit(ev.EvalProgress(which, done, total, ppl))

    def on_text(i: int, text: str, done: bool) -> None:
        emit(ev.GenerationProgress(which, i, prompts[i], text, done))

    return on_progress, on_text


def dense_baseline(config: PruneConfig, model, tokenizer, fingerprint: str, eval_ids: torch.Tensor, cancel=None,
                   on_event: Callable[[ev.Event], None] | None = None) -> dict:
    """Dense perplexity and generations, cached in memory and on disk per model + evaluation + prompts.

    ``on_event``: when they are computed here (not cached), the running perplexity and the growing generations are
    streamed as ``EvalProgress`` / ``GenerationProgress`` events (which='dense')."""
    blob = json.dumps({"fp": fingerprint, "eval": config.eval.key_dict(), "dtype": str(next(model.parameters()).dtype),
                       "dev": next(model.parameters()).device.type, "prompts": list(config.prompts),
                       "new": config.max_new_tokens, "n": int(eval_ids.shape[0])}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    hit = ENGINE.dense.get(key)
    if hit is not None:
        return dict(hit, cached=True)
    path = _dense_cache_path(key)
    if path.exists():
        try:
            res = ENGINE.dense.put(key, json.loads(path.read_text()))
            return dict(res, cached=True)
        except (OSError, ValueError):
            pass
    on_progress, on_text = _streaming(on_event, "dense", config.prompts) if on_event is not None else (None, None)
    t0 = time.perf_counter()
    ppl = perplexity(model, eval_ids, stream_batch_size(model), cancel=cancel, on_progress=on_progress)
    t1 = time.perf_counter()
    gens = generate(model, tokenizer, config.prompts, config.max_new_tokens, on_text=on_text)
    res = {"ppl": ppl, "generations": gens, "eval_seconds": t1 - t0, "generate_seconds": time.perf_counter() - t1}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, path)
    ENGINE.dense.put(key, res)
    return dict(res, cached=False)


def run_job(config: PruneConfig, on_event: Callable[[ev.Event], None] | None = None, cancel: threading.Event | None = None,
            keep_model: bool = False) -> dict:
    """Run one pruning job end to end; returns the report dict (see README "JSON report").

    With ``keep_model`` the pruned model is returned in ``report['_model']`` (not JSON-able; for --save).
    Raises events.Cancelled on cancel (after emitting JobCancelled); other errors emit JobFailed and re-raise.
    """
    from .data import eval_windows

    emit = on_event or (lambda e: None)
    cancel = cancel or threading.Event()
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        emit(ev.PhaseStarted("load", config.model))
        offloaded = config.offload != "none"
        if offloaded:  # blocks on CPU / disk: pruned in place, one block on the compute device at a time
            from .offload import check_offload, store_of

            check_offload(config.offload, config.offload_folder or None)  # accelerate, a writable folder: first
            model, tok, fp = get_offloaded_model(config)
        else:
            model, tok, fp = get_model(config.model, config.device, config.dtype)
        timings["load"] = time.perf_counter() - t0
        # all input validation before any weight is touched
        from .pipeline import validate_model_for_pattern

        validate_model_for_pattern(model, config.pattern)
        from .config import check_job_memory

        check_job_memory(config, model)  # refused with the estimate and the limit before any work
        c, e = config.calib, config.eval
        if e.zeroshot:
            from .zeroshot import check_tasks

            check_tasks(list(e.zeroshot))  # lm-eval present, hub tasks only with the hub: before any work
        t0 = time.perf_counter()
        calib_ids = calibration_windows_for(tok, c)
        eval_ids = eval_windows(tok, source=e.source, seqlen=e.seqlen, max_windows=e.windows)
        timings["data"] = time.perf_counter() - t0
        if cancel.is_set():
            raise ev.Cancelled("cancelled by the user")
        emit(ev.PhaseStarted("dense-eval", f"{eval_ids.shape[0]} windows × {eval_ids.shape[1]} tokens"))
        t0 = time.perf_counter()
        dense = dense_baseline(config, model, tok, fp, eval_ids, cancel, on_event=emit)
        timings["dense_eval"] = time.perf_counter() - t0
        emit(ev.Evaluated("dense", e.source, dense["ppl"], timings["dense_eval"]))
        if dense.get("cached"):  # the dense continuations at once, so the pruned ones grow beside them
            for i, (p, d) in enumerate(zip(config.prompts, dense["generations"])):
                emit(ev.GenerationProgress("dense", i, p, d, True))
        t0 = time.perf_counter()
        pruned = model if offloaded else copy.deepcopy(model)  # offloaded: no second copy (kl/zeroshot refused)
        timings["copy"] = time.perf_counter() - t0
        rep = prune_model(pruned, tok, config, on_event=emit, cancel=cancel, windows=calib_ids)  # windows given
        for k, v in rep["timings"].items():
            timings["prune_" + k if k == "total" else k] = v
        emit(ev.PhaseStarted("pruned-eval", f"{eval_ids.shape[0]} windows"))
        t0 = time.perf_counter()
        on_progress, on_text = _streaming(emit, "pruned", config.prompts)
        ppl = perplexity(pruned, eval_ids, stream_batch_size(pruned), cancel=cancel, on_progress=on_progress)
        timings["pruned_eval"] = time.perf_counter() - t0
        emit(ev.Evaluated("pruned", e.source, ppl, timings["pruned_eval"]))
        emit(ev.PhaseStarted("generate", f"{len(config.prompts)} prompts"))
        t0 = time.perf_counter()
        gens_p = generate(pruned, tok, config.prompts, config.max_new_tokens, on_text=on_text)
        timings["generate"] = time.perf_counter() - t0
        generations = []
        for p, d, q in zip(config.prompts, dense["generations"], gens_p):
            generations.append({"prompt": p, "dense": d, "pruned": q})
            emit(ev.Generated(p, d, q))
        extras = {}
        if e.kl:
            from .drift import kl_drift

            emit(ev.PhaseStarted("drift", f"KL(dense ‖ pruned) over {eval_ids.shape[0]} windows"))
            t0 = time.perf_counter()
            extras["drift"] = kl_drift(model, pruned, eval_ids, cancel=cancel)
            timings["drift"] = time.perf_counter() - t0
        if e.zeroshot:
            emit(ev.PhaseStarted("zero-shot", f"{', '.join(e.zeroshot)} (lm-eval), dense and pruned"))
            t0 = time.perf_counter()
            extras["zeroshot"] = zeroshot_dense_pruned(config, model, pruned, tok, fp, cancel)
            timings["zeroshot"] = time.perf_counter() - t0
        timings = {k: round(v, 4) for k, v in timings.items()}
        timings["end_to_end"] = round(sum(timings.get(k, 0.0) for k in ("load", "data", "dense_eval", "copy", "prune_total",
                                                                        "pruned_eval", "generate", "drift", "zeroshot")), 4)
        n_params = sum(p.numel() for p in model.parameters())
        report = {
            "config": config.to_dict(),
            "key": config.key(),
            "model": {"id": config.model, "fingerprint": fp, "n_blocks": rep["n_blocks"], "n_params": n_params},
            "perplexity": {"dense": dense["ppl"], "pruned": ppl},
            "dense_cached": bool(dense.get("cached")),
            "sparsity": rep["sparsity"],
            "sparsity_pruned_layers": rep["sparsity_pruned_layers"],
            "sparsity_by_kind": rep["sparsity_by_kind"],
            "experts": rep["experts"],
            "layers": [{k: l[k] for k in ("block", "name", "rel_error", "sparsity", "seconds", "target") if k in l}
                       for l in rep["layers"]],
            "timings": timings,
            "generations": generations,
            "device": str(next(model.parameters()).device),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "calibration": {"windows": int(calib_ids.shape[0]), "seqlen": int(calib_ids.shape[1]), "tokens": int(calib_ids.numel())},
            "evaluation": {"windows": int(eval_ids.shape[0]), "seqlen": int(eval_ids.shape[1])},
            "warnings": rep["warnings"],
            "mask_sha256": mask_checksum(pruned),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            **extras,
        }
        report["run_id"] = run_id(report)
        _observe(config, model, timings)
        emit(ev.JobFinished(report))
        if keep_model:
            report["_model"], report["_tokenizer"] = pruned, tok
        elif offloaded:
            store_of(model).close()  # the pruned blocks on disk are no longer needed
        return report
    except ev.Cancelled as exc:
        emit(ev.JobCancelled(str(exc) or "cancelled by the user"))
        raise
    except Exception as exc:
        emit(ev.JobFailed(user_message(exc), kind=error_kind(exc)))
        raise


def mask_checksum(model) -> str:
    """SHA-256 of which weights are zero in every weight matrix of every decoder block (linears and fused experts;
    an offloaded one read where it lives), in block and parameter order, names and shapes included: equal for two
    runs exactly when they pruned the same weights (``report['mask_sha256']``)."""
    import numpy as np

    from .models import real_tensor

    prefix, blocks = find_blocks(model)
    h = hashlib.sha256()
    with torch.no_grad():
        for b, block in enumerate(blocks):
            for name, p in block.named_parameters():
                if p.dim() < 2:
                    continue
                w = real_tensor(model, f"{prefix}.{b}.{name}", p)
                h.update(f"{b}.{name}:{tuple(w.shape)}".encode())
                h.update(np.packbits((w != 0).reshape(-1).cpu().numpy()).tobytes())  # 1 bit per weight
    return h.hexdigest()


def run_id(report: dict) -> str:
    """The id of a finished run (Compare table, ``python -m pruning export RUN_ID DIR``): config key + model."""
    from .results import run_id_of

    return run_id_of({k: v for k, v in report.items() if k != "run_id"})


def zeroshot_dense_pruned(config: PruneConfig, model, pruned, tokenizer, fingerprint: str, cancel=None) -> dict:
    """``{task: {"dense": {...}, "pruned": {...}}}``; the dense side cached per model + tasks + limit (like the
    dense perplexity)."""
    from .zeroshot import evaluate_zeroshot

    e = config.eval
    limit = e.zeroshot_limit or None
    blob = json.dumps({"fp": fingerprint, "tasks": list(e.zeroshot), "limit": limit,
                       "dtype": str(next(model.parameters()).dtype), "v": 1}, sort_keys=True)
    path = _dense_cache_path("zeroshot-" + hashlib.sha256(blob.encode()).hexdigest()[:20])
    dense = None
    if path.exists():
        try:
            dense = json.loads(path.read_text())
        except (OSError, ValueError):
            dense = None
    if dense is None:
        dense = evaluate_zeroshot(model, tokenizer, list(e.zeroshot), limit=limit)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(dense))
        os.replace(tmp, path)
    if cancel is not None and cancel.is_set():
        raise ev.Cancelled("cancelled by the user")
    sparse = evaluate_zeroshot(pruned, tokenizer, list(e.zeroshot), limit=limit)
    return {t: {"dense": dense.get(t, {}), "pruned": sparse.get(t, {})} for t in e.zeroshot}


def model_info(model_id: str, device: str = "auto", dtype: str = "auto") -> dict:
    """Blocks and linears of a model (for pickers): {'n_blocks', 'linears': {name: [d_out, d_in]}, 'family'}."""
    model, _, fp = get_model(model_id, device, dtype)
    _, blocks = find_blocks(model)
    lins = block_linears(blocks[0])
    return {"id": model_id, "fingerprint": fp, "n_blocks": len(blocks), "family": model.config.model_type,
            "linears": {n: list(l.shape) for n, l in lins.items()}}


def _loaded(config: PruneConfig):
    """(model, device, dtype) of the config if ``get_model`` already holds it, else (None, device, dtype)."""
    dev = resolve_device(config.device)
    dt = resolve_dtype(config.dtype, dev)
    return ENGINE.loaded_model(config.model, dev, dt), dev, dt  # never waits for a load in progress


def estimate_seconds(config: PruneConfig, device: str | None = None, shape: dict | None = None) -> float:
    """Predicted seconds of ``run_job(config)`` (dense evaluation cached), from ``pruning.cost_model``:
    this machine's measured rates, the model's shapes (``shape``: the cost model's shape facts, e.g. from a worker
    process's ``model_info``; else those of the model loaded here; SmolLM2's until it is loaded) and the corrections
    learned from the runs finished in this process."""
    from . import cost_model

    model, dev, dt = _loaded(config)
    if device is not None:
        dev = torch.device(device)
    if shape is None:
        shape = cost_model.model_shape(model) if model is not None else None
    return cost_model.estimate_seconds(config, shape, str(dev), dt)


def measure_machine(device: str = "auto", dtype: str = "auto", again: bool = False) -> None:
    """Measure this machine's rates for ``estimate_seconds`` now (~0.3 s), e.g. at server start while the process is
    idle: a first measurement taken while a page view loads the model would be too slow. ``again=True`` measures
    once more now and keeps each primitive's best rate (the server does so when its preparation is over: the first
    measurement may have shared the CPU with the worker process starting)."""
    from . import cost_model

    dev = resolve_device(device)
    cost_model.machine_rates(str(dev), resolve_dtype(dtype, dev), again)  # every primitive, SparseFW's included


def _observe(config: PruneConfig, model, timings: dict) -> None:
    from . import cost_model

    p = next(model.parameters())
    cost_model.observe(config, timings, cost_model.model_shape(model), str(p.device), p.dtype)


def estimate_phases(config: PruneConfig, device: str | None = None) -> dict:
    """Predicted seconds per phase of ``run_job(config)`` (the cost model's breakdown of ``estimate_seconds``)."""
    from . import cost_model

    return cost_model.phase_seconds(config)


def embedded_model_ready() -> bool:
    """True once the embedded model has been converted to its cached copy (the first use converts it, ~1 min)."""
    from .models import embedded_model_dir

    return (embedded_model_dir() / "config.json").is_file()


def check_text_source(source: str, split: str = "calib") -> None:
    """Raise the data layer's error (naming the field) if ``source`` yields no text; cheap for named sources."""
    from .data import load_documents

    load_documents(source, split)


# -- re-exported for the app (ui/ imports only the public modules): allocation choices and the sparse-kernel
# measurement shown in About (export: ``pruning.export_run`` etc., lazy names of the package: export imports api)
from .allocation import ALLOCATIONS  # noqa: E402,F401
from .sparse_bench import format_table as sparse_bench_table, load_measurement as sparse_bench_measurement  # noqa: E402,F401
