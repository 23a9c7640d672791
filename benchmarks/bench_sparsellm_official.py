"""SparseLLM: ours (pruning/solvers/sparsellm.py) against the official code, side by side on SmolLM2-135M.

The official code (BaiTheBest/SparseLLM, commit 27fe26a) is never copied into this project: it is imported
from a clone given on the command line, e.g.

    git clone /work/.mirror/BaiTheBest+SparseLLM/repo /tmp/sparsellm-official
    python benchmarks/bench_sparsellm_official.py /tmp/sparsellm-official --mode block --blocks 0,7,15,23,29
    python benchmarks/bench_sparsellm_official.py /tmp/sparsellm-official --mode ppl --sparsities 0.5,0.7

What runs unchanged and what had to be adapted (printed in the report as well):
* ``model_utils.llama_sparsellm`` (their whole per-block loop: SparseGPT on attention, the FFN alternation) is
  called as is. It targets transformers 4.45, whose decoder layers computed rotary embeddings themselves; in
  transformers 5 the layer needs ``position_embeddings``, so each layer's ``forward`` is wrapped to compute them
  (and return a tuple, as the old layers did). Nothing of their maths is touched.
* Their ``fasterprune`` calls ``torch.cuda.synchronize()`` unconditionally, which raises ``AssertionError: Torch
  not compiled with CUDA enabled`` on a CPU-only torch: it is replaced by a no-op (timing only).
* Their code is written for fp16 (``Xinv = pinverse(X.float()).half()`` is multiplied with the model-dtype ``z``;
  an fp32 model fails with a dtype mismatch), as on the GPU they target. On a CPU without fp16 arithmetic an fp16
  matmul is ~65× slower than fp32, so ``--official-dtype float32`` runs their code in fp32: their fp16 casts keep
  fp32 (``official_precision``), nothing else changes.
* ``--mode block``: their routine is driven on one real block at a time through a one-layer stand-in model whose
  "embedding" returns the block's dense inputs; at layer index 0 it runs its 4 epochs (their hard-coded 1-epoch
  layers 1, 30, 31 do not apply). Ours runs on the same inputs (fp32). Both are scored on the same float32
  X, Y (dense block run): FFN relative output error ‖Y − FFN(X)‖²/‖Y‖², and per-linear rel_error.
* ``--mode ppl``: their ``llama_sparsellm`` on the whole model (fp16, block 1 with 1 epoch as hard-coded),
  ours and SparseGPT through ``pruning.pipeline.prune_model`` (fp32), all on the same calibration windows;
  perplexity with ``pruning.evaluate.perplexity`` in fp32 on the same evaluation windows. Method
  ``official_blockwise`` drives their routine block by block (see ``official_blockwise``) so that a block where
  it fails can fall back to SparseGPT and the rest of the model can still be compared.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pruning.blocks import block_linears, find_blocks  # noqa: E402
from pruning.config import PruneConfig  # noqa: E402
from pruning.solve import rel_error  # noqa: E402
from pruning.patterns import parse_pattern  # noqa: E402
from pruning.pipeline import BlockInputs, capture_inputs, capture_io, collect_grams, ffn_problem, prune_model, run_block  # noqa: E402
from pruning.blocks import find_ffn  # noqa: E402
from pruning.solve import solve  # noqa: E402
from pruning.solvers import SOLVERS, LayerProblem, SolveContext  # noqa: E402
from pruning.solvers.sparsellm import ffn_rel_error  # noqa: E402

FFN = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
OFFICIAL_DTYPE = {"float16": torch.float16, "float32": torch.float32}


def import_official(path: str):
    """Import their model_utils from ``path``; returns (module, commit)."""
    commit = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    sys.path.insert(0, path)
    import model_utils  # noqa: F401  (their module)

    torch.cuda.synchronize = lambda *a, **k: None  # CPU-only torch raises AssertionError here (timing call only)
    return model_utils, commit


def wrap_layer(layer: nn.Module, rotary: nn.Module) -> None:
    """Let a transformers-5 Llama decoder layer be called as ``layer(h, attention_mask=m)`` (transformers 4.45 style)."""
    cls_forward = type(layer).forward

    def forward(hidden_states, attention_mask=None, **kw):
        T = hidden_states.shape[1]
        pos = torch.arange(T, device=hidden_states.device).unsqueeze(0)  # (1, T)
        pe = rotary(hidden_states, position_ids=pos)
        out = cls_forward(layer, hidden_states, attention_mask=attention_mask, position_ids=pos, position_embeddings=pe, **kw)
        return out if isinstance(out, tuple) else (out,)

    layer.forward = forward


def unwrap_layer(layer: nn.Module) -> None:
    layer.__dict__.pop("forward", None)


def official_args(sparsity: float, nsamples: int) -> SimpleNamespace:
    return SimpleNamespace(nsamples=nsamples, sparsity=sparsity, prunen=0, prunem=0, percdamp=0.01, blocksize=128,
                           minlayer=-1, maxlayer=1000, prune_only="", invert=False, wbits=16, true_sequential=False)


class _Stored(nn.Module):
    """Stand-in embedding: returns stored hidden states (n, T, h) for a window index."""

    def __init__(self, H: torch.Tensor):
        super().__init__()
        self.H = nn.Parameter(H, requires_grad=False)


class OneBlockModel(nn.Module):
    """Just enough of a LlamaForCausalLM for ``llama_sparsellm``: model.embed_tokens / norm / layers, config, seqlen."""

    def __init__(self, block: nn.Module, H: torch.Tensor):
        super().__init__()
        self.config = SimpleNamespace(use_cache=False, hidden_size=H.shape[-1])
        self.model = nn.Module()
        self.model.embed_tokens = _Stored(H)  # first parameter: its dtype is "the model dtype" for their code
        self.model.norm = nn.Identity()
        self.model.layers = nn.ModuleList([block])
        self.seqlen = H.shape[1]

    def forward(self, idx):  # idx (1, 1): window index
        h = self.model.embed_tokens.H[int(idx[0, 0])].unsqueeze(0)
        return self.model.layers[0](h, attention_mask=None)


class _Float16As32:
    """Stands in for ``torch`` inside their module: every attribute is torch's, except ``float16``, which is float32."""

    def __getattr__(self, name):
        return torch.float32 if name == "float16" else getattr(torch, name)


