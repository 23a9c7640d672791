"""Plotly figures built from plain records (report dicts, lab results). No state; from the engine only the pure
``method_label`` and ``pruning.figures`` (the trade-off figure, layout, colours and log ticks the CLI shares).

Every function takes lists/dicts of numbers and strings and returns a ``go.Figure``; the figures are rebuilt
from the cached data whenever needed. Log axes get explicit 1-2-5 ticks with full labels (never bare minor digits).
"""
from __future__ import annotations

import functools
import math
from typing import Iterable

import plotly.graph_objects as go
import plotly.io as pio

from pruning.config import method_label
from pruning.figures import (FONT, PALETTE, PATTERN_DASH, PRECOMPUTED_GROUP, RUNS_GROUP, SIDE_LEGEND,  # noqa: F401
                             SOLVER_COLORS, TEMPLATE, YOURS_OUTLINE, _base_layout, _dense_traces, _fmt_tick, _layout,
                             _marker, _ppl, _series_key, accuracy_figure, empty_figure, log_ticks, solver_color,
                             stable_color, tradeoff_figure, zeroshot_acc)

from .render import finite

# one colour per projection type, stable across figures (Llama names; OPT / GPT-2 names map onto the same roles)
PROJ_COLORS = {
    "q_proj": "#4C78A8", "k_proj": "#72B7B2", "v_proj": "#54A24B", "o_proj": "#EECA3B",
    "gate_proj": "#F58518", "up_proj": "#E45756", "down_proj": "#B279A2",
    "out_proj": "#EECA3B", "fc1": "#F58518", "fc2": "#B279A2",
    "attn.c_attn": "#4C78A8", "attn.c_proj": "#EECA3B", "mlp.c_fc": "#F58518", "mlp.c_proj": "#B279A2",
}
MASK_COLORS = ("#f1f3f5", "#bac8ff", "#e8590c", "#12b886")  # pruned both, kept both, kept A only, kept B only
KEPT_A, KEPT_B = 2, 3


@functools.lru_cache(maxsize=None)
def _template_json() -> dict:
    return pio.templates[TEMPLATE].to_plotly_json()


def _unvalidated(data: list[dict], layout: dict, title: str | None, height: int) -> go.Figure:
    """A figure from plain trace/layout dicts without plotly's per-property validation (which costs 60-130 ms for the
    live layer chart, rebuilt several times a second while a job runs, under the GIL the job's thread needs). Same
    layout as ``_layout`` (``_base_layout``); validity tested; only for figures whose dicts are written here."""
    lay = {k: v for k, v in _base_layout(title, height).items() if v is not None}
    lay.update(layout, template=_template_json())  # the template resolved: plotly.js does not know it by name
    return go.Figure(dict(data=data, layout=lay), _validate=False)


def _short(name: str) -> str:
    return name.split(".")[-1] if name.split(".")[-1] in PROJ_COLORS else name


def projection_colors(names: Iterable[str]) -> dict[str, str]:
    """name -> colour; known projections get their fixed colour, others the palette in order of appearance."""
    out, k = {}, 0
    for n in names:
        if n in out:
            continue
        s = _short(n)
        if s in PROJ_COLORS and PROJ_COLORS[s] not in out.values():
            out[n] = PROJ_COLORS[s]
        elif n in PROJ_COLORS:
            out[n] = PROJ_COLORS[n]
        else:
            out[n] = PALETTE[k % len(PALETTE)]
            k += 1
    return out


