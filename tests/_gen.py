"""Hypothesis strategies shared by the fuzz tests: ``/prune`` config dicts as a client may send them (valid ones
sized for a tiny model, and every kind of wrong value), junk text, and the check every refusal must pass."""
from __future__ import annotations

import re

from hypothesis import strategies as st

from pruning import SOLVERS, UPDATES
from pruning.config import CALIB_SOURCES, DEVICES, DTYPES, PruneConfig

# what a refusal may start with: the config's API field names, the sub-objects' fields and the page's labels
FIELDS = set(PruneConfig.__dataclass_fields__) | {"config", "calib", "eval", "nsamples", "seqlen", "seed", "source",
                                                   "eval_windows", "eval_seqlen", "zeroshot", "zeroshot_limit", "kl",
                                                   "memory", "sweep", "options", "gram", "weight"}
_PREFIX = re.compile(r"^([A-Za-z][\w .()/=-]*?|[\w]+\.[\w]+):\s")
# words by which a message states what is allowed (or the limit that was hit)
ALLOWED_WORDS = ("allowed", "expected", "limit", "enter ", "use ", "pick ", "must", "needs", "write e.g", "one of",
                 "at most", "at least", "a multiple", "not a ", "is not", "outside", "out of range")

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
SOLVER_NAMES = SOLVERS.names()
MASK_SOLVERS = [s.name for s in SOLVERS if s.kind == "mask"]


def junk_or(valid: st.SearchStrategy, junk_weight: int = 1) -> st.SearchStrategy:
    """Mostly ``valid``, sometimes anything at all."""
    return st.one_of(*([valid] * 4), *([JUNK] * junk_weight))


def _sub(valid_fields: dict, allowed: tuple) -> st.SearchStrategy:
    entries = st.fixed_dictionaries({}, optional={k: junk_or(v) for k, v in valid_fields.items()})
    extra = st.dictionaries(st.sampled_from(["bogus", "nsample", "windows_"]), JUNK, max_size=1)
    return st.one_of(entries, entries.flatmap(lambda d: extra.map(lambda e: {**d, **e})), JUNK)


def prune_configs(model: str, cheap: bool = True) -> st.SearchStrategy:
    """``/prune`` config dicts. With ``cheap`` the valid sizes are tiny (1-2 windows of 8-32 tokens, a few new
    tokens), so a config that passes validation runs in about a second on a tiny model."""
    small = st.integers(1, 2) if cheap else st.integers(1, 8)
    seq = st.sampled_from([8, 16, 32]) if cheap else st.sampled_from([16, 64, 128])
    calib = _sub({"source": st.sampled_from(["pydoc", "wiki-sample", "text:" + "some words here. " * 40, "",
                                             "no-such-source", "/etc/passwd", "../../etc/passwd"]),
                  "nsamples": st.one_of(small, st.integers(-5, 10**7)), "seqlen": st.one_of(seq, st.integers(-5, 10**6)),
                  "seed": st.integers(-2, 5)}, ())
    evals = _sub({"source": st.sampled_from(["pydoc", "wiki-sample", ""]), "windows": st.one_of(small, st.integers(-3, 10**7)),
                  "seqlen": st.one_of(seq, st.integers(-5, 10**6)), "kl": st.booleans(),
                  "zeroshot": st.sampled_from([[], ["nope"], "x"])}, ())
    options = st.one_of(st.just({}), st.dictionaries(
        st.sampled_from(["iters", "rho", "damping", "blocksize", "alpha", "bogus", "percdamp", "max_iter"]),
        st.one_of(st.integers(-10, 500), st.floats(allow_nan=True), st.text(max_size=4), st.booleans()), max_size=2), JUNK)
    fields = {
        "model": st.one_of(st.just(model), st.just(model), st.just(model), st.sampled_from(
            ["", "  ", "/etc", "../../../etc/passwd", "no/such-model", "a" * 300, "\x00", "smollm2-135m"])),
        "solver": junk_or(st.sampled_from(["magnitude", "wanda", "sparsegpt", "ria"] + (SOLVER_NAMES if not cheap else [])
                                          + ["nope", "WANDA"])),
        "sparsity": junk_or(st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.7]), st.floats(-2, 2))),
        "pattern": junk_or(st.sampled_from(["unstructured", "per-row", "2:4", "4:8", "1:3", "3:2", "0:4", "x:y", "2:0"])),
        "update": junk_or(st.sampled_from(UPDATES.names() + ["bogus"])),
        "options": options,
        "calib": calib,
        "eval": evals,
        "device": junk_or(st.sampled_from(["cpu", "cpu", "auto", "cuda:7", "tpu", "cuda:x"])),
        "dtype": junk_or(st.sampled_from(["float32", "float32", "auto", "float64", "int8"])),
        "true_sequential": junk_or(st.booleans()),
        "batch_size": junk_or(st.integers(-2, 10**5)),
        "prompts": junk_or(st.lists(st.text(max_size=30), max_size=3)),
        "max_new_tokens": junk_or(st.one_of(st.integers(0, 3), st.integers(-5, 10**5))),
        "allocation": junk_or(st.sampled_from(["uniform", "uniform", "owl", "curve", "nope"])),
        "owl_m": junk_or(st.floats(-1, 20)),
        "owl_lambda": junk_or(st.floats(-1, 1)),
    }
    base = st.fixed_dictionaries({"model": fields["model"]}, optional={k: v for k, v in fields.items() if k != "model"})
    extra = st.dictionaries(st.sampled_from(["bogus", "solvers", "Sparsity"]), JUNK, min_size=1, max_size=1)
    return st.one_of(base, base, base, base.flatmap(lambda d: extra.map(lambda e: {**d, **e})))


def valid_cheap_config(model: str) -> st.SearchStrategy:
    """Configs that pass validation and run in about a second on the tiny model (the 'a valid one runs' half)."""
    return st.fixed_dictionaries({
        "model": st.just(model),
        "solver": st.sampled_from(["magnitude", "wanda", "sparsegpt", "ria"]),
        "sparsity": st.sampled_from([0.25, 0.5, 0.7]),
        "pattern": st.sampled_from(["unstructured", "per-row", "2:4"]),
        "calib": st.fixed_dictionaries({"source": st.just("pydoc"), "nsamples": st.integers(1, 2),
                                        "seqlen": st.sampled_from([16, 32])}),
        "eval": st.fixed_dictionaries({"source": st.just("pydoc"), "windows": st.just(1), "seqlen": st.just(16)}),
        "device": st.just("cpu"), "dtype": st.just("float32"),
        "max_new_tokens": st.integers(0, 2), "prompts": st.just(["Hi"]),
    })


def check_refusal(message: str) -> None:
    """A refusal the page may show: names a field (API name or page label), says what is allowed, and is no
    traceback or bare 'Error'."""
    text = str(message)
    assert text.strip() and text.strip().lower() not in ("error", "none"), f"bare message {text!r}"
    assert "Traceback" not in text and 'File "' not in text, text
    assert len(text) < 3000, f"message of {len(text)} characters"
    m = _PREFIX.match(text)
    assert m, f"message names no field: {text[:300]!r}"
    low = text.lower()
    assert any(w in low for w in ALLOWED_WORDS), f"message does not say what is allowed: {text[:300]!r}"


__all__ = ["prune_configs", "valid_cheap_config", "check_refusal", "JUNK", "FIELDS", "CALIB_SOURCES", "DEVICES", "DTYPES",
           "MASK_SOLVERS"]
