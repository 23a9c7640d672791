"""Run configuration: frozen, validated dataclasses with a stable, hashable ``key()``.

Validation happens once, in ``__post_init__``, with messages that name the field and the allowed values,
so bad input is rejected before any model is loaded or any weight touched.

Also here, so that the CLI and the app share them: the device-dependent run sizes (``CalibConfig.for_device``,
``EvalConfig.for_device``), the method name ``'solver+update'`` (``method_label``/``parse_method``) and the
expansion of a sweep into configs (``sweep_configs``).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

from .assets import DEFAULT_MODEL
from .errors import InputError
from .patterns import parse_pattern
from .solvers import SOLVERS, UPDATES, SolverError

SCHEMA_VERSION = 1
DEFAULT_PROMPTS = ("The capital of France is", "Once upon a time, there was a little girl who")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OFFLOAD_MODES = ("none", "cpu", "disk")  # where the decoder blocks live while pruning (pruning.offload)
RUN_ONLY_FIELDS = ("offload", "offload_folder")  # how a run is executed; never part of key(): results are identical
CALIB_SOURCES = ("wiki-sample", "pydoc", "wikitext2", "c4")  # named text sources (also: a file path, text:...)
CALIB_SAMPLINGS = ("document", "stream")  # = pruning.data.SAMPLINGS (kept torch-free here)
# run sizes: (calibration windows, tokens per window, evaluation windows with 0 = all)
CPU_SIZES = (16, 512, 16)  # the library's and the CLI's CPU default (benchmarks/RESULTS.md §7 tables)
GPU_SIZES = (128, 2048, 0)  # the papers' setting
# the app's CPU default, sized for a visitor on a 2-vCPU Space: SparseGPT 50 % on SmolLM2 in under a minute, with the
# same perplexity ranking of magnitude / Wanda / SparseGPT / ADMM-Grad as CPU_SIZES (benchmarks/RESULTS.md §10b)
INTERACTIVE_SIZES = (4, 512, 8)


def _sizes(device) -> tuple[int, int, int]:
    from .device import is_accelerator  # lazy: the sizes are the only device question a config asks

    return GPU_SIZES if is_accelerator(device) else CPU_SIZES


def app_sizes(device="auto") -> tuple[int, int, int]:
    """The app's default run sizes on ``device``: the papers' on an accelerator, ``INTERACTIVE_SIZES`` on a CPU."""
    return INTERACTIVE_SIZES if _sizes(device) is CPU_SIZES else GPU_SIZES


class ConfigError(InputError):
    """Invalid configuration; the message names the field and the allowed values."""


def _check_source(field_name: str, source) -> None:
    """A text source's form, checked without loading anything: ``hf:NAME[:CONFIG]:SPLIT:COLUMN`` well formed
    (``pruning.data.parse_hf_source``). Whether the text exists is checked when it is loaded."""
    if str(source).startswith("hf:"):
        from .data import DataError, parse_hf_source

        try:
            parse_hf_source(source, field_name)
        except DataError as e:
            raise ConfigError(str(e)) from None


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{name}: {value!r} is out of range; allowed: {lo}..{hi if hi is not None else 'any'}")
    return v


@dataclass(frozen=True)
class CalibConfig:
    """Calibration windows: ``nsamples`` random windows of ``seqlen`` tokens drawn with ``seed``.

    source: 'wiki-sample' (embedded Wikipedia, calibration split), 'wikitext2', 'c4', 'pydoc', or a path to a
    UTF-8 text file.
    """

    source: str = "wiki-sample"
    nsamples: int = CPU_SIZES[0]
    seqlen: int = CPU_SIZES[1]
    seed: int = 0
    sampling: str = "document"  # 'document' (a window inside one drawn document) or 'stream' (anywhere in the split)

    @classmethod
    def for_device(cls, device="auto", **changes) -> "CalibConfig":
        """The default calibration for ``device`` ('auto', 'cpu', 'cuda', ...): 16 × 512 tokens on a CPU, the papers'
        128 × 2048 on a GPU; ``changes`` override single fields (None values are ignored)."""
        n, seqlen, _ = _sizes(device)
        return cls(**{"nsamples": n, "seqlen": seqlen, **{k: v for k, v in changes.items() if v is not None}})

    def __post_init__(self):
        object.__setattr__(self, "nsamples", _check_int("nsamples", self.nsamples, 1, 100_000))
        object.__setattr__(self, "seqlen", _check_int("seqlen", self.seqlen, 8, 1 << 17))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0))
        if not str(self.source).strip():
            raise ConfigError(f"calib: empty source; allowed: {', '.join(CALIB_SOURCES)}, or a text file path")
        _check_source("calib.source", self.source)
        if self.sampling not in CALIB_SAMPLINGS:
            raise ConfigError(f"sampling: {self.sampling!r} is not a window sampling; allowed: {', '.join(CALIB_SAMPLINGS)}")


@dataclass(frozen=True)
class EvalConfig:
    """Perplexity: non-overlapping ``seqlen`` windows of the evaluation split, tail dropped; ``windows``=0: all."""

    source: str = "wiki-sample"
    windows: int = CPU_SIZES[2]
    seqlen: int = CPU_SIZES[1]
    zeroshot: tuple = ()        # lm-eval tasks, dense and pruned (pruning.zeroshot); () = none
    zeroshot_limit: int = 100   # items per zero-shot task; 0 = all
    kl: bool = False            # KL(dense ‖ pruned) and top-1 agreement over the evaluation windows

    @classmethod
    def for_device(cls, device="auto", **changes) -> "EvalConfig":
        """The default evaluation for ``device``: 16 windows of 512 tokens on a CPU, every window of 2048 tokens on
        a GPU; ``changes`` override single fields (None values are ignored)."""
        _, seqlen, windows = _sizes(device)
        return cls(**{"windows": windows, "seqlen": seqlen, **{k: v for k, v in changes.items() if v is not None}})

    def __post_init__(self):
        object.__setattr__(self, "windows", _check_int("eval_windows", self.windows, 0, 1_000_000))
        object.__setattr__(self, "seqlen", _check_int("eval_seqlen", self.seqlen, 8, 1 << 17))
        _check_source("eval.source", self.source)
        from .zeroshot import parse_tasks  # torch-free

        try:
            tasks = parse_tasks(self.zeroshot)
        except (TypeError, ValueError):
            raise ConfigError(f"zeroshot: expected task names such as 'wiki-lastword', got {self.zeroshot!r}") from None
        object.__setattr__(self, "zeroshot", tuple(tasks))
        object.__setattr__(self, "zeroshot_limit", _check_int("zeroshot_limit", self.zeroshot_limit, 0, 1_000_000))
        if not isinstance(self.kl, bool):
            raise ConfigError(f"kl: expected true/false, got {self.kl!r}")

    def key_dict(self) -> dict:
        """The fields that change a result; the optional extras only when asked for, so configs written before
        they existed keep their keys (and their stored results)."""
        d = asdict(self)
        d["zeroshot"] = list(self.zeroshot)
        for name, default in (("zeroshot", []), ("zeroshot_limit", 100), ("kl", False)):
            if d[name] == default or (name == "zeroshot_limit" and not self.zeroshot):
                d.pop(name)
        return d


def _option_pairs(options) -> dict:
    """Solver/update options as a dict: from a dict or (name, value) pairs; anything else is a ConfigError."""
    if isinstance(options, dict):
        items = options
    else:
        try:
            items = dict(options)
        except (TypeError, ValueError):
            raise ConfigError(f"options: expected an object {{option name: value}} such as {{\"iters\": 20}}, "
                              f"got {str(options)[:80]!r}") from None
    bad = [k for k in items if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"options: option names must be text; got {bad[0]!r}")
    return dict(items)


def _prompts(prompts) -> tuple:
    """Prompts as a tuple of strings: one string is one prompt; numbers are written as text; nothing else."""
    if isinstance(prompts, str):
        return (prompts,)
    try:
        items = list(prompts)
    except TypeError:
        raise ConfigError(f"prompts: expected a list of texts, got {type(prompts).__name__}") from None
    for p in items:
        if isinstance(p, bool) or not isinstance(p, (str, int, float)):
            raise ConfigError(f"prompts: expected a list of texts; one item is a {type(p).__name__} ({str(p)[:40]!r})")
    return tuple(str(p) for p in items)


@dataclass(frozen=True)
class PruneConfig:
    model: str = DEFAULT_MODEL
    solver: str = "sparsegpt"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    update: str = "none"
    options: tuple = ()  # sorted ((name, value), ...) -- validated against the registry
    calib: CalibConfig = field(default_factory=CalibConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 forwards where the device computes bf16 natively, else fp32 (device.resolve_dtype)
    true_sequential: bool = False
    batch_size: int = 8
    prompts: tuple = DEFAULT_PROMPTS
    max_new_tokens: int = 24
    allocation: str = "uniform"  # per-layer sparsity targets: uniform, owl, curve (pruning.allocation)
    owl_m: float = 5.0           # OWL: outlier threshold, a multiple of the mean Wanda score
    owl_lambda: float = 0.08     # OWL: spread of the block sparsities (width 2λ)
    offload: str = "none"        # decoder blocks on 'cpu' or 'disk' (accelerate), onloaded one at a time; not in key()
    offload_folder: str = ""     # disk offload: root folder for the pruned blocks ('' = cache_dir()/offload)

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver: unknown solver {self.solver!r}; allowed: {', '.join(SOLVERS.names())}")
        if self.update not in UPDATES:
            raise ConfigError(f"update: unknown update {self.update!r}; allowed: {', '.join(UPDATES.names())}")
        if self.update != "none" and SOLVERS.get(self.solver).kind != "mask":
            raise ConfigError(
                f"update: {self.update!r} re-fits weights after a mask solver; solver {self.solver!r} already updates "
                f"weights. Use update 'none', or one of the mask solvers: "
                f"{', '.join(s.name for s in SOLVERS if s.kind == 'mask')}"
            )
        try:
            pat = parse_pattern(self.pattern)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        object.__setattr__(self, "pattern", str(pat))
        try:
            s = float(self.sparsity)
        except (TypeError, ValueError):
            raise ConfigError(f"sparsity: expected a number in [0, 1), got {self.sparsity!r}") from None
        if not (math.isfinite(s) and 0.0 <= s < 1.0):
            raise ConfigError(f"sparsity: {self.sparsity!r} is outside the allowed range [0, 1)")
        if pat.is_nm:
            s = pat.n / pat.m  # N:M fixes the sparsity
        object.__setattr__(self, "sparsity", round(s, 6))
        opts = _option_pairs(self.options)
        from .solve import split_options

        try:
            s_opts, u_opts = split_options(self.solver, self.update, dict(opts))
        except SolverError as e:
            raise ConfigError(str(e)) from None
        # keep only explicitly given options (validated values), sorted, so keys are canonical
        merged = {**s_opts, **u_opts}
        object.__setattr__(self, "options", tuple(sorted((k, merged[k]) for k in opts)))
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"device: {self.device!r} not allowed; allowed: {', '.join(DEVICES)} or cuda:N")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} not allowed; allowed: {', '.join(DTYPES)}")
        object.__setattr__(self, "batch_size", _check_int("batch_size", self.batch_size, 1, 4096))
        object.__setattr__(self, "max_new_tokens", _check_int("max_new_tokens", self.max_new_tokens, 0, 2048))
        object.__setattr__(self, "prompts", _prompts(self.prompts))
        for name, cls in (("calib", CalibConfig), ("eval", EvalConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                unknown = [str(k) for k in value if k not in cls.__dataclass_fields__]
                if unknown:
                    raise ConfigError(f"{name}: unknown field {', '.join(map(repr, unknown[:5]))}; "
                                      f"allowed fields: {', '.join(cls.__dataclass_fields__)}")
                object.__setattr__(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise ConfigError(f"{name}: expected an object with fields {', '.join(cls.__dataclass_fields__)}; "
                                  f"got {type(value).__name__}")
        self._check_allocation()
        self._check_offload()

    def _check_offload(self) -> None:
        mode = str(self.offload).strip().lower()
        if mode not in OFFLOAD_MODES:
            raise ConfigError(f"offload: {self.offload!r} not allowed; allowed: {', '.join(OFFLOAD_MODES)}")
        object.__setattr__(self, "offload", mode)
        folder = "" if self.offload_folder is None else str(self.offload_folder)
        if folder and mode != "disk":
            raise ConfigError(f"offload_folder: only used with offload 'disk' (offload is {mode!r}); set offload to "
                              "'disk' or leave the folder empty")
        object.__setattr__(self, "offload_folder", folder)
        if mode != "none" and (self.eval.kl or self.eval.zeroshot):
            raise ConfigError("offload: KL drift and zero-shot tasks compare the dense and the pruned model side by "
                              "side, which an offloaded run does not keep; turn kl / zeroshot off, or use offload "
                              "'none'")

    @property
    def option_dict(self) -> dict:
        return dict(self.options)

    def solver_options(self) -> tuple[dict, dict]:
        """(solver options, update options) with defaults filled in."""
        from .solve import split_options

        return split_options(self.solver, self.update, self.option_dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = dict(self.options)
        d["prompts"] = list(self.prompts)
        d["eval"]["zeroshot"] = list(self.eval.zeroshot)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PruneConfig":
        """The inverse of ``to_dict`` (missing fields take their defaults); ``__post_init__`` coerces the nested
        dicts and lists, so there is one conversion path."""
        return cls(**d)

    def key(self) -> str:
        """Stable hash of the canonical JSON of everything that changes the result (+ schema version)."""
        d = self.to_dict()
        d["eval"] = self.eval.key_dict()
        for name in RUN_ONLY_FIELDS:  # where the weights live does not change the result
            d.pop(name)
        if self.calib.sampling == "document":  # configs written before the option existed keep their keys
            d["calib"].pop("sampling")
        if self.allocation == "uniform":  # configs written before allocations existed keep their keys
            for name in ("allocation", "owl_m", "owl_lambda"):
                d.pop(name)
        elif self.allocation != "owl":
            d.pop("owl_m"), d.pop("owl_lambda")
        blob = json.dumps({"v": SCHEMA_VERSION, **d}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def replace(self, **changes) -> "PruneConfig":
        return replace(self, **changes)

    def _check_allocation(self) -> None:
        from .allocation import AllocationError, check_allocation  # torch only at call time

        for name in ("owl_m", "owl_lambda"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name}: expected a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        try:
            check_allocation(self.allocation, self.sparsity, self.pattern, self.owl_m, self.owl_lambda)
        except AllocationError as e:
            raise ConfigError(str(e)) from None
        if self.allocation != "uniform" and SOLVERS.get(self.solver).kind == "block":
            raise ConfigError(f"allocation: {self.allocation!r} sets a sparsity per layer, but {self.solver!r} prunes a "
                              f"block's FFN jointly at one sparsity; use allocation 'uniform' with {self.solver!r}")

    @property
    def method(self) -> str:
        """'solver' or 'solver+update' (e.g. 'wanda+admm'): the method's name everywhere it is shown."""
        return method_label(self.solver, self.update)

    def label(self) -> str:
        return f"{self.method} {self.pattern} {self.sparsity:.0%}"


