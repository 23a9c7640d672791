"""Event handlers: plain functions over plain values, calling the engine's public API only.

No pruning logic here: a run is ``pruning.jobs.JobRunner.submit(PruneConfig)``, a lab run is
``pruning.lab.run_lab``; handlers turn the events and reports into component values (figures from
``ui.plots``, HTML from ``ui.render``). Engine errors (ConfigError, PatternError, SolverError -- all
ValueError) become ``gr.Error`` with the engine's message; the job's own failures are shown and re-raised
as ``gr.Error`` so API clients see them too.
"""
from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from pruning import SOLVERS, UPDATES
from pruning import events as ev
from pruning.results import ResultStore, finite, load_precomputed
from pruning.config import DEFAULT_MODEL, DEFAULT_PROMPTS, ConfigError, PruneConfig
from pruning.jobs import JobRunner

from . import plots, render

YIELD_EVERY = 1.0  # s between streamed UI updates while layers finish (bursts are coalesced; each update costs the job CPU)
MAX_SWEEP = 48
SWEEP_OWNER = "/sweep"
PATTERN_CHOICES = ["unstructured", "per-row", "2:4", "4:8"]
PHASE_SPAN = {"load": (0.0, 0.04), "dense-eval": (0.04, 0.14), "calibrate": (0.14, 0.16), "prune": (0.16, 0.86),
              "pruned-eval": (0.86, 0.96), "generate": (0.96, 1.0)}
PHASE_TITLES = {"load": "Loading the model", "dense-eval": "Evaluating the dense model", "calibrate": "Capturing calibration inputs",
                "prune": "Pruning", "pruned-eval": "Evaluating the pruned model", "generate": "Generating"}


@dataclass(frozen=True)
class OptionRef:
    """One solver/update option control: which registry entry owns it and the declared Option."""

    kind: str  # 'solver' | 'update'
    owner: str
    option: object  # pruning.solvers.Option

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.owner}:{self.option.name}"


def option_refs() -> list[OptionRef]:
    """Every declared option of every registered solver and update, in registry order."""
    refs = [OptionRef("solver", s.name, o) for s in SOLVERS for o in s.options]
    refs += [OptionRef("update", u.name, o) for u in UPDATES if u.name != "none" for o in u.options]
    return refs


def mask_solvers() -> list[str]:
    return [s.name for s in SOLVERS if s.kind == "mask"]


def _cast(option, value):
    if value is None:
        return option.default
    if option.type == "int":
        return int(round(float(value)))
    if option.type == "float":
        return float(value)
    if option.type == "bool":
        return bool(value)
    return value


FORM_FIELDS = ("model", "solver", "pattern", "sparsity", "update", "nsamples", "seqlen", "calib_source",
               "eval_windows", "eval_seqlen", "device", "dtype", "prompts", "max_new_tokens")


def config_from_form(form: dict, option_values: list, refs: list[OptionRef]) -> PruneConfig:
    """A validated PruneConfig from the Prune tab's controls. Only options that differ from their defaults are
    kept, so the cache key is the same as for the same run started from the CLI. Raises ConfigError."""
    solver = form["solver"]
    update = form.get("update") or "none"
    if solver in SOLVERS and SOLVERS.get(solver).kind != "mask":
        update = "none"  # the update control is hidden for solvers that update weights themselves
    opts = {}
    for ref, v in zip(refs, option_values):
        if (ref.kind == "solver" and ref.owner == solver) or (ref.kind == "update" and ref.owner == update):
            try:
                val = _cast(ref.option, v)
            except (TypeError, ValueError):
                raise ConfigError(f"{ref.owner}.{ref.option.name}: expected a {ref.option.type}, got {v!r}") from None
            if val != ref.option.default:
                opts[ref.option.name] = val
    prompts = [p.strip() for p in str(form.get("prompts") or "").splitlines() if p.strip()]
    d = {
        "model": (form.get("model") or DEFAULT_MODEL).strip(),
        "solver": solver,
        "sparsity": form["sparsity"],
        "pattern": form["pattern"],
        "update": update,
        "options": opts,
        "calib": {"source": form.get("calib_source") or "wiki-sample", "nsamples": form["nsamples"], "seqlen": form["seqlen"]},
        "eval": {"source": form.get("calib_source") or "wiki-sample", "windows": form["eval_windows"], "seqlen": form["eval_seqlen"]},
        "device": form.get("device") or "auto",
        "dtype": form.get("dtype") or "auto",
        "prompts": prompts or list(DEFAULT_PROMPTS),
        "max_new_tokens": form["max_new_tokens"],
    }
    return parse_config(d)


