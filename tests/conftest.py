"""Shared pytest fixtures.

tiny_llama   -- (model, tokenizer): random-init 2-layer Llama (hidden 64), fresh per test (safe to prune in place).
tiny_models  -- (model, tokenizer), parametrised over every tiny family (pruning.models.TINY_FAMILIES).
smollm2      -- (model, tokenizer): the real embedded SmolLM2-135M-Instruct, fp32, CPU, eval mode; ONE instance per
                session, so tests must not modify it (prune a ``copy.deepcopy`` instead). For ``@pytest.mark.slow``.
"""
import os

# Tests never need the network: keep Hugging Face libraries offline (no connection attempts).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from pruning.models import TINY_FAMILIES, load_model, tiny_model


@pytest.fixture
def tiny_llama():
    return tiny_model("llama", seed=0)


@pytest.fixture(params=TINY_FAMILIES)
def tiny_models(request):
    return tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved as a transformers checkpoint (a local model directory, as a user gives one)."""
    from pruning.models import save_pretrained

    d = tmp_path_factory.mktemp("tiny") / "llama"
    m, t = tiny_model("llama")
    save_pretrained(m, t, d)
    return str(d)