@contextlib.contextmanager
def official_precision(mu, dtype: torch.dtype):
    """Run their code in ``dtype``. float16 is theirs unchanged. float32: their four fp16 casts (``.half()`` after the
    two pseudo-inverses, ``.to(dtype=torch.float16)`` after the p-update inverse and the s-update) keep float32
    instead; every formula, step and hyperparameter is theirs. Needed on CPUs without fp16 arithmetic, where an
    fp16 matmul is ~65× slower than fp32 (measured: 1536×576×1024 in 3.35 s vs 0.05 s) and one block takes hours."""
    if dtype == torch.float16:
        yield
        return
    half, torch_mod = torch.Tensor.half, mu.torch
    torch.Tensor.half = lambda self, *a, **k: self.float()
    mu.torch = _Float16As32()
    try:
        yield
    finally:
        torch.Tensor.half, mu.torch = half, torch_mod


def run_official_block(mu, block: nn.Module, rotary: nn.Module, hidden: torch.Tensor, sparsity: float,
                       dtype: torch.dtype = torch.float16) -> tuple[dict, float, str]:
    """Their llama_sparsellm on a copy of ``block`` (in ``dtype``) fed ``hidden`` (n, T, h). Returns (weights fp32, s, log)."""
    blk = copy.deepcopy(block).to(dtype)
    wrap_layer(blk, rotary)
    fake = OneBlockModel(blk, hidden.to(dtype))
    loader = [(torch.tensor([[i]]),) for i in range(hidden.shape[0])]
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log), official_precision(mu, dtype):
        mu.llama_sparsellm(fake, loader, torch.device("cpu"), official_args(sparsity, hidden.shape[0]))
    dt = time.perf_counter() - t0
    unwrap_layer(blk)
    return {n: l.get_weight().detach().float().clone() for n, l in block_linears(blk).items()}, dt, log.getvalue()


