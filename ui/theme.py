"""Page chrome: the header (with the visible "API" link), the launch CSS and the theme."""
from __future__ import annotations

import gradio as gr

# Gradio's own "Use via API" link sits in the footer, which the CSS below hides; ?view=api opens the same page
HEADER = """
<div style="display:flex;align-items:center;gap:14px;padding:4px 0 2px">
  <div style="font-size:30px">✂️</div>
  <div style="flex:1">
    <div style="font-size:22px;font-weight:700;letter-spacing:-.01em">Pruning Lab</div>
    <div style="color:#868e96;font-size:14px">One-shot LLM pruning, layer by layer: pick a solver, a pattern and a sparsity,
    watch each layer's reconstruction error, then compare perplexity and generations with the dense model.</div>
  </div>
  <a id="api-link" href="?view=api" title="Every button is an API endpoint: how to call them from Python or JavaScript"
     style="font-size:14px;white-space:nowrap;text-decoration:none;border:1px solid #dee2e6;border-radius:8px;padding:4px 10px">API ↗</a>
</div>
"""

CSS = """
.gradio-container {max-width: 1480px !important; margin: auto}
.pl-small textarea, .pl-small input {font-size: 13px}
.pl-log textarea {font-family: ui-monospace, SFMono-Regular, Menlo, monospace !important; font-size: 12px !important}
.pl-muted {color: #868e96; font-size: 13px}
.pl-nowrap label, .pl-nowrap span {white-space: nowrap}
.pl-table {border-collapse: collapse; width: 100%; font-size: 14px}
.pl-table th, .pl-table td {text-align: left; vertical-align: top; padding: 6px 10px; border-bottom: 1px solid #e9ecef}
.pl-table td.pl-name {white-space: nowrap; font-weight: 600}
footer {display: none !important}
"""


def theme() -> gr.themes.Base:
    """A quiet theme with system fonts (no web-font download: the app also runs offline)."""
    sys_fonts = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif")
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate", radius_size="md",
                          font=sys_fonts, font_mono=("ui-monospace", "SFMono-Regular", "Menlo", "monospace"))
