"""Sequential block-by-block pruning (algorithms.md §1), written once for every model family.

1. capture the inputs of block 0 (and the keyword arguments the model passes to its blocks);
2. for each block: run it densely with hooks that accumulate one Gram G = Σ x xᵀ (float32) per distinct
   input (q/k/v share one, gate/up share one), solve every linear, write the pruned weights;
3. re-run the pruned block; its outputs are the next block's inputs.

Forwards are batched (``batch_size`` windows at a time, not batch 1 as the reference code) and may run in
bf16/fp16 while statistics and solver maths stay float32. Optional true-sequential mode re-runs the block
before each group of linears that share an input, so later groups see the pruned earlier ones.

Cancellation is cooperative (checked before every layer); on cancel or failure every weight written so far
is restored, so the model the caller passed in is left exactly as it was.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .blocks import Linear, block_linears, find_blocks, model_device
from .events import (
    BlockDone,
    BlockStarted,
    Cancelled,
    Event,
    IterationDone,
    JobStarted,
    LayerSolved,
    PhaseStarted,
    WarningEvent,
)
from .solve import LayerSolution, solve
from .patterns import parse_pattern
from .solvers import SOLVERS, LayerProblem, SolveContext

EventSink = Callable[[Event], None]


class _Caught(Exception):
    def __init__(self, hidden, args, kwargs):
        super().__init__()
        self.hidden, self.args, self.kwargs = hidden, args, kwargs


class _Catcher(nn.Module):
    """Stands in for block 0 to record what the model passes to its blocks, then aborts the forward."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, hidden, *args, **kwargs):
        raise _Caught(hidden, args, kwargs)

    def __getattr__(self, name):  # models read attributes of their layers (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)


@dataclass
class BlockInputs:
    """Hidden states entering the current block, batched, with the block call's extra arguments."""

    hidden: list[torch.Tensor]  # one (B, seqlen, hidden) tensor per batch
    args: list[tuple]
    kwargs: list[dict]


def capture_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int) -> BlockInputs:
    """Run the model up to block 0 on every batch of windows and record the block-0 inputs."""
    _, blocks = find_blocks(model)
    dev = model_device(model)
    first = blocks[0]
    blocks[0] = _Catcher(first)
    hidden, args, kwargs = [], [], []
    try:
        with torch.no_grad():
            for i in range(0, windows.shape[0], batch_size):
                ids = windows[i : i + batch_size].to(dev)
                try:
                    model(input_ids=ids, use_cache=False)
                except _Caught as c:
                    kw = {k: v for k, v in c.kwargs.items() if k not in ("past_key_values", "past_key_value", "layer_past")}
                    kw["use_cache"] = False
                    hidden.append(c.hidden)
                    args.append(c.args)
                    kwargs.append(kw)
                else:  # pragma: no cover
                    raise RuntimeError("model forward did not reach its first decoder block")
    finally:
        blocks[0] = first
    return BlockInputs(hidden, args, kwargs)


def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs):
            out = block(h, *a, **kw)
            outs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outs


def _check_finite(tensors: list[torch.Tensor], where: str) -> None:
    for t in tensors:
        if not bool(torch.isfinite(t).all()):
            raise FloatingPointError(f"activations: NaN/Inf in {where}; nothing further was pruned")


_SYRK_BLOCK = 384  # column block of the symmetric Gram update; inputs at least twice as wide use it


def add_gram_(G: torch.Tensor, X: torch.Tensor) -> bool:
    """G += Xᵀ X for X (tokens, d_in). For wide inputs only the blocks on and above the diagonal are computed
    (G is symmetric: ~5/8 of the flops for d_in = 1536); returns True if the lower triangle then needs
    ``mirror_upper_`` (done once, after the last batch)."""
    d = X.shape[1]
    if d < 2 * _SYRK_BLOCK:
        G.addmm_(X.t(), X)
        return False
    for i in range(0, d, _SYRK_BLOCK):
        j = min(i + _SYRK_BLOCK, d)
        G[i:j, i:].addmm_(X[:, i:j].t(), X[:, i:])  # (b, d - i): row block i, its diagonal block and right of it
    return True


def mirror_upper_(G: torch.Tensor) -> None:
    """Copy the strict upper triangle of a square G onto its lower triangle, in place."""
    low = torch.tril_indices(G.shape[0], G.shape[0], -1, device=G.device)
    G[low[0], low[1]] = G[low[1], low[0]]


