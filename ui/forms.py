"""Form values -> validated configs, shared by every tab. No Gradio components here, no torch at import time
beyond the engine's registry.

* ``OptionRef`` / ``option_refs``: one control per declared solver/update option, read from the registries.
* ``config_from_form`` / ``parse_config``: the Prune form (or an API dict) -> ``PruneConfig``; every problem is a
  ``ConfigError`` whose message names the field *as the page shows it* (``relabel``) and the allowed values.
* ``parse_sparsities`` / ``sweep_configs``: the Compare tab's sweep.
* The defaults every tab starts from, read from the dataclasses and the registries (never restated here).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pruning import PATTERNS, SOLVERS, UPDATES
from pruning.config import DEFAULT_MODEL, DEFAULT_PROMPTS, CalibConfig, ConfigError, EvalConfig, PruneConfig, check_visitor
from pruning.config import check_sweep_size
from pruning.config import sweep_configs as _engine_sweep_configs

from .render import finite  # noqa: F401  (re-exported: the one finite-or-None helper)


# -- defaults, from the engine's dataclasses and registries -----------------------------------------------------
DEFAULTS = PruneConfig()
CALIB_DEFAULTS = CalibConfig()
EVAL_DEFAULTS = EvalConfig()
DEFAULT_SOLVER = DEFAULTS.solver


def _sizes(t: tuple[int, int, int]) -> dict:
    return {"nsamples": t[0], "seqlen": t[1], "eval_windows": t[2], "eval_seqlen": t[1]}


def size_defaults(device: str = "auto") -> dict:
    """The calibration and evaluation sizes the forms (and an API call that leaves them out) start from on
    ``device``, as {nsamples, seqlen, eval_windows, eval_seqlen} (``pruning.config.app_sizes``): on a GPU the papers'
    128 × 2048 calibration and every evaluation window; on a CPU the app's interactive sizes ``INTERACTIVE_SIZES``
    (a quarter of the CLI's ``CPU_SIZES`` calibration, the same ranking of the methods; benchmarks/RESULTS.md §10b)."""
    from pruning.config import app_sizes

    return _sizes(app_sizes(device))


def size_presets() -> dict[str, dict]:
    """The run sizes one click away on the Prune tab: label -> {nsamples, seqlen, eval_windows, eval_seqlen}."""
    from pruning.config import CPU_SIZES, GPU_SIZES, INTERACTIVE_SIZES

    i, c, g = INTERACTIVE_SIZES, CPU_SIZES, GPU_SIZES
    return {f"Interactive ({i[0]} × {i[1]}, {i[2]} eval windows)": _sizes(i),
            f"Standard ({c[0]} × {c[1]}, {c[2]} eval windows: the CLI's CPU default)": _sizes(c),
            f"Paper ({g[0]} × {g[1]}, every eval window)": _sizes(g)}


def pattern_choices() -> list[str]:
    """The named patterns plus the N:M examples the registry lists ("N:M (e.g. 2:4, 4:8)" -> 2:4, 4:8)."""
    out = []
    for p in PATTERNS:
        out += re.findall(r"\d+:\d+", p) if ":" in p else [p]
    return out


def calib_sources() -> list[str]:
    from pruning.config import CALIB_SOURCES

    return list(CALIB_SOURCES)


def mask_solvers() -> list[str]:
    return [s.name for s in SOLVERS if s.kind == "mask"]


# -- messages in the page's words ------------------------------------------------------------------------------
# config field (the prefix of the engine's messages) -> the label the Prune tab shows for it
PRUNE_LABELS = {
    "model": "Model", "solver": "Solver", "pattern": "Pattern", "sparsity": "Sparsity",
    "update": "Weight update after the mask", "nsamples": "Calibration windows", "seqlen": "Tokens per window",
    "calib": "Text", "eval": "Text", "calib.source": "Text", "eval.source": "Text", "eval_windows": "Eval windows (0 = all)", "eval_seqlen": "Eval tokens per window",
    "device": "Device", "dtype": "Forward dtype", "max_new_tokens": "New tokens", "seed": "Seed",
    "allocation": "Allocation", "zeroshot": "Zero-shot accuracy", "eval.zeroshot": "Zero-shot accuracy",
    "kl": "KL drift vs dense", "eval.kl": "KL drift vs dense",
    "offload": "Offload decoder blocks",
}


def relabel(message: str, labels: dict[str, str]) -> str:
    """'nsamples: expected …' -> 'Calibration windows (nsamples): expected …'. The engine's messages start with the
    field's API name; the page shows another label for most fields. Where both read the same ('sparsity' /
    'Sparsity') the message is left as it is."""
    field, sep, rest = str(message).partition(": ")
    label = labels.get(field)
    if not sep or label is None or label.lower() == field.lower():
        return str(message)
    return f"{label} ({field}): {rest}"


# -- solver / update options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionRef:
    """One solver/update option control: which registry entry owns it and the declared Option."""

    kind: str  # 'solver' | 'update'
    owner: str
    option: object  # pruning.solvers.Option

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.owner}:{self.option.name}"

    @property
    def label(self) -> str:
        return self.option.name.replace("_", " ")