def _ordered_names(layers: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for l in layers:
        seen.setdefault(l["name"], None)
    return list(seen)


def layer_error_figure(layers: list[dict], n_blocks: int | None = None, title: str | None = "Relative error per layer",
                       log_y: bool = False, height: int = 400) -> go.Figure:
    """Grouped bars: x = block, one bar per projection (coloured by type), y = rel_error ‖WX−ŴX‖²/‖WX‖²."""
    if not layers:
        return empty_figure("Per-layer errors appear here as each layer is pruned", height=height)
    names = _ordered_names(layers)
    colors = projection_colors(names)
    data = []
    for n in names:
        rows = [l for l in layers if l["name"] == n]
        data.append(dict(
            type="bar", x=[l["block"] for l in rows], y=[float(l["rel_error"]) for l in rows], name=_short(n),
            marker=dict(color=colors[n]),
            customdata=[[l.get("sparsity", float("nan")), l.get("seconds", float("nan")), l.get("target", float("nan"))]
                        for l in rows],
            hovertemplate=f"block %{{x}} · {n}<br>rel. error %{{y:.4g}}<br>sparsity %{{customdata[0]:.1%}}"
                          + ("<br>target %{customdata[2]:.1%}" if any("target" in l for l in rows) else "")
                          + "<br>%{customdata[1]:.2f} s<extra></extra>"))
    nb = n_blocks or (max(l["block"] for l in layers) + 1)
    xaxis = dict(title=dict(text="block"), range=[-0.5, nb - 0.5])
    if nb <= 32:
        xaxis["dtick"] = 1
    yaxis = dict(title=dict(text="relative error"), type="log" if log_y else "linear", rangemode="tozero")
    layout = dict(barmode="group", bargap=0.15, bargroupgap=0.05, xaxis=xaxis, yaxis=yaxis)
    targets = target_by_block(layers)
    if targets:  # a non-uniform allocation: the block's mean target sparsity as a line on a second axis (each layer's
        # own target is in its bar's hover)
        data.append(target_trace(targets, yaxis="y2"))
        layout["yaxis2"] = dict(title=dict(text="target sparsity"), overlaying="y", side="right", tickformat=".0%",
                                rangemode="tozero", showgrid=False)
        layout["legend"] = dict(orientation="h", y=-0.2)
    # rebuilt several times a second while a job runs: built from plain dicts, without plotly's validation
    return _unvalidated(data, layout, title, height)


def target_by_block(layers: list[dict]) -> dict[int, float]:
    """{block: mean per-layer target sparsity} of a run whose report has targets (non-uniform allocation), else {}."""
    acc: dict[int, list[float]] = {}
    for l in layers:
        t = finite(l.get("target"))
        if t is not None:
            acc.setdefault(int(l["block"]), []).append(t)
    return {b: sum(v) / len(v) for b, v in sorted(acc.items())}


def target_trace(targets: dict[int, float], yaxis: str = "y2", name: str = "target sparsity (block mean)", color: str = "#212529",
                 dash: str = "dot") -> dict:
    return dict(type="scatter", mode="lines+markers", x=list(targets), y=list(targets.values()), name=name, yaxis=yaxis,
                line=dict(color=color, width=2, dash=dash), marker=dict(size=6, color=color),
                hovertemplate="block %{x}<br>target sparsity %{y:.1%}<extra></extra>")


def run_label(run: dict) -> str:
    c = run.get("config", {})
    return f"{method_label(c)} {c.get('pattern', '')} {float(run.get('sparsity', c.get('sparsity', 0))):.0%}"


def cost_figure(runs: list[dict], title: str | None = "Perplexity vs prune time", height: int = 480) -> go.Figure:
    """Each run as a point: x = seconds spent pruning, y = perplexity; what each point of quality costs."""
    pts = [r for r in runs if _ppl(r, "pruned") is not None and finite((r.get("timings") or {}).get("prune_total"))]
    if not pts:
        return empty_figure("No finished runs with timings yet: run a job or a sweep", height=height)
    groups: dict[tuple, list[dict]] = {}
    for r in pts:
        groups.setdefault(_series_key(r), []).append(r)
    secs = [finite(r["timings"]["prune_total"]) for r in pts]
    fig = go.Figure()
    _dense_traces(fig, pts, max(min(secs) / 1.5, 1e-3), max(secs) * 1.5)
    for (method, pattern, pre), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        fig.add_trace(go.Scatter(
            x=[finite(r["timings"]["prune_total"]) for r in rs], y=[_ppl(r, "pruned") for r in rs], mode="markers",
            name=f"{method} · {pattern}", legendgroup="precomputed" if pre else "runs",
            legendgrouptitle_text=PRECOMPUTED_GROUP if pre else RUNS_GROUP, legendrank=3 if pre else 2,
            marker=dict(_marker(pre), color=solver_color(method)),
            customdata=[[float(r.get("sparsity", 0)), r.get("device", "")] for r in rs],
            hovertemplate="%{fullData.name}" + (" (precomputed)" if pre else " (yours)") +
                          " · sparsity %{customdata[0]:.0%}<br>prune %{x:.1f} s on %{customdata[1]}<br>ppl %{y:.3f}<extra></extra>"))
    ys = [_ppl(r, "pruned") for r in pts] + [_ppl(r, "dense") for r in pts]
    fig.update_xaxes(title="time spent pruning (seconds, log scale)", type="log", **log_ticks(secs))
    fig.update_yaxes(title="perplexity (log scale)", type="log", **log_ticks(ys))
    return _layout(fig, title, height, legend=SIDE_LEGEND, margin=dict(l=64, r=16, t=44 if title else 16, b=48))


def overlay_figure(run_a: dict | None, run_b: dict | None, height: int = 380) -> go.Figure:
    """Per-layer relative error of two runs on one axis (layers in pipeline order)."""
    runs = [r for r in (run_a, run_b) if r and r.get("layers")]
    if not runs:
        return empty_figure("Pick two runs to overlay their per-layer errors", height=height)
    fig = go.Figure()
    for r, color, dash in zip(runs, ("#3b5bdb", "#e8590c"), ("solid", "dash")):
        layers = sorted(r["layers"], key=lambda l: l["block"])
        x = list(range(len(layers)))
        fig.add_trace(go.Scatter(
            x=x, y=[l["rel_error"] for l in layers], mode="lines+markers", name=run_label(r) + (" (precomputed)" if r.get("precomputed") else ""),
            line=dict(color=color, dash=dash, width=1.5), marker=dict(size=4),
            text=[f"block {l['block']} · {l['name']}" for l in layers],
            hovertemplate="%{text}<br>rel. error %{y:.4g}<extra>%{fullData.name}</extra>"))
        if any(finite(l.get("target")) is not None for l in layers):  # per-layer targets of a non-uniform allocation
            fig.add_trace(go.Scatter(
                x=x, y=[finite(l.get("target")) for l in layers], mode="lines", yaxis="y2", name=f"target · {run_label(r)}",
                line=dict(color=color, dash="dot", width=1), text=[f"block {l['block']} · {l['name']}" for l in layers],
                hovertemplate="%{text}<br>target sparsity %{y:.1%}<extra></extra>"))
            fig.update_layout(yaxis2=dict(title="target sparsity", overlaying="y", side="right", tickformat=".0%",
                                          showgrid=False))
    first = sorted(runs[0]["layers"], key=lambda l: l["block"])
    ticks = [i for i, l in enumerate(first) if i == 0 or l["block"] != first[i - 1]["block"]]
    step = max(1, len(ticks) // 15)
    fig.update_xaxes(title="layer (grouped by block)", tickvals=ticks[::step], ticktext=[str(first[i]["block"]) for i in ticks[::step]])
    fig.update_yaxes(title="relative error (log scale)", type="log",
                     **log_ticks([l["rel_error"] for r in runs for l in r["layers"]]))
    return _layout(fig, "Per-layer error overlay", height)


# ---------------------------------------------------------------------------------------------- lab
def _trace_xy(trace: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for i, rec in enumerate(trace):
        v = rec.get(key)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            xs.append(rec.get("iteration", rec.get("iter", i)))
            ys.append(float(v))
    return xs, ys


ITER_COLORS = ("#e03131", "#862e9c", "#2f9e44")
GREEDY_COLORS = {"magnitude": "#9D755D", "wanda": "#F58518", "sparsegpt": "#4C78A8"}


def lab_error_figure(lab: dict, height: int = 420) -> go.Figure:
    """Relative error per ADMM iteration, with the greedy solvers' errors as horizontal dashed lines.

    The gradual phase (mask still being re-selected at a growing sparsity) is shaded: the error of ADMM-Grad is
    low there only because fewer weights are pruned yet."""
    iters = {k: v for k, v in lab.get("iterative", {}).items() if v.get("available")}
    fig = go.Figure()
    x_max, ramp = 1, 0
    for (label, rec), color in zip(iters.items(), ITER_COLORS):
        x, y = _trace_xy(rec.get("trace", []), "objective")
        x_max = max([x_max, *x])
        tgt = [r.get("sparsity_target") for r in rec.get("trace", [])]
        final = tgt[-1] if tgt else None
        ramp = max(ramp, sum(1 for t in tgt if final is not None and t is not None and t < final - 1e-9))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{label}: {rec['rel_error']:.4g}",
                                 line=dict(color=color, width=2.5), marker=dict(size=5),
                                 hovertemplate="iteration %{x}<br>rel. error %{y:.5g}<extra>" + label + "</extra>"))
    for name, rec in lab.get("greedy", {}).items():
        if rec.get("available"):
            c = GREEDY_COLORS.get(name, "#495057")
            fig.add_trace(go.Scatter(x=[0, x_max], y=[rec["rel_error"]] * 2, mode="lines", name=f"{name}: {rec['rel_error']:.4g}",
                                     line=dict(color=c, dash="dash", width=1.8),
                                     hovertemplate=f"{name} (greedy, one shot)<br>rel. error %{{y:.5g}}<extra></extra>"))
    if ramp:
        fig.add_vrect(x0=0.5, x1=ramp + 0.5, fillcolor="#f1f3f5", opacity=0.7, line_width=0, layer="below",
                      annotation_text="gradual mask: sparsity still ramping up", annotation_position="bottom left",
                      annotation_font=dict(size=11, color="#868e96"))
    if not iters:
        reason = next((v.get("reason") for v in lab.get("iterative", {}).values()), "ADMM not available")
        fig.add_annotation(text=f"ADMM: {reason}", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    fig.update_xaxes(title="ADMM iteration", range=[0, x_max + 0.5])
    ys = [v for t in fig.data for v in (t.y or ()) if v is not None]
    fig.update_yaxes(title="relative error (log scale)", type="log", **log_ticks(ys))
    return _layout(fig, "Relative error per iteration: ADMM (solid) vs greedy (dashed)", height)


def residuals_figure(lab: dict, height: int = 320) -> go.Figure:
    iters = {k: v for k, v in lab.get("iterative", {}).items() if v.get("available")}
    if not iters:
        return empty_figure("ADMM not available in this build", height)
    fig = go.Figure()
    for (label, rec), color in zip(iters.items(), ITER_COLORS):
        for key, dash in (("primal_residual", "solid"), ("dual_residual", "dot")):
            x, y = _trace_xy(rec.get("trace", []), key)
            if y:
                fig.add_trace(go.Scatter(x=x, y=[max(v, 1e-12) for v in y], mode="lines", name=f"{label.split(' (')[0]} {key.split('_')[0]}",
                                         line=dict(color=color, dash=dash, width=2)))
    if not fig.data:
        return empty_figure("This ADMM build does not report residuals", height)
    fig.update_xaxes(title="iteration")
    ys = [v for t in fig.data for v in (t.y or ()) if v is not None]
    fig.update_yaxes(title="relative residual (log scale)", type="log", **log_ticks(ys))
    return _layout(fig, "Primal (solid) and dual (dotted) residuals", height)


def schedule_figure(lab: dict, height: int = 320) -> go.Figure:
    iters = {k: v for k, v in lab.get("iterative", {}).items() if v.get("available")}
    if not iters:
        return empty_figure("ADMM not available in this build", height)
    fig = go.Figure()
    for (label, rec), color in zip(iters.items(), ITER_COLORS):
        x, y = _trace_xy(rec.get("trace", []), "sparsity")
        if y:
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label.split(" (")[0] + " sparsity",
                                     line=dict(color=color, width=2, shape="hv"), marker=dict(size=4)))
        x, y = _trace_xy(rec.get("trace", []), "mask_changed")
        if y and any(y):
            fig.add_trace(go.Bar(x=x, y=y, name=label.split(" (")[0] + " mask changes", marker_color=color, opacity=0.25, yaxis="y2"))
    fig.update_xaxes(title="iteration")
    fig.update_yaxes(title="sparsity", tickformat=".0%", rangemode="tozero")
    fig.update_layout(yaxis2=dict(title="entries changed", overlaying="y", side="right", showgrid=False, rangemode="tozero"))
    return _layout(fig, "Sparsity schedule (gradual mask)", height)