def parse_config(config) -> PruneConfig:
    """dict or JSON string -> PruneConfig; every problem becomes a ConfigError naming the field."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError as e:
            raise ConfigError(f"config: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected an object with fields such as solver, sparsity, pattern; got {type(config).__name__}")
    try:
        return PruneConfig.from_dict(config)
    except TypeError as e:  # unknown field names
        raise ConfigError(f"config: {e}; allowed fields: {', '.join(PruneConfig.__dataclass_fields__)}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


_INPUT_ERRORS = re.compile(r"^(ValueError|ConfigError|PatternError|SolverError|ModelError|ModelStructureError): ")


def user_message(message: str) -> str:
    """Drop the exception class name of input errors (the message itself names the field and the allowed values)."""
    return _INPUT_ERRORS.sub("", message or "")


class JobView:
    """Accumulates a job's events into what the Prune tab shows (plain values)."""

    def __init__(self, cfg: PruneConfig, estimate: float | None = None):
        self.cfg, self.estimate = cfg, estimate
        self.t0 = time.time()
        self.layers: list[dict] = []
        self.log: list[str] = []
        self.phase, self.detail = "queued", ""
        self.n_blocks = self.n_layers = 0
        self.block = -1
        self.blocks_done = 0
        self.prune_started: float | None = None
        self.dense_ppl = self.pruned_ppl = None
        self.dense_eval_s = 0.0
        self.report: dict | None = None
        self.state = "queued"
        self.message = ""
        self.position: int | None = None
        self.dirty = {"layers": True, "log": True, "metrics": True, "report": True}

    def note(self, text: str) -> None:
        self.log.append(f"[{time.time() - self.t0:7.1f}s] {text}")
        del self.log[:-400]
        self.dirty["log"] = True

    def apply(self, e: ev.Event) -> None:
        if isinstance(e, ev.JobStarted):
            self.n_blocks, self.n_layers = e.n_blocks, e.n_layers
            self.note(f"started: {e.n_blocks} blocks, {e.n_layers} linear layers")
        elif isinstance(e, ev.PhaseStarted):
            self.phase, self.detail, self.state = e.phase, e.detail, "running"
            if e.phase == "prune" and self.prune_started is None:
                self.prune_started = time.time()
            self.note(f"{PHASE_TITLES.get(e.phase, e.phase)}" + (f" ({e.detail})" if e.detail else ""))
        elif isinstance(e, ev.BlockStarted):
            self.phase, self.state, self.block, self.n_blocks = "prune", "running", e.block, e.n_blocks
            if self.prune_started is None:
                self.prune_started = time.time()
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
            self.state, self.message = "failed", user_message(e.message)
            self.dirty["metrics"] = True
            self.note(f"failed: {e.message}")

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

    def progress(self) -> str:
        if self.state == "queued":
            pos = self.position
            ahead = "" if pos is None else (f"{pos} job ahead of yours" if pos == 1 else f"{pos} jobs ahead of yours")
            return render.progress_html(0, "Queued", f"position {pos} in the queue · {ahead}" if pos else "waiting for the worker", "queued")
        if self.state == "done":
            r = self.report or {}
            t = (r.get("timings") or {}).get("end_to_end")
            return render.progress_html(1, "Done" + (" — returned from the cache" if r.get("cached") else ""),
                                        f"{self.n_blocks} blocks · {render.fmt_seconds(t)}" if t else "", "done")
        if self.state == "cancelled":
            where = f"stopped at block {self.block + 1}/{self.n_blocks}" if self.block >= 0 else "stopped before pruning"
            return render.progress_html(self.fraction(), "Cancelled — the loaded model is untouched", where, "cancelled")
        if self.state == "failed":
            return render.progress_html(self.fraction(), "Failed", self.message[:160], "failed")
        title = PHASE_TITLES.get(self.phase, self.phase)
        detail = ""
        if self.phase == "prune" and self.n_blocks:
            title = f"Pruning · block {min(self.block + 1, self.n_blocks)}/{self.n_blocks}"
            if self.prune_started and self.blocks_done:
                rest = self.dense_eval_s if self.dense_eval_s > 0.5 else 0.0
                detail = render.eta_text(time.time() - self.prune_started, self.blocks_done, self.n_blocks, rest)
            elif self.estimate:
                detail = f"ETA {render.fmt_seconds(max(0.0, self.estimate - (time.time() - self.t0)))} (estimate)"
        elif self.estimate and self.phase in ("load", "dense-eval", "calibrate"):
            detail = f"ETA {render.fmt_seconds(max(0.0, self.estimate - (time.time() - self.t0)))} (estimate)"
        elif self.detail:
            detail = self.detail
        return render.progress_html(self.fraction(), title, detail, "running")

    def layer_table(self) -> pd.DataFrame:
        rows = [{"block": l["block"], "layer": l["name"], "rel. error": round(float(l["rel_error"]), 6),
                 "sparsity": round(float(l.get("sparsity", float("nan"))), 4), "seconds": round(float(l.get("seconds", 0.0)), 3)}
                for l in self.layers]
        return pd.DataFrame(rows, columns=["block", "layer", "rel. error", "sparsity", "seconds"])

    def outputs(self, force: bool = False) -> tuple:
        """(progress, layer plot, log, metrics, generations, layer table, report JSON); unchanged parts skipped."""
        d = self.dirty
        fig = plots.layer_error_figure(self.layers, self.n_blocks or None) if (d["layers"] or force) else gr.skip()
        log = "\n".join(self.log) if (d["log"] or force) else gr.skip()
        metrics = render.metrics_html(self.report, self.dense_ppl, self.pruned_ppl, self.state) if (d["metrics"] or force) else gr.skip()
        if d["report"] or force:
            r = self.report
            gens = render.generations_html((r or {}).get("generations") or [], self.cfg.max_new_tokens)
            table = self.layer_table()
            rep = r if r is not None else {"config": self.cfg.to_dict(), "key": self.cfg.key(), "status": self.state}
        else:
            gens = table = rep = gr.skip()
        self.dirty = {k: False for k in self.dirty}
        return self.progress(), fig, log, metrics, gens, table, rep