class _StopForward(Exception):
    """Raised by the last Gram hook of a batch when the block's outputs are not needed."""


class GramCollector:
    """Forward pre-hooks that accumulate G = Σ x xᵀ (float32) once per distinct input tensor.

    Linears fed the very same tensor (q/k/v; gate/up) are detected on the first batch by storage identity
    (the first batch's inputs are held, so an address cannot be reused) and share one Gram.
    ``stop_early``: once every linear has seen its input in a batch, the rest of that forward is skipped
    (raises ``_StopForward``; the linear itself and what follows it are not computed).
    """

    def __init__(self, linears: dict[str, Linear], share: bool = True, stop_early: bool = False):
        self.linears = linears
        self.share = share  # False: one Gram per linear, as the reference code (benchmarks only)
        self.stop_early = stop_early
        self._seen: set[str] = set()  # linears hooked in the current batch
        self.leader: dict[str, str] = {}  # name -> name of the linear whose Gram it shares
        self.G: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = {}
        self.order: list[str] = []  # call order of the linears
        self._upper_only: set[str] = set()  # Grams accumulated as upper triangles (mirrored on exit)
        self.seconds = 0.0
        self._first_batch: dict[str, torch.Tensor] | None = {}
        self._handles = []
        self._batch = 0

    def __enter__(self):
        for name, lin in self.linears.items():
            self._handles.append(lin.module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._first_batch = None
        for name in self._upper_only:
            mirror_upper_(self.G[name])
        self._upper_only.clear()

    def next_batch(self) -> None:
        self._batch += 1
        self._seen.clear()
        if self._batch == 1:
            self._first_batch = None

    def _hook(self, name: str):
        def hook(module, args):
            t0 = time.perf_counter()
            x = args[0]
            if self._first_batch is not None:
                self.order.append(name)
                for other, t in (self._first_batch.items() if self.share else ()):
                    if t.data_ptr() == x.data_ptr() and t.shape == x.shape and t.stride() == x.stride():
                        self.leader[name] = self.leader.get(other, other)
                        break
                else:
                    self.leader[name] = name
                self._first_batch[name] = x
            lead = self.leader.get(name, name)
            if lead == name:
                X = x.reshape(-1, x.shape[-1]).to(torch.float32)  # (tokens, d_in)
                if name not in self.G:
                    self.G[name] = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float32, device=X.device)
                    self.n[name] = 0
                if add_gram_(self.G[name], X):
                    self._upper_only.add(name)
                self.n[name] += X.shape[0]
            self.seconds += time.perf_counter() - t0
            self._seen.add(name)
            if self.stop_early and len(self._seen) == len(self.linears):
                raise _StopForward

        return hook

    def gram(self, name: str) -> tuple[torch.Tensor, int]:
        lead = self.leader[name]
        return self.G[lead], self.n[lead]

    def groups(self) -> list[list[str]]:
        """Linears grouped by shared input, in call order."""
        out: dict[str, list[str]] = {}
        for name in self.order:
            out.setdefault(self.leader[name], []).append(name)
        return list(out.values())


def collect_grams(block: nn.Module, linears: dict[str, Linear], inputs: BlockInputs,
                  share: bool = True, need_outputs: bool = True) -> tuple[GramCollector, list[torch.Tensor]]:
    """Dense run of ``block`` with Gram hooks on ``linears``; returns the collector and the block outputs.

    ``need_outputs=False``: each forward stops once the last of ``linears`` has seen its input (the pipeline's
    statistics pass: the dense outputs are never used, so e.g. down_proj's product is skipped); outputs = [].
    """
    col = GramCollector(linears, share, stop_early=not need_outputs)
    outs = []
    with col, torch.no_grad():
        for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs):
            try:
                out = block(h, *a, **kw)
            except _StopForward:
                pass
            else:
                outs.append(out[0] if isinstance(out, (tuple, list)) else out)
            finally:
                col.next_batch()
    missing = [n for n in linears if n not in col.leader]
    if missing:
        raise RuntimeError(f"linears {missing} were never called in the block forward; cannot collect statistics")
    return col, outs