def method_label(solver: str | dict, update: str | None = None) -> str:
    """'solver' or 'solver+update'. Accepts the two names, or a config dict / report dict (``{"config": {...}}``)."""
    if isinstance(solver, dict):
        d = solver.get("config", solver)
        solver, update = d.get("solver", "?"), d.get("update", "none")
    return f"{solver}+{update}" if update and update != "none" else str(solver)


def parse_method(method: str, field_name: str = "solver") -> tuple[str, str]:
    """'wanda' -> ('wanda', 'none'); 'wanda+admm' -> ('wanda', 'admm'). Checks both names and that a '+update'
    follows a mask solver only; raises ConfigError naming ``field_name``."""
    solver, _, update = str(method).partition("+")
    solver, update = solver.strip(), update.strip() or "none"
    if solver not in SOLVERS:
        raise ConfigError(f"{field_name}: unknown solver {solver!r} in {method!r}; allowed: {', '.join(SOLVERS.names())}")
    if update not in UPDATES:
        raise ConfigError(f"{field_name}: unknown update {update!r} in {method!r}; allowed: {', '.join(UPDATES.names())}")
    if update != "none" and SOLVERS.get(solver).kind != "mask":
        raise ConfigError(f"{field_name}: {method!r} is not allowed: {solver!r} already updates the weights, so it takes "
                          f"no '+update'; an update may follow a mask solver: {', '.join(mask_solvers())}")
    return solver, update


