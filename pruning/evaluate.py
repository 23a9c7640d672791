"""Evaluation: perplexity (the reference protocol) and greedy generation (docs/algorithms.md, "Evaluation").

Perplexity follows IST-DASLab/sparsegpt ``llama_eval`` / locuslab/wanda ``eval_ppl_wikitext``: the evaluation
text is tokenised as one stream, cut into non-overlapping windows of an explicit ``seqlen`` (tail dropped,
no BOS inserted); per window the mean cross-entropy over the seqlen−1 shifted positions; ppl = exp(mean of
the window means). seqlen is never read from the model config.
"""
from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import model_device
from .errors import InputError
from .events import Cancelled


@torch.no_grad()
def window_losses(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, cancel: threading.Event | None = None) -> list[float]:
    """Mean next-token cross-entropy of every window (float32 loss maths whatever the model dtype)."""
    dev = model_device(model)
    was_training = model.training
    model.eval()
    losses: list[float] = []
    try:
        for i in range(0, windows.shape[0], batch_size):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled by the user")
            ids = windows[i : i + batch_size].to(dev)
            logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
            shift = logits[:, :-1, :].float()
            target = ids[:, 1:]
            ce = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), target.reshape(-1), reduction="none")
            losses.extend(ce.view(ids.shape[0], -1).mean(dim=1).tolist())
    finally:
        model.train(was_training)
    return losses


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, cancel: threading.Event | None = None) -> float:
    """exp(mean window cross-entropy) over non-overlapping windows (n, seqlen)."""
    if windows.shape[0] == 0:
        raise InputError("eval_windows: no evaluation window (text shorter than one window of seqlen tokens)")
    losses = window_losses(model, windows, batch_size, cancel)
    mean = sum(losses) / len(losses)
    return math.exp(mean) if math.isfinite(mean) else float("inf")


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[str] | tuple[str, ...], max_new_tokens: int = 24) -> list[str]:
    """Greedy continuations (no sampling), one prompt at a time: identical settings for dense and pruned."""
    dev = model_device(model)
    outs = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(dev)
        if max_new_tokens <= 0:
            outs.append("")
            continue
        ids = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        outs.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return outs
