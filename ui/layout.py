"""Layout only: builds the four tabs and returns a ``Controls`` dataclass of components (no global dict).

The solver controls are generated from the registries (``pruning.SOLVERS`` / ``UPDATES``): every declared
option of every solver gets a control inside that solver's group, shown only while the solver is selected,
so a newly registered solver appears without UI code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from pruning import SOLVERS, UPDATES
from pruning.config import DEFAULT_MODEL, DEFAULT_PROMPTS, DEVICES, DTYPES, CalibConfig, EvalConfig, PruneConfig

from . import plots, render
from .handlers import PATTERN_CHOICES, OptionRef, option_refs

CALIB_SOURCES = ["wiki-sample", "wikitext2", "c4", "pydoc"]
DEFAULT_SOLVER = "sparsegpt"

HEADER = """
<div style="display:flex;align-items:center;gap:14px;padding:4px 0 2px">
  <div style="font-size:30px">✂️</div>
  <div>
    <div style="font-size:22px;font-weight:700;letter-spacing:-.01em">Pruning Lab</div>
    <div style="color:#868e96;font-size:14px">One-shot LLM pruning, layer by layer: pick a solver, a pattern and a sparsity,
    watch each layer's reconstruction error, then compare perplexity and generations with the dense model.</div>
  </div>
