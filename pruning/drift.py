"""How far the pruned model's next-token distributions drift from the dense model's, beyond perplexity.

``kl_drift(dense, pruned, windows)``: over the evaluation windows, the mean per-token KL(dense ‖ pruned) of the
next-token distributions (nats) and the share of positions where both models' top-1 token agree. Window by
window (batch 1: the models' logits of one window at a time, in the model's dtype), with the float32 softmax maths
in chunks of ``chunk`` positions, so full-vocabulary float32 logits are never held for more than ``chunk`` tokens
(the model's own output head, so soft-capping or scaling of any family is respected).
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import model_device
from .events import Cancelled


@torch.no_grad()
def kl_drift(dense: nn.Module, pruned: nn.Module, windows: torch.Tensor, chunk: int = 128,
             cancel: threading.Event | None = None) -> dict:
    """``{"kl": mean KL(dense ‖ pruned) per token, "top1_agreement": share of equal argmax, "tokens": n}``."""
    if windows.shape[0] == 0:
        raise ValueError("eval_windows: no evaluation window (text shorter than one window of seqlen tokens)")
    kl_sum, agree, n = 0.0, 0, 0
    states = [(m, m.training) for m in (dense, pruned)]
    for m, _ in states:
        m.eval()
    try:
        for i in range(windows.shape[0]):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled by the user")
            zd = dense(input_ids=windows[i:i + 1].to(model_device(dense)), use_cache=False).logits[0]
            zp = pruned(input_ids=windows[i:i + 1].to(model_device(pruned)), use_cache=False).logits[0].to(zd.device)
            T = zd.shape[0] - 1  # the positions perplexity scores (each predicts the next token)
            for s in range(0, T, chunk):
                e = min(T, s + chunk)
                ld = F.log_softmax(zd[s:e].float(), dim=-1)
                lp = F.log_softmax(zp[s:e].float(), dim=-1)
                kl_sum += float(torch.sum(ld.exp() * (ld - lp)))
                agree += int((ld.argmax(-1) == lp.argmax(-1)).sum())
                n += e - s
    finally:
        for m, was in states:
            m.train(was)
    return {"kl": kl_sum / n, "top1_agreement": agree / n, "tokens": n}
