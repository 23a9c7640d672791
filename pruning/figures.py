"""Plotly figures of finished runs that the CLI and the app share (the engine may not import ``ui``): the
trade-off of perplexity (or zero-shot accuracy) against sparsity, and the layout, colours and log-axis ticks every
figure of ``ui.plots`` uses. Pure functions of plain report dicts; no state, no torch.

``python -m pruning sweep --out DIR`` writes ``tradeoff_figure`` as a standalone HTML page; the Compare tab shows
the same figure (``ui.plots`` re-exports these names).
"""
from __future__ import annotations

import math
import zlib
from typing import Iterable

import plotly.graph_objects as go

from .config import method_label


def finite(x) -> float | None:
    """A float for display, or None for missing / NaN / inf / non-numeric values (the UI's one such helper)."""
    if isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


TEMPLATE = "plotly_white"
FONT = dict(family="Inter, ui-sans-serif, system-ui, -apple-system, Segoe UI, sans-serif", size=12)
PALETTE = ("#4C78A8", "#F58518", "#E45756", "#72B7B2", "#54A24B", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
SOLVER_COLORS = {"magnitude": "#9D755D", "wanda": "#F58518", "ria": "#FF9DA6", "sparsegpt": "#4C78A8",
                 "admm": "#E45756", "sparsefw": "#54A24B", "sparsellm": "#B279A2"}
PRECOMPUTED_GROUP = "precomputed (SmolLM2 sweep, hollow)"
RUNS_GROUP = "yours (filled, outlined)"
YOURS_OUTLINE = "#212529"
PATTERN_DASH = {"unstructured": "solid", "per-row": "dot", "2:4": "dash", "4:8": "dashdot"}
def _base_layout(title: str | None, height: int) -> dict:
    """The layout every figure shares (plain dicts)."""
    return dict(template=TEMPLATE, font=FONT, height=height, margin=dict(l=64, r=24, t=44 if title else 16, b=40),
                title=dict(text=title, x=0.01, xanchor="left", font=dict(size=15)) if title else None,
                legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0, font=dict(size=11)),
                hoverlabel=dict(font=dict(size=12)), showlegend=True)


def _layout(fig: go.Figure, title: str | None = None, height: int = 380, **kw) -> go.Figure:
    base = _base_layout(title, height)
    base.update({k: v for k, v in kw.items() if v is not None})
    fig.update_layout(**base)
    return fig


def stable_color(name: str) -> str:
    """A palette colour for a name, the same in every process (``hash()`` of a str changes per process)."""
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def solver_color(method: str) -> str:
    base = method.split("+")[0]
    return SOLVER_COLORS.get(base) or stable_color(base)


def _fmt_tick(v: float) -> str:
    if v >= 1000 or v < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return f"{v:g}"


def log_ticks(values: Iterable[float], max_ticks: int = 8) -> dict:
    """tickvals/ticktext for a log axis over ``values``: 1-2-5 steps with full labels over a short range, powers of
    ten over a long one (plotly's own minor labels are bare digits such as '2' and '5')."""
    vs = [v for v in (finite(x) for x in values) if v is not None and v > 0]
    if not vs:
        return {}
    lo, hi = math.floor(math.log10(min(vs))), math.ceil(math.log10(max(vs)))
    for steps in ((1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10 ** e for e in range(lo, hi + 1) for m in steps]
        ticks = [t for t in ticks if min(vs) / 1.5 <= t <= max(vs) * 1.5]
        if len(ticks) <= max_ticks:
            break
    if len(ticks) > max_ticks:  # very long ranges: every k-th power of ten
        k = math.ceil(len(ticks) / max_ticks)
        ticks = ticks[::k]
    return {"tickvals": ticks, "ticktext": [_fmt_tick(t) for t in ticks]}


def empty_figure(message: str = "Nothing to show yet", height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#868e96"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height=height)


def _series_key(run: dict) -> tuple[str, str, bool]:
    c = run.get("config", {})
    return method_label(c), str(c.get("pattern", "")), bool(run.get("precomputed"))


def _ppl(run: dict, which: str) -> float | None:
    return finite((run.get("perplexity") or {}).get(which))


def _marker(pre: bool) -> dict:
    """Precomputed: hollow circles; yours: filled circles with a dark outline (distinct even on the same point)."""
    if pre:
        return dict(size=9, symbol="circle-open", line=dict(width=2))
    return dict(size=11, symbol="circle", line=dict(width=1.5, color=YOURS_OUTLINE))


def _dense_traces(fig: go.Figure, pts: list[dict], x0: float, x1: float) -> None:
    """Dense perplexities as dotted lines, added first so that they head the legend (traces, not annotated shapes:
    annotations on a log axis take log10 units)."""
    dense = sorted({round(d, 3) for d in (_ppl(r, "dense") for r in pts) if d is not None})
    for d in dense[:3]:
        fig.add_trace(go.Scatter(x=[x0, x1], y=[d, d], mode="lines", name=f"dense {d:.2f}", legendgroup="dense",
                                 legendgrouptitle_text="dense model", legendrank=1,
                                 line=dict(color="#868e96", dash="dot", width=1.2), hovertemplate=f"dense ppl {d:.3f}<extra></extra>"))


SIDE_LEGEND = dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.01, font=dict(size=11), groupclick="toggleitem",
                   tracegroupgap=6, traceorder="grouped")  # beside the curves: a sweep has many series


def zeroshot_acc(run: dict, which: str = "pruned") -> float | None:
    """Mean zero-shot accuracy over the run's lm-eval tasks (``which``: pruned | dense), None when not measured."""
    accs = [finite((rec.get(which) or {}).get("acc")) for rec in (run.get("zeroshot") or {}).values() if isinstance(rec, dict)]
    accs = [a for a in accs if a is not None]
    return sum(accs) / len(accs) if accs else None


def accuracy_figure(runs: list[dict], title: str | None = "Zero-shot accuracy vs sparsity", height: int = 480) -> go.Figure:
    """Pruned zero-shot accuracy against sparsity, one line per (method, pattern); dense accuracy as a dotted line.
    Only runs that measured zero-shot accuracy."""
    pts = [r for r in runs if zeroshot_acc(r) is not None]
    if not pts:
        return empty_figure("No run measured zero-shot accuracy yet: tick 'Zero-shot accuracy' in the Prune tab", height=height)
    groups: dict[tuple, list[dict]] = {}
    for r in pts:
        groups.setdefault(_series_key(r), []).append(r)
    fig = go.Figure()
    dense = [zeroshot_acc(r, "dense") for r in pts if zeroshot_acc(r, "dense") is not None]
    if dense:
        fig.add_hline(y=sum(dense) / len(dense), line=dict(color="#868e96", dash="dot"), annotation_text="dense")
    for (method, pattern, pre), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][:2])):
        rs = sorted(rs, key=lambda r: float(r.get("sparsity", 0)))
        fig.add_trace(go.Scatter(
            x=[float(r.get("sparsity", 0)) for r in rs], y=[zeroshot_acc(r) for r in rs], mode="lines+markers",
            name=f"{method} · {pattern}", line=dict(color=solver_color(method), dash=PATTERN_DASH.get(pattern, "longdash")),
            marker=_marker(pre), hovertemplate="%{fullData.name}<br>sparsity %{x:.1%}<br>accuracy %{y:.1%}<extra></extra>"))
    fig.update_xaxes(title="sparsity", tickformat=".0%")
    fig.update_yaxes(title="zero-shot accuracy (pruned)", tickformat=".0%")
    return _layout(fig, title, height, legend=SIDE_LEGEND, margin=dict(l=64, r=16, t=44 if title else 16, b=48))


