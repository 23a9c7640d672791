"""Command line: ``python -m pruning {run,sweep,export,bench,solvers}``.

    python -m pruning run --solver sparsegpt --sparsity 0.5 --pattern 2:4 --json out.json
    python -m pruning sweep --solvers wanda,sparsegpt,admm --sparsities 0.5,0.6,0.7 --patterns unstructured,2:4
    python -m pruning export --solver admm --sparsity 0.5 --save pruned-model/
    python -m pruning solvers            # every solver, its options and defaults
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import runpy
import signal
import sys
import threading
from pathlib import Path

from . import events as ev
from .config import DEFAULT_MODEL, DEFAULT_PROMPTS, CalibConfig, ConfigError, EvalConfig, PruneConfig
from .solvers import SOLVERS, UPDATES, SolverError

_SHORT = {"self_attn.": "", "mlp.": "", "_proj": "", "attn.": ""}


def _short(name: str) -> str:
    for a, b in _SHORT.items():
        name = name.replace(a, b)
    return name


def _solver_option_args(p: argparse.ArgumentParser) -> list[str]:
    """One --flag per option declared by any solver or update (the registry is the single source)."""
    seen: dict[str, list[str]] = {}
    helps: dict[str, str] = {}
    for reg in (SOLVERS, UPDATES):
        for spec in reg:
            for o in spec.options:
                seen.setdefault(o.name, []).append(f"{spec.name}={o.default}")
                helps.setdefault(o.name, o.help)
    g = p.add_argument_group("solver options (from the registry; defaults per solver)")
    for name, owners in seen.items():
        g.add_argument("--" + name.replace("_", "-"), dest="opt_" + name, default=None, metavar="V",
                       help=f"{helps[name]} [{', '.join(owners)}]")
    return list(seen)


def _common(p: argparse.ArgumentParser) -> list[str]:
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded default (smollm2-135m), a local HF model directory, or a hub id")
    p.add_argument("--calib", default="wiki-sample", help="calibration text: wiki-sample, pydoc, wikitext2, c4, or a text file path")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default: 16 on CPU, 128 on GPU)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per calibration window (default: 512 on CPU, 2048 on GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", dest="eval_source", default=None, help="evaluation text (default: same source as --calib)")
    p.add_argument("--eval-windows", type=int, default=None, help="evaluation windows, 0 = all (default: 16 on CPU, 0 on GPU)")
    p.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window length (default: = --seqlen)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", help="forward dtype: auto (bfloat16 on GPUs and on CPUs with native bf16, else float32), float32, bfloat16, float16; solver maths is always float32")
    p.add_argument("--batch-size", type=int, default=8, help="windows per batched forward")
    p.add_argument("--true-sequential", action="store_true", help="re-run the block before each group of linears (q/k/v, o, gate/up, down)")
    p.add_argument("--prompt", action="append", default=None, help="generation prompt (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--quiet", action="store_true", help="no per-block lines")
    return _solver_option_args(p)


def _gpu(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return False


def _config(a, solver: str, sparsity: float, pattern: str, opt_names: list[str]) -> PruneConfig:
    gpu = _gpu(a.device)
    seqlen = a.seqlen if a.seqlen is not None else (2048 if gpu else 512)
    opts = {n: getattr(a, "opt_" + n) for n in opt_names if getattr(a, "opt_" + n) is not None}
    return PruneConfig(
        model=a.model, solver=solver, sparsity=sparsity, pattern=pattern, update=getattr(a, "update", "none"), options=opts,
        calib=CalibConfig(source=a.calib, nsamples=a.nsamples if a.nsamples is not None else (128 if gpu else 16), seqlen=seqlen, seed=a.seed),
        eval=EvalConfig(source=a.eval_source or a.calib, windows=a.eval_windows if a.eval_windows is not None else (0 if gpu else 16),
                        seqlen=a.eval_seqlen if a.eval_seqlen is not None else seqlen),
        device=a.device, dtype=a.dtype, true_sequential=a.true_sequential, batch_size=a.batch_size,
        prompts=tuple(a.prompt) if a.prompt else DEFAULT_PROMPTS, max_new_tokens=a.max_new_tokens,
    )


class Progress:
    """Consumes events: a tqdm bar over blocks, one line per block with each layer's relative error."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.block_errs: list[str] = []

    def __call__(self, e: ev.Event) -> None:
        from tqdm import tqdm

        if isinstance(e, ev.PhaseStarted):
            tqdm.write(f"[{e.phase}] {e.detail}", file=sys.stderr)
        elif isinstance(e, ev.JobStarted):
            self.bar = tqdm(total=e.n_blocks, desc="blocks", unit="block", file=sys.stderr, dynamic_ncols=True)
        elif isinstance(e, ev.LayerSolved):
            self.block_errs.append(f"{_short(e.name)} {e.rel_error:.4f}")
            if self.bar is not None:
                self.bar.set_postfix_str(f"{_short(e.name)} err={e.rel_error:.4f}")
        elif isinstance(e, ev.BlockDone):
            if not self.quiet:
                tqdm.write(f"block {e.block:3d} | " + " ".join(self.block_errs) + f" | {e.seconds:.2f}s", file=sys.stderr)
            self.block_errs = []
            if self.bar is not None:
                self.bar.update(1)
                if e.block == e.n_blocks - 1:
                    self.bar.close()
        elif isinstance(e, ev.WarningEvent):
            tqdm.write(f"warning: {e.message}", file=sys.stderr)
        elif isinstance(e, ev.Evaluated):
            tqdm.write(f"perplexity ({e.which}, {e.split}): {e.ppl:.3f}", file=sys.stderr)
        elif isinstance(e, ev.JobCancelled):
            tqdm.write(f"cancelled: {e.reason}", file=sys.stderr)


