"""Block discovery: where a causal LM keeps its decoder blocks and which linears each block has.

One routine for every family (no per-architecture copies of the pipeline). Known block paths are tried
first (Llama/Mistral/Qwen2/Gemma ``model.layers``, OPT ``model.decoder.layers``, GPT-2 ``transformer.h``);
otherwise the largest ModuleList of identical blocks that contain linears is used. GPT-2's ``Conv1D`` stores
its weight as (d_in, d_out): ``Linear`` hides the transpose.
"""
from __future__ import annotations

from dataclasses import dataclass

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
            f"model: {type(model).__name__} has no decoder blocks (a ModuleList of identical blocks with linear layers); "
            "supported: Llama/Mistral/Qwen2/Gemma, OPT, GPT-2 style causal LMs"
        )
    return best


def block_linears(block: nn.Module) -> dict[str, Linear]:
    """Prunable linears of one block, in module order, by name relative to the block."""
    return {name: Linear(name, m) for name, m in block.named_modules() if name and is_linear(m)}


def embedding_module(model: nn.Module) -> nn.Module:
    return model.get_input_embeddings()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
