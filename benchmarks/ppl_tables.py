"""Perplexity tables from sweep reports (the JSON of ``python -m pruning sweep --json-dir`` or a precomputed file).

    python -m pruning sweep --solvers magnitude,wanda,sparsegpt,admm --sparsities 0.5,0.6,0.7 \\
        --patterns unstructured,2:4 --json-dir runs/ --resume
    python benchmarks/ppl_tables.py runs/                       # or assets/precomputed/smollm2-135m.json
    python benchmarks/ppl_tables.py runs/ --pack assets/precomputed/smollm2-135m.json   # one file for the app

Prints one markdown row per solver (+ update) and one column per setting (pattern, sparsity): pruned perplexity,
the lowest of each column in bold; then the best combination per setting and the dense perplexity.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pruning.results import is_report  # noqa: E402


def load_reports(path: Path) -> list[dict]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    out = []
    for f in files:
        obj = json.loads(f.read_text())
        items = obj.get("runs", [obj]) if isinstance(obj, dict) else obj
        out += [r for r in items if isinstance(r, dict) and is_report(r)]
    return out


def name(r: dict) -> str:
    c = r["config"]
    return c["solver"] + (f"+{c['update']}" if c.get("update", "none") != "none" else "")


def setting(r: dict) -> str:
    c = r["config"]
    return c["pattern"] if ":" in c["pattern"] else f"{c['pattern']} {c['sparsity']:.0%}"


def table(reports: list[dict]) -> str:
    cols = sorted({setting(r) for r in reports}, key=lambda s: (":" in s, s))
    rows = sorted({name(r) for r in reports}, key=lambda n: (n.count("+"), n))
    ppl = {(name(r), setting(r)): r["perplexity"]["pruned"] for r in reports}
    best = {c: min((v for (n, s), v in ppl.items() if s == c), default=None) for c in cols}
    lines = ["| solver | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in rows:
        cells = []
        for c in cols:
            v = ppl.get((n, c))
            cells.append("–" if v is None else (f"**{v:.2f}**" if v == best[c] else f"{v:.2f}"))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    dense = sorted({round(r["perplexity"]["dense"], 3) for r in reports})
    lines.append("")
    lines.append("best per setting: " + "; ".join(f"{c}: {next(n for (n, s), v in ppl.items() if s == c and v == best[c])}"
                                                for c in cols if best[c] is not None))
    lines.append(f"dense perplexity: {', '.join(map(str, dense))}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", type=Path, help="a directory of report JSON files, or one JSON file")
    ap.add_argument("--only", default="", help="comma-separated solver names (as in the table) to keep")
    ap.add_argument("--pack", type=Path, default=None, help="also write every report into this one JSON file {'runs': [...]}")
    a = ap.parse_args()
    reports = load_reports(a.path)
    if a.only:
        keep = set(a.only.split(","))
        reports = [r for r in reports if name(r) in keep]
    if not reports:
        raise SystemExit(f"path: no pruning reports found in {a.path}")
    print(table(reports))
    if a.pack:
        a.pack.parent.mkdir(parents=True, exist_ok=True)
        a.pack.write_text(json.dumps({"runs": reports}, separators=(",", ":")))
        print(f"\n{len(reports)} reports written to {a.pack}")


if __name__ == "__main__":
    main()
