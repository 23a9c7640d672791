"""Solver registry, the layer problem and the result types shared by every solver.

A solver is a pure function ``(problem, pattern, sparsity, opts, ctx) -> SolverOutput``: no model, no
hooks, no I/O, no printing.  Each one registers under a name with its options and their defaults
declared once (the CLI and the UI build their controls from this).

Three kinds:
* ``mask``   -- chooses a mask, keeps surviving weights unchanged (magnitude, Wanda, RIA, SparseFW);
               may be followed by any fixed-mask weight update from ``UPDATES`` (composition);
* ``update`` -- chooses the mask and updates the weights (SparseGPT, ADMM);
* ``block``  -- couples several linears of a decoder block (SparseLLM); the pipeline calls its
               ``block_fn``; ``fn`` is what it does for a lone layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import InputError, NumericalError  # noqa: F401  (re-exported)
from ..patterns import Pattern

SOLVE_DTYPE = torch.float32


class SolverError(InputError):
    """Bad solver name, option or input; the message names the field and what is allowed."""




@dataclass(frozen=True)
class Option:
    """One declared solver option. ``type`` is 'float', 'int', 'bool' or 'choice'."""

    name: str
    default: Any
    type: str = "float"
    help: str = ""
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    choices: tuple = ()

    def validate(self, value: Any, owner: str) -> Any:
        field_name = f"{owner}.{self.name}"
        if self.type == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise SolverError(f"{field_name}: expected true/false, got {value!r}")
            return bool(value)
        if self.type == "choice":
            if value not in self.choices:
                raise SolverError(f"{field_name}: {value!r} is not allowed; choose one of {list(self.choices)}")
            return value
        try:
            v = int(value) if self.type == "int" else float(value)
        except (TypeError, ValueError):
            raise SolverError(f"{field_name}: expected a {self.type}, got {value!r}") from None
        if self.type == "int" and float(value) != v:
            raise SolverError(f"{field_name}: expected an integer, got {value!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise SolverError(f"{field_name}: must be finite, got {value!r}")
        lo_ok = self.min is None or (v >= self.min if self.min_inclusive else v > self.min)
        if not lo_ok or (self.max is not None and v > self.max):
            lo = "" if self.min is None else (f"{'>=' if self.min_inclusive else '>'} {self.min}")
            hi = "" if self.max is None else f"<= {self.max}"
            raise SolverError(f"{field_name}: {value!r} is out of range; allowed: {' and '.join(x for x in (lo, hi) if x)}")
        return v

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "default", "type", "help", "min", "max", "choices")}


@dataclass(frozen=True)
class LayerProblem:
    """One linear layer to prune.

    W: (d_out, d_in) float32 copy of the weight (nn.Linear layout).
    G: (d_in, d_in) float32, sum over calibration tokens of x xᵀ, or None for data-free solvers.
    n_tokens: number of tokens summed into G.
    """

    W: torch.Tensor
    G: torch.Tensor | None
    n_tokens: int = 0
    name: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)  # type: ignore[return-value]


@dataclass
class SolveContext:
    """Callbacks a solver may use: per-iteration records and warnings (e.g. damping raised).

    ``memo``: a dict shared by the layers of one statistics pass (the pipeline passes one per group), where a
    solver may keep what depends only on the Gram (e.g. SparseGPT's factor of H⁻¹), keyed by ``gram_key``;
    the layers that share an input (q/k/v, gate/up) share the very same Gram tensor."""

    on_iter: Callable[[dict], None] | None = None
    on_warning: Callable[[str], None] | None = None
    memo: dict | None = None

    @staticmethod
    def gram_key(what: str, G: torch.Tensor, *params) -> tuple:
        """Key of a Gram-derived value: the tensor's identity and version (an in-place change misses)."""
        return (what, id(G), G._version, *params)

    def iteration(self, record: dict) -> None:
        if self.on_iter is not None:
            self.on_iter(record)

    def warn(self, message: str) -> None:
        if self.on_warning is not None:
            self.on_warning(message)


@dataclass
class SolverOutput:
    weight: torch.Tensor  # (d_out, d_in) float32, zeros where mask is False
    mask: torch.Tensor  # bool (d_out, d_in), True = kept
    trace: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable[..., SolverOutput]
    kind: str  # 'mask' | 'update' | 'block'
    needs_gram: bool
    options: tuple[Option, ...]
    summary: str = ""
    paper: str = ""
    reference: str = ""
    block_fn: Callable[..., Any] | None = None
    patterns: tuple[str, ...] = ("unstructured", "per-row", "nm")

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "needs_gram": self.needs_gram,
            "summary": self.summary,
            "paper": self.paper,
            "options": [o.to_dict() for o in self.options],
        }


class Registry:
    """Name -> spec. Duplicate names raise; unknown names list the valid ones."""

    def __init__(self, what: str):
        self.what = what
        self._specs: dict[str, SolverSpec] = {}

    def register(self, name: str, *, kind: str, needs_gram: bool, options: tuple[Option, ...] = (), **meta):
        def deco(fn):
            if name in self._specs:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._specs[name] = SolverSpec(name=name, fn=fn, kind=kind, needs_gram=needs_gram, options=tuple(options), **meta)
            return fn

        return deco

    def add(self, spec: SolverSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"{self.what} {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> SolverSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise SolverError(f"{self.what}: unknown {self.what} {name!r}; allowed: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __getitem__(self, name: str) -> SolverSpec:
        return self.get(name)

    def resolve_options(self, name: str, options: dict, *, strict: bool = True) -> dict:
        """Validated options for ``name``: defaults filled in. With strict, unknown keys raise."""
        spec = self.get(name)
        known = {o.name: o for o in spec.options}
        if strict:
            unknown = sorted(set(options) - set(known))
            if unknown:
                allowed = ", ".join(known) or "(none)"
                raise SolverError(f"options: {unknown} not accepted by {self.what} {name!r}; allowed: {allowed}")
        out = {}
        for o in spec.options:
            out[o.name] = o.validate(options[o.name], name) if o.name in options else o.default
        return out


SOLVERS = Registry("solver")
UPDATES = Registry("update")
