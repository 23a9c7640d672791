"""Block discovery: where a causal LM keeps its decoder blocks and which linears each block has.

One routine for every family (no per-architecture copies of the pipeline). Known block paths are tried
first (Llama/Mistral/Qwen2/Gemma ``model.layers``, OPT ``model.decoder.layers``, GPT-2 ``transformer.h``);
otherwise the largest ModuleList of identical blocks that contain linears is used. GPT-2's ``Conv1D`` stores
its weight as (d_in, d_out): ``Linear`` hides the transpose. Mixture-of-experts routers (``is_router``) are not
prunable linears. ``weight_inventory`` / ``weight_kind`` list every weight matrix of a block by kind (attention,
mlp, experts, router, other) for the report's sparsity accounting; fused experts are in ``pruning.moe``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import InputError

try:  # transformers' GPT-2 style linear
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]

_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "model.language_model.layers", "transformer.blocks")


class ModelStructureError(InputError):
    """The model has no recognisable decoder blocks."""


@dataclass
class Linear:
    """A prunable linear inside a block: name relative to the block, the module, and its layout."""

    name: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return bool(Conv1D) and isinstance(self.module, Conv1D)

    def get_weight(self) -> torch.Tensor:
        """(d_out, d_in) view of the weight (a transpose view for Conv1D)."""
        w = self.module.weight
        return w.t() if self.transposed else w

    def set_weight(self, W: torch.Tensor) -> None:
        """Write a (d_out, d_in) weight, cast to the module's dtype/device."""
        w = self.module.weight
        new = (W.t() if self.transposed else W).to(dtype=w.dtype, device=w.device)
        with torch.no_grad():
            w.copy_(new)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.get_weight().shape)  # type: ignore[return-value]


def is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (bool(Conv1D) and isinstance(m, Conv1D))


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(path, ModuleList) of the decoder blocks. Raises ModelStructureError if none."""
    for path in _BLOCK_PATHS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and any(is_linear(m) for m in blocks[0].modules()):
            return path, blocks
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            types = {type(b) for b in mod}
            if len(types) == 1 and any(is_linear(m) for m in mod[0].modules()):
                if best is None or len(mod) > len(best[1]):
                    best = (name, mod)
    if best is None:
        raise ModelStructureError(
            f"model: {type(model).__name__} has no decoder blocks (a ModuleList of identical blocks with linear layers), "
            "so nothing was pruned; supported: decoder-only causal LMs of the families in the README's table (Llama, "
            "Mistral, Qwen2/3, Gemma 2/3, Phi-3, OPT, GPT-2, Mixtral, Qwen2/3-MoE)"
        )
    return best


def is_router(block: nn.Module, name: str) -> bool:
    """Is ``name`` (a module name relative to ``block``) a mixture-of-experts router? The ``gate`` next to an
    ``experts`` module (Mixtral, Qwen2/3-MoE) or Qwen2-MoE's ``shared_expert_gate``. Routers stay dense."""
    parent, _, last = name.rpartition(".")
    if last == "shared_expert_gate":
        return True
    if last in ("gate", "router"):
        owner = block.get_submodule(parent) if parent else block
        return hasattr(owner, "experts")
    return False


def block_linears(block: nn.Module) -> dict[str, Linear]:
    """Prunable linears of one block, in module order, by name relative to the block (MoE routers excluded)."""
    return {name: Linear(name, m) for name, m in block.named_modules()
            if name and is_linear(m) and not is_router(block, name)}


KINDS = ("attention", "mlp", "experts", "router", "other")


def weight_kind(block: nn.Module, param_name: str, fused: set[str] = frozenset()) -> str:
    """attention / mlp / experts / router / other for a 2-D (or fused 3-D) weight parameter of a block.

    ``fused``: names of the block's fused expert parameters (``moe.fused_param_names``)."""
    module_name = param_name.rpartition(".")[0]
    parts = param_name.split(".")
    if param_name in fused or "experts" in parts[:-1] and "shared_expert" not in parts:
        return "experts"
    if module_name and is_router(block, module_name):
        return "router"
    if any(p in ("self_attn", "attn", "attention", "self_attention", "cross_attn") for p in parts):
        return "attention"
    if any(p in ("mlp", "ffn", "feed_forward", "fc1", "fc2", "shared_expert") for p in parts):
        return "mlp"
    return "other"


def weight_inventory(block: nn.Module, fused: set[str] = frozenset()) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str]]:
    """({name: (kind, tensor)} of every weight matrix of the block -- parameters with 2 or more dimensions, fused
    experts included --, [names of the 1-D parameters: norms and biases]). Names are relative to the block."""
    mats, vecs = {}, []
    for name, p in block.named_parameters():
        if p.dim() >= 2:
            mats[name] = (weight_kind(block, name, fused), p)
        else:
            vecs.append(name)
    return mats, vecs


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class FFN:
    """A recognised FFN inside a block: linear names (relative to the block) by role, and the activation.

    kind 'gated': roles gate, up, down; out = down(act(gate x) ⊙ up x)   (Llama/Mistral/Qwen2 SwiGLU).
    kind 'relu' : roles fc1, fc2;        out = fc2(relu(fc1 x))          (OPT).
    """

    kind: str
    roles: dict[str, str]
    act: Callable[[torch.Tensor], torch.Tensor]

    @property
    def names(self) -> list[str]:
        return list(self.roles.values())

    @property
    def first(self) -> str:  # a linear whose input is the FFN input
        return self.roles["up"] if self.kind == "gated" else self.roles["fc1"]

    @property
    def last(self) -> str:  # the linear whose output is the FFN output
        return self.roles["down"] if self.kind == "gated" else self.roles["fc2"]


def find_ffn(block: nn.Module, names: list[str]) -> tuple[FFN | None, str]:
    """Recognise the FFN among ``names`` (linear names relative to ``block``). Returns (ffn or None, reason)."""
    for n in names:
        if n.endswith("gate_proj"):
            pre = n[: -len("gate_proj")]
            up, down = pre + "up_proj", pre + "down_proj"
            if up in names and down in names:
                parent = block.get_submodule(pre.rstrip(".")) if pre else block
                act = getattr(parent, "act_fn", None)
                if not callable(act):
                    return None, f"{pre}gate/up/down found but the module has no act_fn"
                return FFN("gated", {"gate": n, "up": up, "down": down}, act), ""
    for n in names:
        if n.endswith("fc1"):
            pre = n[: -len("fc1")]
            fc2 = pre + "fc2"
            if fc2 in names:
                parent = block.get_submodule(pre.rstrip(".")) if pre else block
                act = getattr(parent, "activation_fn", None)
                probe = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0])
                if not callable(act) or not torch.equal(act(probe), torch.relu(probe)):
                    return None, f"{pre}fc1/fc2 found but the activation is not ReLU (only ReLU has the closed-form z-update)"
                return FFN("relu", {"fc1": n, "fc2": fc2}, torch.relu), ""
    return None, "no gate_proj/up_proj/down_proj nor fc1/fc2 among the block's linears"