def option_refs() -> list[OptionRef]:
    """Every declared option of every registered solver and update, in registry order."""
    refs = [OptionRef("solver", s.name, o) for s in SOLVERS for o in s.options]
    refs += [OptionRef("update", u.name, o) for u in UPDATES if u.name != "none" for o in u.options]
    return refs


def _cast(option, value):
    if value is None:
        return option.default
    if option.type == "int":
        v = float(value)
        if not v.is_integer():
            raise ValueError(value)
        return int(v)
    if option.type == "float":
        return float(value)
    if option.type == "bool":
        return bool(value)
    return value


FORM_FIELDS = ("model", "solver", "pattern", "sparsity", "update", "nsamples", "seqlen", "calib_source",
               "eval_windows", "eval_seqlen", "device", "dtype", "prompts", "max_new_tokens", "allocation", "zeroshot", "kl",
               "offload")  # offload: shown only when the app has a GPU (else absent from the form: 'none')
ZEROSHOT_TASK = "wiki-lastword"  # the offline lm-eval task the Prune tab's checkbox runs
_NUMERIC = {"sparsity": "a number in [0, 1)", "nsamples": "a whole number", "seqlen": "a whole number",
            "eval_windows": "a whole number (0 = all)", "eval_seqlen": "a whole number", "max_new_tokens": "a whole number"}


def require_numbers(form: dict, labels: dict[str, str], fields=None) -> None:
    """An emptied number box arrives as None: say which one, in the page's words."""
    for f, what in _NUMERIC.items():
        if (fields is None or f in fields) and f in form and form[f] is None:
            raise ConfigError(f"{labels.get(f, f)}: empty; enter {what}")