def load(args):
    from pruning.data import calibration_windows, eval_windows
    from pruning.models import load_model

    model, tok = load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    calib = calibration_windows(tok, source=args.source, nsamples=args.nsamples, seqlen=args.seqlen, seed=0)
    return model, tok, calib, eval_windows


def ours_block(b, blk, inputs, lins, grams, ffn, sparsity, opts, recs) -> dict:
    """Our SparseLLM on one block as the pipeline runs it, without writing: {name: pruned weight}. The FFN through the
    block solver (on the dense block's X, Y), every other linear through the per-layer path (SparseGPT)."""
    pat = parse_pattern("unstructured")
    problem = ffn_problem(blk, inputs, lins, grams, ffn, int(opts["max_tokens"]), b)
    out = {}
    for n, lin in lins.items():
        if n not in ffn.names:
            G, ntok = grams[n]
            prob = LayerProblem(W=lin.get_weight().detach().float().clone(), G=G, n_tokens=ntok, name=f"{b}.{n}")
            out[n] = solve(prob, "sparsellm", pat, sparsity, opts).weight
    sols = SOLVERS["sparsellm"].block_fn(problem, pat, sparsity, opts, SolveContext(recs.append, None))
    out.update({n: o.weight * o.mask for n, o in sols.items()})
    return out


def mode_block(args, mu, commit) -> dict:
    model, tok, calib, _ = load(args)
    blocks_wanted = [int(b) for b in args.blocks.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    inputs = capture_inputs(model, calib, 8)
    _, blocks = find_blocks(model)
    rotary = model.model.rotary_emb
    rows = []
    for b in range(max(blocks_wanted) + 1):
        blk = blocks[b]
        if b in blocks_wanted:
            lins = block_linears(blk)
            col, outs = collect_grams(blk, lins, inputs)
            grams = {n: col.gram(n) for n in lins}
            ffn, _ = find_ffn(blk, list(lins))
            X, Y, _ = capture_io(blk, inputs, lins[ffn.first], lins[ffn.last])
            bias = {n: None for n in FFN}
            W0 = {n: lins[n].get_weight().detach().float() for n in lins}
            hidden = torch.cat(inputs.hidden)  # (n, T, h)
            for s in sparsities:
                row = {"block": b, "sparsity": s}
                for label, opts in (("ours", {}),):  # keep_best=False would return epoch 4: its error is ours_epochs[-1]
                    recs = []
                    t0 = time.perf_counter()
                    sols = ours_block(b, blk, inputs, lins, grams, ffn, s, SOLVERS.resolve_options("sparsellm", opts), recs)
                    row[f"{label}_seconds"] = round(time.perf_counter() - t0, 1)
                    Wn = {n: sols[n] for n in lins}
                    row[f"{label}_ffn_err"] = ffn_rel_error(ffn, Wn, bias, X, Y)
                    row[f"{label}_epochs"] = [r["ffn_rel_error"] for r in recs]
                    row[f"{label}_layer_err"] = {n: rel_error(W0[n], sols[n], grams[n][0]) for n in lins}
                row["sparsegpt_ffn_err"] = row["ours_epochs"][0]  # epoch 1 = SparseGPT exactly (invariant 8b)
                try:
                    Wt, dt, log = run_official_block(mu, blk, rotary, hidden, s, OFFICIAL_DTYPE[args.official_dtype])
                    finite = all(bool(torch.isfinite(w).all()) for w in Wt.values())
                    row["official_seconds"] = round(dt, 1)
                    row["official_finite"] = finite
                    row["official_ffn_err"] = ffn_rel_error(ffn, Wt, bias, X, Y) if finite else float("nan")
                    row["official_layer_err"] = {n: rel_error(W0[n], Wt[n], grams[n][0]) for n in lins}
                    row["official_sparsity"] = {n: float((Wt[n] == 0).float().mean()) for n in lins}
                    row["official_train_loss_lines"] = [ln for ln in log.splitlines() if "error" in ln][-3:]
                except Exception as e:  # their failure is a result, not a crash of the benchmark
                    row["official_error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()
                                  if not k.endswith("layer_err") and k != "official_train_loss_lines"}), flush=True)
        else:
            outs = run_block(blk, inputs)
        inputs = BlockInputs(outs, inputs.args, inputs.kwargs)
    return {"mode": "block", "official_commit": commit, "rows": rows}