def mask_figure(crop: dict | None, height: int = 460) -> go.Figure:
    """Heat-map of a window of the mask: agreement between the iterative solver and SparseGPT."""
    if not crop:
        return empty_figure("Run the lab to see the masks", height)
    codes, W = crop["codes"], crop["weight"]
    r0, c0, labels = crop["row"], crop["col"], crop["labels"]
    n = len(MASK_COLORS)
    scale = []
    for i, col in enumerate(MASK_COLORS):
        scale += [[i / n, col], [(i + 1) / n, col]]
    text = [[f"{labels[c]}<br>W = {w:+.4f}" for c, w in zip(crow, wrow)] for crow, wrow in zip(codes, W)]
    fig = go.Figure(go.Heatmap(
        z=codes, x=list(range(c0, c0 + len(codes[0]))), y=list(range(r0, r0 + len(codes))), zmin=-0.5, zmax=n - 0.5,
        colorscale=scale, text=text, hovertemplate="row %{y}, col %{x}<br>%{text}<extra></extra>", xgap=1, ygap=1,
        showscale=False, showlegend=False))
    counts = [sum(row.count(i) for row in codes) for i in range(n)]
    for i in (KEPT_A, KEPT_B, 1, 0):  # legend entries (the heat-map itself has no legend)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"{labels[i]} ({counts[i]})",
                                 marker=dict(symbol="square", size=12, color=MASK_COLORS[i], line=dict(color="#adb5bd", width=1))))
    fig.update_yaxes(title="output row", autorange="reversed", scaleanchor="x", constrain="domain")
    fig.update_xaxes(title="input column", constrain="domain")
    h, w = crop["shape"]
    return _layout(fig, f"Mask window rows {r0}–{r0 + len(codes) - 1}, cols {c0}–{c0 + len(codes[0]) - 1} of {h}×{w}", height)


