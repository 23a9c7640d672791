"""HTML / Markdown snippets from plain records (progress bar, metric cards, generations, tables).

Pure functions, inline styles only (the page looks right even where the launch CSS is not applied).
"""
from __future__ import annotations

import html
import math

from pruning.figures import finite  # noqa: F401 -- the one such helper, shared with the CLI (re-exported)

ACCENT = "#4c6ef5"


def _fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


fmt_seconds = _fmt_seconds


def progress_html(fraction: float, title: str, detail: str = "", state: str = "running") -> str:
    """A progress bar. state: idle | starting | queued | running | done | cancelled | failed."""
    colors = {"idle": "#ced4da", "starting": "#fab005", "queued": "#fab005", "running": ACCENT, "done": "#37b24d", "cancelled": "#868e96", "failed": "#f03e3e"}
    c = colors.get(state, ACCENT)
    pct = max(0.0, min(1.0, float(fraction))) * 100
    stripes = ("background-image:linear-gradient(45deg,rgba(255,255,255,.18) 25%,transparent 25%,transparent 50%,"
               "rgba(255,255,255,.18) 50%,rgba(255,255,255,.18) 75%,transparent 75%,transparent);background-size:16px 16px;"
               if state == "running" else "")
    return (
        f'<div class="pl-progress" data-state="{state}" style="font-family:inherit">'
        f'<div style="display:flex;justify-content:space-between;align-items:baseline;margin-bottom:6px">'
        f'<span style="font-weight:600;font-size:15px">{html.escape(title)}</span>'
        f'<span style="color:#868e96;font-size:13px">{html.escape(detail)}</span></div>'
        f'<div style="height:12px;border-radius:6px;background:#e9ecef;overflow:hidden">'
        f'<div class="pl-bar" style="height:100%;width:{pct:.1f}%;background-color:{c};{stripes}transition:width .3s"></div></div></div>'
    )


def _card(label: str, value: str, sub: str = "", color: str = "#212529") -> str:
    return (f'<div style="flex:1 1 130px;min-width:130px;padding:10px 14px;border:1px solid #e9ecef;border-radius:10px;background:#fff">'
            f'<div style="color:#868e96;font-size:12px;text-transform:uppercase;letter-spacing:.04em">{html.escape(label)}</div>'
            f'<div style="font-size:22px;font-weight:650;color:{color};line-height:1.3">{value}</div>'
            f'<div style="color:#868e96;font-size:12px">{sub}</div></div>')


def metrics_html(report: dict | None, dense_ppl: float | None = None, pruned_ppl: float | None = None,
                 state: str = "running", pruned_note: str = "") -> str:
    """Cards: dense vs pruned perplexity, achieved sparsity, time per phase. ``state``: running | cancelled | failed.
    ``pruned_note``: shown under a pruned perplexity that is still settling (e.g. "after 3/8 windows")."""
    if report is None and dense_ppl is None:
        return '<div style="color:#868e96;padding:8px 0">Results appear here when the job finishes.</div>'
    r = report or {}
    ppl = r.get("perplexity") or {}
    d = finite(ppl.get("dense", dense_ppl))
    p = finite(ppl.get("pruned", pruned_ppl))
    cards = [_card("dense perplexity", f"{d:.3f}" if d else "…", (r.get("config", {}).get("eval") or {}).get("source", ""))]
    if p is not None and d:
        ratio = p / d
        color = "#2b8a3e" if ratio < 1.25 else ("#e67700" if ratio < 2 else "#c92a2a")
        cards.append(_card("pruned perplexity", f"{p:.3f}", f"×{ratio:.2f} vs dense" + (f" · {pruned_note}" if pruned_note else ""), color))
    else:
        waiting = report is None and state == "running"
        cards.append(_card("pruned perplexity", "…" if waiting else "–", "" if waiting else (state if report is None else "")))
    if report is not None:
        sp = finite(r.get("sparsity"))
        layers = r.get("layers") or []
        lo = min((l.get("sparsity", 0) for l in layers), default=0)
        hi = max((l.get("sparsity", 0) for l in layers), default=0)
        kinds = r.get("sparsity_by_kind") or {}
        by_kind = " · ".join(f"{k} {v['sparsity']:.0%}" for k, v in kinds.items()) if len(kinds) > 1 else ""
        cards.append(_card("achieved sparsity", f"{sp:.2%}" if sp is not None else "–",
                           (f"per layer {lo:.1%} – {hi:.1%}" if layers else "") + (f" · {by_kind}" if by_kind else "")))
        t = r.get("timings") or {}
        total = finite(t.get("end_to_end")) or sum(v for v in t.values() if isinstance(v, (int, float)))
        for task, rec in (r.get("zeroshot") or {}).items():
            da, pa = finite((rec.get("dense") or {}).get("acc")), finite((rec.get("pruned") or {}).get("acc"))
            cards.append(_card(f"{task} accuracy", f"{pa:.1%}" if pa is not None else "–",
                               f"dense {da:.1%} (lm-eval, zero-shot)" if da is not None else "zero-shot (lm-eval)"))
        drift = r.get("drift") or {}
        kl = finite(drift.get("kl"))
        if kl is not None:
            top1 = finite(drift.get("top1_agreement"))
            cards.append(_card("KL vs dense", f"{kl:.4f}",
                               (f"top-1 agreement {top1:.1%}" if top1 is not None else "") + f" · {drift.get('tokens', '?')} tokens"))
        cards.append(_card("time", _fmt_seconds(total), "from cache" if r.get("cached") else f"pruning {_fmt_seconds(finite(t.get('prune_total')))}"))
    out = f'<div style="display:flex;gap:10px;flex-wrap:wrap">{"".join(cards)}</div>'
    if report is not None:
        out += timings_html(r.get("timings") or {})
        if r.get("warnings"):
            items = "".join(f"<li>{html.escape(str(w))}</li>" for w in r["warnings"][:8])
            out += f'<div style="margin-top:8px;color:#e67700;font-size:13px"><b>Warnings</b><ul style="margin:2px 0 0 18px">{items}</ul></div>'
    return out


