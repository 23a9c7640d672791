"""The Prune tab's view of one job: a pure reducer over the engine's events (no Gradio, no torch, no threads).

``JobView.apply(event)`` folds events into plain state; ``fraction()``, ``eta_seconds()``, ``status()`` (title,
detail, state) and ``progress()`` (the bar's HTML) read it. Time comes from an injectable ``clock`` so tests can
feed event sequences with chosen timestamps.

The ETA covers every phase still to come: while pruning, the mean time per finished block times the blocks left,
plus the evaluation of the pruned model and the generations (``tail``: the cost model's estimate, or the dense
evaluation's measured time when it ran in this job -- the pruned evaluation reads the same windows).
"""
from __future__ import annotations

import time
from typing import Callable

from pruning import events as ev

from . import render

# where each phase sits on the bar (fractions of the whole job)
PHASE_SPAN = {"load": (0.0, 0.04), "dense-eval": (0.04, 0.14), "calibrate": (0.14, 0.16), "prune": (0.16, 0.86),
              "pruned-eval": (0.86, 0.96), "generate": (0.96, 1.0),
              "drift": (0.97, 1.0), "zero-shot": (0.98, 1.0)}  # the optional extra measurements, after the generations
PHASE_TITLES = {"load": "Loading the model", "dense-eval": "Evaluating the dense model", "calibrate": "Capturing calibration inputs",
                "prune": "Pruning", "pruned-eval": "Evaluating the pruned model", "generate": "Generating",
                "drift": "Measuring KL drift vs dense", "zero-shot": "Zero-shot accuracy (lm-eval)"}
FAILED_TITLES = {"input": "Invalid setting", "numerical": "Failed: numerical problem", "internal": "Failed: internal error"}
MAX_LOG = 400


