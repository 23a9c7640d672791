"""How long a run will take, before it starts: a cost model calibrated on the machine it runs on.

``estimate_seconds(config)`` adds up the phases of ``run_job``: the dense forwards over the calibration tokens
(statistics pass + propagation pass) with the Gram accumulation, the solve of every linear, the pruned
evaluation (with the LM head and the cross-entropy) and the greedy generations. Each phase is a count of
FLOPs, values or tensor ops divided by this machine's measured rate for it (``machine_rates``: a few small
benchmarks, ~0.3 s per device/dtype, re-measured a few times later keeping the best), times a constant fitted once
on SmolLM2-135M.

The constants cannot know the machine's load, so every finished run is fed back (``observe``, called by
``run_job``): the ratio of measured to predicted time of each phase (per solver for the solve) becomes a
correction factor for the next estimates in this process. The first estimate is good to about ±2×; after a run
of the same kind it is usually within ±20 %.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

# SmolLM2-135M: the shapes used when the model of a config is not loaded yet
_SMOLLM2 = dict(n_blocks=30, hidden=576, vocab=49152,
                linears=((576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)),
                gram_widths=(576, 576, 576, 1536))

# fitted constants (dimensionless): measured phase time / modelled time, SmolLM2-135M on a 2-core AVX2 EPYC
_C_FWD = 1.34  # block forward vs 2·params FLOPs per token at the forward dtype's matmul rate
_C_GRAM = 0.9  # Gram accumulation vs its FLOPs at the float32 rate (conversion, strided blocks)
_C_HEAD = 1.3  # LM head + cross-entropy per evaluated token vs 2·hidden·vocab FLOPs
_C_GEN = 17.0  # one greedy decoding step vs (2·params / matmul rate + one op per linear)
_C_CHOL = 0.8  # SparseGPT's Cholesky, inverse and Cholesky again vs d_in³ FLOPs at the float32 rate
_C_COL = 6.0  # tensor ops per column of the SparseGPT sweep
_C_SEL = 1.5  # a mask selection vs one kthvalue over the matrix
_C_EW = 6.0  # elementwise passes over the matrix per ADMM iteration
_C_SLLM = 5.0  # SparseLLM's FFN vs SparseGPT on its three linears (4 epochs + refits + auxiliary updates)


@dataclass(frozen=True)
class Rates:
    mm: float  # float32 matmul FLOP/s
    mm_fwd: float  # matmul FLOP/s in the forward dtype
    mm64: float  # float64 matmul FLOP/s (rel_error)
    select: float  # values/s of a kthvalue over a flattened matrix
    op: float  # seconds of one small tensor op (dispatch overhead)
    ew: float  # values/s of an elementwise pass over a large tensor


_RATES: dict[tuple, tuple[object, int, float]] = {}  # key -> (best rates so far, measurements, when)
_LOCK = threading.Lock()
# A measurement taken while the machine is busy (the app's first page view loads the model in another thread at the
# same moment) would make every later estimate several times too long; so the rates are measured again when asked
# for after _REMEASURE_S, up to _MAX_MEASURES times, keeping each primitive's best rate.
_REMEASURE_S = 15.0
_MAX_MEASURES = 6
_CORRECTION: dict[str, float] = {}  # phase (or "solve:<solver>") -> measured / predicted


def timed_call(fn, dev: torch.device, reps: int = 5) -> float:
    """Seconds of one call of ``fn``: the fastest of ``reps`` calls after a warm-up call (the minimum is the
    stable statistic on a shared machine), synchronising CUDA around each."""
    fn()
    best = float("inf")
    for _ in range(reps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-7)


def machine_rates(device: str = "cpu", dtype: torch.dtype = torch.float32) -> Rates:
    """This machine's throughputs for the primitives the phases are made of: measured on the first call per device
    and dtype (~0.3 s), then again on a call at least ``_REMEASURE_S`` later (at most ``_MAX_MEASURES`` times in
    all), keeping each primitive's best rate, so that a first measurement under load does not stick."""
    return best_measurement(("estimate", str(torch.device(device)), str(dtype)), lambda: _measure(torch.device(device), dtype),
                            best_rates)