# ------------------------------------------------------------------------------------------- compare helpers
def _run_id(run: dict) -> str:
    return f"pre:{run.get('source_file', '')}:{run.get('key', '')}" if run.get("precomputed") else str(run.get("store_key", run.get("key", "")))


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    cols = ["source", "model", "solver", "pattern", "sparsity", "dense ppl", "pruned ppl", "ppl ×", "mean err",
            "prune s", "calib", "eval", "device", "finished", "key"]
    rows = []
    for r in runs:
        c = r.get("config") or {}
        ppl = r.get("perplexity") or {}
        errs = [float(l["rel_error"]) for l in r.get("layers") or [] if isinstance(l.get("rel_error"), (int, float))]
        d, p = ppl.get("dense"), ppl.get("pruned")
        solver = c.get("solver", "?") + (f"+{c['update']}" if c.get("update", "none") != "none" else "")
        cal, evc = c.get("calib") or {}, c.get("eval") or {}
        rows.append({
            "source": "precomputed" if r.get("precomputed") else "cache",
            "model": (r.get("model") or {}).get("id", c.get("model", "")),
            "solver": solver, "pattern": c.get("pattern", ""),
            "sparsity": round(float(r.get("sparsity", c.get("sparsity", 0.0))), 4),
            "dense ppl": round(float(d), 3) if isinstance(d, (int, float)) and math.isfinite(d) else None,
            "pruned ppl": round(float(p), 3) if isinstance(p, (int, float)) and math.isfinite(p) else None,
            "ppl ×": round(float(p) / float(d), 3) if isinstance(p, (int, float)) and isinstance(d, (int, float)) and d else None,
            "mean err": round(sum(errs) / len(errs), 5) if errs else None,
            "prune s": round(t, 1) if (t := finite((r.get("timings") or {}).get("prune_total"))) is not None else None,
            "calib": f"{cal.get('nsamples', '?')}×{cal.get('seqlen', '?')}",
            "eval": f"{evc.get('windows', '?')}×{evc.get('seqlen', '?')}",
            "device": r.get("device", ""),
            "finished": r.get("finished_at", ""),
            "key": r.get("key", ""),
        })
    return pd.DataFrame(rows, columns=cols)