def mask_solvers() -> list[str]:
    """Names of the solvers that choose a mask only (an update may follow them)."""
    return [s.name for s in SOLVERS if s.kind == "mask"]


def declared_options(solver: str, update: str = "none") -> set[str]:
    """Option names the solver (and the update) declare in the registry."""
    names = {o.name for o in SOLVERS.get(solver).options}
    return names | ({o.name for o in UPDATES.get(update).options} if update != "none" else set())


def sweep_configs(base: PruneConfig, solvers: Iterable[str], sparsities: Iterable[float], patterns: Iterable[str],
                  updates: Iterable[str] = ("none",), *, options: dict | None = None) -> list[PruneConfig]:
    """A sweep: every method × pattern × sparsity, as configs that differ from ``base`` in those fields only.

    solvers:    names; an entry may carry its own update ('wanda+admm', a mask solver only).
    updates:    the updates tried after each mask solver written without '+' ('none' = the mask alone); a solver
                that updates the weights itself runs once, with update 'none'.
    options:    solver/update options (e.g. from CLI flags); each config keeps those its solver and update declare,
                on top of ``base.options`` (filtered the same way).
    N:M fixes the sparsity, so '2:4' at 0.5 and 0.7 is one run: configs are de-duplicated by ``key()``, first
    occurrence kept, order = solvers, updates, patterns, sparsities. Raises ConfigError naming the field
    (solvers, updates, patterns, sparsities).
    """
    solvers, patterns, sparsities = list(solvers), list(patterns), list(sparsities)
    updates = list(updates) or ["none"]
    if not solvers:
        raise ConfigError(f"solvers: pick at least one; allowed: {', '.join(SOLVERS.names())}")
    if not patterns:
        raise ConfigError("patterns: pick at least one; allowed: unstructured, per-row, N:M such as 2:4")
    if not sparsities:
        raise ConfigError("sparsities: pick at least one; allowed: numbers in [0, 1) such as 0.5")
    unknown = [u for u in updates if u not in UPDATES]
    if unknown:
        raise ConfigError(f"updates: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(UPDATES.names())}")
    given = {**base.option_dict, **(options or {})}
    methods = []
    for entry in solvers:
        solver, update = parse_method(entry, "solvers")
        if "+" in str(entry) or SOLVERS.get(solver).kind != "mask":
            methods.append((solver, update))
        else:
            methods += [(solver, u) for u in updates]
    out, seen = [], set()
    for solver, update in methods:
        declared = declared_options(solver, update)
        opts = {k: v for k, v in given.items() if k in declared}
        for pattern in patterns:
            for s in sparsities:
                try:
                    cfg = base.replace(solver=solver, update=update, pattern=pattern, sparsity=s, options=opts)
                except ConfigError as e:  # name the sweep's field: 'patterns' / 'sparsities', not 'pattern'
                    text = str(e)
                    for one, many in (("pattern", "patterns"), ("sparsity", "sparsities")):
                        if text.startswith(one + ":"):
                            text = many + text[len(one):]
                    raise ConfigError(text) from None
                if cfg.key() not in seen:
                    seen.add(cfg.key())
                    out.append(cfg)
    return out