def tradeoff_figure(runs: list[dict], title: str | None = "Perplexity vs sparsity", height: int = 480,
                    y: str = "perplexity") -> go.Figure:
    """One line per (method, pattern); hollow markers for precomputed results, filled outlined ones for yours; dense
    perplexity as dotted lines (first in the legend). ``y='zeroshot'``: zero-shot accuracy instead (accuracy_figure)."""
    if y == "zeroshot":
        return accuracy_figure(runs, title, height)
    pts = [r for r in runs if _ppl(r, "pruned") is not None]
    if not pts:
        return empty_figure("No finished runs yet: run a job or a sweep", height=height)
    groups: dict[tuple, list[dict]] = {}
    for r in pts:
        groups.setdefault(_series_key(r), []).append(r)
    xs = [float(r.get("sparsity", 0)) for r in pts]
    lo, hi = max(0.0, min(xs) - 0.05), min(1.0, max(xs) + 0.05)  # the swept range, not all of [0, 1]
    fig = go.Figure()
    _dense_traces(fig, pts, lo, hi)
    for (method, pattern, pre), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][:2])):  # yours first
        rs = sorted(rs, key=lambda r: float(r.get("sparsity", 0)))
        fig.add_trace(go.Scatter(
            x=[float(r.get("sparsity", 0)) for r in rs], y=[_ppl(r, "pruned") for r in rs],
            mode="lines+markers", name=f"{method} · {pattern}",
            legendgroup="precomputed" if pre else "runs", legendgrouptitle_text=PRECOMPUTED_GROUP if pre else RUNS_GROUP,
            legendrank=3 if pre else 2,
            line=dict(color=solver_color(method), dash=PATTERN_DASH.get(pattern, "longdash"), width=2 if pre else 2.5),
            marker=_marker(pre),
            customdata=[[r.get("model", {}).get("id", ""), _ppl(r, "dense") or float("nan"),
                         (r.get("config", {}).get("calib") or {}).get("nsamples", ""),
                         (r.get("config", {}).get("calib") or {}).get("seqlen", "")] for r in rs],
            hovertemplate="%{fullData.name}" + (" (precomputed)" if pre else " (yours)") +
                          "<br>sparsity %{x:.1%}<br>ppl %{y:.3f} (dense %{customdata[1]:.3f})"
                          "<br>%{customdata[0]} · calib %{customdata[2]}×%{customdata[3]}<extra></extra>"))
    ys = [_ppl(r, "pruned") for r in pts] + [_ppl(r, "dense") for r in pts]
    fig.update_xaxes(title="sparsity", tickformat=".0%", range=[lo - 0.01, hi + 0.01])
    fig.update_yaxes(title="perplexity (log scale)", type="log", **log_ticks(ys))
    return _layout(fig, title, height, legend=SIDE_LEGEND, margin=dict(l=64, r=16, t=44 if title else 16, b=48))
