"""Layer-wise quality and speed of every solver (and mask-solver + update composition) on real SmolLM2 layers.

    python benchmarks/bench_solvers.py [--blocks 0,10,20,29] [--names self_attn.q_proj,...] [--settings 50%,70%,2:4,4:8]
                                       [--only admm-grad,sparsegpt] [--threads 1] [--json out.json] [--synthetic]

For every layer (default: blocks 0, 10, 20, 29; q, o, gate, down) and every setting (unstructured 50 % / 70 %,
2:4, 4:8), each entry of ``ENTRIES`` prunes the same weight with the same Gram; reported: relative error
‖WX − ŴX‖²/‖WX‖² (pruning.solve.rel_error) and solver seconds. Entries whose solver or update is not
registered in this build are skipped with a printed note, so the list can name solvers other helpers add.

Summaries printed (and stored in the JSON):
* per setting: mean error and total time of each entry;
* ADMM-Grad vs SparseGPT: fraction of layers where ADMM-Grad's error is lower (target ≥ 80 % at 70 %);
* fixed-mask update gap: Wanda mask + ADMM update (20 iterations) vs the exact least-squares update on the
  same mask, relative difference of the damped objective (pruning.solvers.admm.damped_objective).

To add a solver: append ``Entry(label, solver, update, options)`` to ``ENTRIES``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pruning import prune_layer  # noqa: E402
from pruning.solvers import SOLVERS, UPDATES, LayerProblem  # noqa: E402
from pruning.patterns import parse_pattern  # noqa: E402
from pruning.solve import LayerSolution, rel_error  # noqa: E402
from pruning.solvers import SolveContext  # noqa: E402
from pruning.solvers.admm import AdmmOptions, admm_layer  # noqa: E402
from pruning.solvers.exact import damped_objective  # noqa: E402


@dataclass(frozen=True)
class Entry:
    label: str
    solver: str
    update: str = "none"
    options: dict = field(default_factory=dict)
    schedule: str = "cubic"  # ADMM only: "official" = the upstream quirk (not a user option)
    mask_of: str = ""  # ADMM only: start from (and keep) this solver's mask (e.g. SparseGPT's, not a mask solver)


def admm_variant(p: LayerProblem, s: float, pattern: str, opts: dict, schedule: str = "cubic",
                 keep: torch.Tensor | None = None) -> LayerSolution:
    """ADMM on one layer with what is not a user option (the official schedule quirk, a fixed mask of a non-mask
    solver), timed and measured like ``prune_layer``."""
    o = AdmmOptions.from_options(SOLVERS.resolve_options("admm", opts), schedule=schedule)
    problem = LayerProblem(W=p.W.float().clone(), G=p.G.float(), n_tokens=p.n_tokens)
    t0 = time.perf_counter()
    out = admm_layer(problem, parse_pattern(pattern), s, o, SolveContext(), keep)
    if problem.W.is_cuda:
        torch.cuda.synchronize(problem.W.device)
    seconds = time.perf_counter() - t0
    W_hat = out.weight * out.mask
    return LayerSolution(weight=W_hat, mask=out.mask, rel_error=rel_error(p.W, W_hat, p.G), seconds=seconds,
                         trace=out.trace, info=out.info)


def run_entry(e: Entry, p: LayerProblem, pattern: str, s: float) -> LayerSolution:
    if e.schedule != "cubic" or e.mask_of:
        keep = None
        if e.mask_of:
            keep = prune_layer(p.W, p.G, p.n_tokens, solver=e.mask_of, sparsity=s, pattern=pattern).mask
        return admm_variant(p, s, pattern, e.options, e.schedule, keep)
    return prune_layer(p.W, p.G, p.n_tokens, solver=e.solver, sparsity=s, pattern=pattern, update=e.update, **e.options)


ENTRIES = [
    Entry("magnitude", "magnitude"),
    Entry("wanda", "wanda"),
    Entry("sparsegpt", "sparsegpt"),
    Entry("admm-grad", "admm"),  # gradual mask, cubic schedule (default)
    Entry("admm-grad official", "admm", schedule="official"),
    Entry("admm one-shot", "admm", options={"gradual_iters": 0}),
    Entry("admm sgpt-mask", "admm", mask_of="sparsegpt"),
    Entry("wanda+admm", "wanda", "admm"),
    Entry("wanda+exact", "wanda", "exact"),
    Entry("wanda+sparsegpt", "wanda", "sparsegpt"),
    Entry("ria", "ria"),
    Entry("ria+admm", "ria", "admm"),
    Entry("sparsefw", "sparsefw"),
    Entry("sparsefw+admm", "sparsefw", "admm"),
    Entry("sparsellm", "sparsellm"),
]

SETTINGS = {"50%": ("unstructured", 0.5), "70%": ("unstructured", 0.7), "2:4": ("2:4", 0.5), "4:8": ("4:8", 0.5)}


def synthetic_problems(device="cpu") -> dict[tuple[int, str], LayerProblem]:
    """Layer-shaped synthetic problems (q/o 576×576, gate 1536×576, down 576×1536): correlated inputs with a
    decaying spectrum, uneven channel norms and a few dead channels. For runs without the model."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, (d_out, d_in) in {"q_proj": (576, 576), "o_proj": (576, 576), "gate_proj": (1536, 576), "down_proj": (576, 1536)}.items():
        T = 4096
        mix = torch.randn(d_in, d_in, generator=g) * torch.logspace(0, -2, d_in).unsqueeze(0)
        X = torch.randn(T, d_in, generator=g) @ mix.T * (torch.rand(d_in, generator=g) * 3 + 0.1)
        X[:, :4] = 0
        W = torch.randn(d_out, d_in, generator=g) * 0.05
        out[(0, name)] = LayerProblem(W=W.to(device), G=(X.T @ X).to(device), n_tokens=T, name=name)
    return out