# -- what one visitor of the app may ask (pruning.settings.LIMITS; the CLI and the API are not limited) ----------
_PATH_SOURCES = ("wikitext2:", "c4:", "file:")


def _source_path(source: str) -> str | None:
    """The local path a text source reads, or None (named sources, pasted text)."""
    src = str(source).strip()
    if src.startswith("text:") or src.lower() in CALIB_SOURCES:
        return None
    for prefix in _PATH_SOURCES:
        if src.lower().startswith(prefix):
            return src[len(prefix):].strip() or None
    return src


def check_visitor(config: PruneConfig, environ=None) -> PruneConfig:
    """Refuse what a visitor of the web app may not ask: sizes over this server's limits (``pruning.settings``
    ``PRUNING_LAB_MAX_*``, defaults sized to the device) and, in public mode, models and text files outside the
    operator's allow-lists. Raises ConfigError naming the field, the limit and its variable; returns ``config``."""
    import os

    from . import settings

    try:
        from .device import is_accelerator

        acc = is_accelerator(config.device)
    except ValueError:
        acc = False  # the device itself is refused later, with its own message
    lim = lambda name: settings.limit(name, acc, environ)  # noqa: E731
    c, e = config.calib, config.eval
    if c.seqlen > lim("seqlen"):
        raise ConfigError(f"seqlen: {settings.limit_message('seqlen', c.seqlen, lim('seqlen'))}")
    if e.seqlen > lim("seqlen"):
        raise ConfigError(f"eval_seqlen: {settings.limit_message('seqlen', e.seqlen, lim('seqlen'))}")
    if c.nsamples * c.seqlen > lim("calib_tokens"):
        raise ConfigError(f"nsamples: {c.nsamples} × {c.seqlen} = "
                          f"{settings.limit_message('calib_tokens', f'{c.nsamples * c.seqlen:,}', lim('calib_tokens'))}")
    if e.windows > lim("eval_windows"):
        raise ConfigError(f"eval_windows: {settings.limit_message('eval_windows', e.windows, lim('eval_windows'))}; "
                          f"0 (all the split's windows) is also allowed")
    if len(config.prompts) > lim("prompts"):
        raise ConfigError(f"prompts: {settings.limit_message('prompts', len(config.prompts), lim('prompts'))}")
    for p in config.prompts:
        if len(p) > lim("prompt_chars"):
            raise ConfigError(f"prompts: a prompt of {len(p):,} characters; "
                              f"{settings.limit_message('prompt_chars', len(p), lim('prompt_chars'))}")
    if config.max_new_tokens > lim("new_tokens"):
        raise ConfigError(f"max_new_tokens: {settings.limit_message('new_tokens', config.max_new_tokens, lim('new_tokens'))}")
    public = settings.public_mode(environ)
    for field_name, src in (("calib", c.source), ("eval", e.source)):
        src = str(src)
        if src.startswith("text:") and len(src) - 5 > lim("text_chars"):
            raise ConfigError(f"{field_name}: pasted text of {len(src) - 5:,} characters; "
                              f"{settings.limit_message('text_chars', len(src) - 5, lim('text_chars'))}")
        path = _source_path(src)
        if path is None:
            continue
        if public and not settings.is_under(path, settings.text_dirs(environ)):
            roots = ", ".join(map(str, settings.text_dirs(environ))) or "none configured"
            raise ConfigError(f"{field_name}: text files are not served on this public server outside "
                              f"{settings.TEXT_DIRS_ENV} ({roots}); allowed: {', '.join(CALIB_SOURCES[:2])}, "
                              f"or 'text:' + pasted text")
        try:
            size = os.path.getsize(os.path.expanduser(path))
        except (OSError, ValueError):
            continue  # not a file: the data layer says what it is
        if size > lim("text_chars"):
            raise ConfigError(f"{field_name}: a text file of {size:,} bytes; "
                              f"{settings.limit_message('text_chars', f'{size:,}', lim('text_chars'))}")
    if public:
        from .models import check_public_model

        check_public_model(config.model, environ)
    return config


