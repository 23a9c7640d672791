"""How long a run will take, before it starts: a cost model calibrated on the machine it runs on.

``estimate_seconds(config)`` adds up the phases of ``run_job``: the dense forwards over the calibration tokens
(statistics pass + propagation pass) with the Gram accumulation, the solve of every linear, the pruned
evaluation (with the LM head and the cross-entropy) and the greedy generations. Each phase is a count of
FLOPs, values or tensor ops divided by this machine's measured rate for it (``machine_rates``: a few small
benchmarks, ~0.4 s per device/dtype, re-measured a few times later keeping the best), times a constant fitted once
on SmolLM2-135M.

The solve phase asks each solver for its operation counts: ``SolverSpec.cost(d_out, d_in, opts, sparsity=,
device=)``, a pure function declared next to the solver's registration (``solvers/*.py``). The counts are named
after the primitives of ``PRIMITIVES`` below, which turns each into seconds with one rate of ``Rates`` and one
fitted constant. A registered solver (or update) without a cost entry gives no estimate (None), never another
solver's cost.

The constants cannot know the machine's load, so every finished run is fed back (``observe``, called by
``run_job``): the ratio of measured to predicted time of each phase (per solver for the solve) becomes a
correction factor for the next estimates in this process. The first estimate is good to about ±2×; after a run
of the same kind it is usually within ±20 %.

All the state (measured rates, corrections) lives in one :class:`CostModel`; the module-level functions delegate to
``DEFAULT``, the process-wide instance.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import torch

from .patterns import _lowest_k
from .pipeline import gram_flops

# SmolLM2-135M: the shapes used when the model of a config is not loaded yet
_SMOLLM2 = dict(n_blocks=30, hidden=576, vocab=49152,
                linears=((576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)),
                gram_widths=(576, 576, 576, 1536))
TYPICAL_EVAL_WINDOWS = 64  # eval.windows = 0 means the whole split, whose size is unknown before tokenising

# fitted constants (dimensionless): measured phase time / modelled time, SmolLM2-135M on a 2-core AVX2 EPYC
_C_FWD = 1.34  # block forward vs 2·params FLOPs per token at the forward dtype's matmul rate
_C_GRAM = 0.9  # Gram accumulation vs its FLOPs at the float32 rate (conversion, strided blocks)
_C_HEAD = 1.3  # LM head + cross-entropy per evaluated token vs 2·hidden·vocab FLOPs
_C_GEN = 17.0  # one greedy decoding step vs (2·params / matmul rate + one op per linear)


@dataclass(frozen=True)
class Rates:
    mm: float  # float32 matmul FLOP/s
    mm_fwd: float  # matmul FLOP/s in the forward dtype
    mm64: float  # float64 matmul FLOP/s (rel_error)
    select: float  # values/s of a kthvalue over a flattened matrix
    op: float  # seconds of one small tensor op (dispatch overhead)
    ew: float  # values/s of an elementwise pass over a large tensor
    topk: float = 0.0  # values/s of a per-row top-k (5 % of 512-wide rows; SparseFW's LMO)
    sort64: float = 0.0  # values/s of a per-row stable float64 sort (SparseFW's rounding)

    def best(self, other: "Rates") -> "Rates":
        """Each primitive at its better measurement (higher throughput, shorter op)."""
        return Rates(mm=max(self.mm, other.mm), mm_fwd=max(self.mm_fwd, other.mm_fwd), mm64=max(self.mm64, other.mm64),
                     select=max(self.select, other.select), op=min(self.op, other.op), ew=max(self.ew, other.ew),
                     topk=max(self.topk, other.topk), sort64=max(self.sort64, other.sort64))


def best_rates(a: Rates, b: Rates) -> Rates:
    return a.best(b)


# primitive -> (rate of Rates it is divided by, or "op" for a count of small ops; fitted constant)
PRIMITIVES: dict[str, tuple[str, float]] = {
    "matmul_flops": ("mm", 1.0),  # float32 matrix products
    "matmul64_flops": ("mm64", 1.0),  # float64 matrix products
    "factor_flops": ("mm", 0.8),  # Cholesky / inverse / Cholesky of a d×d matrix, counted as d³ (SparseGPT)
    # sequential column steps of the SparseGPT sweep: two tensor ops on a few rows each, plus the sub-block and N:M
    # group work; fitted on SmolLM2 (4 × 512, 2026-12-07: 40 µs per column at op = 2.0 µs, 16 op-equivalents)
    "column_steps": ("op", 16.0),
    "selected_values": ("select", 1.5),  # values through a mask selection (vs one kthvalue over the matrix)
    "admm_elementwise_values": ("ew", 6.0),  # ~6 elementwise passes over the matrix per ADMM iteration
    "fw_lmo_values": ("topk", 1.6),  # SparseFW: the LMO + ~15 elementwise passes, in units of one per-row top-k
    "sorted_values": ("sort64", 1.0),  # per-row float64 sorts (SparseFW's rounding)
    "sparse_flops": ("mm", 20.0),  # CPU CSR product: cost per useful flop vs a dense matmul (2.4 vs 48 GFLOP/s)
}


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


def measure(dev: torch.device, dtype: torch.dtype) -> Rates:
    """One measurement of every primitive on ``dev`` (~0.4 s on a CPU)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a, b = torch.randn(512, 512, generator=g).to(dev), torch.randn(512, 512, generator=g).to(dev)
    af, bf = a.to(dtype), b.to(dtype)
    ad, bd = a.double(), b.double()
    flat = torch.randn(512 * 512, generator=g).to(dev)
    small = torch.randn(64, generator=g).to(dev)
    big = torch.randn(1 << 23, generator=g).to(dev)  # 32 MiB: beyond the caches, like a layer-sized pass
    flops = 2 * 512**3
    return Rates(
        mm=flops / timed_call(lambda: a @ b, dev),
        mm_fwd=flops / timed_call(lambda: af @ bf, dev),
        mm64=flops / timed_call(lambda: ad @ bd, dev),
        select=flat.numel() / timed_call(lambda: _lowest_k(flat.unsqueeze(0), flat.numel() // 2), dev),  # as the masks do
        op=timed_call(lambda: [small.mul(1.0) for _ in range(50)], dev) / 50,
        ew=big.numel() / timed_call(lambda: big.mul(1.0001), dev),
        topk=b.numel() / timed_call(lambda: torch.topk(b, 26, dim=1, largest=False, sorted=False), dev),
        sort64=bd.numel() / timed_call(lambda: torch.sort(bd, dim=1, stable=True), dev),
    )


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


def counts_seconds(counts: dict, r: Rates) -> float:
    """Seconds of a dict of operation counts (keys of ``PRIMITIVES``) at the rates ``r``."""
    t = 0.0
    for key, n in counts.items():
        if key not in PRIMITIVES or not n:
            continue
        rate, c = PRIMITIVES[key]
        t += c * n * r.op if rate == "op" else c * n / max(getattr(r, rate), 1e-30)
    return t


def layer_seconds(solver: str, update: str, s_opts: dict, u_opts: dict, d_out: int, d_in: int, r: Rates, device: str,
                  sparsity: float = 0.5) -> float | None:
    """Modelled seconds of one ``solve`` (mask solver + optional update + the float64 rel_error), or None when the
    solver or the update declares no cost entry."""
    from .solvers import SOLVERS, UPDATES

    spec = SOLVERS.get(solver)
    if spec.cost is None:
        return None
    counts = dict(spec.cost(d_out, d_in, s_opts, sparsity=sparsity, device=device))
    counts.pop("ffn_factor", None)
    t = counts_seconds(counts, r)
    if update != "none":
        u = UPDATES.get(update)
        if u.cost is None:
            return None
        t += counts_seconds(u.cost(d_out, d_in, u_opts, sparsity=sparsity, device=device), r)
    return t + counts_seconds({"matmul64_flops": 2 * 2.0 * d_out * d_in * d_in}, r)  # rel_error


class CostModel:
    """Measured rates per (device, dtype) and the corrections learned from finished runs; thread-safe.

    A measurement taken while the machine is busy (the app's first page view loads the model in another thread at
    the same moment) would make every later estimate several times too long; so the rates are measured again when
    asked for after ``remeasure_s``, up to ``max_measures`` times, keeping each primitive's best rate.
    """

    def __init__(self, remeasure_s: float = 15.0, max_measures: int = 6, measure=measure):
        self.remeasure_s = remeasure_s
        self.max_measures = max_measures
        self.measure = measure  # (device, dtype) -> Rates; replaceable (tests)
        self.rates: dict[tuple, tuple[Rates, int, float]] = {}  # key -> (best rates so far, measurements, when)
        self.corrections: dict[str, float] = {}  # phase (or "solve:<solver>+<update>") -> measured / predicted
        self.lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ rates
    def machine_rates(self, device: str = "cpu", dtype: torch.dtype = torch.float32, again: bool = False) -> Rates:
        """This machine's throughputs: measured on the first call per device and dtype, then again on a call at least
        ``remeasure_s`` later (at most ``max_measures`` times in all), keeping each primitive's best rate.
        ``again=True``: measure now whatever the time since the last measurement (still at most ``max_measures``
        times; never once a finished run has frozen the rates), e.g. when the server's preparation is over."""
        key = ("rates", str(torch.device(device)), str(dtype))
        with self.lock:
            hit = self.rates.get(key)
        if hit is not None and (hit[1] >= self.max_measures or (not again and time.monotonic() - hit[2] < self.remeasure_s)):
            return hit[0]
        value = self.measure(torch.device(device), dtype)
        with self.lock:
            hit = self.rates.get(key)
            if hit is not None:
                value = hit[0].best(value)
            self.rates[key] = (value, 1 if hit is None else hit[1] + 1, time.monotonic())
        return value

    def forget_rates(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        with self.lock:
            self.rates.pop(("rates", str(torch.device(device)), str(dtype)), None)

    # ------------------------------------------------------------------------------------------ phases
    def phase_seconds(self, config, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                      eval_windows: int | None = None) -> dict:
        """Modelled seconds of each phase of ``run_job(config)`` (before corrections); ``solve`` is None when the
        solver or update has no cost entry. ``eval_windows``: the number of evaluation windows if known (else
        ``config.eval.windows``, or ``TYPICAL_EVAL_WINDOWS`` for 0 = the whole split)."""
        from .solvers import SOLVERS

        shape = shape or _SMOLLM2
        r = self.machine_rates(device, dtype)
        nb = shape["n_blocks"]
        params = nb * sum(a * b for a, b in shape["linears"])  # the decoder linears: what a token pays for
        per_token = _C_FWD * 2.0 * params / r.mm_fwd
        calib_tokens = config.calib.nsamples * config.calib.seqlen
        gram = nb * sum(gram_flops(w) for w in shape["gram_widths"]) / r.mm
        head = _C_HEAD * 2.0 * shape["hidden"] * shape["vocab"] / r.mm_fwd
        n_eval = eval_windows if eval_windows is not None else (config.eval.windows or TYPICAL_EVAL_WINDOWS)
        s_opts, u_opts = config.solver_options()
        dev = str(torch.device(device))
        per_layer = [layer_seconds(config.solver, config.update, s_opts, u_opts, a, b, r, dev, config.sparsity)
                     for a, b in shape["linears"]]
        solve = None if any(t is None for t in per_layer) else nb * sum(per_layer)
        spec = SOLVERS.get(config.solver)
        if solve is not None and "ffn_io" in spec.needs:  # the FFN of a block solver costs ffn_factor × its linears
            ffn = list(shape["linears"])[-3:]
            factor = spec.cost(ffn[0][0], ffn[0][1], s_opts, sparsity=config.sparsity, device=dev).get("ffn_factor", 1.0)
            solve += nb * (factor - 1) * sum(counts_seconds({k: v for k, v in spec.cost(a, b, s_opts, sparsity=config.sparsity,
                                                                                             device=dev).items()
                                                             if k != "ffn_factor"}, r) for a, b in ffn)
        n_lin = len(shape["linears"])
        return {
            "forward": calib_tokens * 2 * per_token,
            "statistics": calib_tokens * gram * _C_GRAM,
            "solve": solve,
            "pruned_eval": n_eval * config.eval.seqlen * (per_token + head),
            "generate": len(config.prompts) * config.max_new_tokens * _C_GEN * (2.0 * params / r.mm_fwd + nb * n_lin * r.op * 4),
        }

    @staticmethod
    def _key(phase: str, config) -> str:
        return f"solve:{config.solver}+{config.update}" if phase == "solve" else phase

    def estimate_seconds(self, config, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                         eval_windows: int | None = None) -> float | None:
        """Predicted wall-clock seconds of ``run_job(config)``, the dense evaluation assumed cached; None (no
        estimate) when the solver or the update declares no cost entry."""
        phases = self.phase_seconds(config, shape, device, dtype, eval_windows)
        if phases["solve"] is None:
            return None
        with self.lock:
            return float(sum(v * self._correction(k, config) for k, v in phases.items()) + 1.0)

    def _correction(self, phase: str, config) -> float:
        """The learned factor of ``phase`` for ``config``. A solver's first run has none of its own: it gets the
        geometric mean of the other solvers' solve corrections (what they share is this machine's bias against its
        short benchmark, e.g. sustained vs best-of-five throughput), 1 when no run has finished yet."""
        key = self._key(phase, config)
        if key in self.corrections or phase != "solve":
            return self.corrections.get(key, 1.0)
        others = [v for k, v in self.corrections.items() if k.startswith("solve:")]
        return math.exp(sum(math.log(v) for v in others) / len(others)) if others else 1.0

    def observe(self, config, timings: dict, shape: dict | None = None, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> None:
        """Learn from a finished run: measured / modelled time per phase becomes the correction of later estimates."""
        phases = self.phase_seconds(config, shape, device, dtype)
        measured = {
            "forward": timings.get("calibration_forward", 0.0) + timings.get("propagate", 0.0) + timings.get("capture", 0.0),
            "statistics": timings.get("statistics", 0.0),
            "solve": timings.get("solve", 0.0),
            "pruned_eval": timings.get("pruned_eval", 0.0),
            "generate": timings.get("generate", 0.0),
        }
        with self.lock:
            # the corrections are relative to the rates measured so far: keep those rates from now on (a finished run
            # is a better measurement of this machine than any benchmark)
            for key, (value, _, at) in list(self.rates.items()):
                self.rates[key] = (value, self.max_measures, at)
            for k, model in phases.items():
                if model and model > 0 and measured[k] > 0:
                    ratio = min(max(measured[k] / model, 0.05), 20.0)
                    key = self._key(k, config)
                    old = self.corrections.get(key)
                    self.corrections[key] = ratio if old is None else 0.5 * old + 0.5 * ratio

    def reset_corrections(self) -> None:
        with self.lock:
            self.corrections.clear()


DEFAULT = CostModel()


def machine_rates(device: str = "cpu", dtype: torch.dtype = torch.float32, again: bool = False) -> Rates:
    return DEFAULT.machine_rates(device, dtype, again)


def phase_seconds(config, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                  eval_windows: int | None = None) -> dict:
    return DEFAULT.phase_seconds(config, shape, device, dtype, eval_windows)


def estimate_seconds(config, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     eval_windows: int | None = None) -> float | None:
    return DEFAULT.estimate_seconds(config, shape, device, dtype, eval_windows)


def observe(config, timings: dict, shape: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
    DEFAULT.observe(config, timings, shape, device, dtype)


def reset_corrections() -> None:
    DEFAULT.reset_corrections()


def layer_estimate_seconds(solver: str, d_out: int, d_in: int, options: dict | None = None, *, update: str = "none",
                           sparsity: float = 0.5, device: str = "cpu", model: CostModel | None = None) -> float | None:
    """Predicted seconds of ``prune_layer(...)`` on one (d_out, d_in) layer (e.g. SparseFW's time per layer),
    or None when the solver has no cost entry. Sum over the layers of a model for a whole-run estimate."""
    from .solvers import split_options

    s_opts, u_opts = split_options(solver, update, dict(options or {}))
    r = (model or DEFAULT).machine_rates(device)
    return layer_seconds(solver, update, s_opts, u_opts, d_out, d_in, r, str(torch.device(device)), sparsity)