def official_blockwise(mu, model, calib: torch.Tensor, sparsity: float, dtype: torch.dtype = torch.float16) -> dict:
    """Their per-block routine on each block in turn (each as layer 0 of a one-layer stand-in, so 4 epochs
    everywhere), the outputs of the pruned block feeding the next one (propagated in fp32 by our pipeline code).
    Where their routine raises or returns non-finite weights, the block is pruned with SparseGPT instead (what
    their epoch 1 computes) and the block is listed in ``fallback_blocks``. Per block: their FFN relative output
    error on float32 X, Y of the dense block run on the current inputs."""
    _, blocks = find_blocks(model)
    rotary = model.model.rotary_emb
    inputs = capture_inputs(model, calib, 8)
    out = {"fallback_blocks": [], "fallback_errors": [], "ffn_err": []}
    for b, blk in enumerate(blocks):
        lins = block_linears(blk)
        col, _ = collect_grams(blk, lins, inputs)
        grams = {n: col.gram(n) for n in lins}
        ffn, _ = find_ffn(blk, list(lins))
        X, Y, _ = capture_io(blk, inputs, lins[ffn.first], lins[ffn.last])
        try:
            Wt, _, _ = run_official_block(mu, blk, rotary, torch.cat(inputs.hidden), sparsity, dtype)
            if not all(bool(torch.isfinite(w).all()) for w in Wt.values()):
                raise FloatingPointError("non-finite weights returned")
        except Exception as e:
            out["fallback_blocks"].append(b)
            out["fallback_errors"].append(f"block {b}: {type(e).__name__}: {str(e)[:120]}")
            Wt = {}
            for n, lin in lins.items():
                G, ntok = grams[n]
                prob = LayerProblem(W=lin.get_weight().detach().float().clone(), G=G, n_tokens=ntok)
                Wt[n] = solve(prob, "sparsegpt", parse_pattern("unstructured"), sparsity, {"damping": 0.01, "blocksize": 128}).weight
        for n, lin in lins.items():
            lin.set_weight(Wt[n])
        out["ffn_err"].append(ffn_rel_error(ffn, {n: Wt[n] for n in FFN}, {n: None for n in FFN}, X, Y))
        print(f"  block {b}: ffn err {out['ffn_err'][-1]:.5f}{' (fallback)' if b in out['fallback_blocks'] else ''}", flush=True)
        inputs = BlockInputs(run_block(blk, inputs), inputs.args, inputs.kwargs)
    return out


