"""The Compare tab: every finished run (the result store + the precomputed SmolLM2 sweep) as a table, perplexity
against sparsity and against prune time, a per-layer overlay of two runs, and sweeps.

API:
  /runs(model, include_precomputed)   (runs table, trade-off figure, run A, run B, model filter, cost figure, overlay)
  /overlay(run_a, run_b)              per-layer error overlay figure
  /sweep(model, solvers, patterns, sparsities, nsamples, seqlen, eval_windows, eval_seqlen, updates)
                                      streams (status table, trade-off figure, runs table)
  /cancel_sweep()                     cancels the caller's sweep
"""
from __future__ import annotations

import gradio as gr
import pandas as pd

from pruning import SOLVERS, UPDATES
from pruning import events as ev
from pruning.config import DEFAULT_MODEL, ConfigError, method_label
from pruning.errors import PruningError, user_message
from pruning.executors import LocalExecutor
from pruning.results import load_precomputed, run_id_of

from . import plots
from .exporting import export_zip
from .base import App, Tab
from .forms import CALIB_DEFAULTS, EVAL_DEFAULTS, finite, mask_solvers, pattern_choices, sweep_from_form
from .prune import SWEEP_OWNER, error_text

ALL_MODELS = "all models"
# the columns a reader compares first, then the details
RUN_COLUMNS = ["solver", "pattern", "sparsity", "pruned ppl", "ppl ×", "zero-shot acc", "KL", "prune s", "dense ppl", "source",
               "mean err", "model", "calib", "eval", "device", "finished", "run id", "key"]
Y_CHOICES = ["perplexity", "zero-shot accuracy"]
STATUS_COLUMNS = ["#", "solver", "pattern", "sparsity", "status"]


