"""The "ADMM vs greedy" lab tab: every solver on one real layer, in seconds, with per-iteration traces.

It opens on a precomputed real SmolLM2 layer (``assets/lab``, made by ``scripts/make_lab_asset.py``), so every
figure shows at once; Run computes any other layer.

API:
  /lab(model, block, projection, sparsity, pattern, nsamples, seqlen, admm_iters, fw_iters)
       streams (status, 6 figures, explanation, summary dict, ALPS figure)
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from pruning import SOLVERS
from pruning.config import DEFAULT_MODEL, CalibConfig, ConfigError

from . import engine, plots
from .base import App, Tab
from .forms import finite, pattern_choices, relabel
from .lab_view import EXPLANATION, TILE, WINDOWS, explanation_md, lab_summary, load_asset, mask_crop, present
from .prune import error_text

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "lab"
LAB_LABELS = {"nsamples": "Calib windows", "seqlen": "Tokens", "sparsity": "Sparsity", "pattern": "Pattern",
              "projection": "Projection", "block": "Block"}
HEARTBEAT_S = 1.0


def figures(view: dict) -> tuple:
    """The six lab figures of a display record (see ui.lab_view.present)."""
    r0, c0 = view["mask"]["default_corner"]
    return (plots.lab_error_figure(view), plots.residuals_figure(view), plots.schedule_figure(view),
            plots.mask_figure(mask_crop(view["mask"], r0, c0, TILE)), plots.histogram_figure(view["hist"]),
            plots.sparsefw_figure(view.get("sparsefw")))


def status_md(view: dict, seconds: float | None = None, precomputed: bool = False) -> str:
    lay = view["layer"]
    head = "Precomputed layer" if precomputed else "✓ Block"
    where = (f"{head}: block {lay['block']}" if precomputed else f"{head} {lay['block']}") + f" · `{lay['name']}`"
    tail = f" · {seconds:.1f} s" if seconds is not None else ""
    text = (f"{where} ({lay['shape'][0]}×{lay['shape'][1]}, {lay['n_tokens']} tokens) · {lay['pattern']} "
            f"{lay['sparsity']:.0%}{tail}")
    if precomputed:
        text += " — shipped with the app; press Run to compute this or any other layer here."
    return text


class LabTab(Tab):
    id, title = "lab", "ADMM vs greedy"

    def build(self, app: App) -> None:
        self.app = app
        self.asset = load_asset(ASSET_DIR)
        a = self.asset or {}
        st = a.get("settings", {})
        admm = SOLVERS.get("admm").defaults() if "admm" in SOLVERS else {}
        fw = SOLVERS.get("sparsefw").defaults() if "sparsefw" in SOLVERS else {}
        n_blocks = st.get("n_blocks")
        linears = st.get("linears") or {}
        projection = st.get("projection", "self_attn.q_proj")
        gr.Markdown("One real layer, every solver, in seconds: the greedy solvers (magnitude, Wanda, SparseGPT) against ADMM with "
                    "a fixed mask and with a gradual mask" + (", ALPS" if "alps" in SOLVERS else "") + (" and SparseFW" if fw else "") + ".", elem_classes="pl-muted")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                self.model = gr.Dropdown(choices=[DEFAULT_MODEL], value=st.get("model", DEFAULT_MODEL), allow_custom_value=True,
                                         label="Model")
                self.block = gr.Slider(0, max(1, (n_blocks or 2) - 1), value=st.get("block", 0), step=1, label="Block", elem_id="lab-block")
                self.proj = gr.Dropdown(choices=[(f"{n}  ({s[0]}×{s[1]})", n) for n, s in linears.items()] or [projection],
                                        value=projection, allow_custom_value=True, label="Projection")
                with gr.Row():
                    self.pattern = gr.Dropdown(choices=pattern_choices(), value=st.get("pattern", "unstructured"),
                                               allow_custom_value=True, label="Pattern", min_width=110)
                    self.sparsity = gr.Number(value=st.get("sparsity", 0.6), step=0.05, label="Sparsity", min_width=110)
                with gr.Row():
                    self.nsamples = gr.Number(value=st.get("nsamples", 8), precision=0, label="Calib windows", min_width=90)
                    self.seqlen = gr.Number(value=st.get("seqlen", 256), precision=0, label="Tokens", min_width=90)
                with gr.Row():
                    self.admm_iters = gr.Number(value=st.get("admm_iters", admm.get("iters", 20)), precision=0,
                                                label="ADMM iterations", min_width=90, interactive=bool(admm))
                    self.fw_iters = gr.Number(value=st.get("fw_iters", min(50, fw.get("iters", 50))), precision=0,
                                              label="SparseFW iterations", min_width=90, interactive=bool(fw))
                self.btn = gr.Button("▶ Run on this layer", variant="primary")
                self.status = gr.Markdown(status_md(a, precomputed=True) if a else self.intro(), elem_id="lab-status")
            with gr.Column(scale=8, min_width=480):
                figs = figures(a) if a else (
                    plots.empty_figure("Relative error per ADMM iteration vs the greedy solvers", 380),
                    plots.empty_figure("Primal / dual residuals", 300), plots.empty_figure("Sparsity schedule", 300),
                    plots.mask_figure(None), plots.histogram_figure(None),
                    plots.sparsefw_figure(None) if not fw else plots.empty_figure("SparseFW objective and FW gap", 340))
                self.err_plot = gr.Plot(figs[0], show_label=False, elem_id="lab-err-plot")
                self.alps_plot = gr.Plot(plots.alps_figure(a or None), show_label=False, elem_id="lab-alps-plot")
                with gr.Row():
                    self.resid_plot = gr.Plot(figs[1], show_label=False, elem_id="lab-resid-plot")
                    self.sched_plot = gr.Plot(figs[2], show_label=False, elem_id="lab-sched-plot")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        self.mask_plot = gr.Plot(figs[3], show_label=False, elem_id="lab-mask-plot")
                        shape = (a.get("mask") or {}).get("codes")
                        h, w = (shape.shape if shape is not None else (TILE, TILE))
                        r0, c0 = (a.get("mask") or {}).get("default_corner", (0, 0))
                        with gr.Row():
                            self.row = gr.Slider(0, max(1, h - 8), value=r0, step=1, label="First row", min_width=200, elem_id="lab-row")
                            self.col = gr.Slider(0, max(1, w - 8), value=c0, step=1, label="First column", min_width=200, elem_id="lab-col")
                        self.size = gr.Radio(list(WINDOWS), value=TILE, label="Window (rows × columns)", elem_classes="pl-nowrap",
                                             elem_id="lab-window")
                    with gr.Column(scale=2):
                        self.hist_plot = gr.Plot(figs[4], show_label=False, elem_id="lab-hist-plot")
                        self.fw_plot = gr.Plot(figs[5], show_label=False, elem_id="lab-fw-plot")
        with gr.Group():
            self.explain = gr.Markdown(explanation_md(a) if a else EXPLANATION.strip(), padding=True)
        with gr.Accordion("Numbers (JSON)", open=False):
            self.summary = gr.JSON(lab_summary(a) if a else None, show_label=False)
        self.state = gr.State({"mask": a["mask"], "row": r0, "col": c0} if a else None)

    @staticmethod
    def intro() -> str:
        return ("<span class='pl-muted'>The first run on a block captures its calibration statistics (a few seconds); "
                "other projections and sparsities of the same block reuse them.</span>")

    def wire(self, app: App) -> None:
        out = [self.status, self.err_plot, self.resid_plot, self.sched_plot, self.mask_plot, self.hist_plot, self.fw_plot,
               self.explain, self.summary, self.state, self.alps_plot]
        self.btn.click(self.lab, [self.model, self.block, self.proj, self.sparsity, self.pattern, self.nsamples, self.seqlen,
                                  self.admm_iters, self.fw_iters], out, api_name="lab", concurrency_limit=1,
                       concurrency_id="lab", show_progress="minimal", show_progress_on=[self.err_plot]) \
            .then(self.crop_controls, self.state, [self.row, self.col], api_visibility="private", show_progress="hidden")
        gr.on([self.row.change, self.col.change, self.size.change], self.crop, [self.state, self.row, self.col, self.size],
              self.mask_plot, api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        self.model.input(self.pickers, self.model, [self.block, self.proj], api_visibility="private")
        if self.asset is None:  # without the shipped layer, the pickers follow the default model once it is loaded
            app.demo.load(self.pickers, self.model, [self.block, self.proj], api_visibility="private", show_progress="hidden")

    # -- handlers -------------------------------------------------------------------------------------------
    @staticmethod
    def pickers(model: str):
        """(block slider, projection dropdown) for a model; errors leave the pickers as they are. The model loads in
        the job runner's worker (``ui.engine.model_info``), after any job running there."""
        try:
            info = engine.model_info(model)
        except (ValueError, OSError) as e:
            from pruning.errors import user_message

            gr.Warning(error_text(relabel(user_message(e), LAB_LABELS)))
            return gr.skip(), gr.skip()
        names = list(info["linears"])
        default = "self_attn.q_proj" if "self_attn.q_proj" in names else names[0]
        return (gr.update(maximum=info["n_blocks"] - 1, value=min(info["n_blocks"] - 1, info["n_blocks"] // 2)),
                gr.update(choices=[(f"{n}  ({d_out}×{d_in})", n) for n, (d_out, d_in) in info["linears"].items()], value=default))

    @staticmethod
    def _check(sparsity, nsamples, seqlen, admm_iters, fw_iters) -> None:
        """What the form can get wrong, in the page's words (the engine checks the rest)."""
        for label, v in (("Sparsity", sparsity), ("Calib windows", nsamples), ("Tokens", seqlen),
                         ("ADMM iterations", admm_iters), ("SparseFW iterations", fw_iters)):
            if finite(v) is None:
                raise ConfigError(f"{label}: empty; enter a number")
        try:
            CalibConfig(nsamples=nsamples, seqlen=seqlen)
        except ConfigError as e:
            raise ConfigError(relabel(str(e), LAB_LABELS)) from None

    def lab(self, model: str, block: int, projection: str, sparsity: float, pattern: str, nsamples: int, seqlen: int,
            admm_iters: int, fw_iters: int, request: gr.Request | None = None):
        """One layer, every solver: (status, error plot, residuals, schedule, mask, histogram, SparseFW, explanation,
        summary JSON, lab state). The run is a task of the app's job runner: it waits its turn behind the jobs of
        the device, runs in the worker process, and is cancelled by Cancel (the Prune tab) or by closing the tab.
        Last output: the ALPS figure."""
        from pruning import events as ev

        try:
            self._check(sparsity, nsamples, seqlen, admm_iters, fw_iters)
        except ConfigError as e:
            raise gr.Error(error_text(e), title="Invalid lab setting") from None
        sk = gr.skip()
        model = (model or DEFAULT_MODEL).strip()
        t0 = time.monotonic()
        payload = dict(model_id=model, block=int(block), name=projection, sparsity=float(sparsity), pattern=pattern,
                       nsamples=int(nsamples), seqlen=int(seqlen), admm_iters=int(admm_iters), sparsefw_iters=int(fw_iters))
        runner = self.app.runner
        job = runner.submit_task("lab", payload, owner=getattr(request, "session_hash", None))
        where = f"Running on block {int(block)} · `{projection}`"
        msg, finished = "starting…", False
        try:
            for e in runner.stream(job, heartbeat=HEARTBEAT_S):
                if isinstance(e, ev.PhaseStarted):
                    msg = e.detail
                elif e is None and job.status == "queued":
                    pos = runner.position(job)
                    yield (f"Waiting for the device: position {pos} in the queue ({time.monotonic() - t0:.0f} s)",
                           sk, sk, sk, sk, sk, sk, sk, sk, sk, sk)
                    continue
                elif e is not None:
                    continue
                if job.status == "running":
                    yield (f"{where}: {msg} ({time.monotonic() - t0:.0f} s)", sk, sk, sk, sk, sk, sk, sk, sk, sk, sk)
            finished = True
        finally:
            if not finished and not job.done:  # the client went away: stop the work nobody will see
                runner.cancel(job.id, "the browser tab closed")
        if job.status == "cancelled":
            raise gr.Error(error_text(f"The lab run was cancelled ({job.message})"), title="Cancelled")
        if job.status != "done":
            last = job.history[-1] if job.history else None
            kind = getattr(last, "kind", "internal")
            if kind == "input":
                raise gr.Error(error_text(relabel(job.message, LAB_LABELS)), title="Invalid lab setting")
            raise gr.Error(error_text(job.message), title="The lab failed")
        view = present(job.report)
        r0, c0 = view["mask"]["default_corner"]
        yield (status_md(view, time.monotonic() - t0), *figures(view), explanation_md(view), lab_summary(view),
               {"mask": view["mask"], "row": r0, "col": c0}, plots.alps_figure(view))

    @staticmethod
    def crop(state: dict | None, row: int, col: int, size: int):
        if not state or "mask" not in state:
            return plots.mask_figure(None)
        return plots.mask_figure(mask_crop(state["mask"], row, col, size))

    @staticmethod
    def crop_controls(state: dict | None):
        """After a lab run: the crop sliders jump to the window with the most disagreements."""
        if not state or "mask" not in state:
            return gr.skip(), gr.skip()
        h, w = state["mask"]["codes"].shape
        return gr.update(maximum=max(0, h - 8), value=state["row"]), gr.update(maximum=max(0, w - 8), value=state["col"])
