"""Evaluation: perplexity (the reference protocol) and greedy generation (docs/algorithms.md, "Evaluation").

Perplexity follows IST-DASLab/sparsegpt ``llama_eval`` / locuslab/wanda ``eval_ppl_wikitext``: the evaluation
text is tokenised as one stream, cut into non-overlapping windows of an explicit ``seqlen`` (tail dropped,
no BOS inserted); per window the mean cross-entropy over the seqlen−1 shifted positions; ppl = exp(mean of
the window means). seqlen is never read from the model config.

Streaming (for the app): ``perplexity(on_progress=...)`` reports the running perplexity after every batch of windows
(``stream_batch_size``: one window per batch on a CPU, where batching gains nothing and the per-window losses are
the same), ``generate(on_text=...)`` the continuation after every new token. Neither changes a result.
"""
from __future__ import annotations

import math
import threading
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import model_device
from .errors import InputError
from .events import Cancelled


@torch.no_grad()
def window_losses(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, cancel: threading.Event | None = None,
                  on_window: Callable[[list[float]], None] | None = None) -> list[float]:
    """Mean next-token cross-entropy of every window (float32 loss maths whatever the model dtype).

    ``on_window(losses so far)`` is called after every batch."""
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
            if on_window is not None:
                on_window(losses)
    finally:
        model.train(was_training)
    return losses


def _ppl(losses: list[float]) -> float:
    mean = sum(losses) / len(losses)
    return math.exp(mean) if math.isfinite(mean) else float("inf")


def stream_batch_size(model: nn.Module) -> int:
    """Windows per forward when the running perplexity is streamed: 1 on a CPU (a new value after every window; a
    batch of 512-token windows runs no faster there, and each window's loss is the same), 4 on an accelerator."""
    return 1 if model_device(model).type == "cpu" else 4


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, cancel: threading.Event | None = None,
               on_progress: Callable[[int, int, float], None] | None = None) -> float:
    """exp(mean window cross-entropy) over non-overlapping windows (n, seqlen).

    ``on_progress(done, total, running perplexity)`` after every batch; at done = total it is the result."""
    if windows.shape[0] == 0:
        raise InputError("eval_windows: no evaluation window (text shorter than one window of seqlen tokens)")
    total = int(windows.shape[0])
    hook = None if on_progress is None else (lambda losses: on_progress(len(losses), total, _ppl(losses)))
    return _ppl(window_losses(model, windows, batch_size, cancel, hook))


class _TextStreamer:
    """A ``generate`` streamer (the ``put``/``end`` protocol of transformers' BaseStreamer): after every new token,
    ``on_text(text so far, done)`` with the decoded continuation (the prompt's ids, pushed first, are skipped)."""

    def __init__(self, tokenizer, on_text: Callable[[str, bool], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate pushes the prompt first
            self.prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        self.on_text(self.tokenizer.decode(self.ids, skip_special_tokens=True), False)

    def end(self) -> None:
        self.on_text(self.tokenizer.decode(self.ids, skip_special_tokens=True), True)


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[str] | tuple[str, ...], max_new_tokens: int = 24,
             on_text: Callable[[int, str, bool], None] | None = None) -> list[str]:
    """Greedy continuations (no sampling), one prompt at a time: identical settings for dense and pruned.

    ``on_text(prompt index, text so far, done)`` after every new token (streaming; the result is the same)."""
    dev = model_device(model)
    outs = []
    for i, prompt in enumerate(prompts):
        enc = tokenizer(prompt, return_tensors="pt").to(dev)
        if max_new_tokens <= 0:
            outs.append("")
            if on_text is not None:
                on_text(i, "", True)
            continue
        extra = {} if on_text is None else {"streamer": _TextStreamer(tokenizer, lambda t, done, i=i: on_text(i, t, done))}
        ids = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            **extra,
        )
        outs.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return outs
