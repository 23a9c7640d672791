"""Export a pruned model so it can leave the tool: ``save_pretrained`` safetensors + tokenizer + a model card.

What is written (one folder)::

    config.json, generation_config.json, model.safetensors   -- plain transformers checkpoint, dense tensors whose
                                                               pruned entries are exact zeros
    tokenizer files                                         -- the run's tokenizer
    README.md                                               -- a Hugging Face model card (YAML front matter + body)
    pruning_report.json                                     -- the run's full JSON report

Weights stay dense on purpose: no ``sparsity_config`` / compressed-tensors sparse format is written (vLLM >= 0.19
removed its sparse kernels and refuses such a config), so any transformers-compatible loader reads the folder.

Atomic: everything is written into a temporary sibling folder (``.<name>.partial-<random>``) and renamed onto the
target at the end; a failure or a cancel removes the temporary folder, so a target is either absent, untouched, or
complete. A non-empty target is refused unless ``overwrite``.

Runs from the result store: the store keeps plain reports only (no tensors: a pruned SmolLM2 would be ~0.5 GB per
run). ``export_run`` rebuilds the pruned weights by re-running the stored config on the same model and checks that
every per-layer relative error equals the stored one bit for bit before anything is written; a mismatch (a
different machine, thread count or library version can change float round-off) is refused with the largest
difference, never exported silently.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Callable

from .errors import InputError, PruningError
from .results import run_id_of  # noqa: F401  (re-exported: the run id lives with the store)

# licences of the embedded models (a hub or local model: read from its own card when present)
EMBEDDED_LICENSES = {"smollm2-135m": "apache-2.0"}
EMBEDDED_BASE = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


class ExportError(InputError):
    """The export cannot be done as asked (target exists, unknown run, not reproducible); nothing was written."""


class ReproductionError(PruningError):
    """Re-running a stored config did not reproduce the stored per-layer errors bit for bit."""

    kind = "numerical"


# ---------------------------------------------------------------------------------------------------------------
# run ids and the store

def find_run(run_id: str, runs: list[dict]) -> dict:
    """The report whose run id is ``run_id`` (or a unique prefix of it); ExportError listing close matches."""
    rid = str(run_id).strip()
    if not rid:
        raise ExportError("run id: empty; give a run id as shown in the Compare table (column 'run id')")
    ids = {run_id_of(r): r for r in runs}
    if rid in ids:
        return ids[rid]
    pref = [k for k in ids if k.startswith(rid)]
    if len(pref) == 1:
        return ids[pref[0]]
    if len(pref) > 1:
        raise ExportError(f"run id: {rid!r} matches {len(pref)} runs ({', '.join(sorted(pref)[:5])}); give more "
                          f"characters")
    close = difflib.get_close_matches(rid, list(ids), n=5, cutoff=0.4)
    hint = f"; close matches: {', '.join(close)}" if close else (
        f"; {len(ids)} runs in the store" + (f", e.g. {', '.join(list(ids)[-3:])}" if ids else ""))
    raise ExportError(f"run id: no run {rid!r} in the result store{hint}")


# ---------------------------------------------------------------------------------------------------------------
# the model card

def layer_kind(name: str) -> str:
    """'self_attn.q_proj' -> 'q_proj'; 'mlp.experts.3.up_proj' -> 'up_proj' (the per-kind breakdown of the card)."""
    return name.rsplit(".", 1)[-1]


def sparsity_by_kind(layers: list[dict]) -> dict[str, float]:
    """Mean achieved sparsity per layer kind from a report's ``layers`` (each weighted equally per matrix)."""
    acc: dict[str, list[float]] = {}
    for l in layers:
        acc.setdefault(layer_kind(l["name"]), []).append(float(l["sparsity"]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _license_of(model_id: str) -> str:
    if model_id in EMBEDDED_LICENSES:
        return EMBEDDED_LICENSES[model_id]
    card = Path(model_id).expanduser() / "README.md"
    if card.is_file():
        meta = _front_matter(card.read_text(encoding="utf-8", errors="replace"))
        if isinstance(meta, dict) and meta.get("license"):
            return str(meta["license"])
    return "other"


def _front_matter(text: str) -> dict | None:
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    if end < 0:
        return None
    import yaml

    try:
        return yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return None


def reproduce_command(config: dict) -> str:
    """One CLI command that re-runs this config and saves the model."""
    c = config
    parts = ["python -m pruning run", f"--model {c.get('model')}", f"--solver {c.get('solver')}"]
    if c.get("update", "none") != "none":
        parts.append(f"--update {c['update']}")
    parts += [f"--sparsity {c.get('sparsity')}", f"--pattern {c.get('pattern')}"]
    for k, v in sorted((c.get("options") or {}).items()):
        parts.append(f"--{k.replace('_', '-')} {v}")
    cal, ev_ = c.get("calib") or {}, c.get("eval") or {}
    parts += [f"--calib {cal.get('source')}", f"--nsamples {cal.get('nsamples')}", f"--seqlen {cal.get('seqlen')}",
              f"--seed {cal.get('seed')}", f"--eval-windows {ev_.get('windows')}", f"--eval-seqlen {ev_.get('seqlen')}"]
    if c.get("true_sequential"):
        parts.append("--true-sequential")
    if c.get("dtype", "auto") != "auto":
        parts.append(f"--dtype {c['dtype']}")
    parts.append("--save OUT_DIR")
    return " ".join(parts)


def _method(config: dict) -> str:
    u = config.get("update", "none")
    return f"{config.get('solver')}+{u}" if u and u != "none" else str(config.get("solver"))


def model_card(report: dict) -> str:
    """README.md for the exported folder: HF front matter (base_model, tags, library_name, license) + a body."""
    import yaml

    c = report.get("config") or {}
    model_id = (report.get("model") or {}).get("id") or c.get("model", "")
    base = EMBEDDED_BASE.get(model_id, model_id)
    tags = ["pruned", str(c.get("solver"))] + ([str(c["update"])] if c.get("update", "none") != "none" else []) + \
        [str(c.get("pattern")), "pruning-lab"]
    meta = {"base_model": base, "library_name": "transformers", "license": _license_of(model_id),
            "tags": list(dict.fromkeys(tags)), "pipeline_tag": "text-generation"}
    ppl = report.get("perplexity") or {}
    cal, evl = report.get("calibration") or {}, report.get("evaluation") or {}
    lines = [f"# {base} pruned with {_method(c)} ({c.get('pattern')}, {float(c.get('sparsity', 0)):.0%})", "",
             f"One-shot pruned with [Pruning Lab](https://github.com/) from `{base}`: solver **{_method(c)}**, "
             f"pattern **{c.get('pattern')}**, target sparsity **{float(c.get('sparsity', 0)):.2%}** of every "
             f"decoder linear layer (embeddings and `lm_head` stay dense). Run id `{run_id_of(report)}`.", "",
             "The weights are stored as ordinary dense tensors in which the pruned entries are exact zeros: the file "
             "is no smaller and a dense-kernel forward is no faster than the base model's. No sparse "
             "(`sparsity_config` / compressed-tensors) format is written, so every transformers-compatible loader "
             "reads it.", "", "## Configuration", "", "| field | value |", "| --- | --- |"]
    for k in ("solver", "update", "sparsity", "pattern", "true_sequential", "dtype"):
        if k in c:
            lines.append(f"| {k} | `{c[k]}` |")
    for k, v in sorted((c.get("options") or {}).items()):
        lines.append(f"| option {k} | `{v}` |")
    lines += ["", "## Results", "", "| metric | dense | pruned |", "| --- | --- | --- |"]
    if ppl:
        lines.append(f"| perplexity ({evl.get('windows', '?')} × {evl.get('seqlen', '?')} tokens of "
                     f"{(c.get('eval') or {}).get('source', '?')}) | {_fmt(ppl.get('dense'))} | "
                     f"{_fmt(ppl.get('pruned'))} |")
    for task, res in sorted((report.get("zeroshot") or {}).items()):
        d, p = (res.get("dense") or {}), (res.get("pruned") or {})
        for m in ("acc", "acc_norm"):
            if m in d or m in p:
                lines.append(f"| {task} {m} (zero-shot) | {_fmt(d.get(m))} | {_fmt(p.get(m))} |")
    drift = report.get("drift") or {}
    if drift:
        lines.append(f"| KL(dense ‖ pruned) per token | 0 | {_fmt(drift.get('kl'))} |")
        lines.append(f"| top-1 agreement with dense | 1 | {_fmt(drift.get('top1_agreement'))} |")
    lines += ["", f"Achieved sparsity over the pruned linears: **{float(report.get('sparsity', 0)):.4f}**.", "",
              "| layer kind | achieved sparsity |", "| --- | --- |"]
    for k, s in sparsity_by_kind(report.get("layers") or []).items():
        lines.append(f"| {k} | {s:.4f} |")
    lines += ["", "## Calibration data", "",
              f"{cal.get('windows', '?')} windows of {cal.get('seqlen', '?')} tokens "
              f"({cal.get('tokens', '?')} tokens) from `{(c.get('calib') or {}).get('source', '?')}`, seed "
              f"{(c.get('calib') or {}).get('seed', '?')}.", "", "## Reproduce", "", "```bash",
              reproduce_command(c), "```", "", "Load it with plain transformers:", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(\"OUT_DIR\")",
              "tokenizer = AutoTokenizer.from_pretrained(\"OUT_DIR\")", "```", ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(lines)


def _fmt(x) -> str:
    if isinstance(x, (int, float)):
        return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"
    return "–"


# ---------------------------------------------------------------------------------------------------------------
# writing

def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"output folder: {str(out_dir)!r} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"output folder: {str(out_dir)!r} is not empty; choose another folder or pass "
                          f"--overwrite (overwrite=True) to replace it")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise ExportError(f"output folder: cannot write in {str(parent)!r} (permission denied)")


def write_export(model, tokenizer, report: dict, out_dir, overwrite: bool = False,
                 cancel: threading.Event | None = None) -> Path:
    """Write ``model`` + ``tokenizer`` + model card + report into ``out_dir`` atomically; returns the folder."""
    from .models import save_pretrained

    out_dir = Path(out_dir).expanduser().absolute()
    _check_target(out_dir, overwrite)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        save_pretrained(model, tokenizer, tmp)
        if cancel is not None and cancel.is_set():
            from .events import Cancelled

            raise Cancelled("export cancelled; nothing was written")
        rep = {k: v for k, v in report.items() if not k.startswith("_")}
        rep.setdefault("run_id", run_id_of(rep))
        (tmp / "README.md").write_text(model_card(rep), encoding="utf-8")
        (tmp / "pruning_report.json").write_text(json.dumps(rep, indent=1, default=str), encoding="utf-8")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(old)
            try:
                tmp.rename(out_dir)
            except BaseException:
                old.rename(out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"output folder: writing {str(out_dir)!r} failed ({e.strerror or e}); nothing was "
                          f"written") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def zip_folder(folder, zip_path=None) -> Path:
    """A .zip of an exported folder (for the app's download button), written atomically next to it."""
    folder = Path(folder)
    zip_path = Path(zip_path) if zip_path else folder.with_suffix(".zip")
    tmp = zip_path.with_name(f".{zip_path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    z.write(p, Path(folder.name) / p.relative_to(folder))
        tmp.replace(zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path


def rebuild_pruned(report: dict, on_event: Callable | None = None, cancel: threading.Event | None = None):
    """Re-run a stored report's config on the same model; returns (pruned model, tokenizer) after checking that
    every per-layer relative error equals the stored one bit for bit (ReproductionError otherwise)."""
    import copy

    from .config import PruneConfig
    from .data import calibration_windows

    cfg = PruneConfig.from_dict(report["config"])
    from .api import get_model
    from .pipeline import prune_model

    model, tok, fp = get_model(cfg.model, cfg.device, cfg.dtype)
    want_fp = (report.get("model") or {}).get("fingerprint")
    if want_fp and fp != want_fp:
        raise ReproductionError(f"run id: the stored run was made with model fingerprint {want_fp}, the model "
                                f"{cfg.model!r} loaded now has {fp}: its weights cannot be rebuilt")
    c = cfg.calib
    windows = calibration_windows(tok, source=c.source, nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed, sampling=c.sampling)
    pruned = copy.deepcopy(model)
    rep = prune_model(pruned, tok, cfg, on_event=on_event, cancel=cancel, windows=windows)
    check_reproduced(report.get("layers") or [], rep["layers"])
    return pruned, tok


def check_reproduced(stored: list[dict], rebuilt: list[dict]) -> None:
    """ReproductionError unless both lists hold the same layers with bit-identical ``rel_error``."""
    a = {(l["block"], l["name"]): float(l["rel_error"]) for l in stored}
    b = {(l["block"], l["name"]): float(l["rel_error"]) for l in rebuilt}
    if set(a) != set(b):
        raise ReproductionError(f"run id: the re-run pruned {len(b)} layers, the stored run {len(a)}; the stored "
                                f"weights cannot be rebuilt")
    diffs = [(abs(a[k] - b[k]) / max(abs(a[k]), 1e-30), k) for k in a if a[k] != b[k]]
    if diffs:
        worst, k = max(diffs)
        raise ReproductionError(
            f"run id: re-running the stored config gave different per-layer errors on {len(diffs)} of {len(a)} "
            f"layers (largest relative difference {worst:.3g}, block {k[0]} {k[1]}); this machine does not "
            f"reproduce the run bit for bit, so nothing was exported. Re-run it here with --save instead.")


def export_run(run_id: str, out_dir, store=None, overwrite: bool = False, on_event: Callable | None = None,
               cancel: threading.Event | None = None, extra_runs: list[dict] | None = None) -> Path:
    """Export a finished run of the result store (or of ``extra_runs``, e.g. precomputed reports) to ``out_dir``."""
    if store is None:
        from .results import ResultStore

        store = ResultStore()
    runs = list(store.list_runs()) + list(extra_runs or [])
    return export_report(find_run(run_id, runs), out_dir, overwrite, on_event, cancel)


def export_report(report: dict, out_dir, overwrite: bool = False, on_event: Callable | None = None,
                  cancel: threading.Event | None = None) -> Path:
    """Rebuild the pruned model of a finished run's ``report`` and write it to ``out_dir`` (the worker process's
    ``export`` task: the web server finds the report, the worker re-runs it)."""
    out = Path(out_dir).expanduser().absolute()
    _check_target(out, overwrite)  # before the (long) re-run
    model, tok = rebuild_pruned(report, on_event=on_event, cancel=cancel)
    return write_export(model, tok, report, out, overwrite=overwrite, cancel=cancel)
