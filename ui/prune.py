"""The Prune tab: the form (generated from the solver registry), Run / Cancel, the live progress, the per-layer
chart, the results.

API (gradio_client / the page's "API" link):
  /prune(config: dict)   streams (progress HTML, layer-error figure, log, metrics HTML, generations HTML,
                         per-layer table, report dict, job id); the config is PruneConfig.to_dict()-shaped
  /cancel(job_id: str)   '' = every active job of the caller's session; returns a status line
  /estimate(config) -> seconds
"""
from __future__ import annotations

import html
import time

import gradio as gr
import pandas as pd

from pruning import SOLVERS, UPDATES
from pruning import events as ev
from pruning.config import DEFAULT_MODEL, DEFAULT_PROMPTS, DEVICES, DTYPES, ConfigError, PruneConfig

from pruning.errors import PruningError, user_message

from . import engine, plots, render
from .exporting import export_zip
from .base import READY, App, Tab
from .forms import (CALIB_DEFAULTS, DEFAULT_SOLVER, DEFAULTS, EVAL_DEFAULTS, FORM_FIELDS, PRUNE_LABELS, OptionRef, calib_sources,
                    config_from_form, option_refs, parse_config, pattern_choices, relabel, size_defaults, size_presets)
from .jobview import JobView

YIELD_EVERY = 1.0  # s between streamed UI updates while layers finish (bursts are coalesced; each update costs the job CPU)
SWEEP_OWNER = "/sweep"
KIND_LABELS = {"mask": "mask only", "update": "mask + weight update", "block": "block-level"}
LAYER_COLUMNS = ["block", "layer", "rel. error", "sparsity", "seconds"]


def solver_info_md(name: str) -> str:
    if name not in SOLVERS:
        return ""
    s = SOLVERS.get(name)
    link = f" · [paper]({s.paper})" if s.paper else ""
    kind = KIND_LABELS.get(s.kind, s.kind)
    return f"<span class='pl-muted'>**{s.name}** ({kind}): {html.escape(s.summary)}{link}</span>"


def error_text(message: str) -> str:
    """A message for gr.Error / gr.Warning: the toast renders HTML, so '<pasted text>' must be escaped."""
    return html.escape(str(message), quote=False)


def _option_control(ref: OptionRef):
    """A control for one declared option. Bounds are checked by the engine (messages naming the field), never
    clamped by the component."""
    o = ref.option
    label, info = ref.label, o.help or None
    if o.type == "bool":
        return gr.Checkbox(value=bool(o.default), label=label, info=info)
    if o.type == "choice":
        return gr.Dropdown(choices=list(o.choices), value=o.default, label=label, info=info)
    if o.type == "int":
        return gr.Number(value=o.default, precision=0, label=label, info=info)
    return gr.Number(value=o.default, label=label, info=info, step=0.01)


def outputs(view: JobView, force: bool = False) -> tuple:
    """(progress, layer plot, log, metrics, generations, layer table, report JSON); unchanged parts skipped."""
    d = view.dirty
    fig = plots.layer_error_figure(view.layers, view.n_blocks or None) if (d["layers"] or force) else gr.skip()
    log = "\n".join(view.log) if (d["log"] or force) else gr.skip()
    if d["metrics"] or force:
        shown, note = view.pruned_ppl_shown()  # while evaluating: the running value, "after k/n windows"
        metrics = render.metrics_html(view.report, view.dense_ppl, shown, view.state, note)
    else:
        metrics = gr.skip()
    gens = (render.generations_html(view.generations(), view.cfg.max_new_tokens)
            if (d["gens"] or d["report"] or force) else gr.skip())  # streamed token by token, dense beside pruned
    if d["report"] or force:
        r = view.report
        table = pd.DataFrame(view.layer_rows(), columns=LAYER_COLUMNS)
        rep = r if r is not None else {"config": view.cfg.to_dict(), "key": view.cfg.key(), "status": view.state}
    else:
        table = rep = gr.skip()
    view.dirty = {k: False for k in view.dirty}
    return view.progress(), fig, log, metrics, gens, table, rep