class JobView:
    """Accumulates a job's events into what the Prune tab shows (plain values).

    ``estimate``: the whole job's predicted seconds (shown until blocks finish); ``tail``: predicted seconds of
    what follows the pruning (pruned evaluation + generations)."""

    def __init__(self, cfg, estimate: float | None = None, tail: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg, self.estimate, self.tail = cfg, estimate, tail
        self.clock = clock
        self.t0 = clock()
        self.layers: list[dict] = []
        self.log: list[str] = []
        self.phase, self.detail = "queued", ""
        self.n_blocks = self.n_layers = 0
        self.block = -1
        self.blocks_done = 0
        self.prune_started: float | None = None
        self.prune_ended: float | None = None
        self.dense_ppl = self.pruned_ppl = None
        self.dense_eval_s = 0.0
        self.running: dict[str, tuple[int, int, float]] = {}  # which -> (windows done, total, running perplexity)
        self.gens: list[dict] = []  # {"prompt", "dense", "pruned"} as the continuations grow (GenerationProgress)
        self.report: dict | None = None
        self.state = "queued"
        self.kind = ""
        self.message = ""
        self.position: int | None = None
        self.dirty = {"layers": True, "log": True, "metrics": True, "report": True, "gens": True}

    def note(self, text: str) -> None:
        self.log.append(f"[{self.clock() - self.t0:7.1f}s] {text}")
        del self.log[:-MAX_LOG]
        self.dirty["log"] = True

    def apply(self, e: ev.Event) -> None:
        now = self.clock()
        if isinstance(e, ev.JobStarted):
            self.n_blocks, self.n_layers = e.n_blocks, e.n_layers
            self.note(f"started: {e.n_blocks} blocks, {e.n_layers} linear layers")
        elif isinstance(e, ev.PhaseStarted):
            if self.phase == "prune" and e.phase != "prune" and self.prune_ended is None:
                self.prune_ended = now
            self.phase, self.detail, self.state = e.phase, e.detail, "running"
            if e.phase == "prune" and self.prune_started is None:
                self.prune_started = now
            self.note(f"{PHASE_TITLES.get(e.phase, e.phase)}" + (f" ({e.detail})" if e.detail else ""))
        elif isinstance(e, ev.BlockStarted):
            self.phase, self.state, self.block, self.n_blocks = "prune", "running", e.block, e.n_blocks
            if self.prune_started is None:
                self.prune_started = now
        elif isinstance(e, ev.LayerSolved):
            self.layers.append({"block": e.block, "name": e.name, "rel_error": e.rel_error, "seconds": e.seconds, "sparsity": e.sparsity})
            self.dirty["layers"] = True
            self.note(f"block {e.block:>2} {e.name:<22} err {e.rel_error:.4g}  sparsity {e.sparsity:.1%}  {e.seconds:.2f}s")
        elif isinstance(e, ev.BlockDone):
            self.blocks_done = e.block + 1
            self.note(f"block {e.block + 1}/{e.n_blocks} done in {e.seconds:.1f}s")
        elif isinstance(e, ev.WarningEvent):
            self.note(f"warning: {e.message}")
        elif isinstance(e, ev.Evaluated):
            if e.which == "dense":
                self.dense_ppl, self.dense_eval_s = e.ppl, e.seconds
            else:
                self.pruned_ppl = e.ppl
            self.dirty["metrics"] = True
            self.note(f"{e.which} perplexity on {e.split}: {e.ppl:.3f} ({e.seconds:.1f}s)")
        elif isinstance(e, ev.EvalProgress):
            self.running[e.which] = (e.done, e.total, e.ppl)
            self.dirty["metrics"] = True
        elif isinstance(e, ev.GenerationProgress):
            while len(self.gens) <= e.index:
                self.gens.append({"prompt": "", "dense": "", "pruned": ""})
            g = self.gens[e.index]
            g["prompt"], g[e.which] = e.prompt, e.text
            self.dirty["gens"] = True
        elif isinstance(e, ev.Generated):
            self.note(f"generated for {e.prompt[:40]!r}")
        elif isinstance(e, ev.JobFinished):
            self.report, self.state, self.phase = e.report, "done", "done"
            self.layers = list(e.report.get("layers") or self.layers)
            self.n_blocks = (e.report.get("model") or {}).get("n_blocks") or self.n_blocks
            self.dirty = {k: True for k in self.dirty}
            self.note("finished" + (" (returned from the result cache)" if e.report.get("cached") else "; result stored in the cache"))
        elif isinstance(e, ev.JobCancelled):
            self.state, self.message = "cancelled", e.reason
            self.dirty["metrics"] = True
            where = f" at block {self.block + 1}/{self.n_blocks}" if self.block >= 0 else ""
            self.note(f"cancelled{where}: {e.reason}. The loaded model is untouched.")
        elif isinstance(e, ev.JobFailed):
            self.state, self.message, self.kind = "failed", e.message, getattr(e, "kind", "internal")
            self.dirty["metrics"] = True
            self.note(f"failed ({self.kind}): {e.message}")

    # -- what to show -------------------------------------------------------------------------------------
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        lo, hi = PHASE_SPAN.get(self.phase, (0.0, 0.0))
        if self.phase == "prune" and self.n_blocks:
            per_block = max(1, self.n_layers // max(1, self.n_blocks))
            in_block = sum(1 for l in self.layers if l["block"] == self.block) / per_block if self.block >= self.blocks_done else 0
            return lo + (hi - lo) * min(1.0, (self.blocks_done + min(in_block, 1.0)) / self.n_blocks)
        return lo

    def tail_seconds(self) -> float:
        """Predicted seconds of the pruned evaluation + generations."""
        measured = self.dense_eval_s if self.dense_eval_s > 0.5 else 0.0  # a dense result from the cache took ~0 s
        return max(self.tail or 0.0, measured)

    def eta_seconds(self) -> float | None:
        """Seconds left, or None when nothing sensible can be said."""
        now = self.clock()
        if self.state != "running":
            return None
        if self.phase == "prune" and self.prune_started is not None and self.blocks_done and self.n_blocks:
            per_block = (now - self.prune_started) / self.blocks_done
            return per_block * (self.n_blocks - self.blocks_done) + self.tail_seconds()
        if self.phase in ("pruned-eval", "generate", "drift", "zero-shot") and self.prune_ended is not None:
            return max(0.0, self.tail_seconds() - (now - self.prune_ended))
        if self.estimate and self.phase in ("load", "dense-eval", "calibrate", "prune"):
            return max(0.0, self.estimate - (now - self.t0))
        return None

    def status(self) -> tuple[str, str, str]:
        """(title, detail, state) of the progress bar."""
        if self.state == "queued":
            pos = self.position
            ahead = "" if pos is None else (f"{pos} job ahead of yours" if pos == 1 else f"{pos} jobs ahead of yours")
            return "Queued", (f"position {pos} in the queue · {ahead}" if pos else "waiting for the worker"), "queued"
        if self.state == "done":
            r = self.report or {}
            t = (r.get("timings") or {}).get("end_to_end")
            return ("Done" + (" — returned from the cache" if r.get("cached") else ""),
                    f"{self.n_blocks} blocks · {render.fmt_seconds(t)}" if t else "", "done")
        if self.state == "cancelled":
            where = f"stopped at block {self.block + 1}/{self.n_blocks}" if self.block >= 0 else "stopped before pruning"
            return "Cancelled — the loaded model is untouched", where, "cancelled"
        if self.state == "failed":
            return FAILED_TITLES.get(self.kind, "Failed"), self.message[:200], "failed"
        title = PHASE_TITLES.get(self.phase, self.phase)
        if self.phase == "prune" and self.n_blocks:
            title = f"Pruning · block {min(self.block + 1, self.n_blocks)}/{self.n_blocks}"
        eta = self.eta_seconds()
        if eta is not None:
            measured = (self.phase == "prune" and self.blocks_done > 0) or self.phase in ("pruned-eval", "generate")
            detail = f"ETA {render.fmt_seconds(eta)}" + ("" if measured else " (estimate)")
        else:
            detail = self.detail
        return title, detail, "running"

    def progress(self) -> str:
        title, detail, state = self.status()
        return render.progress_html(self.fraction(), title, detail, state)

    def pruned_ppl_shown(self) -> tuple[float | None, str]:
        """(the pruned perplexity to show, a note): the final value, or while the pruned model is evaluated the
        running one with "after k/n windows" (it settles as windows are added)."""
        if self.pruned_ppl is not None:
            return self.pruned_ppl, ""
        run = self.running.get("pruned")
        if run is None:
            return None, ""
        done, total, ppl = run
        return ppl, f"after {done}/{total} windows"

    def generations(self) -> list[dict]:
        """The continuations to show: the report's once finished, else those streamed so far."""
        return list((self.report or {}).get("generations") or self.gens)

    def layer_rows(self) -> list[dict]:
        return [{"block": l["block"], "layer": l["name"], "rel. error": round(float(l["rel_error"]), 6),
                 "sparsity": round(float(l.get("sparsity", float("nan"))), 4), "seconds": round(float(l.get("seconds", 0.0)), 3)}
                for l in self.layers]
