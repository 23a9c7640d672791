"""The engine's in-memory state, owned by one explicit object instead of module globals.

An ``Engine`` holds what one process keeps between runs:

* ``models``        -- loaded ``(model, tokenizer, fingerprint)`` per (model id, device, dtype);
                       ``pruning.api.get_model`` fills it, holding ``load_lock`` for the whole load (the first
                       conversion of the embedded model takes ~30 s).
* ``dense``         -- dense-baseline results (perplexity, generations) per model + evaluation config
                       (``pruning.api.dense_baseline``; they are also written to disk).
* ``documents``     -- documents of a text source split (``pruning.data.load_documents``).
* ``token_ids``     -- token ids of a split per tokenizer (``pruning.data``).
* ``tokenizer_ids`` -- the behaviour hash of each tokenizer object (``pruning.data.tokenizer_identity``).

``DEFAULT`` is the process's engine; ``pruning.api``, ``pruning.data`` and ``pruning.jobs`` use it. Tests call
``DEFAULT.clear()`` (or ``clear(models=False)``) instead of reaching into module globals. The cost model's learned
state lives with the cost model (``pruning.cost_model``). This module only holds state: it imports no torch and
no other layer of the engine.
"""
from __future__ import annotations

import threading

from .lru import LRU


class Engine:
    def __init__(self, max_documents: int = 8, max_token_ids: int = 64, max_dense: int = 256,
                 max_tokenizers: int = 64):
        self.load_lock = threading.RLock()
        self.models: dict[tuple, tuple] = {}
        self.dense: LRU = LRU(max_dense)
        self.documents: LRU = LRU(max_documents)
        self.token_ids: LRU = LRU(max_token_ids)
        self.tokenizer_ids: LRU = LRU(max_tokenizers)

    def loaded_model(self, model_id: str, device, dtype):
        """The model if ``pruning.api.get_model`` already loaded it, else None. Takes no lock: a dict lookup is atomic, and a
        model still loading is simply not there yet (an estimate must not wait for a ~30 s conversion)."""
        hit = self.models.get((model_id, str(device), str(dtype)))
        return hit[0] if hit else None

    def clear(self, models: bool = True) -> None:
        """Forget every cached text, token id and dense baseline (and, with ``models``, the loaded models)."""
        for cache in (self.dense, self.documents, self.token_ids, self.tokenizer_ids):
            cache.clear()
        if models:
            with self.load_lock:
                self.models.clear()


DEFAULT = Engine()