def parse_sparsities(text) -> list[float]:
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in str(text or "").replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    out = []
    for t in items:
        try:
            s = float(t)
        except (TypeError, ValueError):
            raise ConfigError(f"sparsities: {t!r} is not a number; write e.g. 0.3, 0.5, 0.7") from None
        if s > 1.0 and s < 100:  # "50" means 50 %
            s = s / 100
        out.append(s)
    if not out:
        raise ConfigError("sparsities: empty; write e.g. 0.3, 0.5, 0.7")
    return out


def sweep_configs(model: str, solvers: list[str], patterns: list[str], sparsities: list[float], nsamples: int, seqlen: int,
                  eval_windows: int, eval_seqlen: int, max_new_tokens: int = 16, updates: list[str] | None = None) -> list[PruneConfig]:
    """solvers × updates × patterns × sparsities, de-duplicated by key (N:M fixes the sparsity). A weight update
    applies to mask solvers only; the others always run as they are. Raises ConfigError."""
    if not solvers:
        raise ConfigError(f"solvers: pick at least one; allowed: {', '.join(SOLVERS.names())}")
    if not patterns:
        raise ConfigError("patterns: pick at least one; allowed: unstructured, per-row, N:M such as 2:4")
    updates = list(updates or ["none"])
    unknown = [u for u in updates if u not in UPDATES]
    if unknown:
        raise ConfigError(f"updates: unknown {unknown}; allowed: {', '.join(UPDATES.names())}")
    out, seen = [], set()
    for solver in solvers:
        mask_solver = solver in SOLVERS and SOLVERS.get(solver).kind == "mask"
        for update in (updates if mask_solver else ["none"]):
            for pattern in patterns:
                for s in sparsities:
                    cfg = parse_config({"model": model or DEFAULT_MODEL, "solver": solver, "update": update, "pattern": pattern,
                                        "sparsity": s, "calib": {"nsamples": nsamples, "seqlen": seqlen},
                                        "eval": {"windows": eval_windows, "seqlen": eval_seqlen}, "max_new_tokens": max_new_tokens})
                    if cfg.key() not in seen:
                        seen.add(cfg.key())
                        out.append(cfg)
    if len(out) > MAX_SWEEP:
        raise ConfigError(f"sweep: {len(out)} runs requested; allowed: at most {MAX_SWEEP} per sweep")
    return out