def check_sweep_size(n: int, environ=None, device="auto") -> None:
    """A sweep of ``n`` runs over ``PRUNING_LAB_MAX_SWEEP`` is refused (ConfigError naming ``sweep``)."""
    from . import settings

    try:
        from .device import is_accelerator

        acc = is_accelerator(device)
    except ValueError:
        acc = False
    cap = settings.limit("sweep", acc, environ)
    if n > cap:
        raise ConfigError(f"sweep: {n} runs requested; allowed: at most {cap} per sweep (this server's limit, "
                          f"{settings.LIMITS['sweep'].env})")


# -- memory: refuse a job that would not fit before it starts ------------------------------------------------------
def job_memory_bytes(config: PruneConfig, n_params: int, hidden: int, vocab: int, max_d_in: int,
                     param_bytes: int, loaded: bool = True) -> int:
    """A job's peak memory beyond what is already loaded: the pruned copy of the model (+ the dense one if not yet
    loaded), the calibration activations entering a block and leaving it (forward dtype), the block's Grams (float32,
    at most three distinct inputs) with one float32 copy of the widest weight per solver workspace, and the logits
    of one evaluation batch."""
    act_bytes = 4 if config.dtype in ("auto", "float32") else 2
    model = n_params * param_bytes * (1 if loaded else 2)
    acts = 2 * config.calib.nsamples * config.calib.seqlen * hidden * act_bytes
    grams = 3 * max_d_in * max_d_in * 4 + 4 * max_d_in * max(hidden, max_d_in) * 4
    logits = config.batch_size * max(config.eval.seqlen, config.calib.seqlen) * vocab * 4
    return int(model + acts + grams + logits)