def config_from_form(form: dict, option_values: list, refs: list[OptionRef]) -> PruneConfig:
    """A validated PruneConfig from the Prune tab's controls. Only options that differ from their defaults are
    kept, so the cache key is the same as for the same run started from the CLI. Raises ConfigError (messages in
    the page's words)."""
    require_numbers(form, PRUNE_LABELS)
    solver = form["solver"]
    update = form.get("update") or "none"
    if solver in SOLVERS and SOLVERS.get(solver).kind != "mask":
        update = "none"  # the update control is hidden for solvers that update weights themselves
    opts = {}
    for ref, v in zip(refs, option_values):
        if (ref.kind == "solver" and ref.owner == solver) or (ref.kind == "update" and ref.owner == update):
            try:
                val = _cast(ref.option, v)
            except (TypeError, ValueError):
                raise ConfigError(f"{ref.owner}.{ref.option.name}: expected a {ref.option.type}, got {v!r}") from None
            if val != ref.option.default:
                opts[ref.option.name] = val
    prompts = [p.strip() for p in str(form.get("prompts") or "").splitlines() if p.strip()]
    source = (form.get("calib_source") or CALIB_DEFAULTS.source).strip()
    d = {
        "model": (form.get("model") or DEFAULT_MODEL).strip(),
        "solver": solver,
        "sparsity": form["sparsity"],
        "pattern": form["pattern"],
        "update": update,
        "options": opts,
        "calib": {"source": source, "nsamples": form["nsamples"], "seqlen": form["seqlen"]},
        "eval": {"source": source, "windows": form["eval_windows"], "seqlen": form["eval_seqlen"],
                 "zeroshot": [ZEROSHOT_TASK] if form.get("zeroshot") else [], "kl": bool(form.get("kl"))},
        "allocation": form.get("allocation") or DEFAULTS.allocation,
        "device": form.get("device") or DEFAULTS.device,
        "dtype": form.get("dtype") or DEFAULTS.dtype,
        "prompts": prompts or list(DEFAULT_PROMPTS),
        "max_new_tokens": form["max_new_tokens"],
        "offload": form.get("offload") or "none",
    }
    try:
        return parse_config(d)
    except ConfigError as e:
        raise ConfigError(relabel(str(e), PRUNE_LABELS)) from None


def _with_device_sizes(config: dict) -> dict:
    """``config`` with the sizes it leaves out taken from its device (``size_defaults``), so that an API call gets the
    sizes the form shows: the papers' on a GPU, the interactive ones on a CPU."""
    calib, ev = config.get("calib"), config.get("eval")
    if (calib is not None and not isinstance(calib, dict)) or (ev is not None and not isinstance(ev, dict)):
        return config  # a CalibConfig / EvalConfig given whole, or a wrong type (PruneConfig names it)
    calib, ev = dict(calib or {}), dict(ev or {})
    if all(k in calib for k in ("nsamples", "seqlen")) and all(k in ev for k in ("windows", "seqlen")):
        return config
    dev = config.get("device") or DEFAULTS.device
    try:
        sizes = size_defaults(dev)
    except ValueError:
        return config  # an unknown device: PruneConfig says so, naming the field
    calib.setdefault("nsamples", sizes["nsamples"])
    calib.setdefault("seqlen", sizes["seqlen"])
    ev.setdefault("windows", sizes["eval_windows"])
    ev.setdefault("seqlen", sizes["eval_seqlen"])
    return {**config, "calib": calib, "eval": ev}


def parse_config(config, visitor: bool = True) -> PruneConfig:
    """dict or JSON string -> PruneConfig; every problem becomes a ConfigError naming the field. With ``visitor``
    (the app's every entry point) also this server's limits and, when served publicly, its allow-lists
    (``pruning.config.check_visitor``)."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError as e:
            raise ConfigError(f"config: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected an object with fields such as solver, sparsity, pattern; got {type(config).__name__}")
    unknown = [str(k) for k in config if k not in PruneConfig.__dataclass_fields__]
    if unknown:
        raise ConfigError(f"config: unknown field {', '.join(map(repr, unknown[:5]))}; "
                          f"allowed fields: {', '.join(PruneConfig.__dataclass_fields__)}")
    for name, cls in (("calib", CalibConfig), ("eval", EvalConfig)):
        sub = config.get(name)
        if sub is None or isinstance(sub, (CalibConfig, EvalConfig)):
            continue
        if not isinstance(sub, dict):
            raise ConfigError(f"{name}: expected an object with fields {', '.join(cls.__dataclass_fields__)}; "
                              f"got {type(sub).__name__}")
        bad = [str(k) for k in sub if k not in cls.__dataclass_fields__]
        if bad:
            raise ConfigError(f"{name}: unknown field {', '.join(map(repr, bad[:5]))}; "
                              f"allowed fields: {', '.join(cls.__dataclass_fields__)}")
    try:
        cfg = PruneConfig.from_dict(_with_device_sizes(config))
    except TypeError as e:  # a value of the wrong kind deep inside (the message names no field)
        raise ConfigError(f"config: {e}; allowed fields: {', '.join(PruneConfig.__dataclass_fields__)}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if visitor:
        try:
            check_visitor(cfg)
        except ValueError as e:  # ModelError (public mode) is an InputError too
            raise ConfigError(str(e)) from None
    return cfg


# -- sweeps ----------------------------------------------------------------------------------------------------
MAX_SWEEP = 48  # the CPU default of PRUNING_LAB_MAX_SWEEP (pruning.settings.LIMITS)


def parse_sparsities(text, label: str = "Sparsities") -> list[float]:
    """'0.3, 0.5 70' -> [0.3, 0.5, 0.7] ("50" means 50 %). Raises ConfigError naming ``label``."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in str(text or "").replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    out = []
    for t in items:
        try:
            s = float(t)
        except (TypeError, ValueError):
            raise ConfigError(f"{label} (sparsities): {t!r} is not a number; write e.g. 0.3, 0.5, 0.7") from None
        if 1.0 < s < 100:  # "50" means 50 %
            s = s / 100
        out.append(s)
    if not out:
        raise ConfigError(f"{label} (sparsities): empty; write e.g. 0.3, 0.5, 0.7")
    return out


