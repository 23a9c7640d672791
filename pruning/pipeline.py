"""Sequential block-by-block pruning (docs/algorithms.md, "The pipeline"), written once for every model family.

1. capture the inputs of block 0 (and the keyword arguments the model passes to its blocks);
2. for each block: run it densely with hooks that accumulate one Gram G = Σ x xᵀ (float32) per distinct
   input (q/k/v share one, gate/up share one), solve every linear, write the pruned weights;
3. re-run the pruned block; its outputs are the next block's inputs.

Mixture-of-experts blocks: every expert's gate/up/down slice of the fused expert parameters is a layer of the
per-layer path, with Grams of the tokens the router sent to it (``pruning.moe``). Models whose blocks get different
keyword arguments (Gemma's sliding-window and global layers) have each block's arguments recorded. The report's
``sparsity`` is measured over every weight matrix of the blocks (``weight_accounting``); whatever stays dense is
named in a warning before anything is pruned (``dense_warnings``).

Forwards are batched (``batch_size`` windows at a time, not batch 1 as the reference code) and may run in
bf16/fp16 while statistics and solver maths stay float32. Optional true-sequential mode re-runs the block
before each group of linears that share an input, so later groups see the pruned earlier ones.

A block solver (kind 'block', e.g. SparseLLM) gets what its spec ``needs`` gathered here (``capture_io``: the FFN's
input and output activations) as a plain ``BlockProblem``; the pipeline computes the errors, wraps the solutions and
runs the layers the block solver does not cover (or declines) through the normal per-layer path.

Cancellation is cooperative (checked before every layer); on cancel or failure every weight written so far
is restored, so the model the caller passed in is left exactly as it was.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .blocks import (FFN, KINDS, Linear, ModelStructureError, block_linears, find_blocks, find_ffn, model_device,
                     weight_inventory)
from .moe import ExpertLinear, ExpertStats, FusedExperts, find_experts, fused_param_names
from .errors import InputError, NumericalError
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
from .patterns import PatternError, parse_pattern
from .solve import LayerSolution, rel_error, solve
from .solvers import SOLVERS, BlockProblem, LayerProblem, SolveContext

EventSink = Callable[[Event], None]


class _Caught(Exception):
    def __init__(self, hidden, args, kwargs):
        super().__init__()
        self.hidden, self.args, self.kwargs = hidden, args, kwargs


class _Catcher(nn.Module):
    """Stands in for a block to record what the model passes to it. The catcher of the last block to record aborts
    the forward (``_Caught``); the others record and pass the hidden states on unchanged."""

    def __init__(self, block: nn.Module, record: list | None = None):
        super().__init__()
        self.block = block
        self._record = record  # None: abort here

    def forward(self, hidden, *args, **kwargs):
        if self._record is None:
            raise _Caught(hidden, args, kwargs)
        self._record.append((hidden, args, _block_kwargs(kwargs)))
        return hidden

    def __getattr__(self, name):  # models read attributes of their layers (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)


def _block_kwargs(kwargs: dict) -> dict:
    kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "layer_past")}
    kw["use_cache"] = False
    return kw


@dataclass
class BlockInputs:
    """Hidden states entering the current block, batched, with the block call's extra arguments.

    ``per_block``: for models whose blocks get different keyword arguments (Gemma 2/3: sliding-window and global
    layers get their own attention mask and rotary embedding), {id(block): [kwargs per batch]}; a block not in it
    gets ``kwargs`` (what block 0 got). Use ``kwargs_for(block)``; ``next(outs)`` keeps it for the next block."""

    hidden: list[torch.Tensor]  # one (B, seqlen, hidden) tensor per batch
    args: list[tuple]
    kwargs: list[dict]
    per_block: dict | None = None

    def kwargs_for(self, block: nn.Module) -> list[dict]:
        if self.per_block and id(block) in self.per_block:
            return self.per_block[id(block)][: len(self.hidden)]
        return self.kwargs

    def next(self, outs: list[torch.Tensor]) -> "BlockInputs":
        """The same call arguments with new hidden states (a block's outputs, the next block's inputs)."""
        return BlockInputs(outs, self.args, self.kwargs, self.per_block)

    def head(self, n: int) -> "BlockInputs":
        """The first ``n`` batches."""
        per = {k: v[:n] for k, v in self.per_block.items()} if self.per_block else None
        return BlockInputs(self.hidden[:n], self.args[:n], self.kwargs[:n], per)


def _mixed_layer_types(model: nn.Module) -> bool:
    """Do the blocks get different call arguments (config ``layer_types`` with more than one type)?"""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(cfg, "layer_types", None) or []
    return len(set(types)) > 1


def capture_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int) -> BlockInputs:
    """Run the model up to block 0 on every batch of windows and record the block-0 inputs (and, for models with
    several layer types, every block's keyword arguments: ``BlockInputs.per_block``)."""
    _, blocks = find_blocks(model)
    dev = model_device(model)
    originals = list(blocks)
    n = len(blocks)
    records = [[] for _ in range(n - 1)] if n > 1 and _mixed_layer_types(model) else None
    for i in range(n if records is not None else 1):  # the last catcher (or block 0's alone) aborts the forward
        blocks[i] = _Catcher(originals[i], records[i] if records is not None and i < n - 1 else None)
    hidden, args, kwargs, last = [], [], [], []
    try:
        with torch.no_grad():
            for i in range(0, windows.shape[0], batch_size):
                ids = windows[i : i + batch_size].to(dev)
                try:
                    model(input_ids=ids, use_cache=False)
                except _Caught as c:
                    if records is None:
                        hidden.append(c.hidden)
                        args.append(c.args)
                        kwargs.append(_block_kwargs(c.kwargs))
                    else:
                        h0, a0, k0 = records[0][-1]
                        hidden.append(h0)
                        args.append(a0)
                        kwargs.append(k0)
                        last.append(_block_kwargs(c.kwargs))
                else:  # pragma: no cover
                    raise ModelStructureError("model: the forward did not reach its first decoder block")
    finally:
        for i, blk in enumerate(originals):
            blocks[i] = blk
    if records is None:
        return BlockInputs(hidden, args, kwargs)
    per = [[r[2] for r in rec] for rec in records] + [last]
    return BlockInputs(hidden, args, kwargs, {id(blk): kw for blk, kw in zip(originals, per)})


def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs_for(block)):
            out = block(h, *a, **kw)
            outs.append(out[0] if isinstance(out, (tuple, list)) else out)
    return outs


