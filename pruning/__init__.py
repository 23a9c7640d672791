"""Pruning Lab engine: one-shot LLM pruning, layer by layer. Never imports gradio.

The public API (docs/ARCHITECTURE.md)::

    from pruning import prune_layer, prune_model, PruneConfig, SOLVERS, PATTERNS

Names are loaded on first use (PEP 562), so ``import pruning`` itself stays light (no torch): ``SOLVERS`` imports
the solvers, ``prune_model`` the pipeline.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "prune_layer": "solve", "LayerSolution": "solve", "rel_error": "solve",
    "prune_model": "api", "run_job": "api",
    "PruneConfig": "config", "CalibConfig": "config", "EvalConfig": "config", "ConfigError": "config",
    "sweep_configs": "config",
    "SOLVERS": "solvers", "UPDATES": "solvers",
    "PATTERNS": "patterns", "Pattern": "patterns", "parse_pattern": "patterns",
    "export_run": "export", "find_run": "export", "zip_folder": "export", "write_export": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pruning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