def check_memory(needed: int, available: int, cap: int | None = None, what: str = "memory") -> None:
    """Refuse (ConfigError naming ``memory``) a job whose estimate exceeds the memory left (or the operator's cap)."""
    from . import settings

    limit_b = available if cap is None else min(available, cap)
    if needed > limit_b:
        src = f"{settings.MEMORY_ENV}" if cap is not None and cap <= available else f"the {what} left on this machine"
        raise ConfigError(f"memory: this job needs about {needed / 2**20:,.0f} MB (model copy, activations, Grams, logits); "
                          f"the limit is {limit_b / 2**20:,.0f} MB ({src}); allowed: fewer calibration windows or tokens "
                          f"per window, a smaller batch size, or a smaller model")


def memory_available(device) -> int | None:
    """Bytes the device has left: free GPU memory (``torch.cuda.mem_get_info``) or the host's available memory
    (``MemAvailable`` of /proc/meminfo, else free pages); None when unknown."""
    import os

    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_job_memory(config: PruneConfig, model, environ=None, available: int | None = None) -> int:
    """Before a job touches anything: its memory estimate (``job_memory_bytes``) against what the model's device has
    left (and ``PRUNING_LAB_MAX_JOB_MEMORY_MB``). Raises ConfigError with the estimate and the limit; returns the
    estimate in bytes."""
    from . import settings

    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    device = params[0].device if params else "cpu"
    widths = [m.in_features for m in model.modules() if hasattr(m, "in_features") and isinstance(m.in_features, int)]
    cfg = getattr(model, "config", None)
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or (max(widths) if widths else 0))
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    needed = job_memory_bytes(config, n_params, hidden, vocab, max(widths) if widths else hidden,
                              params[0].element_size() if params else 4, loaded=True)
    free = memory_available(device) if available is None else available
    cap = settings.max_job_memory_bytes(environ)
    if free is None and cap is None:
        return needed
    check_memory(needed, free if free is not None else cap, cap,
                 "GPU memory" if str(device).startswith("cuda") else "memory")
    return needed
