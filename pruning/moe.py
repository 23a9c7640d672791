"""Mixture-of-experts blocks: fused expert weights as prunable layers, and their per-expert statistics.

transformers 5 stores the experts of Mixtral, Qwen2-MoE and Qwen3-MoE as two fused parameters of one experts
module (no ``nn.Linear``): ``gate_up_proj`` (E, 2·I, H) -- expert e's gate rows [0, I) then its up rows [I, 2I) --
and ``down_proj`` (E, H, I). The block's router (``mlp.gate``) picks the top-k experts of every token and calls
``experts(hidden (T, H), top_k_index (T, k), top_k_weights (T, k))``.

* ``find_experts(block)``: the fused experts modules of a block whose layout we understand.
* ``ExpertLinear``: one expert's gate, up or down matrix as a (d_out, d_in) view of the fused parameter with the
  ``get_weight``/``set_weight`` interface of ``blocks.Linear``; the pruned slice is written back in place.
* ``ExpertStats``: a forward pre-hook on the experts module that reads the router's choice and accumulates, per
  expert, the Gram of the hidden states of the tokens routed to it (the input of gate and up) and the Gram of the
  expert's intermediate activations act(gate x) ⊙ up x of those tokens (the input of down). The router
  probability that scales the expert's output is not applied to X (docs/algorithms.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

ROLES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class FusedExperts:
    """A fused experts module inside a block: its name relative to the block, the module, and its sizes."""

    name: str
    module: nn.Module
    n_experts: int
    inter: int  # intermediate width I of one expert

    @property
    def act(self):
        return self.module.act_fn

    def linears(self) -> dict[str, "ExpertLinear"]:
        """Every expert's gate/up/down as a layer, by name relative to the block (``mlp.experts.3.up_proj``)."""
        out = {}
        for e in range(self.n_experts):
            for role in ROLES:
                lin = ExpertLinear(f"{self.name}.{e}.{role}", self, e, role)
                out[lin.name] = lin
        return out

    @property
    def param_names(self) -> list[str]:
        return [f"{self.name}.gate_up_proj", f"{self.name}.down_proj"]


