"""The About tab: the solvers and updates (from the registry), patterns, the error metric, how it runs, a glossary.

The tables are HTML, not Markdown: a summary such as "Prune the smallest |W|" would split a Markdown row.
"""
from __future__ import annotations

import html

import gradio as gr

from pruning import SOLVERS, UPDATES

from .base import App, Tab

KINDS = {"mask": "mask", "update": "mask + update", "block": "block"}
GLOSSARY = {
    "OBS": "Optimal Brain Surgeon: remove one weight and correct the others with the inverse Hessian so that the "
           "layer's output changes as little as possible. SparseGPT applies it column by column.",
    "Hessian / inverse Hessian": "For a linear layer with inputs X, the Hessian of the output error is H = 2 X Xᵀ; its "
                                 "inverse tells how the other weights should move to compensate a pruned one.",
    "Gram matrix": "G = X Xᵀ, the inputs' second moments (d_in × d_in), gathered once on the calibration text; every "
                   "solver's error is computed from it.",
    "ρ (rho)": "ADMM's penalty weight: how strongly each iteration pulls the dense solution towards the masked one. "
               "Larger ρ: faster agreement, less freedom to compensate.",
    "primal / dual residual": "ADMM's two convergence measures: how far the dense and the masked weights still differ, "
                              "and how much that difference changed in the last step.",
    "FW gap": "Frank-Wolfe gap: an upper bound on how far SparseFW's relaxed mask objective is from its optimum; it "
              "shrinks towards 0 as the iterations converge.",
    "calibration windows": "Short runs of text (windows of a fixed number of tokens) fed through the model to record "
                           "each layer's inputs X.",
    "perplexity": "exp of the mean next-token loss on held-out text: lower is better; the dense model is the reference.",
}


def _table(header: list[str], rows: list[list[str]], elem_id: str) -> str:
    """An HTML table; cells are already-escaped HTML, the first column never wraps."""
    th = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="pl-name">{c}</td>' if i == 0 else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f'<table class="pl-table" id="{elem_id}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def solvers_html() -> str:
    rows = []
    for s in SOLVERS:
        link = f'<a href="{html.escape(s.paper)}" target="_blank" rel="noopener">paper</a>' if s.paper else ""
        rows.append([html.escape(s.name), html.escape(KINDS.get(s.kind, s.kind)), html.escape(s.summary), link])
    return _table(["solver", "kind", "what it does", ""], rows, "about-solvers")


def updates_html() -> str:
    return _table(["update", "what it does"], [[html.escape(u.name), html.escape(u.summary)] for u in UPDATES], "about-updates")


SPARSITY_BUYS = (
    "### What sparsity buys\n"
    "Pruning here sets weights to exact zeros in dense tensors. Unstructured and N:M zeros make the saved file no smaller "
    "(a zero takes as many bytes as any other number) and a forward pass with dense kernels no faster: the same matrix "
    "multiplications run over the zeros. 2:4 sparsity is faster only with semi-structured sparse kernels on recent "
    "NVIDIA GPUs (Ampere or newer, through torch's semi-structured sparse tensors); an exported model still stores dense "
    "weights so that any loader reads it. What you measure in this app is how much accuracy a sparsity costs.")


def sparse_measurement_md() -> str:
    """The last ``python -m pruning bench-sparse`` result on this machine, or how to measure it."""
    from pruning.api import sparse_bench_measurement as load_measurement, sparse_bench_table as format_table

    res = load_measurement()
    if not res:
        return "Not measured on this machine yet: `python -m pruning bench-sparse`"
    try:
        return "Last measurement on this machine (`python -m pruning bench-sparse`):\n\n" + format_table(res)
    except (KeyError, TypeError, ValueError):
        return "The stored measurement could not be read; measure again: `python -m pruning bench-sparse`"


def glossary_html() -> str:
    items = "".join(f"<dt><b>{html.escape(k)}</b></dt><dd style='margin:0 0 8px 16px'>{html.escape(v)}</dd>"
                    for k, v in GLOSSARY.items())
    return f'<dl id="glossary">{items}</dl>'


class AboutTab(Tab):
    id, title = "about", "About"

    def build(self, app: App) -> None:
        gr.Markdown("### Solvers")
        gr.HTML(solvers_html())
        gr.Markdown("### Weight updates after a mask solver")
        gr.HTML(updates_html())
        gr.Markdown("\n".join([
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
            "configuration and the model's fingerprint. Every button is also an API endpoint: the **API** link at the top of "
            "the page lists them with ready-to-run Python and JavaScript.",
            "",
        ]))
        gr.Markdown(SPARSITY_BUYS, elem_id="about-sparsity")
        gr.Markdown(sparse_measurement_md(), elem_id="about-bench")
        gr.Markdown("### Glossary")
        gr.HTML(glossary_html())