PHASE_LABELS = {"load": "load model", "data": "tokenise data", "dense_eval": "dense eval", "copy": "copy model",
                "prune_total": "prune", "pruned_eval": "pruned eval", "generate": "generate", "end_to_end": "end to end"}
PRUNE_PARTS = {"capture": "capture", "calibration_forward": "forward", "statistics": "statistics", "solve": "solve",
               "propagate": "propagate"}


def timings_html(timings: dict) -> str:
    """Time per phase; the pruning phase's parts in parentheses."""
    if not timings:
        return ""

    def item(k: str) -> str:
        v = finite(timings.get(k))
        if v is None:
            return ""
        label = PHASE_LABELS.get(k, PRUNE_PARTS.get(k, k))
        extra = ""
        if k == "load" and v < 0.05:
            extra = ' <span style="color:#adb5bd">(already in memory)</span>'
        if k == "prune_total":
            parts = [f"{PRUNE_PARTS[p]} {_fmt_seconds(finite(timings[p]))}" for p in PRUNE_PARTS if finite(timings.get(p)) is not None]
            extra = f' <span style="color:#adb5bd">({", ".join(parts)})</span>' if parts else ""
        weight = "font-weight:600;" if k == "end_to_end" else ""
        return (f'<span style="margin-right:14px;white-space:nowrap;{weight}"><span style="color:#868e96">{html.escape(label)}</span> '
                f'{_fmt_seconds(v)}{extra}</span> ')

    known = [k for k in PHASE_LABELS if k in timings]
    other = [k for k in timings if k not in PHASE_LABELS and k not in PRUNE_PARTS]
    return f'<div style="margin-top:10px;font-size:13px;line-height:1.9">{"".join(item(k) for k in known + other)}</div>'


def generations_html(generations: list[dict], max_new_tokens: int | None = None) -> str:
    """Dense and pruned continuations side by side (same greedy decoding)."""
    if not generations:
        return '<div style="color:#868e96;padding:8px 0">Generations for the prompts appear here (dense and pruned, same greedy decoding).</div>'
    note = f"greedy decoding, {max_new_tokens} new tokens, identical for both" if max_new_tokens else "greedy decoding, identical for both"
    rows = []
    for g in generations:
        p = html.escape(g.get("prompt", ""))
        cell = ('<td style="vertical-align:top;padding:10px;border:1px solid #e9ecef;width:50%;overflow-wrap:anywhere">'
                '<span style="color:#868e96">{p}</span><b>{t}</b></td>')
        rows.append(f'<tr><td colspan="2" style="padding:10px 10px 2px;font-size:12px;color:#495057;font-weight:600;border:none">“{p}”</td></tr>'
                    f'<tr>{cell.format(p=p, t=html.escape(g.get("dense", "")))}{cell.format(p=p, t=html.escape(g.get("pruned", "")))}</tr>')
    th = '<th style="text-align:left;padding:6px 10px;color:#495057;border:none;border-bottom:2px solid #dee2e6">{}</th>'
    head = f'<tr>{th.format("Dense")}{th.format("Pruned")}</tr>'
    return (f'<div style="font-size:12px;color:#868e96;margin-bottom:4px">{note}</div>'
            f'<table style="width:100%;table-layout:fixed;border-collapse:collapse;font-size:14px;line-height:1.5">{head}{"".join(rows)}</table>')