def capture_layer_problems(
    model: nn.Module,
    tokenizer=None,
    windows: torch.Tensor | None = None,
    blocks: list[int] | None = None,
    names: list[str] | None = None,
    device=None,
    batch_size: int = 8,
) -> dict[tuple[int, str], LayerProblem]:
    """Dense statistics of chosen layers: {(block, name): LayerProblem(W fp32, G fp32, n_tokens)}.

    The model is not modified; blocks are run densely in order up to the last requested one.
    ``device``: where the returned tensors live (default: the model's device).
    """
    if windows is None:
        raise ValueError("windows: calibration token windows (n, seqlen) are required")
    _, all_blocks = find_blocks(model)
    wanted = sorted(set(range(len(all_blocks)) if blocks is None else blocks))
    if any(b < 0 or b >= len(all_blocks) for b in wanted):
        raise ValueError(f"blocks: allowed 0..{len(all_blocks) - 1}, got {blocks}")
    inputs = capture_inputs(model, windows, batch_size)
    out: dict[tuple[int, str], LayerProblem] = {}
    for b in range(wanted[-1] + 1):
        block = all_blocks[b]
        if b in wanted:
            lins = block_linears(block)
            if names is not None:
                unknown = sorted(set(names) - set(lins))
                if unknown:
                    raise ValueError(f"names: {unknown} not in block {b}; allowed: {', '.join(lins)}")
                lins = {n: lins[n] for n in names}
            col, outs = collect_grams(block, lins, inputs)
            for n, lin in lins.items():
                G, ntok = col.gram(n)
                dev = device or G.device
                out[(b, n)] = LayerProblem(W=lin.get_weight().detach().to(dev, torch.float32, memory_format=torch.contiguous_format, copy=True), G=G.to(dev), n_tokens=ntok, name=f"{b}.{n}")
        else:
            outs = run_block(block, inputs)
        inputs = BlockInputs(outs, inputs.args, inputs.kwargs)
    return out


@dataclass
class BlockJob:
    """What a block-level solver (kind='block', e.g. SparseLLM) receives for one decoder block."""

    index: int
    block: nn.Module
    inputs: BlockInputs
    linears: dict[str, Linear]
    grams: dict[str, tuple[torch.Tensor, int]]
    pattern: object
    sparsity: float
    options: dict
    ctx: SolveContext
    check_cancel: Callable[[], None]


@dataclass
class PruneResult:
    layers: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sparsity: float = 0.0
    n_blocks: int = 0

    def to_dict(self) -> dict:
        return {"layers": self.layers, "timings": self.timings, "warnings": self.warnings, "sparsity": self.sparsity, "n_blocks": self.n_blocks}


def validate_model_for_pattern(model: nn.Module, pattern) -> None:
    """Reject non-finite weights and an N:M pattern that does not tile some input width, before anything is touched."""
    pat = parse_pattern(pattern)
    _, blocks = find_blocks(model)
    for b, blk in enumerate(blocks):
        for name, lin in block_linears(blk).items():
            if not bool(torch.isfinite(lin.get_weight()).all()):
                raise ValueError(f"weights: NaN/Inf in block {b} {name}; a model with non-finite weights cannot be pruned")
    if pat.is_nm:
        bad = sorted({f"{name} (d_in={lin.shape[1]})" for blk in blocks for name, lin in block_linears(blk).items() if lin.shape[1] % pat.m})
        if bad:
            raise ValueError(f"pattern: {pat} needs every input width to be a multiple of {pat.m}; not so for {', '.join(bad)}")


