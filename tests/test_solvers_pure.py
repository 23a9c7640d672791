"""Solvers are pure maths: they import nothing of the pipeline, the models, the data, the cost model or the UI; and
the one shared piece of their linear algebra (``solvers/linalg.py``) behaves as documented."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruning.solvers import NumericalError, SolveContext
from pruning.solvers.linalg import MAX_DAMP_RAISES, ZERO_DAMPING, damped_cholesky

SOLVERS_DIR = Path(__file__).resolve().parent.parent / "pruning" / "solvers"
FORBIDDEN = ("pipeline", "models", "data", "cost_model", "api", "jobs", "lab", "blocks", "evaluate", "results", "ui",
             "gradio", "transformers")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions), resolved to absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.add(node.module or "")
            else:  # relative to pruning.solvers
                base = ["pruning", "solvers"][: 2 - (node.level - 1)]
                out.add(".".join(base + ([node.module] if node.module else [])))
    return out


@pytest.mark.parametrize("path", sorted(SOLVERS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_solver_files_import_nothing_forbidden(path):
    bad = []
    for mod in _imports(path):
        parts = mod.split(".")
        if parts[0] in ("ui", "gradio", "transformers"):
            bad.append(mod)
        elif parts[0] == "pruning" and len(parts) > 1 and parts[1] != "solvers" and parts[1] in FORBIDDEN:
            bad.append(mod)
    assert not bad, f"{path.name} imports {bad}"


def test_sparsellm_imports_only_base_linalg_sparsegpt():
    mods = {m for m in _imports(SOLVERS_DIR / "sparsellm.py") if m.startswith("pruning")}
    assert mods <= {"pruning.solvers.base", "pruning.solvers.linalg", "pruning.solvers.sparsegpt"}, mods


def test_importing_the_solvers_loads_no_pipeline_model_data_or_ui():
    """In a fresh interpreter: the registry (every solver) loads without the heavy or the side-effect modules."""
    code = ("import sys; import pruning.solvers; "
            f"bad = [m for m in sys.modules if m.split('.')[0] in ('ui', 'gradio', 'transformers') or "
            f"m in {tuple('pruning.' + m for m in FORBIDDEN)!r}]; print(bad); sys.exit(1 if bad else 0)")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------- damped_cholesky


def test_damped_cholesky_factorises_without_raise():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 8, generator=g, dtype=torch.float64)
    M = X.T @ X
    warns = []
    L, lam = damped_cholesky(M, 0.01, float(M.diagonal().mean()), SolveContext(on_warning=warns.append), "t")
    assert lam == 0.01 and warns == []
    torch.testing.assert_close(L @ L.T, M + 0.01 * M.diagonal().mean() * torch.eye(8, dtype=torch.float64))


def test_damped_cholesky_escalates_by_ten_and_reports_it():
    d = 6
    M = 2 * torch.eye(d, dtype=torch.float64) - torch.ones(d, d, dtype=torch.float64)  # eigenvalue 2 - d = -4
    warns = []
    L, lam = damped_cholesky(M, 0.0, 1.0, SolveContext(on_warning=warns.append), "what")
    # 0 -> ZERO_DAMPING -> ×10 ... until M + λI is positive definite (λ > 4): 1e-6, ..., 1, 10
    assert lam == pytest.approx(10.0) and lam / ZERO_DAMPING == pytest.approx(1e7)
    assert len(warns) == 1 and warns[0].startswith("what: Cholesky failed at damping 0") and "succeeded at 10" in warns[0]
    torch.testing.assert_close(L @ L.T, M + lam * torch.eye(d, dtype=torch.float64))
    # shift: a fixed part of the diagonal that is never raised
    L2, lam2 = damped_cholesky(M, 0.5, 1.0, None, "t", shift=4.0)
    assert lam2 == 0.5
    torch.testing.assert_close(L2 @ L2.T, M + 4.5 * torch.eye(d, dtype=torch.float64))


def test_damped_cholesky_gives_up_with_a_numerical_error():
    M = -torch.eye(4) * 1e12  # no λ up to 10⁸·λ₀ helps
    with pytest.raises(NumericalError, match="not positive definite"):
        damped_cholesky(M, 1e-3, 1.0, None, "hopeless")
    assert MAX_DAMP_RAISES == 8


def test_damped_cholesky_check_can_refuse_a_factor():
    """``check`` may derive what the caller needs and refuse (None): λ is then raised again."""
    M = torch.eye(3, dtype=torch.float64)
    seen = []
    out, lam = damped_cholesky(M, 1.0, 1.0, None, "t", check=lambda L: seen.append(float(L[0, 0])) or (L if len(seen) > 2 else None))
    assert lam == 100.0 and len(seen) == 3