def _check_finite(tensors: list[torch.Tensor], where: str) -> None:
    for t in tensors:
        if not bool(torch.isfinite(t).all()):
            raise NumericalError(f"activations: NaN/Inf in {where}; nothing further was pruned")


SYRK_BLOCK = 384  # column block of the symmetric Gram update; inputs at least twice as wide use it
_SYRK_BLOCK = SYRK_BLOCK  # old name


def gram_flops(d: int) -> float:
    """Flops per token of ``add_gram_`` for an input of width d: 2·d² for narrow inputs, only the blocks on and
    above the diagonal for wide ones (nb(nb+1)/2 of nb² blocks, nb = ⌈d / SYRK_BLOCK⌉; 5/8 for d = 1536)."""
    if d < 2 * SYRK_BLOCK:
        return 2.0 * d * d
    nb = -(-d // SYRK_BLOCK)
    return 2.0 * d * d * (nb + 1) / (2 * nb)


def add_gram_(G: torch.Tensor, X: torch.Tensor) -> bool:
    """G += Xᵀ X for X (tokens, d_in). For wide inputs only the blocks on and above the diagonal are computed
    (G is symmetric: ~5/8 of the flops for d_in = 1536); returns True if the lower triangle then needs
    ``mirror_upper_`` (done once, after the last batch)."""
    d = X.shape[1]
    if d < 2 * SYRK_BLOCK:
        G.addmm_(X.t(), X)
        return False
    for i in range(0, d, SYRK_BLOCK):
        j = min(i + SYRK_BLOCK, d)
        G[i:j, i:].addmm_(X[:, i:j].t(), X[:, i:])  # (b, d - i): row block i, its diagonal block and right of it
    return True


def mirror_upper_(G: torch.Tensor) -> None:
    """Copy the strict upper triangle of a square G onto its lower triangle, in place."""
    for i in range(0, G.shape[0], SYRK_BLOCK):  # row block i: no index tensors (tril_indices of a 5632-wide Gram: 254 MB)
        j = min(i + SYRK_BLOCK, G.shape[0])
        G[i:j, :i] = G[:i, i:j].t()
        diag = G[i:j, i:j]
        diag.copy_(torch.triu(diag) + torch.triu(diag, 1).t())


class _StopForward(Exception):
    """Raised by the last Gram hook of a batch when the block's outputs are not needed."""


class GramCollector:
    """Forward pre-hooks that accumulate G = Σ x xᵀ (float32) once per distinct input tensor.

    Linears fed the very same tensor (q/k/v; gate/up) are detected on the first batch by storage identity
    (the first batch's inputs are held, so an address cannot be reused) and share one Gram.
    ``stop_early``: once every linear has seen its input in a batch, the rest of that forward is skipped
    (raises ``_StopForward``; the linear itself and what follows it are not computed).
    """

    def __init__(self, linears: dict[str, Linear], stop_early: bool = False):
        self.linears = linears
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

    def _find_leader(self, name: str, x: torch.Tensor) -> str:
        """The linear (seen earlier in the first batch) fed the very same tensor as ``name``, else ``name``."""
        for other, t in self._first_batch.items():
            if t.data_ptr() == x.data_ptr() and t.shape == x.shape and t.stride() == x.stride():
                return self.leader.get(other, other)
        return name

    def _hook(self, name: str):
        def hook(module, args):
            t0 = time.perf_counter()
            x = args[0]
            if self._first_batch is not None:
                self.order.append(name)
                self.leader[name] = self._find_leader(name, x)
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
                  need_outputs: bool = True) -> tuple[GramCollector, list[torch.Tensor]]:
    """Dense run of ``block`` with Gram hooks on ``linears``; returns the collector and the block outputs.

    ``need_outputs=False``: each forward stops once the last of ``linears`` has seen its input (the pipeline's
    statistics pass: the dense outputs are never used, so e.g. down_proj's product is skipped); outputs = [].
    """
    col = GramCollector(linears, stop_early=not need_outputs)
    outs = []
    with col, torch.no_grad():
        for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs_for(block)):
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
        raise ModelStructureError(f"linears {missing} were never called in the block forward; cannot collect statistics")
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
        raise InputError("windows: calibration token windows (n, seqlen) are required")
    _, all_blocks = find_blocks(model)
    wanted = sorted(set(range(len(all_blocks)) if blocks is None else blocks))
    if any(b < 0 or b >= len(all_blocks) for b in wanted):
        raise InputError(f"blocks: allowed 0..{len(all_blocks) - 1}, got {blocks}")
    inputs = capture_inputs(model, windows, batch_size)
    out: dict[tuple[int, str], LayerProblem] = {}
    for b in range(wanted[-1] + 1):
        block = all_blocks[b]
        if b in wanted:
            lins = block_linears(block)
            if names is not None:
                unknown = sorted(set(names) - set(lins))
                if unknown:
                    raise InputError(f"names: {unknown} not in block {b}; allowed: {', '.join(lins)}")
                lins = {n: lins[n] for n in names}
            col, outs = collect_grams(block, lins, inputs)
            for n, lin in lins.items():
                G, ntok = col.gram(n)
                dev = device or G.device
                out[(b, n)] = LayerProblem(W=lin.get_weight().detach().to(dev, torch.float32, memory_format=torch.contiguous_format, copy=True), G=G.to(dev), n_tokens=ntok, name=f"{b}.{n}")
        else:
            outs = run_block(block, inputs)
        inputs = inputs.next(outs)
    return out