def prune_model(
    model: nn.Module,
    tokenizer,
    config,
    on_event: EventSink | None = None,
    cancel: threading.Event | None = None,
    windows: torch.Tensor | None = None,
) -> dict:
    """Prune ``model`` in place with ``config`` (a PruneConfig); returns the report dict.

    On cancel (``cancel`` set) raises events.Cancelled, on failure re-raises; in both cases every weight is
    restored first, so the model is exactly as given.
    """
    emit = on_event or (lambda e: None)
    cancel = cancel or threading.Event()
    pattern = parse_pattern(config.pattern)
    validate_model_for_pattern(model, pattern)
    spec = SOLVERS.get(config.solver)
    s_opts, u_opts = config.solver_options()
    timings = {"capture": 0.0, "calibration_forward": 0.0, "statistics": 0.0, "solve": 0.0, "propagate": 0.0}
    t_start = time.perf_counter()
    if windows is None:
        from .data import calibration_windows

        c = config.calib
        windows = calibration_windows(tokenizer, source=c.source, nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed)
    _, blocks = find_blocks(model)
    n_blocks = len(blocks)
    n_layers = sum(len(block_linears(b)) for b in blocks)
    emit(JobStarted(n_blocks=n_blocks, n_layers=n_layers, config=config.to_dict()))
    emit(PhaseStarted("calibrate", f"{windows.shape[0]} windows × {windows.shape[1]} tokens"))
    result = PruneResult(n_blocks=n_blocks)
    saved: list[tuple[Linear, torch.Tensor]] = []

    def check_cancel():
        if cancel.is_set():
            raise Cancelled("cancelled by the user")

    def warn(msg: str):
        result.warnings.append(msg)
        emit(WarningEvent(msg))

    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        inputs = capture_inputs(model, windows, config.batch_size)
        _check_finite(inputs.hidden, "the inputs of block 0")
        timings["capture"] += time.perf_counter() - t0
        emit(PhaseStarted("prune", f"{n_blocks} blocks"))
        for b, block in enumerate(blocks):
            check_cancel()
            tb = time.perf_counter()
            emit(BlockStarted(block=b, n_blocks=n_blocks))
            linears = block_linears(block)
            groups = [list(linears)]
            if config.true_sequential:
                probe, _ = collect_grams(block, linears, BlockInputs(inputs.hidden[:1], inputs.args[:1], inputs.kwargs[:1]),
                                         need_outputs=False)
                groups = probe.groups()
            for gi, group in enumerate(groups):
                check_cancel()
                sub = {n: linears[n] for n in group}
                t0 = time.perf_counter()
                col, _ = collect_grams(block, sub, inputs, need_outputs=False)
                elapsed = time.perf_counter() - t0
                timings["statistics"] += col.seconds
                timings["calibration_forward"] += elapsed - col.seconds
                grams = {n: col.gram(n) for n in group}
                memo: dict = {}  # Gram-derived values shared by the group's layers (SolveContext.memo)
                t0 = time.perf_counter()

                def on_iter_for(name):
                    return lambda rec: emit(IterationDone(block=b, name=name, iteration=int(rec.get("iter", 0)), values=dict(rec)))

                if spec.kind == "block" and spec.block_fn is not None:
                    job = BlockJob(b, block, inputs, sub, grams, pattern, config.sparsity, s_opts, SolveContext(None, warn), check_cancel)
                    solutions = spec.block_fn(job)
                    for name in group:
                        _write(sub[name], solutions[name], saved)
                        _record(result, emit, b, name, solutions[name])
                else:
                    for name in group:
                        check_cancel()
                        lin = sub[name]
                        G, ntok = grams[name]
                        W = lin.get_weight().detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                        problem = LayerProblem(W=W, G=G, n_tokens=ntok, name=f"{b}.{name}")
                        sol = solve(problem, config.solver, pattern, config.sparsity, s_opts, config.update, u_opts,
                                    SolveContext(on_iter_for(name), warn, memo))
                        _write(lin, sol, saved)
                        _record(result, emit, b, name, sol)
                timings["solve"] += time.perf_counter() - t0
                del col, grams, memo
            t0 = time.perf_counter()
            outs = run_block(block, inputs)
            _check_finite(outs, f"the outputs of pruned block {b}")
            inputs = BlockInputs(outs, inputs.args, inputs.kwargs)
            timings["propagate"] += time.perf_counter() - t0
            emit(BlockDone(block=b, n_blocks=n_blocks, seconds=time.perf_counter() - tb))
    except BaseException:
        for lin, w in reversed(saved):
            lin.set_weight(w)
        raise
    finally:
        model.train(was_training)
    timings["total"] = time.perf_counter() - t_start
    result.timings = {k: round(v, 4) for k, v in timings.items()}
    zeros = sum(l["zeros"] for l in result.layers)
    total = sum(l["numel"] for l in result.layers)
    result.sparsity = zeros / total if total else 0.0
    return result.to_dict()


def _write(lin: Linear, sol: LayerSolution, saved: list) -> None:
    saved.append((lin, lin.get_weight().detach().clone()))
    lin.set_weight(sol.weight)


def _record(result: PruneResult, emit: EventSink, b: int, name: str, sol: LayerSolution) -> None:
    W = sol.weight
    zeros = int((W == 0).sum())
    rec = {"block": b, "name": name, "rel_error": float(sol.rel_error), "sparsity": zeros / W.numel(),
           "seconds": round(sol.seconds, 5), "zeros": zeros, "numel": W.numel()}
    if sol.info:
        rec["info"] = {k: v for k, v in sol.info.items() if isinstance(v, (int, float, str, bool))}
    result.layers.append(rec)
    emit(LayerSolved(block=b, name=name, rel_error=rec["rel_error"], seconds=rec["seconds"], sparsity=rec["sparsity"]))