def _print_report(r: dict) -> None:
    c = r["config"]
    print(f"\nmodel {r['model']['id']}  solver {c['solver']}{'+' + c['update'] if c['update'] != 'none' else ''}  "
          f"pattern {c['pattern']}  target sparsity {c['sparsity']:.2%}  device {r['device']} ({r['dtype']})")
    print(f"perplexity  dense {r['perplexity']['dense']:.3f}   pruned {r['perplexity']['pruned']:.3f}"
          f"   ({r['evaluation']['windows']} × {r['evaluation']['seqlen']} tokens, {c['eval']['source']})")
    errs = [l["rel_error"] for l in r["layers"]]
    print(f"achieved sparsity {r['sparsity']:.4%} over {len(r['layers'])} linears; mean layer rel. error {sum(errs) / max(len(errs), 1):.4f}")
    print("time per phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in r["timings"].items()))
    for g in r["generations"]:
        print(f"\n> {g['prompt']}\n  dense : {g['dense']!r}\n  pruned: {g['pruned']!r}")
    for w in r["warnings"]:
        print(f"warning: {w}")


def _run_one(cfg: PruneConfig, a, keep_model: bool = False) -> dict:
    from .api import run_job

    cancel = threading.Event()
    prev = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # first Ctrl-C: cancel at the next layer; second: abort
        if cancel.is_set():
            signal.signal(signal.SIGINT, prev)
            raise KeyboardInterrupt
        print("\ncancelling at the next layer (Ctrl-C again to abort)...", file=sys.stderr)
        cancel.set()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        return run_job(cfg, on_event=Progress(a.quiet), cancel=cancel, keep_model=keep_model)
    finally:
        signal.signal(signal.SIGINT, prev)


def _store(report: dict) -> None:
    try:
        from .results import store_report
    except ImportError:
        return
    try:
        store_report(report)
    except Exception as e:  # the result is still printed/written; the cache is a convenience
        print(f"warning: could not store the result in the cache: {e}", file=sys.stderr)


def _write_json(path: str, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))


def cmd_run(a, opt_names) -> int:
    cfg = _config(a, a.solver, a.sparsity, a.pattern, opt_names)
    report = _run_one(cfg, a, keep_model=bool(a.save))
    model, tok = report.pop("_model", None), report.pop("_tokenizer", None)
    _store(report)
    _print_report(report)
    if a.json:
        _write_json(a.json, report)
        print(f"\nreport written to {a.json}")
    if a.save:
        from .models import save_pretrained

        save_pretrained(model, tok, a.save)
        print(f"pruned model saved to {a.save} (reload with AutoModelForCausalLM.from_pretrained)")
    return 0