def mode_ppl(args, mu, commit) -> dict:
    from pruning.evaluate import perplexity

    model, tok, calib, eval_windows = load(args)
    ev = eval_windows(tok, source=args.source, seqlen=args.seqlen, max_windows=args.eval_windows)
    res = {"mode": "ppl", "official_commit": commit, "nsamples": args.nsamples, "seqlen": args.seqlen,
           "eval_windows": int(ev.shape[0]), "runs": []}
    t0 = time.perf_counter()
    res["dense_ppl"] = perplexity(model, ev)
    print(f"dense ppl {res['dense_ppl']:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    for s in [float(x) for x in args.sparsities.split(",")]:
        for label in args.methods.split(","):
            m = copy.deepcopy(model)
            run = {"method": label, "sparsity": s}
            t0 = time.perf_counter()
            log = io.StringIO()
            try:
                if label == "official":
                    dtype = OFFICIAL_DTYPE[args.official_dtype]
                    m = m.to(dtype)
                    m.seqlen = args.seqlen
                    for layer in m.model.layers:
                        wrap_layer(layer, m.model.rotary_emb)
                    loader = [(calib[i : i + 1],) for i in range(calib.shape[0])]
                    with contextlib.redirect_stdout(log), official_precision(mu, dtype):
                        mu.llama_sparsellm(m, loader, torch.device("cpu"), official_args(s, calib.shape[0]))
                    for layer in m.model.layers:
                        unwrap_layer(layer)
                    m = m.to(torch.float32)
                elif label == "official_blockwise":
                    run.update(official_blockwise(mu, m, calib, s, OFFICIAL_DTYPE[args.official_dtype]))
                else:
                    solver, opts = {"ours": ("sparsellm", {}), "ours_last_epoch": ("sparsellm", {"keep_best": False}),
                                    "sparsegpt": ("sparsegpt", {})}[label]
                    cfg = PruneConfig(solver=solver, sparsity=s, options=opts, dtype="float32")
                    rep = prune_model(m, tok, cfg, windows=calib)
                    run["warnings"] = rep["warnings"]
                    ffn = [l for l in rep["layers"] if l["name"] == "mlp.down_proj" and "info" in l]
                    if ffn and "ffn_rel_error" in ffn[0]["info"]:
                        run["ffn_err_epoch1"] = [l["info"]["ffn_rel_error_epoch1"] for l in ffn]
                        run["ffn_err"] = [l["info"]["ffn_rel_error"] for l in ffn]
                        run["ffn_err_last"] = [l["info"]["ffn_rel_error_last"] for l in ffn]
                        run["returned_epoch"] = [l["info"]["returned_epoch"] for l in ffn]
                run["prune_seconds"] = round(time.perf_counter() - t0, 1)
                finite = all(bool(torch.isfinite(p).all()) for p in m.parameters())
                run["finite"] = finite
                run["ppl"] = perplexity(m, ev) if finite else float("nan")
            except Exception as e:
                run["error"] = f"{type(e).__name__}: {e}"
                run["prune_seconds"] = round(time.perf_counter() - t0, 1)
                if label == "official":  # their prints name the block and linear being pruned ("i name")
                    run["official_log_tail"] = log.getvalue().splitlines()[-8:]
            res["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if not isinstance(v, list)}), flush=True)
            del m
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("official", help="path to a clone of BaiTheBest/SparseLLM (never inside this repository)")
    ap.add_argument("--mode", choices=("block", "ppl"), default="block")
    ap.add_argument("--blocks", default="0,7,15,23,29", help="block mode: block indices")
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--methods", default="sparsegpt,ours,official",
                    help="ppl mode: sparsegpt, ours, ours_last_epoch, official, official_blockwise")
    ap.add_argument("--source", default="wiki-sample")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--official-dtype", choices=tuple(OFFICIAL_DTYPE), default="float16",
                    help="their code's dtype: float16 as on their GPUs, or float32 (see official_precision)")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()
    if os.path.abspath(args.official).startswith(os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))):
        ap.error("official: keep the clone outside this repository (e.g. /tmp/sparsellm-official)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mu, commit = import_official(args.official)
    res = (mode_block if args.mode == "block" else mode_ppl)(args, mu, commit)
    res["torch"] = torch.__version__
    import transformers

    res["transformers"] = transformers.__version__
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