def _layout_problem(m: nn.Module) -> str:
    """Why the fused experts module ``m`` is not in the layout we prune ('' when it is)."""
    gu, dn = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    if getattr(m, "is_transposed", False) or not getattr(m, "is_concatenated", True):
        return "transposed or interleaved gate/up layout"
    if getattr(m, "has_bias", False) or getattr(m, "gate_up_proj_bias", None) is not None:
        return "expert biases"
    if not callable(getattr(m, "act_fn", None)):
        return "no act_fn"
    E, two_i, H = gu.shape
    if two_i % 2 or tuple(dn.shape) != (E, H, two_i // 2):
        return f"gate_up_proj {tuple(gu.shape)} and down_proj {tuple(dn.shape)} do not match (E, 2I, H) / (E, H, I)"
    return ""


def _is_fused(m: nn.Module) -> bool:
    gu, dn = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
    return isinstance(gu, nn.Parameter) and isinstance(dn, nn.Parameter) and gu.dim() == 3 and dn.dim() == 3


def find_experts(block: nn.Module) -> tuple[list[FusedExperts], dict[str, str]]:
    """(the fused experts modules of ``block`` we can prune, {name: why not} for the ones we cannot)."""
    ok, bad = [], {}
    for name, m in block.named_modules():
        if name and _is_fused(m):
            why = _layout_problem(m)
            if why:
                bad[name] = why
            else:
                E, two_i, _ = m.gate_up_proj.shape
                ok.append(FusedExperts(name, m, E, two_i // 2))
    return ok, bad


def fused_param_names(block: nn.Module) -> set[str]:
    """Names (relative to the block) of every fused expert parameter, prunable layout or not."""
    return {f"{n}.{p}" for n, m in block.named_modules() if n and _is_fused(m) for p in ("gate_up_proj", "down_proj")}


class ExpertLinear:
    """Expert ``expert``'s ``role`` matrix as a (d_out, d_in) view of the fused parameter (``blocks.Linear``'s
    interface: ``name``, ``get_weight``, ``set_weight``, ``shape``)."""

    transposed = False

    def __init__(self, name: str, experts: FusedExperts, expert: int, role: str):
        self.name, self.experts, self.expert, self.role = name, experts, expert, role

    @property
    def module(self) -> nn.Module:
        return self.experts.module

    def get_weight(self) -> torch.Tensor:
        m, e, inter = self.experts.module, self.expert, self.experts.inter
        if self.role == "down_proj":
            return m.down_proj[e]  # (H, I)
        rows = slice(0, inter) if self.role == "gate_proj" else slice(inter, 2 * inter)
        return m.gate_up_proj[e, rows]  # (I, H)

    def set_weight(self, W: torch.Tensor) -> None:
        w = self.get_weight()
        with torch.no_grad():
            w.copy_(W.to(dtype=w.dtype, device=w.device))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.get_weight().shape)  # type: ignore[return-value]


class ExpertStats:
    """Per-expert Grams from the tokens the router sends to each expert, accumulated during block forwards.

    which: "gate_up" (G of the routed hidden states: the input of gate_proj and up_proj) and/or "down" (G of the
    intermediate activations act(gate x) ⊙ up x of the routed tokens, from the expert weights as they are now).
    ``gram(name)`` -> (G, n_tokens) for an expert layer name, as ``GramCollector.gram``.
    """

    def __init__(self, experts: list[FusedExperts], which: tuple[str, ...]):
        self.experts, self.which = experts, tuple(which)
        self.G: dict[tuple[str, int, str], torch.Tensor] = {}
        self.n: dict[tuple[str, int], int] = {(fe.name, e): 0 for fe in experts for e in range(fe.n_experts)}
        self.calls: dict[str, int] = {fe.name: 0 for fe in experts}
        self.seconds = 0.0
        self._handles = []

    def __enter__(self):
        for fe in self.experts:
            self._handles.append(fe.module.register_forward_pre_hook(self._hook(fe), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _add(self, key, X: torch.Tensor) -> None:
        if key not in self.G:
            self.G[key] = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float32, device=X.device)
        self.G[key].addmm_(X.t(), X)

    def _hook(self, fe: FusedExperts):
        def hook(module, args, kwargs):
            t0 = time.perf_counter()
            vals = list(args) + [kwargs[k] for k in ("hidden_states", "top_k_index", "top_k_weights") if k in kwargs]
            hidden, index = vals[0], vals[1]
            hidden = hidden.reshape(-1, hidden.shape[-1])  # (T, H)
            index = index.reshape(hidden.shape[0], -1)  # (T, k)
            self.calls[fe.name] += 1
            with torch.no_grad():
                for e in range(fe.n_experts):
                    tok = (index == e).any(dim=-1).nonzero().flatten()
                    if tok.numel() == 0:
                        continue
                    X = hidden[tok].to(torch.float32)  # (t, H)
                    self.n[(fe.name, e)] += X.shape[0]
                    if "gate_up" in self.which:
                        self._add((fe.name, e, "gate_up"), X)
                    if "down" in self.which:
                        gu = X @ module.gate_up_proj[e].to(torch.float32).t()  # (t, 2I)
                        gate, up = gu[:, : fe.inter], gu[:, fe.inter :]
                        self._add((fe.name, e, "down"), fe.act(gate) * up)  # (t, I)
            self.seconds += time.perf_counter() - t0

        return hook

    def roles(self) -> tuple[str, ...]:
        return (("gate_proj", "up_proj") if "gate_up" in self.which else ()) + (("down_proj",) if "down" in self.which else ())

    def tokens(self, fe: FusedExperts, e: int) -> int:
        return self.n[(fe.name, e)]

    def gram(self, fe: FusedExperts, e: int, role: str) -> torch.Tensor | None:
        return self.G.get((fe.name, e, "down" if role == "down_proj" else "gate_up"))
