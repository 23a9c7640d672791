"""The "best" preset: the lowest-perplexity combination measured on the embedded SmolLM2 for a pattern and sparsity.

Measured whole-model runs (benchmarks/RESULTS.md §7: SmolLM2-135M, fp32, 16 × 512 calibration windows of the
embedded Wikipedia sample, seed 0, perplexity on 16 × 512 evaluation windows; every solver and composition of
that sweep at its registry defaults, uniform allocation). ``best_preset`` picks the measured setting closest to
the request (N:M patterns: the 2:4 row; unstructured and per-row: the nearest measured unstructured sparsity) and
returns its method; the CLI's ``--preset best`` and the app's "Best" button fill solver, update and allocation
from it, and any of those given explicitly wins. Combinations not in that sweep (ALPS, OWL and curve
allocations at model level) are not candidates until measured.
"""
from __future__ import annotations

# setting -> (solver, update, allocation, perplexity measured, the runner-up and its perplexity)
MEASURED = {
    ("unstructured", 0.5): ("admm", "none", "uniform", 40.20, ("sparsefw+admm", 41.53)),
    ("unstructured", 0.6): ("admm", "none", "uniform", 70.39, ("sparsefw+admm", 77.15)),
    ("unstructured", 0.7): ("admm", "none", "uniform", 165.25, ("sparsellm", 185.78)),
    ("2:4", 0.5): ("admm", "none", "uniform", 72.77, ("sparsefw+admm", 81.21)),
}
PRESETS = ("best",)
SOURCE = "benchmarks/RESULTS.md §7 (SmolLM2-135M, 16 × 512 calibration, 16 × 512 evaluation windows, seed 0)"


def best_preset(pattern: str = "unstructured", sparsity: float = 0.5) -> dict:
    """{"solver", "update", "allocation", "measured_at": (pattern, sparsity), "perplexity", "runner_up", "source"}."""
    pat = str(pattern).strip()
    if ":" in pat:
        key = ("2:4", 0.5)
    else:
        s = float(sparsity)
        key = min((k for k in MEASURED if k[0] == "unstructured"), key=lambda k: (round(abs(k[1] - s), 9), k[1]))
    solver, update, allocation, ppl, runner_up = MEASURED[key]
    return {"solver": solver, "update": update, "allocation": allocation, "measured_at": key, "perplexity": ppl,
            "runner_up": runner_up, "source": SOURCE}


def preset_fields(name: str, pattern: str, sparsity: float) -> dict:
    """The config fields a preset sets (solver, update, allocation); ``name`` must be one of ``PRESETS``."""
    from .config import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    b = best_preset(pattern, sparsity)
    return {k: b[k] for k in ("solver", "update", "allocation")}