class PruneTab(Tab):
    id, title = "prune", "Prune"

    # -- layout ---------------------------------------------------------------------------------------------
    def build(self, app: App) -> None:
        from pruning.api import ALLOCATIONS  # torch: at build time, not when ui is imported

        self.app = app
        self.refs = option_refs()
        self.option_inputs, self.solver_groups, self.update_groups = [], {}, {}
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=330):
                self.model = gr.Dropdown(choices=[DEFAULT_MODEL], value=DEFAULTS.model, allow_custom_value=True, label="Model",
                                         info="Embedded SmolLM2-135M-Instruct (offline), or a local directory / Hugging Face hub id")
                self.solver = gr.Dropdown(choices=SOLVERS.names(), value=DEFAULT_SOLVER, label="Solver")
                self.solver_info = gr.Markdown(solver_info_md(DEFAULT_SOLVER))
                with gr.Row():
                    self.pattern = gr.Dropdown(choices=pattern_choices(), value=DEFAULTS.pattern, allow_custom_value=True,
                                               label="Pattern", info="N:M = N pruned in every M consecutive inputs", min_width=140)
                    # a number box, not a slider: a slider clamps what is typed (1.2 would silently become its maximum)
                    self.sparsity = gr.Number(value=DEFAULTS.sparsity, step=0.05, label="Sparsity",
                                              info="fraction pruned, in [0, 1); N:M fixes it to N/M", min_width=160,
                                              elem_id="sparsity")
                self.estimate = gr.Markdown("", elem_id="estimate")
                self.ready_banner = gr.HTML(READY.banner_html(), elem_id="ready-banner")  # server preparation, once at start
                self.ready_timer = gr.Timer(1.0, active=not READY.ready)
                with gr.Row():
                    self.run_btn = gr.Button("▶ Run", variant="primary", scale=3, elem_id="run-btn", interactive=READY.ready)
                    self.cancel_btn = gr.Button("■ Cancel", variant="stop", scale=1)
                self.cancel_msg = gr.Markdown("")
                presets = [p for p in (["sparsegpt", "unstructured", 0.5], ["wanda", "2:4", 0.5], ["admm", "unstructured", 0.6],
                                       ["sparsefw", "unstructured", 0.6], ["magnitude", "unstructured", 0.5]) if p[0] in SOLVERS]
                gr.Examples(presets, [self.solver, self.pattern, self.sparsity], label="Presets", cache_examples=False,
                            examples_per_page=6)
                self.best_btn = gr.Button("★ Best (measured) for this pattern and sparsity", size="sm", elem_id="best-preset")
                with gr.Accordion("Solver options", open=False):
                    with gr.Group(visible=SOLVERS.get(DEFAULT_SOLVER).kind == "mask") as self.update_row:
                        self.update = gr.Dropdown(choices=UPDATES.names(), value=DEFAULTS.update, label="Weight update after the mask",
                                                  info="Re-fit the surviving weights on the chosen mask")
                    for ref in self.refs:
                        groups = self.solver_groups if ref.kind == "solver" else self.update_groups
                        if ref.owner not in groups:
                            visible = ref.owner == DEFAULT_SOLVER if ref.kind == "solver" else False
                            groups[ref.owner] = gr.Group(visible=visible)
                        with groups[ref.owner]:
                            self.option_inputs.append(_option_control(ref))
                    gr.Markdown("<span class='pl-muted'>Options appear for the selected solver; defaults are the papers' "
                                "settings. Terms such as OBS, Gram, ρ or FW gap: see the glossary in About.</span>")
                sizes = size_defaults(DEFAULTS.device)  # follow the device: the papers' sizes on a GPU
                with gr.Accordion("Calibration and evaluation", open=False):
                    with gr.Row():
                        self.nsamples = gr.Number(value=sizes["nsamples"], precision=0, label="Calibration windows", min_width=120)
                        self.seqlen = gr.Number(value=sizes["seqlen"], precision=0, label="Tokens per window", min_width=120)
                    with gr.Row():
                        self.eval_windows = gr.Number(value=sizes["eval_windows"], precision=0, label="Eval windows (0 = all)", min_width=120)
                        self.eval_seqlen = gr.Number(value=sizes["eval_seqlen"], precision=0, label="Eval tokens per window", min_width=120)
                    with gr.Row():  # run sizes one click away
                        self.size_buttons = {label: gr.Button(label, size="sm") for label in size_presets()}
                    self.calib_source = gr.Dropdown(choices=calib_sources(), value=CALIB_DEFAULTS.source, allow_custom_value=True,
                                                    label="Text", info="Embedded Wikipedia sample (offline); wikitext2 / c4 need "
                                                    "the network; or 'text:' + pasted text, or a path to a UTF-8 text file")
                    self.allocation = gr.Dropdown(choices=list(ALLOCATIONS), value=DEFAULTS.allocation, label="Allocation",
                                                  info="Per-layer sparsity, same global budget: uniform = the same everywhere; owl = "
                                                  "less in blocks with many outliers; curve = per layer, from measured error curves")
                    with gr.Row():
                        self.zeroshot = gr.Checkbox(value=bool(EVAL_DEFAULTS.zeroshot), label="Zero-shot accuracy (wiki-lastword, lm-eval)",
                                                    info=f"dense and pruned, {EVAL_DEFAULTS.zeroshot_limit} items of the embedded text (lm-eval; adds its own passes)")
                        self.kl = gr.Checkbox(value=EVAL_DEFAULTS.kl, label="KL drift vs dense",
                                              info="KL(dense ‖ pruned) and top-1 agreement over the eval windows")
                    with gr.Row():
                        self.device = gr.Dropdown(choices=list(DEVICES), value=DEFAULTS.device, allow_custom_value=True, label="Device", min_width=100)
                        self.dtype = gr.Dropdown(choices=list(DTYPES), value=DEFAULTS.dtype, label="Forward dtype", min_width=100)
                    # models larger than the GPU: blocks on CPU or disk, one on the GPU at a time (pruning.offload);
                    # on a CPU-only server there is nothing to offload to, so the control is hidden
                    self.offload = gr.Dropdown(choices=["none", "cpu", "disk"], value=DEFAULTS.offload,
                                               label=PRUNE_LABELS["offload"], visible=_has_gpu(),
                                               info="cpu / disk: for models that do not fit on the GPU (through "
                                               "accelerate; the result is the same); no KL drift or zero-shot then")
                with gr.Accordion("Prompts for the generations", open=False):
                    self.prompts = gr.Textbox(value="\n".join(DEFAULT_PROMPTS), lines=3, label="One prompt per line")
                    self.max_new_tokens = gr.Number(value=DEFAULTS.max_new_tokens, precision=0,
                                                    label="New tokens (greedy, same for dense and pruned)")
                with gr.Accordion("Config sent to /prune", open=False):
                    self.config_json = gr.JSON(value=DEFAULTS.to_dict(), label="config", show_label=False)
                    self.job_id = gr.Textbox(label="Job id", interactive=False, max_lines=1)
            with gr.Column(scale=8, min_width=480):
                self.progress = gr.HTML(render.progress_html(0, "Ready", "press Run", "idle"), elem_id="progress")
                self.layer_plot = gr.Plot(plots.layer_error_figure([]), show_label=False, elem_id="layer-plot")
                self.metrics = gr.HTML(render.metrics_html(None))
                with gr.Row():
                    self.export_btn = gr.Button("⤓ Export the pruned model", scale=1, elem_id="export-btn", size="sm")
                    self.export_msg = gr.Markdown("<span class='pl-muted'>After a finished run: safetensors + tokenizer + "
                                                  "model card, as a .zip</span>", elem_id="export-msg")
                self.export_file = gr.File(label="Exported model (.zip)", interactive=False, elem_id="export-file")
                with gr.Tabs():
                    with gr.Tab("Generations"):
                        self.generations = gr.HTML(render.generations_html([]))
                    with gr.Tab("Per layer"):
                        self.layer_table = gr.Dataframe(headers=LAYER_COLUMNS, interactive=False, max_height=360, show_label=False)
                    with gr.Tab("Log"):
                        self.log = gr.Textbox(lines=14, max_lines=14, autoscroll=True, show_label=False, elem_classes="pl-log")
                    with gr.Tab("Report (JSON)"):
                        self.report = gr.JSON(show_label=False)

    def form_inputs(self) -> list:
        """The form, in forms.FORM_FIELDS order, then every solver/update option control."""
        return [self.model, self.solver, self.pattern, self.sparsity, self.update, self.nsamples, self.seqlen, self.calib_source,
                self.eval_windows, self.eval_seqlen, self.device, self.dtype, self.prompts, self.max_new_tokens,
                self.allocation, self.zeroshot, self.kl, self.offload, *self.option_inputs]

    def prune_outputs(self) -> list:
        return [self.progress, self.layer_plot, self.log, self.metrics, self.generations, self.layer_table, self.report, self.job_id]

    # -- wiring ---------------------------------------------------------------------------------------------
    @staticmethod
    def best(pattern: str, sparsity):
        """The "Best" preset (pruning.presets): solver, update and allocation of the lowest measured perplexity."""
        from pruning.presets import best_preset

        try:
            b = best_preset(pattern or "unstructured", float(sparsity if sparsity is not None else 0.5))
        except (TypeError, ValueError):
            b = best_preset(pattern or "unstructured", 0.5)
        gr.Info(f"Best measured: {b['solver']}{'+' + b['update'] if b['update'] != 'none' else ''}, allocation "
                f"{b['allocation']} (perplexity {b['perplexity']} at {b['measured_at'][0]} {b['measured_at'][1]:.0%})")
        return b["solver"], b["update"], b["allocation"]

    def wire(self, app: App) -> None:
        form = self.form_inputs()
        self.best_btn.click(self.best, [self.pattern, self.sparsity], [self.solver, self.update, self.allocation],
                            api_name="best_preset", show_progress="hidden", queue=False)
        solver_groups, update_groups = list(self.solver_groups.values()), list(self.update_groups.values())
        gr.on([comp.change for comp in form], self.preview, inputs=form, outputs=[self.config_json, self.estimate],
              show_progress="hidden", trigger_mode="always_last", api_visibility="private", queue=False)
        # a new model id: load it (queued; the embedded one is loaded at server start), then re-check the form
        self.model.change(self.inspect_model, self.model, None, api_visibility="private", show_progress="hidden",
                          trigger_mode="always_last") \
            .then(self.preview, form, [self.config_json, self.estimate], api_visibility="private", show_progress="hidden")

        def toggle(groups: dict, selected: str):
            return [gr.update(visible=(name == selected)) for name in groups]

        def on_solver(solver: str):
            is_mask = solver in SOLVERS and SOLVERS.get(solver).kind == "mask"
            return [solver_info_md(solver), gr.update(visible=is_mask), *toggle(self.solver_groups, solver)]

        self.solver.change(on_solver, self.solver, [self.solver_info, self.update_row, *solver_groups], show_progress="hidden",
                           api_visibility="private", queue=False)
        self.update.change(lambda u: toggle(self.update_groups, u), self.update, update_groups, show_progress="hidden",
                           api_visibility="private", queue=False)
        for label, sizes in size_presets().items():
            self.size_buttons[label].click(lambda s=sizes: (s["nsamples"], s["seqlen"], s["eval_windows"], s["eval_seqlen"]),
                                           None, [self.nsamples, self.seqlen, self.eval_windows, self.eval_seqlen],
                                           show_progress="hidden", api_visibility="private", queue=False)

        # Run: the bar shows at once what is wrong (replacing an earlier failure's text), the toast says it too
        run = self.run_btn.click(self.check, form, [self.progress, self.cancel_msg], api_visibility="private",
                                 show_progress="hidden", queue=False)
        run = run.then(self.validate, form, self.config_json, api_visibility="private", show_progress="hidden")
        job = run.success(self.prune, self.config_json, self.prune_outputs(), api_name="prune", concurrency_limit=8,
                          concurrency_id="prune", show_progress="hidden")
        app.after_runs(job)
        # after a run the same form is in the cache: say so ("instant"), not the old estimate
        job.then(self.preview, form, [self.config_json, self.estimate], api_visibility="private", show_progress="hidden")
        self.export_btn.click(self.export, self.report, [self.export_file, self.export_msg], api_name="export",
                              concurrency_limit=1, concurrency_id="export")
        self.cancel_btn.click(self.cancel, self.job_id, self.cancel_msg, api_name="cancel", queue=False, show_progress="hidden")
        gr.api(self.estimate_seconds_api, api_name="estimate")
        readiness = [self.ready_banner, self.run_btn, self.ready_timer]
        self.ready_timer.tick(self.readiness, None, readiness, api_visibility="private", show_progress="hidden", queue=False
                              ).then(self.preview_when_ready, form, [self.config_json, self.estimate], api_visibility="private",
                                     show_progress="hidden", queue=False)  # a skip each second while preparing: off the queue
        app.demo.load(self.readiness, None, readiness, api_visibility="private", show_progress="hidden", queue=False)
        app.demo.load(self.preview, form, [self.config_json, self.estimate], api_visibility="private", show_progress="hidden")

    # -- handlers -------------------------------------------------------------------------------------------
    @staticmethod
    def _form(values) -> tuple[dict, list]:
        n = len(FORM_FIELDS)
        return dict(zip(FORM_FIELDS, values[:n])), list(values[n:])

    def _config(self, values) -> PruneConfig:
        """The form's config, checked as far as is cheap before Run; ConfigError in the page's words."""
        form, opts = self._form(values)
        cfg = config_from_form(form, opts, self.refs)
        err = engine.known_error(cfg.model)
        if err:
            raise ConfigError(err)
        src = engine.check_text_source(cfg.calib.source)
        if src:
            raise ConfigError(relabel(src, PRUNE_LABELS))
        info = engine.known_info(cfg.model)
        if info:
            bad = engine.check_pattern(cfg.pattern, info)
            if bad:
                raise ConfigError(bad)
        return cfg

    def preview(self, *values) -> tuple[dict, str]:
        """Form changed: (config dict, estimate markdown). Never raises: problems are shown in the estimate line."""
        try:
            cfg = self._config(values)
        except ValueError as e:
            return gr.skip(), f"⚠ {error_text(e)}"
        return cfg.to_dict(), self.estimate_text(cfg)

    def preview_when_ready(self, *values) -> tuple:
        """After a preparation tick: the estimate again once the server is ready (a page opened meanwhile still says
        "first use: converting ..."), nothing while it prepares."""
        if not READY.ready:
            return gr.skip(), gr.skip()
        return self.preview(*values)

    @staticmethod
    def readiness():
        """(banner, Run button, timer) for the server's preparation state: the step while preparing, Run enabled and
        the timer stopped once done."""
        ready = READY.ready
        return READY.banner_html(), gr.update(interactive=ready), gr.Timer(active=not ready)

    def check(self, *values):
        """Run pressed (before validate): the bar says what is wrong, or that the job is starting."""
        try:
            self._config(values)
        except ValueError as e:
            return render.progress_html(0, "Invalid setting", str(e)[:200], "failed"), ""
        return render.progress_html(0, "Starting", "checking the result cache", "starting"), ""

    def validate(self, *values) -> dict:
        """The validated config (the input of /prune), or a gr.Error naming the bad field."""
        try:
            return self._config(values).to_dict()
        except ValueError as e:
            raise gr.Error(error_text(e), title="Invalid setting") from None

    def inspect_model(self, model: str) -> None:
        """Load a newly typed model (to know its widths and fingerprint); errors are shown by the next preview."""
        try:
            engine.model_info(model)
        except (ValueError, OSError):
            pass

    def _stored(self, cfg: PruneConfig) -> bool:
        store = self.app.store
        if store is None:
            return False
        info = engine.known_info(cfg.model)
        return store.get(cfg.key(), info["fingerprint"] if info else None) is not None

    def _dense_known(self, cfg: PruneConfig) -> bool:
        """Has a run of this model with these evaluation settings finished here (so its dense result is cached)?"""
        store = self.app.store
        if store is None:
            return False
        ev_ = cfg.to_dict()["eval"]
        try:
            runs = store.list_runs()
        except OSError:
            return False
        return any((r.get("config") or {}).get("model") == cfg.model and (r.get("config") or {}).get("eval") == ev_ for r in runs)

    def estimate_text(self, cfg: PruneConfig) -> str:
        try:
            dev, shown = engine.device_label(cfg)
        except ValueError as e:
            return f"⚠ {error_text(relabel_device(e))}"
        if self._stored(cfg):
            return "In the cache: **instant** (this configuration has run before; its stored result is shown)"
        secs = engine.estimate(cfg, device=dev)
        if secs is None:
            return f"No time estimate for **{cfg.method}** (its solver declares no cost entry); it runs all the same"
        extra = [] if self._dense_known(cfg) else ["plus the dense model's evaluation if it has not run with these settings yet"]
        note = engine.first_use_note(cfg.model)
        if note:
            extra.append(note)
        return f"Estimated time: **{render.fmt_seconds(secs)}** on {shown} (rough" + "".join(f"; {x}" for x in extra) + ")"

    @staticmethod
    def estimate_seconds_api(config: dict) -> float:
        """Rough seconds a config will take (the same estimate the Prune tab shows)."""
        try:
            return engine.estimate(parse_config(config))
        except ValueError as e:
            raise gr.Error(error_text(e), title="Invalid setting") from None

    def prune(self, config, request: gr.Request | None = None):
        """Stream a job: (progress, layer plot, log, metrics, generations, layer table, report, job id)."""
        try:
            cfg = parse_config(config)
        except ConfigError as e:
            raise gr.Error(error_text(e), title="Invalid setting") from None
        owner = getattr(request, "session_hash", None)
        try:
            est = engine.estimate(cfg)
        except ValueError:
            est = None
        view = JobView(cfg, est, engine.tail_estimate(cfg, est))
        view.phase = "load"
        while not READY.wait(1.0):  # an API call during the server's preparation: wait for it, showing the step
            yield (render.progress_html(0, "Waiting for the server to finish preparing", f"{READY.step} · "
                                        f"{READY.elapsed():.0f} s so far", "queued"), *[gr.skip()] * 6, gr.skip())
        first = list(outputs(view, force=True))
        note = engine.first_use_note(cfg.model)
        first[0] = render.progress_html(0, "Loading the model" if note else "Starting",
                                        f"{note}; then checking the result cache" if note else "checking the result cache", "starting")
        yield (*first, gr.skip())
        runner = self.app.runner
        job = runner.submit(cfg, owner=owner)  # a cache hit completes here, without queueing
        if note and getattr(runner, "in_process", True):  # submit loaded the model here (for its fingerprint): remember
            # its shapes for the next form checks (out of process, the runner remembers what its worker reported)
            try:
                engine.model_info(cfg.model)
            except (ValueError, OSError):
                pass  # the job reports it
        view.position = runner.position(job)
        view.note(f"{cfg.label()} on {cfg.model} ({job.device})")
        shown = view.progress()
        yield (shown, gr.skip(), "\n".join(view.log), gr.skip(), gr.skip(), gr.skip(), gr.skip(), job.id)
        last = time.monotonic()
        finished = False
        try:
            for e in runner.stream(job, heartbeat=1.0):
                if isinstance(e, ev.JobFailed):  # the engine names API fields: say them as the page does
                    e = ev.JobFailed(relabel(e.message, PRUNE_LABELS), getattr(e, "kind", "internal"))
                if e is not None:
                    view.apply(e)
                elif view.state == "queued":
                    view.position = runner.position(job)
                terminal = isinstance(e, (ev.JobFinished, ev.JobFailed, ev.JobCancelled))
                if e is None:  # heartbeat: flush coalesced layers, or a changed bar (queue position, ETA)
                    if any(view.dirty.values()):
                        out = outputs(view)
                        shown = out[0]
                        yield (*out, job.id)
                        last = time.monotonic()
                    elif view.progress() != shown:
                        shown = view.progress()
                        yield (shown, *[gr.skip()] * 6, job.id)
                    continue
                if terminal or time.monotonic() - last >= YIELD_EVERY or isinstance(e, (ev.PhaseStarted, ev.Evaluated)):
                    out = outputs(view)
                    shown = out[0]
                    yield (*out, job.id)
                    last = time.monotonic()
            finished = True
        finally:
            if not finished and not job.done:  # the client went away: stop the work nobody will see
                runner.cancel(job.id, "the browser tab closed")
        if view.state == "failed":
            title = "Invalid setting" if view.kind == "input" else "The job failed"
            raise gr.Error(error_text(relabel(view.message, PRUNE_LABELS)), title=title)

    def export(self, report: dict | None, request: gr.Request | None = None):
        """Export the shown finished run: (the .zip for download, a message). A plain handler, one export at a
        time: the runner keeps reports, not pruned models, so the export rebuilds the weights by re-running the stored
        config (checked bit for bit against the stored per-layer errors) as an ``export`` task on the device's queue,
        in the worker process (``ui.exporting.export_zip``)."""
        rid = (report or {}).get("run_id") if isinstance(report, dict) else None
        if not rid or not (report or {}).get("layers"):
            raise gr.Error("Export: no finished run to export; press Run and wait until it is done", title="Nothing to export")
        try:
            _, zpath = export_zip(self.app, rid, owner=getattr(request, "session_hash", None))
        except ev.Cancelled:
            raise gr.Error("Export: cancelled before the pruned model was rebuilt; nothing was written",
                           title="Export cancelled") from None
        except (ValueError, RuntimeError, OSError, PruningError) as e:
            raise gr.Error(error_text(user_message(e)), title="Export failed") from None
        return str(zpath), f"Exported run `{rid}`: download the .zip below."

    def cancel(self, job_id: str = "", request: gr.Request | None = None) -> str:
        """Cancel this session's job ``job_id``; '' = every active job of this session, 'sweep' = its sweep."""
        runner = self.app.runner
        owner = getattr(request, "session_hash", None)
        job_id = (job_id or "").strip()
        if job_id == "sweep":
            ids = runner.cancel_owner(f"{owner}{SWEEP_OWNER}")
            what = "the sweep's runs"
        elif job_id:
            job = runner.get(job_id)
            if job is None or job.owner not in (owner, f"{owner}{SWEEP_OWNER}"):
                return "No such job of this session (it may have finished already)."
            ids = [job_id] if runner.cancel(job_id) else []
            what = "your job"
        else:
            ids = runner.cancel_owner(owner) + runner.cancel_owner(f"{owner}{SWEEP_OWNER}")
            what = "your job" if len(ids) == 1 else f"your {len(ids)} jobs"
        if not ids:
            return "Nothing to cancel: no queued or running job."
        return f"Cancel requested for {what}: a running job stops at the next layer, a queued one is dropped."


def _has_gpu() -> bool:
    """Offload is offered only where there is a GPU to offload from."""
    from pruning.api import has_accelerator

    return has_accelerator()


def relabel_device(e: Exception) -> str:
    return relabel(str(e), PRUNE_LABELS)
