"""SparseLLM: global pruning of a decoder block's FFN through auxiliary variables.

Bai et al. 2024, "SparseLLM: Towards Global Pruning of Pre-trained Language Models" (NeurIPS 2024,
arXiv 2402.17946; v1 titled "Gradient-Free Adaptive Global Pruning", AdaGP). Checked against
BaiTheBest/SparseLLM ``model_utils.py: opt_sparsellm, llama_sparsellm`` and ``pruning_utils.py`` at commit
27fe26a (docs/algorithms.md, "SparseLLM"). Block-level solver: the pipeline gathers a ``BlockProblem`` for the
FFN of each block (its dense weights and Grams, its input X and output Y on the calibration tokens) and calls
:func:`sparsellm_ffn`; this module knows no model, hook or pipeline.

Scope, as in the official code: the attention projections are pruned with plain SparseGPT (the pipeline's
per-layer path runs this solver's ``fn``, i.e. SparseGPT with the same damping and blocksize); the FFN is pruned
jointly. With the FFN input X (T tokens × hidden), its dense output Y, and auxiliary variables per token
(s = gate pre-activation, z = up output, p = down input) the relaxed objective is

    gated (Llama/Mistral/Qwen2 SwiGLU):  α‖z − W_up X‖² + α‖s − W_gate X‖² + γ‖p − act(s) ⊙ z‖² + β‖Y − W_down p‖²
    ReLU  (OPT, biases b1/b2):           α‖z − (W1 X + b1)‖²             + γ‖p − relu(z)‖²    + β‖Y − (W2 p + b2)‖²

minimised alternately for ``epochs`` epochs. Epoch 1 prunes every FFN linear with SparseGPT on the dense
Grams (so ``epochs=1`` is exactly SparseGPT, invariant 8b). Each later epoch:

1. p-update (closed form): p = (βWdᵀWd + γI)⁻¹ (βWdᵀ(Y − b_d) + γ·act), with the pruned Wd;
2. z-update (closed form): gated z = (α·u + γ·a·p)/(α + γ·a²), u = Ŵ_up X, a = act(s) (the official formula is
   the α = γ case); ReLU: the better of the two elementwise branches z ≥ 0 / z ≤ 0 (as the official code);
3. s-update (gated only): ``s_steps`` gradient steps of size ``s_lr`` on α(s − Ŵ_gate X)² + γ(p − act(s)z)²,
   elementwise; a step that would raise an element's objective is refused and its size halved. Defaults 20 steps
   of 0.05 (official: 2 plain steps of 0.01, which stop far from the minimum: on SmolLM2 blocks at 70 % the
   4-epoch FFN error fell by a further 5–8 % relative with 20 × 0.05; more steps changed nothing);
4. weight refits W_up ← z, W_gate ← s, W_down ← (Y, p) by ridge least squares pulled towards the dense
   weights (Cholesky in float64): argmin ‖target − W·input‖² + λ‖W − W_dense‖², λ = ``refit_damping``·mean
   diag of the input Gram. If the targets have not moved this returns the dense weights exactly; with fewer
   tokens than inputs the unseen directions keep their dense values. The default λ (1e-6) is a numerical
   guard only, i.e. this is the least-squares fit the official code computes with an fp16 pseudo-inverse
   (W_down for OPT: 10 gradient steps) -- the source of its NaN and LinAlgError reports (SparseLLM#15, #20).
   A SparseGPT-like 1 % ridge is far too strong (outlier features dominate mean diag): on SmolLM2 block 0 it
   made every epoch *worse* than SparseGPT instead of 24 % better;
5. SparseGPT on each refit weight: gate/up with the dense input Gram, down with Σ p pᵀ. The mask is chosen
   again every epoch.

Deviations from the official code, all deliberate: no layer-index special cases (official LLaMA runs 1 epoch at
layers 1, 30, 31 of the 32-layer LLaMA-2-7B); maths in float32/float64, never fp16; p/z/s start from exact
float32 recomputations of the dense intermediates; the aux updates of the last epoch (which cannot change
any weight) are skipped; the SparseGPT damping of gate/up does *not* accumulate over epochs (the official
``H += damp`` on a kept H adds ~1 % of mean diag per epoch; ``accumulate_damping=True`` reproduces it);
with ``keep_best`` (default) the epoch whose pruned FFN has the lowest output error on the calibration
tokens is returned (epoch 1 = SparseGPT included), so the result is never worse than SparseGPT on them.

Only the ratios of α, β, γ enter the closed-form updates; their scale matters only through the s-update step.
Defaults are the official LLaMA values (α = β = γ = 5); the official OPT values (0.1 each) give the very same
ReLU-path result, since that path is all closed form.

Memory: X, Y (T × hidden) and s, z, p (T × intermediate) are float32 on the block's device; above
``max_tokens`` an evenly spaced subset of the calibration tokens is used (with a warning). SmolLM2 with
32 × 512 tokens: ≈ 0.4 GB.
"""
from __future__ import annotations