def real_problems(blocks, names, nsamples, seqlen, device) -> dict[tuple[int, str], LayerProblem]:
    """Dense statistics of SmolLM2-135M layers (float32 model, calibration windows with seed 0)."""
    from pruning.api import get_model
    from pruning.data import calibration_windows
    from pruning.pipeline import capture_layer_problems

    model, tok, _ = get_model("smollm2-135m", device, "float32")
    win = calibration_windows(tok, nsamples=nsamples, seqlen=seqlen, seed=0)
    return capture_layer_problems(model, tok, win, blocks=blocks, names=names)


def load_problems(a) -> tuple[dict, str]:
    if a.synthetic:
        return synthetic_problems(a.device), "synthetic"
    try:
        probs = real_problems([int(b) for b in a.blocks.split(",")], a.names.split(","), a.nsamples, a.seqlen, a.device)
    except ImportError as e:
        raise SystemExit(f"real layers need pruning.models / pruning.data ({e}); run with --synthetic instead")
    return probs, f"SmolLM2-135M blocks {a.blocks}, calibration {a.nsamples}×{a.seqlen}"


def available(entries: list[Entry], pattern: str) -> list[Entry]:
    out = []
    for e in entries:
        if e.solver not in SOLVERS or e.update not in UPDATES:
            missing = e.solver if e.solver not in SOLVERS else f"update {e.update}"
            print(f"note: skipping {e.label!r}: {missing} is not registered in this build")
            continue
        out.append(e)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", default="0,10,20,29")
    ap.add_argument("--names", default="self_attn.q_proj,self_attn.o_proj,mlp.gate_proj,mlp.down_proj")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"subset of {list(SETTINGS)}".replace("%", "%%"))
    ap.add_argument("--only", default="", help="comma-separated entry labels to run (default: all)")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    ap.add_argument("--synthetic", action="store_true", help="layer-shaped synthetic data instead of SmolLM2")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    unknown = [s for s in a.settings.split(",") if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: {unknown} unknown; allowed: {list(SETTINGS)}")
    labels = [e.label for e in ENTRIES]
    for lab in (a.only.split(",") if a.only else []):
        if lab not in labels:
            print(f"note: --only {lab!r} is not an entry; entries: {', '.join(labels)}")
    entries = [e for e in ENTRIES if not a.only or e.label in a.only.split(",")]
    t_load = time.perf_counter()
    probs, source = load_problems(a)
    print(f"{source}; {len(probs)} layers (loaded in {time.perf_counter() - t_load:.0f}s); device {a.device}; "
          f"threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    rows = []
    summary: dict = {}
    for setting in a.settings.split(","):
        pattern, s = SETTINGS[setting]
        ents = available(entries, pattern)
        print(f"\n== {setting} ({pattern}, sparsity {s}) — rel. error, [seconds]")
        print(f"{'layer':<22}" + "".join(f"{e.label:>19}" for e in ents))
        per_entry: dict[str, list] = {e.label: [] for e in ents}
        for (b, name), p in probs.items():
            line = f"{b:>2} {name:<19}"
            for e in ents:
                try:
                    sol = run_entry(e, p, pattern, s)
                except Exception as exc:  # a benchmark reports failures and goes on
                    line += f"{'FAILED':>19}"
                    rows.append({"block": b, "name": name, "setting": setting, **asdict(e), "error": repr(exc)})
                    continue
                row = {"block": b, "name": name, "setting": setting, **asdict(e), "rel_error": sol.rel_error,
                       "seconds": sol.seconds, "sparsity": sol.sparsity}
                if e.update in ("admm", "exact"):
                    row["damped_objective"] = damped_objective(p.W, sol.weight, p.G, e.options.get("damping", 0.1))
                rows.append(row)
                per_entry[e.label].append(row)
                line += f"{sol.rel_error:>11.5f} [{sol.seconds:>5.2f}]"
            print(line, flush=True)
        summ = {lab: {"mean_rel_error": sum(r["rel_error"] for r in rs) / len(rs), "seconds": sum(r["seconds"] for r in rs)}
                for lab, rs in per_entry.items() if rs}
        print(f"{'mean / total s':<22}" + "".join(f"{summ[e.label]['mean_rel_error']:>11.5f} [{summ[e.label]['seconds']:>5.1f}]"
                                              if e.label in summ else f"{'-':>19}" for e in ents))
        ag, sg = per_entry.get("admm-grad", []), per_entry.get("sparsegpt", [])
        if ag and sg and len(ag) == len(sg):
            wins = sum(x["rel_error"] < y["rel_error"] for x, y in zip(ag, sg))
            ratio = [x["rel_error"] / y["rel_error"] for x, y in zip(ag, sg) if y["rel_error"] > 0]
            summ["admm_grad_vs_sparsegpt"] = {"wins": wins, "layers": len(ag), "mean_ratio": sum(ratio) / max(len(ratio), 1)}
            print(f"ADMM-Grad error < SparseGPT on {wins}/{len(ag)} layers ({100 * wins / len(ag):.0f} %); "
                  f"mean error ratio {summ['admm_grad_vs_sparsegpt']['mean_ratio']:.3f}")
        wa, we = per_entry.get("wanda+admm", []), per_entry.get("wanda+exact", [])
        if wa and we and len(wa) == len(we):
            gaps = [x["damped_objective"] / y["damped_objective"] - 1 for x, y in zip(wa, we) if y["damped_objective"] > 0]
            rgaps = [x["rel_error"] / y["rel_error"] - 1 for x, y in zip(wa, we) if y["rel_error"] > 0]
            summ["admm_vs_exact_gap"] = {"damped_max": max(gaps), "damped_mean": sum(gaps) / len(gaps),
                                         "rel_error_max": max(rgaps), "rel_error_min": min(rgaps)}
            print(f"Wanda mask, ADMM (20 it.) vs exact LS: damped objective gap mean {summ['admm_vs_exact_gap']['damped_mean']:.2e}, "
                  f"max {max(gaps):.2e}; rel_error gap {min(rgaps):+.2e}..{max(rgaps):+.2e}")
        summary[setting] = summ
        if a.json:  # after every setting, so that an interrupted run keeps what it measured
            Path(a.json).write_text(json.dumps({"source": source, "device": a.device, "threads": torch.get_num_threads(),
                                                "rows": rows, "summary": summary}, indent=2))
    if a.json:
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
