"""Solver registry, the layer problem and the result types shared by every solver.

A solver is a pure function ``(problem, pattern, sparsity, opts, ctx) -> SolverOutput``: no model, no
hooks, no I/O, no printing.  Each one registers under a name with its options and their defaults
declared once (the CLI and the UI build their controls from this).

Three kinds:
* ``mask``   -- chooses a mask, keeps surviving weights unchanged (magnitude, Wanda, RIA, SparseFW);
               may be followed by any fixed-mask weight update from ``UPDATES`` (composition);
* ``update`` -- chooses the mask and updates the weights (SparseGPT, ADMM);
* ``block``  -- couples several linears of a decoder block (SparseLLM); the pipeline gathers a
               :class:`BlockProblem` (plain tensors: weights, Grams, the FFN's input/output activations)
               and calls its ``block_fn``; ``fn`` is what it does for a lone layer.

Options are validated once, here (``SolverSpec.resolve`` / ``split_options``): a solver's ``fn`` receives
them resolved (every declared option present, already checked) and never validates them again. Call
``spec.run(...)`` to get the validation and the "needs a Gram" check for a direct call.

Each registration may also declare ``cost``: a pure function ``(d_out, d_in, opts) -> dict`` of operation
counts (see ``pruning.cost_model``, which turns counts into seconds with this machine's rates). A solver
without one gets "no estimate", never another solver's cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import InputError, NumericalError  # noqa: F401  (re-exported)

SOLVE_DTYPE = torch.float32


class SolverError(InputError):
    """Bad solver name, option or input; the message names the field and what is allowed."""


def validate_sparsity(sparsity: float, field_name: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1), or SolverError naming the field."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SolverError(f"{field_name}: expected a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0):
        raise SolverError(f"{field_name}: {sparsity!r} is outside the allowed range [0, 1)")
    return s


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
class BlockProblem:
    """What a block solver (kind 'block') receives for one decoder block's FFN: plain tensors only.

    W[name]: (d_out, d_in) float32 dense weights of the FFN linears (copies; the solver may not write the block);
    bias[name]: (d_out,) float32 or None; grams[name]: (d_in, d_in) float32 dense input Gram Σ x xᵀ (all
    calibration tokens); X: (T, hidden) float32 FFN input, Y: (T, hidden) float32 dense FFN output, on T tokens
    (an evenly spaced subset of ``total_tokens`` above the solver's cap); ffn: the roles and the activation
    (a ``pruning.blocks.FFN``: ``kind`` 'gated'|'relu', ``roles`` {role: name}, ``act``, ``names``, ``first``,
    ``last``; the solver reads only these attributes, so it needs nothing from the model side).
    """

    W: dict[str, torch.Tensor]
    bias: dict[str, torch.Tensor | None]
    grams: dict[str, torch.Tensor]
    X: torch.Tensor
    Y: torch.Tensor
    ffn: Any
    total_tokens: int = 0
    index: int = 0  # block index (for messages)
    check_cancel: Callable[[], None] = lambda: None


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
    """A registered solver or update.

    ``needs``: what the pipeline must gather besides the Grams, e.g. ("ffn_io",) for a block solver that needs
    the FFN input X and output Y (capped at the solver's ``max_tokens`` option if it declares one). ``cost``: pure
    ``(d_out, d_in, opts, *, sparsity, device) -> operation counts`` of one layer (see ``pruning.cost_model``), or
    None (no estimate); it may ignore the keyword arguments (declare ``**_``). ``block_fn(problem: BlockProblem, pattern, sparsity, opts,
    ctx) -> {name: SolverOutput}`` for kind 'block'.
    """

    name: str
    fn: Callable[..., SolverOutput]
    kind: str  # 'mask' | 'update' | 'block'
    needs_gram: bool
    options: tuple[Option, ...]
    summary: str = ""
    paper: str = ""
    block_fn: Callable[..., Any] | None = None
    needs: tuple[str, ...] = ()
    cost: Callable[..., dict] | None = None
    lone_layer: str = ""  # what ``fn`` does for a lone layer, for messages (block solvers), e.g. "SparseGPT"

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def resolve(self, options: dict, *, strict: bool = True, what: str = "solver") -> dict:
        """Validated options: defaults filled in; with strict, unknown keys raise (naming the allowed ones)."""
        known = {o.name: o for o in self.options}
        if strict:
            unknown = sorted(set(options) - set(known))
            if unknown:
                allowed = ", ".join(known) or "(none)"
                raise SolverError(f"options: {unknown} not accepted by {what} {self.name!r}; allowed: {allowed}")
        return {o.name: (o.validate(options[o.name], self.name) if o.name in options else o.default) for o in self.options}

    def run(self, problem: LayerProblem, *args, options: dict | None = None, ctx: SolveContext | None = None) -> SolverOutput:
        """``fn`` with validated options and the Gram check, for a direct call: a solver takes
        ``(problem, pattern, sparsity)``, an update ``(problem, keep)``."""
        opts = self.resolve(dict(options or {}))
        if self.needs_gram and problem.G is None:
            raise SolverError(f"gram: {self.name!r} needs calibration statistics (the Gram X Xᵀ); got None")
        return self.fn(problem, *args, opts, ctx or SolveContext())

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
        return self.get(name).resolve(options, strict=strict, what=self.what)


SOLVERS = Registry("solver")
UPDATES = Registry("update")


def split_options(solver: str, update: str, options: dict) -> tuple[dict, dict]:
    """Validate ``options`` against the solver's and the update's declared options (a name may serve both);
    returns (solver options, update options), resolved."""
    s_spec, u_spec = SOLVERS.get(solver), UPDATES.get(update)
    s_names = {o.name for o in s_spec.options}
    u_names = {o.name for o in u_spec.options} if update != "none" else set()
    unknown = sorted(set(options) - s_names - u_names)
    if unknown:
        allowed = sorted(s_names | u_names)
        raise SolverError(
            f"options: {unknown} not accepted by solver {solver!r}"
            + (f" with update {update!r}" if update != "none" else "")
            + f"; allowed: {', '.join(allowed) or '(none)'}"
        )
    s_opts = s_spec.resolve({k: v for k, v in options.items() if k in s_names})
    u_opts = u_spec.resolve({k: v for k, v in options.items() if k in u_names}, what="update")
    return s_opts, u_opts


@UPDATES.register("none", kind="update", needs_gram=False, summary="Keep surviving weights unchanged (mask only).",
                  cost=lambda d_out, d_in, opts, **_: {})
def no_update(p: LayerProblem, keep: torch.Tensor, opts: dict, ctx: SolveContext) -> SolverOutput:
    return SolverOutput(weight=p.W * keep, mask=keep)