def best_measurement(key, measure, combine):
    """``measure()`` cached under ``key``: measured on the first call, again on a call at least ``_REMEASURE_S`` after
    the last measurement (at most ``_MAX_MEASURES`` in all), ``combine(old, new)`` keeping the better of each."""
    with _LOCK:
        hit = _RATES.get(key)
    if hit is not None and (hit[1] >= _MAX_MEASURES or time.monotonic() - hit[2] < _REMEASURE_S):
        return hit[0]
    value = measure()
    with _LOCK:
        hit = _RATES.get(key)
        if hit is not None:
            value = combine(hit[0], value)
        _RATES[key] = (value, 1 if hit is None else hit[1] + 1, time.monotonic())
    return value


def best_rates(a: Rates, b: Rates) -> Rates:
    """Each primitive at its better measurement (higher throughput, shorter op)."""
    return Rates(mm=max(a.mm, b.mm), mm_fwd=max(a.mm_fwd, b.mm_fwd), mm64=max(a.mm64, b.mm64), select=max(a.select, b.select),
                 op=min(a.op, b.op), ew=max(a.ew, b.ew))


def _measure(dev: torch.device, dtype: torch.dtype) -> Rates:
    g = torch.Generator(device="cpu").manual_seed(0)
    a, b = torch.randn(512, 512, generator=g).to(dev), torch.randn(512, 512, generator=g).to(dev)
    af, bf = a.to(dtype), b.to(dtype)
    ad, bd = a.double(), b.double()
    flat = torch.randn(512 * 512, generator=g).to(dev)
    small = torch.randn(64, generator=g).to(dev)
    big = torch.randn(1 << 23, generator=g).to(dev)  # 32 MiB: beyond the caches, like a layer-sized pass
    flops = 2 * 512**3
    rates = Rates(
        mm=flops / timed_call(lambda: a @ b, dev),
        mm_fwd=flops / timed_call(lambda: af @ bf, dev),
        mm64=flops / timed_call(lambda: ad @ bd, dev),
        select=flat.numel() / timed_call(lambda: torch.kthvalue(flat, flat.numel() // 2), dev),
        op=timed_call(lambda: [small.mul(1.0) for _ in range(50)], dev) / 50,
        ew=big.numel() / timed_call(lambda: big.mul(1.0001), dev),
    )
    return rates


def model_shape(model) -> dict:
    """The shape facts the cost model needs, read from a loaded model."""
    from .blocks import block_linears, find_blocks

    _, blocks = find_blocks(model)
    lins = block_linears(blocks[0])
    widths = {}
    for name, lin in lins.items():  # linears that read the same input share one Gram: approximate by d_in groups
        widths.setdefault((name.rsplit(".", 1)[0], lin.shape[1]), lin.shape[1])
    emb = model.get_input_embeddings()
    return dict(n_blocks=len(blocks), hidden=int(emb.weight.shape[1]), vocab=int(emb.weight.shape[0]),
                linears=tuple(tuple(int(x) for x in l.shape) for l in lins.values()), gram_widths=tuple(widths.values()))


# ------------------------------------------------------------------------------------------ per-layer solve


def _rel_error(r: Rates, d_out: int, d_in: int) -> float:
    return 2 * 2.0 * d_out * d_in * d_in / r.mm64


def _select(r: Rates, n: int) -> float:
    return _C_SEL * n / r.select


def _sparsegpt(r: Rates, d_out: int, d_in: int) -> float:
    return _C_CHOL * d_in**3 / r.mm + _C_COL * d_in * r.op + 2.0 * d_out * d_in * 128 / r.mm + _select(r, d_out * d_in)


def _admm(r: Rates, d_out: int, d_in: int, iters: int, selections: int, objective_every: int) -> float:
    n = d_out * d_in
    products = iters + (iters if objective_every == 1 else (iters // max(objective_every, 1) if objective_every else 1))
    setup = 3 * d_in**3 / r.mm + 2.0 * n * d_in / r.mm
    return setup + products * 2.0 * n * d_in / r.mm + iters * _C_EW * n / r.ew + selections * _select(r, n)


def layer_seconds(solver: str, update: str, opts: dict, d_out: int, d_in: int, r: Rates, device: str) -> float:
    """Modelled seconds of one ``solve`` (mask solver + optional update + the float64 rel_error)."""
    n = d_out * d_in
    if solver == "sparsegpt":
        t = _sparsegpt(r, d_out, d_in)
    elif solver == "admm":
        iters, k = int(opts.get("iters", 20)), int(opts.get("gradual_iters", 15))
        src = opts.get("mask_from", "gradual")
        t = _admm(r, d_out, d_in, iters, k if src == "gradual" else 1, int(opts.get("objective_every", 1)))
        if src == "sparsegpt":
            t += _sparsegpt(r, d_out, d_in)
    elif solver == "sparsefw":
        from .solvers import sparsefw

        t = sparsefw.estimate_seconds(d_out, d_in, int(opts.get("iters", sparsefw.DEFAULT_ITERS)), device)
    elif solver == "sparsellm":
        t = _sparsegpt(r, d_out, d_in)  # attention linears; the FFN factor is applied by the caller
    else:  # magnitude, wanda, ria, and any mask solver of the same cost class
        t = _select(r, n)
    if update == "sparsegpt":
        t += _sparsegpt(r, d_out, d_in)
    elif update in ("admm",):
        t += _admm(r, d_out, d_in, int(opts.get("iters", 20)), 0, int(opts.get("objective_every", 1)))
    elif update == "exact":
        t += d_out * (d_in * 0.5) ** 3 / 3 / r.mm64 + 2.0 * n * d_in / r.mm64
    return t + _rel_error(r, d_out, d_in)


# ------------------------------------------------------------------------------------------------- phases


def phase_seconds(config, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Modelled seconds of each phase of ``run_job(config)`` (before corrections)."""
    shape = shape or _SMOLLM2
    r = machine_rates(device, dtype)
    nb = shape["n_blocks"]
    params = nb * sum(a * b for a, b in shape["linears"])  # the decoder linears: what a token pays for
    per_token = _C_FWD * 2.0 * params / r.mm_fwd
    calib_tokens = config.calib.nsamples * config.calib.seqlen
    gram = nb * sum(2.0 * w * w * (0.625 if w >= 768 else 1.0) for w in shape["gram_widths"]) / r.mm
    head = _C_HEAD * 2.0 * shape["hidden"] * shape["vocab"] / r.mm_fwd
    eval_windows = config.eval.windows or 64  # 0 = the whole split: assume a typical size
    s_opts, u_opts = config.solver_options()
    solve = nb * sum(layer_seconds(config.solver, config.update, {**s_opts, **u_opts}, a, b, r, device) for a, b in shape["linears"])
    if config.solver == "sparsellm":  # its FFN costs several SparseGPTs (epochs, refits, per-token updates)
        ffn = [(a, b) for a, b in shape["linears"]][-3:]
        solve += nb * (_C_SLLM - 1) * sum(_sparsegpt(r, a, b) for a, b in ffn)
    n_lin = len(shape["linears"])
    return {
        "forward": calib_tokens * 2 * per_token,
        "statistics": calib_tokens * gram * _C_GRAM,
        "solve": solve,
        "pruned_eval": eval_windows * config.eval.seqlen * (per_token + head),
        "generate": len(config.prompts) * config.max_new_tokens * _C_GEN * (2.0 * params / r.mm_fwd + nb * n_lin * r.op * 4),
    }


def _key(phase: str, config) -> str:
    return f"solve:{config.solver}+{config.update}" if phase == "solve" else phase


def estimate_seconds(config, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Predicted wall-clock seconds of ``run_job(config)``, the dense evaluation assumed cached."""
    phases = phase_seconds(config, shape, device, dtype)
    with _LOCK:
        return float(sum(v * _CORRECTION.get(_key(k, config), 1.0) for k, v in phases.items()) + 1.0)


def observe(config, timings: dict, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
    """Learn from a finished run: measured / modelled time per phase becomes the correction of later estimates."""
    phases = phase_seconds(config, shape, device, dtype)
    measured = {
        "forward": timings.get("calibration_forward", 0.0) + timings.get("propagate", 0.0) + timings.get("capture", 0.0),
        "statistics": timings.get("statistics", 0.0),
        "solve": timings.get("solve", 0.0),
        "pruned_eval": timings.get("pruned_eval", 0.0),
        "generate": timings.get("generate", 0.0),
    }
    with _LOCK:
        # the corrections are relative to the rates measured so far: keep those rates from now on (a finished run is
        # a better measurement of this machine than any benchmark)
        for key, (value, _, at) in list(_RATES.items()):
            _RATES[key] = (value, _MAX_MEASURES, at)
        for k, model in phases.items():
            if model > 0 and measured[k] > 0:
                ratio = min(max(measured[k] / model, 0.05), 20.0)
                key = _key(k, config)
                old = _CORRECTION.get(key)
                _CORRECTION[key] = ratio if old is None else 0.5 * old + 0.5 * ratio


def reset_corrections() -> None:
    with _LOCK:
        _CORRECTION.clear()
