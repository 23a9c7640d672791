"""Typed progress events. The pipeline emits them; the UI, the CLI progress bar and the logs consume them.

Every event is a frozen dataclass of plain numbers and strings (picklable, JSON-able via ``to_dict``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    def to_dict(self) -> dict:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class JobStarted(Event):
    n_blocks: int
    n_layers: int
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PhaseStarted(Event):
    phase: str  # 'load', 'dense-eval', 'calibrate', 'prune', 'pruned-eval', 'generate'
    detail: str = ""


@dataclass(frozen=True)
class BlockStarted(Event):
    block: int
    n_blocks: int


@dataclass(frozen=True)
class LayerSolved(Event):
    block: int
    name: str  # e.g. 'self_attn.q_proj'
    rel_error: float
    seconds: float
    sparsity: float


@dataclass(frozen=True)
class IterationDone(Event):
    """One solver iteration (ADMM, SparseFW, SparseLLM epochs); ``values`` is the trace record."""

    block: int
    name: str
    iteration: int
    values: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BlockDone(Event):
    block: int
    n_blocks: int
    seconds: float


@dataclass(frozen=True)
class WarningEvent(Event):
    message: str


@dataclass(frozen=True)
class Evaluated(Event):
    which: str  # 'dense' | 'pruned'
    split: str
    ppl: float
    seconds: float = 0.0


@dataclass(frozen=True)
class EvalProgress(Event):
    """The running perplexity of an evaluation after ``done`` of its ``total`` windows: exp(mean window loss so far);
    equal to the final ``Evaluated.ppl`` at done = total (the number appears early and settles)."""

    which: str  # 'dense' | 'pruned'
    done: int
    total: int
    ppl: float


@dataclass(frozen=True)
class GenerationProgress(Event):
    """A greedy continuation as it grows, token by token: ``text`` is everything generated so far for prompt number
    ``index`` (``which``: 'dense' | 'pruned'); ``done`` on the last token. ``Generated`` still follows with both."""

    which: str
    index: int
    prompt: str
    text: str
    done: bool = False


@dataclass(frozen=True)
class Generated(Event):
    prompt: str
    dense: str
    pruned: str


@dataclass(frozen=True)
class JobFinished(Event):
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobFailed(Event):
    """The job stopped on an error. ``kind``: 'input' (the request was wrong; ``message`` names the field),
    'numerical' (the maths failed on these numbers) or 'internal' (a bug; the message keeps the class name).
    See ``pruning.errors``."""

    message: str
    kind: str = "internal"


@dataclass(frozen=True)
class JobCancelled(Event):
    reason: str = "cancelled by the user"


class Cancelled(Exception):
    """Raised inside the pipeline when the cancel event is set; the dense model is restored."""


def from_dict(d: dict[str, Any]) -> Event:
    kind = d["type"]
    cls = {c.__name__: c for c in Event.__subclasses__()}[kind]
    return cls(**{k: v for k, v in d.items() if k != "type"})
