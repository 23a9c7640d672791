"""The import directions of docs/ARCHITECTURE.md, enforced by scanning every import statement (module level and
inside functions) of pruning/, ui/ and app.py with ``ast``; and, at run time, that the leaf modules import no torch.
"""
import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "transformers", "numpy", "gradio", "accelerate", "safetensors", "tokenizers"}
# torch-free leaves: anything may import them, they import only each other and the standard library
LEAVES = {"pruning.errors", "pruning.events", "pruning.settings", "pruning.assets", "pruning.lru", "pruning.engine"}
# what ui/ may import from the engine: the package's lazy public names and these modules
UI_PUBLIC = {"pruning", "pruning.api", "pruning.config", "pruning.events", "pruning.errors", "pruning.jobs",
             "pruning.results", "pruning.lab", "pruning.settings", "pruning.assets", "pruning.lru", "pruning.solvers",
             "pruning.patterns", "pruning.figures", "pruning.executors", "pruning.presets"}
SOLVER_ALLOWED = {"pruning.errors", "pruning.patterns"}  # plus pruning.solvers.*: tensors in, tensors out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def imports() -> dict[str, list[tuple[str, int]]]:
    """{module: [(imported module, line)]} for every import statement anywhere in the file. ``from a import b``
    counts as importing ``a.b`` when ``a.b`` is a module of ours, else ``a``."""
    files = sorted((ROOT / "pruning").rglob("*.py")) + sorted((ROOT / "ui").rglob("*.py")) + [ROOT / "app.py"]
    ours = {_module_name(f) for f in files}
    out = {}
    for f in files:
        mod = _module_name(f)
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    found.append((sub if sub in ours else target, node.lineno))
        out[mod] = sorted(set(found), key=lambda x: (x[1], x[0]))
    return out


def _violations(modules, allowed) -> list[str]:
    return [f"{m}:{line} imports {t}" for m in modules for t, line in imports()[m] if not allowed(t)]


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_scan_sees_function_level_imports():
    # pruning/api.py imports pruning.pipeline inside prune_model(); the scan must see it
    assert any(t == "pruning.pipeline" for t, _ in imports()["pruning.api"])


def test_pruning_never_imports_gradio_or_ui():
    engine = [m for m in imports() if _top(m) == "pruning"]
    bad = _violations(engine, lambda t: _top(t) not in ("gradio", "ui", "gradio_client", "app"))
    assert not bad, "\n".join(bad)


def test_solvers_are_pure_maths():
    """A solver imports only other solver modules, patterns and errors: never the pipeline, models, data, the cost
    model, the api, jobs, results or ui. The pipeline hands it tensors."""
    solvers = [m for m in imports() if m.startswith("pruning.solvers")]
    bad = _violations(solvers, lambda t: _top(t) not in ("pruning", "ui", "app") or t in SOLVER_ALLOWED
                      or t == "pruning.solvers" or t.startswith("pruning.solvers."))
    assert not bad, "\n".join(bad)


def test_ui_uses_only_the_public_modules():
    ui = [m for m in imports() if _top(m) == "ui"] + ["app"]
    bad = _violations(ui, lambda t: _top(t) != "pruning" or t in UI_PUBLIC)
    assert not bad, "\n".join(bad)


def test_leaves_import_no_heavy_library_and_no_other_layer():
    bad = _violations(sorted(LEAVES), lambda t: _top(t) not in HEAVY and (_top(t) != "pruning" or t in LEAVES))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Counting imports inside functions too: a lazy import that closes a circle still hides a wrong direction.
    Importing ``a.b`` also runs ``a/__init__``, so it counts as importing ``a``."""
    graph: dict[str, set[str]] = {}
    for m, targets in imports().items():
        edges = set()
        for t, _ in targets:
            while t in imports() and t != m:
                edges.add(t)
                t = t.rpartition(".")[0]
        graph[m] = edges - {m}
    parent = lambda m: m.rpartition(".")[0]  # noqa: E731
    for m in graph:  # a package's own modules are imported by their __init__; that edge is structure, not a cycle
        graph[m] = {t for t in graph[m] if not (m.startswith(t + ".") and parent(m) == t)}
    cycles, index, low, stack, on, counter = [], {}, {}, [], set(), [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["pruning", *sorted(LEAVES), "pruning.results"])
def test_light_modules_import_no_torch_at_run_time(module):
    code = f"import sys, {module}; heavy = sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules); print(heavy)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]", f"import {module} pulled in {p.stdout.strip()}"