</div>
"""

CSS = """
.gradio-container {max-width: 1480px !important; margin: auto}
.pl-small textarea, .pl-small input {font-size: 13px}
.pl-log textarea {font-family: ui-monospace, SFMono-Regular, Menlo, monospace !important; font-size: 12px !important}
.pl-muted {color: #868e96; font-size: 13px}
footer {display: none !important}
"""


def theme() -> gr.themes.Base:
    """A quiet theme with system fonts (no web-font download: the app also runs offline)."""
    sys_fonts = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif")
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate", radius_size="md",
                          font=sys_fonts, font_mono=("ui-monospace", "SFMono-Regular", "Menlo", "monospace"))


def solver_info_md(name: str) -> str:
    if name not in SOLVERS:
        return ""
    s = SOLVERS.get(name)
    link = f" · [paper]({s.paper})" if s.paper else ""
    kind = {"mask": "mask only", "update": "mask + weight update", "block": "block-level"}.get(s.kind, s.kind)
    return f"<span class='pl-muted'>**{s.name}** ({kind}): {s.summary}{link}</span>"


@dataclass
class Controls:
    demo: gr.Blocks
    # prune tab: form
    model: gr.Dropdown = None
    solver: gr.Dropdown = None
    solver_info: gr.Markdown = None
    pattern: gr.Dropdown = None
    sparsity: gr.Slider = None
    update: gr.Dropdown = None
    nsamples: gr.Number = None
    seqlen: gr.Number = None
    calib_source: gr.Dropdown = None
    eval_windows: gr.Number = None
    eval_seqlen: gr.Number = None
    device: gr.Dropdown = None
    dtype: gr.Dropdown = None
    prompts: gr.Textbox = None
    max_new_tokens: gr.Slider = None
    option_refs: list = field(default_factory=list)  # OptionRef, same order as option_inputs
    option_inputs: list = field(default_factory=list)
    solver_groups: dict = field(default_factory=dict)  # solver name -> gr.Group
    update_groups: dict = field(default_factory=dict)  # update name -> gr.Group
    update_row: gr.Group = None
    estimate: gr.Markdown = None
    run_btn: gr.Button = None
    cancel_btn: gr.Button = None
    cancel_msg: gr.Markdown = None
    config_json: gr.JSON = None
    job_id: gr.Textbox = None
    # prune tab: outputs
    progress: gr.HTML = None
    layer_plot: gr.Plot = None
    log: gr.Textbox = None
    metrics: gr.HTML = None
    generations: gr.HTML = None
    layer_table: gr.Dataframe = None
    report: gr.JSON = None
    # compare tab
    compare_tab: gr.Tab = None
    cmp_model: gr.Dropdown = None
    cmp_precomputed: gr.Checkbox = None
    cmp_refresh: gr.Button = None
    tradeoff_plot: gr.Plot = None
    runs_table: gr.Dataframe = None
    run_a: gr.Dropdown = None
    run_b: gr.Dropdown = None
    overlay_plot: gr.Plot = None
    sw_model: gr.Dropdown = None
    sw_solvers: gr.CheckboxGroup = None
    sw_patterns: gr.CheckboxGroup = None
    sw_updates: gr.CheckboxGroup = None
    sw_sparsities: gr.Textbox = None
    sw_nsamples: gr.Number = None
    sw_seqlen: gr.Number = None
    sw_eval_windows: gr.Number = None
    sw_eval_seqlen: gr.Number = None
    sw_btn: gr.Button = None
    sw_cancel: gr.Button = None
    sw_status: gr.Dataframe = None
    # lab tab
    lab_model: gr.Dropdown = None
    lab_block: gr.Slider = None
    lab_proj: gr.Dropdown = None
    lab_sparsity: gr.Slider = None
    lab_pattern: gr.Dropdown = None
    lab_nsamples: gr.Number = None
    lab_seqlen: gr.Number = None
    lab_admm_iters: gr.Number = None
    lab_fw_iters: gr.Number = None
    lab_btn: gr.Button = None
    lab_status: gr.Markdown = None
    lab_err_plot: gr.Plot = None
    lab_resid_plot: gr.Plot = None
    lab_sched_plot: gr.Plot = None
    lab_mask_plot: gr.Plot = None
    lab_row: gr.Slider = None
    lab_col: gr.Slider = None
    lab_size: gr.Radio = None
    lab_hist_plot: gr.Plot = None
    lab_fw_plot: gr.Plot = None
    lab_explain: gr.Markdown = None
    lab_summary: gr.JSON = None
    lab_state: gr.State = None

    def form_inputs(self) -> list:
        """The Prune form, in handlers.FORM_FIELDS order, then every solver/update option control."""
        return [self.model, self.solver, self.pattern, self.sparsity, self.update, self.nsamples, self.seqlen, self.calib_source,
                self.eval_windows, self.eval_seqlen, self.device, self.dtype, self.prompts, self.max_new_tokens, *self.option_inputs]

    def prune_outputs(self) -> list:
        return [self.progress, self.layer_plot, self.log, self.metrics, self.generations, self.layer_table, self.report, self.job_id]


def _option_control(ref: OptionRef):
    o = ref.option
    label, info = o.name.replace("_", " "), o.help or None
    if o.type == "bool":
        return gr.Checkbox(value=bool(o.default), label=label, info=info)
    if o.type == "choice":
        return gr.Dropdown(choices=list(o.choices), value=o.default, label=label, info=info)
    if o.type == "int":
        return gr.Number(value=o.default, precision=0, label=label, info=info, minimum=o.min, maximum=o.max)
    return gr.Number(value=o.default, label=label, info=info, minimum=o.min, maximum=o.max, step=0.01)


def _prune_tab(c: Controls) -> None:
    defaults = PruneConfig()
    with gr.Row(equal_height=False):
        with gr.Column(scale=4, min_width=330):
            c.model = gr.Dropdown(choices=[DEFAULT_MODEL], value=DEFAULT_MODEL, allow_custom_value=True, label="Model",
                                  info="Embedded SmolLM2-135M-Instruct (offline), or a local directory / Hugging Face hub id")
            c.solver = gr.Dropdown(choices=SOLVERS.names(), value=DEFAULT_SOLVER, label="Solver")
            c.solver_info = gr.Markdown(solver_info_md(DEFAULT_SOLVER))
            with gr.Row():
                c.pattern = gr.Dropdown(choices=PATTERN_CHOICES, value="unstructured", allow_custom_value=True, label="Pattern",
                                        info="N:M = N pruned in every M consecutive inputs", min_width=140)
                c.sparsity = gr.Slider(0.0, 0.95, value=0.5, step=0.05, label="Sparsity", info="N:M fixes it to N/M", min_width=160)
            presets = [p for p in (["sparsegpt", "unstructured", 0.5], ["wanda", "2:4", 0.5], ["admm", "unstructured", 0.6],
                                   ["sparsefw", "unstructured", 0.6], ["magnitude", "unstructured", 0.5]) if p[0] in SOLVERS]
            gr.Examples(presets, [c.solver, c.pattern, c.sparsity], label="Presets", cache_examples=False,
                        examples_per_page=6)
            with gr.Accordion("Solver options", open=False):
                with gr.Group(visible=SOLVERS.get(DEFAULT_SOLVER).kind == "mask") as c.update_row:
                    c.update = gr.Dropdown(choices=UPDATES.names(), value="none", label="Weight update after the mask",
                                           info="Re-fit the surviving weights on the chosen mask")
                c.option_refs = option_refs()
                for ref in c.option_refs:
                    groups = c.solver_groups if ref.kind == "solver" else c.update_groups
                    if ref.owner not in groups:
                        visible = ref.owner == DEFAULT_SOLVER if ref.kind == "solver" else False
                        groups[ref.owner] = gr.Group(visible=visible)
                    with groups[ref.owner]:
                        c.option_inputs.append(_option_control(ref))
                gr.Markdown("<span class='pl-muted'>Options appear for the selected solver; defaults are the papers' settings.</span>")
            with gr.Accordion("Calibration and evaluation", open=False):
                with gr.Row():
                    c.nsamples = gr.Number(value=CalibConfig().nsamples, precision=0, minimum=1, label="Calibration windows", min_width=120)
                    c.seqlen = gr.Number(value=CalibConfig().seqlen, precision=0, minimum=8, label="Tokens per window", min_width=120)
                with gr.Row():
                    c.eval_windows = gr.Number(value=EvalConfig().windows, precision=0, minimum=0, label="Eval windows (0 = all)", min_width=120)
                    c.eval_seqlen = gr.Number(value=EvalConfig().seqlen, precision=0, minimum=8, label="Eval tokens per window", min_width=120)
                c.calib_source = gr.Dropdown(choices=CALIB_SOURCES, value="wiki-sample", allow_custom_value=True, label="Text",
                                             info="Embedded Wikipedia sample (offline); wikitext2 / c4 need the network")
                with gr.Row():
                    c.device = gr.Dropdown(choices=list(DEVICES), value=defaults.device, allow_custom_value=True, label="Device", min_width=100)
                    c.dtype = gr.Dropdown(choices=list(DTYPES), value=defaults.dtype, label="Forward dtype", min_width=100)
            with gr.Accordion("Prompts for the generations", open=False):
                c.prompts = gr.Textbox(value="\n".join(DEFAULT_PROMPTS), lines=3, label="One prompt per line")
                c.max_new_tokens = gr.Slider(0, 128, value=defaults.max_new_tokens, step=1, label="New tokens (greedy, same for dense and pruned)")
            c.estimate = gr.Markdown("")
            with gr.Row():
                c.run_btn = gr.Button("▶ Run", variant="primary", scale=3)
                c.cancel_btn = gr.Button("■ Cancel", variant="stop", scale=1)
            c.cancel_msg = gr.Markdown("")
            with gr.Accordion("Config sent to /prune", open=False):
                c.config_json = gr.JSON(value=defaults.to_dict(), label="config", show_label=False)
                c.job_id = gr.Textbox(label="Job id", interactive=False, max_lines=1)
        with gr.Column(scale=8, min_width=480):
            c.progress = gr.HTML(render.progress_html(0, "Ready", "press Run", "idle"), elem_id="progress")
            c.layer_plot = gr.Plot(plots.layer_error_figure([]), show_label=False, elem_id="layer-plot")
            c.metrics = gr.HTML(render.metrics_html(None))
            with gr.Tabs():
                with gr.Tab("Generations"):
                    c.generations = gr.HTML(render.generations_html([]))
                with gr.Tab("Per layer"):
                    c.layer_table = gr.Dataframe(headers=["block", "layer", "rel. error", "sparsity", "seconds"], interactive=False,
                                                 max_height=360, show_label=False)
                with gr.Tab("Log"):
                    c.log = gr.Textbox(lines=14, max_lines=14, autoscroll=True, show_label=False, elem_classes="pl-log")
                with gr.Tab("Report (JSON)"):
                    c.report = gr.JSON(show_label=False)


def _compare_tab(c: Controls) -> None:
    gr.Markdown("Every finished run from the result cache (and the precomputed SmolLM2 sweep shipped with the app). "
                "Click a column header to sort.", elem_classes="pl-muted")
    with gr.Row():
        c.cmp_model = gr.Dropdown(choices=["all models"], value="all models", label="Model", scale=3)
        c.cmp_precomputed = gr.Checkbox(value=True, label="Include precomputed results", scale=2)
        c.cmp_refresh = gr.Button("↻ Refresh", scale=1)
    # full width: one legend entry per solver × pattern sits to the right of the curves, not under them
    c.tradeoff_plot = gr.Plot(plots.tradeoff_figure([]), show_label=False, elem_id="tradeoff-plot")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            c.run_a = gr.Dropdown(label="Run A", choices=[], allow_custom_value=True)
            c.run_b = gr.Dropdown(label="Run B", choices=[], allow_custom_value=True)
            gr.Markdown("Pick two runs to overlay their per-layer errors (layers in pipeline order).", elem_classes="pl-muted")
        with gr.Column(scale=3, min_width=480):
            c.overlay_plot = gr.Plot(plots.overlay_figure(None, None), show_label=False)
    c.runs_table = gr.Dataframe(interactive=False, max_height=330, show_label=False, show_search="filter")
    with gr.Accordion("Sweep launcher: solvers × patterns × sparsities", open=True):
        with gr.Row():
            c.sw_solvers = gr.CheckboxGroup(SOLVERS.names(), value=[s for s in ("magnitude", "wanda", "sparsegpt") if s in SOLVERS],
                                            label="Solvers", scale=3)
            c.sw_patterns = gr.CheckboxGroup(PATTERN_CHOICES, value=["unstructured"], label="Patterns", scale=2)
            c.sw_updates = gr.CheckboxGroup(["none"] + [u for u in UPDATES.names() if u != "none"], value=["none"], label="Weight updates",
                                            info="after each mask solver (magnitude, wanda, ria, sparsefw)", scale=2)
        with gr.Row():
            c.sw_model = gr.Dropdown(choices=[DEFAULT_MODEL], value=DEFAULT_MODEL, allow_custom_value=True, label="Model", min_width=140)
            c.sw_sparsities = gr.Textbox(value="0.3, 0.5, 0.7", label="Sparsities", info="comma-separated", min_width=140)
            c.sw_nsamples = gr.Number(value=CalibConfig().nsamples, precision=0, minimum=1, label="Calib windows", min_width=100)
            c.sw_seqlen = gr.Number(value=CalibConfig().seqlen, precision=0, minimum=8, label="Calib tokens", min_width=100)
            c.sw_eval_windows = gr.Number(value=EvalConfig().windows, precision=0, minimum=0, label="Eval windows", min_width=100)
            c.sw_eval_seqlen = gr.Number(value=EvalConfig().seqlen, precision=0, minimum=8, label="Eval tokens", min_width=100)
        with gr.Row():
            c.sw_btn = gr.Button("▶ Launch sweep", variant="primary", scale=3)
            c.sw_cancel = gr.Button("■ Cancel sweep", variant="stop", scale=1)
        c.sw_status = gr.Dataframe(headers=["#", "solver", "pattern", "sparsity", "status"], interactive=False, max_height=300,
                                   show_label=False)


def _lab_tab(c: Controls) -> None:
    admm = SOLVERS.get("admm").defaults() if "admm" in SOLVERS else {}
    fw = SOLVERS.get("sparsefw").defaults() if "sparsefw" in SOLVERS else {}
    gr.Markdown("One real layer, every solver, in seconds: the greedy solvers (magnitude, Wanda, SparseGPT) against ADMM with "
                "a fixed mask and with a gradual mask" + (" and SparseFW" if fw else "") + ".", elem_classes="pl-muted")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            c.lab_model = gr.Dropdown(choices=[DEFAULT_MODEL], value=DEFAULT_MODEL, allow_custom_value=True, label="Model")
            c.lab_block = gr.Slider(0, 29, value=15, step=1, label="Block")
            c.lab_proj = gr.Dropdown(choices=["self_attn.q_proj"], value="self_attn.q_proj", allow_custom_value=True, label="Projection")
            with gr.Row():
                c.lab_pattern = gr.Dropdown(choices=PATTERN_CHOICES, value="unstructured", allow_custom_value=True, label="Pattern", min_width=110)
                c.lab_sparsity = gr.Slider(0.05, 0.95, value=0.6, step=0.05, label="Sparsity", min_width=140)
            with gr.Row():
                c.lab_nsamples = gr.Number(value=8, precision=0, minimum=1, maximum=256, label="Calib windows", min_width=90)
                c.lab_seqlen = gr.Number(value=256, precision=0, minimum=8, maximum=4096, label="Tokens", min_width=90)
            with gr.Row():
                c.lab_admm_iters = gr.Number(value=admm.get("iters", 20), precision=0, minimum=1, maximum=500, label="ADMM iterations",
                                             min_width=90, interactive=bool(admm))
                c.lab_fw_iters = gr.Number(value=min(50, fw.get("iters", 50)), precision=0, minimum=0, maximum=5000, label="SparseFW iterations",
                                           min_width=90, interactive=bool(fw))
            c.lab_btn = gr.Button("▶ Run on this layer", variant="primary")
            c.lab_status = gr.Markdown(_lab_intro(), elem_id="lab-status")
        with gr.Column(scale=8, min_width=480):
            c.lab_err_plot = gr.Plot(plots.empty_figure("Relative error per ADMM iteration vs the greedy solvers", 380), show_label=False,
                                     elem_id="lab-err-plot")
            with gr.Row():
                c.lab_resid_plot = gr.Plot(plots.empty_figure("Primal / dual residuals", 300), show_label=False)
                c.lab_sched_plot = gr.Plot(plots.empty_figure("Sparsity schedule", 300), show_label=False)
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    c.lab_mask_plot = gr.Plot(plots.mask_figure(None), show_label=False, elem_id="lab-mask-plot")
                    with gr.Row():
                        c.lab_row = gr.Slider(0, 575, value=0, step=1, label="First row", min_width=120)
                        c.lab_col = gr.Slider(0, 575, value=0, step=1, label="First column", min_width=120)
                        c.lab_size = gr.Radio([24, 48, 96], value=48, label="Window", min_width=120)
                with gr.Column(scale=2):
                    c.lab_hist_plot = gr.Plot(plots.histogram_figure(None), show_label=False)
                    c.lab_fw_plot = gr.Plot(plots.sparsefw_figure(None) if not fw else plots.empty_figure("SparseFW objective and FW gap", 340),
                                            show_label=False)
    with gr.Group():
        c.lab_explain = gr.Markdown(_lab_explain_placeholder(), padding=True)
    with gr.Accordion("Numbers (JSON)", open=False):
        c.lab_summary = gr.JSON(show_label=False)
    c.lab_state = gr.State(None)


def _lab_explain_placeholder() -> str:
    from .handlers import EXPLANATION

    return EXPLANATION.strip()


def _lab_intro() -> str:
    return ("<span class='pl-muted'>The first run on a block captures its calibration statistics (a few seconds); "
            "other projections and sparsities of the same block reuse them.</span>")


def _about_tab() -> None:
    rows = []
    for s in SOLVERS:
        link = f"[paper]({s.paper})" if s.paper else ""
        kind = {"mask": "mask", "update": "mask + update", "block": "block"}.get(s.kind, s.kind)
        rows.append(f"| **{s.name}** | {kind} | {s.summary} | {link} |")
    urows = [f"| **{u.name}** | {u.summary} |" for u in UPDATES]
    gr.Markdown("\n".join([
        "### Solvers",
        "| solver | kind | what it does | |", "|---|---|---|---|", *rows,
        "",
        "### Weight updates after a mask solver",
        "| update | what it does |", "|---|---|", *urows,
        "",
        "### Patterns",
        "* **unstructured** — one budget per matrix: exactly ⌊s·d_out·d_in⌋ weights pruned.",
        "* **per-row** — the same budget in every output row (Wanda's setting).",
        "* **N:M** — in every row, every group of M consecutive inputs has exactly N pruned (\"2:4\" prunes 2 of 4).",
        "",
        "### The error metric",
        "Everywhere in the app, *relative error* = ‖WX − ŴX‖²_F / ‖WX‖²_F for a layer with weight W (d_out × d_in), pruned "
        "weight Ŵ and calibration inputs X, computed from the Gram matrix XXᵀ in float64.",
        "",
        "### How it runs",
        "Layers are pruned block by block on a *copy* of the loaded model (the sequential pipeline of SparseGPT and Wanda): "
        "the inputs of each block are the outputs of the already-pruned previous block. One job runs at a time per "
        "accelerator; later jobs wait in a queue and show their position. Finished results are cached on disk, keyed by the "
        "configuration and the model's fingerprint. Every button is also an API endpoint (see *Use via API* below).",
    ]))


def build_layout() -> Controls:
    with gr.Blocks(title="Pruning Lab", fill_width=False) as demo:
        c = Controls(demo=demo)
        gr.HTML(HEADER)
        with gr.Tabs():
            with gr.Tab("Prune", id="prune"):
                _prune_tab(c)
            with gr.Tab("Compare", id="compare") as c.compare_tab:
                _compare_tab(c)
            with gr.Tab("ADMM vs greedy", id="lab"):
                _lab_tab(c)
            with gr.Tab("About", id="about"):
                _about_tab()
    return c