def histogram_figure(hist: dict | None, height: int = 340) -> go.Figure:
    if not hist:
        return empty_figure("Run the lab to see the weight histograms", height)
    edges = hist["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure()
    colors = ("#adb5bd", "#F58518", "#4C78A8", "#e03131", "#2f9e44")
    for (label, counts), color in zip(hist["counts"].items(), colors):
        fig.add_trace(go.Scatter(x=centers, y=[max(c, 0.5) for c in counts], mode="lines", name=label,
                                 line=dict(color=color, width=2 if label != "dense" else 3, shape="hvh"),
                                 fill="tozeroy" if label == "dense" else None,
                                 fillcolor="rgba(173,181,189,0.25)" if label == "dense" else None))
    fig.update_xaxes(title="weight value")
    fig.update_yaxes(title="weights (log scale)", type="log",
                     **log_ticks([max(c, 0.5) for cs in hist["counts"].values() for c in cs if c > 0]))
    return _layout(fig, "Weights before / after (non-zero survivors)", height)


def sparsefw_figure(rec: dict | None, height: int = 340) -> go.Figure:
    if not rec or not rec.get("available"):
        return empty_figure("SparseFW: " + ((rec or {}).get("reason") or "not available in this build"), height)
    trace = rec.get("trace", [])
    fig = go.Figure()
    x, y = _trace_xy(trace, "objective")
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="relaxed objective L(M)/‖WX‖²", line=dict(color="#2f9e44", width=2)))
    x, y = _trace_xy(trace, "rounded_error")
    if y:
        fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name="rounded mask error", marker=dict(color="#1b4332", size=7, symbol="diamond")))
    x, y = _trace_xy(trace, "fw_gap")
    if y:
        fig.add_trace(go.Scatter(x=x, y=[max(v, 1e-12) for v in y], mode="lines", name="FW gap", yaxis="y2",
                                 line=dict(color="#868e96", dash="dot", width=1.5)))
    fig.update_xaxes(title="Frank-Wolfe iteration")
    fig.update_yaxes(title="relative error")
    gaps = [v for t in fig.data if t.yaxis == "y2" for v in (t.y or ())]
    fig.update_layout(yaxis2=dict(title="FW gap (log scale)", overlaying="y", side="right", type="log", showgrid=False,
                                  **log_ticks(gaps)))
    return _layout(fig, f"SparseFW (final error {rec['rel_error']:.4g})", height)


