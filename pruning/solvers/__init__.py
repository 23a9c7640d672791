"""Solver registry. Importing this package registers every solver (one module per solver)."""
from .base import SOLVERS, UPDATES, LayerProblem, NumericalError, Option, SolveContext, SolverError, SolverOutput, SolverSpec
from . import greedy, sparsegpt  # noqa: F401  (registration side effects)

__all__ = ["SOLVERS", "UPDATES", "LayerProblem", "NumericalError", "Option", "SolveContext", "SolverError", "SolverOutput", "SolverSpec"]
