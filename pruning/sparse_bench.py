"""What 2:4 sparsity buys on this machine: dense vs semi-structured sparse matmuls for a model's layer shapes.

Unstructured and N:M zeros stored in dense tensors make neither the file smaller nor a dense-kernel forward
faster. Only 2:4 has a fast kernel, and only on recent NVIDIA GPUs (compute capability >= 8.0) through
``torch.sparse.to_sparse_semi_structured`` (fp16/bf16). ``bench_sparse`` times, for every distinct (d_out, d_in)
of the model's linears, ``x @ W.T`` with W dense and with W 2:4-compressed, and reports the speed-up; where no
kernel exists (a CPU, an older GPU) it says so in the result instead of failing.
"""
from __future__ import annotations

import os
import threading

import json
import time
from pathlib import Path

import torch

# SmolLM2-135M's linears: (d_out, d_in) -- q/o (576x576), k/v (192x576), gate/up (1536x576), down (576x1536)
SMOLLM2_SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536))


def semi_structured_support(device: torch.device) -> str | None:
    """None when a 2:4 kernel can run here, else the reason it cannot."""
    if device.type != "cuda":
        return (f"no semi-structured (2:4) sparse kernel on {device.type}: torch.sparse.to_sparse_semi_structured "
                f"needs an NVIDIA GPU with compute capability >= 8.0")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"no semi-structured (2:4) sparse kernel on this GPU (compute capability {major}.{minor} < 8.0)"
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return "this torch build has no torch.sparse.to_sparse_semi_structured"
    return None


def _two_four(W: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive inputs (a valid 2:4 pattern)."""
    g = W.reshape(W.shape[0], -1, 4)
    idx = g.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return (g * mask).reshape_as(W)


def _time(fn, device, reps: int) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def bench_sparse(shapes=SMOLLM2_SHAPES, tokens: int = 2048, device: str = "auto", dtype: str = "auto",
                 reps: int = 10) -> dict:
    """``{"device", "dtype", "kernel": bool, "reason", "rows": [{d_out, d_in, dense_ms, sparse_ms, speedup}]}``."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    dt = {"auto": torch.float16 if dev.type == "cuda" else torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    reason = semi_structured_support(dev)
    rows = []
    g = torch.Generator().manual_seed(0)
    for d_out, d_in in dict.fromkeys(tuple(s) for s in shapes):
        W = _two_four(torch.randn(d_out, d_in, generator=g)).to(dev, dt)
        x = torch.randn(tokens, d_in, generator=g).to(dev, dt)
        dense = _time(lambda: x @ W.t(), dev, reps)
        row = {"d_out": d_out, "d_in": d_in, "tokens": tokens, "dense_ms": round(dense * 1e3, 4),
               "sparse_ms": None, "speedup": None}
        if reason is None:
            try:
                Ws = torch.sparse.to_sparse_semi_structured(W)
                sparse = _time(lambda: torch.mm(x, Ws.t()), dev, reps)
                row.update(sparse_ms=round(sparse * 1e3, 4), speedup=round(dense / sparse, 3))
            except (RuntimeError, NotImplementedError) as e:  # a shape or dtype the kernel refuses
                row["error"] = str(e).splitlines()[0][:200]
        rows.append(row)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"device": str(dev), "device_name": name, "dtype": str(dt).replace("torch.", ""),
            "kernel": reason is None, "reason": reason or "", "rows": rows, "torch": torch.__version__,
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def model_shapes(model) -> list[tuple[int, int]]:
    from .blocks import block_linears, find_blocks

    _, blocks = find_blocks(model)
    return list(dict.fromkeys(tuple(lin.get_weight().shape) for b in blocks for lin in block_linears(b).values()))


def format_table(res: dict) -> str:
    head = f"2:4 sparse vs dense matmul on {res['device_name']} ({res['dtype']}, torch {res['torch']})"
    lines = [head, "| d_out × d_in | tokens | dense ms | 2:4 ms | speed-up |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        sp = f"{r['sparse_ms']:.3f}" if r["sparse_ms"] is not None else "–"
        su = f"{r['speedup']:.2f}×" if r["speedup"] is not None else "–"
        lines.append(f"| {r['d_out']} × {r['d_in']} | {r['tokens']} | {r['dense_ms']:.3f} | {sp} | {su} |")
    if not res["kernel"]:
        lines += ["", res["reason"]]  # a paragraph after the table, not one more row
    return "\n".join(lines)


def last_measurement_path() -> Path:
    from .settings import cache_dir

    return Path(cache_dir()) / "bench-sparse.json"


def save_measurement(res: dict, path: Path | None = None) -> Path:
    p = Path(path) if path else last_measurement_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(p)
    return p


def load_measurement(path: Path | None = None) -> dict | None:
    p = Path(path) if path else last_measurement_path()
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