def alps_figure(lab: dict | None, height: int = 340) -> go.Figure:
    """ALPS on the lab's layer: relative error per iteration (ADMM, then its CG steps on the final support), the
    penalty ρ (right, log scale) and the support changes per iteration (bars), with ADMM-Grad's and SparseGPT's
    final errors as dashed references."""
    rec = (lab or {}).get("alps")
    if not rec or not rec.get("available"):
        return empty_figure("ALPS: " + ((rec or {}).get("reason") or "not available in this build"), height)
    trace = rec.get("trace", [])
    admm = [r for r in trace if r.get("phase") == "admm"]
    cg = [r for r in trace if r.get("phase") == "cg"]
    fig = go.Figure()
    x, y = _trace_xy(admm, "mask_changed")
    if y:
        fig.add_trace(go.Bar(x=x, y=y, name="support changes", marker_color="#adb5bd", opacity=0.45, yaxis="y3",
                             hovertemplate="iteration %{x}<br>%{y} entries changed<extra>ALPS</extra>"))
    x, y = _trace_xy(admm, "objective")
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="ALPS error (ADMM)", line=dict(color="#1971c2", width=2.5),
                             marker=dict(size=4), hovertemplate="iteration %{x}<br>rel. error %{y:.5g}<extra>ALPS</extra>"))
    x, y = _trace_xy(cg, "objective")
    if y:
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"ALPS after CG: {rec['rel_error']:.4g}",
                                 line=dict(color="#0b7285", width=2.5), marker=dict(size=6, symbol="diamond"),
                                 hovertemplate="CG step, iteration %{x}<br>rel. error %{y:.5g}<extra>ALPS</extra>"))
    x_max = max([1, *(r.get("iteration", 0) for r in trace)])
    refs = [("ADMM-Grad", (lab.get("iterative") or {}).get("ADMM-Grad (gradual mask)"), ITER_COLORS[1]),
            ("SparseGPT", (lab.get("greedy") or {}).get("sparsegpt"), GREEDY_COLORS["sparsegpt"])]
    for name, ref, color in refs:
        if ref and ref.get("available"):
            fig.add_trace(go.Scatter(x=[0, x_max], y=[ref["rel_error"]] * 2, mode="lines", name=f"{name}: {ref['rel_error']:.4g}",
                                     line=dict(color=color, dash="dash", width=1.8),
                                     hovertemplate=f"{name} (final)<br>rel. error %{{y:.5g}}<extra></extra>"))
    x, y = _trace_xy(admm, "rho")
    if y:
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="ρ (right)", yaxis="y2",
                                 line=dict(color="#e8590c", dash="dot", width=2, shape="hv"),
                                 hovertemplate="iteration %{x}<br>ρ %{y:.3g}<extra>ALPS</extra>"))
    fig.update_xaxes(title="iteration (ADMM, then CG)", range=[0, x_max + 0.5])
    errs = [v for t in fig.data if t.yaxis in (None, "y") for v in (t.y or ()) if v is not None]
    fig.update_yaxes(title="relative error (log scale)", type="log", **log_ticks(errs))
    rhos = [v for t in fig.data if t.yaxis == "y2" for v in (t.y or ())]
    fig.update_layout(yaxis2=dict(title="ρ (log scale)", overlaying="y", side="right", type="log", showgrid=False, **log_ticks(rhos)),
                      yaxis3=dict(overlaying="y", visible=False, rangemode="tozero"), barmode="overlay")
    return _layout(fig, f"ALPS: error, ρ and support changes per iteration (final {rec['rel_error']:.4g})", height)
