"""Solver registry. Importing this package registers every solver (one module per solver).

Solvers are pure maths: they import only torch, ``pruning.patterns``, ``pruning.errors`` and each other (never the
pipeline, the models, the data, the cost model or the UI; ``tests/test_solvers_pure.py`` checks it)."""
from .base import (SOLVERS, UPDATES, BlockProblem, LayerProblem, NumericalError, Option, SolveContext, SolverError,
                   SolverOutput, SolverSpec, split_options, validate_sparsity)
from . import greedy, sparsegpt  # noqa: F401  (registration side effects)
from . import admm  # noqa: F401  (registration side effects)
from . import exact  # noqa: F401
from . import ria  # noqa: F401
from . import sparsefw  # noqa: F401
from . import sparsellm  # noqa: F401
from . import alps  # noqa: F401

__all__ = ["SOLVERS", "UPDATES", "BlockProblem", "LayerProblem", "NumericalError", "Option", "SolveContext", "SolverError",
           "SolverOutput", "SolverSpec", "split_options", "validate_sparsity"]
