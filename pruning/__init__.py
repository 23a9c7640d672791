"""Pruning Lab engine: one-shot LLM pruning, layer by layer. Never imports gradio."""
from .solve import LayerSolution, prune_layer, rel_error
from .patterns import PATTERNS, Pattern, parse_pattern
from .solvers import SOLVERS, UPDATES

__all__ = ["prune_layer", "LayerSolution", "rel_error", "SOLVERS", "UPDATES", "PATTERNS", "Pattern", "parse_pattern"]