def run_id(run: dict) -> str:
    return f"pre:{run.get('source_file', '')}:{run.get('key', '')}" if run.get("precomputed") else str(run.get("store_key", run.get("key", "")))


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        c = r.get("config") or {}
        ppl = r.get("perplexity") or {}
        errs = [v for v in (finite(l.get("rel_error")) for l in r.get("layers") or []) if v is not None]
        d, p = finite(ppl.get("dense")), finite(ppl.get("pruned"))
        cal, evc = c.get("calib") or {}, c.get("eval") or {}
        t = finite((r.get("timings") or {}).get("prune_total"))
        acc = plots.zeroshot_acc(r)
        kl = finite((r.get("drift") or {}).get("kl"))
        rows.append({
            "source": "precomputed" if r.get("precomputed") else "yours",
            "model": (r.get("model") or {}).get("id", c.get("model", "")),
            "solver": method_label(c), "pattern": c.get("pattern", ""),
            "sparsity": round(float(finite(r.get("sparsity", c.get("sparsity"))) or 0.0), 4),
            "dense ppl": round(d, 3) if d is not None else None,
            "pruned ppl": round(p, 3) if p is not None else None,
            "ppl ×": round(p / d, 3) if p is not None and d else None,
            "zero-shot acc": round(acc, 4) if acc is not None else None,
            "KL": round(kl, 5) if kl is not None else None,
            "mean err": round(sum(errs) / len(errs), 5) if errs else None,
            "prune s": round(t, 1) if t is not None else None,
            "calib": f"{cal.get('nsamples', '?')}×{cal.get('seqlen', '?')}",
            "eval": f"{evc.get('windows', '?')}×{evc.get('seqlen', '?')}",
            "device": r.get("device", ""),
            "finished": r.get("finished_at", ""),
            "run id": run_id_of(r) if r.get("config") else "",
            "key": r.get("key", ""),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


class CompareTab(Tab):
    id, title = "compare", "Compare"

    def build(self, app: App) -> None:
        self.app = app
        gr.Markdown("Every finished run from the result cache (*yours*: filled markers) and the precomputed SmolLM2 sweep "
                    "shipped with the app (hollow markers). Click a column header to sort.", elem_classes="pl-muted")
        with gr.Row():
            self.model = gr.Dropdown(choices=[ALL_MODELS], value=ALL_MODELS, label="Model", scale=3)
            self.precomputed = gr.Checkbox(value=True, label="Include precomputed results", scale=2)
            self.refresh = gr.Button("↻ Refresh", scale=1)
            self.y_axis = gr.Radio(Y_CHOICES, value=Y_CHOICES[0], label="Trade-off y axis", scale=2,
                                   info="zero-shot accuracy: only runs that measured it")
        with gr.Tabs():
            with gr.Tab("Perplexity vs sparsity"):
                self.tradeoff_plot = gr.Plot(plots.tradeoff_figure([]), show_label=False, elem_id="tradeoff-plot")
            with gr.Tab("Perplexity vs prune time", elem_id="cost-tab"):
                self.cost_plot = gr.Plot(plots.cost_figure([]), show_label=False, elem_id="cost-plot")
        self.runs_table = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, max_height=320, show_label=False,
                                       elem_id="runs-table", pinned_columns=3)
        gr.Markdown("#### Overlay two runs")
        self.run_a = gr.Dropdown(label="Run A", choices=[], elem_classes="pl-nowrap")
        self.run_b = gr.Dropdown(label="Run B", choices=[], elem_classes="pl-nowrap")
        self.overlay_plot = gr.Plot(plots.overlay_figure(None, None), show_label=False, elem_id="overlay-plot")
        with gr.Row():
            self.export_btn = gr.Button("⤓ Export run A", scale=1, elem_id="compare-export-btn")
            self.export_msg = gr.Markdown("<span class='pl-muted'>Writes run A's pruned model (safetensors, tokenizer, model "
                                          "card) on the server, rebuilt by re-running its config, and offers a .zip.</span>")
        self.export_file = gr.File(label="Exported model (.zip)", interactive=False, elem_id="compare-export-file")
        with gr.Accordion("Launch a sweep (queued like any other job)", open=False):
            with gr.Row():
                self.sw_solvers = gr.CheckboxGroup(choices=SOLVERS.names(), value=["magnitude", "wanda", "sparsegpt"],
                                                   label="Solvers", scale=3)
                self.sw_patterns = gr.CheckboxGroup(choices=pattern_choices(), value=["unstructured", "2:4"], label="Patterns", scale=2)
                self.sw_updates = gr.CheckboxGroup(choices=UPDATES.names(), value=["none"], label="Weight updates",
                                                   info=f"after each mask solver ({', '.join(mask_solvers())})", scale=2)
            with gr.Row():
                self.sw_model = gr.Dropdown(choices=[DEFAULT_MODEL], value=DEFAULT_MODEL, allow_custom_value=True, label="Model", min_width=140)
                self.sw_sparsities = gr.Textbox(value="0.3, 0.5, 0.7", label="Sparsities", info="comma-separated", min_width=140)
                self.sw_nsamples = gr.Number(value=CALIB_DEFAULTS.nsamples, precision=0, label="Calib windows", min_width=100)
                self.sw_seqlen = gr.Number(value=CALIB_DEFAULTS.seqlen, precision=0, label="Calib tokens", min_width=100)
                self.sw_eval_windows = gr.Number(value=EVAL_DEFAULTS.windows, precision=0, label="Eval windows", min_width=100)
                self.sw_eval_seqlen = gr.Number(value=EVAL_DEFAULTS.seqlen, precision=0, label="Eval tokens", min_width=100)
            with gr.Row():
                self.sw_btn = gr.Button("▶ Launch sweep", variant="primary", scale=3)
                self.sw_cancel = gr.Button("■ Cancel sweep", variant="stop", scale=1)
            self.sw_msg = gr.Markdown("")
            self.sw_status = gr.Dataframe(headers=STATUS_COLUMNS, interactive=False, max_height=300, show_label=False)

    def compare_outputs(self) -> list:
        return [self.runs_table, self.tradeoff_plot, self.run_a, self.run_b, self.model, self.cost_plot, self.overlay_plot]

    def wire(self, app: App) -> None:
        inputs, out = [self.model, self.precomputed], self.compare_outputs()
        y_in = [self.model, self.precomputed, self.y_axis]

        def keep_y(dep):  # compare() redraws perplexity: redraw accuracy if that is the chosen y axis
            return dep.then(self.keep_y_axis, y_in, self.tradeoff_plot, api_visibility="private", show_progress="hidden")

        keep_y(self.refresh.click(self.compare, inputs, out, api_name="runs", show_progress="hidden"))
        self.y_axis.input(self.tradeoff, [self.model, self.precomputed, self.y_axis], self.tradeoff_plot, api_name="tradeoff",
                          show_progress="hidden")
        self.export_btn.click(self.export, self.run_a, [self.export_file, self.export_msg], api_name="export_run",
                              concurrency_limit=1, concurrency_id="export")
        tab = app.tab_items.get(self.id)
        triggers = [self.model.input, self.precomputed.input] + ([tab.select] if tab is not None else [])
        keep_y(gr.on(triggers, self.compare, inputs, out, api_visibility="private", show_progress="hidden"))
        gr.on([self.run_a.input, self.run_b.input], self.overlay, [self.run_a, self.run_b], self.overlay_plot,
              api_name="overlay", show_progress="hidden", trigger_mode="always_last")
        sweep = self.sw_btn.click(self.sweep, [self.sw_model, self.sw_solvers, self.sw_patterns, self.sw_sparsities, self.sw_nsamples,
                                               self.sw_seqlen, self.sw_eval_windows, self.sw_eval_seqlen, self.sw_updates],
                                  [self.sw_status, self.tradeoff_plot, self.runs_table], api_name="sweep", concurrency_limit=4,
                                  concurrency_id="sweep", show_progress="hidden")
        keep_y(sweep.then(self.compare, inputs, out, api_visibility="private", show_progress="hidden"))
        self.sw_cancel.click(self.cancel_sweep, None, self.sw_msg, api_name="cancel_sweep", queue=False, show_progress="hidden")
        app.runs_listeners.append(lambda dep: keep_y(dep.then(self.compare, inputs, out, api_visibility="private",
                                                              show_progress="hidden")))
        app.demo.load(self.compare, inputs, out, api_visibility="private", show_progress="hidden")

    # -- handlers -------------------------------------------------------------------------------------------
    def all_runs(self, include_precomputed: bool = True) -> list[dict]:
        store, pre = self.app.store, self.app.precomputed_dir
        runs = store.list_runs() if store is not None else []
        if include_precomputed and pre is not None:
            runs = load_precomputed(pre)[0] + runs
        return runs

    @staticmethod
    def _filter(runs: list[dict], model: str) -> list[dict]:
        if not model or model == ALL_MODELS:
            return runs
        return [r for r in runs if (r.get("model") or {}).get("id", (r.get("config") or {}).get("model")) == model]

    def compare(self, model: str = ALL_MODELS, include_precomputed: bool = True):
        """(runs table, trade-off figure, run A dropdown, run B dropdown, model filter dropdown, cost figure, overlay)."""
        every = self.all_runs(include_precomputed)
        runs = self._filter(every, model)

        def label(r: dict) -> str:
            ppl = finite((r.get("perplexity") or {}).get("pruned"))
            return (f"{plots.run_label(r)} · ppl {ppl:.2f}" if ppl is not None else plots.run_label(r)) + \
                (" · precomputed" if r.get("precomputed") else " · yours")

        newest = list(reversed(runs))
        choices = [(label(r), run_id(r)) for r in newest]
        ids = [c[1] for c in choices]
        models = [ALL_MODELS] + sorted({(r.get("model") or {}).get("id", "") for r in every} - {""})
        a, b = (newest[0] if newest else None), (newest[1] if len(newest) > 1 else None)
        return (runs_frame(newest), plots.tradeoff_figure(runs),
                gr.update(choices=choices, value=ids[0] if ids else None),
                gr.update(choices=choices, value=ids[1] if len(ids) > 1 else None),
                gr.update(choices=models, value=model if model in models else ALL_MODELS),
                plots.cost_figure(runs), plots.overlay_figure(a, b))  # the overlay of the pickers' new values, at once

    def tradeoff(self, model: str = ALL_MODELS, include_precomputed: bool = True, y: str = "perplexity"):
        """The trade-off figure with y = perplexity or zero-shot accuracy (runs that measured it)."""
        runs = self._filter(self.all_runs(include_precomputed), model)
        if y == "zero-shot accuracy":
            return plots.tradeoff_figure(runs, title="Zero-shot accuracy vs sparsity", y="zeroshot")
        return plots.tradeoff_figure(runs)

    def keep_y_axis(self, model: str = ALL_MODELS, include_precomputed: bool = True, y: str = "perplexity"):
        return gr.skip() if y != "zero-shot accuracy" else self.tradeoff(model, include_precomputed, y)

    def export(self, pick: str | None, request: gr.Request | None = None):
        """Export the run picked as Run A: (file for download, message). A plain handler (one export at a time)."""
        by_id = {run_id(r): r for r in self.all_runs(True)}
        run = by_id.get(pick or "")
        if run is None:
            raise gr.Error("Run A: pick a run to export first", title="Nothing to export")
        pre = self.all_runs(True) if run.get("precomputed") else None
        extra = [r for r in pre if r.get("precomputed")] if pre else None
        try:
            _, zpath = export_zip(self.app, run_id_of(run), extra_runs=extra, owner=getattr(request, "session_hash", None))
        except ev.Cancelled:
            raise gr.Error("Export: cancelled before the pruned model was rebuilt; nothing was written",
                           title="Export cancelled") from None
        except (ValueError, RuntimeError, OSError, PruningError) as e:
            raise gr.Error(error_text(user_message(e)), title="Export failed") from None
        return str(zpath), f"Exported run {run_id_of(run)}: download the .zip below."

    def cancel_sweep(self, request: gr.Request = None) -> str:
        """Cancel the caller's sweep (the Prune tab's cancel, for the sweep's runs)."""
        return self.app.tabs["prune"].cancel("sweep", request)

    def overlay(self, run_a: str | None, run_b: str | None):
        by_id = {run_id(r): r for r in self.all_runs(True)}
        return plots.overlay_figure(by_id.get(run_a or ""), by_id.get(run_b or ""))

    def sweep(self, model: str, solvers: list[str], patterns: list[str], sparsities, nsamples: int, seqlen: int,
              eval_windows: int, eval_seqlen: int = EVAL_DEFAULTS.seqlen, updates: list[str] | None = None,
              request: gr.Request | None = None):
        """Queue solvers × updates × patterns × sparsities; stream (status table, trade-off figure, runs table) as runs
        finish."""
        try:
            configs = sweep_from_form(model, solvers, patterns, sparsities, nsamples, seqlen, eval_windows, eval_seqlen, updates)
        except ConfigError as e:
            raise gr.Error(error_text(e), title="Invalid sweep") from None
        runner = self.app.runner
        owner = f"{getattr(request, 'session_hash', None)}{SWEEP_OWNER}"
        # the CLI's local executor on the app's runner: its queues (one worker per device) and its result store
        jobs = LocalExecutor(runner, owner=owner).submit(configs)
        cursors = {j.id: 0 for j in jobs}
        progress = {j.id: "" for j in jobs}
        seen_done: set[str] = set()

        def status_frame() -> pd.DataFrame:
            rows = []
            for i, j in enumerate(jobs, 1):
                if j.status == "queued":
                    st = f"queued (#{runner.position(j)})"
                elif j.status == "running":
                    st = "running" + (f" · {progress[j.id]}" if progress[j.id] else "")
                elif j.status == "done":
                    p = finite((j.report or {}).get("perplexity", {}).get("pruned"))
                    st = (f"done · ppl {p:.3f}" + (" (cache)" if j.cached else "")) if p is not None else "done"
                else:
                    st = f"{j.status}: {j.message}"[:120]
                rows.append({"#": i, "solver": j.config.method, "pattern": j.config.pattern, "sparsity": j.config.sparsity, "status": st})
            return pd.DataFrame(rows, columns=STATUS_COLUMNS)

        def figures():
            runs = self._filter(self.all_runs(True), model)
            return plots.tradeoff_figure(runs), runs_frame(list(reversed(runs)))

        fig, table = figures()
        yield status_frame(), fig, table
        while len(seen_done) < len(jobs):
            changed = False
            waiting = next((j for j in jobs if j.id not in seen_done), None)
            for j in jobs:
                # block (up to 0.5 s) on the first unfinished job only: wakes on its next event
                new, cursors[j.id] = j.wait(cursors[j.id], 0.5 if j is waiting else 0)
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