def capture_io(block: nn.Module, inputs: BlockInputs, first: Linear, last: Linear,
               max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run ``block`` on ``inputs`` with two hooks: X = the input of ``first``, Y = the output of ``last``.

    Returns (X (T, d_in of first), Y (T, d_out of last), float32, total tokens). Above ``max_tokens`` an evenly
    spaced subset of T = max_tokens tokens is kept (selected inside the hooks, so memory stays bounded).
    A hook collector like ``GramCollector``; the block is not modified.
    """
    total = sum(h.numel() // h.shape[-1] for h in inputs.hidden)
    keep = None
    if max_tokens is not None and total > max_tokens:
        keep = torch.linspace(0, total - 1, max_tokens, dtype=torch.float64).round().long()
    Xs: list[torch.Tensor] = []
    Ys: list[torch.Tensor] = []
    offs = {"x": 0, "y": 0}

    def take(t: torch.Tensor, key: str) -> torch.Tensor:
        t = t.reshape(-1, t.shape[-1])
        o = offs[key]
        offs[key] = o + t.shape[0]
        if keep is None:
            return t.to(torch.float32, copy=True)
        sel = keep[(keep >= o) & (keep < o + t.shape[0])] - o
        return t[sel.to(t.device)].to(torch.float32)

    h1 = first.module.register_forward_pre_hook(lambda m, a: Xs.append(take(a[0], "x")))
    h2 = last.module.register_forward_hook(lambda m, a, out: Ys.append(take(out, "y")))
    try:
        run_block(block, inputs)
    finally:
        h1.remove()
        h2.remove()
    X, Y = torch.cat(Xs), torch.cat(Ys)
    if X.shape[0] != Y.shape[0]:
        raise ModelStructureError(f"captured {X.shape[0]} inputs of {first.name} but {Y.shape[0]} outputs of {last.name}")
    return X, Y, total


@dataclass
class PruneResult:
    layers: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sparsity: float = 0.0  # zeros over every weight matrix of the decoder blocks (``weight_accounting``)
    n_blocks: int = 0
    sparsity_pruned_layers: float = 0.0  # zeros over the layers the solver pruned
    sparsity_by_kind: dict = field(default_factory=dict)  # kind -> {"zeros", "numel", "sparsity"}
    experts: list[dict] = field(default_factory=list)  # MoE: one record per expert (tokens routed, how pruned)

    def to_dict(self) -> dict:
        return {"layers": self.layers, "timings": self.timings, "warnings": self.warnings, "sparsity": self.sparsity,
                "sparsity_pruned_layers": self.sparsity_pruned_layers, "sparsity_by_kind": self.sparsity_by_kind,
                "experts": self.experts, "n_blocks": self.n_blocks}


def prunable_layers(block: nn.Module) -> dict[str, Linear | ExpertLinear]:
    """Every layer of a block the pipeline prunes: its linears (routers excluded) and, in a mixture-of-experts
    block, every expert's gate/up/down slice of the fused expert parameters (``pruning.moe``)."""
    out: dict = dict(block_linears(block))
    for fe in find_experts(block)[0]:
        out.update(fe.linears())
    return out


def _pruned_params(block: nn.Module) -> set[str]:
    """Names (relative to the block) of the parameters the pipeline prunes in ``block``."""
    names = {f"{n}.weight" for n in block_linears(block)}
    for fe in find_experts(block)[0]:
        names.update(fe.param_names)
    return names


def block_weight_counts(block: nn.Module) -> dict[str, list[int]]:
    """kind -> [zeros, numel] over every weight matrix of one decoder block (see ``weight_accounting``)."""
    acc = {k: [0, 0] for k in KINDS}
    with torch.no_grad():
        mats, _ = weight_inventory(block, fused_param_names(block))
        for kind, p in mats.values():
            acc[kind][0] += int((p == 0).sum())
            acc[kind][1] += p.numel()
    return acc


def weight_accounting(blocks=None, counts=None) -> tuple[float, dict]:
    """(sparsity, by kind) measured on the model: zeros over every weight matrix of the decoder blocks (every
    parameter with 2 or more dimensions: linears, fused experts, routers; norms and biases excluded), and the same
    per kind (attention / mlp / experts / router / other: {"zeros", "numel", "sparsity"}). ``counts``: the blocks'
    ``block_weight_counts`` taken already (an offloaded block is counted while it is onloaded)."""
    counts = counts if counts is not None else [block_weight_counts(blk) for blk in blocks]
    acc = {k: [sum(c[k][0] for c in counts), sum(c[k][1] for c in counts)] for k in KINDS}
    by_kind = {k: {"zeros": z, "numel": n, "sparsity": z / n} for k, (z, n) in acc.items() if n}
    zeros, total = sum(v[0] for v in acc.values()), sum(v[1] for v in acc.values())
    return (zeros / total if total else 0.0), by_kind


def _blocks_label(bs: list[int], n_blocks: int) -> str:
    if len(bs) == n_blocks:
        return "every block"
    return "block " + ", ".join(map(str, bs)) if len(bs) == 1 else "blocks " + ", ".join(map(str, bs))


def dense_warnings(blocks) -> list[str]:
    """What stays dense, named before anything is pruned: one message for the tensors dense by design (norms and
    biases, not counted in the sparsity; MoE routers, counted), one per weight matrix the pipeline cannot prune."""
    by_design: dict[str, list[int]] = {}
    routers: dict[str, list[int]] = {}
    unpruned: dict[str, list[int]] = {}
    for b, blk in enumerate(blocks):
        pruned = _pruned_params(blk)
        mats, vecs = weight_inventory(blk, fused_param_names(blk))
        for n in vecs:
            by_design.setdefault(n, []).append(b)
        for n, (kind, _) in mats.items():
            if n in pruned:
                continue
            (routers if kind == "router" else unpruned).setdefault(n, []).append(b)
    out = []
    for n, bs in unpruned.items():
        out.append(f"not pruned: {n} in {_blocks_label(bs, len(blocks))} is a weight tensor the pipeline cannot prune "
                   "(no nn.Linear / fused-experts layout it knows); it stays dense and counts as dense in the sparsity")
    if by_design or routers:
        parts = []
        if by_design:
            parts.append("norms and biases (not counted in the sparsity): " + ", ".join(by_design))
        if routers:
            parts.append("mixture-of-experts routers (counted in the sparsity): " + ", ".join(routers))
        out.append("left dense by design in every block: " + "; ".join(parts))
    return out


def validate_model_for_pattern(model: nn.Module, pattern) -> None:
    """Reject non-finite weights and an N:M pattern that does not tile some input width, before anything is touched."""
    pat = parse_pattern(pattern)
    _, blocks = find_blocks(model)
    for b, blk in enumerate(blocks):
        for name, lin in prunable_layers(blk).items():
            w = lin.get_weight()
            if not w.is_meta and not bool(torch.isfinite(w).all()):  # offloaded blocks: checked when onloaded
                raise InputError(f"weights: NaN/Inf in block {b} {name}; a model with non-finite weights cannot be pruned")
    if pat.is_nm:
        bad = sorted({f"{name} (d_in={lin.shape[1]})" for blk in blocks for name, lin in prunable_layers(blk).items() if lin.shape[1] % pat.m})
        if bad:
            raise PatternError(f"pattern: {pat} needs every input width to be a multiple of {pat.m}; not so for {', '.join(bad)}")


@dataclass
class Timings:
    """Seconds per pipeline phase, accumulated over blocks: ``with timings.phase("solve"): ...``."""

    capture: float = 0.0
    calibration_forward: float = 0.0
    statistics: float = 0.0
    solve: float = 0.0
    propagate: float = 0.0
    allocation: float = 0.0  # the dense pass of a non-uniform allocation (reported only when one ran)

    class _Phase:
        def __init__(self, owner: "Timings", name: str):
            self.owner, self.name = owner, name

        def __enter__(self):
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            self.seconds = time.perf_counter() - self.t0
            self.owner.add(self.name, self.seconds)

    def phase(self, name: str) -> "Timings._Phase":
        return Timings._Phase(self, name)

    def add(self, name: str, seconds: float) -> None:
        setattr(self, name, getattr(self, name) + seconds)

    def to_dict(self, total: float) -> dict:
        d = {k: getattr(self, k) for k in ("capture", "calibration_forward", "statistics", "solve", "propagate")}
        if self.allocation:
            d["allocation"] = self.allocation
        d["total"] = total
        return {k: round(v, 4) for k, v in d.items()}


@dataclass
class _Run:
    """What the per-block helpers of ``prune_model`` share: the config, resolved, and the callbacks."""

    config: object
    spec: object
    pattern: object
    s_opts: dict
    u_opts: dict
    emit: EventSink
    warn: Callable[[str], None]
    check_cancel: Callable[[], None]
    result: "PruneResult"
    saved: list | None  # (linear, weight before) per write; None when an offload store keeps the originals
    timings: Timings
    targets: dict | None = None  # (block, name) -> sparsity, from the allocation (None: every layer at config.sparsity)
    experts: dict = field(default_factory=dict)  # (block, expert name) -> its record in result.experts


def _groups(block: nn.Module, linears: dict[str, Linear], inputs: BlockInputs, true_sequential: bool) -> list[list[str]]:
    """The block's linears in solve groups: all together, or (true-sequential) one group per shared input, found by
    a probe of the first batch."""
    if not true_sequential:
        return [list(linears)]
    probe, _ = collect_grams(block, linears, inputs.head(1),
                             need_outputs=False)
    return probe.groups()


def _solve_layers(run: _Run, b: int, names: list[str], sub: dict[str, Linear], grams: dict, memo: dict) -> None:
    """The per-layer path: each linear of ``names`` solved by the config's solver (+ update) on its own, then
    written and recorded at once (so a cancel takes effect before the next layer)."""
    cfg = run.config
    for name in names:
        run.check_cancel()
        G, ntok = grams[name]
        W = sub[name].get_weight().detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        problem = LayerProblem(W=W, G=G, n_tokens=ntok, name=f"{b}.{name}")

        def on_iter(rec, name=name):
            run.emit(IterationDone(block=b, name=name, iteration=int(rec.get("iter", 0)), values=dict(rec)))

        target = run.targets[(b, name)] if run.targets else cfg.sparsity
        sol = solve(problem, cfg.solver, run.pattern, target, run.s_opts, cfg.update, run.u_opts,
                    SolveContext(on_iter, run.warn, memo))
        _write(sub[name], sol, run.saved)
        _record(run.result, run.emit, b, name, sol, target if run.targets else None)
        del problem, sol, W, G
        _release_gram(grams, memo, name, names[names.index(name) + 1:] + [n for n in grams if n not in names])


def _release_gram(grams: dict, memo: dict, name: str, rest: list[str]) -> None:
    """Drop ``name``'s Gram and what the memo derived from it once no linear in ``rest`` (those still to be solved in
    this group, by this path or another) shares it, so the solve of a block's last (widest) linear does not hold
    every other Gram of the block (down_proj after q/k/v, o, gate/up)."""
    G = grams[name][0]
    if any(grams[n][0] is G for n in rest if n in grams):
        return
    for n in [n for n in grams if grams[n][0] is G]:
        del grams[n]
    for key in [k for k in memo if isinstance(k, tuple) and len(k) > 1 and k[1] == id(G)]:
        del memo[key]


def ffn_problem(block: nn.Module, inputs: BlockInputs, linears: dict[str, Linear], grams: dict, ffn: FFN,
                max_tokens: int | None = None, index: int = 0, check_cancel: Callable[[], None] = lambda: None) -> BlockProblem:
    """The ``BlockProblem`` of ``block``'s FFN: dense float32 copies of its weights and biases, its Grams
    (``grams[name] = (G, n_tokens)`` as ``GramCollector.gram``) and its input/output on ``inputs`` (``capture_io``),
    on the weights' device. The block is run densely as it is now (call it before writing any of its linears)."""
    W0 = {n: linears[n].get_weight().detach().to(torch.float32).clone() for n in ffn.names}
    dev = W0[ffn.first].device
    bias = {}
    for n in ffn.names:
        bb = getattr(linears[n].module, "bias", None)
        bias[n] = None if bb is None else bb.detach().to(device=dev, dtype=torch.float32).clone()
    X, Y, total = capture_io(block, inputs, linears[ffn.first], linears[ffn.last], max_tokens)
    return BlockProblem(W=W0, bias=bias, grams={n: grams[n][0] for n in ffn.names}, X=X.to(dev), Y=Y.to(dev),
                        ffn=ffn, total_tokens=total, index=index, check_cancel=check_cancel)


def _ffn_for_block_solver(run: _Run, b: int, block: nn.Module, group: list[str]) -> FFN | None:
    """The FFN a block solver that needs ``ffn_io`` can couple in this group, or None (with a warning where a user
    should know why): no recognisable FFN, or a true-sequential group that holds only part of it."""
    name, lone = run.spec.name, run.spec.lone_layer or run.spec.name
    ffn, reason = find_ffn(block, list(block_linears(block)))
    if ffn is None:
        if group[0] == next(iter(block_linears(block))):  # once per block (the first group)
            run.warn(f"{name}: block {b}: {reason}; {lone} on every linear")
        return None
    present = [n for n in ffn.names if n in group]
    if len(present) != len(ffn.names):  # a true-sequential group: the FFN is split over several groups
        if ffn.first in present:
            run.warn(f"{name}: block {b}: true-sequential mode splits the FFN ({', '.join(ffn.names)}) over separate "
                     f"groups but {name} needs them together; {lone} on the FFN linears. Turn true_sequential off to "
                     f"couple them.")
        return None
    return ffn


def _solve_block(run: _Run, b: int, block: nn.Module, inputs: BlockInputs, group: list[str], sub: dict[str, Linear],
                 grams: dict, memo: dict) -> None:
    """A block solver on this group: the linears it couples through a ``BlockProblem``, the others (and every
    fallback: no FFN, split FFN, nothing to prune, the solver declining) through the per-layer path.

    The FFN's input and output are captured on the dense block first, before any linear of the group is written."""
    cfg, spec = run.config, run.spec
    ffn = _ffn_for_block_solver(run, b, block, group) if "ffn_io" in spec.needs else None
    if ffn is not None and not run.pattern.is_nm and cfg.sparsity == 0:
        ffn = None  # nothing to prune: the per-layer path returns the weights as they are
    if ffn is None:
        _solve_layers(run, b, group, sub, grams, memo)
        return
    cap = run.s_opts.get("max_tokens")
    problem = ffn_problem(block, inputs, sub, grams, ffn, None if cap is None else int(cap), b, run.check_cancel)
    W0 = problem.W
    _solve_layers(run, b, [n for n in group if n not in ffn.names], sub, grams, memo)
    t0 = time.perf_counter()
    outs = spec.block_fn(problem, run.pattern, cfg.sparsity, run.s_opts, SolveContext(None, run.warn))
    if outs is None:  # the solver declined (it has warned why): per-layer path for the FFN too
        _solve_layers(run, b, ffn.names, sub, grams, memo)
        return
    seconds = (time.perf_counter() - t0) / len(ffn.names)
    sols = {}
    for n in ffn.names:
        o = outs[n]
        W_hat = o.weight * o.mask
        if not bool(torch.isfinite(W_hat).all()):
            raise NumericalError(f"{spec.name}: produced NaN/Inf for layer {b}.{n}; nothing was written")
        sols[n] = LayerSolution(weight=W_hat, mask=o.mask, rel_error=rel_error(W0[n], W_hat, grams[n][0]), seconds=seconds,
                                trace=list(o.trace), info=dict(o.info))
    for n in ffn.names:
        _write(sub[n], sols[n], run.saved)
        _record(run.result, run.emit, b, n, sols[n])


def _solve_group(run: _Run, b: int, block: nn.Module, inputs: BlockInputs, linears: dict[str, Linear],
                 group: list[str], experts: list[FusedExperts] = (), which: tuple[str, ...] = ()) -> None:
    """Statistics pass for one group of linears (and, with ``experts``/``which``, the per-expert statistics of a
    mixture-of-experts block: ``moe.ExpertStats``), then solve, write and record every one of them."""
    run.check_cancel()
    sub = {n: linears[n] for n in group}
    stats = ExpertStats(list(experts), which) if experts and which else None
    t0 = time.perf_counter()
    with stats if stats is not None else contextlib.nullcontext():
        col, _ = collect_grams(block, sub, inputs, need_outputs=stats is not None)  # experts run after the linears
    elapsed = time.perf_counter() - t0
    extra = stats.seconds if stats is not None else 0.0
    run.timings.add("statistics", col.seconds + extra)
    run.timings.add("calibration_forward", elapsed - col.seconds - extra)
    grams = {n: col.gram(n) for n in group}
    del col  # the Grams live in ``grams`` only, and are released layer by layer (_release_gram)
    memo: dict = {}  # Gram-derived values shared by the group's layers (SolveContext.memo)
    with run.timings.phase("solve"):
        if group and run.spec.kind == "block" and run.spec.block_fn is not None:
            _solve_block(run, b, block, inputs, group, sub, grams, memo)
        elif group:
            _solve_layers(run, b, group, sub, grams, memo)
        if stats is not None:
            _solve_experts(run, b, stats)


def _solve_experts(run: _Run, b: int, stats: ExpertStats) -> None:
    """Every expert's layers of ``stats.roles()``, each with the Gram of the tokens routed to that expert; an expert
    that received no calibration token is pruned data-free by magnitude (with a warning naming it)."""
    cfg = run.config
    for fe in stats.experts:
        if not stats.calls[fe.name]:
            raise ModelStructureError(f"model: block {b}: the experts module {fe.name} was never called in the block "
                                      "forward; cannot collect its statistics")
        for e in range(fe.n_experts):
            ntok = stats.tokens(fe, e)
            key = (b, f"{fe.name}.{e}")
            if key not in run.experts:
                how = cfg.method if ntok else "magnitude (no calibration token)"
                run.experts[key] = {"block": b, "name": key[1], "tokens": ntok, "pruned": how}
                run.result.experts.append(run.experts[key])
                if not ntok:
                    run.warn(f"block {b}: expert {key[1]} received no calibration token (the router sent none of the "
                             "calibration tokens to it); pruned data-free by magnitude at the target sparsity. More "
                             "calibration windows (nsamples) would give it statistics.")
            memo: dict = {}  # one per expert Gram (gate and up share theirs)
            for role in stats.roles():
                run.check_cancel()
                lin = ExpertLinear(f"{fe.name}.{e}.{role}", fe, e, role)
                W = lin.get_weight().detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
                if role == "down_proj":
                    memo = {}
                if ntok:
                    problem = LayerProblem(W=W, G=stats.gram(fe, e, role), n_tokens=ntok, name=f"{b}.{lin.name}")

                    def on_iter(rec, name=lin.name):
                        run.emit(IterationDone(block=b, name=name, iteration=int(rec.get("iter", 0)), values=dict(rec)))

                    sol = solve(problem, cfg.solver, run.pattern, cfg.sparsity, run.s_opts, cfg.update, run.u_opts,
                                SolveContext(on_iter, run.warn, memo))
                else:
                    problem = LayerProblem(W=W, G=None, n_tokens=0, name=f"{b}.{lin.name}")
                    sol = solve(problem, "magnitude", run.pattern, cfg.sparsity, {}, "none", {}, SolveContext(None, run.warn))
                _write(lin, sol, run.saved)
                _record(run.result, run.emit, b, lin.name, sol)


def _propagate(run: _Run, b: int, block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """Re-run the pruned block: its outputs are the next block's inputs."""
    with run.timings.phase("propagate"):
        outs = run_block(block, inputs)
        _check_finite(outs, f"the outputs of pruned block {b}")
        return inputs.next(outs)


def prune_model(
    model: nn.Module,
    tokenizer,
    config,
    on_event: EventSink | None = None,
    cancel: threading.Event | None = None,
    windows: torch.Tensor | None = None,
) -> dict:
    """Prune ``model`` in place with ``config`` (a PruneConfig) on the calibration ``windows`` (n, seqlen) int64
    (required: load them with ``pruning.data.calibration_windows``, or call ``pruning.prune_model``, which does);
    returns the report dict. ``tokenizer`` is not used (kept for the signature of the public wrapper).

    On cancel (``cancel`` set) raises events.Cancelled, on failure re-raises; in both cases every weight is
    restored first, so the model is exactly as given.
    """
    if windows is None:
        raise InputError("windows: prune_model needs the calibration token windows (n, seqlen); load them with "
                         "pruning.data.calibration_windows(tokenizer, ...) or use pruning.prune_model, which does")
    emit = on_event or (lambda e: None)
    cancel = cancel or threading.Event()
    pattern = parse_pattern(config.pattern)
    validate_model_for_pattern(model, pattern)
    s_opts, u_opts = config.solver_options()
    t_start = time.perf_counter()
    _, blocks = find_blocks(model)
    n_blocks = len(blocks)
    layers_of = [prunable_layers(b) for b in blocks]
    for b, lays in enumerate(layers_of):
        if not lays:
            raise ModelStructureError(f"model: decoder block {b} ({type(blocks[b]).__name__}) has no linear layer or "
                                      "fused experts to prune; nothing was pruned")
    experts_of = [find_experts(b)[0] for b in blocks]
    spec = SOLVERS.get(config.solver)
    if any(experts_of):
        if spec.kind == "block":
            others = ", ".join(n for n in SOLVERS.names() if SOLVERS.get(n).kind != "block")
            raise InputError(f"solver: {config.solver!r} solves a whole FFN at once and does not handle "
                             f"mixture-of-experts blocks (this model has fused experts); use a per-layer solver: {others}")
        if config.allocation != "uniform":
            raise InputError(f"allocation: {config.allocation!r} does not cover mixture-of-experts experts yet (this "
                             "model has fused experts); use allocation 'uniform'")
    n_layers = sum(len(lays) for lays in layers_of)
    emit(JobStarted(n_blocks=n_blocks, n_layers=n_layers, config=config.to_dict()))
    emit(PhaseStarted("calibrate", f"{windows.shape[0]} windows × {windows.shape[1]} tokens"))
    result = PruneResult(n_blocks=n_blocks)

    def check_cancel():
        if cancel.is_set():
            raise Cancelled("cancelled by the user")

    def warn(msg: str):
        result.warnings.append(msg)
        emit(WarningEvent(msg))

    store = _block_store(model)  # offloaded blocks (pruning.offload): onloaded one at a time, written back
    # resident blocks: a copy of every weight written, to restore on failure; offloaded ones: the store keeps the way
    # back (the weights as loaded stay where they live), so no copy is held
    saved = [] if store is None else None
    run = _Run(config, spec, pattern, s_opts, u_opts, emit, warn, check_cancel, result, saved, Timings())
    for msg in dense_warnings(blocks):
        warn(msg)
    onload = store.onload if store is not None else _resident
    counts: list[dict] = []  # block_weight_counts of each pruned block, for the report's sparsity
    was_training = model.training
    model.eval()
    try:
        with run.timings.phase("capture"):
            inputs = capture_inputs(model, windows, config.batch_size)
            _check_finite(inputs.hidden, "the inputs of block 0")
        if config.allocation != "uniform":
            emit(PhaseStarted("calibrate", f"allocation {config.allocation}: a dense pass over the calibration windows"))
            with run.timings.phase("allocation"):
                run.targets = layer_targets(blocks, inputs, config, pattern, check_cancel, onload)
        emit(PhaseStarted("prune", f"{n_blocks} blocks"))
        for b, block in enumerate(blocks):
            check_cancel()
            tb = time.perf_counter()
            emit(BlockStarted(block=b, n_blocks=n_blocks))
            with onload(block, b):
                linears = block_linears(block)
                if store is not None:
                    _check_block_weights(b, linears)
                # looked up again once onloaded: an offloaded block's fused experts are other tensors now
                experts = find_experts(block)[0] if store is not None and experts_of[b] else experts_of[b]
                if config.true_sequential:  # experts after every linear: gate/up, then down on the pruned gate/up
                    for group in _groups(block, linears, inputs, True):
                        _solve_group(run, b, block, inputs, linears, group)
                    for which in (("gate_up",), ("down",)) if experts else ():
                        _solve_group(run, b, block, inputs, linears, [], experts, which)
                else:  # one dense statistics pass for the linears and the experts
                    _solve_group(run, b, block, inputs, linears, list(linears), experts, ("gate_up", "down"))
                inputs = _propagate(run, b, block, inputs)
                counts.append(block_weight_counts(block))
            emit(BlockDone(block=b, n_blocks=n_blocks, seconds=time.perf_counter() - tb))
    except BaseException:
        if store is not None:
            store.restore()
        else:
            for lin, w in reversed(run.saved):
                lin.set_weight(w)
        raise
    finally:
        model.train(was_training)
    result.timings = run.timings.to_dict(time.perf_counter() - t_start)
    zeros = sum(l["zeros"] for l in result.layers)
    total = sum(l["numel"] for l in result.layers)
    result.sparsity_pruned_layers = zeros / total if total else 0.0
    result.sparsity, result.sparsity_by_kind = weight_accounting(counts=counts)
    return result.to_dict()


def _column_sq_norms(block: nn.Module, linears: dict[str, Linear], inputs: BlockInputs):
    """(Σ over calibration tokens of x_j² for every input column of every linear -- the Gram's diagonal, float64 --,
    the block's outputs), running the dense block once."""
    acc: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            acc[name] = acc.get(name, 0) + x.pow(2).sum(0)
        return fn

    handles = [lin.module.register_forward_pre_hook(hook(n)) for n, lin in linears.items()]
    try:
        outs = run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return acc, outs


def _wanda_curve(W: torch.Tensor, G: torch.Tensor, pattern, grid: list[float]) -> list[float]:
    """Relative error of the Wanda mask (no weight update) at each sparsity of ``grid``, from the Gram (float32)."""
    from .allocation import wanda_scores
    from .patterns import select_mask

    score = wanda_scores(W, torch.diagonal(G))
    dense = float(torch.sum((W @ G) * W))
    out = []
    for s in grid:
        E = W * ~select_mask(score, pattern, s)
        out.append(float(torch.sum((E @ G) * E)) / max(dense, 1e-30))
    return out


def layer_targets(blocks, inputs: BlockInputs, config, pattern, check_cancel: Callable[[], None], onload=None) -> dict:
    """Per-layer sparsity targets of ``config.allocation`` from a dense pass over the calibration inputs (the
    statistics OWL's official code uses), exact over the whole model (``allocation.exact_counts``).

    owl:   per block, the outlier ratio of the Wanda scores of all its linears -> one sparsity per block.
    curve: per layer, the Wanda-mask error at a few sparsities around the target (from its Gram) -> the targets
           minimising the summed error under the budget.
    """
    from . import allocation as al

    keys, sizes, block_of, ratios, curves = [], [], [], [], []
    grid = al.curve_grid(config.sparsity)
    onload = onload or _resident
    for b, block in enumerate(blocks):
        check_cancel()
        with onload(block, b, write=False):  # a read-only pass: nothing to write back
            outs = _targets_block(al, b, block, inputs, config, pattern, grid, keys, sizes, block_of, ratios, curves)
        inputs = inputs.next(outs)
    if config.allocation == "owl":
        per_block = al.owl_block_sparsities(ratios, config.sparsity, config.owl_lambda)
        wanted = [per_block[b] for b in block_of]
    else:
        wanted = al.curve_sparsities(curves, grid, sizes, config.sparsity)
    counts = al.exact_counts(wanted, sizes, config.sparsity)
    return dict(zip(keys, al.counts_to_sparsities(counts, sizes)))


def _targets_block(al, b, block, inputs, config, pattern, grid, keys, sizes, block_of, ratios, curves):
    """One block of ``layer_targets``'s dense pass (appends to the lists); returns the block's outputs."""
    linears = block_linears(block)
    if config.allocation == "owl":
        norms, outs = _column_sq_norms(block, linears, inputs)
        scores = [al.wanda_scores(lin.get_weight().detach().float(), norms[n]) for n, lin in linears.items()]
        ratios.append(al.outlier_ratio(scores, config.owl_m))
    else:
        col, outs = collect_grams(block, linears, inputs)
        for n, lin in linears.items():
            curves.append(_wanda_curve(lin.get_weight().detach().float(), col.gram(n)[0], pattern, grid))
        del col
    for n, lin in linears.items():
        keys.append((b, n))
        sizes.append(lin.get_weight().numel())
        block_of.append(b)
    _check_finite(outs, f"the outputs of dense block {b}")
    return outs


@contextlib.contextmanager
def _resident(block: nn.Module, index: int = 0, write: bool = True):
    """``BlockStore.onload``'s stand-in for a model whose blocks are all in memory: nothing to do."""
    yield block


def _block_store(model: nn.Module):
    """The model's ``pruning.offload.BlockStore`` when its blocks are offloaded, else None (also for a model loaded
    with offload whose blocks all stayed resident: 'cpu' on a CPU device -- the resident path, copies for a restore
    included)."""
    from .offload import store_of

    store = store_of(model)
    if store is None:
        return None
    _, blocks = find_blocks(model)
    offloaded = [store.is_offloaded(b) for b in blocks]
    if all(offloaded):
        return store
    if any(offloaded):
        raise ModelStructureError(f"offload: blocks {[i for i, o in enumerate(offloaded) if not o]} are resident "
                                  "while the others are offloaded; load the model with every block offloaded "
                                  "(pruning.offload.load_offloaded) or none")
    return None


def _check_block_weights(b: int, linears: dict[str, Linear]) -> None:
    """An onloaded block's weights are finite (``validate_model_for_pattern`` cannot see offloaded ones)."""
    for name, lin in linears.items():
        if not bool(torch.isfinite(lin.get_weight()).all()):
            raise InputError(f"weights: NaN/Inf in block {b} {name}; a model with non-finite weights cannot be pruned "
                             "(nothing was changed)")


def _write(lin: Linear, sol: LayerSolution, saved: list | None) -> None:
    if saved is not None:
        saved.append((lin, lin.get_weight().detach().clone()))
    lin.set_weight(sol.weight)


def _record(result: PruneResult, emit: EventSink, b: int, name: str, sol: LayerSolution,
            target: float | None = None) -> None:
    W = sol.weight
    zeros = int((W == 0).sum())
    rec = {"block": b, "name": name, "rel_error": float(sol.rel_error), "sparsity": zeros / W.numel(),
           "seconds": round(sol.seconds, 5), "zeros": zeros, "numel": W.numel()}
    if target is not None:
        rec["target"] = target
    if sol.info:
        rec["info"] = {k: v for k, v in sol.info.items() if isinstance(v, (int, float, str, bool))}
    result.layers.append(rec)
    emit(LayerSolved(block=b, name=name, rel_error=rec["rel_error"], seconds=rec["seconds"], sparsity=rec["sparsity"]))
