"""Solver registry. Importing this package registers every solver (one module per solver)."""
from .base import SOLVERS, UPDATES, LayerProblem, NumericalError, Option, SolveContext, SolverError, SolverOutput, SolverSpec
from . import greedy, sparsegpt  # noqa: F401  (registration side effects)
from . import admm  # noqa: F401  (registration side effects)
from . import ria  # noqa: F401
from . import sparsefw  # noqa: F401
from . import sparsellm  # noqa: F401
from . import alps  # noqa: F401

__all__ = ["SOLVERS", "UPDATES", "LayerProblem", "NumericalError", "Option", "SolveContext", "SolverError", "SolverOutput", "SolverSpec"]
