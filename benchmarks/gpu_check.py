"""What only a GPU can show, in one run (<= 8 minutes on one GPU), written as one JSON file.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--dry-run] [--device auto]
    (or benchmarks/gpu_check.sh, which runs this with the repository's venv)

Sections (each one is timed and recorded on its own; a failing section records its error and the others still run):

smollm2      the embedded SmolLM2-135M at the papers' setting (128 × 2048 calibration tokens, wiki-sample) pruned at
             50 % with SparseGPT, ADMM-Grad (``admm``, default gradual schedule) and SparseFW (T = 2000 iterations):
             the pipeline's seconds per phase (capture, calibration forward, statistics, solve, propagate) for each;
             then SparseGPT again at batch size 1: ``batched_vs_batch1`` = prune seconds at batch 1 / batched.
llama8b      a random-init model with Llama-3-8B shapes (hidden 4096, intermediate 14336, 32 heads, 8 KV heads; 2 blocks,
             bf16 on the GPU) pruned with SparseGPT: seconds and peak accelerator memory per block; then the same model
             saved and pruned with ``--offload cpu`` (blocks in RAM, onloaded one at a time): the same figures, and
             whether the masks match.
sparse_2of4  ``torch.sparse.to_sparse_semi_structured`` vs dense matmul (``pruning.sparse_bench``) for the SmolLM2
             and the Llama-3-8B layer shapes, 2048 tokens.

``--dry-run`` (automatic without a GPU) uses a tiny random Llama, 8 × 64 calibration tokens, SparseFW T = 20 and
small shapes: it checks the script end to end in well under a minute on a CPU; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 num_hidden_layers=2, tie_word_embeddings=False, max_position_embeddings=8192)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=2, tie_word_embeddings=False)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class BlockMeter:
    """Event sink: seconds and peak accelerator memory of every block (peak reset at each BlockStarted)."""

    def __init__(self, dev: torch.device):
        self.dev, self.rows, self._t0 = dev, [], None

    def __call__(self, e) -> None:
        from pruning import events as ev

        if isinstance(e, ev.BlockStarted):
            _sync(self.dev)
            if self.dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.dev)
            self._t0 = time.perf_counter()
        elif isinstance(e, ev.BlockDone):
            _sync(self.dev)
            row = {"block": e.block, "seconds": round(time.perf_counter() - self._t0, 3)}
            if self.dev.type == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated(self.dev) / 2**30, 3)
            self.rows.append(row)


def _mask_digest(model) -> str:
    from pruning.blocks import block_linears, find_blocks
    from pruning.offload import store_of

    store, h = store_of(model), hashlib.sha256()
    for b, block in enumerate(find_blocks(model)[1]):
        ctx = store.onload(block, b, write=False) if store is not None else _Nothing()
        with ctx:
            for lin in block_linears(block).values():
                h.update((lin.get_weight() == 0).to(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def section_smollm2(dev, dry: bool) -> dict:
    import copy

    from pruning.config import PruneConfig
    from pruning.data import calibration_windows
    from pruning.models import load_model, tiny_model
    from pruning.pipeline import prune_model

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dry:
        base, tok = tiny_model("llama", seed=0, **TINY)
        base = base.to(dev, dtype)
        nsamples, seqlen, fw_iters, source = 8, 64, 20, "pydoc"
    else:
        base, tok = load_model("smollm2-135m", device=dev, dtype=dtype)
        nsamples, seqlen, fw_iters, source = 128, 2048, 2000, "wiki-sample"
    windows = calibration_windows(tok, source, nsamples=nsamples, seqlen=seqlen, seed=0)
    out = {"model": "tiny-llama" if dry else "smollm2-135m", "dtype": str(dtype).replace("torch.", ""),
           "calibration": [nsamples, seqlen], "runs": {}}
    runs = [("sparsegpt", {}, 8), ("admm", {}, 8), ("sparsefw", {"iters": fw_iters}, 8), ("sparsegpt", {}, 1)]
    for solver, opts, bs in runs:
        cfg = PruneConfig(solver=solver, sparsity=0.5, options=opts, batch_size=bs, device=str(dev))
        model = copy.deepcopy(base)
        _sync(dev)
        t0 = time.perf_counter()
        rep = prune_model(model, tok, cfg, windows=windows)
        _sync(dev)
        name = f"{cfg.method}" + (f" T={opts['iters']}" if solver == "sparsefw" else "") + f" batch={bs}"
        errs = [l["rel_error"] for l in rep["layers"]]
        out["runs"][name] = {"seconds": round(time.perf_counter() - t0, 3), "phases": rep["timings"],
                             "mean_rel_error": sum(errs) / len(errs), "sparsity": rep["sparsity"]}
        del model
    b8, b1 = out["runs"]["sparsegpt batch=8"], out["runs"]["sparsegpt batch=1"]
    out["batched_vs_batch1"] = round(b1["phases"]["total"] / max(b8["phases"]["total"], 1e-9), 3)
    return out


def section_llama8b(dev, dry: bool) -> dict:
    from pruning.config import PruneConfig
    from pruning.data import calibration_windows
    from pruning.models import load_model, save_pretrained, tiny_model
    from pruning.offload import load_offloaded, store_of
    from pruning.pipeline import prune_model

    shape = TINY if dry else LLAMA3_8B
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    nsamples, seqlen = (8, 64) if dry else (128, 2048)
    model, tok = tiny_model("llama", seed=0, **shape)
    windows = calibration_windows(tok, "pydoc", nsamples=nsamples, seqlen=seqlen, seed=0)
    cfg = PruneConfig(solver="sparsegpt", sparsity=0.5, device=str(dev), dtype=str(dtype).replace("torch.", ""))
    out = {"shape": {k: v for k, v in shape.items() if k != "tie_word_embeddings"}, "calibration": [nsamples, seqlen],
           "dtype": cfg.dtype, "solver": "sparsegpt"}
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model.to(dtype), tok, Path(tmp) / "ckpt")
        del model
        for mode in ("none", "cpu"):
            if mode == "none":
                m, _ = load_model(str(Path(tmp) / "ckpt"), device=dev, dtype=dtype)
            else:
                m, _ = load_offloaded(str(Path(tmp) / "ckpt"), dev, dtype, "cpu")
            meter = BlockMeter(dev)
            t0 = time.perf_counter()
            rep = prune_model(m, tok, cfg, windows=windows, on_event=meter)
            _sync(dev)
            out[f"offload_{mode}"] = {"seconds": round(time.perf_counter() - t0, 3), "blocks": meter.rows,
                                      "phases": rep["timings"], "masks": _mask_digest(m)}
            if dev.type == "cuda":
                out[f"offload_{mode}"]["resident_gib_after"] = round(torch.cuda.memory_allocated(dev) / 2**30, 3)
            if store_of(m) is not None:
                store_of(m).close()
            del m
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    out["masks_match"] = out["offload_none"]["masks"] == out["offload_cpu"]["masks"]
    return out


def section_sparse(dev, dry: bool) -> dict:
    from pruning.sparse_bench import SMOLLM2_SHAPES, bench_sparse

    h, i = LLAMA3_8B["hidden_size"], LLAMA3_8B["intermediate_size"]
    kv = h * LLAMA3_8B["num_key_value_heads"] // LLAMA3_8B["num_attention_heads"]
    shapes = list(SMOLLM2_SHAPES) + [(h, h), (kv, h), (i, h), (h, i)]
    if dry:
        shapes = [(64, 64), (128, 64)]
    return bench_sparse(shapes, tokens=64 if dry else 2048, device=str(dev), reps=3 if dry else 20)


def _write(out: Path, res: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    p.add_argument("--dry-run", action="store_true", help="tiny model and sizes (automatic without a GPU)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--only", default="smollm2,llama8b,sparse_2of4", help="comma-separated sections to run")
    a = p.parse_args(argv)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    dry = a.dry_run or dev.type != "cuda"
    res = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
           platform.processor() or "cpu", "dry_run": dry, "torch": torch.__version__,
           "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "finished": False, "sections": {}}
    sections = {"smollm2": section_smollm2, "llama8b": section_llama8b, "sparse_2of4": section_sparse}
    names = [s.strip() for s in a.only.split(",") if s.strip()]
    for name in names:
        if name not in sections:
            p.error(f"--only: unknown section {name!r}; allowed: {', '.join(sections)}")
    t_all = time.perf_counter()
    out = Path(a.out)
    res["total_seconds"] = 0.0
    for name in names:
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            body = sections[name](dev, dry)
            res["sections"][name] = {"ok": True, **body}
        except Exception as e:  # one section's failure is recorded; the others still run
            res["sections"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()[-4000:]}
        res["sections"][name]["section_seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[gpu_check] {name}: {res['sections'][name]['section_seconds']} s", file=sys.stderr, flush=True)
        res["total_seconds"] = round(time.perf_counter() - t_all, 2)
        _write(out, res)  # after every section: a run stopped by the time limit keeps what it measured
    res["finished"] = True
    _write(out, res)
    print(f"[gpu_check] wrote {out} ({res['total_seconds']} s)", file=sys.stderr)
    return 0 if all(s["ok"] for s in res["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