import torch

from .base import SOLVERS, BlockProblem, LayerProblem, NumericalError, Option, SolveContext, SolverOutput, SolverSpec
from .linalg import damped_cholesky, rel_error
from .sparsegpt import sparsegpt, sparsegpt_cost

_CHUNK = 4096  # tokens per chunk in the token-wise updates (bounds temporaries)
_FFN_CHECK_TOL = 1e-3  # ‖Y − FFN(X)‖²/‖Y‖² above this: the FFN is not what we think it is


# ----------------------------------------------------------------------------------------------------------
# small numerical helpers (float32 token-wise maths, float64 for the small solves)


def _lin(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x @ W.t()  # (t, d_out)
    return y + b if b is not None else y


def _chunks(T: int):
    for i in range(0, T, _CHUNK):
        yield slice(i, min(i + _CHUNK, T))


def ffn_forward(ffn, W: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
    """FFN output for tokens x (t, hidden), weights W[name] (d_out, d_in) float32, biases b[name] or None."""
    r = ffn.roles
    if ffn.kind == "gated":
        h = ffn.act(_lin(x, W[r["gate"]], b[r["gate"]])) * _lin(x, W[r["up"]], b[r["up"]])  # (t, m)
        return _lin(h, W[r["down"]], b[r["down"]])
    return _lin(torch.relu(_lin(x, W[r["fc1"]], b[r["fc1"]])), W[r["fc2"]], b[r["fc2"]])


def ffn_rel_error(ffn, W: dict, b: dict, X: torch.Tensor, Y: torch.Tensor) -> float:
    """‖Y − FFN_W(X)‖²_F / ‖Y‖²_F over the tokens (rows) of X (T, hidden), Y (T, hidden); float64 sums."""
    num = torch.zeros((), dtype=torch.float64, device=X.device)
    den = torch.zeros((), dtype=torch.float64, device=X.device)
    for c in _chunks(X.shape[0]):
        y = Y[c]
        num += ((y - ffn_forward(ffn, W, b, X[c])).double() ** 2).sum()
        den += (y.double() ** 2).sum()
    return float(num / den) if float(den) > 0 else float(num)


def ridge_refit(A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None, W_ref: torch.Tensor, lam: float,
                ctx: SolveContext, what: str) -> torch.Tensor:
    """argmin_W ‖(B − bias) − A Wᵀ‖² + λ·mean(diag AᵀA)·‖W − W_ref‖², solved by Cholesky in float64.

    A: (T, k) inputs, B: (T, n) targets, W_ref: (n, k). Returns W (n, k) float32.
    """
    k = A.shape[1]
    G = torch.zeros(k, k, dtype=torch.float64, device=A.device)  # Σ a aᵀ
    R = torch.zeros(k, B.shape[1], dtype=torch.float64, device=A.device)  # Σ a (b − bias)ᵀ
    for c in _chunks(A.shape[0]):
        a = A[c]
        t = B[c] - bias if bias is not None else B[c]
        G += (a.t() @ a).double()
        R += (a.t() @ t).double()
    scale = float(torch.diagonal(G).mean())
    if scale <= 0:
        return W_ref.clone()
    L, lam_used = damped_cholesky(G, lam, scale, ctx, f"sparsellm: {what}")  # (G + λ·scale·I) = L Lᵀ
    lam_abs = lam_used * scale
    Wt = torch.cholesky_solve(R + lam_abs * W_ref.t().double(), L)  # (k, n)
    return Wt.t().to(torch.float32).contiguous()


def _gram(A: torch.Tensor) -> torch.Tensor:
    """Σ a aᵀ over the rows of A (T, k), float32 (k, k)."""
    G = torch.zeros(A.shape[1], A.shape[1], dtype=torch.float32, device=A.device)
    for c in _chunks(A.shape[0]):
        G.addmm_(A[c].t(), A[c])
    return G


# ----------------------------------------------------------------------------------------------------------
# auxiliary-variable updates (rows = tokens)


def p_update(ffn, W: dict, b: dict, X, Y, S, Z, P, alpha, beta, gamma, ctx) -> None:
    """P ← argmin β‖Y − (P Wdᵀ + b_d)‖² + γ‖P − act‖², in place; act = act(S) ⊙ Z or relu(Z)."""
    down = ffn.last
    Wd, bd = W[down], b[down]  # (h, m)
    M = beta * (Wd.t().double() @ Wd.double())  # (m, m)
    M += gamma * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    L, _ = damped_cholesky(M, 0.0, 1.0, ctx, "sparsellm: p-update")
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    Minv = torch.cholesky_solve(eye, L).to(torch.float32)  # (m, m) symmetric; cholesky_inverse is ~20× slower on CPU
    for c in _chunks(X.shape[0]):
        t = Y[c] - bd if bd is not None else Y[c]
        a = ffn.act(S[c]) * Z[c] if ffn.kind == "gated" else torch.relu(Z[c])
        P[c] = (beta * (t @ Wd) + gamma * a) @ Minv


def z_update(ffn, W: dict, b: dict, X, S, Z, P, alpha, gamma) -> None:
    """Z ← argmin α‖Z − (X W_upᵀ + b)‖² + γ‖P − act ⊙ Z‖² (gated) or the ReLU two-branch closed form; in place."""
    up = ffn.roles["up"] if ffn.kind == "gated" else ffn.roles["fc1"]
    for c in _chunks(X.shape[0]):
        u = _lin(X[c], W[up], b[up])  # (t, m)
        p = P[c]
        if ffn.kind == "gated":
            a = ffn.act(S[c])
            Z[c] = (alpha * u + gamma * a * p) / (alpha + gamma * a * a)
        else:
            z1 = torch.clamp((gamma * p + alpha * u) / (gamma + alpha), min=0.0)
            z2 = torch.clamp(u, max=0.0)
            f1 = gamma * (p - torch.relu(z1)) ** 2 + alpha * (z1 - u) ** 2
            f2 = gamma * (p - torch.relu(z2)) ** 2 + alpha * (z2 - u) ** 2
            Z[c] = torch.where(f1 <= f2, z1, z2)


def s_update(ffn, W: dict, b: dict, X, S, Z, P, alpha, gamma, steps: int, lr: float) -> None:
    """``steps`` gradient steps on α(S − X W_gateᵀ − b)² + γ(P − act(S) ⊙ Z)², elementwise, in place.

    Safeguard (not in the official code): a step that would raise an element's objective is not taken and that
    element's step size is halved, so no step size can make s diverge.
    """
    if steps <= 0 or lr <= 0:
        return
    gate = ffn.roles["gate"]

    def f(s, g, z, p):
        return alpha * (s - g) ** 2 + gamma * (p - ffn.act(s) * z) ** 2

    for c in _chunks(X.shape[0]):
        g = _lin(X[c], W[gate], b[gate])
        z, p, s = Z[c], P[c], S[c].clone()
        step = torch.full_like(s, lr)  # per element; halved where a step would raise the objective
        for _ in range(steps):
            with torch.enable_grad():
                s_ = s.detach().requires_grad_(True)
                fs = f(s_, g, z, p)
                (grad,) = torch.autograd.grad(fs.sum(), s_)
            cand = s - step * grad
            ok = f(cand, g, z, p) <= fs.detach()
            s = torch.where(ok, cand, s)
            step = torch.where(ok, step, 0.5 * step)
        S[c] = s


# ----------------------------------------------------------------------------------------------------------
# the block solver


def _sg_opts(opts: dict, damping: float | None = None) -> dict:
    return {"damping": opts["damping"] if damping is None else damping, "blocksize": int(opts["blocksize"])}


def _warn_tokens(problem: BlockProblem, opts: dict, ctx: SolveContext) -> None:
    """Advice about the token budget, once per run (on block 0)."""
    if problem.index != 0:
        return
    T, total, ffn = problem.X.shape[0], problem.total_tokens, problem.ffn
    m_width = problem.W[ffn.last].shape[1]
    if T < total:
        h = problem.X.shape[1]
        mib = 4 * total * (2 * h + 3 * m_width) / 2**20
        ctx.warn(f"sparsellm: {total} calibration tokens per block exceed max_tokens={T}; the FFN auxiliary variables "
                 f"use {T} evenly spaced tokens (all {total} would need ≈{mib:.0f} MiB); SparseGPT Hessians still use "
                 f"all tokens. Raise max_tokens if memory allows.")
    if T < 2 * m_width and int(opts["epochs"]) > 1:
        ctx.warn(f"sparsellm: only {T} calibration tokens for an FFN of width {m_width}: the weight refits nearly "
                 f"interpolate the auxiliary variables and later epochs may not help"
                 f"{' (the epoch with the lowest FFN error is kept)' if opts['keep_best'] else ''}; "
                 f"use at least {2 * m_width} tokens")


def _refit_targets(problem: BlockProblem, S, Z, P, lam: float, ctx: SolveContext) -> dict[str, torch.Tensor]:
    """Update 4: the FFN weights refit to the auxiliary variables (ridge towards the dense weights)."""
    ffn, X, Y, W0, bias = problem.ffn, problem.X, problem.Y, problem.W, problem.bias

    def refit(inp, target, n):
        return ridge_refit(inp, target, bias[n], W0[n], lam, ctx, f"block {problem.index} {n} refit")

    r = ffn.roles
    if ffn.kind == "gated":
        return {r["up"]: refit(X, Z, r["up"]), r["gate"]: refit(X, S, r["gate"]), r["down"]: refit(P, Y, r["down"])}
    return {r["fc1"]: refit(X, Z, r["fc1"]), r["fc2"]: refit(P, Y, r["fc2"])}


def sparsellm_ffn(problem: BlockProblem, pattern, sparsity: float, opts: dict, ctx: SolveContext) -> dict[str, SolverOutput] | None:
    """SparseLLM on one block's FFN -> {FFN linear name: SolverOutput}, or None to decline (after a warning).

    Declines when the FFN recomputed from ``problem.W`` does not reproduce ``problem.Y`` (the roles or the
    activation are not what they seem); the pipeline then prunes those linears one by one with ``fn`` (SparseGPT).
    Per-epoch FFN output errors go to ``ctx.iteration`` and to each linear's ``trace`` (with its rel_error);
    ``info`` holds ``ffn_rel_error_epoch1`` (= SparseGPT), ``ffn_rel_error`` (returned weights), ``returned_epoch``
    and ``aux_tokens``.
    """
    ffn, X, Y, W0, bias, grams = problem.ffn, problem.X, problem.Y, problem.W, problem.bias, problem.grams
    T = X.shape[0]
    _warn_tokens(problem, opts, ctx)
    check = ffn_rel_error(ffn, W0, bias, X, Y)
    if check > _FFN_CHECK_TOL:
        ctx.warn(f"sparsellm: block {problem.index}: the FFN recomputed from {', '.join(ffn.names)} differs from the "
                 f"block's own FFN output (relative error {check:.2e}); SparseGPT on the FFN linears instead")
        return None

    epochs = int(opts["epochs"])
    alpha, beta, gamma = float(opts["alpha"]), float(opts["beta"]), float(opts["gamma"])
    damping = float(opts["damping"])
    in_names = [n for n in ffn.names if n != ffn.last]
    history: list[dict] = []  # per epoch: FFN error and per-linear rel_error (scalars only)
    chosen: dict = {}  # weights/masks/damping of the epoch to return so far (only one copy is kept)
    S = Z = P = None
    Wcur: dict[str, torch.Tensor] = {}
    info_extra: dict = {}
    for e in range(epochs):
        problem.check_cancel()
        try:
            if e == 0:  # epoch 1: SparseGPT on the dense weights and Grams
                targets = {n: W0[n] for n in ffn.names}
                hess = dict(grams)
            else:
                if P is None:  # aux variables start at the dense intermediates
                    S, Z, P = _init_aux(ffn, W0, bias, X)
                p_update(ffn, Wcur, bias, X, Y, S, Z, P, alpha, beta, gamma, ctx)  # update 1
                z_update(ffn, Wcur, bias, X, S, Z, P, alpha, gamma)  # update 2
                if ffn.kind == "gated":
                    s_update(ffn, Wcur, bias, X, S, Z, P, alpha, gamma, int(opts["s_steps"]), float(opts["s_lr"]))  # 3
                for t_ in (S, Z, P):
                    if t_ is not None and not bool(torch.isfinite(t_).all()):
                        raise NumericalError("auxiliary variables became non-finite")
                problem.check_cancel()
                targets = _refit_targets(problem, S, Z, P, float(opts["refit_damping"]), ctx)  # update 4
                hess = {n: grams[n] for n in in_names}
                hess[ffn.last] = _gram(P)
            Wnew, masks, damp_used = {}, {}, {}
            for n in ffn.names:  # update 5: SparseGPT on each (refit) weight
                problem.check_cancel()
                d = damping
                if opts["accumulate_damping"] and n in in_names:
                    d = (1.0 + damping) ** (e + 1) - 1.0  # official: H += damp on a kept H, once per epoch
                out = sparsegpt(LayerProblem(W=targets[n], G=hess[n], n_tokens=T, name=f"{problem.index}.{n}"),
                                pattern, sparsity, _sg_opts(opts, d), ctx)
                Wnew[n] = out.weight * out.mask
                masks[n] = out.mask
                damp_used[n] = out.info.get("damping_used", d)
                if not bool(torch.isfinite(Wnew[n]).all()):
                    raise NumericalError(f"{n}: non-finite weights")
        except NumericalError as err:
            if e == 0:
                raise
            ctx.warn(f"sparsellm: block {problem.index}: epoch {e + 1} failed ({err}); keeping epochs 1..{e}")
            info_extra["stopped_at_epoch"] = e + 1
            break
        Wcur = Wnew
        err_e = ffn_rel_error(ffn, Wcur, bias, X, Y)
        ctx.iteration({"iter": e + 1, "block": problem.index, "ffn_rel_error": err_e})
        history.append({"err": err_e, "layer_err": {n: rel_error(W0[n], Wnew[n], grams[n]) for n in ffn.names}})
        if not opts["keep_best"] or not chosen or err_e < chosen["err"]:
            chosen = {"epoch": e, "err": err_e, "W": Wnew, "mask": masks, "damp": damp_used}

    errs = [h["err"] for h in history]
    best = chosen["epoch"]
    outs = {}
    for n in ffn.names:
        trace = [{"iter": i + 1, "ffn_rel_error": h["err"], "rel_error": h["layer_err"][n]} for i, h in enumerate(history)]
        info = {"epochs": epochs, "epochs_run": len(history), "returned_epoch": best + 1, "ffn_rel_error_epoch1": errs[0],
                "ffn_rel_error_last": errs[-1], "ffn_rel_error": errs[best], "aux_tokens": T,
                "damping_used": float(chosen["damp"][n]), **info_extra}
        outs[n] = SolverOutput(weight=chosen["W"][n], mask=chosen["mask"][n], trace=trace, info=info)
    return outs


def _init_aux(ffn, W: dict, b: dict, X: torch.Tensor):
    """Dense intermediates: gated S = gate pre-activation, Z = up output, P = act(S) ⊙ Z; ReLU Z = fc1 output, P = relu(Z)."""
    T = X.shape[0]
    m = W[ffn.last].shape[1]
    P = torch.empty(T, m, dtype=torch.float32, device=X.device)
    Z = torch.empty_like(P)
    S = torch.empty_like(P) if ffn.kind == "gated" else None
    r = ffn.roles
    for c in _chunks(T):
        if ffn.kind == "gated":
            S[c] = _lin(X[c], W[r["gate"]], b[r["gate"]])
            Z[c] = _lin(X[c], W[r["up"]], b[r["up"]])
            P[c] = ffn.act(S[c]) * Z[c]
        else:
            Z[c] = _lin(X[c], W[r["fc1"]], b[r["fc1"]])
            P[c] = torch.relu(Z[c])
    return S, Z, P


def _sparsellm_layer(p: LayerProblem, pattern, sparsity: float, opts: dict, ctx: SolveContext) -> SolverOutput:
    """A lone layer (no block around it): plain SparseGPT with the same damping/blocksize."""
    return sparsegpt(p, pattern, sparsity, _sg_opts(opts), ctx)


SPARSELLM_OPTIONS = (
    Option("epochs", 4, "int", "Alternating epochs per block (official: 4); 1 = exactly SparseGPT.", min=1, max=100),
    Option("alpha", 5.0, "float", "Weight of ‖z − W_up X‖² and ‖s − W_gate X‖² (official LLaMA 5; OPT 0.1 — only ratios "
           "matter except in the s-update).", min=0.0, min_inclusive=False, max=1e6),
    Option("beta", 5.0, "float", "Weight of the output term ‖Y − W_down p‖² (official LLaMA 5; OPT 0.1).", min=0.0,
           min_inclusive=False, max=1e6),
    Option("gamma", 5.0, "float", "Weight of the activation term ‖p − act(s)⊙z‖² (official LLaMA 5; OPT 0.1).", min=0.0,
           min_inclusive=False, max=1e6),
    Option("damping", 0.01, "float", "SparseGPT dampening as a fraction of mean(diag H) (official percdamp).", min=0.0, max=10.0),
    Option("blocksize", 128, "int", "SparseGPT columns per lazy-update block.", min=1, max=1 << 20),
    Option("refit_damping", 1e-6, "float", "Ridge λ of the weight refits (fraction of mean diag of the input Gram), "
           "pulling towards the dense weights; replaces the official pseudo-inverse.", min=0.0, max=10.0),
    Option("s_steps", 20, "int", "Gradient steps of the s-update per epoch, gated FFNs (official 2).", min=0, max=1000),
    Option("s_lr", 0.05, "float", "Initial step size of the s-update (official 0.01), on the objective weighted by α and "
           "γ; an element's step is halved when it would raise its objective.", min=0.0, max=10.0),
    Option("max_tokens", 65536, "int", "Cap on calibration tokens held as auxiliary variables (evenly spaced subset "
           "above it; memory ≈ 4·T·(2·hidden + 3·intermediate) bytes).", min=16, max=1 << 24),
    Option("keep_best", True, "bool", "Return the epoch with the lowest FFN output error on the calibration tokens "
           "(epoch 1 = SparseGPT included); off: the last epoch, as the official code."),
    Option("accumulate_damping", False, "bool", "Reproduce the official quirk: gate/up damping grows by ~damping·mean diag "
           "every epoch."),
)

def sparsellm_cost(d_out: int, d_in: int, opts: dict, **_) -> dict:
    """Operation counts of one linear: SparseGPT's, times the FFN factor for the FFN linears (epochs of SparseGPT,
    refits and token-wise updates: ``ffn_factor``; the cost model applies it to the FFN's linears only)."""
    return {**sparsegpt_cost(d_out, d_in, opts), "ffn_factor": 5.0 * int(opts.get("epochs", 4)) / 4}


SOLVERS.add(SolverSpec(
    name="sparsellm",
    fn=_sparsellm_layer,
    kind="block",
    needs_gram=True,
    options=SPARSELLM_OPTIONS,
    block_fn=sparsellm_ffn,
    needs=("ffn_io",),
    lone_layer="SparseGPT",
    cost=sparsellm_cost,
    summary="Global pruning of each block's FFN: auxiliary variables (activations per token) couple up/gate/down; "
    "alternates closed-form activation updates, weight refits and SparseGPT. Attention: SparseGPT.",
    paper="https://arxiv.org/abs/2402.17946",
))