def _sweep_entries(text: str) -> list[tuple[str, str]]:
    """'wanda,sparsefw+admm' -> [('wanda', 'none'), ('sparsefw', 'admm')]: a mask solver may carry '+update'."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item:
            solver, _, update = item.partition("+")
            out.append((solver.strip(), update.strip() or "none"))
    return out


def _cached(cfg: PruneConfig) -> dict | None:
    """The stored report of exactly this config and model (None if there is none)."""
    from .results import ResultStore
    from .jobs import fingerprint_for_config

    store = ResultStore()
    try:
        return store.get(cfg.key(), fingerprint_for_config(cfg))
    finally:
        store.close()


def cmd_sweep(a, opt_names) -> int:
    entries = _sweep_entries(a.solvers)
    sparsities = [float(s) for s in a.sparsities.split(",") if s.strip()]
    patterns = [s.strip() for s in a.patterns.split(",") if s.strip()]
    configs, seen = [], set()
    for (solver, update), s, pat in itertools.product(entries, sparsities, patterns):
        declared = {o.name for o in SOLVERS.get(solver).options} | {o.name for o in UPDATES.get(update).options}
        a.update = update
        cfg = _config(a, solver, s, pat, [n for n in opt_names if n in declared])
        if cfg.key() not in seen:  # N:M fixes the sparsity: 2:4 at 0.5/0.6/0.7 is one run
            seen.add(cfg.key())
            configs.append(cfg)
    print(f"sweep: {len(configs)} runs", file=sys.stderr)
    rows = []
    for i, cfg in enumerate(configs):
        name = cfg.solver + ("+" + cfg.update if cfg.update != "none" else "")
        print(f"\n=== run {i + 1}/{len(configs)}: {name} {cfg.pattern} {cfg.sparsity:.0%}", file=sys.stderr)
        r = _cached(cfg) if a.resume else None
        if r is not None:
            print("(stored result of the same config and model: reused)", file=sys.stderr)
        else:
            r = _run_one(cfg, a)
            _store(r)
        if a.json_dir:
            fname = f"{name.replace('+', '-')}_{cfg.pattern.replace(':', 'of')}_{int(round(cfg.sparsity * 100))}.json"
            _write_json(os.path.join(a.json_dir, fname), r)
        rows.append(r)
    print(f"\n{'solver':<12}{'pattern':<14}{'sparsity':>9}{'dense ppl':>11}{'pruned ppl':>12}{'mean err':>10}{'prune s':>9}")
    for r in rows:
        c = r["config"]
        errs = [l["rel_error"] for l in r["layers"]]
        print(f"{c['solver'] + ('+' + c['update'] if c['update'] != 'none' else ''):<12}{c['pattern']:<14}{r['sparsity']:>9.3f}{r['perplexity']['dense']:>11.3f}"
              f"{r['perplexity']['pruned']:>12.3f}{sum(errs) / len(errs):>10.4f}{r['timings'].get('prune_total', 0):>9.1f}")
    if a.json:
        _write_json(a.json, rows)
    return 0


def cmd_solvers(a) -> int:
    for reg, title in ((SOLVERS, "solvers"), (UPDATES, "updates (after a mask solver: --update NAME)")):
        print(f"{title}:")
        for s in reg:
            print(f"  {s.name:<10} [{s.kind}] {s.summary}")
            for o in s.options:
                extra = f" choices={list(o.choices)}" if o.choices else ""
                print(f"      --{o.name.replace('_', '-'):<16} default {o.default!r}{extra}  {o.help}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pruning", description="Pruning Lab: one-shot LLM pruning, block by block.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("run", help="prune once, evaluate, generate")
    ex = sub.add_parser("export", help="prune and save_pretrained the pruned model (same flags as run; --save required)")
    for q in (pr, ex):
        q.add_argument("--solver", default="sparsegpt", help=f"one of: {', '.join(SOLVERS.names())}")
        q.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned, in [0, 1) (N:M fixes it to N/M)")
        q.add_argument("--pattern", default="unstructured", help="unstructured, per-row, or N:M such as 2:4, 4:8 (N pruned of M)")
        q.add_argument("--update", default="none", help=f"weight update after a mask solver: {', '.join(UPDATES.names())}")
        q.add_argument("--json", default=None, help="write the full report here")
        q.add_argument("--save", default=None, help="save_pretrained the pruned model (and tokenizer) to this directory")
    opt_names = _common(pr)
    _common(ex)
    sw = sub.add_parser("sweep", help="solvers × sparsities × patterns; prints a table")
    sw.add_argument("--solvers", default="magnitude,wanda,sparsegpt",
                    help="comma-separated; a mask solver may carry a weight update: wanda+admm, sparsefw+sparsegpt")
    sw.add_argument("--sparsities", default="0.5")
    sw.add_argument("--patterns", default="unstructured")
    sw.add_argument("--json", default=None, help="write all reports as one JSON list")
    sw.add_argument("--json-dir", default=None, help="write one report JSON per run into this directory")
    sw.add_argument("--resume", action="store_true", help="reuse the stored result of a run already in the result cache")
    _common(sw)
    sub.add_parser("solvers", help="list solvers and their options")
    bn = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (pipeline, solvers, ...)")
    bn.add_argument("name")
    bn.add_argument("rest", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    try:
        if a.cmd == "solvers":
            return cmd_solvers(a)
        if a.cmd == "bench":
            script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{a.name}.py"
            if not script.exists():
                p.error(f"bench: no benchmarks/bench_{a.name}.py")
            sys.argv = [str(script), *a.rest]
            runpy.run_path(str(script), run_name="__main__")
            return 0
        if a.cmd == "export" and not a.save:
            p.error("export: --save DIR is required")
        if a.cmd in ("run", "export"):
            return cmd_run(a, opt_names)
        return cmd_sweep(a, opt_names)
    except (ConfigError, SolverError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ev.Cancelled:
        print("cancelled; nothing was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