class Handlers:
    """The app's event handlers, bound to one JobRunner / ResultStore (shared by every browser tab)."""

    def __init__(self, runner: JobRunner, store: ResultStore | None, precomputed_dir: str | Path | None, refs: list[OptionRef]):
        self.runner, self.store, self.refs = runner, store, refs
        self.precomputed_dir = Path(precomputed_dir) if precomputed_dir else None

    # -- Prune tab ------------------------------------------------------------------------------------------
    def _form(self, values) -> tuple[dict, list]:
        n = len(FORM_FIELDS)
        return dict(zip(FORM_FIELDS, values[:n])), list(values[n:])

    def preview(self, *values) -> tuple[dict, str]:
        """Form changed: (config dict, estimate markdown). Never raises: problems are shown in the estimate line."""
        form, opts = self._form(values)
        try:
            cfg = config_from_form(form, opts, self.refs)
        except ValueError as e:
            return gr.skip(), f"⚠ {e}"
        return cfg.to_dict(), self.estimate_text(cfg)

    def validate(self, *values) -> dict:
        """Run pressed: the validated config (the input of /prune), or a gr.Error naming the bad field."""
        form, opts = self._form(values)
        try:
            return config_from_form(form, opts, self.refs).to_dict()
        except ValueError as e:
            raise gr.Error(str(e), title="Invalid setting") from None

    @staticmethod
    def estimate_text(cfg: PruneConfig) -> str:
        from pruning.api import estimate_seconds, resolve_device

        try:
            dev = str(resolve_device(cfg.device))
        except ValueError as e:
            return f"⚠ {e}"
        return render.estimate_md(estimate_seconds(cfg, device=dev.split(":")[0]), dev.upper() if dev == "cpu" else dev)

    @staticmethod
    def estimate_seconds_api(config: dict) -> float:
        """Rough seconds a config will take (the same estimate the Prune tab shows)."""
        from pruning.api import estimate_seconds

        try:
            return float(estimate_seconds(parse_config(config)))
        except ValueError as e:
            raise gr.Error(str(e), title="Invalid setting") from None

    def prune(self, config, request: gr.Request | None = None):
        """Stream a job: (progress, layer plot, log, metrics, generations, layer table, report, job id)."""
        try:
            cfg = parse_config(config)
        except ConfigError as e:
            raise gr.Error(str(e), title="Invalid setting") from None
        owner = getattr(request, "session_hash", None)
        try:
            from pruning.api import estimate_seconds

            est = estimate_seconds(cfg)
        except ValueError:
            est = None
        view = JobView(cfg, est)
        view.phase = "load"
        first = list(view.outputs(force=True))
        first[0] = render.progress_html(0, "Starting", "checking the result cache", "queued")
        yield (*first, gr.skip())
        job = self.runner.submit(cfg, owner=owner)  # a cache hit completes here, without queueing
        view.position = self.runner.position(job)
        view.note(f"job {job.id}: {cfg.label()} on {cfg.model} ({job.device})")
        shown = view.progress()
        yield (shown, gr.skip(), "\n".join(view.log), gr.skip(), gr.skip(), gr.skip(), gr.skip(), job.id)
        last = time.time()
        finished = False
        try:
            for e in self.runner.stream(job, heartbeat=1.0):
                if e is not None:
                    view.apply(e)
                elif view.state == "queued":
                    view.position = self.runner.position(job)
                terminal = isinstance(e, (ev.JobFinished, ev.JobFailed, ev.JobCancelled))
                if e is None:  # heartbeat: flush coalesced layers, or a changed bar (queue position, ETA)
                    if any(view.dirty.values()):
                        out = view.outputs()
                        shown = out[0]
                        yield (*out, job.id)
                        last = time.time()
                    elif view.progress() != shown:
                        shown = view.progress()
                        yield (shown, *[gr.skip()] * 6, job.id)
                    continue
                if terminal or time.time() - last >= YIELD_EVERY or isinstance(e, (ev.PhaseStarted, ev.Evaluated)):
                    out = view.outputs()
                    shown = out[0]
                    yield (*out, job.id)
                    last = time.time()
            finished = True
        finally:
            if not finished and not job.done:  # the client went away: stop the work nobody will see
                self.runner.cancel(job.id, "the browser tab closed")
        if view.state == "failed":
            raise gr.Error(user_message(view.message), title="The job failed")

    def cancel(self, job_id: str = "", request: gr.Request | None = None) -> str:
        """Cancel this session's job ``job_id``; '' = every active job of this session, 'sweep' = its sweep."""
        owner = getattr(request, "session_hash", None)
        job_id = (job_id or "").strip()
        if job_id == "sweep":
            ids = self.runner.cancel_owner(f"{owner}{SWEEP_OWNER}")
        elif job_id:
            job = self.runner.get(job_id)
            if job is None or job.owner not in (owner, f"{owner}{SWEEP_OWNER}"):
                return f"No job {job_id!r} of this session."
            ids = [job_id] if self.runner.cancel(job_id) else []
        else:
            ids = self.runner.cancel_owner(owner) + self.runner.cancel_owner(f"{owner}{SWEEP_OWNER}")
        if not ids:
            return "Nothing to cancel: no queued or running job."
        return f"Cancel requested for {', '.join(ids)}: a running job stops at the next layer, a queued one is dropped."

    def cancel_sweep(self, request: gr.Request | None = None) -> str:
        return self.cancel("sweep", request)

    # -- Compare tab ----------------------------------------------------------------------------------------
    def all_runs(self, include_precomputed: bool = True) -> list[dict]:
        runs = self.store.list_runs() if self.store is not None else []
        if include_precomputed and self.precomputed_dir is not None:
            runs = load_precomputed(self.precomputed_dir)[0] + runs
        return runs

    @staticmethod
    def _filter(runs: list[dict], model: str) -> list[dict]:
        if not model or model == "all models":
            return runs
        return [r for r in runs if (r.get("model") or {}).get("id", (r.get("config") or {}).get("model")) == model]

    def compare(self, model: str = "all models", include_precomputed: bool = True):
        """(runs table, trade-off figure, run A dropdown, run B dropdown, model filter dropdown)."""
        every = self.all_runs(include_precomputed)
        runs = self._filter(every, model)
        def label(r: dict) -> str:
            ppl = finite((r.get("perplexity") or {}).get("pruned"))
            return (f"{plots.run_label(r)} · ppl {ppl:.2f}" if ppl is not None else plots.run_label(r)) + \
                (" · precomputed" if r.get("precomputed") else "")

        choices = [(label(r), _run_id(r)) for r in reversed(runs)]
        ids = [c[1] for c in choices]
        models = ["all models"] + sorted({(r.get("model") or {}).get("id", "") for r in every} - {""})
        return (runs_frame(list(reversed(runs))), plots.tradeoff_figure(runs),
                gr.update(choices=choices, value=ids[0] if ids else None),
                gr.update(choices=choices, value=ids[1] if len(ids) > 1 else None),
                gr.update(choices=models, value=model if model in models else "all models"))

    def overlay(self, run_a: str | None, run_b: str | None):
        by_id = {_run_id(r): r for r in self.all_runs(True)}
        return plots.overlay_figure(by_id.get(run_a or ""), by_id.get(run_b or ""))

    def sweep(self, model: str, solvers: list[str], patterns: list[str], sparsities, nsamples: int, seqlen: int,
              eval_windows: int, eval_seqlen: int = 128, updates: list[str] | None = None, request: gr.Request | None = None):
        """Queue solvers × updates × patterns × sparsities; stream (status table, trade-off figure, runs table) as runs
        finish."""
        try:
            configs = sweep_configs(model, list(solvers or []), list(patterns or []), parse_sparsities(sparsities),
                                    nsamples, seqlen, eval_windows, eval_seqlen, updates=list(updates or ["none"]))
        except ConfigError as e:
            raise gr.Error(str(e), title="Invalid sweep") from None
        owner = f"{getattr(request, 'session_hash', None)}{SWEEP_OWNER}"
        jobs = self.runner.submit_many(configs, owner=owner)
        cursors = {j.id: 0 for j in jobs}
        progress = {j.id: "" for j in jobs}
        seen_done: set[str] = set()

        def status_frame() -> pd.DataFrame:
            rows = []
            for i, j in enumerate(jobs, 1):
                if j.status == "queued":
                    st = f"queued (#{self.runner.position(j)})"
                elif j.status == "running":
                    st = "running" + (f" · {progress[j.id]}" if progress[j.id] else "")
                elif j.status == "done":
                    p = (j.report or {}).get("perplexity", {}).get("pruned")
                    st = f"done · ppl {p:.3f}" + (" (cache)" if j.cached else "") if isinstance(p, (int, float)) else "done"
                else:
                    st = f"{j.status}: {j.message}"[:120]
                rows.append({"#": i, "solver": j.config.solver + (f"+{j.config.update}" if j.config.update != "none" else ""), "pattern": j.config.pattern, "sparsity": j.config.sparsity, "status": st})
            return pd.DataFrame(rows, columns=["#", "solver", "pattern", "sparsity", "status"])

        def figures():
            runs = self._filter(self.all_runs(True), model)
            return plots.tradeoff_figure(runs), runs_frame(list(reversed(runs)))

        fig, table = figures()
        yield status_frame(), fig, table
        while True:
            changed = False
            for j in jobs:
                new, cursors[j.id] = j.wait(cursors[j.id], 0)
                for e in new:
                    if isinstance(e, ev.BlockStarted):
                        progress[j.id] = f"block {e.block + 1}/{e.n_blocks}"
                        changed = True
                if j.done and j.id not in seen_done:
                    seen_done.add(j.id)
                    changed = True
            if changed:
                fig, table = figures() if any(j.status == "done" for j in jobs) else (gr.skip(), gr.skip())
                yield status_frame(), fig, table
            if len(seen_done) == len(jobs):
                break
            time.sleep(0.5)

    # -- Lab tab --------------------------------------------------------------------------------------------
    @staticmethod
    def lab_model(model: str):
        """(block slider, projection dropdown) for a model; errors leave the pickers as they are."""
        from pruning.api import model_info

        try:
            info = model_info((model or DEFAULT_MODEL).strip())
        except (ValueError, OSError) as e:
            gr.Warning(f"model: {e}")
            return gr.skip(), gr.skip()
        names = list(info["linears"])
        default = "self_attn.q_proj" if "self_attn.q_proj" in names else names[0]
        return (gr.update(maximum=info["n_blocks"] - 1, value=min(info["n_blocks"] - 1, info["n_blocks"] // 2)),
                gr.update(choices=[(f"{n}  ({d_out}×{d_in})", n) for n, (d_out, d_in) in info["linears"].items()], value=default))

    def lab(self, model: str, block: int, projection: str, sparsity: float, pattern: str, nsamples: int, seqlen: int,
            admm_iters: int, fw_iters: int):
        """One layer, every solver: (status, error plot, residuals, schedule, mask, histogram, SparseFW, explanation,
        summary JSON, lab state)."""
        from pruning.lab import mask_crop, run_lab

        sk = gr.skip()
        model = (model or DEFAULT_MODEL).strip()
        t0 = time.time()
        box: dict = {}
        news: "queue.Queue[str]" = queue.Queue()

        def work():  # the lab runs beside the handler so that its steps can be shown as they happen
            try:
                box["res"] = run_lab(model, int(block), projection, float(sparsity), pattern, int(nsamples), int(seqlen),
                                     admm_iters=int(admm_iters), sparsefw_iters=int(fw_iters), on_status=news.put)
            except Exception as e:  # noqa: BLE001 -- re-raised in the handler below
                box["error"] = e
            finally:
                news.put("")

        worker = threading.Thread(target=work, name="lab", daemon=True)
        worker.start()
        while True:
            msg = news.get()
            if not msg:
                break
            yield (f"Running on block {int(block)} · `{projection}`: {msg} ({time.time() - t0:.0f} s)", sk, sk, sk, sk, sk, sk, sk, sk, sk)
        worker.join()
        if "error" in box:
            e = box["error"]
            if isinstance(e, ValueError):
                raise gr.Error(user_message(str(e)), title="Invalid lab setting") from None
            raise gr.Error(f"{type(e).__name__}: {e}", title="The lab failed") from None
        res = box["res"]
        r0, c0 = res["mask"]["default_corner"]
        crop = mask_crop(res["mask"], r0, c0, 48)
        summary = lab_summary(res)
        status = (f"✓ Block {res['layer']['block']} · `{res['layer']['name']}` ({res['layer']['shape'][0]}×{res['layer']['shape'][1]}, "
                  f"{res['layer']['n_tokens']} tokens) · {res['layer']['pattern']} {res['layer']['sparsity']:.0%} · {time.time() - t0:.1f} s")
        yield (status, plots.lab_error_figure(res), plots.residuals_figure(res), plots.schedule_figure(res),
               plots.mask_figure(crop), plots.histogram_figure(res["hist"]), plots.sparsefw_figure(res.get("sparsefw")),
               explanation_md(res), summary, {"mask": res["mask"], "row": r0, "col": c0})

    @staticmethod
    def lab_crop(state: dict | None, row: int, col: int, size: int):
        from pruning.lab import mask_crop

        if not state or "mask" not in state:
            return plots.mask_figure(None)
        return plots.mask_figure(mask_crop(state["mask"], row, col, size))

    @staticmethod
    def lab_crop_controls(state: dict | None):
        """After a lab run: the crop sliders jump to the window with the most disagreements."""
        if not state or "mask" not in state:
            return gr.skip(), gr.skip()
        h, w = state["mask"]["codes"].shape
        return gr.update(maximum=max(0, h - 8), value=state["row"]), gr.update(maximum=max(0, w - 8), value=state["col"])


def lab_summary(res: dict) -> dict:
    """Plain numbers of a lab run (the /lab API's JSON output)."""
    pick = lambda rec: {k: rec[k] for k in ("rel_error", "seconds", "sparsity") if k in rec} if rec.get("available") else {"available": False, "reason": rec.get("reason")}  # noqa: E731
    return {"layer": res["layer"],
            "greedy": {k: pick(v) for k, v in res["greedy"].items()},
            "iterative": {k: pick(v) | ({"iterations": len(v.get("trace", []))} if v.get("available") else {}) for k, v in res["iterative"].items()},
            "sparsefw": pick(res.get("sparsefw") or {}),
            "mask_disagreement": {"a": res["mask"]["a"], "b": res["mask"]["b"], "fraction": res["mask"]["disagree"], "count": res["mask"]["n_disagree"]}}


EXPLANATION = """
**Why a joint update beats column-by-column greedy compensation.**
All methods minimise the same thing on this layer: the output error ‖WX − ŴX‖², where X are the layer's calibration
inputs. *Magnitude* and *Wanda* only choose which weights to drop and leave the others untouched. *SparseGPT* also
corrects the survivors, but greedily: it walks over the columns once, left to right, and each time it prunes a column it
pushes the error onto the columns it has **not yet visited**. Columns already passed are frozen, so an early decision can
never be revised, and the mask of each block is fixed before the later columns know what happened.
*ADMM* instead solves for **all surviving weights at once**: every iteration is a least-squares step over the whole row
(using X Xᵀ, so every column can compensate for every other) followed by a projection onto the mask; the dual variable
remembers the accumulated disagreement and pulls the two together. With a *fixed* mask this converges to the best
possible weights for that mask; with the *gradual* mask (ADMM-Grad) the mask itself is re-chosen from the current,
already-compensated weights while the sparsity ramps up, so it can keep weights that only look unimportant before
compensation — the highlighted cells in the heat-map.
"""


def explanation_md(res: dict) -> str:
    g = {k: v["rel_error"] for k, v in res["greedy"].items() if v.get("available")}
    it = {k: v["rel_error"] for k, v in res["iterative"].items() if v.get("available")}
    lines = [EXPLANATION.strip()]
    if it and "sparsegpt" in g:
        best_label, best = min(it.items(), key=lambda kv: kv[1])
        gain = 1 - best / g["sparsegpt"] if g["sparsegpt"] > 0 else 0.0
        verdict = f"{gain:.0%} lower" if gain > 0 else f"{-gain:.0%} higher"
        lines.append(f"\n**On this layer:** {best_label} reaches a relative error of **{best:.4g}**, {verdict} than SparseGPT "
                     f"({g['sparsegpt']:.4g}); Wanda {g.get('wanda', float('nan')):.4g}, magnitude {g.get('magnitude', float('nan')):.4g}. "
                     f"The two masks differ in {res['mask']['n_disagree']:,} entries ({res['mask']['disagree']:.1%}).")
    elif not it:
        lines.append("\n*ADMM is not available in this build; only the greedy solvers ran.*")
    return "\n".join(lines)