def sweep_configs(base: PruneConfig, solvers, sparsities, patterns, updates=("none",)) -> list[PruneConfig]:
    """The engine's ``pruning.config.sweep_configs`` (one expansion for the CLI and the app)."""
    return _engine_sweep_configs(base, list(solvers), list(sparsities), list(patterns), tuple(updates))


SWEEP_LABELS = {"nsamples": "Calib windows", "seqlen": "Calib tokens", "eval_windows": "Eval windows",
                "eval_seqlen": "Eval tokens", "model": "Model"}


def sweep_from_form(model: str, solvers, patterns, sparsities, nsamples, seqlen, eval_windows, eval_seqlen,
                    updates=None, max_new_tokens: int | None = None) -> list[PruneConfig]:
    """The Compare tab's sweep form -> configs (at most ``PRUNING_LAB_MAX_SWEEP``). Raises ConfigError in the page's
    words."""
    solvers, patterns = list(solvers or []), list(patterns or [])
    updates = list(updates or ["none"])
    if not solvers:
        raise ConfigError(f"Solvers: pick at least one; allowed: {', '.join(SOLVERS.names())}")
    if not patterns:
        raise ConfigError(f"Patterns: pick at least one; allowed: {', '.join(pattern_choices())} or any N:M")
    unknown = [u for u in updates if u not in UPDATES]
    if unknown:
        raise ConfigError(f"Weight updates: unknown {unknown}; allowed: {', '.join(UPDATES.names())}")
    sps = parse_sparsities(sparsities)
    # before expanding: N:M patterns make some combinations one run, but no sweep needs 4 × the limit in combinations
    check_sweep_size(len(solvers) * len(patterns) * len(sps) * max(1, len(updates)) // 4)
    require_numbers({"nsamples": nsamples, "seqlen": seqlen, "eval_windows": eval_windows, "eval_seqlen": eval_seqlen},
                    SWEEP_LABELS)
    try:
        base = parse_config({"model": (model or DEFAULT_MODEL).strip(), "calib": {"nsamples": nsamples, "seqlen": seqlen},
                             "eval": {"windows": eval_windows, "seqlen": eval_seqlen},
                             "max_new_tokens": DEFAULTS.max_new_tokens if max_new_tokens is None else max_new_tokens})
        configs = sweep_configs(base, solvers, sps, patterns, updates)
    except ConfigError as e:
        raise ConfigError(relabel(str(e), {**PRUNE_LABELS, **SWEEP_LABELS})) from None
    except ValueError as e:
        raise ConfigError(relabel(str(e), {**PRUNE_LABELS, **SWEEP_LABELS})) from None
    check_sweep_size(len(configs), device=base.device)
    return configs
